"""The gallery of enrolled people: a SQLite database (through sqlite-utils) of people, face templates, events.

Every template is tagged with the model id and sha256 that made it, so only comparable embeddings are matched.
WAL lets the kiosk read while the CLI enrols; ``secure_delete`` overwrites removed biometric templates and a
checkpoint after each erasure leaves no copy in the WAL. sqlite3 errors leave this module only as ``GalleryError``
subclasses with one-line messages saying the fix.

Template protection (issue #6): with a ``TemplateCipher`` templates are stored encrypted, bound by the associated
data to their person, model and dimension, so a row moved to someone else fails to authenticate. Events form a hash
chain (each row carries its predecessor's hash) that ``verify_events`` checks. With an ``actor`` every change writes
an ``admin`` event in the same transaction. ``backup``/``restore_from`` use SQLite's online backup API, so a running
kiosk keeps its connection and sees a restore as a change of ``data_version``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sqlite3
import time
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import quote

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
    TamperedError,
    TemplateKeyError,
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


# The columns an event's hash covers, in this fixed order: later migrations may add columns without changing
# the hash of events already written.
# fmt: off
CHAIN_FIELDS = ("id", "ts", "kind", "track_id", "person_id", "person_name", "score", "runner_up", "threshold",
                "frames", "liveness", "latency_ms", "outcome", "door_action", "detail")
# fmt: on
GENESIS_HASH = "0" * 64  # the prev_hash of the first event
_CHAIN_CONTEXT = "face-kiosk event v1"


def _migrate_initial(db: Database) -> None:
    """People, their model-tagged templates, and the event log (events keep no FK: they outlive people)."""
    for statement in _SCHEMA_1.split(";"):
        db.execute(statement)


def _columns(conn: sqlite3.Connection | Database, table: str) -> set[str]:
    return {str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})").fetchall()}


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


def _migrate_security(db: Database) -> None:
    """Encrypted templates (key_id; NULL = plaintext float32) and the event hash chain, existing events chained."""
    if "key_id" not in _columns(db, "templates"):
        db.execute("ALTER TABLE templates ADD COLUMN key_id TEXT")
    for column in ("prev_hash", "hash"):
        if column not in _columns(db, "events"):
            db.execute(f"ALTER TABLE events ADD COLUMN {column} TEXT")
    _chain_new_events(db)


# Named, re-runnable steps applied in order. Append only: never rename or reorder a released step.
MIGRATIONS: list[tuple[str, Callable[[Database], None]]] = [
    ("0001_initial", _migrate_initial),
    ("0002_security", _migrate_security),
]


class TemplateCipher(Protocol):
    """Encrypts templates at rest (kiosk.keys.AesGcmCipher); defined here so the gallery needs no crypto import."""

    @property
    def key_id(self) -> str:
        """A short public id of the key: it says which key a template needs, never the key itself."""
        ...

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        """nonce || ciphertext || tag."""
        ...

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        """The plaintext; TemplateKeyError when the blob does not authenticate (wrong key, altered, moved)."""
        ...


@dataclass(frozen=True)
class EventChainReport:
    """What ``verify_events`` found: ``ok`` or the first event whose link is broken and why."""

    ok: bool
    checked: int  # events whose link was checked (all of them when ok)
    first_broken_id: int | None
    reason: str | None
    head_id: int | None  # the newest event; keep (head_id, head_hash) elsewhere to detect a truncated log
    head_hash: str | None


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


def utc_now() -> datetime:
    """The wall clock, for timestamps on records only; durations use time.monotonic (see tests/test_faults.py)."""
    return datetime.now(UTC)


def utc_iso(dt: datetime | None = None) -> str:
    """UTC ISO-8601 to the second (naive = UTC); strings in this one format sort chronologically."""
    dt = datetime.now(UTC) if dt is None else dt
    return (dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt).astimezone(UTC).isoformat(timespec="seconds")


def _opt_iso(dt: datetime | None) -> str | None:
    return None if dt is None else utc_iso(dt)


def _opt_dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def clean_name(name: str) -> str:
    """Strip and NFC-normalise a name; InputError if empty, over 200 characters or with control characters."""
    if not isinstance(name, str):
        raise InputError(f"person name must be text, got {type(name).__name__}")
    cleaned = unicodedata.normalize("NFC", name.strip())
    if not cleaned:
        raise InputError("person name is empty")
    if len(cleaned) > MAX_NAME_LEN:
        raise InputError(f"person name is {len(cleaned)} characters long; the limit is {MAX_NAME_LEN}")
    if any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") or c in _BIDI_CONTROLS for c in cleaned):
        # Cs: a lone surrogate (a non-UTF-8 byte in argv); bidi overrides can disguise a name in the audit log.
        raise InputError(f"person name {cleaned!r} contains control, line-break or text-direction characters")
    return cleaned


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


def _as_id(ref: str | int) -> int | None:
    """A person id from an int or a short decimal string; None if it cannot be one (no int() of "²", 5000 digits)."""
    if isinstance(ref, int):
        return ref if 1 <= ref < 2**63 else None
    text = ref.strip()
    if text.isascii() and text.isdecimal() and len(text) <= 18:
        return int(text)
    return None


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


def _template_aad(person_id: int, model_id: str, model_sha256: str, dim: int) -> bytes:
    """Binds an encrypted template to its row: moved to another person or model, it no longer authenticates."""
    return f"{person_id}|{model_id}|{model_sha256}|{dim}".encode()


def verify_chain(conn: sqlite3.Connection | Database) -> EventChainReport:
    """Walk the events in id order; the first event whose prev_hash or own hash does not check out is reported."""
    if not {"prev_hash", "hash"} <= _columns(conn, "events"):
        return EventChainReport(False, 0, None, "the event log has no hash chain (gallery not migrated)", None, None)
    head = conn.execute("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
    head_id, head_hash = (int(head[0]), head[1]) if head else (None, None)
    sql = f"SELECT {', '.join(CHAIN_FIELDS)}, prev_hash, hash FROM events ORDER BY id"
    prev, prev_id, checked = GENESIS_HASH, None, 0
    for values in conn.execute(sql):
        row = dict(zip((*CHAIN_FIELDS, "prev_hash", "hash"), values, strict=True))
        event_id = int(row["id"])
        reason = None
        if row["hash"] is None:
            reason = "it has no hash (written outside face-kiosk)"
        elif row["prev_hash"] != prev:
            before = "the start of the log" if prev_id is None else f"event {prev_id}"
            reason = f"its prev_hash does not match {before}: events were deleted, inserted or reordered"
        elif event_hash(prev, row) != row["hash"]:
            reason = "its contents do not match its hash: the event was altered"
        if reason is not None:
            return EventChainReport(False, checked, event_id, f"event {event_id}: {reason}", head_id, head_hash)
        prev, prev_id, checked = str(row["hash"]), event_id, checked + 1
    return EventChainReport(True, checked, None, None, head_id, head_hash)


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


def _sql_message(err: object) -> str:
    return " ".join(str(err).split())


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


def _remove_db_files(path: Path) -> None:
    """A database file and its journal, WAL and shared-memory files, if present."""
    for extra in ("", "-journal", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{extra}").unlink()


def _fsync(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_backup(src: Path) -> sqlite3.Connection:
    """Read a backup file into memory and integrity-check it; GalleryCorruptError when it is not sound SQLite."""
    if not src.is_file():
        raise GalleryError(f"backup {src} does not exist or is not a file")
    mem = sqlite3.connect(":memory:", isolation_level=None)
    try:
        disk = sqlite3.connect(f"file:{quote(str(src.resolve()))}?mode=ro", uri=True)
        try:
            disk.backup(mem)
        finally:
            disk.close()
        problems = [str(r[0]) for r in mem.execute("PRAGMA integrity_check")]
        problems += [
            f"{r[0]} row {r[1]} points at a missing row of {r[2]}" for r in mem.execute("PRAGMA foreign_key_check")
        ]
    except sqlite3.Error as err:
        mem.close()
        raise GalleryCorruptError(
            f"backup {src} is not a readable SQLite database ({_sql_message(err)}); nothing was restored"
        ) from None
    problems = [p for p in problems if p != "ok"]
    if problems:
        mem.close()
        raise GalleryCorruptError(f"backup {src} is damaged ({_sql_message(problems[0])}); nothing was restored")
    return mem


def erase_from_backup(path: Path, person_id: int) -> bool:
    """Erase one person and their templates from a backup file; True if the backup held them.

    secure_delete zeroes the freed cells; the erasure runs in WAL mode so the old pages are never copied into a
    rollback journal, then VACUUM rebuilds the file and a checkpoint empties the WAL before the backup's own
    journal mode is put back.
    """
    path = Path(path)
    if not path.is_file():
        raise GalleryError(f"backup {path} does not exist or is not a file")
    try:
        conn = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as err:
        raise GalleryError(f"backup {path}: {_sql_message(err)}") from None
    try:
        conn.execute("PRAGMA secure_delete = ON")
        tables = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"people", "templates"} <= tables:
            raise TamperedError(f"{path} is not a face-kiosk gallery backup (no people/templates tables)")
        mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0])
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            found = conn.execute("DELETE FROM templates WHERE person_id = ?", [int(person_id)]).rowcount > 0
            found = conn.execute("DELETE FROM people WHERE id = ?", [int(person_id)]).rowcount > 0 or found
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if found:
            conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if mode != "wal":
            conn.execute(f"PRAGMA journal_mode = {mode}")
    except sqlite3.Error as err:
        msg = _sql_message(err)
        if "not a database" in msg or "malformed" in msg:
            raise GalleryCorruptError(f"backup {path} is damaged ({msg})") from None
        raise GalleryError(f"backup {path}: {msg}") from None
    finally:
        conn.close()
    if found:
        logger.info("gallery backup %s: erased person id=%d", path, person_id)
    return found


class Gallery:
    """The gallery database; ``Gallery(":memory:")`` for tests. A context manager; close() is idempotent.

    ``cipher`` encrypts new templates and decrypts stored ones (None: plaintext float32). ``actor`` (who runs an
    admin command) makes every change also write an ``admin`` event naming them, in the change's own transaction.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout_s: float = 5.0,
        cipher: TemplateCipher | None = None,
        actor: str | None = None,
    ) -> None:
        self.path = str(path)
        self.busy_timeout_s = float(busy_timeout_s)
        self.actor = actor
        self._cipher = cipher
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

    @property
    def cipher(self) -> TemplateCipher | None:
        """The key templates are encrypted with (None: plaintext); ``rekey`` changes it."""
        return self._cipher

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
            msg = _sql_message(err)
            if isinstance(err, sqlite3.OperationalError) and ("locked" in msg or "busy" in msg):
                raise GalleryLockedError(
                    f"gallery {self.path} is locked by another process (waited {self.busy_timeout_s:g} s)"
                ) from err
            if "not a database" in msg or "malformed" in msg or "corrupt" in msg:
                raise GalleryCorruptError(
                    f"gallery {self.path} is damaged ({msg}): restore it from a backup (`kiosk restore`), "
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

    def _checkpoint(self, what: str) -> bool:
        """Copy the WAL into the main file and truncate it, so no old page (an erased template) stays in the WAL.

        A reader in the middle of a read blocks the truncation: retried until busy_timeout_s has passed, then a
        warning; the next checkpoint (SQLite runs one every 1000 pages, and at the last close) finishes the job.
        """
        if self.path == ":memory:":
            return True
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                with self._guard():
                    row = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except GalleryLockedError:
                row = (1,)
            if not row or not row[0]:
                return True
            if time.monotonic() >= deadline:
                logger.warning(
                    "gallery %s: a reader kept the WAL checkpoint blocked for %g s; %s stay in the WAL until the "
                    "next checkpoint",
                    self.path,
                    self.busy_timeout_s,
                    what,
                )
                return False
            time.sleep(0.05)

    # -- people ----------------------------------------------------------------------------------------------

    def get_person(self, ref: str | int) -> Person:
        """By id or case-insensitive name (a digits-only name that matches nobody is tried as an id)."""
        rows: list[dict[str, Any]] = []
        if isinstance(ref, str) and not _has_surrogate(ref):
            rows = self._rows(_PERSON_SQL + " WHERE p.name = ?", [unicodedata.normalize("NFC", ref.strip())])
        if not rows and (person_id := _as_id(ref)) is not None:
            rows = self._rows(_PERSON_SQL + " WHERE p.id = ?", [person_id])
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
            self._audit(db, "added", person_id, name, {"enabled": bool(enabled)})
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
            existing = db.execute("SELECT id, name FROM people WHERE name = ?", [name]).fetchone()
            if existing and append:
                person_id, stored_name, action = int(existing[0]), str(existing[1]), "templates added"
            else:
                person_id, stored_name, action = self._insert_person(db, name, fields), name, "enrolled"
            for template in templates:
                self._insert_template(db, person_id, template)
            self._audit(db, action, person_id, stored_name, {"templates": len(templates)})
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
            self._audit(db, "renamed", person.id, new_name, {"from": person.name})
        return self.get_person(person.id)

    def set_enabled(self, ref: str | int, enabled: bool) -> Person:
        """Enable or disable a person; a disabled person's templates are left out of ``matrix()``."""
        person = self.get_person(ref)
        with self._write() as db:
            db.execute("UPDATE people SET enabled = ? WHERE id = ?", [int(enabled), person.id])
            self._audit(db, "enabled" if enabled else "disabled", person.id, person.name)
        logger.info("gallery: person id=%d enabled=%s", person.id, enabled)
        return self.get_person(person.id)

    def set_validity(self, ref: str | int, valid_from: datetime | None, valid_until: datetime | None) -> Person:
        """Admit a person only while valid_from <= t < valid_until (None = unbounded on that side)."""
        _check_window(valid_from, valid_until)
        person = self.get_person(ref)
        window = {"valid_from": _opt_iso(valid_from), "valid_until": _opt_iso(valid_until)}
        with self._write() as db:
            db.execute(
                "UPDATE people SET valid_from = ?, valid_until = ? WHERE id = ?",
                [window["valid_from"], window["valid_until"], person.id],
            )
            self._audit(db, "validity set", person.id, person.name, window)
        return self.get_person(person.id)

    def remove(self, ref: str | int) -> int:
        """Delete a person and their templates in one transaction and erase them; returns the templates erased.

        secure_delete zeroes the freed cells and pages; the checkpoint that follows copies the zeroed pages into
        the main file and truncates the WAL, which would otherwise keep the template's old page until later.
        """
        person = self.get_person(ref)
        with self._write() as db:
            erased = int(db.execute("SELECT count(*) FROM templates WHERE person_id = ?", [person.id]).fetchone()[0])
            db.execute("DELETE FROM templates WHERE person_id = ?", [person.id])
            db.execute("DELETE FROM people WHERE id = ?", [person.id])
            self._audit(db, "removed", person.id, person.name, {"templates": erased})
        self._checkpoint("erased templates")
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
        key_id = None
        if self._cipher is not None:
            blob = self._cipher.encrypt(blob, _template_aad(person_id, t.model_id, t.model_sha256, dim))
            key_id = self._cipher.key_id
        sql = """INSERT INTO templates (person_id, embedding, dim, model_id, model_sha256, quality, source,
                 created, key_id) VALUES (?,?,?,?,?,?,?,?,?)"""
        values = [person_id, blob, dim, t.model_id, t.model_sha256, quality, str(t.source), utc_iso(), key_id]
        db.execute(sql, values)

    def _plaintext(self, r: Mapping[str, Any], where: str, *, live: bool = True) -> bytes:
        """A stored template's float32 bytes: decrypted (and authenticated) when it is encrypted, length-checked.

        ``where`` names the file in messages; ``live`` is False for a backup being checked before a restore.
        """
        blob, key_id, name = bytes(r["embedding"]), r["key_id"], r["name"]
        if key_id is not None:
            cipher = self._cipher
            if cipher is None:
                raise TemplateKeyError(
                    f"{where}: templates are encrypted with key {key_id} and no key is loaded: set gallery.encrypt: "
                    f"true and provide key {key_id} (`kiosk keys rotate` changes the key)"
                )
            if cipher.key_id != key_id:
                raise TemplateKeyError(
                    f"{where}: templates are encrypted with key {key_id} but key {cipher.key_id} is loaded: provide "
                    f"key {key_id}, then `kiosk keys rotate` to move them to another key"
                )
            aad = _template_aad(int(r["person_id"]), str(r["model_id"]), str(r["model_sha256"]), int(r["dim"]))
            try:
                blob = cipher.decrypt(blob, aad)
            except TemplateKeyError:
                fix = f"restore a backup (`kiosk restore`) or re-enrol {name!r}" if live else "nothing was restored"
                raise TemplateKeyError(
                    f"{where}: template {r['id']} of {name!r} does not authenticate with key {key_id}: it was altered "
                    f"or moved to another person; {fix}"
                ) from None
        if len(blob) != 4 * int(r["dim"]):
            fix = f"remove and re-enrol {name!r}" if live else "nothing was restored"
            raise GalleryCorruptError(f"{where}: template {r['id']} is damaged; {fix}")
        return blob

    def add_templates(self, person: str | int, templates: Sequence[TemplateIn]) -> int:
        """Add templates to an existing person, all or nothing; returns how many were stored."""
        found = self.get_person(person)
        with self._write() as db:
            for template in templates:
                self._insert_template(db, found.id, template)
            self._audit(db, "templates added", found.id, found.name, {"templates": len(templates)})
        return len(templates)

    def matrix(
        self, model_id: str, model_sha256: str, *, at: datetime | None = None, include_disabled: bool = False
    ) -> GalleryMatrix:
        """Templates of exactly this model (id AND sha256) of people admitted at ``at`` (default: now).

        include_disabled=True ignores both the enabled flag and the validity window (duplicate checks).
        Encrypted templates are decrypted with the gallery's cipher: TemplateKeyError when it is missing or wrong.
        """
        sql = """SELECT t.id, t.person_id, p.name, t.embedding, t.dim, t.model_id, t.model_sha256, t.key_id
                 FROM templates t JOIN people p ON p.id = t.person_id WHERE t.model_id = ? AND t.model_sha256 = ?"""
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
        vectors = [np.frombuffer(self._plaintext(r, f"gallery {self.path}"), dtype="<f4") for r in rows]
        return GalleryMatrix(
            np.array([r["id"] for r in rows], dtype=np.int64),
            np.array([r["person_id"] for r in rows], dtype=np.int64),
            [r["name"] for r in rows],
            np.stack(vectors).astype(np.float32),
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

    # -- encryption ------------------------------------------------------------------------------------------

    def encryption_status(self) -> dict[str | None, int]:
        """Templates per key id; the None entry counts plaintext templates."""
        sql = "SELECT key_id, count(*) AS n FROM templates GROUP BY key_id ORDER BY key_id"
        return {r["key_id"]: int(r["n"]) for r in self._rows(sql)}

    def rekey(self, new: TemplateCipher | None) -> int:
        """Re-encrypt every template with ``new`` (None: store them as plaintext), all in one transaction.

        The current cipher decrypts (plaintext templates need none); a template it cannot decrypt, or any failure
        of ``new``, leaves every template as it was. Records an ``admin`` event "rekeyed"; returns the count.
        """
        sql = """SELECT t.id, t.person_id, p.name, t.embedding, t.dim, t.model_id, t.model_sha256, t.key_id
                 FROM templates t LEFT JOIN people p ON p.id = t.person_id ORDER BY t.id"""
        new_id = None if new is None else new.key_id
        with self._write() as db:
            cursor = db.execute(sql)
            columns = [d[0] for d in cursor.description]
            rows = [dict(zip(columns, values, strict=True)) for values in cursor.fetchall()]
            old_ids = sorted({r["key_id"] or "plaintext" for r in rows})
            for r in rows:
                blob = self._plaintext(r, f"gallery {self.path}")
                if new is not None:
                    aad = _template_aad(int(r["person_id"]), str(r["model_id"]), str(r["model_sha256"]), int(r["dim"]))
                    blob = new.encrypt(blob, aad)
                db.execute("UPDATE templates SET embedding = ?, key_id = ? WHERE id = ?", [blob, new_id, r["id"]])
            detail = {"templates": len(rows), "from": old_ids, "to": new_id or "plaintext"}
            self._audit(db, "rekeyed", detail=detail, always=True)
        self._cipher = new
        self._checkpoint("the templates' previous encryption")
        logger.info("gallery %s: %d template(s) now under %s", self.path, len(rows), new_id or "no key (plaintext)")
        return len(rows)

    # -- events ----------------------------------------------------------------------------------------------

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
        rows = self._rows(sql, params)
        for r in rows:
            if r["detail"] is not None:
                with contextlib.suppress(ValueError):  # text written by other tools is handed back as is
                    r["detail"] = json.loads(r["detail"])
        return rows[::-1]

    def verify_events(self) -> EventChainReport:
        """Check the event hash chain from the first event to the newest, in one consistent snapshot."""
        with self._guard():
            self._db.execute("BEGIN")
            try:
                return verify_chain(self._db)
            finally:
                self._db.execute("COMMIT")

    # -- backup and restore ----------------------------------------------------------------------------------

    def backup(self, dest: Path) -> None:
        """Write a consistent copy to the new file ``dest`` (0600) while others go on reading and writing.

        SQLite's online backup API copies one snapshot into ``dest.tmp``, which is switched to a self-contained
        rollback-journal file, integrity-checked, synced and renamed; an existing ``dest`` is never overwritten.
        """
        dest = Path(dest)
        if dest.exists() or dest.is_symlink():
            raise GalleryError(f"backup {dest} already exists: choose another file name")
        tmp = dest.with_name(dest.name + ".tmp")
        _remove_db_files(tmp)  # left behind by an interrupted backup
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError as err:
            raise GalleryError(f"cannot create backup {tmp}: {err.strerror or err}") from None
        try:
            target = sqlite3.connect(tmp, isolation_level=None)
            try:
                self._db.conn.backup(target)
                target.execute("PRAGMA journal_mode = DELETE")
                problems = [str(r[0]) for r in target.execute("PRAGMA integrity_check") if r[0] != "ok"]
            finally:
                target.close()
            if problems:
                raise GalleryCorruptError(
                    f"gallery {self.path} is damaged ({_sql_message(problems[0])}): no backup was written; "
                    "restore an earlier backup (`kiosk restore`)"
                )
            _fsync(tmp)
            if dest.exists():
                raise GalleryError(f"backup {dest} already exists: choose another file name")
            os.replace(tmp, dest)
            _fsync(dest.parent, directory=True)
        except sqlite3.Error as err:
            msg = _sql_message(err)
            if "not a database" in msg or "malformed" in msg:
                raise GalleryCorruptError(f"gallery {self.path} is damaged ({msg}): no backup was written") from None
            raise GalleryError(f"backup of {self.path} to {dest} failed: {msg}") from None
        except OSError as err:
            raise GalleryError(f"backup of {self.path} to {dest} failed: {err.strerror or err}") from None
        finally:
            _remove_db_files(tmp)
        logger.info("gallery %s: backed up to %s", self.path, dest)

    def _check_backup(self, conn: sqlite3.Connection, src: Path) -> tuple[int, int]:
        """Refuse a backup that is not a gallery this version knows, whose event chain is broken, or whose templates
        do not decrypt with this gallery's key; returns (people, templates)."""
        tables = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = sorted({"_migrations", "people", "templates", "events"} - tables)
        if missing:
            raise TamperedError(
                f"{src} is not a face-kiosk gallery (no {', '.join(missing)} table); nothing was restored"
            )
        applied = [str(r[0]) for r in conn.execute("SELECT name FROM _migrations ORDER BY rowid")]
        unknown = [name for name in applied if name not in {known for known, _ in MIGRATIONS}]
        if unknown:
            raise GalleryError(
                f"backup {src} was made by a newer face-kiosk (unknown migration {', '.join(unknown)}); "
                "upgrade face-kiosk to restore it"
            )
        chained = "hash" in _columns(conn, "events")
        if chained != ("0002_security" in applied):
            raise TamperedError(f"backup {src}: its schema does not match its migrations; nothing was restored")
        if chained and not (report := verify_chain(conn)).ok:
            raise TamperedError(f"backup {src}: the event log is broken at {report.reason}; nothing was restored")
        key_col = "t.key_id" if "key_id" in _columns(conn, "templates") else "NULL AS key_id"
        sql = f"""SELECT t.id, t.person_id, p.name, t.embedding, t.dim, t.model_id, t.model_sha256, {key_col}
                  FROM templates t LEFT JOIN people p ON p.id = t.person_id ORDER BY t.id"""
        cursor = conn.execute(sql)
        columns = [d[0] for d in cursor.description]
        templates = 0
        for values in cursor:
            self._plaintext(dict(zip(columns, values, strict=True)), f"backup {src}", live=False)
            templates += 1
        page_sizes = (
            int(conn.execute("PRAGMA page_size").fetchone()[0]),
            int(self._rows("PRAGMA page_size")[0]["page_size"]),
        )
        if self.path != ":memory:" and page_sizes[0] != page_sizes[1]:
            raise GalleryError(
                f"backup {src} has {page_sizes[0]}-byte pages, this gallery {page_sizes[1]}: restore it into a new, "
                "empty gallery file"
            )
        return int(conn.execute("SELECT count(*) FROM people").fetchone()[0]), templates

    def restore_from(self, src: Path) -> int:
        """Replace this gallery's content with a backup's, once the backup passes every check; returns the people.

        The backup is read into memory and checked there (SQLite integrity, a face-kiosk gallery this version
        knows, an intact event chain, templates that authenticate with this gallery's key), so what was checked is
        exactly what is restored, and a backup that fails changes nothing. The copy goes through this connection
        with the backup API in one transaction: other connections (a running kiosk) keep their handle and see the
        restored content (their ``data_version`` changes). Migrated if older; records an admin event "restored".
        """
        src = Path(src)
        mem = _load_backup(src)
        try:
            try:
                people, templates = self._check_backup(mem, src)
            except sqlite3.Error as err:
                raise GalleryCorruptError(
                    f"backup {src} cannot be read ({_sql_message(err)}); nothing was restored"
                ) from None
            with self._guard():
                mem.backup(self._db.conn)
        finally:
            mem.close()
        self._migrate()
        with self._write() as db:
            detail = {"people": people, "templates": templates, "source": src.name}
            self._audit(db, "restored", detail=detail, always=True)
        self._checkpoint("the replaced gallery's pages")
        logger.info("gallery %s: restored %d people from %s", self.path, people, src)
        return people

    # -- health ----------------------------------------------------------------------------------------------

    def data_version(self) -> int:
        """Changes whenever another connection commits: the door loop reloads its templates when it does."""
        return int(self._rows("PRAGMA data_version")[0]["data_version"])

    def quick_check(self) -> list[str]:
        """SQLite's quick_check (no index cross-checks; fast enough for every start); empty when healthy."""
        return [str(r["quick_check"]) for r in self._rows("PRAGMA quick_check") if r["quick_check"] != "ok"]

    def integrity_check(self) -> list[str]:
        """Problems found by SQLite's integrity and foreign-key checks; empty when the gallery is healthy."""
        problems = [r["integrity_check"] for r in self._rows("PRAGMA integrity_check")]
        problems = [p for p in problems if p != "ok"]
        for r in self._rows("PRAGMA foreign_key_check"):
            problems.append(f"{r['table']} row {r['rowid']} points at a missing row of {r['parent']}")
        return problems
