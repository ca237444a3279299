"""What every admin page shares: the login redirect, the admin check on changes, and rendering with the session."""

from __future__ import annotations

import logging
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from kiosk.errors import KioskError
from kiosk.web import security
from kiosk.web.accounts import Session
from kiosk.web.services import WebServices

log = logging.getLogger(__name__)


def services_of(request: Request) -> WebServices:
    return security.services_of(request)


def local_path(target: str | None, default: str = "/") -> str:
    """``target`` when it is a path on this site, else ``default``: no scheme, no host, no ``//`` or ``\\`` (which
    browsers read as another host), no control characters. Keeps ``/login?next=`` from being an open redirect."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in target):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or parts.path.startswith("/login"):
        return default
    return target


def signed_in(request: Request) -> Session:
    """The page's session; without one, a redirect to the login page that comes back here afterwards."""
    current = security.page_session(request)
    if current is None:
        if request.headers.get("hx-request") == "true":
            # htmx (a live part of a page whose session ended): the whole page goes to the login, not the part
            page = urlsplit(request.headers.get("hx-current-url", ""))
            here = local_path(page.path + (f"?{page.query}" if page.query else ""))
            raise HTTPException(401, "log in first", headers={"HX-Redirect": "/login?next=" + quote(here, safe="")})
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise HTTPException(303, "log in first", headers={"Location": "/login?next=" + quote(here, safe="")})
    return current


def admin_page(current: Annotated[Session, Depends(signed_in)]) -> Session:
    """An admin's session; 403 for a viewer (the pages show them no change buttons, the routes refuse anyway)."""
    if not current.account.is_admin:
        raise HTTPException(403, "this needs an admin account")
    return current


async def admin_change(
    current: Annotated[Session, Depends(admin_page)], _: Annotated[None, Depends(security.csrf)]
) -> Session:
    """A change made from a page: an admin, the same origin, and the session's CSRF token in the form."""
    return current


# Annotated parameters for the page routes: ``def page(request: Request, current: PageSession) -> ...``.
PageSession = Annotated[Session, Depends(signed_in)]
AdminPage = Annotated[Session, Depends(admin_page)]
AdminChange = Annotated[Session, Depends(admin_change)]


def render(
    request: Request,
    template: str,
    current: Session | None,
    *,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """A page in the admin layout. Every name the layout uses is set (the templates use StrictUndefined)."""
    base: dict[str, Any] = {
        "account": current.account if current else None,
        "csrf_token": current.csrf_token if current else "",
        "section": "",
        "notice": None,
        "error": None,
        "fleet_hub": services_of(request).is_hub(),  # the Doors entry of the menu (kiosk.web.doors)
    }
    return services_of(request).templates.TemplateResponse(request, template, base | context, status_code=status_code)


def see_other(url: str) -> RedirectResponse:
    """After a change: the browser loads the page again with GET (a reload never repeats the change)."""
    return RedirectResponse(url, status_code=303)


def error_text(exc: KioskError) -> str:
    """A service error as one line for the page (the message already says what to do)."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


NOTICES = {
    "renamed": "admin.notice.renamed",
    "enabled": "admin.notice.enabled",
    "disabled": "admin.notice.disabled",
    "validity": "admin.notice.validity",
    "template-deleted": "admin.notice.template_deleted",
    "removed": "admin.notice.removed",
    "removed-backups": "admin.notice.removed_backups",
    "enrolled": "admin.notice.enrolled",
    "backup": "admin.notice.backup",
    "unlocked": "admin.notice.unlocked",
    "door-unlocked": "admin.notice.door_unlocked",
}


def notice_of(request: Request) -> str | None:
    """The one-line notice after a change (``?done=<code>``); only known codes, so no text comes from the URL."""
    key = NOTICES.get(request.query_params.get("done", ""))
    return services_of(request).i18n.t(services_of(request).cfg.screen.language, key) if key else None


def tr(request: Request, key: str, **params: Any) -> str:
    """A catalogue string in the admin pages' language (the config's ``screen.language``)."""
    services = services_of(request)
    return services.i18n.t(services.cfg.screen.language, key, **params)
