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
    good: list[ImageVerdict] = []
    rejected: dict[str, int] = {}
    start = clock()
    last_good = -float("inf")
    hint = PROMPTS[0]
    while len(good) < target and clock() - start < timeout_s:
        frame = camera.latest(timeout=0.5)
        if frame is None:
            if camera.status().get("state") == "ended":
                break
            continue
        v = assess_frame(pipeline, frame.image, f"camera frame {frame.index}")
        if not v.accepted:
            hint = plain_reason(v.reason)
            rejected[hint] = rejected.get(hint, 0) + 1
        else:
            yaw, pitch = _pose(v)
            novel = all(
                abs(yaw - y) >= MIN_POSE_CHANGE_DEG or abs(pitch - p) >= MIN_POSE_CHANGE_DEG
                for y, p in map(_pose, good)
            )
            if novel and frame.t - last_good >= MIN_INTERVAL_S:
                good.append(v)
                last_good = frame.t
                hint = PROMPTS[len(good) % len(PROMPTS)] if len(good) < target else "done"
            else:
                hint = PROMPTS[len(good) % len(PROMPTS)]
        bar = "#" * len(good) + "-" * (target - len(good))
        progress(f"[{bar}] {len(good)}/{target}  {hint}")
    return good, rejected
