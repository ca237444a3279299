"""Events for the web app: filtered queries with keyset paging, streamed CSV/JSON export, the hash chain's state,
new events as they are written (for server-sent events) and the snapshot of an event.

The door loop writes events into the gallery; the web process only reads them (each call opens its own gallery
connection, so requests never share one across threads).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kiosk.errors import InputError

if TYPE_CHECKING:
    from kiosk.web.services import WebServices

# The columns the web shows and exports, in this order (the chain's own hashes stay in the database).
FIELDS = (
    "id",
    "ts",
    "kind",
    "outcome",
    "person_id",
    "person_name",
    "score",
    "runner_up",
    "threshold",
    "frames",
    "liveness",
    "latency_ms",
    "door_action",
    "track_id",
    "detail",
)
MAX_LIMIT = 1000
EXPORT_PAGE = 500
POLL_S = 0.5
# What kiosk.door.snapshots.SnapshotStore names its files: <UTC time>_<outcome>.jpg, nothing else is served.
SNAPSHOT_NAME = re.compile(r"\d{8}T\d{6}_\d{6}Z_[a-z-]{1,20}\.jpg")


def _filters(
    since: datetime | None = None,
    until: datetime | None = None,
    person: str | int | None = None,
    outcome: str | None = None,
    liveness: str | None = None,
    kind: str | None = None,
) -> dict[str, Any]:
    if since is not None and until is not None and until <= since:
        raise InputError("until must be after since")
    return {"since": since, "until": until, "person": person, "outcome": outcome, "liveness": liveness, "kind": kind}


def event_dict(row: dict[str, Any], snapshots: bool) -> dict[str, Any]:
    """An event as the API shows it, ``snapshot`` saying whether a snapshot may be fetched for it."""
    out = {k: row.get(k) for k in FIELDS}
    detail = row.get("detail")
    out["snapshot"] = bool(snapshots and isinstance(detail, dict) and detail.get("snapshot"))
    return out


def query_events(
    services: WebServices,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    person: str | int | None = None,
    outcome: str | None = None,
    liveness: str | None = None,
    kind: str | None = None,
    limit: int = 100,
    before_id: int | None = None,
) -> list[dict[str, Any]]:
    """Events matching every filter, newest first, at most ``limit`` (1..1000); the next page: ``before_id`` = the
    last id of this one. ``person``: a name (any case) or a person id."""
    filters = _filters(since, until, person, outcome, liveness, kind)
    limit = max(1, min(int(limit), MAX_LIMIT))
    with services.gallery(need_key=False) as g:
        rows = g.find_events(**filters, before_id=before_id, limit=limit)
    return [event_dict(r, services.cfg.events.snapshots) for r in rows]


def chain_state(services: WebServices) -> dict[str, Any]:
    """The event hash chain checked now: {"ok", "events" (checked), "detail", "head_id"}."""
    with services.gallery(need_key=False) as g:
        report = g.verify_events()
    detail = "chain intact" if report.ok else (report.reason or f"broken at event {report.first_broken_id}")
    return {"ok": report.ok, "events": report.checked, "detail": detail, "head_id": report.head_id}


def _cell(value: Any) -> str:
    """A CSV cell; text a spreadsheet would run as a formula (=, +, -, @) is quoted with a leading apostrophe."""
    if value is None:
        return ""
    if isinstance(value, dict | list):
        value = json.dumps(value, sort_keys=True, ensure_ascii=False)
    text = str(value)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not isinstance(value, int | float):
        return "'" + text
    return text


def export_events(services: WebServices, fmt: Literal["csv", "json"], **filters: Any) -> Iterator[bytes]:
    """Every event matching ``filters`` (as in ``query_events``), newest first, as CSV or a JSON array, produced a
    page at a time (each page its own short read), so an export of any size streams in bounded memory."""
    if fmt not in ("csv", "json"):
        raise InputError(f"unknown export format {fmt!r}: csv or json")
    checked = _filters(**filters)
    snapshots = services.cfg.events.snapshots

    def pages() -> Iterator[list[dict[str, Any]]]:
        before: int | None = None
        while True:
            with services.gallery(need_key=False) as g:
                rows = g.find_events(**checked, before_id=before, limit=EXPORT_PAGE)
            if not rows:
                return
            yield [event_dict(r, snapshots) for r in rows]
            before = int(rows[-1]["id"])

    def generate() -> Iterator[bytes]:
        columns = (*FIELDS, "snapshot")
        if fmt == "csv":
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\r\n")
            writer.writerow(columns)
            for page in pages():
                for event in page:
                    writer.writerow([_cell(event[c]) for c in columns])
                yield buf.getvalue().encode()
                buf.seek(0)
                buf.truncate()
            yield buf.getvalue().encode()
            return
        yield b"["
        first = True
        for page in pages():
            chunk = ",\n".join(json.dumps(e, ensure_ascii=False, default=str) for e in page)
            yield (b"\n" if first else b",\n") + chunk.encode()
            first = False
        yield b"\n]\n"

    return generate()


def last_event_id(services: WebServices) -> int:
    with services.gallery(need_key=False) as g:
        return g.last_event_id()


async def new_events(
    services: WebServices,
    after_id: int | None = None,
    *,
    poll_s: float = POLL_S,
    heartbeat_s: float | None = None,
) -> AsyncIterator[dict[str, Any] | None]:
    """Events written after ``after_id`` (default: from now on), oldest first, as they arrive. The gallery's newest
    id is read every ``poll_s`` in a worker thread; the rows are read only when it moved. With ``heartbeat_s``, a
    None after that many seconds without an event (a stream's keep-alive)."""
    last = await asyncio.to_thread(last_event_id, services) if after_id is None else int(after_id)
    snapshots = services.cfg.events.snapshots
    quiet = 0.0

    def newer(after: int) -> list[dict[str, Any]]:
        with services.gallery(need_key=False) as g:
            if g.last_event_id() <= after:
                return []
            return g.find_events(after_id=after, limit=MAX_LIMIT)[::-1]

    while True:
        rows = await asyncio.to_thread(newer, last)
        for row in rows:
            last = max(last, int(row["id"]))
            yield event_dict(row, snapshots)
        quiet = 0.0 if rows else quiet + poll_s
        if heartbeat_s is not None and quiet >= heartbeat_s:
            quiet = 0.0
            yield None
        await asyncio.sleep(poll_s)


def snapshot_path(services: WebServices, event_id: int) -> Path | None:
    """The snapshot file of an event, found from the event's own record (never from a name a client sent), or None
    when snapshots are off, the event has none, or the file is gone (pruned) or is not a plain file of the folder."""
    cfg = services.cfg
    if not cfg.events.snapshots:
        return None
    with services.gallery(need_key=False) as g:
        row = g.event(event_id)
    detail = None if row is None else row.get("detail")
    name = detail.get("snapshot") if isinstance(detail, dict) else None
    if not isinstance(name, str) or not SNAPSHOT_NAME.fullmatch(name):
        return None
    folder = cfg.snapshot_dir.resolve()
    path = folder / name
    if path.is_symlink() or not path.is_file() or path.resolve().parent != folder:
        return None
    return path
