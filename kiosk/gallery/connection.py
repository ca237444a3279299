"""The gallery's SQLite connection: a private file, pragmas, WAL, migrations, sqlite3 errors turned into
``GalleryError`` subclasses, write transactions, WAL checkpoints, reading stored templates, health checks."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from kiosk.errors import GalleryCorruptError, GalleryError, GalleryLockedError, TemplateKeyError
from kiosk.gallery import utc_iso
from kiosk.gallery.permissions import create_private_file
from kiosk.gallery.records import TemplateCipher, _template_aad
from kiosk.gallery.schema import MIGRATIONS
from kiosk.gallery.sql import _sql_message

# NOTE: the name of the module this code came from (kiosk/gallery.py), so log lines and their filters stay as they were.
logger = logging.getLogger("kiosk.gallery")


def _not_the_replica() -> int:
    return 0


class GalleryConnection:
    """The connection under ``Gallery`` (see there): opening, migrating, transactions, checkpoints, health."""

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
            try:  # it holds biometrics: private from the start
                create_private_file(Path(self.path))
            except OSError as err:
                raise GalleryError(f"cannot create gallery {self.path}: {err.strerror or err}") from None
        conn: sqlite3.Connection | None = None
        try:
            with self._guard():
                conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s)
                # A fleet door's gallery is a replica: its triggers refuse changes to people and rules unless the
                # connection is the replica's own (kiosk.fleet.replica), which answers 1 here.
                conn.create_function("replica_writer", 0, _not_the_replica)
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
