"""A door's replica of the site gallery: records from the hub applied to the door's own SQLite gallery.

- **One transaction per batch**: the records of a batch and the stream sequence they bring the replica to are
  committed together (``replica_meta.applied_seq``); the door acknowledges the batch only after the commit. A crash
  between the two re-delivers the batch, and records at or below ``applied_seq`` are skipped.
- **Never empty**: a full resynchronisation stages every record in ``replica_staging`` while the current gallery keeps
  serving, then replaces the gallery in one transaction once the last record is in.
- **Self-checking**: a digest record, when it is the newest message, must match the digest of the replica; if not,
  the door resynchronises by itself.
- **The match matrix** (``LiveMatrix``) is patched for the people a batch changed — rebuilt as a new array and swapped
  in, never cleared — so a revocation costs one person's rows, not a reload of the whole gallery.

All methods are synchronous (SQLite); the fleet service calls them from one worker thread.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlite_utils import Database

from kiosk.fleet.protocol import ACCESS_KEY, ProtocolError, digest, key_of, unseal
from kiosk.gallery import Gallery, GalleryMatrix, TemplateCipher

log = logging.getLogger(__name__)

FULL_RELOAD_OVER = 500  # more changed people than this: reload the matrix whole (still built aside)
_STAGING = """CREATE TABLE IF NOT EXISTS replica_staging (key TEXT PRIMARY KEY, seq INTEGER NOT NULL,
    rev INTEGER NOT NULL, live INTEGER NOT NULL, record TEXT NOT NULL)"""


REPLICA_TABLES = ("people", "templates", "person_groups", "groups", "schedules", "access_rules")
READ_ONLY = "this door is a replica of the site hub: make changes to people and access rules at the hub"


def _the_replica() -> int:
    return 1


def _guards() -> list[str]:
    """Triggers that make the replicated tables read-only to every connection but the replica's (people are enrolled,
    changed and removed at the hub: a local change would be lost at the next resync, or worse, diverge silently)."""
    return [
        f"CREATE TRIGGER IF NOT EXISTS replica_{table}_{op.lower()} BEFORE {op} ON {table} "
        f"WHEN replica_writer() = 0 BEGIN SELECT RAISE(ABORT, '{READ_ONLY}'); END"
        for table in REPLICA_TABLES
        for op in ("INSERT", "UPDATE", "DELETE")
    ]


@dataclass(frozen=True)
class Message:
    """One ``PEOPLE`` stream message as the door received it."""

    seq: int
    subject: str
    payload: bytes


@dataclass
class Applied:
    """What one batch did."""

    seq: int = 0  # the replica's applied sequence after the batch
    records: int = 0  # records applied (or staged)
    skipped: int = 0  # at or below the applied sequence: already applied
    people: set[int] = field(default_factory=set)  # people whose rows changed
    access: bool = False
    digest_ok: bool | None = None  # None: no digest to check (not the newest message)
    swapped: bool = False  # a staged resync replaced the gallery
    staged_incomplete: bool = False  # the newest record is in but the staged set does not match the hub's digest


class Replica:
    """The door's gallery as a replica of the hub's. ``site`` opens the sealed records."""

    def __init__(self, gallery: Gallery, site: TemplateCipher) -> None:
        self.gallery = gallery
        self.site = site
        gallery._db.conn.create_function("replica_writer", 0, _the_replica)
        with gallery._write() as db:
            db.execute(_STAGING)
            for statement in _guards():
                db.execute(statement)
        self.staging = self._meta("staging") == "1"

    # -- state -------------------------------------------------------------------------------------------------

    def _meta(self, key: str, default: str = "") -> str:
        rows = self.gallery._rows("SELECT value FROM replica_meta WHERE key = ?", [key])
        return str(rows[0]["value"]) if rows else default

    @staticmethod
    def _set(db: Database, key: str, value: str | int) -> None:
        db.execute(
            "INSERT INTO replica_meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [key, str(value)],
        )

    @property
    def applied_seq(self) -> int:
        return int(self._meta("applied_seq", "0"))

    def synced_at(self) -> float | None:
        """Wall-clock time the replica was last known to be up to date with the hub (None: never)."""
        value = self._meta("synced_at")
        return float(value) if value else None

    def mark_synced(self, when: float | None = None) -> None:
        with self.gallery._write() as db:
            self._set(db, "synced_at", repr(time.time() if when is None else when))

    def revisions(self) -> list[tuple[str, int]]:
        with self.gallery._guard():  # raw tuples: this runs at every digest record, over the whole replica
            rows = self.gallery._db.conn.execute("SELECT id, rev FROM people WHERE rev IS NOT NULL").fetchall()
        revs = [(f"p{person_id}", int(rev)) for person_id, rev in rows]
        access = self._meta("access_rev")
        return revs + ([(ACCESS_KEY, int(access))] if access else [])

    def digest(self) -> str:
        return digest(self.revisions())

    def begin_resync(self) -> None:
        """Stage everything from now on until the newest record arrives; the gallery keeps serving meanwhile."""
        with self.gallery._write() as db:
            db.execute("DELETE FROM replica_staging")
            db.execute("DELETE FROM replica_meta WHERE key = 'staging_digest'")
            self._set(db, "staging", "1")
            self._set(db, "applied_seq", 0)
        self.staging = True
        log.info("fleet: full resync started; the current gallery serves until it completes")

    # -- applying ----------------------------------------------------------------------------------------------

    def apply(self, batch: Sequence[Message], *, pending: int) -> Applied:
        """Apply (or stage) ``batch`` in one transaction; ``pending``: messages still waiting after it."""
        out = Applied()
        opened: list[tuple[Message, str, dict[str, Any]]] = []
        applied = self.applied_seq
        for msg in batch:
            if msg.seq <= applied:
                out.skipped += 1
                continue
            key = key_of(msg.subject)
            opened.append((msg, key, unseal(self.site, msg.subject, msg.payload)))
        expected: str | None = None
        with self.gallery._write() as db:
            for msg, key, record in opened:
                out.records += 1
                if key == "digest":
                    expected = str(record.get("digest"))
                    if self.staging:
                        self._set(db, "staging_digest", expected)
                    continue
                if self.staging:
                    live = int(not record.get("deleted"))
                    db.execute(
                        "INSERT INTO replica_staging (key, seq, rev, live, record) VALUES (?, ?, ?, ?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET seq = excluded.seq, rev = excluded.rev, live = excluded.live, "
                        "record = excluded.record",
                        [key, msg.seq, int(record.get("rev", 0)), live, json.dumps(record)],
                    )
                else:
                    self._apply_record(db, key, record, out)
            last = batch[-1].seq if batch else applied
            if last > applied:
                self._set(db, "applied_seq", last)
            out.seq = max(last, applied)
            if self.staging and pending == 0:
                # Swap only a staged set the hub's digest vouches for: a partial one (deliveries lost or mixed up
                # around the start of the resync) must never replace the gallery, least of all with nothing.
                row = db.execute("SELECT value FROM replica_meta WHERE key = 'staging_digest'").fetchone()
                staged = db.execute("SELECT key, rev FROM replica_staging WHERE live = 1").fetchall()
                if row is not None and digest((str(k), int(r)) for k, r in staged) == row[0]:
                    self._swap(db, out)
                else:
                    out.staged_incomplete = True
        if out.swapped:
            self.staging = False
        newest_is_digest = bool(opened) and opened[-1][1] == "digest"
        if expected is not None and newest_is_digest and pending == 0 and not self.staging:
            out.digest_ok = self.digest() == expected
        return out

    def _apply_record(self, db: Database, key: str, record: dict[str, Any], out: Applied) -> None:
        rev = int(record.get("rev", 0))
        if key == ACCESS_KEY:
            _replace_access(db, record)
            self._set(db, "access_rev", rev)
            out.access = True
            return
        person_id = int(key[1:])
        if int(record.get("id", -1)) != person_id:
            raise ProtocolError(f"record {key} names person {record.get('id')!r}")
        out.people.add(person_id)
        if record.get("deleted"):
            db.execute("DELETE FROM people WHERE id = ?", [person_id])
            return
        _upsert_person(db, person_id, record, rev)

    def _swap(self, db: Database, out: Applied) -> None:
        """Replace the gallery with the staged records, in the caller's transaction."""
        rows = db.execute("SELECT key, record FROM replica_staging ORDER BY seq").fetchall()
        staged = {str(k): json.loads(r) for k, r in rows}
        keep = {int(k[1:]) for k, r in staged.items() if k.startswith("p") and not r.get("deleted")}
        current = {int(r[0]) for r in db.execute("SELECT id FROM people").fetchall()}
        for person_id in current - keep:
            db.execute("DELETE FROM people WHERE id = ?", [person_id])
            out.people.add(person_id)
        for key, record in staged.items():
            self._apply_record(db, key, record, out)
        db.execute("DELETE FROM replica_staging")
        self._set(db, "staging", "0")
        out.swapped = True
        log.info("fleet: full resync complete: %d records replaced the gallery in one transaction", len(staged))


def _upsert_person(db: Database, person_id: int, r: dict[str, Any], rev: int) -> None:
    name = str(r["name"])
    holder = db.execute("SELECT id FROM people WHERE name = ? AND id != ?", [name, person_id]).fetchone()
    if holder is not None:  # renamed at the hub after this one took the name; its own record fixes it later
        db.execute("UPDATE people SET name = ? WHERE id = ?", [f"~renamed-{holder[0]}", holder[0]])
    values = [person_id, name, r["created"], int(bool(r["enabled"])), r.get("valid_from"), r.get("valid_until")]
    values += [r.get("note"), r.get("credential"), rev]
    db.execute(
        """INSERT INTO people (id, name, created, enabled, valid_from, valid_until, note, credential, rev)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET name = excluded.name,
           created = excluded.created, enabled = excluded.enabled, valid_from = excluded.valid_from,
           valid_until = excluded.valid_until, note = excluded.note, credential = excluded.credential,
           rev = excluded.rev""",
        values,
    )
    keep = [int(t["id"]) for t in r.get("templates", [])]
    marks = ",".join("?" * len(keep))
    db.execute(f"DELETE FROM templates WHERE person_id = ? AND id NOT IN ({marks})", [person_id, *keep])
    for t in r.get("templates", []):
        blob = base64.b64decode(t["embedding"], validate=True)
        db.execute(
            """INSERT INTO templates (id, person_id, embedding, dim, model_id, model_sha256, quality, source, created,
               key_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(id) DO UPDATE SET person_id = excluded.person_id,
               embedding = excluded.embedding, dim = excluded.dim, model_id = excluded.model_id,
               model_sha256 = excluded.model_sha256, quality = excluded.quality, source = excluded.source,
               created = excluded.created, key_id = excluded.key_id""",
            [
                t["id"],
                person_id,
                blob,
                t["dim"],
                t["model_id"],
                t["model_sha256"],
                t.get("quality"),
                t.get("source"),
                t["created"],
                t["key_id"],
            ],
        )
    db.execute("DELETE FROM person_groups WHERE person_id = ?", [person_id])
    for group_id, group_name in r.get("groups", []):
        _ensure_group(db, int(group_id), str(group_name))
        db.execute("INSERT INTO person_groups (person_id, group_id) VALUES (?, ?)", [person_id, int(group_id)])


def _ensure_group(db: Database, group_id: int, name: str) -> None:
    taken = db.execute("SELECT id FROM groups WHERE name = ? AND id != ?", [name, group_id]).fetchone()
    if taken is not None:
        db.execute("UPDATE groups SET name = ? WHERE id = ?", [f"~renamed-{taken[0]}", taken[0]])
    db.execute(
        "INSERT INTO groups (id, name) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET name = excluded.name",
        [group_id, name],
    )


def _replace_access(db: Database, r: dict[str, Any]) -> None:
    """The site's groups, schedules and rules, replaced whole (members stay with their people's records)."""
    groups = {int(g["id"]): str(g["name"]) for g in r.get("groups", [])}
    db.execute("DELETE FROM access_rules")
    db.execute("DELETE FROM schedules")
    gone = [gid for (gid,) in db.execute("SELECT id FROM groups").fetchall() if int(gid) not in groups]
    for gid in gone:
        db.execute("DELETE FROM groups WHERE id = ?", [gid])
    for gid, name in groups.items():
        _ensure_group(db, gid, name)
    for s in r.get("schedules", []):
        db.execute(
            "INSERT INTO schedules (id, name, tz, windows) VALUES (?, ?, ?, ?)",
            [s["id"], s["name"], s["tz"], s["windows"]],
        )
    for rule in r.get("rules", []):
        db.execute(
            "INSERT INTO access_rules (id, name, group_id, doors, schedule_id) VALUES (?, ?, ?, ?, ?)",
            [rule["id"], rule["name"], rule["group_id"], rule["doors"], rule["schedule_id"]],
        )


class LiveMatrix:
    """The door's match matrix for one model, patched per changed person: a new array is built and swapped in, so
    a reader always sees a whole matrix (never an empty one while it reloads)."""

    def __init__(self, gallery: Gallery, model_id: str, model_sha256: str) -> None:
        self.gallery, self.model_id, self.model_sha256 = gallery, model_id, model_sha256
        self._lock = threading.Lock()
        self.rev_seen = int(gallery._rows("SELECT coalesce(max(rev), 0) AS m FROM people")[0]["m"])
        self.matrix = gallery.matrix(model_id, model_sha256)
        self.version = 0

    def refresh(self) -> GalleryMatrix:
        """Patch for what changed in the replica since the last load or refresh, found by the hub revision every
        replicated person carries (``people.rev``) and the people gone: the door loop's cheap path after a sync."""
        rows = self.gallery._rows("SELECT coalesce(max(rev), 0) AS m FROM people")
        newest = int(rows[0]["m"])
        changed = {int(r["id"]) for r in self.gallery._rows("SELECT id FROM people WHERE rev > ?", [self.rev_seen])}
        held = sorted(self.person_ids())
        if held:
            marks = ",".join("?" * len(held))
            present = {int(r["id"]) for r in self.gallery._rows(f"SELECT id FROM people WHERE id IN ({marks})", held)}
            changed |= set(held) - present
        self.rev_seen = newest
        if len(changed) > FULL_RELOAD_OVER:
            return self.reload()
        return self.patch(changed)

    def person_ids(self) -> set[int]:
        return set(self.matrix.person_ids.tolist())

    def reload(self) -> GalleryMatrix:
        """Whole, from the gallery (validity windows move with time): built aside, then swapped in."""
        self.rev_seen = int(self.gallery._rows("SELECT coalesce(max(rev), 0) AS m FROM people")[0]["m"])
        fresh = self.gallery.matrix(self.model_id, self.model_sha256)
        with self._lock:
            self.matrix, self.version = fresh, self.version + 1
        return fresh

    def patch(self, people: Iterable[int]) -> GalleryMatrix:
        """Re-read only ``people`` (their admitted templates of this model); everyone else's rows are kept."""
        changed = sorted(set(people))
        if not changed:
            return self.matrix
        # The gallery's own query and decryption, for just these people: same admission rules as a full load.
        part = self.gallery.matrix(self.model_id, self.model_sha256, only=changed)
        with self._lock:
            old = self.matrix
            keep = ~np.isin(old.person_ids, np.asarray(changed, dtype=np.int64))
            dim = old.embeddings.shape[1] if old.embeddings.size else part.embeddings.shape[1]
            emb = [old.embeddings[keep].reshape(-1, dim)] if dim else []
            if len(part):
                emb.append(part.embeddings.reshape(-1, dim))
            self.matrix = GalleryMatrix(
                np.concatenate([old.template_ids[keep], part.template_ids]),
                np.concatenate([old.person_ids[keep], part.person_ids]),
                [n for n, k in zip(old.names, keep.tolist(), strict=True) if k] + list(part.names),
                np.concatenate(emb).astype(np.float32) if emb else np.empty((0, 0), dtype=np.float32),
            )
            self.version += 1
            return self.matrix
