"""Backups: ``Gallery.backup``/``restore_from`` through SQLite's online backup API, erasing a person from a backup
file, and the backup folder of the configured gallery.

``backup_gallery`` writes an online SQLite backup (the kiosk may keep running) into ``backup_dir`` and prunes the
oldest beyond ``gallery.backups_keep``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from kiosk.errors import GalleryCorruptError, GalleryError, InsecureStorageError, KioskError, TamperedError
from kiosk.gallery.chain import verify_chain
from kiosk.gallery.events import EventLog
from kiosk.gallery.permissions import SIDECARS, private_path_problem
from kiosk.gallery.schema import MIGRATIONS
from kiosk.gallery.sql import _columns, _sql_message

if TYPE_CHECKING:
    from kiosk.config import Config
    from kiosk.gallery.db import Gallery

# NOTE: the names of the modules this code came from (kiosk/gallery.py, kiosk/storage.py), so log lines and their
# filters stay as they were.
logger = logging.getLogger("kiosk.gallery")
log = logging.getLogger("kiosk.storage")

BACKUP_PREFIX = "gallery-"
BACKUP_SUFFIX = ".db"
_BACKUP_NAME = re.compile(r"gallery-(\d{8}T\d{6}Z)(?:-(\d+))?\.db")


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
            if "person_groups" in tables:  # foreign keys are off here: no cascade, and no row may point at nobody
                conn.execute("DELETE FROM person_groups WHERE person_id = ?", [int(person_id)])
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


class GalleryBackup(EventLog):
    """The gallery's backup and restore methods."""

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


# -- backups ---------------------------------------------------------------------------------------------------


def _backup_order(path: Path) -> tuple[str, int]:
    match = _BACKUP_NAME.fullmatch(path.name)
    return (match[1], int(match[2] or 0)) if match else ("", 0)


def list_backups(cfg: Config) -> list[Path]:
    """The backups ``kiosk backup`` made in ``backup_dir`` (named gallery-<UTC time>[-N].db), oldest first."""
    folder = cfg.backup_dir
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _BACKUP_NAME.fullmatch(p.name) and p.is_file() and not p.is_symlink()]
    return sorted(found, key=_backup_order)


def backup_files(cfg: Config) -> list[Path]:
    """Every database file in ``backup_dir`` (ours and any other ``*.db`` put there): what erasure must reach."""
    folder = cfg.backup_dir
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.db") if p.is_file() and not p.is_symlink())


@dataclass(frozen=True)
class Removal:
    """What ``remove_person`` erased: the person, their templates, and the backups they were erased from."""

    person_id: int
    name: str
    templates: int
    backups: int  # database files in backup_dir
    erased_from: int  # backups that held the person
    failed: tuple[str, ...]  # "<file>: <why>" for each backup the person could not be erased from


def remove_person(cfg: Config, gallery: Gallery, ref: str | int) -> Removal:
    """Remove a person with every erasure guarantee: the gallery's rows and freed pages (``Gallery.remove``), then
    every database file in ``backup_dir`` (``erase_from_backup``). A backup that fails is listed, never skipped
    silently: the caller must tell the admin to delete it."""
    person = gallery.get_person(ref)
    erased = gallery.remove(person.id)
    backups = backup_files(cfg)
    erased_from, failed = 0, []
    for backup in backups:
        try:
            erased_from += bool(erase_from_backup(backup, person.id))
        except KioskError as exc:
            failed.append(f"{backup.name}: {exc}")
    return Removal(person.id, person.name, erased, len(backups), erased_from, tuple(failed))


def newest_backup(cfg: Config) -> Path | None:
    backups = list_backups(cfg)
    return backups[-1] if backups else None


def _backup_dir(cfg: Config) -> Path:
    folder = cfg.backup_dir
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if cfg.gallery.check_permissions and (problem := private_path_problem(folder, folder=True)):
        raise InsecureStorageError(f"refusing to write a backup: {problem}")
    return folder


def shred(path: Path) -> None:
    """Overwrite a file with zeros, then delete it (best effort: flash storage may keep old blocks)."""
    with contextlib.suppress(OSError):
        size = path.stat().st_size
        with path.open("r+b") as f:
            f.write(b"\0" * size)
            f.flush()
            os.fsync(f.fileno())
    path.unlink(missing_ok=True)


def backup_gallery(cfg: Config, gallery: Gallery, out: Path | None = None, *, spare: Path | None = None) -> Path:
    """Write an online backup of ``gallery`` (to ``out``, else ``backup_dir/gallery-<UTC time>.db``); returns it.

    Backups written to ``backup_dir`` are pruned to the newest ``gallery.backups_keep``; the pruned ones are
    overwritten before they are deleted, except ``spare`` (the backup being restored). A backup holds the same
    templates as the gallery (encrypted or not).
    """
    if out is None:
        folder = _backup_dir(cfg)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        out = folder / f"{BACKUP_PREFIX}{stamp}{BACKUP_SUFFIX}"
        n = 1
        while out.exists() or Path(f"{out}.tmp").exists():
            out, n = folder / f"{BACKUP_PREFIX}{stamp}-{n}{BACKUP_SUFFIX}", n + 1
        gallery.backup(out)
        prune_backups(cfg, spare=spare)
    else:
        gallery.backup(out)
    log.info("gallery backed up to %s", out)
    return out


def prune_backups(cfg: Config, *, spare: Path | None = None) -> list[Path]:
    """Delete the oldest backups beyond ``gallery.backups_keep`` (never ``spare``); returns the deleted paths."""
    keep = spare.resolve() if spare is not None else None
    candidates = [b for b in list_backups(cfg) if b.resolve() != keep]  # the spare one does not count either
    pruned = candidates[: max(0, len(candidates) - cfg.gallery.backups_keep)]
    for old in pruned:
        for suffix in ("", *SIDECARS):
            shred(Path(f"{old}{suffix}"))
        log.info("pruned backup %s", old)
    return pruned
