"""The events page: browse and filter, live updates (the rows are fetched again when the API's event stream says
something happened), snapshots where enabled, export links, and the event chain's state."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from kiosk.errors import InputError, KioskError
from kiosk.web import events as event_service
from kiosk.web import people as people_service
from kiosk.web.pages.common import PageSession, error_text, render, services_of

router = APIRouter()

PAGE = 50
OUTCOMES = ("granted", "denied", "unknown")
LIVENESS = ("pass", "fail", "pending", "unavailable", "not_required", "not_checked")
FILTERS = ("since", "until", "person", "outcome", "liveness")


def event_rows(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events as the tables show them: who made an admin change, and whether there is a snapshot."""
    rows = []
    for e in events:
        detail = e.get("detail")
        by = detail.get("by") if isinstance(detail, dict) and e.get("kind") == "admin" else None
        name = detail.get("snapshot") if isinstance(detail, dict) else None
        # only a name the snapshot route would serve gets an <img> (a broken image helps nobody)
        snapshot = (
            bool(e.get("snapshot")) and isinstance(name, str) and bool(event_service.SNAPSHOT_NAME.fullmatch(name))
        )
        rows.append(
            {k: e.get(k) for k in ("id", "ts", "kind", "outcome", "person_id", "person_name", "score", "liveness")}
            | {"door_action": e.get("door_action"), "by": by, "snapshot": snapshot}
        )
    return rows


def _when(text: str, key: str) -> datetime | None:
    """A ``datetime-local`` value, read as UTC (the page says so)."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    except ValueError:
        raise InputError(f"{key}: not a date and time ({text[:40]!r})") from None


def _filters(request: Request) -> dict[str, str]:
    """The filter fields as the form sent them (empty ones dropped); unknown outcome/liveness values ignored."""
    q = request.query_params
    out = {k: q.get(k, "").strip()[:200] for k in FILTERS}
    if out["outcome"] not in OUTCOMES:
        out["outcome"] = ""
    if out["liveness"] not in LIVENESS:
        out["liveness"] = ""
    return {k: v for k, v in out.items() if v}


def _service_filters(filters: dict[str, str]) -> dict[str, Any]:
    return {
        "since": _when(filters.get("since", ""), "since"),
        "until": _when(filters.get("until", ""), "until"),
        "person": filters.get("person") or None,
        "outcome": filters.get("outcome") or None,
        "liveness": filters.get("liveness") or None,
    }


def _qs(params: dict[str, Any], lead: str = "?") -> str:
    clean = {k: v for k, v in params.items() if v not in (None, "")}
    return lead + urlencode(clean) if clean else ""


def _before(request: Request) -> int | None:
    text = request.query_params.get("before_id", "")
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) < 2**63:
        raise InputError("before_id: a positive event id")
    return int(text)


def _load(request: Request) -> tuple[dict[str, str], list[dict[str, Any]], str | None]:
    filters = _filters(request)
    try:
        before_id = _before(request)
        events = event_service.query_events(
            services_of(request), **_service_filters(filters), before_id=before_id, limit=PAGE
        )
    except KioskError as exc:
        return filters, [], error_text(exc)
    return filters, events, None


@router.get("/events", response_class=HTMLResponse)
def events_page(request: Request, current: PageSession) -> Response:
    services = services_of(request)
    filters, events, error = _load(request)
    try:
        before_id = _before(request)
        api = {k: v for k, v in _service_filters(filters).items() if v is not None}
    except InputError:
        before_id, api = None, {}
    export = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in api.items()}
    older = _qs(filters | {"before_id": events[-1]["id"]}) if len(events) == PAGE else ""
    return render(
        request,
        "admin/events.html",
        current,
        status_code=422 if error else 200,
        section="events",
        error=error,
        filters=filters,
        events=event_rows(events),
        snapshots=services.cfg.events.snapshots,
        chain=event_service.chain_state(services),
        outcomes=OUTCOMES,
        livenesses=LIVENESS,
        names=[p["name"] for p in people_service.list_people(services)],
        export_query=_qs(export, "&"),
        rows_query=_qs(filters),
        first_query=_qs(filters),
        older_query=older,
        before_id=before_id,
        live=before_id is None and not error,
    )


@router.get("/events/rows", response_class=HTMLResponse)
def event_rows_partial(request: Request, current: PageSession) -> Response:
    """The newest page of rows with the page's filters: the live update swaps it in."""
    _, events, _ = _load(request)
    snapshots = services_of(request).cfg.events.snapshots
    return render(request, "admin/_events_rows.html", current, events=event_rows(events), snapshots=snapshots)


@router.get("/events/{event_id}/snapshot")
def snapshot(request: Request, event_id: int, current: PageSession) -> Response:
    """An event's snapshot, found from the event's own record; 404 when snapshots are off or it is gone."""
    if not 1 <= event_id < 2**63:
        raise HTTPException(404, "no such event")
    path = event_service.snapshot_path(services_of(request), event_id)
    if path is None:
        raise HTTPException(404, "no snapshot for this event")
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "no-store"})
