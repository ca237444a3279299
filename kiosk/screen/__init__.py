"""The door loop's side of the screen: what the loop publishes on its Unix sockets (state, preview) and the few
requests it takes on its control socket. The protocol is in docs/screen-protocol.md; ``kiosk.screen.client`` is the
web process's side of it."""
