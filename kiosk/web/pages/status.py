"""The dashboard, the door's admin page (state and a manual unlock) and the system page."""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from kiosk.errors import AuthError, KioskError, LoginThrottledError
from kiosk.web import events as event_service
from kiosk.web import security
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
from kiosk.web.services import WebServices

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
    reason: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=4096)] = "",
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


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1024  # type: ignore[assignment]
    return f"{n} B"


def _backups(request: Request) -> list[dict[str, Any]]:
    from kiosk.gallery.backup import list_backups

    out = []
    for path in reversed(list_backups(services_of(request).cfg)):
        try:
            st = path.stat()
        except OSError:
            continue
        created = datetime.fromtimestamp(st.st_mtime, tz=UTC).isoformat()
        out.append({"name": path.name, "size_text": _size(st.st_size), "created": created})
    return out


def config_text(cfg: Any, indent: str = "") -> str:
    """The running configuration as YAML-like text, section by section (read-only; secrets are file paths)."""
    lines = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            lines.append(f"{indent}{f.name}:")
            lines.append(config_text(value, indent + "  "))
        else:
            shown = list(value) if isinstance(value, tuple) else value
            lines.append(f"{indent}{f.name}: {json.dumps(shown, default=str, ensure_ascii=False)}")
    return "\n".join(lines)


@router.get("/system", response_class=HTMLResponse)
async def system_page(request: Request, current: PageSession) -> Response:
    services = services_of(request)
    info = await run_in_threadpool(system_info, services)
    context = await status_context(request)
    return render(
        request,
        "admin/system.html",
        current,
        section="system",
        notice=notice_of(request),
        checks=info["checks"],
        models=info["models"],
        loop=context["loop"],
        backups=_backups(request),
        config_text=config_text(services.cfg),
    )


@router.post("/system/backups")
def make_backup(request: Request, current: AdminChange) -> Response:
    with security.acting(request, current.account):
        create_backup(services_of(request))
    return see_other("/system?done=backup")


# NOTE: kiosk.web.api's /api/system and /api/backups (owner webapi) are the reference; these two functions follow
# them, and the pages switch to the shared service function once it exists (see the adminui report).
def system_info(services: WebServices) -> dict[str, Any]:
    """Check results (models' hashes, gallery integrity, permissions, event chain) and the configured models."""
    from kiosk.gallery.permissions import permission_problems
    from kiosk.models.manifest import load_manifest

    cfg = services.cfg
    checks: list[dict[str, Any]] = [{"name": "config", "ok": True, "detail": str(cfg.origin or "built-in defaults")}]
    models: list[dict[str, Any]] = []
    try:
        manifest = load_manifest(cfg.models.manifest)
        for role, model_id in (("detector", cfg.models.detector), ("recognizer", cfg.models.recognizer)):
            spec = manifest.get(model_id)
            models.append({"id": spec.id, "task": spec.task, "file": spec.path.name, "sha256": spec.sha256})
            try:
                spec.verify()
                checks.append({"name": f"model {role}", "ok": True, "detail": f"{spec.id} sha256 {spec.sha256[:12]}"})
            except KioskError as exc:
                checks.append({"name": f"model {role}", "ok": False, "detail": error_text(exc)})
    except KioskError as exc:
        checks.append({"name": "models", "ok": False, "detail": error_text(exc)})
    problems = permission_problems(cfg)
    checks.append({"name": "permissions", "ok": not problems, "detail": "; ".join(problems) or "private"})
    try:
        with services.gallery() as g:
            integrity = g.quick_check()
        checks.append({"name": "gallery", "ok": not integrity, "detail": "; ".join(integrity) or "intact"})
    except KioskError as exc:
        checks.append({"name": "gallery", "ok": False, "detail": error_text(exc)})
    chain = event_service.chain_state(services)
    checks.append({"name": "event chain", "ok": chain["ok"], "detail": chain["detail"]})
    return {"checks": checks, "models": models}


def create_backup(services: WebServices) -> None:
    """An online backup into gallery.backup_dir, the oldest pruned beyond gallery.backups_keep (``kiosk backup``)."""
    from kiosk.gallery.backup import backup_gallery

    with services.gallery() as g:
        backup_gallery(services.cfg, g)
