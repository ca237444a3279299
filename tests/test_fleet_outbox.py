"""A door's event outbox against a real nats-server: every event reaches the EVENTS stream once, in order, with its
hash chain intact, through a broker that dies and comes back; the watermark only moves past acknowledged events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nats
import pytest

from kiosk.errors import KioskError
from kiosk.fleet.broker import EVENTS_STREAM, HUB_USER, NatsServer
from kiosk.fleet.outbox import EventOutbox, Watermark
from kiosk.gallery import Gallery
from kiosk.gallery.chain import GENESIS_HASH, event_hash
from tests.fleet_kit import connect, run


def add_events(g: Gallery, n: int) -> None:
    for i in range(n):
        g.add_event("access", "granted" if i % 2 else "unknown", person_id=i, score=0.5 + i / 1000, liveness="pass")


async def stream_events(server: NatsServer) -> list[dict[str, Any]]:
    """Every message in EVENTS, in stream order, with its message id."""
    hub = await connect(server, HUB_USER)
    js = hub.jetstream()
    info = await js.stream_info(EVENTS_STREAM)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(EVENTS_STREAM, seq)
        out.append({"msg_id": (msg.headers or {}).get("Nats-Msg-Id"), **json.loads(msg.data)})
    await hub.close()
    return out


async def make_stream(server: NatsServer) -> None:
    hub = await connect(server, HUB_USER)
    await hub.jetstream().add_stream(name=EVENTS_STREAM, subjects=["fleet.events.>"])
    await hub.close()


async def drain(server: NatsServer, outbox: EventOutbox) -> int:
    door = await connect(server, "front")
    try:
        return await outbox.drain(door.jetstream(), timeout_s=2.0)
    finally:
        await door.close()


def test_every_event_reaches_the_stream_once_in_order_with_its_chain(broker: NatsServer, tmp_path: Path) -> None:
    run(lambda: make_stream(broker))
    with Gallery(tmp_path / "gallery.db") as g:
        add_events(g, 250)  # more than one batch
        outbox = EventOutbox(g, "front", tmp_path / "fleet-events.json", batch=100)
        assert run(lambda: drain(broker, outbox)) == 250
        assert run(lambda: drain(broker, outbox)) == 0  # nothing new
        add_events(g, 3)
        assert run(lambda: drain(broker, outbox)) == 3
    got = run(lambda: stream_events(broker))
    assert [e["id"] for e in got] == list(range(1, 254))
    assert [e["msg_id"] for e in got] == [f"front:{i}" for i in range(1, 254)]
    assert {e["door"] for e in got} == {"front"}
    prev = GENESIS_HASH  # the hub can re-check the door's chain from what it received
    for e in got:
        assert e["prev_hash"] == prev and event_hash(prev, e) == e["hash"]
        prev = e["hash"]
    assert Watermark(tmp_path / "fleet-events.json", "front").load() == 253


def test_broker_down_loses_nothing_and_a_crash_duplicates_nothing(broker: NatsServer, tmp_path: Path) -> None:
    run(lambda: make_stream(broker))
    state = tmp_path / "fleet-events.json"
    with Gallery(tmp_path / "gallery.db") as g:
        add_events(g, 10)
        outbox = EventOutbox(g, "front", state)
        assert run(lambda: drain(broker, outbox)) == 10

        async def broker_dies() -> None:
            door = await connect(broker, "front")
            broker.kill()  # the broker dies; the door keeps deciding and its events queue in the gallery
            add_events(g, 5)
            with pytest.raises(nats.errors.Error):
                await outbox.drain(door.jetstream(), timeout_s=1.0)
            await door.close()

        run(broker_dies)
        assert outbox.acked == 10 and Watermark(state, "front").load() == 10
        broker.proc = None
        broker.start()
        assert run(lambda: drain(broker, outbox)) == 5
        # A crash after publishing but before the watermark was saved: the door publishes again from 12.
        Watermark(state, "front").save(11)
        again = EventOutbox(g, "front", state)
        assert run(lambda: drain(broker, again)) == 4
    got = run(lambda: stream_events(broker))
    assert [e["id"] for e in got] == list(range(1, 16)), "no gap, no duplicate (JetStream dropped the re-sends)"


def test_a_bad_watermark_is_a_clear_error(tmp_path: Path) -> None:
    state = tmp_path / "fleet-events.json"
    Watermark(state, "back").save(5)
    with pytest.raises(KioskError, match="not this door's event watermark"):
        Watermark(state, "front").load()
    state.write_text("{broken", encoding="utf-8")
    with pytest.raises(KioskError, match="unreadable event watermark"):
        Watermark(state, "front").load()
    assert Watermark(tmp_path / "none.json", "front").load() == 0
