"""The hub and its doors over a real nats-server: enrolment and revocation reach every door, events reach the hub
once with their chains checked, commands are live, and a door's replica is never empty."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import sqlite3
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import numpy as np
import pytest

from kiosk.errors import PersonNotFoundError
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

            await until(lambda: site.events_at_hub() == 10, what="10 events at the hub")
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

            await until(lambda: site.events_at_hub() == 4, what="all four events stored")

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
            raw.create_function("replica_writer", 0, lambda: 1)  # past the read-only guard, as a careless tool might
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
            assert min(sizes) == 300 and door.stats.resyncs == 1, (sizes[:5], sizes[-5:], door.stats)

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

            await until(lambda: site.events_at_hub() == 3, what="the queued events at the hub")

    run(main)


def test_a_door_prunes_only_what_the_hub_holds_and_its_chain_still_verifies(site: Site) -> None:
    path = site.door_db("front")
    path.parent.mkdir(parents=True)
    with Gallery(path) as g:
        for i in range(10):
            g.add_event("access", "denied", detail={"i": i})

    async def main() -> None:
        hub, door = site.hub(), site.door("front", keep_events_s=0.0)
        async with running(hub, door):
            await hub.ready.wait()
            await until(lambda: door.stats.events_through == 10, what="the hub holds all 10")
            await until(lambda: _events_left(path) == [10], what="pruned up to the newest")
            with Gallery(path) as g:
                g.add_event("access", "granted")  # the chain goes on from the kept newest event

            await until(lambda: site.events_at_hub() == 11, what="event 11 at the hub")

    run(main)
    with Gallery(path) as g:
        report = g.verify_events()
        assert report.ok and report.checked == 2 and report.head_id == 11
    with site.hub_gallery() as g:
        assert hubdb.chain_report(g)["front"] == {"head": 11, "broken_at": None, "reason": None}


def _events_left(path: Path) -> list[int]:
    conn = sqlite3.connect(path)
    try:
        return [int(r[0]) for r in conn.execute("SELECT id FROM events ORDER BY id")]
    finally:
        conn.close()


def test_pruning_keeps_a_prefix_the_newest_event_and_a_verifiable_chain(tmp_path: Path) -> None:
    with Gallery(tmp_path / "g.db") as g:
        ids = [g.add_event("access", "denied", detail={"i": i}) for i in range(6)]
        assert g.prune_events(through_id=3, before_ts="9999") == 3  # 1-3: what the hub holds
        assert g.prune_events(through_id=100, before_ts="0000") == 0  # nothing older than the epoch
        assert g.prune_events(through_id=100, before_ts="9999") == 2  # 4, 5: the newest (6) is always kept
        assert [e["id"] for e in g.raw_events_after(0, 10)] == [ids[-1]]
        assert g.verify_events().ok
        new = g.add_event("access", "granted")
        assert new == ids[-1] + 1 and g.verify_events().ok  # ids are never reused
    conn = sqlite3.connect(tmp_path / "g.db")
    conn.execute("UPDATE replica_meta SET value = '5:' || substr(value, 3) WHERE key = 'events_anchor'")
    conn.execute("UPDATE events SET prev_hash = 'x' WHERE id = ?", [ids[-1]])
    conn.commit()
    conn.close()
    with Gallery(tmp_path / "g.db") as g:
        report = g.verify_events()
        assert not report.ok and report.first_broken_id == ids[-1] and "anchor" in (report.reason or "")


def test_over_tls_a_door_trusts_only_the_hubs_own_certificate(tmp_path: Path) -> None:
    site = Site(tmp_path, ("front",), tls=True)
    with site.hub_gallery() as g:
        g.enroll("Ada", [template(1)])
    with site.server:
        assert site.server.url.startswith("tls://")

        async def main() -> None:
            hub, door = site.hub(), site.door("front")
            async with running(hub, door):
                await until(lambda: door.live is not None and door.live.matrix.names == ["Ada"], what="Ada over TLS")
            # The server demands TLS (nats-py upgrades, and the system's trust store knows no such certificate), and a
            # client pinning another certificate (the door of a man in the middle) refuses it.
            with pytest.raises(ssl.SSLError, match="certificate verify failed"):
                await nats.connect(
                    site.server.url.replace("tls://", "nats://"),
                    user="hub",
                    password=site.secrets.hub_password(),
                    allow_reconnect=False,
                    connect_timeout=2,
                )
            from kiosk.web.tls import generate_self_signed

            other, _ = generate_self_signed(tmp_path / "other", ["127.0.0.1"])
            impostor = dataclasses.replace(site.secret("front"), ca_pem=other.read_text())
            ctx = impostor.ssl_context()
            with pytest.raises(ssl.SSLError, match="certificate verify failed"):
                await nats.connect(
                    site.server.url,
                    user="door-front",
                    password=impostor.password,
                    tls=ctx,
                    allow_reconnect=False,
                    connect_timeout=2,
                )

        run(main)


def test_access_rules_reach_the_doors_and_decide_there_as_at_the_hub(site: Site) -> None:
    from datetime import UTC, datetime

    from kiosk.door.access import AccessPolicy
    from kiosk.gallery.schedules import parse_window_spec

    with site.hub_gallery() as g:
        ada, bob = g.enroll("Ada", [template(1)]), g.enroll("Bob", [template(2)])
        g.add_group("staff")
        g.add_member("staff", "Ada")
        g.add_schedule("office", list(parse_window_spec("mon-fri 08:00-18:00")), tz="Europe/Paris")
        g.add_rule("staff-front", "staff", doors="front", schedule="office")
    monday_noon = datetime(2026, 12, 7, 11, 0, tzinfo=UTC)

    def verdicts(gallery: Gallery) -> list[tuple[bool, str | None]]:
        policy = AccessPolicy.load(gallery)
        return [
            (v.allowed, v.rule)
            for pid in (ada.id, bob.id)
            for door in ("front", "back")
            for v in [policy.decide(pid, door, monday_noon)]
        ]

    async def main() -> None:
        hub, door = site.hub(), site.door("front")
        async with running(hub, door):
            await until(lambda: door.live is not None and len(door.live.matrix) == 2, what="both")
            with site.hub_gallery() as g:
                g.add_member("staff", "Bob")  # a membership change travels with Bob's record
            await until(lambda: _groups(site.door_db("front"), "Bob") == ["staff"], what="Bob in staff")

    run(main)
    with site.hub_gallery() as hub_g, Gallery(site.door_db("front")) as door_g:
        assert verdicts(door_g) == verdicts(hub_g) == [(True, "staff-front"), (False, None)] * 2


def _groups(path: Path, name: str) -> list[str]:
    with Gallery(path) as g:
        try:
            return g.groups_of(g.get_person(name).id)
        except PersonNotFoundError:
            return []


def test_a_doors_replica_refuses_local_changes_to_people_and_rules(site: Site) -> None:
    with site.hub_gallery() as g:
        g.enroll("Ada", [template(1)])

    async def main() -> None:
        hub, door = site.hub(), site.door("front")
        async with running(hub, door):
            await until(lambda: door.live is not None and len(door.live.matrix) == 1, what="Ada")

    run(main)
    from kiosk.errors import GalleryError

    with Gallery(site.door_db("front")) as g:
        for change in (lambda: g.add_person("Mallory"), lambda: g.set_enabled("Ada", False), lambda: g.remove("Ada"),
                       lambda: g.add_group("staff")):  # fmt: skip
            with pytest.raises(GalleryError, match=r"replica of the site hub: make changes .* at the hub"):
                change()
        assert [p.name for p in g.list_people()] == ["Ada"] and g.get_person("Ada").enabled
        g.add_event("access", "denied")  # the door's own events are its to write


def test_a_second_hub_for_the_site_is_refused_by_compare_and_set(site: Site, tmp_path: Path) -> None:
    with site.hub_gallery() as g:
        g.enroll("Ada", [template(1)])
    other_db = tmp_path / "other-hub.db"  # a second hub: another database, the same site key and broker

    def other_gallery() -> Gallery:
        from kiosk.gallery.keys import AesGcmCipher

        return Gallery(other_db, cipher=AesGcmCipher(site.site_key), actor="test")

    with other_gallery() as g:
        g.enroll("Eve", [template(2)])  # person 1 there too: it would overwrite Ada at every door

    async def main() -> None:
        hub, door = site.hub(), site.door("front")
        async with running(hub, door):
            await until(lambda: door.live is not None and door.live.matrix.names == ["Ada"], what="Ada")
            from kiosk.fleet.hub import Hub

            rogue = Hub(other_gallery, site.site_key, site.secrets.doors, url=site.server.url,
                        password=site.secrets.hub_password())  # fmt: skip
            async with running(rogue):
                await until(lambda: rogue.stats.split_brain is not None, what="the second hub refused")
            assert "another writer" in (rogue.stats.split_brain or "")
            with site.hub_gallery() as g:
                g.enroll("Grace", [template(3)])  # the real hub carries on
            await until(lambda: set(door.live.matrix.names) == {"Ada", "Grace"}, what="Grace, and still Ada")
            assert hub.stats.split_brain is None

    run(main)


def test_a_hub_that_crashed_after_publishing_takes_its_own_records_as_done(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kiosk.fleet.hub as hub_module

    monkeypatch.setattr(hub_module, "DUPLICATE_WINDOW_S", 0.2)  # past the window: only compare-and-set can tell
    with site.hub_gallery() as g:
        g.enroll("Ada", [template(1)])
    real = hubdb.mark_published
    crashes: list[int] = []

    def crash_once(*args: Any, **kw: Any) -> None:
        if not crashes:
            crashes.append(1)
            time.sleep(0.5)  # the duplicate window passes too
            raise OSError("power cut after publishing, before recording it")
        real(*args, **kw)

    monkeypatch.setattr(hubdb, "mark_published", crash_once)

    async def main() -> None:
        hub, door = site.hub(), site.door("front")
        async with running(hub, door):
            await until(lambda: door.live is not None and door.live.matrix.names == ["Ada"], what="Ada")
            await until(lambda: hub.stats.published >= 2, what="published after the crash")
            assert crashes and hub.stats.split_brain is None and hub.stats.recovered == 2  # Ada and the rules

    run(main)


def test_a_staged_resync_that_the_hubs_digest_does_not_vouch_for_is_never_swapped_in(site: Site) -> None:
    from kiosk.fleet.protocol import DIGEST_SUBJECT, digest, person_subject, seal
    from kiosk.fleet.records import person_record
    from kiosk.fleet.replica import Message, Replica
    from kiosk.gallery.keys import AesGcmCipher

    with site.hub_gallery() as g:
        for i in range(3):
            g.enroll(f"P{i}", [template(30 + i)])

    async def main() -> None:
        hub, door = site.hub(), site.door("front")
        async with running(hub, door):
            await until(lambda: door.live is not None and len(door.live.matrix) == 3, what="3 people")

    run(main)
    site_cipher = AesGcmCipher(site.site_key)
    with site.hub_gallery() as hub_g:
        full_digest = digest(hubdb.live_revisions(hub_g))
        one = {**person_record(hub_g, 1, site_cipher.key_id), "rev": 1}
    with Gallery(site.door_db("front"), cipher=site_cipher) as g:
        replica = Replica(g, site_cipher)
        replica.begin_resync()
        # Only one person's record arrives before the newest message (a digest of all three): a partial staging.
        batch = [
            Message(900, person_subject(1), seal(site_cipher, person_subject(1), one)),
            Message(901, DIGEST_SUBJECT, seal(site_cipher, DIGEST_SUBJECT, {"rev": 9, "digest": full_digest})),
        ]
        out = replica.apply(batch, pending=0)
        assert out.staged_incomplete and not out.swapped and replica.staging
        assert sorted(p.name for p in g.list_people()) == ["P0", "P1", "P2"]  # the gallery kept serving, whole
