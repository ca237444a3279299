"""``kiosk hub``: the site's source of truth, serving its doors over NATS JetStream.

The hub owns the site gallery (people, templates, groups, schedules, rules: the same gallery code a door uses) and
runs four jobs on one asyncio loop, with every database call on one worker thread (the gallery's connection):

- **publish**: the outbox (filled by triggers in the same transactions as the changes, ``kiosk.fleet.hubdb``) becomes
  sealed records in the ``PEOPLE`` stream, one subject per person, then a digest record;
- **events**: every door's events are read from the ``EVENTS`` stream through the hub's durable consumer, stored once
  per (door, id), each door's hash chain verified as they arrive, and acknowledged only after the commit;
- **heartbeats**: each door's heartbeat (a request) is answered with how far the hub holds its events (the door may
  prune below that) and the newest gallery revision; the hub keeps every door's state for ``kiosk fleet status``;
- **door requests**: (re)creating a door's durable consumer from the sequence the door asks for (resume or full
  resync), and handing out the site key wrapped for that door alone.

Commands to doors (unlock, resync, ping) are live request/reply (``command``): never queued, so a door that comes
back after an hour does not open for an unlock nobody is waiting for any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError

from kiosk.errors import KioskError
from kiosk.fleet import hubdb
from kiosk.fleet.aio import unless_stopped, wind_down
from kiosk.fleet.broker import EVENTS_STREAM, HUB_USER, PEOPLE_STREAM
from kiosk.fleet.protocol import (
    ACCESS_KEY,
    ACCESS_SUBJECT,
    DIGEST_SUBJECT,
    ProtocolError,
    command_subject,
    decode,
    digest,
    door_of,
    encode,
    person_subject,
    seal,
    wrap_site_key,
)
from kiosk.fleet.records import access_record, person_record
from kiosk.fleet.secrets import DoorSecret
from kiosk.gallery import Gallery, TemplateCipher, utc_iso
from kiosk.gallery.keys import AesGcmCipher

log = logging.getLogger(__name__)
T = TypeVar("T")

HUB_CONSUMER = "hub"
WRONG_LAST_SEQUENCE = (10071, 10164)  # JetStream's "wrong last sequence" error codes


class SplitBrainError(KioskError):
    """Another writer published to this site's gallery stream: two hubs, or one restored from an old backup."""


DUPLICATE_WINDOW_S = 600.0  # JetStream drops a re-published message id within this window; the hub dedupes forever
PUBLISH_CHUNK = 256  # records published concurrently, then awaited together


@dataclass
class HubStats:
    published: int = 0
    events_new: int = 0
    events_duplicate: int = 0
    events_rejected: int = 0
    chain_breaks: int = 0
    heartbeats: int = 0
    republished_all: int = 0
    recovered: int = 0  # records found already published by this hub (it stopped before recording them)
    split_brain: str | None = None  # set when another writer published to this site's gallery: publishing stopped
    last_publish_at: dict[str, float] = field(default_factory=dict)  # key -> time.time() its record was acked


class Hub:
    """The hub service. ``open_gallery`` is called on the hub's database thread (SQLite connections stay on the
    thread that made them); ``site_key`` is the key the gallery's templates are encrypted with."""

    def __init__(
        self,
        open_gallery: Callable[[], Gallery],
        site_key: bytes,
        doors: Callable[[], dict[str, DoorSecret]],
        *,
        url: str,
        password: str,
        poll_s: float = 0.05,
        heartbeat_flush_s: float = 1.0,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        on_heartbeat: Callable[[str, dict[str, Any]], None] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._open_gallery = open_gallery
        self.site: TemplateCipher = AesGcmCipher(site_key)
        self._site_key = site_key
        self._doors = doors
        self.url, self._password = url, password
        self.poll_s, self.heartbeat_flush_s = poll_s, heartbeat_flush_s
        self.on_event, self.on_heartbeat = on_event, on_heartbeat
        self.tls = tls
        self.stats = HubStats()
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-db")
        self._gallery: Gallery | None = None
        self._beats: dict[str, tuple[str, dict[str, Any]]] = {}
        self.hub_id = "hub"
        self.online: dict[str, float] = {}  # door -> time.monotonic() of its last heartbeat (for integrations)
        self.nc: Any = None
        self.js: Any = None
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()

    # -- database thread ---------------------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    @property
    def gallery(self) -> Gallery:
        if self._gallery is None:
            self._gallery = self._open_gallery()
            hubdb.install(self._gallery)
            for door in self._doors():
                hubdb.add_door(self._gallery, door)
        return self._gallery

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Serve until ``stop``; reconnects to the broker by itself."""
        await self._call(lambda: self.gallery)
        self.hub_id = await self._call(hubdb.meta, self.gallery, "hub_id", "hub")
        await self._call(hubdb.note, self.gallery, "split_brain", "")  # a restart after fixing it tries again
        if not await unless_stopped(self._connect(), self._stop):  # stopped while the broker was unreachable
            await self._call(self._close_gallery)
            self._db.shutdown(wait=True)
            return
        self.js = self.nc.jetstream(timeout=5)
        subs = [
            await self.nc.subscribe("fleet.hb.*", cb=self._on_heartbeat),
            await self.nc.subscribe("fleet.hub.*.*", cb=self._on_door_request),
        ]
        tasks = [asyncio.create_task(c) for c in (self._publish_loop(), self._events_loop(), self._flush_loop())]
        try:
            await self._ensure_streams()
            self.ready.set()
            await self._stop.wait()
        finally:
            await wind_down(tasks, subs, self.nc)
            with contextlib.suppress(Exception):
                await self._flush_heartbeats()
            await self._call(self._close_gallery)
            self._db.shutdown(wait=True)

    async def _connect(self) -> None:
        self.nc = await nats.connect(
            self.url,
            user=HUB_USER,
            password=self._password,
            name="face-kiosk hub",
            tls=self.tls,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=2,
            error_cb=self._on_error,
        )

    def _close_gallery(self) -> None:
        if self._gallery is not None:
            self._gallery.close()
            self._gallery = None

    async def _on_error(self, exc: Exception) -> None:
        log.warning("hub: broker connection: %s", exc)

    async def _ensure_streams(self) -> None:
        await _ensure_stream(
            self.js,
            StreamConfig(
                name=PEOPLE_STREAM,
                subjects=["fleet.people.>"],
                max_msgs_per_subject=1,
                storage=StorageType.FILE,
                duplicate_window=DUPLICATE_WINDOW_S,
            ),
        )
        await _ensure_stream(
            self.js,
            StreamConfig(
                name=EVENTS_STREAM,
                subjects=["fleet.events.*"],
                storage=StorageType.FILE,
                duplicate_window=DUPLICATE_WINDOW_S,
            ),
        )
        with contextlib.suppress(NotFoundError):
            await self.js.consumer_info(EVENTS_STREAM, HUB_CONSUMER)
            return
        await self.js.add_consumer(
            EVENTS_STREAM,
            ConsumerConfig(durable_name=HUB_CONSUMER, ack_policy=AckPolicy.EXPLICIT, max_ack_pending=20000),
        )

    async def ensure_door_consumer(self, door: str, from_seq: int = 1) -> None:
        """(Re)create ``door``'s durable consumer, delivering from ``from_seq`` (1: everything)."""
        name = f"door-{door}"
        with contextlib.suppress(NotFoundError):
            await self.js.delete_consumer(PEOPLE_STREAM, name)
        start = from_seq > 1
        await self.js.add_consumer(
            PEOPLE_STREAM,
            ConsumerConfig(
                durable_name=name,
                ack_policy=AckPolicy.ALL,
                max_ack_pending=-1,
                ack_wait=30.0,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start else DeliverPolicy.ALL,
                opt_start_seq=from_seq if start else None,
            ),
        )
        log.info("hub: consumer of door %s delivers from sequence %d", door, from_seq)

    # -- publishing ------------------------------------------------------------------------------------------

    async def _publish_loop(self) -> None:
        await self.ready.wait()
        await self._check_stream_lost()
        while not self._stop.is_set():  # not only on cancel: nats-py can turn one into a TimeoutError
            try:
                if not await self.publish_pending():
                    await asyncio.sleep(self.poll_s)
            except asyncio.CancelledError:
                raise
            except SplitBrainError as err:
                self.stats.split_brain = str(err)
                log.critical("hub: %s", err)
                await self._call(hubdb.note, self.gallery, "split_brain", str(err))  # for `kiosk fleet status`
                return
            except Exception as err:  # broker away: the outbox keeps everything; try again
                log.warning("hub: publishing paused (%s); the outbox keeps the changes", err)
                await asyncio.sleep(0.5)

    async def _check_stream_lost(self) -> None:
        """A broker that lost its store (a new one, a wiped disk) gets every record again."""
        info = await self.js.stream_info(PEOPLE_STREAM)
        seen = int(await self._call(hubdb.meta, self.gallery, "people_stream_seq", "0"))
        if info.state.last_seq < seen:
            n = await self._call(hubdb.requeue_all, self.gallery)
            self.stats.republished_all += 1
            log.warning(
                "hub: the broker's gallery stream is behind what was published (%d < %d): republishing %d records",
                info.state.last_seq,
                seen,
                n,
            )

    async def publish_pending(self, limit: int = 5000) -> int:
        """Publish what the outbox holds (at most ``limit`` rows); returns how many records went out."""
        after = int(await self._call(hubdb.meta, self.gallery, "published_through", "0"))
        rows = await self._call(hubdb.pending, self.gallery, after, limit)
        if not rows:
            return 0
        through = rows[-1][0]
        revs: dict[str, int] = {}
        for seq, key in rows:
            revs[key] = seq  # the newest change of each key is its revision
        records = await self._call(self._records, revs)
        expected = await self._call(hubdb.stream_seqs, self.gallery, [*records, "digest"])
        acks: dict[str, Any] = {}
        items = list(records.items())
        for i in range(0, len(items), PUBLISH_CHUNK):
            chunk = items[i : i + PUBLISH_CHUNK]
            done_acks = await asyncio.gather(*(self._publish(key, rec, expected.get(key, 0)) for key, rec in chunk))
            acks.update(zip((k for k, _ in chunk), done_acks, strict=True))
        done = time.time()
        live = {key: (revs[key], not rec.get("deleted"), int(acks[key].seq)) for key, rec in records.items()}
        last_seq = max(int(a.seq) for a in acks.values())
        await self._call(hubdb.mark_published, self.gallery, live, through, last_seq)
        revisions = await self._call(hubdb.live_revisions, self.gallery)
        summary = {"rev": through, "digest": digest(revisions), "count": len(revisions)}
        ack = await self._publish("digest", summary, expected.get("digest", 0))
        await self._call(hubdb.mark_published, self.gallery, {"digest": (through, False, int(ack.seq))}, through,
                         int(ack.seq))  # fmt: skip
        for key in records:
            self.stats.last_publish_at[key] = done
        self.stats.published += len(records)
        log.info("hub: published %d records up to revision %d", len(records), through)
        return len(records)

    def _records(self, revs: dict[str, int]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        with self.gallery._guard():
            for key, rev in sorted(revs.items(), key=lambda kv: kv[1]):
                if key == ACCESS_KEY:
                    record = access_record(self.gallery)
                else:
                    record = person_record(self.gallery, int(key[1:]), self.site.key_id)
                out[key] = {**record, "rev": rev}
        return out

    async def _publish(self, key: str, record: dict[str, Any], expected_seq: int) -> Any:
        """Publish one sealed record, compare-and-set: JetStream takes it only if the subject's newest message is
        still the one this hub published last (``expected_seq``; 0: none). Anything else means another writer — a
        second hub, or a hub restored from an old backup — and this hub stops publishing (SplitBrainError) rather
        than fight it over the doors' galleries."""
        if key == "digest":
            subject = DIGEST_SUBJECT
        elif key == ACCESS_KEY:
            subject = ACCESS_SUBJECT
        else:
            subject = person_subject(int(key[1:]))
        # The hub's own id in the message id: its re-publication after a crash is dropped as a duplicate, while a
        # second hub's record of the same key and revision is not, and meets the compare-and-set below.
        msg_id = f"{self.hub_id}:{key}:{record['rev']}"
        headers = {"Nats-Msg-Id": msg_id, "Nats-Expected-Last-Subject-Sequence": str(expected_seq)}
        try:
            return await self.js.publish(subject, seal(self.site, subject, record), headers=headers)
        except APIError as err:
            if err.err_code not in WRONG_LAST_SEQUENCE:
                raise
        # Ours already, if this hub published it and stopped before recording that (a crash): then take it as done.
        last = await self.js.get_last_msg(PEOPLE_STREAM, subject)
        if (last.headers or {}).get("Nats-Msg-Id") == msg_id:
            self.stats.recovered += 1
            return last
        raise SplitBrainError(
            f"{subject} was published by another writer (stream sequence {last.seq}, expected {expected_seq}): "
            "is a second hub running for this site, or was this hub's database restored from a backup? This hub "
            "stops publishing; stop the other one, then restart this one"
        )

    # -- events ------------------------------------------------------------------------------------------------

    async def _events_loop(self) -> None:
        await self.ready.wait()
        sub = None
        while not self._stop.is_set():  # not only on cancel: nats-py can turn one into a TimeoutError
            try:
                if sub is None:
                    sub = await self.js.pull_subscribe_bind(HUB_CONSUMER, stream=EVENTS_STREAM)
                try:
                    msgs = await sub.fetch(500, timeout=1.0)
                except TimeoutError:
                    continue
                await self._ingest(msgs)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("hub: reading events paused (%s)", err)
                sub = None
                await asyncio.sleep(0.5)

    async def _ingest(self, msgs: list[Any]) -> None:
        batch: list[tuple[str, dict[str, Any]]] = []
        for msg in msgs:
            try:
                door = door_of(msg.subject, "fleet.events.")
                row = decode(msg.data, msg.subject)
                if row.get("door") != door or not isinstance(row.get("id"), int) or row["id"] < 1:
                    raise ProtocolError(f"{msg.subject}: an event must carry this door and a positive id")
                batch.append((door, row))
            except ProtocolError as err:
                self.stats.events_rejected += 1
                log.warning("hub: event rejected: %s", err)
        got = await self._call(hubdb.record_events, self.gallery, batch)
        self.stats.events_new += got.new
        self.stats.events_duplicate += got.duplicates
        self.stats.chain_breaks += got.broken
        if got.broken:
            log.error("hub: %d door event chain(s) broke; see `kiosk fleet status`", got.broken)
        for msg in msgs:  # after the commit: a crash before this re-delivers, and the (door, id) key absorbs it
            await msg.ack()
        if self.on_event is not None:
            for door, row in batch:
                self.on_event(door, row)

    # -- heartbeats and door requests --------------------------------------------------------------------------

    async def _on_heartbeat(self, msg: Any) -> None:
        try:
            door = door_of(msg.subject, "fleet.hb.")
            beat = decode(msg.data, msg.subject)
        except ProtocolError as err:
            log.warning("hub: heartbeat ignored: %s", err)
            return
        self.stats.heartbeats += 1
        beat["received"] = time.time()
        self._beats[door] = (utc_iso(), beat)
        if self.on_heartbeat is not None:
            self.on_heartbeat(door, beat)
        if msg.reply:
            through = await self._call(hubdb.door_events_through, self.gallery, door)
            stream = int(await self._call(hubdb.meta, self.gallery, "people_stream_seq", "0"))
            await msg.respond(encode({"events_through": through, "people_seq": stream}))

    async def _flush_loop(self) -> None:
        while not self._stop.is_set():  # not only on cancel: nats-py can turn one into a TimeoutError
            await asyncio.sleep(self.heartbeat_flush_s)
            with contextlib.suppress(KioskError):
                await self._flush_heartbeats()

    async def _flush_heartbeats(self) -> None:
        if self._beats:
            beats, self._beats = self._beats, {}
            await self._call(hubdb.save_heartbeats, self.gallery, beats)

    async def _on_door_request(self, msg: Any) -> None:
        try:
            door = door_of(msg.subject, "fleet.hub.")
            what = msg.subject.rsplit(".", 1)[1]
            secret = self._doors().get(door)
            if secret is None:
                raise ProtocolError(f"door {door} is not registered at this hub")
            if what == "consumer":
                body = decode(msg.data, msg.subject)
                from_seq = body.get("from_seq", 1)
                if not isinstance(from_seq, int) or from_seq < 1:
                    raise ProtocolError("from_seq must be a positive integer")
                await self.ensure_door_consumer(door, from_seq)
                reply: dict[str, Any] = {"ok": True}
            elif what == "key":
                wrapped = wrap_site_key(AesGcmCipher(secret.door_key), door, self._site_key)
                reply = {"ok": True, "wrapped": wrapped.hex(), "key_id": self.site.key_id}
            else:
                raise ProtocolError(f"unknown request {what!r}")
        except (ProtocolError, KioskError) as err:
            reply = {"ok": False, "error": str(err)}
        except Exception as err:  # a broker error while (re)creating the consumer
            reply = {"ok": False, "error": f"hub: {err}"}
        if msg.reply:
            await msg.respond(encode(reply))

    # -- commands ----------------------------------------------------------------------------------------------

    async def command(self, door: str, name: str, timeout_s: float = 3.0, **args: Any) -> dict[str, Any]:
        """Send a live command to ``door`` and wait for its answer; KioskError when it does not answer."""
        try:
            msg = await self.nc.request(command_subject(door), encode({"cmd": name, **args}), timeout=timeout_s)
        except (TimeoutError, nats.errors.NoRespondersError):
            raise KioskError(f"door {door} did not answer {name!r} within {timeout_s:g} s (offline?)") from None
        return decode(msg.data, f"door {door}'s answer")


async def _ensure_stream(js: Any, config: StreamConfig) -> None:
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
        log.info("hub: created stream %s", config.name)
