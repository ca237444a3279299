"""A whole site on this machine for the fleet tests and the simulator: a nats-server from the pip wheel, a hub with
its encrypted gallery, and doors with their own galleries, every door's credentials made by the hub's own code."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiosk.fleet.broker import BrokerConfig, NatsServer, free_port
from kiosk.fleet.door import FleetDoor
from kiosk.fleet.hub import Hub
from kiosk.fleet.secrets import DoorSecret, FleetSecrets
from kiosk.gallery import Gallery, TemplateIn
from kiosk.gallery.keys import AesGcmCipher

MODEL = ("test-model", "0" * 64)
DIM = 16


def template(seed: int, dim: int = DIM) -> TemplateIn:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return TemplateIn(v / np.linalg.norm(v), MODEL[0], MODEL[1], 0.9, f"test:{seed}")


@dataclass
class Site:
    root: Path
    doors: tuple[str, ...]
    tls: bool = False
    site_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    secrets: FleetSecrets = field(init=False)
    server: NatsServer = field(init=False)

    def __post_init__(self) -> None:
        self.secrets = FleetSecrets(self.root / "hub" / "fleet")
        for door in self.doors:
            self.secrets.add_door(door)
        self.cert: tuple[Path, Path] | None = None
        if self.tls:
            from kiosk.web.tls import generate_self_signed

            self.cert = generate_self_signed(self.root / "hub" / "fleet" / "tls", ["127.0.0.1"])
        self.server = NatsServer(self.broker_config(free_port()), self.root / "broker")

    def broker_config(self, port: int) -> BrokerConfig:
        return BrokerConfig(
            store_dir=self.root / "jetstream",
            hub_password=self.secrets.hub_password(),
            doors={d: s.password for d, s in self.secrets.doors().items()},
            port=port,
            tls_cert=self.cert[0] if self.cert else None,
            tls_key=self.cert[1] if self.cert else None,
        )

    def ssl(self) -> Any:
        if self.cert is None:
            return None
        import ssl

        ctx = ssl.create_default_context(cadata=self.cert[0].read_text())
        ctx.check_hostname = False
        return ctx

    def secret(self, door: str) -> DoorSecret:
        s = self.secrets.doors()[door]
        return dataclasses.replace(s, ca_pem=self.cert[0].read_text()) if self.cert else s

    @property
    def hub_db(self) -> Path:
        return self.root / "hub" / "gallery.db"

    def hub_gallery(self) -> Gallery:
        return Gallery(self.hub_db, cipher=AesGcmCipher(self.site_key), actor="test")

    def events_at_hub(self) -> int:
        """How many (door, id) events the hub holds (0 before the hub made its tables)."""
        from kiosk.fleet import hubdb

        with self.hub_gallery() as g:
            if not g._rows("SELECT 1 FROM sqlite_master WHERE name = 'fleet_events'"):
                return 0
            return len(hubdb.event_keys(g))

    def door_db(self, door: str) -> Path:
        return self.root / "doors" / door / "gallery.db"

    def hub(self, url: str | None = None, **kw: Any) -> Hub:
        return Hub(
            self.hub_gallery,
            self.site_key,
            self.secrets.doors,
            url=url or self.server.url,
            password=self.secrets.hub_password(),
            tls=self.ssl(),
            **kw,
        )

    def door(self, door: str, url: str | None = None, **kw: Any) -> FleetDoor:
        path = self.door_db(door)
        path.parent.mkdir(parents=True, exist_ok=True)
        kw.setdefault("heartbeat_s", 0.5)
        kw.setdefault("outbox_s", 0.2)
        kw.setdefault("reconnect_s", 0.2)
        return FleetDoor(
            self.secret(door),
            lambda: Gallery(path),
            url=url or self.server.url,
            state_dir=path.parent / "fleet",
            model=MODEL,
            **kw,
        )


@contextlib.asynccontextmanager
async def running(*services: Hub | FleetDoor) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Run hub and doors as tasks; stop them all at the end, their errors re-raised."""
    tasks = [asyncio.create_task(s.run()) for s in services]
    try:
        yield tasks
    finally:
        for s in services:
            s.stop()
        _, stuck = await asyncio.wait(tasks, timeout=20)
        if stuck:  # a service that does not stop is a bug: show where every task waits
            for t in asyncio.all_tasks():
                t.print_stack(limit=6, file=sys.stderr)
            raise AssertionError(f"{len(stuck)} fleet service(s) did not stop within 20 s")
        done = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [d for d in done if isinstance(d, BaseException)]
        if errors:
            raise errors[0]


async def until(check: Callable[[], Any], timeout_s: float = 20.0, what: str = "condition") -> Any:
    """Poll ``check`` until it is truthy (returns it) or fail after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.02)
