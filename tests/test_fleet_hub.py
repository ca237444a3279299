"""The hub and its doors over a real nats-server: enrolment and revocation reach every door, events reach the hub
once with their chains checked, commands are live, and a door's replica is never empty."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kiosk.fleet import hubdb
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
            from kiosk.gallery import Gallery

            with Gallery(site.door_db(door)) as g:
                assert {p.id: (p.name, p.enabled) for p in g.list_people()} == hub_people
                assert len(g.templates("Linus")) == 1

    run(main)


def test_door_events_reach_the_hub_once_with_their_chain(site: Site) -> None:
    from kiosk.gallery import Gallery

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
