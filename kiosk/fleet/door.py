"""A door's side of the fleet: it keeps its replica in sync, publishes its events, beats and answers commands.

``FleetDoor`` runs on its own asyncio loop (the door service starts it in a thread beside the frame loop, which never
waits for it). The door decides from its local gallery whatever the network does:

- **sync**: pull its durable consumer of the ``PEOPLE`` stream; apply each batch and its stream sequence in one
  transaction (``kiosk.fleet.replica``), acknowledge after the commit, patch the match matrix. A missing consumer is
  recreated by asking the hub, from the sequence the door has applied; a broker that lost its store, or a digest that
  does not match, starts a full resync — staged, so the gallery is never empty;
- **events**: the door's event table is its outbox (``kiosk.fleet.outbox``); with the broker away they wait on disk;
- **heartbeats**: a request to the hub every ``heartbeat_s`` with the gallery revision, digest, outbox depth and loop
  health; the answer says how far the hub holds this door's events and the hub's newest revision;
- **commands**: ``ping``, ``unlock`` (through the door's own relay and event log), ``resync``: live only.

Staleness: the door knows when it last confirmed it was up to date (``synced_at``); the door loop asks
``stale_for()`` and applies the configured policy (``fleet.stale_policy``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import nats
from nats.js.errors import NotFoundError

from kiosk.errors import KioskError
from kiosk.fleet.aio import unless_stopped, wind_down
from kiosk.fleet.broker import PEOPLE_STREAM, check_door_id, inbox_prefix
from kiosk.fleet.outbox import EventOutbox
from kiosk.fleet.protocol import (
    ProtocolError,
    command_subject,
    decode,
    encode,
    heartbeat_subject,
    hub_request_subject,
    unwrap_site_key,
)
from kiosk.fleet.replica import FULL_RELOAD_OVER, Applied, LiveMatrix, Message, Replica
from kiosk.fleet.secrets import DoorSecret
from kiosk.gallery import Gallery, utc_iso
from kiosk.gallery.keys import AesGcmCipher

log = logging.getLogger(__name__)
T = TypeVar("T")

BATCH = 1000
WRAPPED_KEY_FILE = "site-key.wrapped"
PRUNE_EVERY_S = 600.0
PRUNE_RETRY_S = 5.0
SYNCED_SAVE_S = 60.0  # an idle door writes "still up to date" to its gallery at most this often


@dataclass
class DoorFleetStats:
    batches: int = 0
    records: int = 0
    resyncs: int = 0
    digest_mismatches: int = 0
    connected: bool = False
    events_through: int = 0
    last_apply_at: float = 0.0
    applied_at: dict[int, float] = field(default_factory=dict)  # person id -> time.time() their change took effect


class FleetDoor:
    """One door's fleet service. ``open_gallery`` is called on the service's database thread."""

    def __init__(
        self,
        secret: DoorSecret,
        open_gallery: Callable[[], Gallery],
        *,
        url: str,
        state_dir: Path,
        model: tuple[str, str] | None = None,
        heartbeat_s: float = 5.0,
        outbox_s: float = 0.5,
        on_change: Callable[[set[int], bool], None] | None = None,
        on_unlock: Callable[[str, str], dict[str, Any]] | None = None,
        health: Callable[[], dict[str, Any]] | None = None,
        reconnect_s: float = 0.5,
        keep_events_s: float | None = None,
    ) -> None:
        self.secret = secret
        self.door = check_door_id(secret.door)
        self._open_gallery = open_gallery
        self.url = url
        self.state_dir = state_dir
        self.model = model
        self.heartbeat_s, self.outbox_s, self.reconnect_s = heartbeat_s, outbox_s, reconnect_s
        self.on_change, self.on_unlock, self.health = on_change, on_unlock, health
        self.stats = DoorFleetStats()
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"fleet-{self.door}")
        self._gallery: Gallery | None = None
        self.replica: Replica | None = None
        self.live: LiveMatrix | None = None
        self._synced_at: float | None = None
        self._synced_saved = 0.0
        self._digest: str = ""
        self._digest_at = -1  # the applied sequence self._digest was computed at
        self.nc: Any = None
        self.js: Any = None
        self._stop = asyncio.Event()
        self._outbox: EventOutbox | None = None
        self._outbox_gallery: Gallery | None = None
        self._poke = asyncio.Event()
        self._want_resync = asyncio.Event()
        self._resync_begun = asyncio.Event()
        self.keep_events_s = keep_events_s  # prune events the hub holds once older than this (None: keep all)
        self._next_prune, self._pruned_through = -float("inf"), 0

    # -- threads and state -------------------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    def _open(self) -> None:
        self._gallery = self._open_gallery()
        wrapped = self._wrapped_path()
        if wrapped.exists():
            self._load_site_key(bytes.fromhex(wrapped.read_text().strip()))
        if self.replica is not None and self.model is not None:
            self.live = LiveMatrix(self._gallery, *self.model)

    def _wrapped_path(self) -> Path:
        return self.state_dir / WRAPPED_KEY_FILE

    def _load_site_key(self, wrapped: bytes) -> None:
        assert self._gallery is not None
        site = unwrap_site_key(AesGcmCipher(self.secret.door_key), self.door, wrapped)
        self._gallery._cipher = AesGcmCipher(site)  # the door's templates are the site's: same key
        self.replica = Replica(self._gallery, self._gallery._cipher)
        self._synced_at = self.replica.synced_at()

    @property
    def site_cipher(self) -> AesGcmCipher | None:
        """The site key once received (the door loop's gallery needs it to read the replicated templates)."""
        cipher = self._gallery.cipher if self._gallery is not None else None
        return cipher if isinstance(cipher, AesGcmCipher) else None

    def stale_for(self, now: float | None = None) -> float | None:
        """Seconds since the replica was last confirmed up to date (None: never synced)."""
        if self._synced_at is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self._synced_at)

    def stop(self) -> None:
        self._stop.set()

    def poke(self) -> None:
        """An event was just written: publish it now rather than at the next tick (thread-safe from the loop)."""
        self._poke.set()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def run(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self._call(self._open)
        self._outbox_gallery = self._open_gallery()
        self._outbox = EventOutbox(self._outbox_gallery, self.door, self.state_dir / "events.watermark")
        try:
            while not self._stop.is_set():
                try:
                    if not await unless_stopped(self._connect(), self._stop):
                        break
                except (TimeoutError, OSError, nats.errors.Error) as err:
                    self.stats.connected = False
                    log.debug("fleet: broker unreachable (%s); deciding locally, events queue on disk", err)
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), self.reconnect_s)
                    continue
                await self._serve()
        finally:
            await self._call(self._close)
            self._outbox_gallery.close()
            self._db.shutdown(wait=True)

    def _close(self) -> None:
        if self._gallery is not None:
            self._gallery.close()

    async def _connect(self) -> None:
        self.nc = await nats.connect(
            self.url,
            user=f"door-{self.door}",
            password=self.secret.password,
            inbox_prefix=inbox_prefix(self.door),
            name=f"face-kiosk door {self.door}",
            tls=self.secret.ssl_context(),
            connect_timeout=2,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=self.reconnect_s,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnect,
            reconnected_cb=self._on_reconnect,
        )
        self.js = self.nc.jetstream(timeout=5)
        self.stats.connected = True

    async def _on_error(self, exc: Exception) -> None:
        log.debug("fleet: broker connection: %s", exc)

    async def _on_disconnect(self) -> None:
        self.stats.connected = False

    async def _on_reconnect(self) -> None:
        self.stats.connected = True

    async def _serve(self) -> None:
        sub = await self.nc.subscribe(command_subject(self.door), cb=self._on_command)
        tasks = [asyncio.create_task(c) for c in (self._sync_loop(), self._beat_loop(), self._outbox_loop())]
        try:
            await self._stop.wait()
        finally:
            await wind_down(tasks, [sub], self.nc)

    # -- requests to the hub -----------------------------------------------------------------------------------

    async def _ask_hub(self, what: str, body: dict[str, Any]) -> dict[str, Any]:
        msg = await self.nc.request(hub_request_subject(self.door, what), encode(body), timeout=5)
        reply = decode(msg.data, f"the hub's answer to {what}")
        if not reply.get("ok"):
            raise KioskError(f"the hub refused {what}: {reply.get('error')}")
        return reply

    async def _ensure_key(self) -> None:
        if self.replica is not None:
            return
        reply = await self._ask_hub("key", {})
        wrapped = bytes.fromhex(str(reply["wrapped"]))
        await self._call(self._load_site_key, wrapped)
        path = self._wrapped_path()
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(wrapped.hex() + "\n")
        tmp.chmod(0o600)
        tmp.replace(path)
        if self.model is not None:
            await self._call(self._make_live)
        if self.on_change is not None:  # before any record is applied: the door loop needs the key to read them
            self.on_change(set(), True)
        log.info("fleet: door %s received the site key (wrapped for it alone)", self.door)

    def _make_live(self) -> None:
        assert self._gallery is not None and self.model is not None
        self.live = LiveMatrix(self._gallery, *self.model)

    async def resync(self) -> None:
        """Ask for a full resync and wait until it has begun (the sync loop starts it between two batches, so no
        batch of the old consumer can land in the new staging): everything is staged from the first record while
        the current gallery keeps serving."""
        self._resync_begun.clear()
        self._want_resync.set()
        await self._resync_begun.wait()

    async def _begin_resync(self, psub: Any) -> None:
        """In the sync loop, between batches: drop the old subscription (late deliveries go with it), stage from
        the first record, and have the hub deliver from there to a fresh subscription."""
        assert self.replica is not None
        self._want_resync.clear()
        if psub is not None:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()
        await self._call(self.replica.begin_resync)
        await self._ask_hub("consumer", {"from_seq": 1})
        self.stats.resyncs += 1
        self._resync_begun.set()

    # -- sync --------------------------------------------------------------------------------------------------

    async def _sync_loop(self) -> None:
        psub = None
        while not self._stop.is_set():  # not only on cancel: nats-py can turn one into a TimeoutError
            try:
                await self._ensure_key()
                if self._want_resync.is_set():
                    await self._begin_resync(psub)
                    psub = None
                if psub is None:
                    psub = await self._bind()
                await self._pull(psub)
            except asyncio.CancelledError:
                raise
            except (TimeoutError, ProtocolError, KioskError, NotFoundError, nats.errors.Error) as err:
                log.warning("fleet: sync paused (%s)", err)
                psub = None
                await asyncio.sleep(self.reconnect_s)

    async def _bind(self) -> Any:
        replica = self.replica
        assert replica is not None
        info = await self.js.stream_info(PEOPLE_STREAM)
        applied = await self._call(lambda: replica.applied_seq)
        if applied > info.state.last_seq:  # the broker lost its store: what we hold may not exist any more
            log.warning(
                "fleet: the broker's stream ends at %d, below this replica's %d: full resync",
                info.state.last_seq,
                applied,
            )
            await self._begin_resync(None)
        try:
            await self.js.consumer_info(PEOPLE_STREAM, f"door-{self.door}")
        except NotFoundError:
            applied = await self._call(lambda: replica.applied_seq)
            await self._ask_hub("consumer", {"from_seq": applied + 1})
        return await self.js.pull_subscribe_bind(f"door-{self.door}", stream=PEOPLE_STREAM)

    async def _pull(self, psub: Any) -> None:
        try:
            msgs = await psub.fetch(1, timeout=1.0)  # returns at the first message: no added latency
        except TimeoutError:
            await self._confirm_synced()
            return
        pending = int(msgs[-1].metadata.num_pending)
        while pending > 0 and len(msgs) < BATCH * 10:
            try:
                more = await psub.fetch(min(BATCH, pending), timeout=0.5)
            except TimeoutError:
                break
            msgs += more
            pending = int(more[-1].metadata.num_pending)
        batch = [Message(int(m.metadata.sequence.stream), m.subject, m.data) for m in msgs]
        assert self.replica is not None
        applied = await self._call(self._apply, batch, pending)
        await msgs[-1].ack()  # AckPolicy.ALL: acknowledges the whole batch, after the commit
        self.stats.batches += 1
        self.stats.records += applied.records
        if applied.digest_ok is False:
            self.stats.digest_mismatches += 1
            log.warning("fleet: replica digest differs from the hub's: full resync")
            self._want_resync.set()
        elif applied.staged_incomplete:
            log.warning("fleet: the staged resync does not match the hub's digest: staging again from the start")
            self._want_resync.set()
        elif pending == 0 and not self.replica.staging:
            await self._confirm_synced()

    def _apply(self, batch: list[Message], pending: int) -> Applied:
        assert self.replica is not None
        applied = self.replica.apply(batch, pending=pending)
        full = applied.swapped or len(applied.people) > FULL_RELOAD_OVER
        if self.live is not None and (applied.people or full):
            if full:
                self.live.reload()
            else:
                self.live.patch(applied.people)
        now = time.time()
        self.stats.last_apply_at = now
        for pid in applied.people:
            self.stats.applied_at[pid] = now
        if self.on_change is not None and (applied.people or applied.access):
            self.on_change(applied.people, full)
        return applied

    async def _confirm_synced(self) -> None:
        now = time.time()
        if self.replica is None or self.replica.staging:
            return
        self._synced_at = now
        # NOTE: confirmed in memory every time, written at most every SYNCED_SAVE_S: a write a second was an fsync a
        # second for ever on an idle door (an SD card's wear). After a restart the saved time is at most that much
        # older than the truth: the door thinks itself staler, never fresher.
        if now - self._synced_saved >= SYNCED_SAVE_S:
            self._synced_saved = now
            await self._call(self.replica.mark_synced, now)

    # -- heartbeats, events, commands --------------------------------------------------------------------------

    async def _beat_loop(self) -> None:
        while not self._stop.is_set():  # not only on cancel: nats-py can turn one into a TimeoutError
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except (TimeoutError, nats.errors.Error, ProtocolError) as err:
                log.debug("fleet: heartbeat not answered (%s)", err)
            except Exception as err:  # a heartbeat must never stop for good: the hub would show the door offline
                log.warning("fleet: heartbeat failed: %s", err)
            await asyncio.sleep(self.heartbeat_s)

    async def status(self) -> dict[str, Any]:
        replica = self.replica
        rev = await self._call(lambda: replica.applied_seq) if replica else 0
        if replica is not None and self._digest_at != rev:  # the replica changes only by applying: same seq, digest
            self._digest, self._digest_at = await self._call(replica.digest), rev
        digest_ = self._digest if replica else ""
        acked = self._outbox.acked if self._outbox else 0
        last = await self._call(self._last_event_id)
        stale = self.stale_for()
        return {
            "rev": rev,
            "digest": digest_,
            "outbox_depth": max(0, last - acked),
            "last_event": last,
            "stale_s": None if stale is None else round(stale, 1),
            "staging": bool(self.replica and self.replica.staging),
            "loop": self.health() if self.health else {},
            "sent": time.time(),
        }

    def _last_event_id(self) -> int:
        return self._gallery.last_event_id() if self._gallery is not None else 0

    async def beat(self) -> dict[str, Any]:
        msg = await self.nc.request(heartbeat_subject(self.door), encode(await self.status()), timeout=2)
        reply = decode(msg.data, "the hub's heartbeat answer")
        self.stats.events_through = int(reply.get("events_through", 0))
        now = time.monotonic()
        through = min(self.stats.events_through, self._outbox.acked if self._outbox else 0)
        if self.keep_events_s is not None and now >= self._next_prune and through > self._pruned_through:
            cutoff = utc_iso(datetime.now(UTC) - timedelta(seconds=self.keep_events_s))
            pruned = await self._call(self._prune, through, cutoff)
            # After a prune, wait the full interval; when nothing was old enough yet, look again soon.
            self._next_prune = now + (PRUNE_EVERY_S if pruned else PRUNE_RETRY_S)
            if pruned:
                self._pruned_through = through
                log.info("fleet: pruned %d events the hub holds (older than %s)", pruned, cutoff)
        return reply

    def _prune(self, through: int, cutoff: str) -> int:
        assert self._gallery is not None
        return self._gallery.prune_events(through, cutoff)

    async def _outbox_loop(self) -> None:
        assert self._outbox is not None
        while not self._stop.is_set():  # not only on cancel: nats-py can turn one into a TimeoutError
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self.outbox_s)
            self._poke.clear()
            try:
                await self._outbox.drain(self.js)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # broker away: the events stay in the gallery; the watermark did not move
                log.debug("fleet: events wait on disk (%s)", err)

    async def _on_command(self, msg: Any) -> None:
        try:
            body = decode(msg.data, "command")
            cmd = body.get("cmd")
            if cmd == "ping":
                reply: dict[str, Any] = {"ok": True, **(await self.status())}
            elif cmd == "unlock":
                if self.on_unlock is None:
                    raise KioskError("this door has no relay to unlock")
                actor = str(body.get("actor") or "hub")[:100]
                reason = str(body.get("reason") or "remote unlock")[:200]
                result = await asyncio.get_running_loop().run_in_executor(None, self.on_unlock, actor, reason)
                reply = {"ok": True, **result}
            elif cmd == "resync":
                self._want_resync.set()  # started by the sync loop between batches; answered at once
                reply = {"ok": True}
            else:
                raise ProtocolError(f"unknown command {cmd!r}")
        except (ProtocolError, KioskError) as err:
            reply = {"ok": False, "error": str(err)}
        if msg.reply:
            await msg.respond(encode(reply))
