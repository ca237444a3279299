"""The events' hash chain: each row carries its predecessor's hash; ``verify_chain`` walks it."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from kiosk.gallery.sql import _columns

# The columns an event's hash covers, in this fixed order: later migrations may add columns without changing
# the hash of events already written.
# fmt: off
CHAIN_FIELDS = ("id", "ts", "kind", "track_id", "person_id", "person_name", "score", "runner_up", "threshold",
                "frames", "liveness", "latency_ms", "outcome", "door_action", "detail")
# fmt: on
GENESIS_HASH = "0" * 64  # the prev_hash of the first event
_CHAIN_CONTEXT = "face-kiosk event v1"


@dataclass(frozen=True)
class EventChainReport:
    """What ``verify_events`` found: ``ok`` or the first event whose link is broken and why."""

    ok: bool
    checked: int  # events whose link was checked (all of them when ok)
    first_broken_id: int | None
    reason: str | None
    head_id: int | None  # the newest event; keep (head_id, head_hash) elsewhere to detect a truncated log
    head_hash: str | None


def event_hash(prev_hash: str, row: Mapping[str, Any]) -> str:
    """sha256 over the predecessor's hash and a canonical JSON of the row's CHAIN_FIELDS (its id included)."""
    body = json.dumps({k: row.get(k) for k in CHAIN_FIELDS}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{_CHAIN_CONTEXT}\n{prev_hash}\n{body}".encode()).hexdigest()


def _chain_new_events(conn: sqlite3.Connection | Database) -> int:
    """Hash the events written after the last hashed one (all of them in a gallery from before 0002)."""
    last = conn.execute("SELECT id, hash FROM events WHERE hash IS NOT NULL ORDER BY id DESC LIMIT 1").fetchone()
    last_id, prev = (int(last[0]), str(last[1])) if last else (0, GENESIS_HASH)
    sql = f"SELECT {', '.join(CHAIN_FIELDS)} FROM events WHERE id > ? ORDER BY id"
    rows = conn.execute(sql, [last_id]).fetchall()
    for values in rows:
        digest = event_hash(prev, dict(zip(CHAIN_FIELDS, values, strict=True)))
        conn.execute("UPDATE events SET prev_hash = ?, hash = ? WHERE id = ?", [prev, digest, values[0]])
        prev = digest
    return len(rows)


ANCHOR_KEY = "events_anchor"


def chain_anchor(conn: sqlite3.Connection | Database) -> tuple[int, str] | None:
    """(id, hash) of the newest pruned event, where the kept chain starts; None when nothing was ever pruned."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'replica_meta'").fetchone():
        return None
    row = conn.execute("SELECT value FROM replica_meta WHERE key = ?", [ANCHOR_KEY]).fetchone()
    if row is None:
        return None
    event_id, _, digest = str(row[0]).partition(":")
    return int(event_id), digest


def verify_chain(conn: sqlite3.Connection | Database) -> EventChainReport:
    """Walk the events in id order; the first event whose prev_hash or own hash does not check out is reported."""
    if not {"prev_hash", "hash"} <= _columns(conn, "events"):
        return EventChainReport(False, 0, None, "the event log has no hash chain (gallery not migrated)", None, None)
    head = conn.execute("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
    head_id, head_hash = (int(head[0]), head[1]) if head else (None, None)
    sql = f"SELECT {', '.join(CHAIN_FIELDS)}, prev_hash, hash FROM events ORDER BY id"
    prev, prev_id, checked = GENESIS_HASH, None, 0
    if anchor := chain_anchor(conn):  # events before it were pruned once the hub held them (kiosk.fleet)
        prev_id, prev = anchor
    for values in conn.execute(sql):
        row = dict(zip((*CHAIN_FIELDS, "prev_hash", "hash"), values, strict=True))
        event_id = int(row["id"])
        reason = None
        if row["hash"] is None:
            reason = "it has no hash (written outside face-kiosk)"
        elif row["prev_hash"] != prev:
            before = "the start of the log" if prev_id is None else f"event {prev_id}"
            before += " (pruned; its hash kept as the anchor)" if prev_id is not None and checked == 0 else ""
            reason = f"its prev_hash does not match {before}: events were deleted, inserted or reordered"
        elif event_hash(prev, row) != row["hash"]:
            reason = "its contents do not match its hash: the event was altered"
        if reason is not None:
            return EventChainReport(False, checked, event_id, f"event {event_id}: {reason}", head_id, head_hash)
        prev, prev_id, checked = str(row["hash"]), event_id, checked + 1
    return EventChainReport(True, checked, None, None, head_id, head_hash)
