"""Soak: the real door loop for hours under injected faults, watched from outside like systemd would.

``python -m tools soak --minutes N [--json OUT] [--config FILE] [--faults SPEC] [--interval S] [--fps F]``

What it does: a setup step (a subprocess) enrols ``--members`` LFW identities into a throwaway gallery with the real
``kiosk.enroll.enroll`` and writes a clip of 640x480 JPEG frames (members shown an unseen photo, and strangers, each
on a plain wall with hand-held jitter: ``tools.measure.replay_bench``'s renderer). Then the kiosk runs as a CHILD
PROCESS — ``python -m tools.measure.soak --child``, which calls ``kiosk.door.service.run_kiosk`` (the function ``kiosk
run`` calls: relay, watchdog, signals, fail-secure hooks) on that clip as a looping real-time replay, with the fault
injectors wired in. When the child exits non-zero (or is killed by a signal) it is restarted, as
``Restart=on-failure`` would, and the restart is counted with its exit code. Every ``--interval`` seconds one line:
elapsed, frames, faults injected by kind, restarts, the child's RSS (MB) and open file descriptors (read from
``/proc/<pid>``), decisions. At the end: the RSS drift (first interval vs last) and, with ``--json``, every sample.

Fault injection is a set of composable wrappers (all seeded, all counted in a ``FaultLog``), used here and by the
test-sized soak in ``tests/test_soak.py``:

* ``FaultySource`` wraps any ``kiosk.door.camera.FrameSource``: per frame read it may *drop* a frame (lost in transit),
  *stall* (no frame until the camera is reopened: ``Camera`` notices after ``camera.stall_timeout_s`` and
  reconnects) or *unplug* (``read()`` raises, and up to ``unplug_opens`` reopen attempts are refused). While open it
  holds a real file descriptor (``/dev/null``, standing in for the device node), so a reconnect that forgot to close
  the source would show as an fd leak.
* ``GalleryLocker`` is another writer: a second sqlite3 connection that, at random times, holds ``BEGIN IMMEDIATE``
  for longer than the kiosk's ``gallery.busy_timeout_s``, so the loop's event writes meet a locked gallery (each
  failed attempt counted as ``lock_hit`` by ``event_failure_counter``, the loop's ``on_event_error`` hook; the loop
  queues the event and retries). The soak runs it in the parent: a genuinely separate process.
* ``ExceptionInjector`` (asked before every model call by ``kiosk.testing.FlakyStage`` wrappers of the detector and
  the embedder: ``flaky_pipeline``) raises ``RuntimeError`` in the detector or the embedder at a rate; optionally a
  *burst* of ``safety.max_frame_errors`` consecutive failing frames (the loop must exit and be restarted) or a *hang*
  longer than the internal watchdog's limit (the watchdog must lock the door and end the process).

``--faults`` takes ``kind=value`` pairs separated by commas (``none`` for no faults); rates are per camera read for
drop/stall/unplug, per model call for exception, per frame for burst/hang, and lock episodes per second for lock.
The default leaves out burst and hang, so with it any restart is a finding.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from kiosk.config import CameraConfig, Config, load_config
from kiosk.door.camera import Camera, FrameSource
from kiosk.door.decide import Decision
from kiosk.door.loop import DoorLoop, LoopStats
from kiosk.door.notify import Notifier
from kiosk.door.relay import SimulatedDoor, open_door
from kiosk.errors import ExitCode, GalleryError, GalleryLockedError, HardwareError, KioskError
from kiosk.gallery import Gallery
from kiosk.recognition.detect import Detector
from kiosk.recognition.embed import Embedder
from kiosk.recognition.pipeline import Pipeline
from kiosk.testing import FlakyStage
from kiosk.types import Image
from tools import ROOT

log = logging.getLogger("tools.measure.soak")

PROG = "python -m tools soak"
DEFAULT_FAULTS = "drop=0.02,stall=0.002,unplug=0.002,exception=0.01,lock=0.02"
STATUS_EVERY_S = 1.0  # how often a child rewrites its status file
# NOTE: the default lock episode lasts twice gallery.busy_timeout_s: a write arriving in its first half waits the whole
# busy timeout and fails (GalleryLockedError: the event is lost, counted as lock_hit), one in its second half waits
# and succeeds. Just above the timeout, nearly every write would only be delayed.
LOCK_HOLD_FACTOR = 2.0
HANG_MARGIN_S = 2.0  # an injected hang outlasts the watchdog's limit by this much (default hang)
CRASH_LOOP_RUNS = 5  # default --start-limit-burst: this many children in a row dying within CRASH_LOOP_S of their
CRASH_LOOP_S = 30.0  # start is a crash loop, and the soak stops (systemd's StartLimitBurst= / StartLimitIntervalSec=)
STOP_TIMEOUT_S = 30.0  # SIGTERM, then this long for a graceful exit, then SIGKILL
MIN_RATE_SPAN_S = 300.0  # the RSS drift is given per hour only over at least this span


# -- faults: what to inject, and the tally --------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultPlan:
    """Fault rates and their parameters (every field is a ``--faults`` key)."""

    drop: float = 0.0  # per camera read: the frame is lost in transit
    stall: float = 0.0  # per camera read: no frame until the source is reopened
    unplug: float = 0.0  # per camera read: read() raises, then up to unplug_opens reopen attempts fail
    exception: float = 0.0  # per model call (detect, embed): RuntimeError
    lock: float = 0.0  # gallery lock episodes per second (Poisson), each held lock_hold_s
    burst: float = 0.0  # per frame: burst_len consecutive frames fail (the loop should exit, and be restarted)
    hang: float = 0.0  # per frame: the detector blocks for hang_s (the internal watchdog should end the process)
    unplug_opens: int = 2
    lock_hold_s: float | None = None  # default: gallery.busy_timeout_s * LOCK_HOLD_FACTOR
    burst_len: int | None = None  # default: safety.max_frame_errors
    hang_s: float | None = None  # default: the watchdog's limit + HANG_MARGIN_S

    def as_text(self) -> str:
        return ",".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))


_RATES = ("drop", "stall", "unplug", "exception", "burst", "hang")


def parse_faults(text: str) -> FaultPlan:
    """``"drop=0.02,lock=0.1"`` (or ``none``) as a ``FaultPlan``; ``ValueError`` with one line naming the key."""
    text = text.strip()
    if text.lower() in ("", "none", "off"):
        return FaultPlan()
    kinds = {f.name: f for f in dataclasses.fields(FaultPlan)}
    values: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, raw = item.strip().partition("=")
        key = key.strip()
        if not sep or key not in kinds:
            raise ValueError(f"--faults: expected kind=value with kind one of {', '.join(kinds)}, got {item.strip()!r}")
        try:
            value: float = int(raw) if key in ("unplug_opens", "burst_len") else float(raw)
        except ValueError:
            raise ValueError(f"--faults: {key} must be a number, got {raw.strip()!r}") from None
        if key in _RATES and not 0.0 <= value <= 1.0:
            raise ValueError(f"--faults: {key} is a probability within 0..1, got {value}")
        if value < 0 or (key in ("burst_len", "hang_s", "lock_hold_s") and value <= 0):
            raise ValueError(f"--faults: {key} must be above 0, got {value}")
        values[key] = value
    plan = FaultPlan(**values)
    if plan.drop + plan.stall + plan.unplug > 1.0:
        raise ValueError("--faults: drop + stall + unplug must not exceed 1")
    return plan


class FaultLog:
    """Thread-safe tally of injected faults (and of what the kiosk reported back, e.g. ``lock_hit``) by kind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def add(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self._counts[kind] = self._counts.get(kind, 0) + n

    def __getitem__(self, kind: str) -> int:
        with self._lock:
            return self._counts.get(kind, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._counts.items()))


class InjectedFault(RuntimeError):
    """What the exception injector raises: a plain RuntimeError, as a bug in a stage would."""


# -- the camera -----------------------------------------------------------------------------------------------------


class SoakClock:
    """Media time for a lockstep replay: (frames read - 1) / fps, plus the real duration of every camera outage.

    In lockstep the loop runs much faster than the clip's fps, so frames stamped with the real clock would be
    milliseconds apart and tracks would never end (``tools.measure.replay_bench`` explains). During a stall or an
    unplug the clock follows real time, so ``Camera`` (which measures ``stall_timeout_s`` on it) notices the stall,
    and the outage lasts in media time as long as it lasted. Called from the camera's reader thread and the loop's
    thread.
    """

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps
        self._lock = threading.Lock()
        self._frames = 0
        self._offset = 0.0
        self._outage_since: float | None = None

    def __call__(self) -> float:
        with self._lock:
            t = max(self._frames - 1, 0) * self.period + self._offset
            if self._outage_since is not None:
                t += time.monotonic() - self._outage_since
            return t

    def tick(self) -> None:
        with self._lock:
            self._frames += 1

    def outage_begin(self) -> None:
        with self._lock:
            if self._outage_since is None:
                self._outage_since = time.monotonic()

    def outage_end(self) -> None:
        with self._lock:
            if self._outage_since is not None:
                self._offset += time.monotonic() - self._outage_since
                self._outage_since = None


class FaultySource:
    """A ``FrameSource`` wrapper that drops, stalls and unplugs at ``plan``'s rates (seeded; one draw per read).

    Only ``Camera``'s reader thread calls it. Faults are drawn while the inner source's frame count is inside
    ``window`` (start, stop), so a test can keep the first and last frames clean. The inner source stays open across
    an *injected* loss (the simulated device comes back where it was); a real failure of the inner source closes and
    reopens it. ``stamps`` (when ``record_stamps``) maps each delivered frame's ``clock()`` stamp to the inner
    frame index, so a test can tell which clip a track began in. ``on_frame(n)`` is called after inner frame n.
    """

    def __init__(
        self,
        inner: FrameSource,
        plan: FaultPlan,
        faults: FaultLog,
        *,
        seed: int,
        clock: SoakClock | None = None,
        window: tuple[int, int | None] = (0, None),
        record_stamps: bool = False,
        on_frame: Callable[[int], None] | None = None,
    ) -> None:
        self.inner, self.plan, self.faults, self.clock = inner, plan, faults, clock
        self.name = inner.name
        self.live = inner.live
        self.fps = inner.fps
        self.ended = False
        self.reads = 0  # frames read from the inner source, dropped ones included
        self.stamps: dict[float, int] = {}
        self._rng = np.random.default_rng([seed, 101])
        self._window, self._record, self._on_frame = window, record_stamps, on_frame
        self._fd: int | None = None
        self._inner_open = False
        self._injected_loss = False
        self._stalled = False
        self._refuse_opens = 0

    def open(self) -> None:
        if self._refuse_opens > 0:
            self._refuse_opens -= 1
            self.faults.add("unplug_refused_open")
            raise HardwareError("injected fault: camera still unplugged")
        if not self._inner_open:
            self.inner.open()
            self.fps = self.inner.fps
            self._inner_open = True
        self._fd = os.open(os.devnull, os.O_RDONLY)  # the device node a real camera holds while open
        self._stalled = self._injected_loss = False

    def read(self) -> Image | None:
        if self._fd is None:
            raise HardwareError(f"{self.name} is not open")
        if self._stalled:
            return None
        start, stop = self._window
        if self.reads >= start and (stop is None or self.reads < stop):
            u = float(self._rng.random())
            if u < self.plan.unplug:
                self._lose("unplug")
                self._refuse_opens = int(self._rng.integers(0, self.plan.unplug_opens + 1))
                raise HardwareError("injected fault: camera unplugged")
            u -= self.plan.unplug
            if u < self.plan.stall:
                self._lose("stall")
                self._stalled = True
                return None
            u -= self.plan.stall
            if u < self.plan.drop and self._read_inner() is not None:
                self.faults.add("drop")
        image = self._read_inner()
        if image is not None:
            if self.clock is not None:
                self.clock.outage_end()
                if self._record:
                    self.stamps[self.clock()] = self.reads - 1
            if self._on_frame is not None:
                self._on_frame(self.reads - 1)
        return image

    def _lose(self, kind: str) -> None:
        self.faults.add(kind)
        self._injected_loss = True
        if self.clock is not None:
            self.clock.outage_begin()

    def _read_inner(self) -> Image | None:
        image = self.inner.read()
        self.ended = self.inner.ended
        if image is not None:
            self.reads += 1
            if self.clock is not None:
                self.clock.tick()
        return image

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        if not self._injected_loss and self._inner_open:
            self._inner_open = False
            self.inner.close()


# -- the models -----------------------------------------------------------------------------------------------------


class ExceptionInjector:
    """Decides, before each model call, whether it fails (``InjectedFault``), hangs, or starts a burst of failures.

    Called from the loop thread only. Burst and hang are drawn on detector calls (one per frame)."""

    def __init__(
        self,
        plan: FaultPlan,
        faults: FaultLog,
        *,
        seed: int,
        burst_len: int,
        hang_s: float,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.plan, self.faults, self.burst_len, self.hang_s, self.sleep = plan, faults, burst_len, hang_s, sleep
        self._rng = np.random.default_rng([seed, 202])
        self._burst_left = 0

    def before(self, stage: str) -> None:
        if self._burst_left > 0:
            self._burst_left -= 1
            self.faults.add("burst_exception")
            raise InjectedFault(f"injected fault in {stage} (burst)")
        p = self.plan
        u = float(self._rng.random())
        if stage == "detect":
            if u < p.hang:
                self.faults.add("hang")
                self.sleep(self.hang_s)
                return
            u -= p.hang
            if u < p.burst:
                self.faults.add("burst")
                self.faults.add("burst_exception")
                self._burst_left = self.burst_len - 1
                raise InjectedFault(f"injected fault in {stage} (burst)")
            u -= p.burst
        if u < p.exception:
            self.faults.add(f"exception_{stage}")
            raise InjectedFault(f"injected fault in {stage}")

    @property
    def raised(self) -> int:
        """Model calls made to fail so far (each one is a frame the loop had to drop)."""
        return sum(self.faults[k] for k in ("exception_detect", "exception_embed", "burst_exception"))


def flaky_stages(pipeline: Pipeline, injector: ExceptionInjector) -> tuple[FlakyStage[Detector], FlakyStage[Embedder]]:
    """The pipeline's detector and embedder, each asking the injector before every ``detect``/``embed``
    (``kiosk.testing.FlakyStage``: the injector raises, hangs or lets the call through)."""
    return (
        FlakyStage(pipeline.detector, "detect", lambda n: injector.before("detect")),
        FlakyStage(pipeline.embedder, "embed", lambda n: injector.before("embed")),
    )


def flaky_pipeline(pipeline: Pipeline, injector: ExceptionInjector) -> Pipeline:
    """A second ``Pipeline`` on the same loaded models and config, its detector and embedder made flaky (the
    in-process soak passes it to ``DoorLoop``, the soak child to ``run_kiosk(wrap_pipeline=)``)."""
    detector, embedder = flaky_stages(pipeline, injector)
    return Pipeline(pipeline.cfg, detector.as_stage(), embedder.as_stage(), pipeline.template)


# -- the gallery ----------------------------------------------------------------------------------------------------


class GalleryLocker:
    """Another writer: at seeded random times (``rate_per_s`` episodes per second on average) a fresh sqlite3
    connection takes ``BEGIN IMMEDIATE`` on the gallery and holds it ``hold_s`` seconds, then rolls back (nothing is
    changed). Counts ``lock`` per episode held, ``lock_missed`` when it could not get the lock itself."""

    def __init__(
        self,
        path: str | Path,
        *,
        rate_per_s: float,
        hold_s: float,
        faults: FaultLog,
        seed: int,
        acquire_timeout_s: float = 2.0,
    ) -> None:
        if rate_per_s <= 0 or hold_s <= 0:
            raise ValueError("GalleryLocker needs rate_per_s > 0 and hold_s > 0")
        self.path, self.rate, self.hold_s, self.faults = str(path), rate_per_s, hold_s, faults
        self.acquire_timeout_s = acquire_timeout_s
        self._rng = np.random.default_rng([seed, 303])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-gallery-locker", daemon=True)
        self.held_s = 0.0

    def start(self) -> GalleryLocker:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.hold_s + self.acquire_timeout_s + 5.0)

    def __enter__(self) -> GalleryLocker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(float(self._rng.exponential(1.0 / self.rate))):
            conn = sqlite3.connect(self.path, timeout=self.acquire_timeout_s, isolation_level=None)
            try:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError:
                    self.faults.add("lock_missed")
                    continue
                self.faults.add("lock")
                started = time.monotonic()
                self._stop.wait(self.hold_s)
                conn.execute("ROLLBACK")
                self.held_s += time.monotonic() - started
            finally:
                conn.close()


def event_failure_counter(faults: FaultLog) -> Callable[[GalleryError], None]:
    """The door loop's ``on_event_error`` hook: count every failed event write (``lock_hit`` for a locked gallery,
    ``event_write_failed`` for any other gallery error); the loop keeps the event queued and must ride it out."""

    def count(exc: GalleryError) -> None:
        faults.add("lock_hit" if isinstance(exc, GalleryLockedError) else "event_write_failed")

    return count


# -- the process -----------------------------------------------------------------------------------------------------


def rss_kb(pid: int | str = "self") -> int | None:
    """VmRSS of a process in kB (``/proc/<pid>/status``); None when it is gone or not Linux."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def fd_count(pid: int | str = "self") -> int | None:
    """Open file descriptors of a process (``/proc/<pid>/fd``); None when it is gone or unreadable."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


# -- the test-sized soak: the real loop in this process, lockstep ------------------------------------------------


@dataclass
class InProcessSoak:
    """What one in-process soak saw: the loop's stats, the camera's counters, every decision and relay switch, the
    faults by kind, and memory and file descriptors (before/after warm-up, at the end)."""

    stats: LoopStats
    camera: dict[str, Any]
    decisions: list[tuple[Decision, str]]
    timeline: list[tuple[float, str, str]]
    unlocked_at_end: bool
    faults: dict[str, int]
    exceptions_raised: int
    source_reads: int
    source_ended: bool
    stamps: dict[float, int]
    events_recorded: int
    events_dropped: int  # the loop's own count of events it gave up on (backlog full)
    rss_kb: dict[str, int | None]
    fds: dict[str, int | None]
    wall_s: float
    stopped_by_guard: bool


def soak_inprocess(
    pipeline: Pipeline,
    gallery: Gallery,
    cfg: Config,
    inner: FrameSource,
    plan: FaultPlan,
    *,
    seed: int = 0,
    warmup_frames: int = 300,
    window: tuple[int, int | None] = (0, None),
    guard_s: float = 600.0,
) -> InProcessSoak:
    """Run ``inner`` (a finite replay) through the real ``DoorLoop`` in lockstep with every fault of ``plan``.

    Wired as ``tools.measure.replay_bench.run_replay`` does (camera and loop on a media clock) but the simulated door
    runs on the real clock, so its timeline shows real pulse lengths. RSS is sampled after ``warmup_frames`` frames and
    when the loop returns; file descriptors before anything is opened and after everything is closed. After the run
    the locker stops and the loop's queued events are flushed, so every decision is either in the events table or
    counted in ``events_dropped``. ``guard_s``
    stops a loop that never ends (``stopped_by_guard``)."""
    if cfg.door.driver != "simulated":
        raise ValueError("the in-process soak needs door.driver: simulated")
    faults = FaultLog()
    clock = SoakClock(inner.fps or cfg.camera.fps or 10.0)
    rss: dict[str, int | None] = {"warm": None, "end": None}

    def sample(n: int) -> None:
        if n == warmup_frames:
            rss["warm"] = rss_kb()

    fds_before = fd_count()
    events_before = len(gallery.events())
    source = FaultySource(
        inner, plan, faults, seed=seed, clock=clock, window=window, record_stamps=True, on_frame=sample
    )
    injector = ExceptionInjector(
        plan,
        faults,
        seed=seed,
        burst_len=plan.burst_len or cfg.safety.max_frame_errors,
        hang_s=plan.hang_s or cfg.safety.watchdog_s + HANG_MARGIN_S,
    )
    camera = Camera(source, cfg.camera, clock=clock)
    door = open_door(cfg.door, clock=time.monotonic)
    assert isinstance(door, SimulatedDoor)
    decisions: list[tuple[Decision, str]] = []
    guard_fired = threading.Event()
    hold = plan.lock_hold_s or cfg.gallery.busy_timeout_s * LOCK_HOLD_FACTOR
    locker = (
        GalleryLocker(gallery.path, rate_per_s=plan.lock, hold_s=hold, faults=faults, seed=seed) if plan.lock else None
    )
    t0 = time.perf_counter()
    try:
        loop = DoorLoop(
            flaky_pipeline(pipeline, injector),
            gallery,
            camera,
            door,
            notifier=Notifier(address=""),
            clock=clock,
            on_decision=lambda d, action: decisions.append((d, action)),
            on_event_error=event_failure_counter(faults),
        )

        def stop_by_guard() -> None:
            guard_fired.set()
            loop.stop()

        guard = threading.Timer(guard_s, stop_by_guard)
        guard.daemon = True
        camera.start()
        door.off()
        if locker is not None:
            locker.start()
        guard.start()
        try:
            stats = loop.run()
        finally:
            guard.cancel()
        rss["end"] = rss_kb()
        cam = camera.status()
        if locker is not None:
            locker.stop()
        loop.flush_events()  # the gallery takes writes again: whatever is still queued must go in now
        events_dropped = loop.events_dropped
    finally:
        if locker is not None:
            locker.stop()
        camera.close()
        door.close()
    wall_s = time.perf_counter() - t0
    recorded = len([e for e in gallery.events()[events_before:] if e["kind"] == "access"])
    return InProcessSoak(
        stats=stats,
        camera=cam,
        decisions=decisions,
        timeline=list(door.timeline),
        unlocked_at_end=door.unlocked,
        faults=faults.snapshot(),
        exceptions_raised=injector.raised,
        source_reads=source.reads,
        source_ended=source.ended,
        stamps=source.stamps,
        events_recorded=recorded,
        events_dropped=events_dropped,
        rss_kb=rss,
        fds={"before": fds_before, "after": fd_count()},
        wall_s=wall_s,
        stopped_by_guard=guard_fired.is_set(),
    )


# -- the soak of hours: setup, child, parent ------------------------------------------------------------------------


def soak_config(base: Config, workdir: Path, fps: float) -> Config:
    """``base`` (the user's config or the defaults) with the soak's data folder, the looping real-time replay of the
    setup's clip, the simulated door, no snapshots, and liveness off (the clip shows still photos, which the
    active challenge refuses by design: ``kiosk eval-liveness`` measures that)."""
    data = workdir / "data"
    return dataclasses.replace(
        base,
        data_dir=data,
        gallery=dataclasses.replace(base.gallery, path=data / "gallery.db"),
        camera=dataclasses.replace(
            base.camera, source=str(workdir / "clip"), fps=fps, replay_realtime=True, loop_replay=True
        ),
        door=dataclasses.replace(base.door, driver="simulated"),
        events=dataclasses.replace(base.events, snapshots=False),
        liveness=dataclasses.replace(base.liveness, mode="off"),
    )


def setup_main(args: argparse.Namespace) -> int:
    """Enrol the members and write the clip (runs in its own process, so the soak's parent loads no model)."""
    from kiosk.context import Context
    from tools.measure import replay_bench as rb

    workdir: Path = args.workdir
    cfg = soak_config(load_config(args.config), workdir, args.fps)
    labels = rb.data_dir(args.data) / "lfw" / "labels.csv"
    if not labels.is_file():
        print(f"{PROG}: no face data at {labels.parent.parent} (lfw/labels.csv missing): set KIOSK_TEST_DATA or --data",
              file=sys.stderr)  # fmt: skip
        return 2
    by_identity = rb.read_lfw_labels(labels)
    lfw = labels.parent
    clip = workdir / "clip"
    clip.mkdir(parents=True, exist_ok=True)
    import cv2

    with Context(cfg) as ctx:
        ctx.pipeline.warmup()
        enrolment = rb.enrol_members(ctx.pipeline, ctx.gallery, lfw, by_identity, args.members, args.seed)
        strangers = rb.pick_strangers(by_identity, enrolment.attempted, lfw, args.strangers, args.seed)
    probes = rb.order_probes(enrolment.members, strangers, args.seed, None)
    source = rb.ReplaySource(probes, rb.load_photos(probes), rb.ClipSpec(fps=args.fps), args.seed)
    n = 0
    while (image := source.read()) is not None:
        cv2.imwrite(str(clip / f"frame_{n:05d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        n += 1
    meta = {
        "frames": n,
        "fps": args.fps,
        "members": [p.identity for p in enrolment.members],
        "strangers": [p.identity for p in strangers],
        "order": [p.kind for p in probes],
    }
    (workdir / "clip.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print(f"setup: {len(enrolment.members)} members enrolled, {len(strangers)} strangers, {n} frames written")
    return 0


def child_main(args: argparse.Namespace) -> int:
    """One kiosk life: ``run_kiosk`` on the looping clip with the injectors wired in; status to ``args.status``."""
    from kiosk.door.camera import open_source
    from kiosk.door.service import run_kiosk, watchdog_limit
    from kiosk.logs import configure

    cfg = soak_config(load_config(args.config), args.workdir, args.fps)
    configure(args.log_level, cfg.logging.format)
    plan = parse_faults(args.faults)
    faults = FaultLog()
    seed = args.seed

    def open_faulty(spec: str, cam_cfg: CameraConfig) -> FrameSource:
        return FaultySource(open_source(spec, cam_cfg), plan, faults, seed=seed)

    injector = ExceptionInjector(
        plan,
        faults,
        seed=seed,
        burst_len=plan.burst_len or cfg.safety.max_frame_errors,
        hang_s=plan.hang_s or watchdog_limit(cfg) + HANG_MARGIN_S,
    )
    state: dict[str, Any] = {"loop": None, "exit_code": None, "error": None, "started": time.time()}
    stop_writer = threading.Event()
    status_path: Path = args.status

    def write_status() -> None:
        loop: DoorLoop | None = state["loop"]
        stats = loop.stats.as_dict() if loop is not None else {}
        status = {
            "pid": os.getpid(),
            "t": time.time(),
            "started": state["started"],
            "running": loop is not None,
            "frames": stats.get("frames", 0),
            "granted": stats.get("granted", 0),
            "denied": stats.get("denied", 0),
            "door_pulses": stats.get("door_pulses", 0),
            "events_dropped": loop.events_dropped if loop is not None else 0,
            "embeddings": stats.get("embeddings", 0),
            "fps": stats.get("fps"),
            "faults": faults.snapshot(),
            "camera": loop.camera.status() if loop is not None else {},
            "exit_code": state["exit_code"],
            "error": state["error"],
        }
        tmp = status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status) + "\n", encoding="utf-8")
        os.replace(tmp, status_path)

    def writer() -> None:
        while not stop_writer.wait(STATUS_EVERY_S):
            with contextlib.suppress(Exception):  # a status write must never take the kiosk down
                write_status()

    def started(loop: DoorLoop) -> None:
        state["loop"] = loop

    thread = threading.Thread(target=writer, name="soak-status", daemon=True)
    thread.start()
    code = int(ExitCode.OK)
    try:
        # NOTE: the kiosk as `kiosk run` starts it, through run_kiosk's injection points only: the camera source
        # wrapped in FaultySource, the warmed-up pipeline's stages made flaky, failed event writes counted.
        run_kiosk(
            cfg,
            started=started,
            open_source=open_faulty,
            wrap_pipeline=lambda pipeline: flaky_pipeline(pipeline, injector),
            on_event_error=event_failure_counter(faults),
        )
    except KioskError as exc:
        code, state["error"] = int(exc.exit_code), f"{type(exc).__name__}: {exc}"
    except Exception as exc:
        code, state["error"] = int(ExitCode.FAILURE), f"{type(exc).__name__}: {exc}"
    finally:
        stop_writer.set()
        state["exit_code"] = code
        with contextlib.suppress(Exception):
            write_status()
    if state["error"]:
        print(f"soak child: error: {state['error']}", file=sys.stderr)
    return code


@dataclass
class Life:
    """One child process: its number, process, start time, status file, and how it ended."""

    n: int
    proc: subprocess.Popen[bytes]
    started: float
    status_path: Path
    log_path: Path
    exit_code: int | None = None
    ended: float | None = None
    last_status: dict[str, Any] = field(default_factory=dict)

    def status(self) -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            self.last_status = json.loads(self.status_path.read_text(encoding="utf-8"))
        return self.last_status

    def last_error(self) -> str:
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        except OSError:
            return ""
        errors = [ln for ln in lines if "error" in ln.lower() or "critical" in ln.lower()]
        return (errors or lines or [""])[-1][-300:]


def _child_command(args: argparse.Namespace, n: int, status: Path) -> list[str]:
    cmd = [sys.executable, "-m", "tools.measure.soak", "--child", "--workdir", str(args.workdir),
           "--fps", str(args.fps), "--faults", args.faults, "--seed", str(args.seed + n), "--status", str(status),
           "--log-level", args.log_level]  # fmt: skip
    if args.config is not None:
        cmd += ["--config", str(args.config)]
    return cmd


def _spawn(args: argparse.Namespace, n: int) -> Life:
    status = args.workdir / f"status-{n}.json"
    log_path = args.workdir / f"child-{n}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            _child_command(args, n, status), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
    return Life(n, proc, time.monotonic(), status, log_path)


def _stop(life: Life) -> None:
    """SIGTERM (graceful: the kiosk locks and stops), then SIGKILL after STOP_TIMEOUT_S; by PID only."""
    if life.proc.poll() is None:
        life.proc.send_signal(signal.SIGTERM)
        try:
            life.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            life.proc.kill()
            life.proc.wait(10)
    life.exit_code, life.ended = life.proc.returncode, life.ended or time.monotonic()


def _add(total: dict[str, Any], status: Mapping[str, Any]) -> None:
    for key in ("frames", "granted", "denied", "door_pulses", "events_dropped", "embeddings"):
        total[key] = total.get(key, 0) + int(status.get(key) or 0)
    for kind, n in (status.get("faults") or {}).items():
        total["faults"][kind] = total["faults"].get(kind, 0) + int(n)
    cam = status.get("camera") or {}
    for key in ("reconnects", "dropped"):
        total["camera"][key] = total["camera"].get(key, 0) + int(cam.get(key) or 0)


def _totals(lives: Sequence[Life], parent_faults: FaultLog) -> dict[str, Any]:
    total: dict[str, Any] = {"faults": {}, "camera": {}}
    for life in lives:
        _add(total, life.status() if life.exit_code is None else life.last_status)
    for kind, n in parent_faults.snapshot().items():
        total["faults"][kind] = total["faults"].get(kind, 0) + n
    total["faults"] = dict(sorted(total["faults"].items()))
    return total


def _mb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024.0, 1)


def _fault_text(faults: Mapping[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in faults.items()) or "none"


def parent_main(args: argparse.Namespace) -> int:
    """Set up, run children for ``--minutes``, restarting failed ones, print a line per interval; 0 unless setup
    failed (2) or the child crash-looped (1)."""
    started_utc = datetime.now(UTC).isoformat(timespec="seconds")
    keep = args.workdir is not None
    args.workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="kiosk-soak-"))).resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        plan = parse_faults(args.faults)
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    cfg = soak_config(load_config(args.config), args.workdir, args.fps)
    print(f"soak: setting up in {args.workdir} ({args.members} members, {args.strangers} strangers)", flush=True)
    setup_cmd = [sys.executable, "-m", "tools.measure.soak", "--setup", "--workdir", str(args.workdir)]
    setup_cmd += ["--fps", str(args.fps), "--members", str(args.members), "--strangers", str(args.strangers)]
    setup_cmd += ["--seed", str(args.seed)]
    if args.config is not None:
        setup_cmd += ["--config", str(args.config)]
    if args.data is not None:
        setup_cmd += ["--data", str(args.data)]
    done = subprocess.run(setup_cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        print(f"{PROG}: setup failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}", file=sys.stderr)
        return 2
    print(done.stdout.strip(), flush=True)
    parent_faults = FaultLog()
    hold = plan.lock_hold_s or cfg.gallery.busy_timeout_s * LOCK_HOLD_FACTOR
    locker = (
        GalleryLocker(cfg.gallery_path, rate_per_s=plan.lock, hold_s=hold, faults=parent_faults, seed=args.seed)
        if plan.lock
        else None
    )
    print(f"soak: {args.minutes:g} min, faults {plan.as_text()}, lock hold {hold:g} s, fps {args.fps:g}", flush=True)
    lives: list[Life] = []
    samples: list[dict[str, Any]] = []
    restarts: list[dict[str, Any]] = []
    problem: str | None = None
    t0 = time.monotonic()
    deadline = t0 + args.minutes * 60.0
    next_sample = t0 + args.interval
    quick_deaths = 0
    lives.append(_spawn(args, 0))
    if locker is not None:
        locker.start()
    try:
        while True:
            now = time.monotonic()
            life = lives[-1]
            rc = life.proc.poll()
            if rc is not None:
                life.status()
                life.exit_code, life.ended = rc, now
                restarts.append({"at_s": round(now - t0, 1), "child": life.n, "exit_code": rc,
                                 "ran_s": round(now - life.started, 1), "last_error": life.last_error()})  # fmt: skip
                print(f"soak: child {life.n} (pid {life.proc.pid}) exited with {rc} after {now - life.started:.0f} s: "
                      f"{life.last_error()}", flush=True)  # fmt: skip
                if rc == 0:
                    problem = "the child exited 0 before the end (Restart=on-failure would not restart it)"
                    break
                quick_deaths = quick_deaths + 1 if now - life.started < CRASH_LOOP_S else 0
                if quick_deaths >= args.start_limit_burst:
                    problem = f"crash loop: {quick_deaths} children in a row died within {CRASH_LOOP_S:g} s"
                    break
                if now >= deadline:
                    break
                time.sleep(args.restart_delay)
                lives.append(_spawn(args, len(lives)))
                continue
            if now >= next_sample or now >= deadline:
                next_sample += args.interval
                samples.append(_sample(lives, parent_faults, t0))
                print(_line(samples[-1]), flush=True)
            if now >= deadline:
                break
            time.sleep(0.2)
    finally:
        if locker is not None:
            locker.stop()
        for life in lives:
            _stop(life)
            life.status()
    report = _report(args, plan, hold, lives, samples, restarts, parent_faults, problem, started_utc, t0)
    print(_summary(report), flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"  JSON: {args.json}")
    if not keep:
        import shutil

        shutil.rmtree(args.workdir, ignore_errors=True)
    if problem:
        print(f"{PROG}: {problem}", file=sys.stderr)
        return 1
    return 0


def _sample(lives: Sequence[Life], parent_faults: FaultLog, t0: float) -> dict[str, Any]:
    life = lives[-1]
    pid = life.proc.pid
    total = _totals(lives, parent_faults)
    return {
        "elapsed_s": round(time.monotonic() - t0, 1),
        "child": life.n,
        "pid": pid,
        "child_uptime_s": round(time.monotonic() - life.started, 1),
        "child_running": bool(life.last_status.get("running")),  # models warm, loop started: RSS comparable
        "frames": total["frames"],
        "granted": total["granted"],
        "denied": total["denied"],
        "door_pulses": total["door_pulses"],
        "faults": total["faults"],
        "camera": total["camera"],
        "restarts": len(lives) - 1,
        "rss_mb": _mb(rss_kb(pid)),
        "fds": fd_count(pid),
        "fps": (life.last_status or {}).get("fps"),
    }


def _line(s: Mapping[str, Any]) -> str:
    return (
        f"{s['elapsed_s']:7.0f} s | frames {s['frames']:7d} | faults {_fault_text(s['faults'])} | "
        f"restarts {s['restarts']} | child rss {s['rss_mb']} MB fds {s['fds']} | "
        f"decisions {s['granted']} granted {s['denied']} denied"
    )


def _report(
    args: argparse.Namespace,
    plan: FaultPlan,
    hold: float,
    lives: Sequence[Life],
    samples: list[dict[str, Any]],
    restarts: list[dict[str, Any]],
    parent_faults: FaultLog,
    problem: str | None,
    started_utc: str,
    t0: float,
) -> dict[str, Any]:
    total = _totals(lives, parent_faults)
    # NOTE: only samples of a child whose loop was running: one still loading its models is not comparable
    rss = [s for s in samples if s["rss_mb"] is not None and s["child_running"]]
    first, last = (rss[0], rss[-1]) if rss else ({}, {})
    same_child = bool(rss) and first.get("child") == last.get("child")
    drift = None if not rss else round(last["rss_mb"] - first["rss_mb"], 1)
    span_h = (last["elapsed_s"] - first["elapsed_s"]) / 3600.0 if rss else 0.0
    meta: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads((args.workdir / "clip.json").read_text(encoding="utf-8"))
    return {
        "started_utc": started_utc,
        "minutes": args.minutes,
        "elapsed_s": round(time.monotonic() - t0, 1),
        "command": " ".join([PROG, *args.argv]),
        "faults_plan": dataclasses.asdict(plan),
        "lock_hold_s": hold,
        "fps": args.fps,
        "clip": meta,
        "frames": total["frames"],
        "decisions": {"granted": total["granted"], "denied": total["denied"], "door_pulses": total["door_pulses"]},
        "events_dropped": total["events_dropped"],
        "faults": total["faults"],
        "camera": total["camera"],
        "restarts": len(lives) - 1,
        "exits": restarts,
        "rss_mb": {
            "first_interval": first.get("rss_mb"),
            "last_interval": last.get("rss_mb"),
            "drift": drift,
            "drift_per_hour": _per_hour(drift, span_h),
            "same_child": same_child,
            "per_child": _per_child(rss),
        },
        "fds": {"first_interval": first.get("fds"), "last_interval": last.get("fds")},
        "samples": samples,
        "problem": problem,
    }


def _per_hour(drift: float | None, span_h: float) -> float | None:
    # NOTE: a rate from a few minutes is mostly warm-up noise: given only for spans of MIN_RATE_SPAN_S or more
    return round(drift / span_h, 1) if drift is not None and span_h * 3600 >= MIN_RATE_SPAN_S else None


def _per_child(samples: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each child's own RSS drift, first sample vs last (a restart starts a fresh process)."""
    out = []
    for n in sorted({s["child"] for s in samples}):
        mine = [s for s in samples if s["child"] == n]
        first, last = mine[0], mine[-1]
        drift = round(last["rss_mb"] - first["rss_mb"], 1)
        span_s = last["elapsed_s"] - first["elapsed_s"]
        out.append({"child": n, "samples": len(mine), "span_s": round(span_s, 1), "first_mb": first["rss_mb"],
                    "last_mb": last["rss_mb"], "drift_mb": drift, "drift_per_hour": _per_hour(drift, span_s / 3600),
                    "fds_first": first["fds"], "fds_last": last["fds"]})  # fmt: skip
    return out


def _summary(r: Mapping[str, Any]) -> str:
    rss, fds, d = r["rss_mb"], r["fds"], r["decisions"]
    across = "" if rss["same_child"] else " (across a restart: not one process's drift)"
    lines = [
        f"soak: {r['elapsed_s']:.0f} s, {r['frames']} frames, {r['restarts']} restart(s)"
        + (f" exit codes {[e['exit_code'] for e in r['exits']]}" if r["exits"] else ""),
        f"  faults: {_fault_text(r['faults'])}",
        f"  camera reconnects {r['camera'].get('reconnects', 0)}, frames dropped by the camera "
        f"{r['camera'].get('dropped', 0)}",
        f"  decisions: {d['granted']} granted, {d['denied']} denied, {d['door_pulses']} door pulses; events the "
        f"loop gave up on: {r['events_dropped']}",
        f"  child RSS: first interval {rss['first_interval']} MB, last {rss['last_interval']} MB, drift "
        f"{rss['drift']:+} MB"
        + (f" ({rss['drift_per_hour']:+} MB/h)" if rss["drift_per_hour"] is not None else "")
        + across
        if rss["drift"] is not None
        else "  child RSS: no sample",
        f"  child fds: first interval {fds['first_interval']}, last {fds['last_interval']}",
    ]
    lives = [c for c in rss["per_child"] if c["samples"] >= 2]
    if len(lives) > 1 or not rss["same_child"]:
        longest = max(lives, key=lambda c: c["span_s"], default=None)
        if longest is not None:
            lines.append(
                f"  longest-lived child ({longest['child']}, {longest['span_s']:.0f} s sampled): RSS "
                f"{longest['first_mb']} → {longest['last_mb']} MB ({longest['drift_mb']:+} MB), fds "
                f"{longest['fds_first']} → {longest['fds_last']}"
            )
    return "\n".join(lines)


# -- command line ---------------------------------------------------------------------------------------------------


def _faults_arg(text: str) -> str:
    try:
        parse_faults(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Run the kiosk as a child process on a looping replay of LFW photos with camera drops, stalls "
        "and unplugs, a gallery locked by another writer, and exceptions in the models; restart it when it fails; "
        "print frames, faults, restarts and the child's memory and file descriptors every interval.",
        epilog=f"--faults kinds: {', '.join(f.name for f in dataclasses.fields(FaultPlan))}. Rates: drop/stall/unplug "
        "per camera read, exception per model call, burst/hang per frame, lock episodes per second. "
        f"Default: {DEFAULT_FAULTS}. Face data: --data, else $KIOSK_TEST_DATA, else ../shared/data/faces.",
    )
    p.add_argument("--minutes", type=_positive, default=60.0, help="how long to soak (default 60)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the report and every sample as JSON here")
    p.add_argument("--config", type=Path, help="kiosk config YAML to soak (default: the built-in defaults)")
    p.add_argument(
        "--faults", type=_faults_arg, default=DEFAULT_FAULTS, help=f"kind=rate,... (default {DEFAULT_FAULTS})"
    )
    p.add_argument("--interval", type=_positive, default=60.0, help="seconds between report lines (default 60)")
    p.add_argument("--fps", type=_positive, default=10.0, help="replay frame rate (default 10)")
    p.add_argument("--members", type=int, default=4, help="LFW identities to enrol (default 4)")
    p.add_argument("--strangers", type=int, default=8, help="never-enrolled identities in the clip (default 8)")
    p.add_argument("--seed", type=int, default=0, help="people, photos, jitter and faults (default 0)")
    p.add_argument("--restart-delay", type=float, default=1.0, help="seconds before a restart (default 1)")
    p.add_argument(
        "--start-limit-burst",
        type=int,
        default=CRASH_LOOP_RUNS,
        help=f"stop when this many children in a row die within {CRASH_LOOP_S:g} s of starting (default "
        f"{CRASH_LOOP_RUNS}; with bursts or hangs injected at a high rate, raise it)",
    )
    p.add_argument("--workdir", type=Path, help="keep the gallery, clip, logs and status files here (default: temp)")
    p.add_argument("--data", type=Path, help="face data folder (default $KIOSK_TEST_DATA)")
    p.add_argument(
        "--log-level",
        default="WARNING",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="the child's kiosk log level (default WARNING); its log is child-N.log in the workdir",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--setup", action="store_true", help=argparse.SUPPRESS)
    mode.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--status", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if (args.setup or args.child) and args.workdir is None:
        p.error("--setup and --child need --workdir")
    if args.child and args.status is None:
        p.error("--child needs --status")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.setup:
        return setup_main(args)
    if args.child:
        return child_main(args)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
