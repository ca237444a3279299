"""The event log: validated rows appended to the hash chain, and the gallery's event methods (``add_event``,
``events``, ``verify_events``, and the admin event that goes with every change)."""

from __future__ import annotations

import contextlib
import json
import unicodedata
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlite_utils import Database

from kiosk.gallery import utc_iso
from kiosk.gallery.chain import ANCHOR_KEY, CHAIN_FIELDS, GENESIS_HASH, EventChainReport, event_hash, verify_chain
from kiosk.gallery.connection import GalleryConnection
from kiosk.gallery.records import _has_surrogate

# fmt: off
EVENT_FIELDS = ("ts", "track_id", "person_id", "person_name", "score", "runner_up", "threshold", "frames",
                "liveness", "latency_ms", "door_action", "detail")
# fmt: on
_INT_FIELDS = {"track_id", "person_id", "frames"}
_REAL_FIELDS = {"score", "runner_up", "threshold", "latency_ms"}


def _event_row(kind: str, outcome: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """A validated events row: known fields only, numbers as Python numbers, ``detail`` as JSON text."""
    unknown = sorted(set(fields) - set(EVENT_FIELDS))
    if unknown:
        raise ValueError(f"unknown event field(s) {', '.join(unknown)}; allowed: {', '.join(EVENT_FIELDS)}")
    row: dict[str, Any] = {"ts": utc_iso(fields.get("ts")), "kind": str(kind), "outcome": str(outcome)}
    for key, value in fields.items():
        if value is None or key == "ts":
            continue
        if key in _INT_FIELDS:
            row[key] = int(value)
        elif key in _REAL_FIELDS:
            row[key] = float(value)  # numpy scalars cannot be bound by sqlite3
        else:
            row[key] = json.dumps(value, sort_keys=True, default=str) if key == "detail" else str(value)
    return row


def _with_details(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with each JSON ``detail`` parsed (text written by other tools is handed back as is)."""
    for r in rows:
        if r["detail"] is not None:
            with contextlib.suppress(ValueError):
                r["detail"] = json.loads(r["detail"])
    return rows


class EventLog(GalleryConnection):
    """The gallery's event methods: every event is appended to the hash chain in its writer's transaction."""

    @staticmethod
    def _insert_event(db: Database, row: Mapping[str, Any]) -> int:
        """Append a row to the hash chain: prev_hash = the newest event's hash, hash over the row as stored.

        Runs inside the caller's BEGIN IMMEDIATE transaction, so no other writer can slip an event in between.
        """
        last = db.execute("SELECT hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
        prev = GENESIS_HASH if last is None else str(last[0] or "")
        sql = f"INSERT INTO events ({', '.join(row)}, prev_hash) VALUES ({', '.join('?' * (len(row) + 1))})"
        event_id = int(db.execute(sql, [*row.values(), prev]).lastrowid or 0)
        stored = db.execute(f"SELECT {', '.join(CHAIN_FIELDS)} FROM events WHERE id = ?", [event_id]).fetchone()
        digest = event_hash(prev, dict(zip(CHAIN_FIELDS, stored, strict=True)))
        db.execute("UPDATE events SET hash = ? WHERE id = ?", [digest, event_id])
        return event_id

    def _audit(
        self,
        db: Database,
        action: str,
        person_id: int | None = None,
        person_name: str | None = None,
        detail: Mapping[str, Any] | None = None,
        *,
        always: bool = False,
    ) -> None:
        """The admin event of a change, in the change's own transaction: neither is ever stored without the other.

        Written when an actor is set (admin commands), or ``always`` (rekey, restore). Counts only, never templates.
        """
        if self.actor is None and not always:
            return
        fields = {"person_id": person_id, "person_name": person_name, "detail": {"by": self.actor, **(detail or {})}}
        self._insert_event(db, _event_row("admin", action, fields))

    def add_event(self, kind: str, outcome: str, *, wait_s: float | None = None, **fields: Any) -> int:
        """Append an event (access attempt, enrolment, admin action); returns its id. ``detail`` -> JSON.

        ``wait_s`` replaces ``busy_timeout_s`` for this write: the door loop waits briefly and retries later rather
        than stall behind another writer.
        """
        row = _event_row(kind, outcome, fields)
        if wait_s is None:
            with self._write() as db:
                return self._insert_event(db, row)
        with self._guard():
            self._db.execute(f"PRAGMA busy_timeout = {max(0, round(wait_s * 1000))}")
        try:
            with self._write() as db:
                return self._insert_event(db, row)
        finally:
            with self._guard():
                self._db.execute(f"PRAGMA busy_timeout = {round(self.busy_timeout_s * 1000)}")

    def events(
        self, *, since: datetime | None = None, person: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Events at or after ``since``, of ``person`` (any case), the newest ``limit``; newest last."""
        where: list[str] = ["1"]
        params: list[Any] = []
        if since is not None:
            where.append("ts >= ?")
            params.append(utc_iso(since))
        if person is not None and _has_surrogate(person):
            return []  # no stored name can contain one (clean_name refuses them)
        if person is not None:
            where.append("person_name = ? COLLATE NOCASE")
            params.append(unicodedata.normalize("NFC", person.strip()))
        sql = f"SELECT * FROM events WHERE {' AND '.join(where)} ORDER BY ts DESC, id DESC"
        if limit is not None:
            sql, params = sql + " LIMIT ?", [*params, int(limit)]
        return _with_details(self._rows(sql, params))[::-1]

    def find_events(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        person: str | int | None = None,
        outcome: str | None = None,
        liveness: str | None = None,
        kind: str | None = None,
        before_id: int | None = None,
        after_id: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Events matching every filter given, newest first (by id), at most ``limit``: keyset paging passes the
        last id seen as ``before_id``; ``after_id`` gives the events newer than one already seen. ``since`` is
        inclusive, ``until`` exclusive; ``person`` is a name (any case) or a person id."""
        where: list[str] = ["1"]
        params: list[Any] = []
        if since is not None:
            where.append("ts >= ?")
            params.append(utc_iso(since))
        if until is not None:
            where.append("ts < ?")
            params.append(utc_iso(until))
        if isinstance(person, int):
            where.append("person_id = ?")
            params.append(person if -(2**63) <= person < 2**63 else 0)
        elif person is not None:
            if _has_surrogate(person):
                return []  # no stored name can contain one (clean_name refuses them)
            where.append("person_name = ? COLLATE NOCASE")
            params.append(unicodedata.normalize("NFC", person.strip()))
        for column, value in (("outcome", outcome), ("liveness", liveness), ("kind", kind)):
            if value is not None:
                if _has_surrogate(value):
                    return []
                where.append(f"{column} = ?")
                params.append(value)
        for op, bound in (("<", before_id), (">", after_id)):
            if bound is not None:
                where.append(f"id {op} ?")
                params.append(max(-(2**63), min(int(bound), 2**63 - 1)))
        sql = f"SELECT * FROM events WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?"
        return _with_details(self._rows(sql, [*params, max(0, int(limit))]))

    def event(self, event_id: int) -> dict[str, Any] | None:
        """One event by id (its detail parsed), or None."""
        if not -(2**63) <= event_id < 2**63:
            return None
        rows = _with_details(self._rows("SELECT * FROM events WHERE id = ?", [event_id]))
        return rows[0] if rows else None

    def raw_events_after(self, after_id: int, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` events with an id above ``after_id``, oldest first, exactly as stored (``detail`` as its
        JSON text, the chain's ``prev_hash``/``hash`` included), so a reader elsewhere can re-check the hash chain."""
        bound = max(-(2**63), min(int(after_id), 2**63 - 1))
        return self._rows("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", [bound, max(0, int(limit))])

    def prune_events(self, through_id: int, before_ts: str) -> int:
        """Delete the oldest events, up to ``through_id`` and only those older than ``before_ts`` (a prefix of the
        log, never a hole, and never the newest event, so ids are never reused), keeping the newest deleted event's
        hash as the chain's anchor so the rest still verifies.
        A fleet door calls this with the id up to which the hub holds its events. Returns how many were deleted."""
        with self._write() as db:
            row = db.execute(
                "SELECT max(id) FROM events WHERE id <= ? AND id < (SELECT max(id) FROM events) "  # the newest stays:
                "AND id < coalesce((SELECT min(id) FROM events WHERE ts >= ?), 9223372036854775807)",  # ids go on
                [int(through_id), before_ts],
            ).fetchone()
            last = int(row[0]) if row and row[0] is not None else 0
            if last == 0:
                return 0
            anchor_hash = db.execute("SELECT hash FROM events WHERE id = ?", [last]).fetchone()[0]
            n = db.execute("DELETE FROM events WHERE id <= ?", [last]).rowcount
            db.execute(
                "INSERT INTO replica_meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [ANCHOR_KEY, f"{last}:{anchor_hash}"],
            )
        self._checkpoint("pruned events")
        return int(n)

    def last_event_id(self) -> int:
        """The newest event's id (0 when there is none): cheap enough to poll for new events."""
        return int(self._rows("SELECT coalesce(max(id), 0) AS n FROM events")[0]["n"])

    def verify_events(self) -> EventChainReport:
        """Check the event hash chain from the first event to the newest, in one consistent snapshot."""
        with self._guard():
            self._db.execute("BEGIN")
            try:
                return verify_chain(self._db)
            finally:
                self._db.execute("COMMIT")
