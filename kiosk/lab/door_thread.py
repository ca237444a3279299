"""The real door loop in a thread, on scripted camera frames: for the door screen's end-to-end test, its screenshots
and ``tools.measure.screen_latency``.

``LoopThread`` runs ``kiosk.door.service.run_kiosk`` (what ``kiosk run`` runs: relay, models, gallery, the screen's
sockets when ``screen.enabled``) with ``kiosk.testing.ScriptedSource`` as a live camera playing frames in a loop.
``astronaut_door`` makes a throwaway door that knows the astronaut (``kiosk demo``'s enrolment and blink frames).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from kiosk.config import CameraConfig, Config, parse_config
from kiosk.door.camera import FrameSource
from kiosk.door.decide import Decision
from kiosk.door.loop import DoorLoop, LoopStats
from kiosk.errors import KioskError
from kiosk.testing import ScriptedSource


class LoopThread:
    """``kiosk.door.service.run_kiosk`` (the door loop of ``kiosk run``) in a thread, on scripted camera frames played
    in a loop as a live camera. ``stop()`` ends it and re-raises what it raised."""

    def __init__(
        self, cfg: Config, frames: list[np.ndarray] | None = None, frame_s: float = 0.05, **run_kwargs: Any
    ) -> None:
        """``frames`` None: the camera is ``cfg.camera.source``; ``run_kwargs`` go to ``run_kiosk`` (its
        ``on_decision`` is called after this thread records the decision)."""
        self.cfg, self.frames, self.frame_s = cfg, frames, frame_s
        self._on_decision: Callable[[Decision, str], None] | None = run_kwargs.pop("on_decision", None)
        self.run_kwargs = run_kwargs
        self.loop: DoorLoop | None = None
        self.stats: LoopStats | None = None
        self.started = threading.Event()
        self.error: BaseException | None = None
        self.decisions: list[tuple[str, str | None]] = []
        self.decided_at: list[float] = []  # time.time() of each decision, as the loop acted on it
        self.thread = threading.Thread(target=self._run, name="door-loop", daemon=True)

    def _open(self, _spec: str, _cam: CameraConfig) -> FrameSource:
        assert self.frames is not None
        return ScriptedSource(itertools.cycle(self.frames), live=True, read_delay_s=self.frame_s)

    def _started(self, loop: DoorLoop) -> None:
        self.loop = loop
        self.started.set()

    def _decided(self, d: Decision, _door: str) -> None:
        self.decided_at.append(time.time())
        self.decisions.append((d.outcome, d.name))
        if self._on_decision is not None:
            self._on_decision(d, _door)

    def _run(self) -> None:
        from kiosk.door.service import run_kiosk

        kwargs = dict(self.run_kwargs)
        if self.frames is not None:
            kwargs["open_source"] = self._open
        try:
            self.stats = run_kiosk(self.cfg, started=self._started, on_decision=self._decided, **kwargs)
        except BaseException as exc:
            self.error = exc
        finally:
            self.started.set()

    def start(self) -> LoopThread:
        self.thread.start()
        if not self.started.wait(120):
            raise KioskError("the door loop did not start within 120 s")
        if self.error is not None:
            raise self.error
        return self

    def stop(self) -> LoopStats:
        """End the loop; its figures (re-raises what it raised)."""
        if self.loop is not None:
            self.loop.stop()
        self.thread.join(60)
        if self.thread.is_alive():
            raise KioskError("the door loop did not end within 60 s of stop()")
        if self.error is not None:
            raise self.error
        assert self.stats is not None
        return self.stats


@dataclass
class AstronautDoor:
    """A throwaway door that knows the astronaut, and camera frames to show it."""

    cfg: Config
    blinking: list[np.ndarray]  # the astronaut at the door, blinking once
    held: list[np.ndarray]  # the astronaut's photo held still before the camera (never blinks)
    stranger: list[np.ndarray]  # the cameraman, not enrolled
    empty: list[np.ndarray]  # nobody at the door


def astronaut_door(root: Path, runtime_dir: Path, *, liveness: str = "active", **screen: Any) -> AstronautDoor:
    """Enrol the astronaut from one crop in a gallery under ``root`` (as ``kiosk demo`` does) for a door with the
    screen's sockets in ``runtime_dir``, a simulated relay and, with ``liveness="active"``, a blink challenge."""
    from kiosk.context import Context
    from kiosk.enroll import enroll
    from kiosk.lab.demo import _astronaut_frames, _canvas, _paste, skimage_image

    cfg = parse_config(
        {
            "data_dir": str(root),
            "gallery": {"path": str(root / "gallery.db"), "encrypt": False},
            "door": {"driver": "simulated", "pulse_s": 0.2},
            "liveness": {"mode": liveness, "active": {"timeout_s": 4.0, "challenges": ["blink"], "steps": 1}},
            "screen": {"runtime_dir": str(runtime_dir), **screen},
        }
    )
    photo = skimage_image("astronaut")[20:260, 120:360]
    cv2.imwrite(str(root / "astronaut.png"), photo)
    with Context(cfg) as ctx:
        enroll(ctx.pipeline, ctx.gallery, "Eileen Collins", [root / "astronaut.png"])
        held, blinking = _astronaut_frames(ctx, photo)
    cameraman = skimage_image("camera")
    stranger = [_paste(_canvas(), cameraman, 380, 320 + 2 * (i % 4), 240, 1.0) for i in range(12)]
    return AstronautDoor(cfg, blinking, held, stranger, [_canvas(120) for _ in range(4)])
