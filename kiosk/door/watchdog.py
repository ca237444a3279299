"""The internal watchdog: a thread that locks the door and ends the process when the frame loop stops making progress.

The loop bumps a heartbeat (``time.monotonic()``, one float assignment) at the start of every iteration, with or
without a frame. When it is older than ``safety.watchdog_s`` (a deadlock, a driver call that never returns, a
stage stuck in native code) the watchdog drives the relay off through the door object (``force_off``: it waits for
the relay lock only briefly, since the stalled thread may hold it, then writes the pin without it), logs one line,
stops systemd notifications, and leaves with ``os._exit(ExitCode.WATCHDOG)``: a stalled thread cannot be unwound,
so nothing else is waited for. systemd then restarts the service (``Restart=on-failure``) after its
``ExecStopPost=kiosk door off``.

systemd's own watchdog (``WatchdogSec=``) is pinged from the loop only, never from here, so it is the second line:
if this thread could not act, the pings stop too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import NoReturn, Protocol

from kiosk.errors import ExitCode

log = logging.getLogger("kiosk.door.watchdog")

FORCE_OFF_LOCK_TIMEOUT_S = 0.5  # how long the watchdog waits for the relay lock before writing the pin without it


class _Relay(Protocol):
    def force_off(self, timeout_s: float = ...) -> bool: ...


class _Silenceable(Protocol):
    def silence(self) -> None: ...


def _exit(code: int) -> NoReturn:
    """Flush what was logged, then end the process now (no atexit, no joins: a stalled thread never returns)."""
    # NOTE: nothing could report a failed flush any more; leaving is what matters
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


class Watchdog:
    """Watches ``heartbeat()`` (a ``time.monotonic()`` timestamp) from its own daemon thread.

    ``on_stall`` is what ends the process (default ``_exit``: flush logs, ``os._exit(ExitCode.WATCHDOG)``); tests
    inject a recorder. A context manager: started on enter, stopped on exit."""

    def __init__(
        self,
        heartbeat: Callable[[], float],
        door: _Relay,
        timeout_s: float,
        *,
        notifier: _Silenceable | None = None,
        on_stall: Callable[[int], object] | None = None,
        poll_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"watchdog timeout must be above 0 s, got {timeout_s!r}")
        self.heartbeat = heartbeat
        self.door = door
        self.timeout_s = float(timeout_s)
        self.notifier = notifier
        self.on_stall = on_stall
        self.poll_s = poll_s if poll_s is not None else min(0.5, self.timeout_s / 5)
        self.clock = clock
        self.fired = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Watchdog:
        if self._thread is None:
            # NOTE: a daemon: the watchdog must never be what keeps a finished process alive.
            self._thread = threading.Thread(target=self._run, name="kiosk-watchdog", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)

    def __enter__(self) -> Watchdog:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def stalled_for(self) -> float:
        return self.clock() - self.heartbeat()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            age = self.stalled_for()
            if age > self.timeout_s and not self._stop.is_set():
                self._fire(age)
                return

    def _fire(self, age: float) -> None:
        self.fired = True
        locked = self.door.force_off(FORCE_OFF_LOCK_TIMEOUT_S)
        if self.notifier is not None:
            self.notifier.silence()  # no STATUS/WATCHDOG/STOPPING from here on: systemd sees the failure as is
        log.critical(
            "watchdog: frame loop made no progress for %.1f s (safety.watchdog_s %g): relay %s, exiting %d (%s)",
            age,
            self.timeout_s,
            "off" if locked else "OFF FAILED",
            int(ExitCode.WATCHDOG),
            ExitCode.WATCHDOG.name,
        )
        (self.on_stall or _exit)(int(ExitCode.WATCHDOG))  # NOTE: looked up now, so tests can patch _exit
