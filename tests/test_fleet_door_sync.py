"""A synced, idle door: it knows it is up to date every second without writing its gallery every second."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiosk.fleet import door as fleet_door
from kiosk.gallery import Gallery
from tests.fleet_kit import run
from tests.fleet_site import Site, running, template, until


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path, ("front",))
    with s.server:
        yield s


def _saved_synced_at(site: Site) -> str | None:
    with Gallery(site.door_db("front")) as g:
        rows = g._rows("SELECT value FROM replica_meta WHERE key = 'synced_at'")
    return str(rows[0]["value"]) if rows else None


def test_an_idle_door_confirms_its_sync_in_memory_and_saves_it_rarely(site: Site) -> None:
    with site.hub_gallery() as g:
        g.enroll("Ada", [template(1)])

    async def main() -> None:
        door = site.door("front")
        async with running(site.hub(), door):
            await until(lambda: door.live is not None and len(door.live.matrix) == 1, what="Ada at the door")
            await until(lambda: _saved_synced_at(site) is not None, what="the first confirmation saved")
            saved = _saved_synced_at(site)
            await asyncio.sleep(3.0)  # three idle fetches: three confirmations
            stale = door.stale_for()
            assert stale is not None and stale < 1.6, "confirmed in memory at every idle fetch"
            assert _saved_synced_at(site) == saved, "not written again within SYNCED_SAVE_S"

    run(main)
    assert fleet_door.SYNCED_SAVE_S >= 30


def test_a_door_stops_even_when_its_sync_loop_swallows_the_cancel(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.11's asyncio.wait_for (inside nats-py's fetch) may swallow a cancel that lands as a message arrives;
    the door's loops end on stop() by themselves too, or stop() never returned."""
    with site.hub_gallery() as g:
        g.enroll("Ada", [template(1)])
    swallowed: list[bool] = []

    async def main() -> None:
        door = site.door("front")
        real_pull = door._pull

        async def pull(psub: object) -> None:
            try:
                await real_pull(psub)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed.append(True)  # as wait_for does when the message and the cancel coincide

        monkeypatch.setattr(door, "_pull", pull)
        async with running(site.hub(), door):
            await until(lambda: door.live is not None and door.stale_for() is not None, what="front synced")
            await asyncio.sleep(0.3)  # idle: waiting in a fetch

    run(main)  # fails after 30 s when the door does not stop
    assert swallowed == [True]
