"""The fleet simulator's parts: the TCP proxy that cuts a door off, a cut-off door's events waiting on disk and
reaching the hub after the heal, and a tiny run of every ``python -m tools fleet-sim`` scenario."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiosk.fleet import hubdb
from kiosk.fleet.proxy import TcpProxy
from kiosk.gallery import Gallery
from tests.fleet_kit import run
from tests.fleet_site import Site, running, until
from tools.measure import fleet_sim


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _roundtrip(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(1024), 2)
    finally:
        writer.close()


async def _dropped(reader: asyncio.StreamReader) -> bool:
    """The connection ends (EOF or reset) within 2 s."""
    try:
        return await asyncio.wait_for(reader.read(1024), 2) == b""
    except ConnectionError:
        return True


def test_proxy_partition_drops_connections_and_refuses_until_heal() -> None:
    async def main() -> None:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        proxy = await TcpProxy("127.0.0.1", server.sockets[0].getsockname()[1]).start()
        try:
            assert await _roundtrip(proxy.port, b"hello") == b"hello"
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(b"x")
            assert await reader.read(1) == b"x"
            proxy.partition()
            assert await _dropped(reader), "the open connection is dropped"
            writer.close()
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", proxy.port)
            await proxy.heal()
            assert await _roundtrip(proxy.port, b"back") == b"back"
        finally:
            await proxy.close()
            await proxy.close()  # safe twice
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(main(), 20))


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path, ("front", "back"))
    with s.server:
        yield s


def test_a_partitioned_door_keeps_its_events_on_disk_and_delivers_them_after_heal(site: Site) -> None:
    async def main() -> None:
        host, port = site.server.config.host, site.server.config.port
        proxy = await TcpProxy(host, port).start()
        hub = site.hub()
        front = site.door("front", url=proxy.url)
        try:
            async with running(hub, front, site.door("back")):
                await until(lambda: front.stats.connected and front.stale_for() is not None, what="front synced")
                proxy.partition()
                await until(lambda: not front.stats.connected, what="front cut off")
                with Gallery(site.door_db("front")) as g:
                    for i in range(20):
                        g.add_event("access", "granted", detail={"i": i})
                        front.poke()
                await asyncio.sleep(1.0)
                with site.hub_gallery() as g:
                    assert hubdb.event_keys(g, ["front"]) == set(), "nothing crosses a partition"
                with Gallery(site.door_db("front")) as g:
                    assert len(g.raw_events_after(0, 100)) == 20, "the events wait in the door's gallery"
                await proxy.heal()

                def delivered() -> bool:
                    with site.hub_gallery() as g:
                        return len(hubdb.event_keys(g, ["front"])) == 20

                await until(delivered, timeout_s=20, what="the events at the hub after the heal")
        finally:
            await proxy.close()
        with site.hub_gallery() as g:
            assert hubdb.event_keys(g, ["front"]) == {("front", i) for i in range(1, 21)}
            assert hubdb.chain_report(g)["front"] == {"head": 20, "broken_at": None, "reason": None}

    run(main)


def test_every_scenario_runs_small_and_writes_the_stable_keys(tmp_path: Path) -> None:
    out = tmp_path / "all.json"
    argv = ["--doors", "3", "--people", "30", "--workers", "2", "--sync-sample", "2", "--revocations", "3"]
    argv += ["--gap", "0.3", "--changes", "60", "--minutes", "0.1", "--partitioned", "1", "--resync-people", "200"]
    argv += ["--json", str(out), "--tmp", str(tmp_path)]
    assert fleet_sim.main(argv) == 0
    result = json.loads(out.read_text())
    assert set(fleet_sim.TOP_KEYS) <= set(result)
    assert all(result[k] is not None for k in fleet_sim.TOP_KEYS)
    rev = result["revocation"]
    assert rev["pairs"] == 9 and rev["not_applied_pairs"] == 0 and rev["still_matchable_pairs"] == 0
    assert rev["seeded_by_copy"] is True
    cu = result["catch-up"]
    assert cu["mix"]["disabled"] + cu["mix"]["removed"] == 6
    assert cu["revoked_matchable_after_catch_up"] is False and cu["control_door_consistent"] is True
    assert result["events_produced"] > 0 and result["events_lost"] == 0 and result["events_duplicated"] == 0
    assert result["chains_intact"] is True
    assert result["resync"]["never_empty"] is True and result["resync"]["consistent_after"] is True
    assert result["machine"]["cpu"]
    for name in fleet_sim.SCENARIOS:
        assert result[name]["door_errors"] == {}
