"""The gallery of enrolled people: a SQLite database (through sqlite-utils) of people, face templates, events.

Every template is tagged with the model id and sha256 that made it, so only comparable embeddings are matched.
WAL lets the kiosk read while the CLI enrols; ``secure_delete`` overwrites removed biometric templates.
sqlite3 errors leave this module only as ``GalleryError`` subclasses with one-line messages saying the fix.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sqlite3
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlite_utils import Database

from kiosk.errors import (
    DuplicateError,
    GalleryCorruptError,
    GalleryError,
    GalleryLockedError,
    InputError,
    PersonNotFoundError,
)

logger = logging.getLogger(__name__)

MAX_NAME_LEN = 200
# fmt: off
EVENT_FIELDS = ("ts", "track_id", "person_id", "person_name", "score", "runner_up", "threshold", "frames",
                "liveness", "latency_ms", "door_action", "detail")
# fmt: on
_INT_FIELDS = {"track_id", "person_id", "frames"}
_REAL_FIELDS = {"score", "runner_up", "threshold", "latency_ms"}
_PERSON_SQL = """SELECT p.id, p.name, p.created, p.enabled, p.valid_from, p.valid_until, p.note,
    (SELECT count(*) FROM templates t WHERE t.person_id = p.id) AS templates FROM people p"""
_SCHEMA_1 = """
CREATE TABLE IF NOT EXISTS people (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    created TEXT NOT NULL, enabled INTEGER NOT NULL DEFAULT 1, valid_from TEXT, valid_until TEXT, note TEXT);
CREATE TABLE IF NOT EXISTS templates (id INTEGER PRIMARY KEY,
    person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE, embedding BLOB NOT NULL,
    dim INTEGER NOT NULL, model_id TEXT NOT NULL, model_sha256 TEXT NOT NULL, quality REAL, source TEXT,
    created TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS idx_templates_model ON templates (model_id, model_sha256);
CREATE INDEX IF NOT EXISTS idx_templates_person ON templates (person_id);
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, kind TEXT NOT NULL,
    track_id INTEGER, person_id INTEGER, person_name TEXT, score REAL, runner_up REAL, threshold REAL,
    frames INTEGER, liveness TEXT, latency_ms REAL, outcome TEXT NOT NULL, door_action TEXT, detail TEXT);
CREATE INDEX IF NOT EXISTS idx_events_ts ON events (ts)"""


def _migrate_initial(db: Database) -> None:
    """People, their model-tagged templates, and the event log (events keep no FK: they outlive people)."""
    for statement in _SCHEMA_1.split(";"):
        db.execute(statement)


# Named, re-runnable steps applied in order. Append only: never rename or reorder a released step.
MIGRATIONS: list[tuple[str, Callable[[Database], None]]] = [("0001_initial", _migrate_initial)]


@dataclass(frozen=True)
class Person:
    id: int
    name: str
    created: datetime
    enabled: bool
    valid_from: datetime | None
    valid_until: datetime | None
    templates: int  # all templates, whichever model made them
    note: str | None = None


@dataclass(frozen=True)
class TemplateIn:
    """One embedding to store, with the model that produced it and where the face came from."""

    embedding: npt.NDArray[Any]
    model_id: str
    model_sha256: str
    quality: float
    source: str


@dataclass(frozen=True)
class GalleryMatrix:
    """Comparable templates stacked for brute-force matching; row i belongs to ``names[i]``."""

    template_ids: npt.NDArray[np.int64]
    person_ids: npt.NDArray[np.int64]
    names: list[str]
    embeddings: npt.NDArray[np.float32]  # (N, D)

    def __len__(self) -> int:
        return len(self.names)


def utc_iso(dt: datetime | None = None) -> str:
    """UTC ISO-8601 to the second (naive = UTC); strings in this one format sort chronologically."""
    dt = datetime.now(UTC) if dt is None else dt
    return (dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt).astimezone(UTC).isoformat(timespec="seconds")


def _opt_iso(dt: datetime | None) -> str | None:
    return None if dt is None else utc_iso(dt)


def _opt_dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def clean_name(name: str) -> str:
    """Strip and NFC-normalise a name; InputError if empty, over 200 characters or with control characters."""
    if not isinstance(name, str):
        raise InputError(f"person name must be text, got {type(name).__name__}")
    cleaned = unicodedata.normalize("NFC", name.strip())
    if not cleaned:
        raise InputError("person name is empty")
    if len(cleaned) > MAX_NAME_LEN:
        raise InputError(f"person name is {len(cleaned)} characters long; the limit is {MAX_NAME_LEN}")
    if any(unicodedata.category(c) == "Cc" for c in cleaned):
        raise InputError(f"person name {cleaned!r} contains control characters")
    return cleaned


def _embedding_blob(embedding: Any) -> tuple[bytes, int]:
    """Check an embedding is a non-empty finite 1-D vector; return its little-endian float32 bytes and dim."""
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf: rejected below
            arr = np.asarray(embedding, dtype="<f4")
    except (TypeError, ValueError) as err:
        raise InputError(f"embedding is not numeric: {err}") from None
    if arr.ndim != 1 or arr.size == 0:
        raise InputError(f"embedding must be a non-empty 1-D vector, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError("embedding contains NaN or infinite values (after conversion to float32)")
    return arr.tobytes(), int(arr.size)


def _check_window(valid_from: datetime | None, valid_until: datetime | None) -> None:
    if valid_from is not None and valid_until is not None and utc_iso(valid_until) <= utc_iso(valid_from):
        raise InputError(f"valid_until ({utc_iso(valid_until)}) must be after valid_from ({utc_iso(valid_from)})")


def _create_private_file(path: Path) -> None:
    """Create the gallery's folder (0700) and an empty file only its owner can read: it holds biometrics."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as err:
        raise GalleryError(f"cannot create gallery {path}: {err.strerror or err}") from None


class Gallery:
    """The gallery database; ``Gallery(":memory:")`` for tests. A context manager; close() is idempotent."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 5.0) -> None:
        self.path = str(path)
        self.busy_timeout_s = float(busy_timeout_s)
        self._closed = False
        memory = self.path == ":memory:"
        if not memory:
            _create_private_file(Path(self.path))
        conn: sqlite3.Connection | None = None
        try:
            with self._guard():
                conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s)
                self._db = Database(conn, execute_plugins=False)
                self._db.execute(f"PRAGMA busy_timeout = {round(self.busy_timeout_s * 1000)}")
                self._db.execute("PRAGMA foreign_keys = ON")
                self._db.execute("PRAGMA secure_delete = ON")
                self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # a damaged file fails here
                if not memory:
                    self._db.enable_wal()
            self._migrate()
        except BaseException:
            self._closed = True
            if conn is not None:
                conn.close()
            raise

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        if not self._closed:
            self._closed = True
            self._db.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn sqlite3 errors into GalleryError subclasses with one-line messages naming the file and fix."""
        try:
            yield
        except sqlite3.Error as err:
            msg = " ".join(str(err).split())
            if isinstance(err, sqlite3.OperationalError) and ("locked" in msg or "busy" in msg):
                raise GalleryLockedError(
                    f"gallery {self.path} is locked by another process (waited {self.busy_timeout_s:g} s)"
                ) from err
            if "not a database" in msg or "malformed" in msg or "corrupt" in msg:
                raise GalleryCorruptError(
                    f"gallery {self.path} is damaged ({msg}): restore it from a backup, "
                    "or move it away to start an empty gallery"
                ) from err
            raise GalleryError(f"gallery {self.path}: {msg}") from err

    @contextlib.contextmanager
    def _write(self) -> Iterator[Database]:
        """One write transaction. BEGIN IMMEDIATE takes the write lock up front, so busy_timeout applies."""
        with self._guard():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.conn.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._guard():
            return list(self._db.query(sql, list(params)))

    def _migrate(self) -> None:
        """Apply pending steps; an up-to-date gallery is only read, so it opens while others write to it."""
        applied = self.schema_version()
        unknown = [name for name in applied if name not in {known for known, _ in MIGRATIONS}]
        if unknown:
            raise GalleryError(
                f"gallery {self.path} was created by a newer face-kiosk (unknown migration "
                f"{', '.join(unknown)}); upgrade face-kiosk to use it"
            )
        for name, step in MIGRATIONS:
            if name in applied:
                continue
            with self._write() as db:  # checked again under the lock: another process may have applied it
                db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied TEXT NOT NULL)")
                if db.execute("SELECT 1 FROM _migrations WHERE name = ?", [name]).fetchone():
                    continue
                step(db)
                db.execute("INSERT INTO _migrations (name, applied) VALUES (?, ?)", [name, utc_iso()])
            logger.info("gallery %s: applied migration %s", self.path, name)

    def schema_version(self) -> list[str]:
        """Names of the applied migrations, oldest first ([] for a new, empty file)."""
        if not self._rows("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_migrations'"):
            return []
        return [r["name"] for r in self._rows("SELECT name FROM _migrations ORDER BY rowid")]

    # -- people ----------------------------------------------------------------------------------------------

    def get_person(self, ref: str | int) -> Person:
        """By id or case-insensitive name (a digits-only name that matches nobody is tried as an id)."""
        rows: list[dict[str, Any]] = []
        if isinstance(ref, str):
            rows = self._rows(_PERSON_SQL + " WHERE p.name = ?", [unicodedata.normalize("NFC", ref.strip())])
        if not rows and (isinstance(ref, int) or ref.strip().isdigit()):
            rows = self._rows(_PERSON_SQL + " WHERE p.id = ?", [int(ref)])
        if not rows:
            raise PersonNotFoundError(f"no person {ref!r} in the gallery; see `kiosk people list`")
        r = rows[0]
        r.update(created=datetime.fromisoformat(r["created"]), enabled=bool(r["enabled"]))
        r.update(valid_from=_opt_dt(r["valid_from"]), valid_until=_opt_dt(r["valid_until"]))
        return Person(**r)

    def list_people(self) -> list[Person]:
        """Everyone, by name."""
        return [self.get_person(int(r["id"])) for r in self._rows("SELECT id FROM people ORDER BY name, id")]

    def _insert_person(self, db: Database, name: str, fields: dict[str, Any]) -> int:
        _check_window(fields["valid_from"], fields["valid_until"])
        taken = db.execute("SELECT id, name FROM people WHERE name = ?", [name]).fetchone()
        if taken:
            raise DuplicateError(
                f"a person named {taken[1]!r} already exists (id {taken[0]}); choose another name, "
                "or add templates to the existing person"
            )
        values = [name, utc_iso(), int(fields["enabled"]), _opt_iso(fields["valid_from"])]
        values += [_opt_iso(fields["valid_until"]), fields["note"]]
        sql = "INSERT INTO people (name, created, enabled, valid_from, valid_until, note) VALUES (?,?,?,?,?,?)"
        person_id = int(db.execute(sql, values).lastrowid or 0)
        logger.info("gallery: added person id=%d", person_id)
        return person_id

    def add_person(
        self,
        name: str,
        *,
        enabled: bool = True,
        valid_from: datetime | None = None,
        valid_until: datetime | None = None,
        note: str | None = None,
    ) -> Person:
        """Create a person without templates; DuplicateError when the name is taken (case-insensitively)."""
        name = clean_name(name)
        fields = {"enabled": enabled, "valid_from": valid_from, "valid_until": valid_until, "note": note}
        with self._write() as db:
            person_id = self._insert_person(db, name, fields)
        return self.get_person(person_id)

    def enroll(
        self,
        name: str,
        templates: Sequence[TemplateIn],
        *,
        append: bool = False,
        enabled: bool = True,
        valid_from: datetime | None = None,
        valid_until: datetime | None = None,
        note: str | None = None,
    ) -> Person:
        """Create the person (or with append=True add to an existing one) and store all templates, atomically.

        Either everything is stored or nothing is. The person fields apply only when the person is created.
        """
        name = clean_name(name)
        if not templates:
            raise InputError(f"no templates to enrol for {name!r}")
        fields = {"enabled": enabled, "valid_from": valid_from, "valid_until": valid_until, "note": note}
        with self._write() as db:
            existing = db.execute("SELECT id FROM people WHERE name = ?", [name]).fetchone()
            person_id = int(existing[0]) if existing and append else self._insert_person(db, name, fields)
            for template in templates:
                self._insert_template(db, person_id, template)
        logger.info("gallery: enrolled person id=%d with %d template(s)", person_id, len(templates))
        return self.get_person(person_id)

    def rename(self, ref: str | int, new_name: str) -> Person:
        """Rename a person; DuplicateError when somebody else already has the new name."""
        new_name, person = clean_name(new_name), self.get_person(ref)
        with self._write() as db:
            sql = "SELECT id, name FROM people WHERE name = ? AND id != ?"
            if other := db.execute(sql, [new_name, person.id]).fetchone():
                raise DuplicateError(f"a person named {other[1]!r} already exists (id {other[0]})")
            db.execute("UPDATE people SET name = ? WHERE id = ?", [new_name, person.id])
        return self.get_person(person.id)

    def set_enabled(self, ref: str | int, enabled: bool) -> Person:
        """Enable or disable a person; a disabled person's templates are left out of ``matrix()``."""
        person = self.get_person(ref)
        with self._write() as db:
            db.execute("UPDATE people SET enabled = ? WHERE id = ?", [int(enabled), person.id])
        logger.info("gallery: person id=%d enabled=%s", person.id, enabled)
        return self.get_person(person.id)

    def set_validity(self, ref: str | int, valid_from: datetime | None, valid_until: datetime | None) -> Person:
        """Admit a person only while valid_from <= t < valid_until (None = unbounded on that side)."""
        _check_window(valid_from, valid_until)
        person = self.get_person(ref)
        with self._write() as db:
            db.execute(
                "UPDATE people SET valid_from = ?, valid_until = ? WHERE id = ?",
                [_opt_iso(valid_from), _opt_iso(valid_until), person.id],
            )
        return self.get_person(person.id)

    def remove(self, ref: str | int) -> int:
        """Delete a person and their templates in one transaction; returns the number of templates erased."""
        person = self.get_person(ref)
        with self._write() as db:
            erased = int(db.execute("SELECT count(*) FROM templates WHERE person_id = ?", [person.id]).fetchone()[0])
            db.execute("DELETE FROM people WHERE id = ?", [person.id])  # templates go by ON DELETE CASCADE
        # NOTE: secure_delete zeroes freed pages, but the WAL keeps older page copies until a checkpoint.
        with self._guard():
            blocked = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if blocked and blocked[0]:
            logger.warning(
                "gallery %s: a reader blocked the checkpoint; erased templates stay in the WAL for now",
                self.path,
            )
        logger.info("gallery: removed person id=%d and %d template(s)", person.id, erased)
        return erased

    # -- templates -------------------------------------------------------------------------------------------

    def _insert_template(self, db: Database, person_id: int, t: TemplateIn) -> None:
        blob, dim = _embedding_blob(t.embedding)
        if not t.model_id or not t.model_sha256:
            raise InputError("a template needs its model_id and model_sha256")
        if not math.isfinite(quality := float(t.quality)):
            raise InputError(f"template quality must be finite, got {quality}")
        sql = "SELECT dim FROM templates WHERE model_id = ? AND model_sha256 = ? LIMIT 1"
        known = db.execute(sql, [t.model_id, t.model_sha256]).fetchone()
        if known and int(known[0]) != dim:
            raise InputError(f"embedding has {dim} values but model {t.model_id} produces {known[0]}")
        sql = """INSERT INTO templates (person_id, embedding, dim, model_id, model_sha256, quality, source,
                 created) VALUES (?,?,?,?,?,?,?,?)"""
        db.execute(sql, [person_id, blob, dim, t.model_id, t.model_sha256, quality, str(t.source), utc_iso()])

    def add_templates(self, person: str | int, templates: Sequence[TemplateIn]) -> int:
        """Add templates to an existing person, all or nothing; returns how many were stored."""
        person_id = self.get_person(person).id
        with self._write() as db:
            for template in templates:
                self._insert_template(db, person_id, template)
        return len(templates)

    def matrix(
        self, model_id: str, model_sha256: str, *, at: datetime | None = None, include_disabled: bool = False
    ) -> GalleryMatrix:
        """Templates of exactly this model (id AND sha256) of people admitted at ``at`` (default: now).

        include_disabled=True ignores both the enabled flag and the validity window (duplicate checks).
        """
        sql = """SELECT t.id, t.person_id, p.name, t.embedding, t.dim FROM templates t
                 JOIN people p ON p.id = t.person_id WHERE t.model_id = ? AND t.model_sha256 = ?"""
        params: list[Any] = [model_id, model_sha256]
        if not include_disabled:
            sql += """ AND p.enabled = 1 AND (p.valid_from IS NULL OR p.valid_from <= ?)
                       AND (p.valid_until IS NULL OR p.valid_until > ?)"""
            params += [utc_iso(at)] * 2
        rows = self._rows(sql + " ORDER BY t.id", params)
        if not rows:
            sql = "SELECT dim FROM templates WHERE model_id = ? AND model_sha256 = ? LIMIT 1"
            known = self._rows(sql, [model_id, model_sha256])
            no_ids = np.empty(0, dtype=np.int64)
            dim = int(known[0]["dim"]) if known else 0
            return GalleryMatrix(no_ids, no_ids.copy(), [], np.empty((0, dim), dtype=np.float32))
        for r in rows:
            if len(r["embedding"]) != 4 * r["dim"]:
                raise GalleryCorruptError(
                    f"gallery {self.path}: template {r['id']} is damaged; remove and re-enrol {r['name']!r}"
                )
        return GalleryMatrix(
            np.array([r["id"] for r in rows], dtype=np.int64),
            np.array([r["person_id"] for r in rows], dtype=np.int64),
            [r["name"] for r in rows],
            np.stack([np.frombuffer(r["embedding"], dtype="<f4") for r in rows]).astype(np.float32),
        )

    def stale_templates(self, model_id: str, model_sha256: str) -> dict[str, int]:
        """Per person name, templates made by any other model or model file: those are never compared."""
        sql = """SELECT p.name, count(*) AS n FROM templates t JOIN people p ON p.id = t.person_id
                 WHERE NOT (t.model_id = ? AND t.model_sha256 = ?) GROUP BY p.id ORDER BY p.name"""
        return {r["name"]: int(r["n"]) for r in self._rows(sql, [model_id, model_sha256])}

    def template_counts(self) -> dict[tuple[str, str], int]:
        """Number of templates per (model_id, model_sha256)."""
        sql = "SELECT model_id, model_sha256, count(*) AS n FROM templates GROUP BY 1, 2 ORDER BY 1, 2"
        return {(r["model_id"], r["model_sha256"]): int(r["n"]) for r in self._rows(sql)}

    def person_templates(self, ref: str | int) -> dict[str, int]:
        """One person's template counts keyed by ``"model_id (sha256 prefix)"``."""
        person = self.get_person(ref)
        sql = (
            "SELECT model_id, model_sha256, count(*) AS n FROM templates WHERE person_id = ? "
            "GROUP BY 1, 2 ORDER BY 1, 2"
        )
        return {f"{r['model_id']} ({r['model_sha256'][:12]})": int(r["n"]) for r in self._rows(sql, [person.id])}

    # -- events ----------------------------------------------------------------------------------------------

    def add_event(self, kind: str, outcome: str, **fields: Any) -> int:
        """Append an event (access attempt, enrolment, admin action); returns its id. ``detail`` -> JSON."""
        unknown = sorted(set(fields) - set(EVENT_FIELDS))
        if unknown:
            raise ValueError(f"unknown event field(s) {', '.join(unknown)}; allowed: {', '.join(EVENT_FIELDS)}")
        row: dict[str, Any] = {
            "ts": utc_iso(fields.pop("ts", None)),
            "kind": str(kind),
            "outcome": str(outcome),
        }
        for key, value in fields.items():
            if value is None:
                continue
            if key in _INT_FIELDS:
                row[key] = int(value)
            elif key in _REAL_FIELDS:
                row[key] = float(value)  # numpy scalars cannot be bound by sqlite3
            else:
                row[key] = json.dumps(value, sort_keys=True, default=str) if key == "detail" else str(value)
        sql = f"INSERT INTO events ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})"
        with self._write() as db:
            return int(db.execute(sql, list(row.values())).lastrowid or 0)

    def events(
        self, *, since: datetime | None = None, person: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Events at or after ``since``, of ``person`` (any case), the newest ``limit``; newest last."""
        where: list[str] = ["1"]
        params: list[Any] = []
        if since is not None:
            where.append("ts >= ?")
            params.append(utc_iso(since))
        if person is not None:
            where.append("person_name = ? COLLATE NOCASE")
            params.append(unicodedata.normalize("NFC", person.strip()))
        sql = f"SELECT * FROM events WHERE {' AND '.join(where)} ORDER BY ts DESC, id DESC"
        if limit is not None:
            sql, params = sql + " LIMIT ?", [*params, int(limit)]
        rows = self._rows(sql, params)
        for r in rows:
            if r["detail"] is not None:
                with contextlib.suppress(ValueError):  # text written by other tools is handed back as is
                    r["detail"] = json.loads(r["detail"])
        return rows[::-1]

    # -- health ----------------------------------------------------------------------------------------------

    def data_version(self) -> int:
        """Changes whenever another connection commits: the door loop reloads its templates when it does."""
        return int(self._rows("PRAGMA data_version")[0]["data_version"])

    def integrity_check(self) -> list[str]:
        """Problems found by SQLite's integrity and foreign-key checks; empty when the gallery is healthy."""
        problems = [r["integrity_check"] for r in self._rows("PRAGMA integrity_check")]
        problems = [p for p in problems if p != "ok"]
        for r in self._rows("PRAGMA foreign_key_check"):
            problems.append(f"{r['table']} row {r['rowid']} points at a missing row of {r['parent']}")
        return problems
