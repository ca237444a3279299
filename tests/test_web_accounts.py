"""Web accounts: argon2id hashes, one answer for an unknown name and a wrong password, throttling per account and per
address, session idle and absolute expiry, revocation, and the database file's privacy."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Literal

import pytest
from argon2 import PasswordHasher

from kiosk.config import WebConfig
from kiosk.errors import (
    AccountError,
    AccountExistsError,
    AccountNotFoundError,
    AuthError,
    ExitCode,
    InputError,
    LoginThrottledError,
    WeakPasswordError,
)
from kiosk.web.accounts import HASH_PARAMETERS, LOGIN_FAILED, Accounts
from tests.web_helpers import FAST_HASHER, PASSWORD, FakeClock, make_accounts


class CountingHasher(PasswordHasher):
    """Counts verifications, to show an unknown name costs the same work as a wrong password."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.verified = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verified += 1
        return super().verify(hash, password)


def test_the_hash_is_argon2id_with_the_stated_parameters(tmp_path: Path) -> None:
    accounts = Accounts(tmp_path / "web.db", WebConfig())
    accounts.add("ada", "admin", PASSWORD)
    (stored,) = sqlite3.connect(tmp_path / "web.db").execute("SELECT hash FROM accounts").fetchone()
    p = HASH_PARAMETERS
    assert stored.startswith(f"$argon2id$v=19$m={p.memory_cost},t={p.time_cost},p={p.parallelism}$")
    assert PASSWORD not in stored
    assert accounts.authenticate("ada", PASSWORD, "10.0.0.1").name == "ada"


def test_the_database_is_private(tmp_path: Path) -> None:
    make_accounts(tmp_path).close()
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "data" / "web.db").stat().st_mode & 0o777 == 0o600
    mode = sqlite3.connect(tmp_path / "data" / "web.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_wrong_password_and_unknown_name_give_one_answer_after_the_same_work(tmp_path: Path) -> None:
    hasher = CountingHasher(time_cost=1, memory_cost=8, parallelism=1)
    accounts = make_accounts(tmp_path, hasher=hasher)
    accounts.add("ada", "admin", PASSWORD)
    messages = []
    for name, password in (("ada", "wrong password!"), ("nobody", PASSWORD), ("bad name!", PASSWORD)):
        before = hasher.verified
        with pytest.raises(AuthError) as info:
            accounts.login(name, password, "10.0.0.1")
        assert hasher.verified == before + 1, name
        messages.append(str(info.value))
    assert messages == [LOGIN_FAILED] * 3
    assert info.value.exit_code == ExitCode.DENIED


@pytest.mark.parametrize("password", [None, 12345, "x" * 5000])
def test_a_password_that_is_not_one_is_refused_like_a_wrong_one(tmp_path: Path, password: Any) -> None:
    accounts = make_accounts(tmp_path)
    accounts.add("ada", "admin", PASSWORD)
    with pytest.raises(AuthError, match=LOGIN_FAILED):
        accounts.login("ada", password, "10.0.0.1")


def test_names_roles_and_passwords_are_checked(tmp_path: Path) -> None:
    accounts = make_accounts(tmp_path)
    with pytest.raises(WeakPasswordError, match="at least 10 characters"):
        accounts.add("ada", "admin", "short")
    for bad in ("", "a b", "ädä", "x" * 65, "a/b", "a\nb"):
        with pytest.raises(InputError, match="not valid"):
            accounts.add(bad, "admin", PASSWORD)
    with pytest.raises(InputError, match="role must be one of admin, viewer"):
        accounts.add("ada", "root", PASSWORD)
    assert accounts.list_accounts() == []
    accounts.add("Ada.L-1_x", "viewer", PASSWORD)
    with pytest.raises(AccountExistsError) as info:
        accounts.add("ada.l-1_X", "admin", PASSWORD)  # names are unique ignoring case
    assert info.value.exit_code == ExitCode.DUPLICATE
    with pytest.raises(AccountNotFoundError) as missing:
        accounts.set_password("grace", PASSWORD)
    assert missing.value.exit_code == ExitCode.NOT_FOUND
    assert [(a.name, a.role) for a in accounts.list_accounts()] == [("Ada.L-1_x", "viewer")]


def test_a_changed_parameter_set_rehashes_at_the_next_login(tmp_path: Path) -> None:
    make_accounts(tmp_path, hasher=FAST_HASHER).add("ada", "admin", PASSWORD)
    stronger = PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)
    accounts = make_accounts(tmp_path, hasher=stronger)
    accounts.login("ada", PASSWORD, "10.0.0.1")
    (stored,) = sqlite3.connect(tmp_path / "data" / "web.db").execute("SELECT hash FROM accounts").fetchone()
    assert "m=16,t=2,p=1" in stored
    accounts.login("ada", PASSWORD, "10.0.0.1")  # still the same password


def test_throttling_per_account_counts_every_address_and_ends_with_the_window(tmp_path: Path) -> None:
    clock = FakeClock()
    accounts = make_accounts(tmp_path, WebConfig(login_attempts=3, login_window_s=60), clock=clock)
    accounts.add("ada", "admin", PASSWORD)
    for i in range(3):
        with pytest.raises(AuthError, match=LOGIN_FAILED):
            accounts.login("ada", "wrong password!", f"10.0.0.{i}")
        clock.advance(10)
    with pytest.raises(LoginThrottledError) as info:  # even the right password, from a fresh address
        accounts.login("ada", PASSWORD, "10.0.0.99")
    assert info.value.retry_after_s == 60 - 30 and "try again in 30 s" in str(info.value)
    # another account, from the same address, is not affected
    accounts.add("grace", "viewer", PASSWORD)
    assert accounts.login("grace", PASSWORD, "10.0.0.99").account.name == "grace"
    clock.advance(31)  # the oldest failure has left the window
    assert accounts.login("ada", PASSWORD, "10.0.0.99").account.name == "ada"


def test_throttling_per_address_counts_every_name(tmp_path: Path) -> None:
    clock = FakeClock()
    accounts = make_accounts(tmp_path, WebConfig(login_attempts=3, login_window_s=60), clock=clock)
    accounts.add("ada", "admin", PASSWORD)
    for name in ("alice", "bob", "carol"):
        with pytest.raises(AuthError):
            accounts.login(name, PASSWORD, "203.0.113.7")
    with pytest.raises(LoginThrottledError):
        accounts.login("ada", PASSWORD, "203.0.113.7")
    assert accounts.login("ada", PASSWORD, "10.0.0.1").account.name == "ada"


def test_a_successful_login_clears_the_accounts_failures(tmp_path: Path) -> None:
    accounts = make_accounts(tmp_path, WebConfig(login_attempts=2, login_window_s=60), clock=FakeClock())
    accounts.add("ada", "admin", PASSWORD)
    for address in ("10.0.0.1", "10.0.0.2"):
        with pytest.raises(AuthError):
            accounts.login("ada", "wrong password!", address)
        accounts.login("ada", PASSWORD, "10.0.0.3")
    with pytest.raises(AuthError):
        accounts.login("ada", "wrong password!", "10.0.0.4")
    accounts.login("ada", PASSWORD, "10.0.0.5")


def test_sessions_end_after_the_idle_timeout(tmp_path: Path) -> None:
    clock = FakeClock()
    accounts = make_accounts(tmp_path, WebConfig(session_idle_min=10, session_max_h=12), clock=clock)
    accounts.add("ada", "admin", PASSWORD)
    s = accounts.login("ada", PASSWORD, "10.0.0.1")
    assert s.expires == clock.t + 600
    for _ in range(5):  # each use pushes the idle expiry on
        clock.advance(590)
        found = accounts.session(s.token)
        assert found is not None and found.csrf_token == s.csrf_token and found.account.name == "ada"
    clock.advance(600)
    assert accounts.session(s.token) is None
    clock.advance(-600)
    assert accounts.session(s.token) is None  # gone for good, not just out of time


def test_sessions_end_at_the_absolute_limit_however_busy(tmp_path: Path) -> None:
    clock = FakeClock()
    accounts = make_accounts(tmp_path, WebConfig(session_idle_min=10, session_max_h=1), clock=clock)
    accounts.add("ada", "admin", PASSWORD)
    s = accounts.login("ada", PASSWORD, "10.0.0.1")
    start = clock.t
    while clock.t + 300 < start + 3600:
        clock.advance(300)
        found = accounts.session(s.token)
        assert found is not None and found.expires <= start + 3600
    clock.advance(300)
    assert accounts.session(s.token) is None


@pytest.mark.parametrize("change", ["password", "role", "remove", "revoke"])
def test_account_changes_revoke_every_session(tmp_path: Path, change: str) -> None:
    accounts = make_accounts(tmp_path)
    accounts.add("ada", "admin", PASSWORD)
    accounts.add("grace", "admin", PASSWORD)
    sessions = [accounts.login("ada", PASSWORD, "10.0.0.1") for _ in range(2)]
    other = accounts.login("grace", PASSWORD, "10.0.0.1")
    if change == "password":
        assert accounts.set_password("ada", "another good password") == 2
        with pytest.raises(AuthError):
            accounts.login("ada", PASSWORD, "10.0.0.1")
        accounts.login("ada", "another good password", "10.0.0.1")
    elif change == "role":
        assert accounts.set_role("ada", "viewer") == 2
        assert accounts.get("ada").role == "viewer"
    elif change == "remove":
        accounts.remove("ada")
        with pytest.raises(AccountNotFoundError):
            accounts.get("ada")
    else:
        assert accounts.revoke_all("ada") == 2
    assert [accounts.session(s.token) for s in sessions] == [None, None]
    assert accounts.session(other.token) is not None


def test_logout_ends_one_session_and_tokens_are_stored_hashed(tmp_path: Path) -> None:
    accounts = make_accounts(tmp_path)
    accounts.add("ada", "admin", PASSWORD)
    a, b = accounts.login("ada", PASSWORD, "10.0.0.1"), accounts.login("ada", PASSWORD, "10.0.0.1")
    assert a.token != b.token and a.csrf_token != b.csrf_token
    raw = (tmp_path / "data" / "web.db").read_bytes() + (tmp_path / "data" / "web.db-wal").read_bytes()
    assert a.token.encode() not in raw and b.token.encode() not in raw
    assert accounts.logout(a.token) is True and accounts.logout(a.token) is False
    assert accounts.session(a.token) is None and accounts.session(b.token) is not None
    assert accounts.session("") is None and accounts.session("x" * 5000) is None


def test_a_damaged_or_newer_database_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "web.db"
    bad.write_bytes(b"this is not a database" * 100)
    bad.chmod(0o600)
    with pytest.raises(AccountError, match="damaged"):
        Accounts(bad, WebConfig())
    newer = tmp_path / "newer.db"
    sqlite3.connect(newer).execute("PRAGMA user_version = 99").close()
    with pytest.raises(AccountError, match="newer face-kiosk"):
        Accounts(newer, WebConfig())


def test_a_locked_database_is_a_clear_error(tmp_path: Path) -> None:
    accounts = make_accounts(tmp_path, busy_timeout_s=0.05)
    other = sqlite3.connect(tmp_path / "data" / "web.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(AccountError, match="locked by another process"):
            accounts.add("ada", "admin", PASSWORD)
    finally:
        other.execute("ROLLBACK")
    accounts.add("ada", "admin", PASSWORD)


def test_what_was_typed_as_a_name_is_neither_stored_nor_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    accounts = make_accounts(tmp_path)
    accounts.add("ada", "admin", PASSWORD)
    caplog.set_level("INFO", logger="kiosk.web.accounts")
    for typed in ("MySecretPassw0rd", "my secret with spaces"):
        with pytest.raises(AuthError):
            accounts.login(typed, "whatever it is", "10.0.0.1")
    with pytest.raises(AuthError):
        accounts.login("ada", "wrong password!", "10.0.0.1")
    raw = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("web.db*"))
    assert b"MySecretPassw0rd" not in raw and b"my secret" not in raw
    assert "MySecretPassw0rd" not in caplog.text and "my secret" not in caplog.text
    assert "web login failed for an unknown name from 10.0.0.1" in caplog.text
    assert "web login failed for 'ada' from 10.0.0.1" in caplog.text
