"""Spliced presentations: the face that answers a liveness challenge is not the one whose match started it (#15).

Built in memory from the shared data (never written into the project): the live, blinking person of the real blink
recordings (``kiosk.lab.blinks``) and an LFW photo of someone else, pasted so that the kiosk's IoU tracker keeps one
track across the cut. Attack types:

- ``splice_photo_to_live``: the photo of the enrolled person A is held over the live face for the first ``lead_s``;
  then it is pulled away and the live (not enrolled) person blinks. The door must not open for A.
- ``splice_live_to_other``: the live person, enrolled, for ``lead_s``; then the photo of someone else (not enrolled),
  blinking (``kiosk.lab.simulate``), takes their place. The door must not open for the live person.
- ``splice_photo_beside``: A's photo, a little larger than the live face, held beside the live person, who blinks.

A bona fide presentation is the live person, enrolled, blinking: the door must open. ``run_clip`` plays a clip
through the real door loop (``kiosk.lab.bench.lockstep_loop``: the scripted camera, the manual clock, the simulated
door) at the recording's capture times.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from kiosk.context import Context
from kiosk.door.camera import Frame
from kiosk.door.decide import Decision
from kiosk.lab.bench import lockstep_loop
from kiosk.lab.blinks import BlinkVideo
from kiosk.lab.simulate import blink_frames
from kiosk.liveness import Liveness
from kiosk.testing import ManualClock
from kiosk.types import Image

PHOTO_TO_LIVE, LIVE_TO_OTHER, PHOTO_BESIDE = "splice_photo_to_live", "splice_live_to_other", "splice_photo_beside"
SPLICE_TYPES = (PHOTO_TO_LIVE, LIVE_TO_OTHER, PHOTO_BESIDE)
BONA_FIDE = "bona_fide"
Box = Sequence[float] | npt.NDArray[np.floating]


@dataclass(frozen=True)
class Clip:
    """Frames and their capture times; ``claimed`` is whom the door would open for: "photo" (the LFW person) or
    "live" (the recorded person)."""

    kind: str  # BONA_FIDE or one of SPLICE_TYPES
    claimed: str
    frames: list[Image]
    times: list[float]


def paste(frame: Image, photo: Image, photo_box: Box, centre: tuple[float, float], width: float) -> Image:
    """``frame`` with ``photo`` pasted on it, scaled so the face in ``photo_box`` is ``width`` px wide and centred
    on ``centre`` (clipped at the frame's edges): a print held up in front of the camera."""
    x1, y1, x2, y2 = (float(v) for v in photo_box)
    s = width / max(x2 - x1, 1.0)
    scaled = cv2.resize(photo, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
    ox = round(centre[0] - (x1 + x2) / 2.0 * s)
    oy = round(centre[1] - (y1 + y2) / 2.0 * s)
    out = frame.copy()
    h, w = out.shape[:2]
    fx1, fy1 = max(ox, 0), max(oy, 0)
    fx2, fy2 = min(ox + scaled.shape[1], w), min(oy + scaled.shape[0], h)
    if fx2 > fx1 and fy2 > fy1:
        out[fy1:fy2, fx1:fx2] = scaled[fy1 - oy : fy2 - oy, fx1 - ox : fx2 - ox]
    return out


def _centre(box: Box) -> tuple[float, float]:
    return (float(box[0]) + float(box[2])) / 2.0, (float(box[1]) + float(box[3])) / 2.0


def _width(box: Box) -> float:
    return float(box[2]) - float(box[0])


def bona_fide(video: BlinkVideo) -> Clip:
    return Clip(BONA_FIDE, "live", list(video.frames), list(video.times))


def photo_to_live(video: BlinkVideo, live_box: Box, photo: Image, photo_box: Box, lead: int) -> Clip:
    """The photo over the live face for the first ``lead`` frames, then the live face."""
    frames = [
        paste(f, photo, photo_box, _centre(live_box), _width(live_box)) if i < lead else f
        for i, f in enumerate(video.frames)
    ]
    return Clip(PHOTO_TO_LIVE, "photo", frames, list(video.times))


def live_to_other(
    video: BlinkVideo,
    live_box: Box,
    photo: Image,
    photo_box: Box,
    mesh_points: npt.NDArray[np.floating],
    lead: int,
    seed: int = 0,
) -> Clip:
    """The live face for ``lead`` frames, then the photo, blinking (simulated), in its place until the end."""
    rest = len(video) - lead
    n_open = max(1, min(15, rest // 2))
    blinking = blink_frames(photo, mesh_points, n_open=n_open, n_closed=3, n_after=max(1, rest - n_open - 5), seed=seed)
    frames = list(video.frames[:lead])
    for k, f in enumerate(video.frames[lead:]):
        frames.append(paste(f, blinking[min(k, len(blinking) - 1)], photo_box, _centre(live_box), _width(live_box)))
    return Clip(LIVE_TO_OTHER, "live", frames, list(video.times))


def photo_beside(video: BlinkVideo, live_box: Box, photo: Image, photo_box: Box, scale: float = 1.15) -> Clip:
    """The photo's face ``scale`` x the live face's width, beside it (on the side with more room), all along."""
    cx, cy = _centre(live_box)
    w = _width(live_box) * scale
    width = video.frames[0].shape[1]
    gap = _width(live_box) / 2.0 + w / 2.0 + 0.15 * w
    x = cx + gap if cx + gap + w / 2.0 <= width else cx - gap
    frames = [paste(f, photo, photo_box, (x, cy), w) for f in video.frames]
    return Clip(PHOTO_BESIDE, "photo", frames, list(video.times))


def run_clip(
    ctx: Context, clip: Clip, liveness: Liveness | None, on_prompt: Callable[[int, str], None] | None = None
) -> tuple[list[Decision], int]:
    """Play ``clip`` through the real door loop at its capture times; (its decisions, door unlocks). ``on_prompt``
    is told of every liveness challenge started (track id, prompt).

    Every track still open at the end is closed as the loop closes them on exit, so an attempt the clip cut off is
    recorded too."""
    clock = ManualClock(start=clip.times[0])
    decisions: list[Decision] = []
    with lockstep_loop(ctx.pipeline, ctx, clock, lambda d, _: decisions.append(d), liveness) as (loop, door):
        loop.on_prompt = on_prompt
        door.off()
        for i, (image, t) in enumerate(zip(clip.frames, clip.times, strict=True)):
            clock.advance_to(t)
            loop.process(Frame(image, i, t))
            door.check()
        for track in loop.tracker.flush():
            if liveness is not None:
                liveness.end(track.id)
            final = loop.decider.end_track(track.id, clock())
            if final is not None:
                decisions.append(final)
        unlocks = sum(what == "unlock" for _, what, _ in door.timeline)
    return decisions, unlocks
