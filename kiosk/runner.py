"""``kiosk run``: start in order — config, logging, gallery, models (warm-up), camera, relay (off) — run the door
loop, and stop in reverse on SIGTERM/SIGINT, the end of a replay, or any error. The relay is forced off in
``finally`` whatever happened."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .capture import Camera, open_source
from .config import Config
from .context import Context
from .decide import Decision
from .door import Door, open_door
from .loop import DoorLoop, LoopStats
from .notify import Notifier
from .snapshots import SnapshotStore

log = logging.getLogger("kiosk.run")


@contextlib.contextmanager
def _signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGTERM/SIGINT stop the loop gracefully (only possible from the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _quiet_native_logs() -> None:
    """OpenCV prints a WARN line on every failed reconnect attempt; for months of unattended running the journal
    gets our own one line per outage instead (capture.py logs the transitions)."""
    import cv2

    with contextlib.suppress(AttributeError):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def run_kiosk(
    cfg: Config,
    *,
    source: str | None = None,
    realtime: bool | None = None,
    max_frames: int | None = None,
    door: Door | None = None,
    pin_factory: object | None = None,
    notifier: Notifier | None = None,
    on_decision: Callable[[Decision, str], None] | None = None,
    on_prompt: Callable[[int, str], None] | None = None,
    started: Callable[[DoorLoop], None] | None = None,
) -> LoopStats:
    """Build everything from ``cfg`` (tests inject ``door``/``pin_factory``), run the loop, tear down in reverse."""
    t0 = time.monotonic()
    _quiet_native_logs()
    notifier = notifier or Notifier()
    cam_cfg = cfg.camera if realtime is None else dataclasses.replace(cfg.camera, replay_realtime=realtime)
    door_events: queue.SimpleQueue[tuple[str, dict[str, Any]]] = queue.SimpleQueue()
    relay: Door | None = door
    try:
        with contextlib.ExitStack() as stack:
            ctx = stack.enter_context(Context(cfg))
            gallery = ctx.gallery
            pipeline = ctx.pipeline
            pipeline.warmup()
            liveness = ctx.liveness  # loaded (and hash-checked) at start: a missing liveness model stops here
            stale = ctx.stale_warning()
            if stale:
                log.warning(stale)
            camera = Camera(open_source(source or cam_cfg.source, cam_cfg), cam_cfg)
            stack.callback(camera.close)
            camera.start()
            if relay is None:
                relay = open_door(cfg.door, pin_factory=pin_factory, on_event=lambda k, d: door_events.put((k, d)))
            stack.callback(relay.close)
            relay.off()
            snapshots = None
            if cfg.events.snapshots:
                snapshots = SnapshotStore(
                    cfg.snapshot_dir,
                    max_bytes=int(cfg.events.snapshot_max_mb * 1e6),
                    max_age_s=cfg.events.snapshot_max_age_days * 86400.0,
                )
            loop = DoorLoop(
                pipeline,
                gallery,
                camera,
                relay,
                notifier=notifier,
                snapshots=snapshots,
                on_decision=on_decision,
                door_events=door_events,
                liveness=liveness,
                on_prompt=on_prompt,
            )
            log.info("kiosk ready in %.1f s (models warm, camera started, relay off)", time.monotonic() - t0)
            if started is not None:
                started(loop)
            with _signals(loop.stop):
                stats = loop.run(max_frames=max_frames)
            log.info("kiosk stopping: %s", stats.as_dict())
            return stats
    finally:
        # NOTE: fail secure — whatever raised above, the door is locked before the process goes on.
        if relay is not None:
            with contextlib.suppress(Exception):
                relay.off()
        notifier.stopping()
        notifier.close()
