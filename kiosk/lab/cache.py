"""Embedding cache for evaluations: one small SQLite file, keyed by (image sha256, pipeline fingerprint).

Re-running ``kiosk eval`` over 9,500 LFW images after changing only a threshold should not re-embed them. The
fingerprint names everything that changes an embedding (models and their hashes, preprocessing), so a new
pipeline never sees stale vectors. Failures ("no face") are cached too, with their reason.

A cache is never a reason to fail: a corrupt file is moved aside with a warning and recreated; a locked or
unwritable one disables the cache for this run with a warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    sha256      TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    dim         INTEGER NOT NULL,   -- 0 for a failure
    vector      BLOB,               -- little-endian float32, NULL for a failure
    reason      TEXT,               -- why no embedding, NULL for a success
    created     REAL NOT NULL,
    PRIMARY KEY (sha256, fingerprint)
) WITHOUT ROWID
"""
COMMIT_EVERY = 256  # puts per transaction: one fsync per image would dominate a cached run


def default_cache_path() -> Path:
    """``$KIOSK_CACHE_DIR/embeddings.sqlite``, else ``$XDG_CACHE_HOME/face-kiosk/embeddings.sqlite``, else
    ``~/.cache/face-kiosk/embeddings.sqlite``."""
    if env := os.environ.get("KIOSK_CACHE_DIR"):
        return Path(env) / "embeddings.sqlite"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "face-kiosk" / "embeddings.sqlite"


class EmbeddingCache:
    """``get``/``put`` embeddings by (sha256, fingerprint); ``path=None`` disables it (every get misses).

    Writes are batched (:data:`COMMIT_EVERY` puts per transaction); :meth:`close` (or leaving a ``with``
    block) commits the rest. Safe to close twice.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._db: sqlite3.Connection | None = None
        self._pending = 0
        self.hits = 0
        self.misses = 0
        if self.path is not None:
            self._open(self.path)

    @property
    def enabled(self) -> bool:
        return self._db is not None

    def _open(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._connect(path)
        except sqlite3.DatabaseError as err:
            if isinstance(err, sqlite3.OperationalError):
                self._disable(f"cannot open {path}: {err}")
                return
            self._recreate(path, err)
        except OSError as err:
            self._disable(f"cannot create {path.parent}: {err}")

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, timeout=5.0)
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"unknown cache schema version {version}")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.commit()
        except BaseException:
            db.close()
            raise
        return db

    def _recreate(self, path: Path, err: Exception) -> None:
        """Move a corrupt cache file aside (kept for inspection) and start an empty one."""
        if self._db is not None:
            self._db.close()
            self._db = None
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        for n in range(1, 100):  # never overwrite an earlier casualty from the same second
            if not aside.exists():
                break
            aside = aside.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        log.warning("embedding cache %s is unreadable (%s); moved it to %s, starting afresh", path, err, aside)
        try:
            path.replace(aside)
            for suffix in ("-journal", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            self._db = self._connect(path)
            self._pending = 0
        except (OSError, sqlite3.Error) as again:
            self._disable(f"cannot recreate {path}: {again}")

    def _disable(self, why: str) -> None:
        log.warning("embedding cache disabled for this run: %s", why)
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
        self._db = None

    def _handle(self, err: sqlite3.Error) -> None:
        corrupt = isinstance(err, sqlite3.DatabaseError) and not isinstance(err, sqlite3.OperationalError)
        if corrupt and self.path is not None:
            self._recreate(self.path, err)  # "file is not a database", "database disk image is malformed"
        else:
            self._disable(str(err))  # locked, read-only, disk full: not the file's fault, leave it alone

    def get(self, sha256: str, fingerprint: str) -> tuple[bool, npt.NDArray[np.float32] | None, str | None]:
        """``(found, embedding, reason)``: a hit is ``(True, vector, None)`` or ``(True, None, reason)`` for a
        cached failure; a miss (or a disabled cache) is ``(False, None, None)``."""
        if self._db is None:
            self.misses += 1
            return False, None, None
        try:
            row = self._db.execute(
                "SELECT dim, vector, reason FROM embeddings WHERE sha256 = ? AND fingerprint = ?",
                (sha256, fingerprint),
            ).fetchone()
        except sqlite3.Error as err:
            self._handle(err)
            row = None
        if row is None:
            self.misses += 1
            return False, None, None
        dim, blob, reason = row
        if blob is None:
            self.hits += 1
            return True, None, str(reason or "failed")
        if not isinstance(blob, bytes) or len(blob) != 4 * int(dim):
            log.warning("embedding cache: bad entry for %s, ignoring it", sha256[:12])
            self.misses += 1
            return False, None, None
        self.hits += 1
        return True, np.frombuffer(blob, dtype="<f4").astype(np.float32), None

    def put(
        self,
        sha256: str,
        fingerprint: str,
        embedding: npt.NDArray[np.floating] | None,
        reason: str | None = None,
    ) -> None:
        """Store an embedding, or (``embedding=None``) a failure with its ``reason``."""
        if self._db is None:
            return
        row: tuple[str, str, int, bytes | None, str | None, float]
        if embedding is None:
            row = (sha256, fingerprint, 0, None, reason or "failed", time.time())
        else:
            vector = np.ascontiguousarray(embedding, dtype="<f4").ravel()
            row = (sha256, fingerprint, int(vector.size), vector.tobytes(), None, time.time())
        try:
            self._db.execute("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?, ?)", row)
            self._pending += 1
            if self._pending >= COMMIT_EVERY:
                self.commit()
        except sqlite3.Error as err:
            self._handle(err)

    def commit(self) -> None:
        if self._db is None or not self._pending:
            return
        try:
            self._db.commit()
            self._pending = 0
        except sqlite3.Error as err:
            self._handle(err)

    def close(self) -> None:
        """Commit what is pending and close; safe to call twice."""
        if self._db is None:
            return
        self.commit()
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "disabled" if self._db is None else str(self.path)
        return f"EmbeddingCache({state}, hits={self.hits}, misses={self.misses})"
