"""The gallery's files are private: nobody but the service user may reach the templates (folder 0700, files
without group/other bits, all owned by the effective user)."""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from kiosk.errors import InsecureStorageError

if TYPE_CHECKING:
    from kiosk.config import Config

SIDECARS = ("-wal", "-shm")


def create_private_file(path: Path) -> None:
    """The folder (0700) and an empty file only its owner can read, unless it exists; OSError when it cannot be
    made (the caller names the file in its own error)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


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
