"""The admin app's HTML pages: server-rendered, a little htmx, every change through the same service functions as
the JSON API (``kiosk.web.people``, ``kiosk.web.events``). Modules: ``common`` (login redirect, roles, rendering),
``auth`` (log in and out), ``status`` (dashboard, door, system), ``people`` (list, a person's page and its
changes), ``enrol`` (photos with a verdict each, the door camera), ``events``, ``doors`` (a hub's doors, remote
unlock)."""

from __future__ import annotations

from fastapi import APIRouter

from kiosk.web.pages import auth, doors, enrol, events, people, status

router = APIRouter(include_in_schema=False)
for _module in (auth, status, doors, enrol, people, events):  # enrol before people: /people/new is not /people/{id}
    router.include_router(_module.router)
