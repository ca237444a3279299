"""Guided enrolment from a camera: collect several good frames at different head poses, saying why a frame is
rejected (too far, blurred, dark, turned away, two faces) in words a person at the door understands."""

from __future__ import annotations

import time
from collections.abc import Callable

from kiosk.door.camera import Camera
from kiosk.enroll import ImageVerdict, assess_frame
from kiosk.recognition.pipeline import Pipeline

# Prompts cycle while frames are collected; any good frame with a new enough pose counts, so a person who does not
# follow them exactly (or a replayed video) still enrols.
PROMPTS = (
    "look straight at the camera",
    "turn your head a little to the left",
    "turn your head a little to the right",
    "lift your chin a little",
    "lower your chin a little",
)
MIN_POSE_CHANGE_DEG = 4.0
MIN_INTERVAL_S = 0.3

_PLAIN = (
    ("face too small", "too far: come closer"),
    ("too blurry", "blurred: hold still"),
    ("too dark", "too dark: more light on the face"),
    ("too bright", "too bright: avoid light behind or on the camera"),
    ("head turned", "turned away: face the camera"),
    ("head tilted", "turned away: face the camera"),
    ("head rolled", "head tilted sideways: hold it straight"),
    ("faces found", "two faces: only one person in view please"),
    ("no face found", "no face in view"),
)


def plain_reason(reason: str) -> str:
    """The enrolment gate's technical reason, in words for the person in front of the camera."""
    for key, text in _PLAIN:
        if key in reason:
            return text
    return reason


def _pose(v: ImageVerdict) -> tuple[float, float]:
    return v.quality.get("yaw_deg", 0.0), v.quality.get("pitch_deg", 0.0)


class GuidedCollector:
    """The rule of a guided capture, frame by frame: keep a good frame whose pose differs enough from the ones kept
    (and not sooner than ``MIN_INTERVAL_S`` after the last), count rejections by plain reason, say what to do next.
    ``guided_capture`` drives it from a camera; the door loop's capture (kiosk.screen) from its own frames."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.good: list[ImageVerdict] = []
        self.rejected: dict[str, int] = {}
        self.hint = PROMPTS[0]
        self._last_good = -float("inf")

    @property
    def done(self) -> bool:
        return len(self.good) >= self.target

    def offer(self, v: ImageVerdict, t: float) -> str:
        """Judge one assessed frame taken at ``t``; returns the hint for the person (plain words)."""
        if not v.accepted:
            self.hint = plain_reason(v.reason)
            self.rejected[self.hint] = self.rejected.get(self.hint, 0) + 1
            return self.hint
        yaw, pitch = _pose(v)
        novel = all(
            abs(yaw - y) >= MIN_POSE_CHANGE_DEG or abs(pitch - p) >= MIN_POSE_CHANGE_DEG
            for y, p in map(_pose, self.good)
        )
        if novel and t - self._last_good >= MIN_INTERVAL_S:
            self.good.append(v)
            self._last_good = t
            self.hint = PROMPTS[len(self.good) % len(PROMPTS)] if not self.done else "done"
        else:
            self.hint = PROMPTS[len(self.good) % len(PROMPTS)]
        return self.hint


def guided_capture(
    pipeline: Pipeline,
    camera: Camera,
    *,
    target: int = 5,
    timeout_s: float = 60.0,
    progress: Callable[[str], None] = lambda _: None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[list[ImageVerdict], dict[str, int]]:
    """Collect up to ``target`` good, pose-diverse frames; returns them and a count of rejections by reason."""
    collector = GuidedCollector(target)
    start = clock()
    while not collector.done and clock() - start < timeout_s:
        frame = camera.latest(timeout=0.5)
        if frame is None:
            if camera.status().get("state") == "ended":
                break
            continue
        hint = collector.offer(assess_frame(pipeline, frame.image, f"camera frame {frame.index}"), frame.t)
        n = len(collector.good)
        bar = "#" * n + "-" * (target - n)
        progress(f"[{bar}] {n}/{target}  {hint}")
    return collector.good, collector.rejected
