"""The admin boundary: who may enrol and manage people, and who did it.

Enrolment, people management, backups, restores and key rotation run only for root or members of ``admin.group``
(``require_admin``). The caller is then the *actor*: the gallery writes an ``admin`` event naming them in the same
transaction as every change it makes, so the audit trail cannot miss a change.

When root runs an admin command on a data directory owned by another user (the service user ``kiosk``), the process
first becomes that user (``drop_to_owner``): files root would create (the gallery's ``-wal``/``-shm``, backups) would
otherwise be root-owned, and the service could no longer open its own gallery.
"""

from __future__ import annotations

import contextvars
import grp
import logging
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from kiosk.errors import AccessDeniedError

log = logging.getLogger("kiosk.authz")

_ACTOR: contextvars.ContextVar[str | None] = contextvars.ContextVar("kiosk_actor", default=None)


@dataclass(frozen=True)
class Caller:
    uid: int
    user: str
    groups: tuple[str, ...]
    sudo_user: str | None = None  # set only when root and started through sudo (SUDO_USER)

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    def describe(self) -> str:
        """``alice (uid 1000)``, or ``root (uid 0) via sudo from alice``: recorded in the event log."""
        text = f"{self.user} (uid {self.uid})"
        return f"{text} via sudo from {self.sudo_user}" if self.sudo_user else text


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def current_caller() -> Caller:
    """The effective user and every group it is in (primary and supplementary)."""
    uid = os.geteuid()
    gids = {os.getegid(), *os.getgroups()}
    # SUDO_USER is trusted only for root: sudo sets it, and an unprivileged user setting it gains nothing.
    sudo_user = os.environ.get("SUDO_USER") if uid == 0 else None
    return Caller(uid, _user_name(uid), tuple(sorted(_group_name(g) for g in gids)), sudo_user or None)


def caller_of(uid: int) -> Caller:
    """The user ``uid`` and every group it is in (its primary group and the supplementary ones from the group
    database): how a peer on a Unix socket is judged (``SO_PEERCRED`` gives only the uid)."""
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return Caller(uid, str(uid), ())
    try:
        gids = set(os.getgrouplist(pw.pw_name, pw.pw_gid))
    except OSError:
        gids = {pw.pw_gid}
    return Caller(uid, pw.pw_name, tuple(sorted(_group_name(g) for g in gids)))


def is_admin(caller: Caller, group: str) -> bool:
    """Root or a member of ``group`` (``admin.group``)."""
    return caller.is_root or group in caller.groups


def require_admin(group: str, command: str, caller: Caller | None = None) -> Caller:
    """Return the caller if it is root or in ``group``; else AccessDeniedError saying how to get access."""
    caller = caller or current_caller()
    if is_admin(caller, group):
        return caller
    raise AccessDeniedError(
        f"`kiosk {command}` is an admin command: run it as root (sudo) or as a member of group {group!r} "
        f"(admin.group); {caller.user} is not"
    )


def set_actor(description: str | None) -> contextvars.Token[str | None]:
    """Name who is acting for the rest of this command; the gallery records it on every change it makes."""
    return _ACTOR.set(description)


def reset_actor(token: contextvars.Token[str | None]) -> None:
    """Undo ``set_actor`` (the web names an account for one request only)."""
    _ACTOR.reset(token)


def actor() -> str | None:
    """Who is acting (set by the CLI for admin commands); None inside the door loop."""
    return _ACTOR.get()


def drop_to_owner(data_dir: Path) -> int | None:
    """As root, become the owner of ``data_dir`` (if it exists and belongs to someone else); returns the new uid.

    Irreversible for the process: only the CLI calls it, after authorising the caller and before opening anything.
    """
    if os.geteuid() != 0:
        return None
    try:
        st = data_dir.stat()
    except FileNotFoundError:
        return None
    if st.st_uid == 0:
        return None
    try:  # the owner's own supplementary groups (gpio, video: `door test` needs them)
        os.initgroups(pwd.getpwuid(st.st_uid).pw_name, st.st_gid)
    except KeyError:
        os.setgroups([])
    os.setgid(st.st_gid)
    os.setuid(st.st_uid)
    log.info("running as %s, the owner of %s", _user_name(st.st_uid), data_dir)
    return st.st_uid
