"""The dashboard, the door's admin page (state and a manual unlock) and the system page."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, Response

from kiosk.errors import AuthError, KioskError, LoginThrottledError
from kiosk.web import events as event_service
from kiosk.web import security
from kiosk.web.accounts import Session
from kiosk.web.pages.common import admin_change, error_text, notice_of, render, see_other, services_of, signed_in, tr
from kiosk.web.pages.events import event_rows

log = logging.getLogger(__name__)

router = APIRouter()


async def loop_status(request: Request) -> dict[str, Any] | None:
    """The loop's ``status`` reply, or None when it cannot be reached (the pages then say so)."""
    try:
        reply = await services_of(request).link.request({"op": "status"}, timeout_s=2.0)
    except (KioskError, OSError, TimeoutError) as exc:
        log.info("door loop status not available: %s", exc)
        return None
    return reply if reply.get("ok") else None


async def status_context(request: Request) -> dict[str, Any]:
    services = services_of(request)
    state = services.link.state
    status = await loop_status(request)
    service = str(state.get("service", "down"))
    fps = state.get("fps")
    if status is not None and isinstance(status.get("loop"), dict):
        fps = status["loop"].get("fps", fps)
    door = status.get("door") if status is not None else None
    return {
        "loop_up": service != "down",
        "service": service,
        "fps": float(fps) if isinstance(fps, int | float) and not isinstance(fps, bool) else None,
        "door": door if isinstance(door, dict) else None,
        "loop": status.get("loop") if status is not None and isinstance(status.get("loop"), dict) else None,
        "chain": event_service.chain_state(services),
    }


@router.get("/", response_class=HTMLResponse)
async def dashboard(request: Request, current: Session = Depends(signed_in)) -> Response:
    services = services_of(request)
    rows = event_rows(event_service.query_events(services, limit=10))
    return render(
        request,
        "admin/dashboard.html",
        current,
        section="dashboard",
        events=rows,
        snapshots=services.cfg.events.snapshots,
        **await status_context(request),
    )


@router.get("/status", response_class=HTMLResponse)
async def status_cards(request: Request, current: Session = Depends(signed_in)) -> Response:
    """The status cards alone: the dashboard and the door page refresh them every few seconds."""
    return render(request, "admin/_status.html", current, **await status_context(request))


@router.get("/admin/door", response_class=HTMLResponse)
async def door_page(request: Request, current: Session = Depends(signed_in)) -> Response:
    return render(
        request, "admin/door.html", current, section="door", notice=notice_of(request), **await status_context(request)
    )


@router.post("/admin/door/unlock", response_class=HTMLResponse)
async def unlock(
    request: Request,
    reason: str = Form("", max_length=200),
    password: str = Form("", max_length=4096),
    current: Session = Depends(admin_change),
) -> Response:
    """A manual unlock: an admin, a reason, the password typed again; the loop pulses the relay and records it."""
    services = services_of(request)
    account = current.account
    error = None
    if not reason.strip():
        error = tr(request, "admin.door.reason_needed")
    else:
        try:
            services.accounts.authenticate(account.name, password, security.client_address(request))
        except LoginThrottledError as exc:
            error = error_text(exc)
        except AuthError:
            error = tr(request, "admin.door.password_wrong")
    if error is None:
        actor = f"web:{account.name} from {security.client_address(request)}"
        try:
            reply = await services.link.request({"op": "unlock", "reason": reason.strip(), "actor": actor})
        except (KioskError, OSError, TimeoutError):
            reply = {"ok": False, "detail": tr(request, "admin.door.unreachable")}
        if reply.get("ok"):
            log.info("manual unlock by web:%s (reason given)", account.name)
            return see_other("/admin/door?done=unlocked")
        error = tr(request, "admin.door.unlock_failed", detail=str(reply.get("detail") or reply.get("error") or ""))
    return render(
        request,
        "admin/door.html",
        current,
        status_code=422,
        section="door",
        error=error,
        **await status_context(request),
    )
