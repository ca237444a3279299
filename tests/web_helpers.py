"""Helpers for the web tests: services on tmp_path around a scripted door link with the loop up, logging in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from kiosk.config import Config, WebConfig
from kiosk.web.accounts import Accounts
from kiosk.web.scripted import ScriptedLink, door_state
from kiosk.web.services import WebServices

# Cheap argon2id for tests that are not about the hash itself (the real parameters are tested once).
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "correct horse battery"


class FakeClock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


def make_accounts(tmp_path: Path, web: WebConfig | None = None, clock: Any = None, **kw: Any) -> Accounts:
    kw.setdefault("hasher", FAST_HASHER)
    if clock is not None:
        kw["clock"] = clock
    return Accounts(tmp_path / "data" / "web.db", web or WebConfig(), **kw)


def up_link() -> ScriptedLink:
    """The door link the web tests start from: the loop up at 9.5 fps, ``ScriptedLink``'s default replies."""
    return ScriptedLink(door_state("ok", fps=9.5))


def make_services(tmp_path: Path, cfg: Config | None = None, **kw: Any) -> WebServices:
    """Services on tmp_path around ``up_link()`` (a ``ScriptedLink``)."""
    cfg = cfg or Config(data_dir=tmp_path / "data")
    accounts = make_accounts(tmp_path, cfg.web, **kw)
    return WebServices(cfg=cfg, accounts=accounts, link=up_link(), i18n=None)


def login(client: TestClient, name: str, password: str = PASSWORD) -> str:
    """Log in through the API; returns the session's CSRF token."""
    r = client.post("/api/session", json={"username": name, "password": password})
    assert r.status_code == 200, r.text
    token: str = r.json()["csrf_token"]
    return token
