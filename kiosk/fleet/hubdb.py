"""The hub's own tables, in the site gallery's database beside people and templates.

- ``fleet_outbox``: the transactional outbox. SQLite triggers on ``people``, ``templates``, ``person_groups``,
  ``groups``, ``schedules`` and ``access_rules`` add the changed record's key in the same transaction as the change,
  whoever makes it (``kiosk people``, ``kiosk enroll``, the admin app, ``kiosk access``), so no committed change can
  miss the doors and no rolled-back one can reach them. The publisher turns keys into sealed records.
- ``fleet_revs``: each record's published revision (the outbox sequence of its newest change), for the digest.
- ``fleet_doors``: the doors of the site and the last heartbeat of each.
- ``fleet_events``: every door's events, exactly once per (door, id); ``fleet_chain``: each door's verified chain head.
- ``fleet_meta``: small state (the outbox position published, the ``PEOPLE`` stream sequence seen).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from kiosk.gallery import GENESIS_HASH, Gallery, event_hash, utc_iso

_TABLES = """
CREATE TABLE IF NOT EXISTS fleet_outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fleet_revs (key TEXT PRIMARY KEY, rev INTEGER NOT NULL, live INTEGER NOT NULL,
    stream_seq INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS fleet_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fleet_doors (id TEXT PRIMARY KEY, added TEXT NOT NULL, last_seen TEXT, status TEXT);
CREATE TABLE IF NOT EXISTS fleet_events (door TEXT NOT NULL, seq INTEGER NOT NULL, ts TEXT, kind TEXT,
    outcome TEXT, person_id INTEGER, person_name TEXT, door_action TEXT, detail TEXT, prev_hash TEXT, hash TEXT,
    raw TEXT NOT NULL, received TEXT NOT NULL, PRIMARY KEY (door, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_fleet_events_ts ON fleet_events (ts);
CREATE TABLE IF NOT EXISTS fleet_chain (door TEXT PRIMARY KEY, head_seq INTEGER NOT NULL, head_hash TEXT NOT NULL,
    broken_at INTEGER, reason TEXT)"""

# (table, key expression for NEW/OLD rows): every change to these marks a record to publish.
_WATCHED = (
    ("people", "'p' || {row}.id"),
    ("templates", "'p' || {row}.person_id"),
    ("person_groups", "'p' || {row}.person_id"),
    ("groups", "'access'"),
    ("schedules", "'access'"),
    ("access_rules", "'access'"),
)


def _triggers() -> list[str]:
    out = []
    for table, key in _WATCHED:
        for op, rows in (("INSERT", ("NEW",)), ("UPDATE", ("NEW", "OLD")), ("DELETE", ("OLD",))):
            body = " ".join(f"INSERT INTO fleet_outbox (key) VALUES ({key.format(row=r)});" for r in rows)
            out.append(
                f"CREATE TRIGGER IF NOT EXISTS fleet_{table}_{op.lower()} AFTER {op} ON {table} BEGIN {body} END"
            )
    return out


def install(gallery: Gallery) -> None:
    """Create the hub's tables and outbox triggers (idempotent). The first time, every existing record is queued."""
    with gallery._write() as db:
        fresh = not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'fleet_outbox'").fetchone()
        for statement in _TABLES.split(";"):
            db.execute(statement)
        for trigger in _triggers():
            db.execute(trigger)
        if fresh:
            set_meta(db, "hub_id", secrets.token_hex(8))  # this hub's name in message ids (see Hub._publish)
            db.execute("INSERT INTO fleet_outbox (key) SELECT 'p' || id FROM people ORDER BY id")
            db.execute("INSERT INTO fleet_outbox (key) VALUES ('access')")


def meta(gallery: Gallery, key: str, default: str = "") -> str:
    rows = gallery._rows("SELECT value FROM fleet_meta WHERE key = ?", [key])
    return str(rows[0]["value"]) if rows else default


def set_meta(db: Database, key: str, value: str | int) -> None:
    db.execute(
        "INSERT INTO fleet_meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [key, str(value)],
    )


def note(gallery: Gallery, key: str, value: str) -> None:
    """Set one ``fleet_meta`` value in its own transaction ("" clears it)."""
    with gallery._write() as db:
        set_meta(db, key, value)


def pending(gallery: Gallery, after: int, limit: int) -> list[tuple[int, str]]:
    """Outbox rows after ``after``, oldest first."""
    sql = "SELECT seq, key FROM fleet_outbox WHERE seq > ? ORDER BY seq LIMIT ?"
    return [(int(r["seq"]), str(r["key"])) for r in gallery._rows(sql, [after, limit])]


def requeue_all(gallery: Gallery) -> int:
    """Queue every record again (the broker lost its store): returns how many keys. The stream sequences known are
    forgotten: the new stream starts empty, and each record's compare-and-set starts from nothing again."""
    with gallery._write() as db:
        db.execute("UPDATE fleet_revs SET stream_seq = 0")
        db.execute("INSERT INTO fleet_outbox (key) SELECT key FROM fleet_revs WHERE live = 1 ORDER BY key")
        db.execute(
            "INSERT INTO fleet_outbox (key) SELECT 'p' || id FROM people WHERE 'p' || id NOT IN "
            "(SELECT key FROM fleet_revs)"
        )
        db.execute("INSERT INTO fleet_outbox (key) VALUES ('access')")
        return int(db.execute("SELECT count(*) FROM fleet_outbox").fetchone()[0])


def stream_seqs(gallery: Gallery, keys: Iterable[str]) -> dict[str, int]:
    """The stream sequence each key's newest record was published at (0: never): what its next record expects."""
    wanted = set(keys)
    rows = gallery._rows("SELECT key, stream_seq FROM fleet_revs")
    return {str(r["key"]): int(r["stream_seq"]) for r in rows if r["key"] in wanted}


def mark_published(gallery: Gallery, revs: Mapping[str, tuple[int, bool, int]], through: int, stream_seq: int) -> None:
    """Record what was published (key -> (revision, live, stream sequence)) and drop the outbox rows it covered, in
    one transaction."""
    with gallery._write() as db:
        db.conn.executemany(
            "INSERT INTO fleet_revs (key, rev, live, stream_seq) VALUES (?, ?, ?, ?) ON CONFLICT(key) DO UPDATE "
            "SET rev = excluded.rev, live = excluded.live, stream_seq = excluded.stream_seq",
            [(k, rev, int(live), seq) for k, (rev, live, seq) in revs.items()],
        )
        db.execute("DELETE FROM fleet_outbox WHERE seq <= ?", [through])
        set_meta(db, "published_through", through)
        set_meta(db, "people_stream_seq", stream_seq)


def live_revisions(gallery: Gallery) -> list[tuple[str, int]]:
    return [(str(r["key"]), int(r["rev"])) for r in gallery._rows("SELECT key, rev FROM fleet_revs WHERE live = 1")]


# -- doors ---------------------------------------------------------------------------------------------------------


def add_door(gallery: Gallery, door: str) -> bool:
    """Register a door; False when it was already there."""
    with gallery._write() as db:
        cur = db.execute("INSERT OR IGNORE INTO fleet_doors (id, added) VALUES (?, ?)", [door, utc_iso()])
        return bool(cur.rowcount)


def remove_door(gallery: Gallery, door: str) -> bool:
    with gallery._write() as db:
        return bool(db.execute("DELETE FROM fleet_doors WHERE id = ?", [door]).rowcount)


def doors(gallery: Gallery) -> list[str]:
    return [str(r["id"]) for r in gallery._rows("SELECT id FROM fleet_doors ORDER BY id")]


def save_heartbeats(gallery: Gallery, beats: Mapping[str, tuple[str, Mapping[str, Any]]]) -> None:
    """door -> (when, heartbeat): the newest of each, written together."""
    with gallery._write() as db:
        db.conn.executemany(
            "UPDATE fleet_doors SET last_seen = ?, status = ? WHERE id = ?",
            [(when, json.dumps(dict(beat), sort_keys=True), door) for door, (when, beat) in beats.items()],
        )


# -- events --------------------------------------------------------------------------------------------------------


@dataclass
class Ingested:
    new: int = 0
    duplicates: int = 0
    broken: int = 0  # chain links found broken in this batch


_EVENT_COLUMNS = ("ts", "kind", "outcome", "person_id", "person_name", "door_action", "detail", "prev_hash", "hash")


def record_events(gallery: Gallery, batch: Sequence[tuple[str, Mapping[str, Any]]]) -> Ingested:
    """Store each (door, event row) once, then advance each door's verified chain head as far as it links."""
    got = Ingested()
    received = utc_iso()
    with gallery._write() as db:
        touched: set[str] = set()
        for door, row in batch:
            raw = json.dumps(dict(row), sort_keys=True, separators=(",", ":"))
            values = [door, int(row["id"])] + [_text(row.get(c)) for c in _EVENT_COLUMNS] + [raw, received]
            cur = db.execute(
                f"INSERT OR IGNORE INTO fleet_events (door, seq, {', '.join(_EVENT_COLUMNS)}, raw, received) "
                f"VALUES ({', '.join('?' * (len(_EVENT_COLUMNS) + 4))})",
                values,
            )
            if cur.rowcount:
                got.new += 1
                touched.add(door)
            else:
                got.duplicates += 1
        for door in sorted(touched):
            got.broken += _advance_chain(db, door, batch)
    return got


def _text(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value


def _advance_chain(db: Database, door: str, batch: Sequence[tuple[str, Mapping[str, Any]]]) -> int:
    head = db.execute("SELECT head_seq, head_hash, broken_at FROM fleet_chain WHERE door = ?", [door]).fetchone()
    seq, prev, broken_at = (int(head[0]), str(head[1]), head[2]) if head else (0, GENESIS_HASH, None)
    if broken_at is not None:
        return 0
    rows = {int(r["id"]): r for d, r in batch if d == door}
    reason = None
    while True:
        row = rows.get(seq + 1) or _stored_row(db, door, seq + 1)  # one that came early waits in the table
        if row is None:
            break
        if row.get("prev_hash") != prev:
            reason = f"event {seq + 1} does not follow event {seq} (prev_hash differs)"
        elif event_hash(prev, row) != row.get("hash"):
            reason = f"event {seq + 1} was altered (its hash does not match its fields)"
        else:
            reason = None
        if reason is not None:
            db.execute(
                "INSERT INTO fleet_chain (door, head_seq, head_hash, broken_at, reason) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(door) DO UPDATE SET head_seq = excluded.head_seq, head_hash = excluded.head_hash, "
                "broken_at = excluded.broken_at, reason = excluded.reason",
                [door, seq, prev, seq + 1, reason],
            )
            return 1
        seq, prev = seq + 1, str(row["hash"])
    db.execute(
        "INSERT INTO fleet_chain (door, head_seq, head_hash) VALUES (?, ?, ?) "
        "ON CONFLICT(door) DO UPDATE SET head_seq = excluded.head_seq, head_hash = excluded.head_hash",
        [door, seq, prev],
    )
    return 0


def _stored_row(db: Database, door: str, seq: int) -> dict[str, Any] | None:
    """An event as the door sent it (for a chain head that advances across batches); None when not there."""
    found = db.execute("SELECT raw FROM fleet_events WHERE door = ? AND seq = ?", [door, seq]).fetchone()
    return None if found is None else dict(json.loads(found[0]))


def door_events_through(gallery: Gallery, door: str) -> int:
    """How far the hub holds one door's events (a heartbeat's answer: one row, not every door's)."""
    rows = gallery._rows("SELECT head_seq FROM fleet_chain WHERE door = ?", [door])
    return int(rows[0]["head_seq"]) if rows else 0


def events_through(gallery: Gallery) -> dict[str, int]:
    """Per door, the newest event id up to which the hub holds every event, chain verified."""
    return {str(r["door"]): int(r["head_seq"]) for r in gallery._rows("SELECT door, head_seq FROM fleet_chain")}


def chain_report(gallery: Gallery) -> dict[str, dict[str, Any]]:
    rows = gallery._rows("SELECT door, head_seq, broken_at, reason FROM fleet_chain ORDER BY door")
    return {
        str(r["door"]): {"head": int(r["head_seq"]), "broken_at": r["broken_at"], "reason": r["reason"]} for r in rows
    }


def event_keys(gallery: Gallery, doors_: Iterable[str] | None = None) -> set[tuple[str, int]]:
    rows = gallery._rows("SELECT door, seq FROM fleet_events")
    wanted = None if doors_ is None else set(doors_)
    return {(str(r["door"]), int(r["seq"])) for r in rows if wanted is None or r["door"] in wanted}
