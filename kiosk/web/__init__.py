"""``kiosk web``: the door screen (``/door``) and the admin app, a separate process from the door loop.

The web process never touches GPIO or the camera: it reads what the loop publishes and sends it requests over the
loop's Unix sockets (``kiosk.screen``), and manages people through the same gallery code as the CLI. Modules: ``app``
(the FastAPI application and its routers), ``services`` (what the routes are given), ``accounts`` (users, sessions,
login throttling), ``security`` (CSRF, headers, roles), ``api`` (the JSON API), ``people`` (people and enrolment,
shared by the API and the pages), ``door`` (the door screen), ``pages`` (the admin pages), ``i18n``, ``server``
(listeners and TLS).
"""
