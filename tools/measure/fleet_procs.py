"""The processes of ``python -m tools fleet-sim``: a simulated site on disk, the hub in a process of its own (so it
can be killed with SIGKILL), and door workers, each an asyncio loop running many real ``FleetDoor``s with real SQLite
galleries, driven by the parent over a pipe.

Every timestamp is ``time.time()``, comparable across the processes of one machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from kiosk.fleet import hubdb
from kiosk.fleet.broker import BrokerConfig
from kiosk.fleet.door import FleetDoor
from kiosk.fleet.hub import Hub
from kiosk.fleet.proxy import TcpProxy
from kiosk.fleet.secrets import FleetSecrets
from kiosk.gallery import Gallery, TemplateIn
from kiosk.gallery.keys import AesGcmCipher

MODEL = ("sim-model", "5" * 64)
STOP_WAIT_S = 120.0  # a worker's doors must stop within this
DIM = 512


def template(seed: int, dim: int = DIM) -> TemplateIn:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return TemplateIn(v / np.linalg.norm(v), MODEL[0], MODEL[1], 0.9, f"sim:{seed}")


@dataclass(frozen=True)
class SimSite:
    """A site under ``root``: the hub's secrets and gallery, the site key (a file, so every process reads it) and
    one folder per door."""

    root: Path

    def create(self, doors: list[str]) -> SimSite:
        fleet = FleetSecrets(self.root / "hub" / "fleet")
        for door in doors:
            fleet.add_door(door)
        key = self.root / "hub" / "site.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_bytes(32).hex())
        with self.hub_gallery() as g:
            hubdb.install(g)
            for door in doors:
                hubdb.add_door(g, door)
        return self

    @property
    def secrets(self) -> FleetSecrets:
        return FleetSecrets(self.root / "hub" / "fleet")

    def site_key(self) -> bytes:
        return bytes.fromhex((self.root / "hub" / "site.key").read_text())

    def hub_gallery(self) -> Gallery:
        return Gallery(self.root / "hub" / "gallery.db", cipher=AesGcmCipher(self.site_key()))

    def door_db(self, door: str) -> Path:
        return self.root / "doors" / door / "gallery.db"

    def broker_config(self, port: int) -> BrokerConfig:
        fleet = self.secrets
        return BrokerConfig(
            store_dir=self.root / "jetstream",
            hub_password=fleet.hub_password(),
            doors={d: s.password for d, s in fleet.doors().items()},
            port=port,
        )

    def hub(self, url: str) -> Hub:
        fleet = self.secrets
        return Hub(self.hub_gallery, self.site_key(), fleet.doors, url=url, password=fleet.hub_password())

    def door(self, door: str, url: str) -> FleetDoor:
        path = self.door_db(door)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return FleetDoor(
            self.secrets.doors()[door],
            lambda: Gallery(path),
            url=url,
            state_dir=path.parent / "fleet",
            model=MODEL,
        )


def bulk_enroll(gallery: Gallery, first: int, count: int) -> list[int]:
    """``count`` people ``sim-<i>`` with one template each, in one transaction (the outbox triggers fire as for any
    change); returns their ids. Through ``enroll`` one by one, 100k people would take an fsync each."""
    ids = []
    with gallery._write() as db:
        for i in range(first, first + count):
            person_id = gallery._insert_person(
                db, f"sim-{i}", {"enabled": True, "valid_from": None, "valid_until": None, "note": None}
            )
            gallery._insert_template(db, person_id, template(i))
            ids.append(person_id)
    return ids


# -- the hub process -------------------------------------------------------------------------------------------


def hub_main(root: str, url: str) -> None:
    """The hub until SIGTERM (a clean stop) or SIGKILL (a crash)."""
    logging.basicConfig(level=logging.WARNING, format="hub %(levelname)s %(name)s: %(message)s")
    hub = SimSite(Path(root)).hub(url)

    async def main() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, hub.stop)
        await hub.run()

    asyncio.run(main())


# -- a door worker -----------------------------------------------------------------------------------------------


@dataclass
class WorkerSpec:
    root: str
    url: str  # the broker
    doors: list[str]
    proxied: list[str] = field(default_factory=list)  # doors behind a TcpProxy (those the parent may partition)


@dataclass
class Watch:
    """High-rate samples of one door's live matrix after a heal or during a resync."""

    door: str
    revoked: np.ndarray[Any, Any]
    hub_digest: str | None
    started: float = field(default_factory=time.time)
    samples: int = 0
    min_size: int | None = None
    max_size: int = 0
    last_revoked_seen: float | None = None
    consistent_at: float | None = None  # first poll that found the replica digest == the hub's
    consistent_apply_at: float | None = None  # the door's apply that made it so
    resync_done_at: float | None = None
    reconnected_at: float | None = None  # first sample connected after one disconnected
    was_disconnected: bool = False


class Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.site = SimSite(Path(spec.root))
        self.proxies: dict[str, TcpProxy] = {}
        self.doors: dict[str, FleetDoor] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.watches: dict[str, Watch] = {}
        self.watch_tasks: list[asyncio.Task[None]] = []
        self.producers: list[asyncio.Task[None]] = []
        self.produced: dict[str, int] = {}
        self.produce_late: int = 0

    async def start(self) -> None:
        host, port = self.spec.url.removeprefix("nats://").rsplit(":", 1)
        for door in self.spec.proxied:
            self.proxies[door] = await TcpProxy(host, int(port)).start()
        for door in self.spec.doors:
            url = self.proxies[door].url if door in self.proxies else self.spec.url
            self.doors[door] = self.site.door(door, url)
            self.tasks[door] = asyncio.create_task(self.doors[door].run())

    async def stop(self) -> dict[str, Any]:
        for t in self.producers + self.watch_tasks:
            t.cancel()
        for door in self.doors.values():
            door.stop()
        _, pending = await asyncio.wait(self.tasks.values(), timeout=STOP_WAIT_S)
        for p in self.proxies.values():
            await p.close()
        errors: dict[str, Any] = {}
        for d, t in self.tasks.items():
            if t.done() and not t.cancelled() and t.exception() is not None:
                errors[d] = repr(t.exception())
        if pending:  # where the doors that did not stop are waiting: the parent reports it
            errors["doors_not_stopped"] = sorted(d for d, t in self.tasks.items() if t in pending)
            me = asyncio.current_task()
            errors["waiting_at"] = sorted({_where(t) for t in asyncio.all_tasks() if t is not me and not t.done()})
        return errors

    # -- commands from the parent ----------------------------------------------------------------------------

    async def handle(self, cmd: str, arg: Any) -> Any:
        if cmd == "ready":  # doors whose matrix holds `people` people and that confirmed sync after `since`
            people, since = arg
            return [d for d, door in self.doors.items() if not self._ready(door, people, since)]
        if cmd == "partition":
            for d in arg:
                self.proxies[d].partition()
            return time.time()
        if cmd == "heal":
            for d in arg:
                await self.proxies[d].heal()
            return time.time()
        if cmd == "applied":  # door -> {person id: time the change took effect} for these people
            return {d: {p: door.stats.applied_at.get(p) for p in arg} for d, door in self.doors.items()}
        if cmd == "present":  # door -> which of these people its live matrix still holds
            return {
                d: sorted(set(arg) & door.live.person_ids()) if door.live else None for d, door in self.doors.items()
            }
        if cmd == "status":
            return {d: await self.doors[d].status() for d in arg}
        if cmd == "time_status":  # seconds per door.status() (the heartbeat's body: the replica digest, the outbox)
            door, n = arg
            t = time.perf_counter()
            for _ in range(n):
                await self.doors[door].status()
            return (time.perf_counter() - t) / n
        if cmd == "watch":
            door, revoked, hub_digest = arg
            w = Watch(door, np.asarray(sorted(revoked), dtype=np.int64), hub_digest)
            self.watches[door] = w
            self.watch_tasks.append(asyncio.create_task(self._watch(w)))
            return w.started
        if cmd == "watch_result":
            w = self.watches[arg]
            return {k: v for k, v in vars(w).items() if k != "revoked"}
        if cmd == "resync":
            t = time.time()
            await self.doors[arg].resync()
            return t
        if cmd == "produce":
            rate = float(arg)
            for i, d in enumerate(self.doors):
                self.producers.append(asyncio.create_task(self._produce(d, rate, i / len(self.doors) / rate)))
            return time.time()
        if cmd == "stop_producing":
            for task in self.producers:
                task.cancel()
            await asyncio.gather(*self.producers, return_exceptions=True)
            self.producers = []
            return {"produced": dict(self.produced), "late": self.produce_late}
        if cmd == "stop":
            return await self.stop()
        raise ValueError(f"unknown worker command {cmd!r}")

    @staticmethod
    def _ready(door: FleetDoor, people: int, since: float) -> bool:
        stale = door.stale_for()
        if door.live is None or stale is None or time.time() - stale < since or not door.stats.connected:
            return False
        return len(door.live.person_ids()) == people

    async def _watch(self, w: Watch) -> None:
        """Every ~2 ms: the live matrix's size, whether a revoked person is in it; every ~25 ms the replica digest."""
        door = self.doors[w.door]
        next_digest = 0.0
        while True:
            now = time.time()
            live = door.live
            if live is not None:
                ids = live.matrix.person_ids
                w.samples += 1
                w.min_size = len(ids) if w.min_size is None else min(w.min_size, len(ids))
                w.max_size = max(w.max_size, len(ids))
                if w.revoked.size and np.isin(w.revoked, ids).any():
                    w.last_revoked_seen = now
            if not door.stats.connected:
                w.was_disconnected = True
            elif w.was_disconnected and w.reconnected_at is None:
                w.reconnected_at = now
            replica = door.replica
            if w.resync_done_at is None and replica is not None and not replica.staging and door.stats.resyncs:
                w.resync_done_at = now
            if w.hub_digest and w.consistent_at is None and now >= next_digest and replica is not None:
                next_digest = now + 0.025
                status = await door.status()
                if status["digest"] == w.hub_digest:
                    w.consistent_at, w.consistent_apply_at = time.time(), door.stats.last_apply_at
            await asyncio.sleep(0.002)

    async def _produce(self, door_id: str, rate: float, offset: float) -> None:
        """``rate`` events a second into the door's gallery (its own connection, as the door loop has), each
        followed by ``poke()``, as the door loop does."""
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"events-{door_id}")
        loop = asyncio.get_running_loop()
        gallery = await loop.run_in_executor(pool, Gallery, self.site.door_db(door_id))
        door = self.doors[door_id]
        self.produced.setdefault(door_id, 0)
        start = time.monotonic() + offset
        k = 0
        try:
            while True:
                delay = start + k / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -1.0 / rate:
                    self.produce_late += 1
                k += 1
                await loop.run_in_executor(pool, _add_event, gallery, k)
                self.produced[door_id] += 1
                door.poke()
        finally:
            await loop.run_in_executor(pool, gallery.close)
            pool.shutdown(wait=False)


def _where(task: asyncio.Task[Any]) -> str:
    """A task's coroutine and the line it waits at."""
    frames = task.get_stack()
    at = f" at {frames[-1].f_code.co_filename.rsplit('/', 2)[-1]}:{frames[-1].f_lineno}" if frames else ""
    return f"{task.get_coro().__qualname__}{at}"  # type: ignore[union-attr]


def _add_event(gallery: Gallery, k: int) -> int:
    return gallery.add_event("access", "granted", person_name=f"sim-{k % 50}", score=0.8, detail={"k": k})


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    logging.basicConfig(level=logging.ERROR, format="door-worker %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        worker = Worker(spec)
        await worker.start()
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipe") as pipe:
            while True:
                cmd, arg = await loop.run_in_executor(pipe, conn.recv)
                try:
                    reply: Any = await worker.handle(cmd, arg)
                except Exception as err:  # the parent raises it
                    reply = err
                conn.send(reply)
                if cmd == "stop":
                    return

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
