"""Opening the gallery safely, and its backups.

``open_gallery`` is the one way the kiosk and the CLI open the gallery (``Context.gallery`` uses it). Before the
file is opened it checks that nobody but the service user can reach the templates (folder 0700, files without
group/other bits, all owned by the effective user), loads the encryption key when ``gallery.encrypt`` is on, runs
SQLite's integrity check, and refuses a gallery whose templates do not match the configured encryption, so the
kiosk never runs half-encrypted or silently on the wrong key.

``backup_gallery`` writes an online SQLite backup (the kiosk may keep running) into ``backup_dir`` and prunes the
oldest beyond ``gallery.backups_keep``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import re
import stat
from datetime import UTC, datetime
from pathlib import Path

from . import authz
from .config import Config
from .errors import GalleryCorruptError, InsecureStorageError, TemplateKeyError
from .gallery import Gallery
from .keys import load_cipher

log = logging.getLogger(__name__)

BACKUP_PREFIX = "gallery-"
BACKUP_SUFFIX = ".db"
_BACKUP_NAME = re.compile(r"gallery-(\d{8}T\d{6}Z)(?:-(\d+))?\.db")
SIDECARS = ("-wal", "-shm")
# SQLite's POSIX lock bytes: every open connection of a WAL database holds a shared lock on the -shm file's
# dead-man-switch byte, and readers hold one on the database file's shared range.
_SHM_DMS_BYTE = 128
_DB_SHARED_FIRST, _DB_SHARED_SIZE = 0x40000002, 510


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def private_path_problem(path: Path, *, folder: bool) -> str | None:
    """Why ``path`` is not private to the effective user (None when it is, or does not exist)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    mode, uid = stat.S_IMODE(st.st_mode), os.geteuid()
    if folder and not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a folder"
    if not folder and not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file (a link or device): move it away"
    if st.st_uid != uid:
        owner, me = _user(st.st_uid), _user(uid)
        return f"{path} is owned by {owner}, not {me}: run kiosk as {owner}, or chown {me} {path}"
    if mode & 0o077:
        want = "700" if folder else "600"
        return f"{path} has mode {mode:04o}, others may read the templates: chmod {want} {path}"
    return None


def permission_problems(cfg: Config) -> list[str]:
    """Every way the gallery's folder and files are reachable by others (empty when private)."""
    path = cfg.gallery_path
    problems = [private_path_problem(path.parent, folder=True)]
    problems += [private_path_problem(Path(f"{path}{s}"), folder=False) for s in ("", *SIDECARS)]
    return [p for p in problems if p]


def check_permissions(cfg: Config) -> None:
    """InsecureStorageError naming the first problem (when ``gallery.check_permissions`` is on)."""
    if not cfg.gallery.check_permissions:
        return
    problems = permission_problems(cfg)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InsecureStorageError(f"refusing to open the gallery: {problems[0]}{more}")


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
