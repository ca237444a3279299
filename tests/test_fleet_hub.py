"""The hub and its doors over a real nats-server: enrolment and revocation reach every door, events reach the hub
once with their chains checked, commands are live, and a door's replica is never empty."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import numpy as np
import pytest

from kiosk.fleet import hubdb
from kiosk.gallery import Gallery
from tests.fleet_kit import run
from tests.fleet_site import Site, running, template, until


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path, ("front", "back"))
    with s.server:
        yield s


def test_enrolment_and_revocation_reach_every_door(site: Site) -> None:
    with site.hub_gallery() as g:
        g.enroll("Ada", [template(1)])
        g.enroll("Grace", [template(2), template(3)])

    async def main() -> None:
        hub = site.hub()
        doors = [site.door(d) for d in site.doors]
        async with running(hub, *doors):
            for d in doors:
                await until(
                    lambda d=d: d.live is not None and set(d.live.matrix.names) == {"Ada", "Grace"}, what="both"
                )
            with site.hub_gallery() as g:
                g.set_enabled("Ada", False)
            for d in doors:
                await until(
                    lambda d=d: d.live is not None and set(d.live.matrix.names) == {"Grace"}, what="Ada revoked"
                )
            with site.hub_gallery() as g:
                g.remove("Grace")
                g.enroll("Linus", [template(4)])
            for d in doors:
                await until(lambda d=d: d.live is not None and set(d.live.matrix.names) == {"Linus"}, what="Grace gone")
            for d in doors:
                await until(lambda d=d: d.stale_for() is not None, what="synced")
        for door in site.doors:
            with site.hub_gallery() as hub_g:
                hub_people = {p.id: (p.name, p.enabled) for p in hub_g.list_people()}
            with Gallery(site.door_db(door)) as g:
                assert {p.id: (p.name, p.enabled) for p in g.list_people()} == hub_people
                assert len(g.templates("Linus")) == 1

    run(main)


def test_door_events_reach_the_hub_once_with_their_chain(site: Site) -> None:
    for door in site.doors:
        site.door_db(door).parent.mkdir(parents=True)
        with Gallery(site.door_db(door)) as g:
            for i in range(5):
                g.add_event("access", "denied", detail={"i": i})

    async def main() -> None:
        hub = site.hub()
        doors = [site.door(d) for d in site.doors]
        async with running(hub, *doors):
            await hub.ready.wait()

            def all_in() -> bool:
                with site.hub_gallery() as g:
                    return len(hubdb.event_keys(g)) == 10

            await until(all_in, what="10 events at the hub")
            await until(lambda: all(d.stats.events_through == 5 for d in doors), what="watermark in heartbeats")
            assert (await hub.command("front", "ping"))["ok"] is True

    run(main)
    with site.hub_gallery() as g:
        assert hubdb.event_keys(g) == {(d, i) for d in site.doors for i in range(1, 6)}
        assert all(c["broken_at"] is None and c["head"] == 5 for c in hubdb.chain_report(g).values())


def _store_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def test_the_broker_stores_no_plaintext_template_or_name(site: Site) -> None:
    enrolled = [template(7), template(8)]
    with site.hub_gallery() as g:
        g.enroll("Zebedee Plaintext", enrolled)

    async def main() -> None:
        hub, door = site.hub(), site.door("front")
        async with running(hub, door):
            await until(lambda: door.live is not None and len(door.live.matrix) == 2, what="templates at the door")

    run(main)
    store = _store_bytes(site.root / "jetstream")
    assert len(store) > 1000  # the records are there...
    for t in enrolled:
        vector = np.asarray(t.embedding, dtype="<f4").tobytes()
        assert vector not in store and vector[:32] not in store  # ...but not one template's bytes
    assert b"Zebedee" not in store  # names are sealed too


def test_a_door_cannot_ask_for_another_doors_key_or_consumer(site: Site) -> None:
    async def main() -> None:
        hub = site.hub()
        async with running(hub):
            await hub.ready.wait()
            errors: list[str] = []
            nc = await nats.connect(
                site.server.url,
                user="door-front",
                password=site.secrets.doors()["front"].password,
                inbox_prefix="_INBOX_front",
                error_cb=_collect(errors),
                allow_reconnect=False,
            )
            for what in ("key", "consumer"):
                with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
                    await nc.request(f"fleet.hub.back.{what}", b"{}", timeout=0.5)
            reply = await nc.request("fleet.hub.front.key", b"{}", timeout=2)
            assert b'"ok":true' in reply.data and site.site_key.hex().encode() not in reply.data  # wrapped only
            await nc.close()
            assert any("permissions violation" in e and "fleet.hub.back" in e for e in errors)

    run(main)


def _collect(errors: list[str]) -> Any:
    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    return on_error


def test_an_altered_door_event_breaks_its_chain_at_the_hub(site: Site) -> None:
    path = site.door_db("front")
    path.parent.mkdir(parents=True)
    with Gallery(path) as g:
        for i in range(4):
            g.add_event("access", "granted", detail={"i": i})
    raw = sqlite3.connect(path)
    raw.execute("UPDATE events SET outcome = 'denied' WHERE id = 3")  # after hashing: the row no longer matches
    raw.commit()
    raw.close()

    async def main() -> None:
        hub, door = site.hub(), site.door("front")
        async with running(hub, door):
            await hub.ready.wait()
            await until(lambda: hub.stats.chain_breaks == 1, what="a broken chain")

    run(main)
    with site.hub_gallery() as g:
        report = hubdb.chain_report(g)["front"]
        assert report["head"] == 2 and report["broken_at"] == 3 and "altered" in report["reason"], report
        assert len(hubdb.event_keys(g)) == 4  # stored all the same: the evidence is kept


def test_a_replica_changed_behind_its_back_resyncs_by_itself(site: Site) -> None:
    with site.hub_gallery() as g:
        for i in range(5):
            g.enroll(f"P{i}", [template(10 + i)])

    async def main() -> None:
        hub, door = site.hub(), site.door("front")
        async with running(hub, door):
            await until(lambda: door.live is not None and len(door.live.matrix) == 5, what="5 people")
            raw = sqlite3.connect(site.door_db("front"))
            raw.execute("DELETE FROM people WHERE name = 'P0'")  # damage the replica outside the replica code
            raw.commit()
            raw.close()
            with site.hub_gallery() as g:
                g.enroll("P5", [template(20)])  # the next change brings a digest: it will not match
            await until(lambda: door.stats.digest_mismatches >= 1, what="digest mismatch noticed")
            await until(lambda: door.stats.resyncs >= 1 and not door.replica.staging, what="resync done")
            await until(lambda: len(door.live.matrix) == 6, what="P0 back")

    run(main)
    with Gallery(site.door_db("front")) as g:
        assert sorted(p.name for p in g.list_people()) == [f"P{i}" for i in range(6)]


def test_a_full_resync_never_leaves_the_door_without_a_gallery(site: Site) -> None:
    with site.hub_gallery() as g:
        for i in range(300):
            g.enroll(f"P{i}", [template(100 + i)])

    async def main() -> None:
        hub, door = site.hub(), site.door("front")
        async with running(hub, door):
            await until(lambda: door.live is not None and len(door.live.matrix) == 300, what="300 people")
            sizes: list[int] = []
            await door.resync()
            while door.replica is not None and door.replica.staging:
                sizes.append(len(door.live.matrix))
                await asyncio.sleep(0)
            sizes.append(len(door.live.matrix))
            assert min(sizes) == 300 and door.stats.resyncs == 1

    run(main)


def test_a_broker_that_lost_its_store_gets_everything_again(site: Site) -> None:
    with site.hub_gallery() as g:
        g.enroll("Ada", [template(1)])

    async def main() -> None:
        hub, door = site.hub(), site.door("front")
        async with running(hub, door):
            await until(lambda: door.live is not None and len(door.live.matrix) == 1, what="Ada")
        site.server.stop()
        shutil.rmtree(site.root / "jetstream")  # a new broker disk
        site.server.start()
        with site.hub_gallery() as g:
            g.enroll("Grace", [template(2)])
        hub, door = site.hub(), site.door("front")
        async with running(hub, door):
            await until(lambda: hub.stats.republished_all == 1, what="hub republishes")
            await until(
                lambda: door.live is not None and set(door.live.matrix.names) == {"Ada", "Grace"}, what="door has both"
            )

    run(main)


def test_with_the_broker_down_a_door_keeps_its_gallery_and_queues_events(site: Site) -> None:
    with site.hub_gallery() as g:
        g.enroll("Ada", [template(1)])

    async def main() -> None:
        hub, door = site.hub(), site.door("front")
        async with running(hub, door):
            await until(lambda: door.live is not None and len(door.live.matrix) == 1, what="Ada")
        site.server.kill()
        door = site.door("front")
        async with running(door):
            await asyncio.sleep(1.0)
            assert door.live is not None and door.live.matrix.names == ["Ada"]  # decides from its replica
            with Gallery(site.door_db("front")) as g:
                for _ in range(3):
                    g.add_event("access", "granted")
            assert door.stats.connected is False
        site.server.start()
        hub, door = site.hub(), site.door("front")
        async with running(hub, door):
            await hub.ready.wait()

            def arrived() -> bool:
                with site.hub_gallery() as g:
                    return len(hubdb.event_keys(g)) == 3

            await until(arrived, what="the queued events at the hub")

    run(main)
