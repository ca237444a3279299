"""Opening the gallery safely.

``open_gallery`` is the one way the kiosk and the CLI open the gallery (``Context.gallery`` uses it). Before the
file is opened it checks that nobody but the service user can reach the templates (folder 0700, files without
group/other bits, all owned by the effective user), loads the encryption key when ``gallery.encrypt`` is on, runs
SQLite's integrity check, and refuses a gallery whose templates do not match the configured encryption, so the
kiosk never runs half-encrypted or silently on the wrong key.

``gallery_in_use`` and ``move_damaged_aside`` serve ``kiosk restore`` when the gallery is damaged.
"""

from __future__ import annotations

import fcntl
import os
from datetime import UTC, datetime
from pathlib import Path

from kiosk import authz
from kiosk.config import Config
from kiosk.errors import GalleryCorruptError, TemplateKeyError
from kiosk.gallery.backup import newest_backup
from kiosk.gallery.db import Gallery
from kiosk.gallery.keys import load_cipher
from kiosk.gallery.permissions import check_permissions

# SQLite's POSIX lock bytes: every open connection of a WAL database holds a shared lock on the -shm file's
# dead-man-switch byte, and readers hold one on the database file's shared range.
_SHM_DMS_BYTE = 128
_DB_SHARED_FIRST, _DB_SHARED_SIZE = 0x40000002, 510


def encryption_problem(status: dict[str | None, int], key_id: str | None) -> str | None:
    """Why templates stored under ``status`` (templates per key id, None = plaintext) cannot be used with the
    configured key (``key_id``; None = encryption off); None when they all match."""
    encrypted = {k: n for k, n in status.items() if k is not None and n}
    plain = status.get(None, 0)
    if key_id is None:
        if encrypted:
            ids = ", ".join(sorted(encrypted))
            return (
                f"{sum(encrypted.values())} templates are encrypted with key {ids}; set gallery.encrypt: true "
                "and provide that key (gallery.key_file or the credential)"
            )
        return None
    other = {k: n for k, n in encrypted.items() if k != key_id}
    if other:
        ids = ", ".join(sorted(other))
        return (
            f"{sum(other.values())} templates are encrypted with key {ids}, not the configured key {key_id}: "
            "configure that key, or re-encrypt with `kiosk keys rotate --new-key FILE` while it is configured"
        )
    if plain:
        return (
            f"gallery.encrypt is on but {plain} templates are stored unencrypted: encrypt them with "
            "`kiosk keys rotate --new-key FILE` (then configure that key)"
        )
    return None


def _damaged(cfg: Config, detail: str) -> GalleryCorruptError:
    return GalleryCorruptError(
        f"gallery {cfg.gallery_path} is damaged ({detail}): stop the kiosk and restore a backup with "
        f"`kiosk restore {newest_backup(cfg) or 'BACKUP'}`"
    )


def open_gallery(cfg: Config, *, check: bool = True, need_key: bool = True, check_keys: bool = True) -> Gallery:
    """The configured gallery, checked: private, readable with the configured key, and (``check``) intact.

    ``need_key=False`` opens it without the encryption key, for commands that never read or write templates
    (people management, events, backups): they work even where the key is only given to the service.
    ``check_keys=False`` loads the key but accepts templates under other keys (``kiosk restore`` replaces them).
    """
    path = cfg.gallery_path
    if not path.exists():
        # NOTE: the data directory holds biometric templates: owner-only from the moment it exists.
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    check_permissions(cfg)
    if cfg.fleet.enabled:  # a door of a site: its templates are the site's, under the site key the hub wrapped for it
        from kiosk.fleet.service import door_site_cipher

        cipher = door_site_cipher(cfg) if need_key else None
        check_keys = check_keys and cipher is not None
    else:
        cipher = load_cipher(cfg) if cfg.gallery.encrypt and need_key else None
    try:
        gallery = Gallery(path, busy_timeout_s=cfg.gallery.busy_timeout_s, cipher=cipher, actor=authz.actor())
    except GalleryCorruptError as err:
        raise _damaged(cfg, _reason(err)) from err
    try:
        problems = gallery.quick_check() if check else []
        status = gallery.encryption_status() if need_key and check_keys else {}
    except GalleryCorruptError as err:
        gallery.close()
        raise _damaged(cfg, _reason(err)) from err
    except BaseException:
        gallery.close()
        raise
    if problems:
        gallery.close()
        raise _damaged(cfg, problems[0] + (f"; {len(problems) - 1} more problems" if len(problems) > 1 else ""))
    if need_key and check_keys and (problem := encryption_problem(status, cipher.key_id if cipher else None)):
        gallery.close()
        raise TemplateKeyError(f"gallery {path}: {problem}")
    return gallery


def _reason(err: Exception) -> str:
    """The SQLite part of a GalleryCorruptError message, e.g. ``file is not a database``."""
    text = str(err)
    start, end = text.find("("), text.find(")")
    return text[start + 1 : end] if 0 <= start < end else text


# -- a gallery held open by another process -----------------------------------------------------------------------


def _lock_held(path: Path, start: int, length: int) -> bool:
    """True when another process holds a POSIX lock on ``length`` bytes of ``path`` at ``start``.

    Only call it while this process has no SQLite connection to the file: closing the descriptor drops every lock
    this process holds on it.
    """
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, length, start, os.SEEK_SET)
    except OSError:
        return True
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN, length, start, os.SEEK_SET)
        return False
    finally:
        os.close(fd)


def gallery_in_use(path: Path) -> bool:
    """Whether another process (the running kiosk) has the gallery open."""
    return _lock_held(Path(f"{path}-shm"), _SHM_DMS_BYTE, 1) or _lock_held(path, _DB_SHARED_FIRST, _DB_SHARED_SIZE)


def move_damaged_aside(path: Path) -> Path:
    """Rename a damaged gallery (and its WAL) to ``<name>.damaged-<UTC time>`` (0600) so a fresh file can take its
    place; the stale shared-memory index is removed. Returns the new name of the database file."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while target.exists():
        target, n = path.with_name(f"{path.name}.damaged-{stamp}-{n}"), n + 1
    for suffix in ("", "-wal"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            dst = Path(f"{target}{suffix}")
            os.replace(src, dst)
            dst.chmod(0o600)
    Path(f"{path}-shm").unlink(missing_ok=True)
    return target
