"""``kiosk run``: start in order — relay (driven off first), config, gallery, models (warm-up), camera — run the
door loop under the internal watchdog, and stop in reverse on a signal, the end of a replay, or any error.

Fail secure on every path: the relay is forced off on every exception (``finally``), on SIGTERM/SIGINT/SIGHUP/SIGQUIT
(handled: relay off, graceful stop), when another thread dies of an uncaught exception (``threading.excepthook``:
relay off, the loop stops and ``run_kiosk`` raises), at interpreter exit (``atexit``, a last resort), and when the
loop stalls (``kiosk.door.watchdog``: relay off, ``os._exit(WATCHDOG)``). What no process can catch — SIGKILL, SIGABRT
from native code, a power cut — is covered by the relay driver's own off-timer only while the process lives, then by
systemd's ``ExecStopPost=kiosk door off`` and by every start driving the relay off first; ``faulthandler`` writes
the Python stacks of a fatal signal to the journal.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import faulthandler
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from kiosk.config import CameraConfig, Config
from kiosk.context import Context
from kiosk.door.camera import Camera, FrameSource, open_source
from kiosk.door.decide import Decision
from kiosk.door.loop import DoorLoop, LoopStats
from kiosk.door.notify import Notifier
from kiosk.door.relay import Door, open_door
from kiosk.door.snapshots import SnapshotStore
from kiosk.door.watchdog import Watchdog
from kiosk.errors import GalleryError, KioskError, ScreenError
from kiosk.recognition.pipeline import Pipeline

log = logging.getLogger("kiosk.run")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
FORCE_OFF_TIMEOUT_S = 1.0


class ThreadCrashedError(KioskError):
    """A thread of the kiosk died of an uncaught exception; the loop was stopped with the relay off (exit 1)."""


def watchdog_limit(cfg: Config) -> float:
    """``safety.watchdog_s``. Nothing in the loop waits longer than a fraction of it: event writes to a locked
    gallery wait ``kiosk.door.loop.EVENT_WRITE_WAIT_S`` and are retried later, the camera read ``frame_timeout_s``."""
    return cfg.safety.watchdog_s


@contextlib.contextmanager
def _signals(stop: Callable[[], None], relay: Door) -> Iterator[None]:
    """SIGTERM/SIGINT/SIGHUP/SIGQUIT lock the door at once and stop the loop gracefully (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        # NOTE: runs in the main thread, maybe in the middle of relay.pulse(): force_off() gets the relay's RLock at
        # once there, and pulse() notices the newer generation and locks again after its own write.
        relay.force_off(FORCE_OFF_TIMEOUT_S)
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop()

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


_exit_relays: list[Door] = []  # the relays of the loops running now, locked by _lock_at_exit
_exit_hook_registered = False


def _lock_at_exit() -> None:
    for relay in list(_exit_relays):
        relay.force_off(FORCE_OFF_TIMEOUT_S)


def _register_exit_hook() -> None:
    """Once per process. ``threading._register_atexit`` runs at interpreter exit *before* the non-daemon threads are
    joined — the door's off-timer is one, so a plain ``atexit`` hook would only run after the pulse had ended by
    itself; ``atexit`` is the fallback where that private hook is missing."""
    global _exit_hook_registered
    if _exit_hook_registered:
        return
    register: Callable[[Callable[[], None]], None] | None = getattr(threading, "_register_atexit", None)
    try:
        if register is None:
            raise RuntimeError("threading._register_atexit is missing")
        register(_lock_at_exit)
    except RuntimeError:
        atexit.register(_lock_at_exit)
    _exit_hook_registered = True


@contextlib.contextmanager
def _fail_secure_hooks(relay: Door, stop: Callable[[], None], crashed: list[str]) -> Iterator[None]:
    """While the loop runs: an uncaught exception in any other thread locks the door and stops the loop; interpreter
    exit locks it as a last resort (without waiting for the off-timer); fatal signals dump the Python stacks."""
    previous_hook = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "?"
        what = f"{args.exc_type.__name__}: {' '.join(str(args.exc_value).split())[:200]}"
        relay.force_off(FORCE_OFF_TIMEOUT_S)
        log.critical("thread %r died (%s): relay off, stopping the door loop", name, what)
        crashed.append(f"thread {name!r} died ({what})")
        stop()

    enabled_faulthandler = False
    if not faulthandler.is_enabled():
        with contextlib.suppress(Exception):  # no usable stderr (closed, not a file): nothing to dump to
            faulthandler.enable()
            enabled_faulthandler = True
    threading.excepthook = hook
    _register_exit_hook()
    _exit_relays.append(relay)
    try:
        yield
    finally:
        threading.excepthook = previous_hook
        _exit_relays.remove(relay)
        if enabled_faulthandler:
            faulthandler.disable()


def _quiet_native_logs() -> None:
    """OpenCV prints a WARN line on every failed reconnect attempt; for months of unattended running the journal
    gets our own one line per outage instead (capture.py logs the transitions)."""
    import cv2

    with contextlib.suppress(AttributeError):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def _door_id(cfg: Config) -> str:
    """This door's id in access rules and events: its fleet id, else ``door``."""
    if cfg.fleet.enabled and cfg.fleet.credentials_file is not None:
        from kiosk.fleet.secrets import read_bundle

        return read_bundle(cfg.fleet.credentials_file.expanduser()).door
    return "door"


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
    open_source: Callable[[str, CameraConfig], FrameSource] = open_source,
    wrap_pipeline: Callable[[Pipeline], Pipeline] | None = None,
    on_event_error: Callable[[GalleryError], None] | None = None,
    screen_options: dict[str, Any] | None = None,
) -> LoopStats:
    """Build everything from ``cfg`` (tests inject ``door``/``pin_factory``), run the loop, tear down in reverse.

    Injection points for tests and the soak (the defaults are ``kiosk run``'s own behaviour): ``open_source(spec,
    camera_cfg)`` makes the camera's source (default: ``kiosk.door.camera.open_source``);
    ``wrap_pipeline(pipeline)`` is given the loaded, warmed-up pipeline and returns the one the loop runs (say, one
    whose stages are ``kiosk.testing.FlakyStage`` wrappers); ``on_event_error`` goes to ``DoorLoop``: it is called
    with each failed event write. With ``screen.enabled`` the loop's sockets (``kiosk.screen``) are served from
    before the models load (service ``starting``) until the end (``stopping``); ``screen_options`` go to
    ``LoopScreen`` (a test's ``authorize=``/``credentials=``)."""
    t0 = time.monotonic()
    _quiet_native_logs()
    notifier = notifier or Notifier()
    cam_cfg = cfg.camera if realtime is None else dataclasses.replace(cfg.camera, replay_realtime=realtime)
    door_events: queue.SimpleQueue[tuple[str, dict[str, Any]]] = queue.SimpleQueue()
    relay: Door | None = door
    crashed: list[str] = []
    try:
        with contextlib.ExitStack() as stack:
            # NOTE: the relay first: whatever a crashed run left on it is driven off before anything slow or fallible
            # (models, gallery checks, camera) runs, and it stays owned, and off, until the process ends.
            if relay is None:
                relay = open_door(cfg.door, pin_factory=pin_factory, on_event=lambda k, d: door_events.put((k, d)))
            stack.callback(relay.close)
            relay.off()
            screen = None
            if cfg.screen.enabled:
                from kiosk.screen.loop import LoopScreen

                # NOTE: the screen stops before the relay closes (reverse order); it never holds the loop. A screen
                # that cannot start is logged and the door runs without it: the door is what must not stop.
                try:
                    screen = LoopScreen(cfg, **(screen_options or {})).start()
                except ScreenError as exc:
                    log.error("%s; the door runs without its screen", exc)
                else:
                    stack.callback(screen.close)
            ctx = stack.enter_context(Context(cfg))
            gallery = ctx.gallery
            pipeline = ctx.pipeline
            pipeline.warmup()
            if wrap_pipeline is not None:
                pipeline = wrap_pipeline(pipeline)
            liveness = ctx.liveness  # loaded (and hash-checked) at start: a missing liveness model stops here
            stale = ctx.stale_warning()
            if stale:
                log.warning(stale)
            camera = Camera(open_source(source or cam_cfg.source, cam_cfg), cam_cfg)
            stack.callback(camera.close)
            camera.start()
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
                on_event_error=on_event_error,
                screen=screen,
                door_id=_door_id(cfg),
            )
            if cfg.fleet.enabled:  # the replica is written by the fleet agent (`kiosk fleet run`), a process of its own
                from kiosk.fleet.service import FleetState

                loop.fleet = FleetState(cfg, gallery)
            limit = watchdog_limit(cfg)
            log.info("kiosk ready in %.1f s (models warm, camera started, relay off)", time.monotonic() - t0)
            if started is not None:
                started(loop)
            with (
                _fail_secure_hooks(relay, loop.stop, crashed),
                _signals(loop.stop, relay),
                Watchdog(lambda: loop.heartbeat, relay, limit, notifier=notifier),
            ):
                try:
                    stats = loop.run(max_frames=max_frames)
                finally:
                    if screen is not None:
                        screen.set_service("stopping")
            if crashed:
                raise ThreadCrashedError(f"{crashed[0]}; the door loop was stopped with the relay off")
            log.info("kiosk stopping: %s", stats.as_dict())
            return stats
    finally:
        # NOTE: fail secure — whatever raised above, the door is locked before the process goes on.
        if relay is not None:
            relay.force_off(FORCE_OFF_TIMEOUT_S)
        notifier.stopping()
        notifier.close()
