"""The dashboard, the door's admin page (state and a manual unlock) and the system page."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from kiosk.errors import KioskError
from kiosk.web import api
from kiosk.web import events as event_service
from kiosk.web.pages.common import (
    AdminChange,
    PageSession,
    error_text,
    notice_of,
    render,
    see_other,
    services_of,
    tr,
)
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
    }


@router.get("/", response_class=HTMLResponse)
async def dashboard(request: Request, current: PageSession) -> Response:
    services = services_of(request)
    rows = event_rows(event_service.query_events(services, limit=10))
    return render(
        request,
        "admin/dashboard.html",
        current,
        section="dashboard",
        events=rows,
        snapshots=services.cfg.events.snapshots,
        chain=await run_in_threadpool(
            event_service.chain_state, services
        ),  # not in the 5 s refresh: it reads every event
        **await status_context(request),
    )


@router.get("/status", response_class=HTMLResponse)
async def status_cards(request: Request, current: PageSession) -> Response:
    """The status cards alone: the dashboard and the door page refresh them every few seconds."""
    return render(request, "admin/_status.html", current, **await status_context(request))


@router.get("/admin/door", response_class=HTMLResponse)
async def door_page(request: Request, current: PageSession) -> Response:
    return render(
        request, "admin/door.html", current, section="door", notice=notice_of(request), **await status_context(request)
    )


@router.post("/admin/door/unlock", response_class=HTMLResponse)
async def unlock(
    request: Request,
    current: AdminChange,
    reason: Annotated[str, Form(max_length=1000)] = "",
    password: Annotated[str, Form(max_length=4096)] = "",
) -> Response:
    """A manual unlock: ``POST /api/door/unlock``'s own function (an admin, a reason, the password typed again); the
    loop pulses the relay and records it with the account."""
    try:
        await api.unlock(request, current.account, api.UnlockIn(reason=reason, password=password))
    except HTTPException as exc:
        error = tr(request, "admin.door.password_wrong") if exc.status_code == 403 else str(exc.detail)
    except KioskError as exc:
        error = error_text(exc)
    else:
        return see_other("/admin/door?done=unlocked")
    context = await status_context(request)
    return render(request, "admin/door.html", current, status_code=422, section="door", error=error, **context)


def config_lines(value: Any, indent: str = "") -> list[str]:
    """The running configuration (``GET /api/system``'s ``config``) as YAML-like text, read-only."""
    lines = []
    for key, item in value.items():
        if isinstance(item, dict):
            lines += [f"{indent}{key}:", *config_lines(item, indent + "  ")]
        else:
            lines.append(f"{indent}{key}: {json.dumps(item, ensure_ascii=False, default=str)}")
    return lines


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


@router.get("/system", response_class=HTMLResponse)
async def system_page(request: Request, current: PageSession) -> Response:
    """``GET /api/system`` and ``GET /api/backups`` as a page (the same functions)."""
    info = await run_in_threadpool(api._system, request)
    backups = [b.model_dump() for b in reversed(api.get_backups(request, current.account))]
    for b in backups:
        b["size_text"] = _size(b["size"])
    models = [m | {"file": Path(m["file"]).name} for m in info["models"]]
    return render(
        request,
        "admin/system.html",
        current,
        section="system",
        notice=notice_of(request),
        checks=info["checks"],
        models=models,
        loop=(await status_context(request))["loop"],
        backups=backups,
        config_text="\n".join(config_lines(info["config"])),
    )


@router.post("/system/backups")
def make_backup(request: Request, current: AdminChange) -> Response:
    """``POST /api/backups``'s own function: a backup now, audited, the oldest pruned."""
    api.post_backup(request, current.account)
    return see_other("/system?done=backup")
