"""The web application: one FastAPI app whose routers are the JSON API, the door screen and the admin pages.

Every error leaves as a clean response, never a traceback: under ``/api/`` as JSON ``{"detail": "..."}`` with a
status that fits the error (``ERROR_STATUS``), elsewhere as one line of text. The app starts the door link when it
starts and stops it when it stops; one listener kind gets the door screen, the admin app, or both.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from kiosk import __version__, errors
from kiosk.web.security import UPLOAD_SLACK, BodyLimit, InternalErrors, SecurityHeaders
from kiosk.web.services import WebServices

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")

# The most specific class wins (checked in this order); any other KioskError is 503: the device cannot do it now.
ERROR_STATUS: tuple[tuple[str, int], ...] = (
    ("LoginThrottledError", 429),
    ("AuthError", 401),
    ("AccessDeniedError", 403),
    ("PersonNotFoundError", 404),
    ("AccountNotFoundError", 404),
    ("DuplicateError", 409),
    ("AccountExistsError", 409),
    ("InputError", 422),
    ("FaceError", 422),
    ("DoorUnavailableError", 503),
    ("DoorNotFoundError", 404),
    ("DoorNoAnswerError", 504),
    ("BrokerUnreachableError", 503),
    ("FleetError", 502),
    ("GalleryLockedError", 503),
)


def error_status(exc: errors.KioskError) -> int:
    for name, status in ERROR_STATUS:
        cls = getattr(errors, name, None)
        if cls is not None and isinstance(exc, cls):
            return status
    return 503


def _error(request: Request, status: int, detail: Any, headers: dict[str, str] | None = None) -> Response:
    if request.url.path.startswith("/api/") or request.url.path == "/api":
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)
    text = detail if isinstance(detail, str) else "bad request"
    return PlainTextResponse(text, status_code=status, headers=headers)


async def _kiosk_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.KioskError)
    status = error_status(exc)
    headers = None
    if isinstance(exc, errors.LoginThrottledError):
        headers = {"Retry-After": str(exc.retry_after_s)}
    if status >= 500:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
    return _error(request, status, str(exc), headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return _error(request, exc.status_code, exc.detail, dict(exc.headers) if exc.headers else None)


async def _validation_error(request: Request, exc: Exception) -> Response:
    """422 with where and what, never the submitted value (it may be a password)."""
    assert isinstance(exc, RequestValidationError)
    detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
    return _error(request, 422, detail)


def create_app(services: WebServices, *, door: bool = True, admin: bool = True) -> FastAPI:
    """The app for one kind of listener: ``door`` serves the door screen, ``admin`` the admin app and the API."""
    from kiosk.web import api, api_session, pages
    from kiosk.web import door as door_routes

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.link.start()
        try:
            yield
        finally:
            await services.link.stop()

    app = FastAPI(
        title="face-kiosk",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json" if admin else None,
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.door = door
    app.state.admin = admin
    web = services.cfg.web
    upload_limit = int(web.upload_max_mb * 1024 * 1024) * web.upload_max_files + UPLOAD_SLACK
    # The last added runs first: security headers on everything, then the body limit, then unexpected errors.
    app.add_middleware(InternalErrors)
    app.add_middleware(BodyLimit, upload_limit=upload_limit)
    app.add_middleware(SecurityHeaders)
    app.add_exception_handler(errors.KioskError, _kiosk_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(api_session.health_router)
    if door:
        app.include_router(door_routes.router)
    if admin:
        app.include_router(api_session.router)
        app.include_router(api.router)
        app.include_router(pages.router)
    return app
