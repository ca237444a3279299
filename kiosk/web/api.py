"""The JSON API under ``/api/`` (besides the session and health routes of ``api_session``): people and enrolment,
events, the door, the system and backups. Documented by the OpenAPI document at ``/api/openapi.json``.

Every route needs a login; every change needs an admin, the session's CSRF token, and runs as the account's actor
(``security.acting``), so the gallery's hash-chained audit events name it. Errors are KioskErrors, turned into JSON
``{"detail": ...}`` with a fitting status by the app (``app.ERROR_STATUS``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import unicodedata
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Header, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from kiosk import authz
from kiosk.checks import model_list
from kiosk.errors import AuthError, InputError, KioskError, LoginThrottledError
from kiosk.gallery.backup import backup_gallery, list_backups
from kiosk.web import doors, events, people
from kiosk.web.accounts import Account
from kiosk.web.people import VerdictCode
from kiosk.web.security import AdminAccount, ViewerAccount, acting, client_address, csrf, services_of

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api")
CHANGE = [Depends(csrf)]  # every changing route: same origin and the session's CSRF token
MAX_REASON = 200
SSE_HEARTBEAT_S = 15.0


class Problem(BaseModel):
    detail: Any = Field(description="one line saying what is wrong (a list of field errors for a malformed request)")


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "a body that cannot be parsed"},
    401: {"model": Problem, "description": "not logged in"},
    403: {"model": Problem, "description": "not allowed (a viewer on a change, or a missing CSRF token)"},
    422: {"model": Problem, "description": "bad input"},
    503: {"model": Problem, "description": "the gallery or the door loop cannot do it now"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "no such thing"}}


# -- models --------------------------------------------------------------------------------------------------------


class PersonOut(BaseModel):
    id: int
    name: str
    enabled: bool
    valid_from: str | None
    valid_until: str | None
    templates: int = Field(description="number of face templates")
    created: str | None


class TemplateOut(BaseModel):
    id: int
    quality: float | None
    created: str
    source: str | None = Field(description="the photo or camera frame it came from")
    model_id: str
    model_sha256: str


class PersonDetailOut(BaseModel):
    id: int
    name: str
    enabled: bool
    valid_from: str | None
    valid_until: str | None
    templates: list[TemplateOut]
    created: str | None


class PersonPatch(BaseModel):
    """The fields to change; a field left out stays as it is, a null validity bound removes it."""

    model_config = {"extra": "forbid"}
    name: str | None = Field(default=None, max_length=400)
    enabled: bool | None = None
    valid_from: datetime | None = None
    valid_until: datetime | None = None


class LooksLike(BaseModel):
    person_id: int
    name: str
    score: float


class VerdictOut(BaseModel):
    index: int
    filename: str
    ok: bool
    code: VerdictCode
    message: str
    faces: list[list[float]] = Field(description="several faces: [x, y, w, h] in 0..1, left to right")
    measured: dict[str, float]
    looks_like: LooksLike | None


class EnrolOut(BaseModel):
    person: PersonOut
    verdicts: list[VerdictOut]


class EnrolRefused(BaseModel):
    detail: Any = Field(description="what is wrong (a list of field errors for a malformed request)")
    verdicts: list[VerdictOut] = Field(default=[], description="a verdict per photo, when photos were judged")


class RemovalOut(BaseModel):
    person_id: int
    name: str
    templates: int = Field(description="templates erased from the gallery")
    backups: int = Field(description="database files in the backup folder")
    erased_from: int = Field(description="backups the person was erased from")
    failed: list[str] = Field(description="backups the person could not be erased from: delete them")


class EventOut(BaseModel):
    id: int
    ts: str
    kind: str
    outcome: str
    person_id: int | None
    person_name: str | None
    score: float | None
    runner_up: float | None
    threshold: float | None
    frames: int | None
    liveness: str | None
    latency_ms: float | None
    door_action: str | None
    track_id: int | None
    detail: Any
    snapshot: bool = Field(description="a snapshot can be fetched from /api/events/{id}/snapshot")


class EventsOut(BaseModel):
    events: list[EventOut]
    next_before_id: int | None = Field(description="pass as before_id for the next (older) page; null at the end")


class ChainOut(BaseModel):
    ok: bool
    events: int = Field(description="events whose link was checked")
    detail: str
    head_id: int | None


class DoorOut(BaseModel):
    loop: Literal["up", "down"]
    service: str
    relay: str | None
    contact: str | None
    fps: float | None
    detail: str | None = Field(description="why the door's state is unknown, when it is")


class UnlockIn(BaseModel):
    reason: str = Field(max_length=1000, description="why the door is unlocked by hand (kept in the event log)")
    password: str = Field(max_length=4096, description="the account's password, entered again")


class UnlockOut(BaseModel):
    ok: bool
    pulse_s: float | None


class SiteDoorOut(BaseModel):
    door: str = Field(description="the door's id at the hub")
    online: bool = Field(description="heard from within hub.heartbeat_timeout_s")
    last_seen: str | None = Field(description="when the hub last heard from it (UTC, ISO 8601)")
    rev: int | None = Field(description="the site gallery revision (stream sequence) the door applied")
    lag: int | None = Field(description="how many gallery changes the door is behind the hub")
    in_sync: bool | None = Field(description="its gallery digest equals the hub's; null before its first heartbeat")
    outbox_depth: int | None = Field(description="events the door holds that the hub has not confirmed")
    last_event: int | None = Field(description="the id of the door's newest event")
    events_at_hub: int | None = Field(description="the hub holds every event of the door up to this id, verified")
    chain: str = Field(description="'ok', or 'broken at N': the door's event chain as the hub verified it")
    chain_broken_at: int | None = Field(description="the first event id whose link failed; null when the chain is ok")
    stale_s: float | None = Field(description="seconds since the door last confirmed its gallery up to date")
    fps: float | None = Field(description="the door loop's frame rate in its last heartbeat")


class DoorUnlockOut(BaseModel):
    door: str
    ok: bool
    pulse_s: float | None


class CheckOut(BaseModel):
    model_config = {"extra": "allow"}
    check: str
    ok: bool
    detail: str


class ModelOut(BaseModel):
    id: str
    task: str
    format: str
    licence: str
    sha256: str
    file: str
    active: bool
    status: str


class SystemOut(BaseModel):
    ok: bool = Field(description="every check passed")
    checks: list[CheckOut]
    models: list[ModelOut]
    loop: dict[str, Any] | None = Field(description="the door loop's status (fps, latencies); null when it is down")
    chain: ChainOut
    config: dict[str, Any] = Field(description="the running configuration, read-only")


class BackupOut(BaseModel):
    name: str
    size: int
    created: str


# -- people --------------------------------------------------------------------------------------------------------


@router.get("/people", tags=["people"], responses=ERRORS)
def get_people(
    request: Request, account: ViewerAccount, q: Annotated[str, Query(max_length=200)] = ""
) -> list[PersonOut]:
    """Everyone enrolled, by name; ``q`` keeps the names containing it."""
    return [PersonOut(**p) for p in people.list_people(services_of(request), q)]


def _faces(text: str | None) -> dict[int, int] | None:
    if not text:
        return None
    try:
        raw = json.loads(text)
        picks = {int(k): int(v) for k, v in raw.items()}
    except (ValueError, TypeError, AttributeError, OverflowError):
        raise InputError('faces: expected JSON like {"0": 1} (photo index: face index, 0 = leftmost)') from None
    return picks


def _read_uploads(photos: list[UploadFile], limit_bytes: int) -> list[tuple[str, bytes]]:
    """(file name, bytes) of each upload; a file over the limit is cut one byte past it (its verdict: too large)."""
    return [(f.filename or "", f.file.read(limit_bytes + 1)) for f in photos]


@router.post(
    "/people",
    tags=["people"],
    status_code=201,
    dependencies=CHANGE,
    responses={**ERRORS, 409: {"model": Problem}, 422: {"model": EnrolRefused, "description": "photos refused"}},
)
def post_people(
    request: Request,
    account: AdminAccount,
    name: Annotated[str, Form(max_length=400)],
    photos: Annotated[list[UploadFile], File(description="JPEG, PNG or WebP photos (HEIC with pillow-heif)")],
    faces: Annotated[str | None, Form(description='JSON {"photo index": face index}: picks a face')] = None,
    append: Annotated[bool, Form(description="add the photos to the person of this name")] = False,
    partial: Annotated[bool, Form(description="store the photos that passed even when others failed")] = False,
) -> Any:
    """Enrol a person from photos: a verdict per photo, then (when every photo passed, or with ``partial``) the
    templates stored in one transaction. 422 with the verdicts when nothing was stored."""
    services = services_of(request)
    uploads = _read_uploads(photos, int(services.cfg.web.upload_max_mb * 1e6))
    with acting(request, account):
        person, verdicts = people.enrol_photos(services, name, uploads, _faces(faces), append=append, partial=partial)
    body = [v.as_dict() for v in verdicts]
    if person is None:
        rejected = sum(not v.ok for v in verdicts)
        detail = f"nothing enrolled: {rejected} of {len(verdicts)} photo(s) rejected"
        return JSONResponse({"detail": detail, "verdicts": body}, status_code=422)
    return EnrolOut(person=PersonOut(**person), verdicts=[VerdictOut(**v) for v in body])


@router.get("/people/{person_id}", tags=["people"], responses={**ERRORS, **NOT_FOUND})
def get_person(request: Request, account: ViewerAccount, person_id: int) -> PersonDetailOut:
    """A person and their templates (quality, when, from what; never the template itself)."""
    return PersonDetailOut(**people.person_detail(services_of(request), person_id))


@router.patch("/people/{person_id}", tags=["people"], dependencies=CHANGE, responses={**ERRORS, **NOT_FOUND})
def patch_person(request: Request, account: AdminAccount, person_id: int, body: PersonPatch) -> PersonOut:
    """Rename, enable or disable, set or clear the validity window."""
    changes = body.model_dump(exclude_unset=True)
    with acting(request, account):
        return PersonOut(**people.update_person(services_of(request), person_id, changes))


@router.delete("/people/{person_id}", tags=["people"], dependencies=CHANGE, responses={**ERRORS, **NOT_FOUND})
def delete_person(request: Request, account: AdminAccount, person_id: int) -> RemovalOut:
    """Remove a person and erase their templates from the gallery and from every backup."""
    with acting(request, account):
        removal = people.remove_person(services_of(request), person_id)
    return RemovalOut(**{**dataclasses.asdict(removal), "failed": list(removal.failed)})


@router.delete(
    "/people/{person_id}/templates/{template_id}",
    tags=["people"],
    dependencies=CHANGE,
    responses={**ERRORS, **NOT_FOUND},
)
def delete_template(request: Request, account: AdminAccount, person_id: int, template_id: int) -> PersonOut:
    """Delete and erase one template (a bad photo) of a person."""
    with acting(request, account):
        return PersonOut(**people.delete_template(services_of(request), person_id, template_id))


# -- events --------------------------------------------------------------------------------------------------------


Text = Annotated[str | None, Query(max_length=200)]


def _filters(
    since: datetime | None = None,
    until: datetime | None = None,
    person: Text = None,
    person_id: int | None = None,
    outcome: Text = None,
    liveness: Text = None,
    kind: Text = None,
) -> dict[str, Any]:
    """The event filters of the query string (``person``: a name, any case; ``person_id``: an id)."""
    who: str | int | None = person_id if person_id is not None else person
    return {"since": since, "until": until, "person": who, "outcome": outcome, "liveness": liveness, "kind": kind}


Filters = Annotated[dict[str, Any], Depends(_filters)]


@router.get("/events", tags=["events"], responses=ERRORS)
def get_events(
    request: Request,
    account: ViewerAccount,
    filters: Filters,
    limit: Annotated[int, Query(ge=1, le=events.MAX_LIMIT)] = 100,
    before_id: int | None = None,
) -> EventsOut:
    """Events, newest first, filtered by time (since inclusive, until exclusive), person, outcome, liveness and
    kind; page with ``before_id``."""
    rows = events.query_events(services_of(request), **filters, limit=limit, before_id=before_id)
    more = len(rows) == limit and rows
    return EventsOut(events=[EventOut(**e) for e in rows], next_before_id=int(rows[-1]["id"]) if more else None)


@router.get(
    "/events/export",
    tags=["events"],
    response_class=StreamingResponse,
    responses={**ERRORS, 200: {"content": {"text/csv": {}, "application/json": {}}, "description": "the events"}},
)
def export_events(
    request: Request,
    account: ViewerAccount,
    filters: Filters,
    format: Literal["csv", "json"] = "csv",
) -> StreamingResponse:
    """Every matching event, newest first, as a CSV or JSON download (streamed)."""
    body = events.export_events(services_of(request), format, **filters)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    media = "text/csv; charset=utf-8" if format == "csv" else "application/json"
    headers = {"Content-Disposition": f'attachment; filename="events-{stamp}.{format}"'}
    return StreamingResponse(body, media_type=media, headers=headers)


@router.get("/events/chain", tags=["events"], responses=ERRORS)
def get_chain(request: Request, account: ViewerAccount) -> ChainOut:
    """The event log's hash chain, verified now from the first event to the newest."""
    return ChainOut(**events.chain_state(services_of(request)))


@router.get(
    "/events/stream",
    tags=["events"],
    response_class=StreamingResponse,
    responses={**ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}},
)
async def stream_events(
    request: Request,
    account: ViewerAccount,
    after_id: int | None = None,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
) -> StreamingResponse:
    """New events as server-sent events (``event: event``, the event as JSON, its id as the SSE id), from
    ``after_id`` or the ``Last-Event-ID`` a reconnecting browser sends, else from now. A comment every 15 s keeps
    the connection open; the stream ends when the session does."""
    services = services_of(request)
    start = after_id
    if start is None and last_event_id is not None and last_event_id.isascii() and last_event_id.isdigit():
        start = int(last_event_id)
    token = request.cookies.get("kiosk_session")

    async def body() -> AsyncIterator[bytes]:
        yield b"retry: 2000\n\n"
        async for event in events.new_events(services, start, heartbeat_s=SSE_HEARTBEAT_S):
            if event is None:
                if await run_in_threadpool(services.accounts.session, token) is None:
                    return
                yield b": keep-alive\n\n"
                continue
            data = json.dumps(event, ensure_ascii=False, default=str)
            yield f"id: {event['id']}\nevent: event\ndata: {data}\n\n".encode()

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


@router.get(
    "/events/{event_id}/snapshot",
    tags=["events"],
    response_class=Response,
    responses={**ERRORS, **NOT_FOUND, 200: {"content": {"image/jpeg": {}}, "description": "the face snapshot"}},
)
def get_snapshot(request: Request, account: ViewerAccount, event_id: int) -> Response:
    """The face snapshot of a decision, when ``events.snapshots`` is on and it has not been pruned."""
    path = events.snapshot_path(services_of(request), event_id)
    try:
        data = None if path is None else path.read_bytes()  # small; read now, so a prune cannot race the reply
    except OSError:
        data = None
    if data is None:
        raise HTTPException(404, f"event {event_id} has no snapshot (snapshots off, none taken, or pruned)")
    return Response(data, media_type="image/jpeg")


# -- door ----------------------------------------------------------------------------------------------------------


async def _loop_status(request: Request) -> tuple[dict[str, Any] | None, str | None]:
    """The loop's status reply, or (None, why) when it cannot be had."""
    try:
        reply = await services_of(request).link.request({"op": "status"}, timeout_s=2.0)
    except KioskError as exc:
        return None, f"the door loop cannot be reached ({exc})"
    if not reply.get("ok"):
        return None, f"the door loop refused the status request ({reply.get('error', 'error')})"
    return reply, None


@router.get("/door", tags=["door"], responses=ERRORS)
async def get_door(request: Request, account: ViewerAccount) -> DoorOut:
    """The relay and the door contact as the loop reports them, and whether the loop is up."""
    state = services_of(request).link.state
    status, why = await _loop_status(request)
    door = status.get("door") if status else None
    door = door if isinstance(door, dict) else {}
    service = str(state.get("service", "down"))
    fps = state.get("fps")
    return DoorOut(
        loop="down" if service == "down" and status is None else "up",
        service=service,
        relay=door.get("relay") if isinstance(door.get("relay"), str) else None,
        contact=door.get("contact") if isinstance(door.get("contact"), str) else None,
        fps=float(fps) if isinstance(fps, int | float) and not isinstance(fps, bool) else None,
        detail=why,
    )


def _reason(text: str) -> str:
    reason = unicodedata.normalize("NFC", text.strip())
    if not reason:
        raise InputError("reason: say why the door is unlocked by hand")
    if len(reason) > MAX_REASON:
        raise InputError(f"reason: {len(reason)} characters; the limit is {MAX_REASON}")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in reason):
        raise InputError("reason: control or formatting characters are not allowed")
    return reason


async def _confirm_password(request: Request, account: Account, password: str, what: str) -> None:
    """The account's password, entered again for an unlock; 403 when wrong (throttled like a login)."""
    services = services_of(request)
    try:
        await run_in_threadpool(services.accounts.authenticate, account.name, password, client_address(request))
    except LoginThrottledError:
        raise
    except AuthError:
        log.warning("%s refused for web account %s: wrong password", what, account.name)
        raise HTTPException(403, "wrong password: the door was not unlocked") from None


_REFUSALS = {"busy": 409, "unavailable": 503}


@router.post(
    "/door/unlock",
    tags=["door"],
    dependencies=CHANGE,
    responses={**ERRORS, 409: {"model": Problem}, 429: {"model": Problem}, 502: {"model": Problem}},
)
async def unlock(request: Request, account: AdminAccount, body: UnlockIn) -> UnlockOut:
    """Unlock the door once, by hand: an admin, the password entered again and a reason. The loop pulses the relay
    and records the unlock with the account and the reason in its event chain. 503 when the loop is down."""
    services = services_of(request)
    reason = _reason(body.reason)
    await _confirm_password(request, account, body.password, "manual unlock")
    with acting(request, account):
        actor = authz.actor()
        try:
            reply = await services.link.request({"op": "unlock", "reason": reason, "actor": actor})
        except KioskError as exc:
            log.warning("manual unlock by %s not confirmed: %s", account.name, exc)
            raise HTTPException(
                503, f"the door loop is not running or did not answer ({exc}): no unlock was confirmed"
            ) from None
    if not reply.get("ok"):
        code = str(reply.get("error", "error"))
        detail = str(reply.get("detail", ""))[:200]
        log.warning("manual unlock by %s refused by the loop: %s %s", account.name, code, detail)
        raise HTTPException(
            _REFUSALS.get(code, 502), f"the door loop refused the unlock ({code}){': ' + detail if detail else ''}"
        )
    log.info("manual unlock by %s sent to the loop", account.name)
    pulse = reply.get("pulse_s")
    return UnlockOut(ok=True, pulse_s=float(pulse) if isinstance(pulse, int | float) else None)


# -- the site's doors (fleet mode) ----------------------------------------------------------------------------------

DOOR_ID = PathParam(max_length=63, description="a door id: 1-63 of a-z, 0-9 and '-'")
FLEET_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "not a hub's admin app, or no such door at this hub"},
    502: {"model": Problem, "description": "the door refused the command"},
    503: {"model": Problem, "description": "the site broker or the gallery cannot be reached"},
    504: {"model": Problem, "description": "the door did not answer: nothing was done"},
}


@router.get("/doors", tags=["doors"], responses={**ERRORS, 404: FLEET_ERRORS[404]})
def get_doors(request: Request, account: ViewerAccount) -> list[SiteDoorOut]:
    """Every door of the site as the hub last heard it (online, gallery revision and lag, in sync, outbox depth,
    newest event, events held at the hub, chain, staleness, frame rate). 404 when the admin app does not run
    against a site hub (``<data_dir>/fleet/hub.secret``)."""
    return [SiteDoorOut(**row) for row in doors.door_states(services_of(request))]


@router.post(
    "/doors/{door}/unlock",
    tags=["doors"],
    dependencies=CHANGE,
    responses={**ERRORS, **FLEET_ERRORS, 429: {"model": Problem}},
)
async def unlock_door(
    request: Request, account: AdminAccount, body: UnlockIn, door: Annotated[str, DOOR_ID]
) -> DoorUnlockOut:
    """Unlock a door of the site once, now, through the hub: an admin, the password entered again and a reason.
    The door pulses its relay and records the unlock with the account and the reason in its own event chain. Live
    only: 504 when the door does not answer (it is not unlocked later), 502 when it refuses."""
    services = services_of(request)
    reason = _reason(body.reason)
    await run_in_threadpool(doors.check_door, services, door)
    await _confirm_password(request, account, body.password, f"remote unlock of door {door}")
    with acting(request, account):
        actor = authz.actor() or f"web:{account.name}"
    try:
        reply = await run_in_threadpool(doors.unlock, services, door, actor=actor, reason=reason)
    except KioskError as exc:
        log.warning("remote unlock of door %s by %s not confirmed: %s", door, account.name, exc)
        raise
    pulse = reply.get("pulse_s")
    pulse_s = float(pulse) if isinstance(pulse, int | float) and not isinstance(pulse, bool) else None
    return DoorUnlockOut(door=door, ok=True, pulse_s=pulse_s)


# -- system and backups --------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """The config as JSON: paths as text, tuples as lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _system(request: Request) -> dict[str, Any]:
    services = services_of(request)
    checks = services.worker().checks()  # the models are loaded there, never in the web process
    return {
        "ok": all(c["ok"] for c in checks),
        "checks": checks,
        "models": model_list(services.cfg),
        "chain": events.chain_state(services),
        # The config holds paths to key files, never key material.
        "config": _plain(dataclasses.asdict(services.cfg)),
    }


@router.get("/system", tags=["system"], responses=ERRORS)
async def get_system(request: Request, account: ViewerAccount) -> SystemOut:
    """``kiosk check``'s results, the models and their hashes, the loop's fps and latencies, the event chain's
    state and the running configuration (read-only)."""
    body = await run_in_threadpool(_system, request)
    status, _ = await _loop_status(request)
    loop = status.get("loop") if status else None
    return SystemOut(**body, loop=loop if isinstance(loop, dict) else None)


def _backup_out(path: Path) -> BackupOut:
    st = path.stat()
    return BackupOut(name=path.name, size=st.st_size, created=datetime.fromtimestamp(st.st_mtime, UTC).isoformat())


@router.get("/backups", tags=["system"], responses=ERRORS)
def get_backups(request: Request, account: ViewerAccount) -> list[BackupOut]:
    """The gallery backups in the backup folder, oldest first."""
    return [_backup_out(p) for p in list_backups(services_of(request).cfg)]


@router.post("/backups", tags=["system"], status_code=201, dependencies=CHANGE, responses=ERRORS)
def post_backup(request: Request, account: AdminAccount) -> BackupOut:
    """Write a backup of the gallery now (the oldest beyond ``gallery.backups_keep`` are pruned)."""
    services = services_of(request)
    with acting(request, account), services.gallery() as g:
        path = backup_gallery(services.cfg, g)
        g.add_event("admin", "backed up", detail={"by": authz.actor(), "file": path.name})
    return _backup_out(path)


@router.get(
    "/backups/{name}",
    tags=["system"],
    response_class=StreamingResponse,
    responses={**ERRORS, **NOT_FOUND, 200: {"content": {"application/vnd.sqlite3": {}}, "description": "the file"}},
)
def download_backup(request: Request, account: AdminAccount, name: str) -> StreamingResponse:
    """Download a backup (admins only: it holds the templates) by its exact name from the list; audited."""
    services = services_of(request)
    found = {p.name: p for p in list_backups(services.cfg)}.get(name)
    if found is None:
        raise HTTPException(404, "no backup of that name: see GET /api/backups")
    try:
        # Opened before the reply starts: a backup pruned meanwhile is still sent whole (the open file stays).
        handle = found.open("rb")
    except OSError:
        raise HTTPException(404, "no backup of that name: see GET /api/backups") from None
    with acting(request, account), services.gallery(need_key=False) as g:
        g.add_event("admin", "backup downloaded", detail={"by": authz.actor(), "file": found.name})

    def chunks() -> Iterator[bytes]:
        with handle:
            while chunk := handle.read(1 << 16):
                yield chunk

    headers = {"Content-Disposition": f'attachment; filename="{found.name}"'}
    return StreamingResponse(chunks(), media_type="application/vnd.sqlite3", headers=headers)
