"""Fakes shipped with the package, for tests and the measuring tools alike (as httpx ships its mock transport and
gpiozero its MockFactory): one scripted camera source, one manual clock, one flaky stage.

* ``ScriptedSource``: a ``kiosk.door.camera.FrameSource`` that plays a script of frames, gaps and failures, so the real
  ``Camera`` (reader thread, reconnects, lockstep) runs on it unchanged.
* ``ManualClock``: monotonic time that moves only when told; ``sleep`` advances it, so code that waits (backoff,
  pacing) runs instantly and the waits it asked for are recorded.
* ``FlakyStage``: wraps a pipeline stage (a ``Detector``, an ``Embedder``, ...) and makes one of its methods fail on
  a schedule, every other attribute being the stage's own.

Nothing here touches hardware or models; ``kiosk run`` never imports this module.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, cast

from kiosk.errors import HardwareError
from kiosk.imageio import read_image
from kiosk.types import Image

__all__ = ["FlakyStage", "ManualClock", "ScriptItem", "ScriptedSource"]

ScriptItem = Image | str | Path | BaseException | None
"""One ``read()`` of a ``ScriptedSource``: an image (or an image file to read), ``None`` (no frame now: a stall), or
an exception to raise (the camera failed: unplugged)."""

S = TypeVar("S")


class ManualClock:
    """Monotonic time that moves only when told. Call it for the time (it is a ``Callable[[], float]``, the clock
    type ``Camera``, ``DoorLoop`` and the doors take); ``advance``/``advance_to`` move it; ``sleep`` moves it too and
    records the wait in ``sleeps``, then yields the CPU for ``yield_s`` real seconds (0: not at all) so a thread
    that sleeps in a loop on it does not spin. Never goes backwards; safe to share between threads."""

    def __init__(self, start: float = 0.0, *, yield_s: float = 0.0) -> None:
        self._now = float(start)
        self.yield_s = yield_s
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    @property
    def now(self) -> float:
        return self()

    def advance(self, seconds: float) -> float:
        """Move the clock ``seconds`` forward (0 is allowed); returns the new time."""
        if not seconds >= 0:  # NOTE: also refuses NaN
            raise ValueError(f"a monotonic clock cannot go back: advance({seconds!r})")
        with self._lock:
            self._now += seconds
            return self._now

    def advance_to(self, t: float) -> float:
        """Set the clock to ``t``, which must not be earlier than now (a media clock set from frame numbers)."""
        with self._lock:
            if not t >= self._now:
                raise ValueError(f"a monotonic clock cannot go back: advance_to({t!r}) at {self._now!r}")
            self._now = float(t)
            return self._now

    def sleep(self, seconds: float) -> None:
        """``time.sleep`` on this clock: advance by ``seconds`` at once, and record it."""
        if not seconds >= 0:
            raise ValueError(f"sleep length must be non-negative, got {seconds!r}")
        with self._lock:
            self.sleeps.append(seconds)
            self._now += seconds
        if self.yield_s > 0:
            time.sleep(self.yield_s)


class ScriptedSource:
    """A ``FrameSource`` whose reads follow a script: each ``read()`` takes the next ``ScriptItem`` (an image, an
    image file, ``None`` for no frame now, or an exception to raise, as an unplugged camera's read does).

    ``script`` is either one iterable (a list, a generator, an image sequence), played across reopens as a camera
    that continues where it was, or a callable ``script(n)`` giving the items of the ``n``-th ``open()`` (counted
    from 1, failed opens included), as a camera that starts over on every reconnect. When the items run out,
    ``at_end="end"`` ends the source (``ended``, as a finished replay) and ``"stall"`` returns ``None`` forever;
    the default is ``"end"`` for a replay (``live=False``) and ``"stall"`` for a live camera.

    ``opens`` scripts the ``open()`` calls, in order: ``True`` succeeds, ``False`` raises ``HardwareError("cannot
    open NAME: refused")``, an exception is raised as it is; past its end every open is refused (the camera is gone
    for good). ``None``: every open succeeds. A generator works too, for a camera the test unplugs at will.

    Each ``read()`` first waits ``read_delay_s`` (on ``sleep``), as a camera waiting for its next frame does. Counts
    ``open_calls``, ``close_calls`` and ``frames`` (images delivered). Only the camera's reader thread calls it.
    """

    def __init__(
        self,
        script: Iterable[ScriptItem] | Callable[[int], Iterable[ScriptItem]] = (),
        *,
        name: str = "scripted",
        live: bool = False,
        fps: float | None = None,
        opens: Iterable[bool | BaseException] | None = None,
        at_end: Literal["end", "stall"] | None = None,
        read_delay_s: float = 0.0,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.name, self.live, self.fps = name, live, fps
        self.ended = False
        self.at_end: Literal["end", "stall"] = at_end or ("stall" if live else "end")
        self.read_delay_s, self._sleep = read_delay_s, sleep
        self._script = script
        self._items: Iterator[ScriptItem] | None = None
        self._opens = None if opens is None else iter(opens)
        self.is_open = False
        self.open_calls = self.close_calls = self.frames = 0

    def open(self) -> None:
        self.open_calls += 1
        if self._opens is not None:
            ok = next(self._opens, False)
            if isinstance(ok, BaseException):
                raise ok
            if not ok:
                raise HardwareError(f"cannot open {self.name}: refused")
        if callable(self._script):
            self._items = iter(self._script(self.open_calls))
        elif self._items is None:
            self._items = iter(self._script)
        self.is_open = True

    def read(self) -> Image | None:
        if not self.is_open or self._items is None:
            raise HardwareError(f"{self.name} is not open")
        if self.read_delay_s > 0:
            self._sleep(self.read_delay_s)
        if self.ended:
            return None
        item = next(self._items, _DONE)
        if item is _DONE:
            self.ended = self.at_end == "end"
            return None
        if isinstance(item, BaseException):
            raise item
        if item is None:
            return None
        image = read_image(item) if isinstance(item, (str, Path)) else cast(Image, item)
        self.frames += 1
        return image

    def close(self) -> None:
        """Safe to call twice, and before ``open()``."""
        self.close_calls += 1
        self.is_open = False


_DONE: Any = object()


class FlakyStage(Generic[S]):
    """``stage`` with its ``method`` failing on a schedule; every other attribute is the stage's own (``spec``,
    ``score_threshold``, ...), so ``as_stage()`` can stand in wherever the stage goes (``Pipeline(cfg, detector,
    embedder, template)``).

    ``fail`` is either the call numbers (from 1) that fail, or a callable given each call's number that returns
    whether it fails; the callable may also raise its own error or block (a hang) itself. A failing call raises
    ``error(n)`` (default: ``RuntimeError``, as a bug inside a stage would) without calling the stage. Counts
    ``calls`` and ``failures`` (calls that raised here, the callable's own errors included).
    """

    def __init__(
        self,
        stage: S,
        method: str,
        fail: Collection[int] | Callable[[int], object],
        *,
        error: Callable[[int], BaseException] | None = None,
    ) -> None:
        if not callable(getattr(stage, method, None)):
            raise TypeError(f"{type(stage).__name__} has no method {method!r} to make flaky")
        self.stage, self.method = stage, method
        self._fail = fail
        self._error = error or (lambda n: RuntimeError(f"injected fault in {method} (call {n})"))
        self._lock = threading.Lock()
        self.calls = self.failures = 0

    def as_stage(self) -> S:
        """This wrapper, typed as the stage it wraps (it answers every attribute the stage has)."""
        return cast(S, self)

    def _call(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.calls += 1
            n = self.calls
        try:
            fails = self._fail(n) if callable(self._fail) else n in self._fail
        except BaseException:
            self._failed()
            raise
        if fails:
            self._failed()
            raise self._error(n)
        return getattr(self.stage, self.method)(*args, **kwargs)

    def _failed(self) -> None:
        with self._lock:
            self.failures += 1

    def __getattr__(self, name: str) -> Any:
        # NOTE: only reached for names this wrapper does not have itself; private names are never forwarded, so a
        # half-built wrapper (copy, pickle) fails cleanly instead of recursing.
        if name.startswith("_") or "stage" not in vars(self):
            raise AttributeError(name)
        if name == self.method:
            return self._call
        return getattr(self.stage, name)

    def __repr__(self) -> str:
        return f"FlakyStage({self.stage!r}, {self.method!r}, calls={self.calls}, failures={self.failures})"
