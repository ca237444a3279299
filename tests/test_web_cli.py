"""``kiosk web user add | passwd | role | remove | list``: passwords from standard input or the terminal (never
argv), the admin boundary, and an audit event in the gallery's hash chain for every change (never a password)."""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kiosk.authz import Caller, current_caller
from kiosk.cli import admin_command, build_parser
from kiosk.config import load_config
from kiosk.errors import ExitCode
from kiosk.gallery import Gallery
from kiosk.web.accounts import Accounts
from tests.helpers import config_file, run_cli

PASSWORD = "correct horse battery"


class Stdin(io.StringIO):
    def __init__(self, text: str, tty: bool = False) -> None:
        super().__init__(text)
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return config_file(tmp_path, f"admin:\n  group: {current_caller().groups[0]}\n")


@pytest.fixture
def kiosk(cfg: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    def run(*argv: str, stdin: str = "", tty: bool = False) -> tuple[int, str, str]:
        monkeypatch.setattr("sys.stdin", Stdin(stdin, tty))
        return run_cli(cfg, capsys, *argv)

    return run


def _accounts(cfg: Path) -> Accounts:
    c = load_config(cfg)
    return Accounts(c.web_db_path, c.web)


def _admin_events(cfg: Path) -> list[dict[str, Any]]:
    with Gallery(load_config(cfg).gallery_path) as g:
        assert g.verify_events().ok
        return [e for e in g.events() if e["kind"] == "admin"]


def test_add_reads_the_password_from_stdin_and_is_audited(cfg: Path, kiosk: Callable[..., Any]) -> None:
    code, out, err = kiosk("web", "user", "add", "ada", "--role", "admin", stdin=PASSWORD + "\n")
    assert code == 0, err
    assert "'ada' added (admin)" in out
    with _accounts(cfg) as accounts:
        assert accounts.login("ada", PASSWORD, "127.0.0.1").account.role == "admin"
    (event,) = _admin_events(cfg)
    assert event["outcome"] == "web account added"
    assert event["detail"]["account"] == "ada" and event["detail"]["role"] == "admin"
    assert current_caller().describe() in event["detail"]["by"] and "kiosk web user" in event["detail"]["by"]
    data = load_config(cfg).data_dir
    everything = b"".join(p.read_bytes() for p in data.iterdir() if p.is_file())
    assert PASSWORD.encode() not in everything
    gallery_bytes = b"".join(p.read_bytes() for p in data.glob("gallery.db*"))
    assert b"argon2" not in gallery_bytes  # the hash stays in web.db


def test_every_change_is_audited_and_ends_sessions(cfg: Path, kiosk: Callable[..., Any]) -> None:
    assert kiosk("web", "user", "add", "ada", "--role", "admin", stdin=PASSWORD + "\n")[0] == 0
    with _accounts(cfg) as accounts:
        s = accounts.login("ada", PASSWORD, "127.0.0.1")
    code, out, _ = kiosk("web", "user", "passwd", "ada", stdin="another long password\r\n")
    assert code == 0 and "1 session(s) ended" in out
    with _accounts(cfg) as accounts:
        assert accounts.session(s.token) is None
        s = accounts.login("ada", "another long password", "127.0.0.1")
    code, out, _ = kiosk("web", "user", "role", "ada", "viewer")
    assert code == 0 and "'ada' is now viewer; 1 session(s) ended" in out
    code, out, _ = kiosk("web", "user", "list", "--json")
    (listed,) = json.loads(out)
    assert listed["name"] == "ada" and listed["role"] == "viewer" and listed["sessions"] == 0
    assert kiosk("web", "user", "remove", "ada")[0] == 0
    assert kiosk("web", "user", "list")[1].startswith("no web accounts yet")
    outcomes = [e["outcome"] for e in _admin_events(cfg)]
    assert outcomes == ["web account added", "web password changed", "web role changed", "web account removed"]
    for e in _admin_events(cfg):
        assert "password" not in json.dumps(e["detail"]).replace("web password changed", "")


def test_list_shows_a_table(kiosk: Callable[..., Any]) -> None:
    kiosk("web", "user", "add", "ada", "--role", "admin", stdin=PASSWORD + "\n")
    kiosk("web", "user", "add", "vera", "--role", "viewer", stdin=PASSWORD + "\n")
    code, out, _ = kiosk("web", "user", "list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:2] == ["name", "role"]
    assert [ln.split()[:2] for ln in lines[1:]] == [["ada", "admin"], ["vera", "viewer"]]


def test_the_terminal_asks_twice(kiosk: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([PASSWORD, PASSWORD + "x"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    code, _, err = kiosk("web", "user", "add", "ada", "--role", "admin", tty=True)
    assert code == ExitCode.INPUT and "the two passwords differ" in err
    answers = iter([PASSWORD, PASSWORD])
    assert kiosk("web", "user", "add", "ada", "--role", "admin", tty=True)[0] == 0


@pytest.mark.parametrize(
    ("argv", "stdin", "code", "message"),
    [
        (["add", "ada", "--role", "admin"], "short\n", ExitCode.INPUT, "at least 10 characters"),
        (["add", "ada", "--role", "admin"], "", ExitCode.INPUT, "no password on standard input"),
        (["add", "bad name", "--role", "admin"], PASSWORD, ExitCode.INPUT, "not valid"),
        (["passwd", "nobody"], PASSWORD, ExitCode.NOT_FOUND, "no web account named 'nobody'"),
        (["remove", "nobody"], "", ExitCode.NOT_FOUND, "no web account named 'nobody'"),
        (["role", "nobody", "admin"], "", ExitCode.NOT_FOUND, "no web account named 'nobody'"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    cfg: Path, kiosk: Callable[..., Any], argv: list[str], stdin: str, code: int, message: str
) -> None:
    got, _, err = kiosk("web", "user", *argv, stdin=stdin)
    assert got == code and message in err and len(err.strip().splitlines()) == 1, err
    with _accounts(cfg) as accounts:
        assert accounts.list_accounts() == []
    assert not load_config(cfg).gallery_path.exists() or _admin_events(cfg) == []


def test_a_taken_name_is_a_duplicate(kiosk: Callable[..., Any]) -> None:
    kiosk("web", "user", "add", "ada", "--role", "admin", stdin=PASSWORD + "\n")
    code, _, err = kiosk("web", "user", "add", "ADA", "--role", "viewer", stdin=PASSWORD + "\n")
    assert code == ExitCode.DUPLICATE and "exists already" in err


def test_the_password_is_never_an_argument(kiosk: Callable[..., Any], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        kiosk("web", "user", "add", "ada", "--role", "admin", "--password", PASSWORD)
    assert info.value.code == ExitCode.USAGE


def test_user_commands_are_admin_commands_and_serving_is_not(
    cfg: Path, kiosk: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    parse = build_parser("web").parse_args
    assert admin_command(parse(["web", "user", "list"])) == "web user"
    assert admin_command(parse(["web", "user", "add", "x", "--role", "admin"])) == "web user"
    assert admin_command(parse(["web"])) is None
    assert admin_command(parse(["web", "--listen", "127.0.0.1:8080"])) is None
    monkeypatch.setattr("kiosk.authz.current_caller", lambda: Caller(1234, "mallory", ("users",)))
    code, _, err = kiosk("web", "user", "add", "mallory", "--role", "admin", stdin=PASSWORD + "\n")
    assert code == ExitCode.DENIED and "admin command" in err and "mallory is not" in err
    assert not load_config(cfg).web_db_path.exists()
    assert kiosk("web", "user", "list")[0] == ExitCode.DENIED


def test_a_gallery_that_cannot_be_opened_stops_the_change_before_it_is_made(
    cfg: Path, kiosk: Callable[..., Any]
) -> None:
    data = load_config(cfg).data_dir
    data.mkdir(mode=0o700)
    (data / "gallery.db").write_bytes(b"not a database at all" * 100)
    (data / "gallery.db").chmod(0o600)
    code, _, err = kiosk("web", "user", "add", "ada", "--role", "admin", stdin=PASSWORD + "\n")
    assert code == ExitCode.GALLERY and "damaged" in err
    with _accounts(cfg) as accounts:
        assert accounts.list_accounts() == []


def test_the_web_db_is_left_to_its_owner(kiosk: Callable[..., Any], cfg: Path) -> None:
    kiosk("web", "user", "add", "ada", "--role", "admin", stdin=PASSWORD + "\n")
    path = load_config(cfg).web_db_path
    assert path.stat().st_mode & 0o777 == 0o600
    with sqlite3.connect(path) as conn:
        (stored,) = conn.execute("SELECT hash FROM accounts").fetchone()
    assert stored.startswith("$argon2id$")


class BrokenStdin:
    def isatty(self) -> bool:
        return False

    def readline(self, size: int = -1) -> str:
        raise OSError("stdin is closed")


def test_an_unreadable_or_overlong_stdin_is_an_input_error(
    cfg: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", BrokenStdin())
    code, _, err = run_cli(cfg, capsys, "web", "user", "add", "ada", "--role", "admin")
    assert code == ExitCode.INPUT and "cannot read the password from standard input (stdin is closed)" in err
    monkeypatch.setattr("sys.stdin", Stdin("x" * 5000 + "\n"))
    code, _, err = run_cli(cfg, capsys, "web", "user", "add", "ada", "--role", "admin")
    assert code == ExitCode.INPUT and "too long" in err
    with _accounts(cfg) as accounts:
        assert accounts.list_accounts() == []
