"""The gallery's tables and their migrations: named, re-runnable steps applied in order."""

from __future__ import annotations

from collections.abc import Callable

from sqlite_utils import Database

from kiosk.gallery.chain import _chain_new_events
from kiosk.gallery.sql import _columns

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


def _migrate_security(db: Database) -> None:
    """Encrypted templates (key_id; NULL = plaintext float32) and the event hash chain, existing events chained."""
    if "key_id" not in _columns(db, "templates"):
        db.execute("ALTER TABLE templates ADD COLUMN key_id TEXT")
    for column in ("prev_hash", "hash"):
        if column not in _columns(db, "events"):
            db.execute(f"ALTER TABLE events ADD COLUMN {column} TEXT")
    _chain_new_events(db)


_SCHEMA_3 = """
CREATE TABLE IF NOT EXISTS groups (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE COLLATE NOCASE);
CREATE TABLE IF NOT EXISTS person_groups (
    person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
    group_id INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE, PRIMARY KEY (person_id, group_id));
CREATE TABLE IF NOT EXISTS schedules (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    tz TEXT NOT NULL DEFAULT 'UTC', windows TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS access_rules (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    group_id INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE, doors TEXT NOT NULL DEFAULT '*',
    schedule_id INTEGER REFERENCES schedules(id) ON DELETE RESTRICT);
CREATE TABLE IF NOT EXISTS replica_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"""


def _migrate_access(db: Database) -> None:
    """Access rules (#18): people in groups, groups allowed at doors on schedules; each person's card number for an
    access panel (``credential``); and, on a door in a fleet, the hub revision of each person (``rev``) and the
    replica's own state (``replica_meta``: applied stream sequence, last sync)."""
    for column, decl in (("credential", "TEXT"), ("rev", "INTEGER")):
        if column not in _columns(db, "people"):
            db.execute(f"ALTER TABLE people ADD COLUMN {column} {decl}")
    for statement in _SCHEMA_3.split(";"):
        db.execute(statement)


# Named, re-runnable steps applied in order. Append only: never rename or reorder a released step.
MIGRATIONS: list[tuple[str, Callable[[Database], None]]] = [
    ("0001_initial", _migrate_initial),
    ("0002_security", _migrate_security),
    ("0003_access", _migrate_access),
]
