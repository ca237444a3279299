"""``/api/session`` (log in, who am I, log out) and ``/api/health`` (no login; nothing personal)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from kiosk.web.accounts import Account, Session
from kiosk.web.security import CurrentSession, csrf, end_session, login_guard, services_of, start_session

router = APIRouter(prefix="/api", tags=["session"])
health_router = APIRouter(prefix="/api", tags=["health"])


class Login(BaseModel):
    username: str = Field(max_length=200)
    password: str = Field(max_length=4096)


def _account(account: Account) -> dict[str, Any]:
    return {"name": account.name, "role": account.role}


def _session(current: Session) -> dict[str, Any]:
    return {"csrf_token": current.csrf_token, "account": _account(current.account), "expires": current.expires}


@router.post("/session", dependencies=[Depends(login_guard)])
def login(body: Login, request: Request, response: Response) -> dict[str, Any]:
    """Log in: a new session cookie (any cookie sent along is ignored) and the CSRF token to repeat in
    ``X-CSRF-Token`` on every changing request. 401 for a wrong name or password, 429 with Retry-After when
    throttled."""
    return _session(start_session(request, response, body.username, body.password))


@router.get("/session")
def whoami(current: CurrentSession) -> dict[str, Any]:
    """The logged-in account and the session's CSRF token."""
    return _session(current)


@router.delete("/session", status_code=204, dependencies=[Depends(csrf)])
def logout(request: Request, current: CurrentSession) -> Response:
    """Log out: the session ends on the server and the cookie is cleared."""
    out = Response(status_code=204)
    end_session(request, out)
    return out


@health_router.get("/health")
def health(request: Request) -> dict[str, Any]:
    """Whether the door loop and its camera are up, and the loop's frame rate; no login, nothing personal."""
    state = services_of(request).link.state
    service = str(state.get("service", "down"))
    fps = state.get("fps")
    return {
        "loop": "down" if service == "down" else "up",
        "service": service,
        "camera": "down" if service in ("down", "camera-down") else "ok",
        "fps": float(fps) if isinstance(fps, int | float) and not isinstance(fps, bool) else None,
    }
