"""Web accounts, server-side sessions and login throttling, in their own SQLite file (``cfg.web_db_path``).

No default account and no sign-up: accounts are made with ``kiosk web user add``. Passwords are stored as argon2id
hashes (re-hashed at the next login when the parameters change). A session is a random 32-byte token in an HttpOnly
cookie; only its SHA-256 is stored, with its CSRF token, its idle and absolute expiry; ``revoke_all`` ends every
session of an account (password, role change, removal). Failed logins are counted per account name and per client
address: ``web.login_attempts`` failures within ``web.login_window_s`` refuse further attempts until the oldest one
leaves the window. An unknown name costs the same hash verification as a wrong password and gets the same message.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import math
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import Parameters, PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from kiosk.config import WebConfig
from kiosk.errors import (
    AccountError,
    AccountExistsError,
    AccountNotFoundError,
    AuthError,
    InputError,
    LoginThrottledError,
    WeakPasswordError,
)
from kiosk.gallery.permissions import create_private_file

log = logging.getLogger(__name__)

ROLES = ("admin", "viewer")
NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024  # argon2 takes any length; a megabyte "password" would only be a way to burn CPU
LOGIN_FAILED = "wrong user name or password"
# NOTE: argon2id with OWASP's parameters (19 MiB, 2 passes, 1 lane): RFC 9106's low-memory profile needs 64 MiB a
# hash, which alone would take the web process over its memory goal on a Pi; at most HASH_SLOTS hashes run at once,
# so a burst of logins cannot multiply that memory either.
HASH_PARAMETERS = Parameters(
    type=Type.ID, version=19, salt_len=16, hash_len=32, time_cost=2, memory_cost=19456, parallelism=1
)
HASH_SLOTS = 2
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    role TEXT NOT NULL CHECK (role IN ('admin', 'viewer')),
    hash TEXT NOT NULL,
    created REAL NOT NULL,
    password_changed REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_sha256 TEXT PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created REAL NOT NULL,
    last_seen REAL NOT NULL,
    address TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_account ON sessions(account_id);
CREATE TABLE IF NOT EXISTS login_failures (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    name TEXT NOT NULL,
    address TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS login_failures_name ON login_failures(name, ts);
CREATE INDEX IF NOT EXISTS login_failures_address ON login_failures(address, ts);
"""


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class AccountInfo:
    """One line of ``kiosk web user list``."""

    name: str
    role: str
    created: float
    password_changed: float
    sessions: int


@dataclass(frozen=True)
class Session:
    token: str
    account: Account
    csrf_token: str
    created: float
    expires: float  # the earlier of the idle and the absolute expiry, as of the last use


def check_name(name: object) -> str:
    """A login name: 1-64 ASCII letters, digits, ``.``, ``_`` or ``-``."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        shown = repr(name)[:80] if isinstance(name, str) else type(name).__name__
        raise InputError(f"account name {shown} is not valid: use 1 to 64 letters, digits, '.', '_' or '-'")
    return name


def check_role(role: object) -> str:
    if role not in ROLES:
        raise InputError(f"role must be one of {', '.join(ROLES)}, got {str(role)[:40]!r}")
    return str(role)


def check_password(password: object) -> str:
    if not isinstance(password, str):
        raise WeakPasswordError("the password must be text")
    if len(password) < MIN_PASSWORD:
        raise WeakPasswordError(f"the password is too short: use at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise WeakPasswordError(f"the password is too long: at most {MAX_PASSWORD} characters")
    return password


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class Accounts:
    """Accounts and sessions in ``path``. Thread-safe: one connection behind a lock; hashing runs outside it."""

    def __init__(
        self,
        path: str | Path,
        web_cfg: WebConfig,
        clock: Callable[[], float] = time.time,
        *,
        hasher: PasswordHasher | None = None,
        busy_timeout_s: float = 5.0,
    ) -> None:
        self.path = str(path)
        self.cfg = web_cfg
        self.clock = clock
        self.hasher = hasher or PasswordHasher.from_parameters(HASH_PARAMETERS)
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.RLock()
        self._slots = threading.BoundedSemaphore(HASH_SLOTS)
        self._dummy_hash: str | None = None
        self._closed = False
        if self.path != ":memory:":
            try:  # it holds password hashes and sessions: private from the start
                create_private_file(Path(self.path))
            except OSError as err:
                raise AccountError(f"cannot create the accounts database {self.path}: {err.strerror or err}") from None
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as err:
            raise AccountError(f"cannot open the accounts database {self.path}: {err}") from None
        try:
            with self._guard():
                self._conn.execute(f"PRAGMA busy_timeout = {round(busy_timeout_s * 1000)}")
                self._conn.execute("PRAGMA foreign_keys = ON")
                self._conn.execute("PRAGMA secure_delete = ON")
                if self.path != ":memory:":
                    self._conn.execute("PRAGMA journal_mode = WAL")
                version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
                if version > SCHEMA_VERSION:
                    raise AccountError(
                        f"the accounts database {self.path} was made by a newer face-kiosk (schema {version}); "
                        "upgrade face-kiosk to use it"
                    )
                if version < SCHEMA_VERSION:
                    with self._write() as conn:
                        for statement in _SCHEMA.split(";"):
                            if statement.strip():
                                conn.execute(statement)
                        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            self._conn.close()
            raise

    # -- plumbing --------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database; safe to call twice."""
        if not self._closed:
            self._closed = True
            self._conn.close()

    def __enter__(self) -> Accounts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as err:
            if "locked" in str(err) or "busy" in str(err):
                raise AccountError(
                    f"the accounts database {self.path} is locked by another process (waited {self.busy_timeout_s:g} s)"
                ) from None
            raise AccountError(f"the accounts database {self.path}: {err}") from None
        except sqlite3.DatabaseError as err:
            raise AccountError(
                f"the accounts database {self.path} is damaged ({err}): move it away and add the accounts again "
                "(`kiosk web user add`)"
            ) from None

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock (BEGIN IMMEDIATE: the busy timeout applies to the write lock)."""
        with self._lock, self._guard():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock, self._guard():
            return list(self._conn.execute(sql, params).fetchall())

    def _hash(self, password: str) -> str:
        with self._slots:
            return self.hasher.hash(password)

    def _verify(self, stored: str, password: str) -> bool:
        with self._slots:
            try:
                return bool(self.hasher.verify(stored, password))
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

    def _dummy(self) -> str:
        """A hash of a random password with the current parameters, verified against when a name is unknown."""
        if self._dummy_hash is None:
            self._dummy_hash = self._hash(secrets.token_urlsafe(24))
        return self._dummy_hash

    # -- accounts --------------------------------------------------------------------------------------------------

    def _row(self, name: str) -> tuple[Any, ...] | None:
        rows = self._rows(
            "SELECT id, name, role, hash, created, password_changed FROM accounts WHERE name = ? COLLATE NOCASE",
            (name,),
        )
        return rows[0] if rows else None

    def get(self, name: str) -> Account:
        row = self._row(check_name(name))
        if row is None:
            raise AccountNotFoundError(f"no web account named {name!r} (`kiosk web user list` lists them)")
        return Account(int(row[0]), str(row[1]), str(row[2]))

    def add(self, name: str, role: str, password: str) -> Account:
        """A new account; AccountExistsError when the name is taken (names are compared ignoring case)."""
        name, role, password = check_name(name), check_role(role), check_password(password)
        if self._row(name) is not None:
            raise AccountExistsError(f"a web account named {name!r} exists already (`kiosk web user passwd` resets it)")
        digest = self._hash(password)
        now = self.clock()
        try:
            with self._write() as conn:
                cur = conn.execute(
                    "INSERT INTO accounts (name, role, hash, created, password_changed) VALUES (?, ?, ?, ?, ?)",
                    (name, role, digest, now, now),
                )
        except AccountError:
            if self._row(name) is not None:  # added by another process between the check and the insert
                raise AccountExistsError(f"a web account named {name!r} exists already") from None
            raise
        log.info("web account %s added (role %s)", name, role)
        return Account(int(cur.lastrowid or 0), name, role)

    def set_password(self, name: str, password: str) -> int:
        """A new password; every session of the account ends. Returns how many sessions were revoked."""
        account, password = self.get(name), check_password(password)
        digest = self._hash(password)
        with self._write() as conn:
            conn.execute(
                "UPDATE accounts SET hash = ?, password_changed = ? WHERE id = ?", (digest, self.clock(), account.id)
            )
            revoked = conn.execute("DELETE FROM sessions WHERE account_id = ?", (account.id,)).rowcount
        log.info("web account %s: password changed, %d session(s) revoked", account.name, revoked)
        return int(revoked)

    def set_role(self, name: str, role: str) -> int:
        """A new role; every session of the account ends (it logs in again with the new rights)."""
        account, role = self.get(name), check_role(role)
        with self._write() as conn:
            conn.execute("UPDATE accounts SET role = ? WHERE id = ?", (role, account.id))
            revoked = conn.execute("DELETE FROM sessions WHERE account_id = ?", (account.id,)).rowcount
        log.info("web account %s: role %s, %d session(s) revoked", account.name, role, revoked)
        return int(revoked)

    def remove(self, name: str) -> Account:
        """Remove an account and its sessions. The last admin can be removed: the CLI can always add one."""
        account = self.get(name)
        with self._write() as conn:
            conn.execute("DELETE FROM sessions WHERE account_id = ?", (account.id,))
            conn.execute("DELETE FROM accounts WHERE id = ?", (account.id,))
        log.info("web account %s removed", account.name)
        return account

    def list_accounts(self) -> list[AccountInfo]:
        now = self.clock()
        idle, absolute = self._limits()
        rows = self._rows(
            "SELECT a.name, a.role, a.created, a.password_changed, "
            "(SELECT count(*) FROM sessions s WHERE s.account_id = a.id AND s.last_seen > ? AND s.created > ?) "
            "FROM accounts a ORDER BY a.name COLLATE NOCASE",
            (now - idle, now - absolute),
        )
        return [AccountInfo(str(r[0]), str(r[1]), float(r[2]), float(r[3]), int(r[4])) for r in rows]

    def revoke_all(self, name: str) -> int:
        """End every session of an account; returns how many there were."""
        account = self.get(name)
        with self._write() as conn:
            n = conn.execute("DELETE FROM sessions WHERE account_id = ?", (account.id,)).rowcount
        log.info("web account %s: %d session(s) revoked", account.name, n)
        return int(n)

    # -- logins ----------------------------------------------------------------------------------------------------

    def _throttle(self, key: str, address: str) -> None:
        """LoginThrottledError when the name or the address has used up its failures in the window."""
        now, window, limit = self.clock(), self.cfg.login_window_s, self.cfg.login_attempts
        waits = []
        for column, value in (("name", key), ("address", address)):
            rows = self._rows(
                f"SELECT ts FROM login_failures WHERE {column} = ? AND ts > ? ORDER BY ts DESC LIMIT ?",
                (value, now - window, limit),
            )
            if len(rows) >= limit:
                waits.append(float(rows[-1][0]) + window - now)
        if waits:
            retry = max(1, math.ceil(max(waits)))
            raise LoginThrottledError(f"too many failed logins: try again in {retry} s", retry)

    def _failed(self, key: str, address: str) -> None:
        now = self.clock()
        with self._write() as conn:
            conn.execute("INSERT INTO login_failures (ts, name, address) VALUES (?, ?, ?)", (now, key, address))
            conn.execute("DELETE FROM login_failures WHERE ts <= ?", (now - self.cfg.login_window_s,))

    def authenticate(self, name: object, password: object, address: str) -> Account:
        """The account if ``password`` is its password; else AuthError (one message for an unknown name and a wrong
        password, after the same hash work) or LoginThrottledError. Every failure counts towards throttling."""
        text = name if isinstance(name, str) else ""
        valid = bool(NAME_RE.fullmatch(text))
        # NOTE: failures are counted by a hash of the name: a password typed into the name field is never stored.
        key = _sha256(text.lower() if valid else "?")
        self._throttle(key, address)
        secret = password if isinstance(password, str) and len(password) <= MAX_PASSWORD else None
        row = self._row(text) if valid else None
        stored = str(row[3]) if row is not None else self._dummy()
        ok = self._verify(stored, secret if secret is not None else "\0") and row is not None and secret is not None
        if not ok or row is None or secret is None:
            self._failed(key, address)
            who = repr(str(row[1])) if row is not None else "an unknown name"  # never what was typed
            log.info("web login failed for %s from %s", who, address)
            raise AuthError(LOGIN_FAILED)
        account = Account(int(row[0]), str(row[1]), str(row[2]))
        with self._write() as conn:
            conn.execute("DELETE FROM login_failures WHERE name = ?", (key,))
        if self.hasher.check_needs_rehash(stored):
            digest = self._hash(secret)
            with self._write() as conn:
                conn.execute("UPDATE accounts SET hash = ? WHERE id = ? AND hash = ?", (digest, account.id, stored))
            log.info("web account %s: password re-hashed with the current parameters", account.name)
        return account

    # -- sessions --------------------------------------------------------------------------------------------------

    def _limits(self) -> tuple[float, float]:
        return self.cfg.session_idle_min * 60.0, self.cfg.session_max_h * 3600.0

    def login(self, name: object, password: object, address: str) -> Session:
        """Check the password and start a new session (always a new token: no session fixation)."""
        account = self.authenticate(name, password, address)
        token, csrf_token, now = secrets.token_urlsafe(32), secrets.token_urlsafe(32), self.clock()
        idle, absolute = self._limits()
        with self._write() as conn:
            conn.execute("DELETE FROM sessions WHERE last_seen <= ? OR created <= ?", (now - idle, now - absolute))
            conn.execute(
                "INSERT INTO sessions (token_sha256, account_id, csrf_token, created, last_seen, address) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (_sha256(token), account.id, csrf_token, now, now, address[:100]),
            )
        log.info("web login: %s (%s) from %s", account.name, account.role, address)
        return Session(token, account, csrf_token, now, min(now + idle, now + absolute))

    def session(self, token: str | None) -> Session | None:
        """The live session of a cookie's token (its idle expiry pushed on), or None: unknown, expired, revoked."""
        if not token or len(token) > 200:
            return None
        digest, now = _sha256(token), self.clock()
        idle, absolute = self._limits()
        rows = self._rows(
            "SELECT s.created, s.last_seen, s.csrf_token, a.id, a.name, a.role FROM sessions s "
            "JOIN accounts a ON a.id = s.account_id WHERE s.token_sha256 = ?",
            (digest,),
        )
        if not rows:
            return None
        created, last_seen, csrf_token, account_id, name, role = rows[0]
        if now - float(last_seen) >= idle or now - float(created) >= absolute:
            with self._write() as conn:
                conn.execute("DELETE FROM sessions WHERE token_sha256 = ?", (digest,))
            return None
        if now - float(last_seen) >= 1.0:  # one write a second at most per session
            with self._write() as conn:
                conn.execute("UPDATE sessions SET last_seen = ? WHERE token_sha256 = ?", (now, digest))
        account = Account(int(account_id), str(name), str(role))
        return Session(token, account, str(csrf_token), float(created), min(now + idle, float(created) + absolute))

    def logout(self, token: str) -> bool:
        """End one session; False when it was not (or no longer) there."""
        with self._write() as conn:
            n = conn.execute("DELETE FROM sessions WHERE token_sha256 = ?", (_sha256(token),)).rowcount
        return bool(n)


def same_token(a: str, b: str) -> bool:
    """Constant-time comparison of two tokens (CSRF)."""
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))
