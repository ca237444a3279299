"""The web application: one FastAPI app whose routers are the JSON API, the door screen and the admin pages."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from kiosk import __version__
from kiosk.web.services import WebServices

STATIC = Path(__file__).with_name("static")


def create_app(services: WebServices, *, door: bool = True, admin: bool = True) -> FastAPI:
    """The app for one kind of listener: ``door`` serves the door screen, ``admin`` the admin app and the API."""
    from kiosk.web import api, door as door_routes, pages

    app = FastAPI(
        title="face-kiosk",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json" if admin else None,
    )
    app.state.services = services
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if door:
        app.include_router(door_routes.router)
    if admin:
        app.include_router(api.router)
        app.include_router(pages.router)
    return app
