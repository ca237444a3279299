"""The Doors page of a hub's admin app (fleet mode): every door of the site, refreshed every few seconds, and a
remote unlock through ``POST /api/doors/{door}/unlock``'s own function."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from kiosk.errors import KioskError
from kiosk.web import api, doors
from kiosk.web.app import error_status
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

log = logging.getLogger(__name__)

router = APIRouter()


async def doors_context(request: Request) -> dict[str, Any]:
    """The doors, or 404 when the app does not run against a hub (the menu then has no Doors entry either)."""
    try:
        rows = await run_in_threadpool(doors.door_states, services_of(request))
    except KioskError as exc:
        status = 404 if isinstance(exc, LookupError) else 503
        raise HTTPException(status, error_text(exc)) from None
    return {"doors": rows, "online": sum(r["online"] for r in rows)}


@router.get("/admin/doors", response_class=HTMLResponse)
async def doors_page(request: Request, current: PageSession) -> Response:
    return render(
        request,
        "admin/doors.html",
        current,
        section="doors",
        notice=notice_of(request),
        chosen="",
        **await doors_context(request),
    )


@router.get("/admin/doors/rows", response_class=HTMLResponse)
async def doors_rows(request: Request, current: PageSession) -> Response:
    """The table's body alone: the page refreshes it every few seconds."""
    return render(request, "admin/_doors_rows.html", current, **await doors_context(request))


@router.post("/admin/doors/unlock", response_class=HTMLResponse)
async def unlock(
    request: Request,
    current: AdminChange,
    door: Annotated[str, Form(max_length=63)] = "",
    reason: Annotated[str, Form(max_length=1000)] = "",
    password: Annotated[str, Form(max_length=4096)] = "",
) -> Response:
    """A remote unlock: ``POST /api/doors/{door}/unlock``'s own function (an admin, a reason, the password typed
    again); the door pulses its relay and records it with the account."""
    try:
        await api.unlock_door(request, current.account, api.UnlockIn(reason=reason, password=password), door)
    except HTTPException as exc:
        status = exc.status_code
        error = tr(request, "admin.door.password_wrong") if status == 403 else str(exc.detail)
    except KioskError as exc:
        status, error = error_status(exc), error_text(exc)
    else:
        return see_other("/admin/doors?done=door-unlocked")
    context = await doors_context(request)
    return render(
        request, "admin/doors.html", current, status_code=status, section="doors", error=error, chosen=door, **context
    )
