"""The admin boundary: enrolment and people management run only for root or the admin group, every command is
classified on purpose, and the gallery records who made each change (issue #6 part 5)."""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kiosk.authz import Caller, current_caller, require_admin
from kiosk.cli import ADMIN_COMMANDS, admin_command, build_parser, main
from kiosk.errors import AccessDeniedError, ExitCode
from kiosk.gallery import Gallery, TemplateIn

# Every command that is NOT an admin command, listed on purpose: a new command must be put in one list or the other.
OPEN_COMMANDS = {
    ("run",),
    ("check",),
    ("models",),
    ("eval",),
    ("eval-liveness",),
    ("demo",),
    ("bench",),
    ("verify",),
    ("door", "off"),
    ("hub", "serve"),  # services, run as the service user like `run`
    ("fleet", "run"),
}
SETPRIV = shutil.which("setpriv")
NOBODY = 65534
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv to run the CLI as another user"
)


def _commands() -> Iterator[tuple[str, ...]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        verbs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if verbs:
            for verb in verbs[0].choices:
                yield (name, verb)
        else:
            yield (name,)


def _is_admin(cmd: tuple[str, ...]) -> bool:
    return cmd[:1] in ADMIN_COMMANDS or cmd in ADMIN_COMMANDS


def test_every_command_is_classified() -> None:
    for cmd in _commands():
        assert _is_admin(cmd) != (cmd in OPEN_COMMANDS or cmd[:1] in OPEN_COMMANDS), cmd


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["people", "list"], "people list"),
        (["people", "remove", "x"], "people remove"),
        (["enroll", "x", "a.jpg"], "enroll"),
        (["door", "on-pulse"], "door on-pulse"),
        (["door", "off"], None),
        (["run"], None),
        (["check"], None),
    ],
)
def test_admin_command_names(argv: list[str], expected: str | None) -> None:
    assert admin_command(build_parser().parse_args(argv)) == expected


def test_require_admin_rules() -> None:
    root = Caller(0, "root", ("root",))
    member = Caller(1000, "alice", ("alice", "kiosk-admin"))
    outsider = Caller(1001, "bob", ("bob", "video"))
    assert require_admin("kiosk-admin", "people list", root) is root
    assert require_admin("kiosk-admin", "people list", member) is member
    with pytest.raises(AccessDeniedError) as info:
        require_admin("kiosk-admin", "people remove", outsider)
    assert info.value.exit_code == ExitCode.DENIED
    message = str(info.value)
    assert "\n" not in message and "kiosk-admin" in message and "bob" in message


def test_caller_is_described_with_sudo_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUDO_USER", "alice")
    caller = current_caller()
    if caller.is_root:
        assert caller.describe().endswith("via sudo from alice")
    else:  # SUDO_USER is only believed for root
        assert caller.sudo_user is None


def _world_dir() -> Iterator[Path]:
    """A folder another user can reach (pytest's tmp_path is 0700 root), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="kiosk-authz-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def world_dir() -> Iterator[Path]:
    yield from _world_dir()


def _gallery_with_ada(path: Path) -> None:
    with Gallery(path) as g:
        vec = np.ones(8, dtype=np.float32)
        g.enroll("Ada", [TemplateIn(vec, "m", "0" * 64, 1.0, "test")])


def _config(folder: Path, data: Path, group: str = "kiosk-admin") -> Path:
    cfg = folder / "config.yaml"
    cfg.write_text(f"data_dir: {data}\nadmin:\n  group: {group}\n", encoding="utf-8")
    cfg.chmod(0o644)
    return cfg


def _kiosk_as(uid: int | None, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "kiosk", *args]
    if uid is not None:
        assert SETPRIV is not None
        cmd = [SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *cmd]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, env=full_env)


@needs_root
def test_a_non_admin_is_refused_and_nothing_changes(world_dir: Path) -> None:
    data = world_dir / "data"
    _gallery_with_ada(data / "gallery.db")
    before = (data / "gallery.db").read_bytes()
    cfg = _config(world_dir, data)
    for args in (["people", "list"], ["people", "remove", "Ada"], ["events"], ["door", "on-pulse"]):
        result = _kiosk_as(NOBODY, "-c", str(cfg), *args)
        assert result.returncode == ExitCode.DENIED, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kiosk: error: ") and "admin" in lines[0], result.stderr
    assert (data / "gallery.db").read_bytes() == before
    # A command open to everyone is not refused by the boundary (door off locks, always allowed).
    result = _kiosk_as(NOBODY, "-c", str(cfg), "door", "off")
    assert result.returncode == ExitCode.OK, result.stderr


@needs_root
def test_a_member_of_the_admin_group_is_let_in(world_dir: Path) -> None:
    data = world_dir / "data"
    _gallery_with_ada(data / "gallery.db")
    for p in (data, *data.iterdir()):
        os.chown(p, NOBODY, NOBODY)
    cfg = _config(world_dir, data, group="nogroup")  # uid 65534's own group
    result = _kiosk_as(NOBODY, "-c", str(cfg), "people", "list")
    assert result.returncode == ExitCode.OK, result.stderr
    assert "Ada" in result.stdout


@needs_root
def test_root_acts_as_the_data_owner_and_is_recorded(world_dir: Path) -> None:
    """Root's change leaves every gallery file owned by the service user, and the event log names root (via sudo)."""
    data = world_dir / "data"
    _gallery_with_ada(data / "gallery.db")
    for p in (data, *data.iterdir()):
        os.chown(p, NOBODY, NOBODY)
    cfg = _config(world_dir, data)
    result = _kiosk_as(None, "-c", str(cfg), "people", "rename", "Ada", "Grace", env={"SUDO_USER": "alice"})
    assert result.returncode == ExitCode.OK, result.stderr
    owners = {p.name: p.stat().st_uid for p in data.iterdir()}
    assert set(owners.values()) == {NOBODY}, owners
    with sqlite3.connect(data / "gallery.db") as conn:
        rows = conn.execute("SELECT outcome, detail FROM events WHERE kind = 'admin'").fetchall()
    assert rows, "the rename left no admin event"
    outcome, detail = rows[-1]
    assert outcome == "renamed"
    assert "root (uid 0) via sudo from alice" in detail and "people rename" in detail


def test_in_process_admin_command_records_the_actor(tmp_path: Path) -> None:
    """main() as used by tests keeps its uid; the change is still attributed to the caller."""
    data = tmp_path / "data"
    _gallery_with_ada(data / "gallery.db")
    cfg = _config(tmp_path, data, group=current_caller().groups[0])
    assert main(["-c", str(cfg), "people", "disable", "Ada"]) == ExitCode.OK
    with Gallery(data / "gallery.db") as g:
        admin = [e for e in g.events() if e["kind"] == "admin"]
    assert admin and admin[-1]["outcome"] == "disabled"
    assert current_caller().describe() in admin[-1]["detail"]["by"]
