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

The package, one module per job: ``schema`` (tables, migrations), ``chain`` (the events' hash chain),
``events`` (the event log), ``access`` and ``schedules`` (access groups, schedules and rules), ``records`` (what is
stored, and its checks), ``connection`` (the SQLite connection, its errors and checkpoints), ``db`` (``Gallery``:
people, templates, their encryption), ``backup`` (backup, restore, the backup folder), ``open`` (``open_gallery``:
the configured gallery, checked), ``permissions`` (the files are private), ``keys`` (the templates' encryption key)
and ``sql`` (small SQLite helpers).
"""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    """The wall clock, for timestamps on records only; durations use time.monotonic (see tests/test_faults.py)."""
    return datetime.now(UTC)


def utc_iso(dt: datetime | None = None) -> str:
    """UTC ISO-8601 to the second (naive = UTC); strings in this one format sort chronologically."""
    dt = datetime.now(UTC) if dt is None else dt
    return (dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt).astimezone(UTC).isoformat(timespec="seconds")


# NOTE: utc_now and utc_iso are defined here, before the submodules that use them are imported, so that the wall
# clock is this module's ``datetime``: tests/test_faults.py makes it jump by patching ``kiosk.gallery.datetime``.
from kiosk.gallery.backup import erase_from_backup  # noqa: E402
from kiosk.gallery.chain import CHAIN_FIELDS, GENESIS_HASH, EventChainReport, event_hash, verify_chain  # noqa: E402
from kiosk.gallery.db import Gallery  # noqa: E402
from kiosk.gallery.events import EVENT_FIELDS  # noqa: E402
from kiosk.gallery.records import MAX_NAME_LEN, GalleryMatrix, Person, TemplateCipher, TemplateIn, clean_name  # noqa: E402
from kiosk.gallery.schema import MIGRATIONS, _migrate_initial, _migrate_security  # noqa: E402

__all__ = [
    "CHAIN_FIELDS",
    "EVENT_FIELDS",
    "GENESIS_HASH",
    "MAX_NAME_LEN",
    "MIGRATIONS",
    "EventChainReport",
    "Gallery",
    "GalleryMatrix",
    "Person",
    "TemplateCipher",
    "TemplateIn",
    "_migrate_initial",
    "_migrate_security",
    "clean_name",
    "erase_from_backup",
    "event_hash",
    "utc_iso",
    "utc_now",
    "verify_chain",
]
