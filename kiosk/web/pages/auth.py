"""Logging in and out of the admin app.

The login form carries no CSRF token (there is no session yet); it is refused from another origin
(``security.login_guard``) and every login starts a new session, so a planted cookie never survives it. ``next``
leads only to a path on this site.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from kiosk.errors import AuthError, LoginThrottledError
from kiosk.web import security
from kiosk.web.pages.common import PageSession, local_path, render, see_other, tr
from kiosk.web.pages.enrol import UploadStore, uploads_of

router = APIRouter()


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> Response:
    current = security.page_session(request)
    if current is not None:
        return see_other(local_path(next))
    return render(request, "admin/login.html", None, next=local_path(next), username="")


@router.post("/login", response_class=HTMLResponse, dependencies=[Depends(security.login_guard)])
def login(
    request: Request,
    username: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=4096)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    target = local_path(next)
    done = RedirectResponse(target, status_code=303)
    try:
        security.start_session(request, done, username, password)  # a new session; a cookie sent along is ended
    except LoginThrottledError as exc:
        error = tr(request, "admin.login.throttled", seconds=exc.retry_after_s)
        refused = render(
            request, "admin/login.html", None, status_code=429, next=target, username=username, error=error
        )
        refused.headers["Retry-After"] = str(exc.retry_after_s)
        return refused
    except AuthError:
        error = tr(request, "admin.login.failed")
        return render(request, "admin/login.html", None, status_code=401, next=target, username=username, error=error)
    return done


@router.post("/logout", dependencies=[Depends(security.csrf)])
def logout(request: Request, current: PageSession) -> Response:
    uploads_of(request).drop_owner(UploadStore.owner_of(current))  # photos waiting for a decision go with it
    response = see_other("/login")
    security.end_session(request, response)
    return response
