"""Who may do what on the web, and the headers and limits every response and request gets.

FastAPI dependencies: ``session`` (401 without a valid session cookie), ``viewer`` (any logged-in account),
``admin`` (403 for a viewer), ``csrf`` (every changing request: the session's CSRF token in the ``X-CSRF-Token``
header or the ``csrf_token`` form field, and an ``Origin``, when sent, that is this server's own), ``login_guard``
(the login form and ``POST /api/session``: same-origin only; the token comes after), ``page_session`` (HTML pages:
None sends them to /login) and ``acting`` (names the account in the gallery's audit events).

ASGI middleware: ``SecurityHeaders`` (CSP without inline script, no framing, no sniffing, no referrer, no caching
of anything but the static files, HSTS under TLS) and ``BodyLimit`` (413 before a too-large body is read).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiosk import authz
from kiosk.web.accounts import Account, Session, same_token

if TYPE_CHECKING:
    from kiosk.web.services import WebServices

log = logging.getLogger(__name__)

SESSION_COOKIE = "kiosk_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)
HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
)
HSTS = (b"strict-transport-security", b"max-age=31536000")
JSON_LIMIT = 64 * 1024
UPLOAD_SLACK = 1024 * 1024  # multipart headers and the form's text fields


def services_of(request: Request) -> WebServices:
    services: WebServices = request.app.state.services
    return services


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def is_tls(request: Request) -> bool:
    return request.url.scheme in ("https", "wss")


# -- sessions and roles ----------------------------------------------------------------------------------------------


def _current(request: Request) -> Session | None:
    """The request's session from its cookie, looked up once per request."""
    if "kiosk_session" not in request.scope.setdefault("state", {}):
        token = request.cookies.get(SESSION_COOKIE)
        found = services_of(request).accounts.session(token) if token else None
        request.state.kiosk_session = found
    current: Session | None = request.state.kiosk_session
    return current


def session(request: Request) -> Session:
    """The logged-in session; 401 without a valid session cookie."""
    current = _current(request)
    if current is None:
        raise HTTPException(401, "not logged in, or the session has ended: log in again")
    return current


def viewer(request: Request) -> Account:
    """Any logged-in account."""
    return session(request).account


def admin(request: Request) -> Account:
    """An admin account; 403 for a viewer."""
    account = viewer(request)
    if not account.is_admin:
        raise HTTPException(403, "this needs an admin account")
    return account


def page_session(request: Request) -> Session | None:
    """For HTML pages: the session, or None (the page then redirects to /login?next=...)."""
    return _current(request)


# Annotated parameters for routes: ``def route(account: AdminAccount) -> ...``.
CurrentSession = Annotated[Session, Depends(session)]
ViewerAccount = Annotated[Account, Depends(viewer)]
AdminAccount = Annotated[Account, Depends(admin)]


@contextlib.contextmanager
def acting(request: Request, account: Account) -> Iterator[None]:
    """Name the account (and where it came from) as the actor of the gallery changes made inside the block."""
    token = authz.set_actor(f"web:{account.name} from {client_address(request)}")
    try:
        yield
    finally:
        authz.reset_actor(token)


# -- CSRF ------------------------------------------------------------------------------------------------------------


def own_origin(request: Request) -> str:
    """``scheme://host[:port]`` as the browser addressed this server."""
    host = request.headers.get("host") or (f"{request.url.hostname}:{request.url.port}")
    return f"{request.url.scheme}://{host}".lower()


def check_origin(request: Request) -> None:
    """403 when a browser says the request comes from another site (Origin, or Sec-Fetch-Site)."""
    origin = request.headers.get("origin")
    # NOTE: under Referrer-Policy no-referrer a browser sends "Origin: null" with its own forms' POSTs; the fetch
    # metadata (a header pages cannot set) then says whether the form was this site's.
    if origin == "null" and request.headers.get("sec-fetch-site") == "same-origin":
        origin = None
    if origin is not None and origin.lower().rstrip("/") != own_origin(request):
        raise HTTPException(403, "cross-origin request refused")
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise HTTPException(403, "cross-origin request refused")


def login_guard(request: Request) -> None:
    """The login endpoints: same-origin only (a login CSRF would log the victim into the attacker's account)."""
    if request.method in CHANGING:
        check_origin(request)


async def csrf(request: Request) -> AsyncIterator[None]:
    """Every changing request: same origin, and the session's CSRF token in the header or the form; else 403.

    (A dependency with a ``yield``: a form it had to parse for the token is closed after the request.)"""
    if request.method not in CHANGING:
        yield
        return
    check_origin(request)
    current = _current(request)
    if current is None:
        raise HTTPException(401, "not logged in, or the session has ended: log in again")
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind in ("application/x-www-form-urlencoded", "multipart/form-data"):
            value = (await request.form()).get(CSRF_FIELD)
            sent = value if isinstance(value, str) else None
    if not sent or not same_token(sent, current.csrf_token):
        raise HTTPException(403, "missing or wrong CSRF token: send the session's csrf_token as X-CSRF-Token")
    try:
        yield
    finally:
        await request.close()


# -- cookies ---------------------------------------------------------------------------------------------------------


def set_session_cookie(response: Any, request: Request, new: Session) -> None:
    """The session cookie: HttpOnly, SameSite=Strict, Path=/, Secure under TLS. The browser keeps it up to the
    session's absolute limit; the server ends it earlier when it is idle, logged out or revoked."""
    max_age = max(1, math.floor(services_of(request).cfg.web.session_max_h * 3600))
    response.set_cookie(
        SESSION_COOKIE, new.token, max_age=max_age, path="/", httponly=True, samesite="strict", secure=is_tls(request)
    )


def clear_session_cookie(response: Any, request: Request) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=is_tls(request))


def start_session(request: Request, response: Any, username: object, password: object) -> Session:
    """Log in (the API and the login page): a new session and its cookie on ``response``. A session cookie the
    browser sent along (its own, or one planted in it) is ended, never reused: no session fixation. Raises AuthError
    (401) or LoginThrottledError (429, ``retry_after_s``)."""
    accounts = services_of(request).accounts
    new = accounts.login(username, password, client_address(request))
    old = request.cookies.get(SESSION_COOKIE)
    if old:
        accounts.logout(old)
    set_session_cookie(response, request, new)
    return new


def end_session(request: Request, response: Any) -> None:
    """Log out: the request's session ends on the server and its cookie is cleared on ``response``."""
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        services_of(request).accounts.logout(token)
    clear_session_cookie(response, request)


# -- middleware ------------------------------------------------------------------------------------------------------


class SecurityHeaders:
    """Adds the security headers to every HTTP response; ``Cache-Control: no-store`` on everything but /static/."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tls = scope.get("scheme") == "https"
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _OURS]
                headers += list(HEADERS)
                if tls:
                    headers.append(HSTS)
                if not static:
                    headers = [(k, v) for k, v in headers if k.lower() not in (b"cache-control", b"pragma")]
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


_OURS = frozenset(k for k, _ in (*HEADERS, HSTS))


class InternalErrors:
    """An unexpected exception becomes a 500 with a one-line body (the traceback goes to the log only), inside the
    other middleware so that it too carries the security headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            log.error("%s %s failed: %s", scope.get("method"), scope.get("path"), type(exc).__name__, exc_info=exc)
            if started:
                raise
            path = str(scope.get("path", ""))
            if path.startswith("/api/"):
                await _refuse(send, 500, "internal error (see the kiosk web log)")
            else:
                await _send(send, 500, b"internal error (see the kiosk web log)", b"text/plain; charset=utf-8")


class BodyLimit:
    """413 for a request body over the limit: multipart uploads ``upload_limit`` bytes, anything else 64 KiB.

    A Content-Length over the limit is refused before anything is read; a chunked body is counted as it arrives
    and cut off at the limit (the app then sees a disconnect, and the client gets the 413 instead of its answer).
    """

    def __init__(self, app: ASGIApp, upload_limit: int, other_limit: int = JSON_LIMIT) -> None:
        self.app = app
        self.upload_limit = int(upload_limit)
        self.other_limit = int(other_limit)

    def _limit(self, scope: Scope) -> int:
        for key, value in scope.get("headers", []):
            if key == b"content-type":
                if value.split(b";")[0].strip().lower() == b"multipart/form-data":
                    return self.upload_limit
                break
        return self.other_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope)
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    await _refuse(send, 400, "bad Content-Length")
                    return
                if length > limit:
                    await _refuse(send, 413, f"request body too large (limit {limit} bytes)")
                    return
        seen = 0
        over = False
        started = False

        async def counting_receive() -> Message:
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:
                if not started:
                    started = True
                    await _refuse(send, 413, f"request body too large (limit {limit} bytes)")
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not over:
                raise
        if over and not started:
            await _refuse(send, 413, f"request body too large (limit {limit} bytes)")


async def _refuse(send: Send, status: int, detail: str) -> None:
    await _send(send, status, json.dumps({"detail": detail}).encode(), b"application/json")


async def _send(send: Send, status: int, body: bytes, kind: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", kind),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
