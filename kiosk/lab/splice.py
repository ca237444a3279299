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
door) at the recording's capture times; ``score_splices`` builds one presentation of each kind around every labelled
blink of the recordings and scores it for ``kiosk eval-liveness --splice``: 1 when the door opened for the claimed
person, else 0.
"""

from __future__ import annotations

import csv
import random
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from kiosk.context import Context
from kiosk.door.camera import Frame
from kiosk.door.decide import IDENTITY_CHANGED, Decision
from kiosk.enroll import enroll
from kiosk.errors import KioskError
from kiosk.gallery import Gallery
from kiosk.lab.bench import lockstep_loop
from kiosk.lab.blinks import VIDEOS, BlinkVideo, blinks_dir, load_blink_video
from kiosk.lab.liveness_eval import ATTACK, Presentation, Scored
from kiosk.lab.liveness_eval import BONA_FIDE as BONA_FIDE_LABEL
from kiosk.lab.simulate import blink_frames
from kiosk.liveness import Liveness
from kiosk.recognition.detect import select_faces
from kiosk.recognition.pipeline import Pipeline
from kiosk.testing import ManualClock
from kiosk.types import Image

PHOTO_TO_LIVE, LIVE_TO_OTHER, PHOTO_BESIDE = "splice_photo_to_live", "splice_live_to_other", "splice_photo_beside"
SPLICE_TYPES = (PHOTO_TO_LIVE, LIVE_TO_OTHER, PHOTO_BESIDE)
BONA_FIDE = "bona_fide"
LEAD = 20  # frames of the first face before the cut: 3 votes and the challenge start, then 0.6 s of challenge
BEFORE_S, AFTER_S = 3.0, 0.7  # a presentation: from this long before a labelled blink to this long after it
ENROL_AT = (300, 900, 1500)  # open-eye frames of the *next* recording enrol the live person (another session)
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
    with lockstep_loop(ctx.pipeline, ctx.gallery, clock, lambda d, _: decisions.append(d), liveness) as (loop, door):
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


def _largest(pipeline: Pipeline, image: Image) -> npt.NDArray[np.floating] | None:
    faces = select_faces(pipeline.detect(image), "largest", image.shape)
    return faces[0].box if faces else None


def _collect(into: list[str]) -> Callable[[int, str], None]:
    return lambda _track, prompt: into.append(prompt)


def _lfw_people(faces: Path, n: int, seed: int) -> list[list[Path]]:
    """``n`` LFW people with at least 3 photos (seeded): photos 1-2 enrol them, photo 3 is the one held up."""
    by_person: dict[str, list[str]] = {}
    with (faces / "lfw" / "labels.csv").open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            by_person.setdefault(row["identity"], []).append(row["path"])
    people = sorted(p for p, paths in by_person.items() if len(paths) >= 3)
    random.Random(seed).shuffle(people)
    return [[faces / "lfw" / rel for rel in sorted(by_person[p])[:3]] for p in people[:n]]


def score_splices(
    ctx: Context,
    liveness: Liveness,
    faces: Path,
    *,
    limit: int | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> list[Scored]:
    """One bona fide and one presentation of each of ``SPLICE_TYPES`` around every labelled blink (``limit``: the
    first that many blinks), each run through the real door loop with only the claimed person enrolled (an in-memory
    gallery: the configured one is never touched)."""
    pipeline = ctx.pipeline
    mesh = liveness.active.mesh if liveness.active is not None else None
    with (blinks_dir(faces) / "blinks.csv").open(newline="", encoding="utf-8") as f:
        blinks = list(csv.DictReader(f))[:limit]
    people = _lfw_people(faces, len(blinks), seed)
    out: list[Scored] = []
    line = 0
    with tempfile.TemporaryDirectory(prefix="kiosk-splice-") as tmp:
        # The live person's enrolment photos: frames of another recording, in a temporary folder only.
        live_photos: dict[str, list[Path]] = {}
        for k, name in enumerate(VIDEOS):
            other = VIDEOS[(k + 1) % len(VIDEOS)]
            paths = []
            for i in ENROL_AT:
                paths.append(Path(tmp) / f"{other}_{i}.png")
                cv2.imwrite(str(paths[-1]), load_blink_video(faces, other, start=i, stop=i + 1).frames[0])
            live_photos[name] = paths
        for b, (row, person) in enumerate(zip(blinks, people, strict=True)):
            name = Path(row["video"]).stem
            start_f, end_f = int(row["start_frame"]), int(row["end_frame"])
            first = max(0, start_f - round(BEFORE_S * 30))
            video = load_blink_video(faces, name, start=first, stop=end_f + round(AFTER_S * 30) + 1)
            where = f"{name}.avi@{first}-{first + len(video) - 1}"
            photo = np.asarray(cv2.imread(str(person[2])), dtype=np.uint8)
            live_box, photo_box = _largest(pipeline, video.frames[0]), _largest(pipeline, photo)
            photo_mesh = None
            if photo_box is not None and mesh is not None:
                face = select_faces(pipeline.detect(photo), "largest", photo.shape)[0]
                result = mesh.landmarks(photo, face)
                photo_mesh = result.points if result is not None else None
            photo_name = person[0].parent.name.replace("_", " ")
            for kind in (BONA_FIDE, *SPLICE_TYPES):
                line += 1
                label = BONA_FIDE_LABEL if kind == BONA_FIDE else ATTACK
                what = f"{where}/{kind}" + ("" if kind == BONA_FIDE else f"/{person[2].name}")
                item = Presentation(line, what, label, "" if kind == BONA_FIDE else kind)
                if live_box is None or photo_box is None or (kind == LIVE_TO_OTHER and photo_mesh is None):
                    out.append(Scored(item, None, reason="no face found", frames=len(video)))
                    continue
                if kind == BONA_FIDE:
                    clip = bona_fide(video)
                elif kind == PHOTO_TO_LIVE:
                    clip = photo_to_live(video, live_box, photo, photo_box, LEAD)
                elif kind == LIVE_TO_OTHER:
                    assert photo_mesh is not None
                    clip = live_to_other(video, live_box, photo, photo_box, photo_mesh, LEAD, seed=b)
                else:
                    clip = photo_beside(video, live_box, photo, photo_box)
                claimed, photos = (
                    ("Live Person", live_photos[name]) if clip.claimed == "live" else (photo_name, person[:2])
                )
                with Gallery(":memory:") as gallery:
                    try:
                        enroll(pipeline, gallery, claimed, photos, select="largest")
                    except KioskError as exc:
                        out.append(Scored(item, None, reason=f"enrolment failed: {exc}", frames=len(video)))
                        continue
                    clip_ctx = Context(ctx.cfg, pipeline=pipeline, gallery=gallery, liveness=liveness)
                    prompts: list[str] = []
                    decisions, unlocks = run_clip(clip_ctx, clip, liveness, _collect(prompts))
                opened = any(d.granted and d.name == claimed for d in decisions)
                extra = {
                    "unlocks": unlocks,
                    "challenges": len(prompts),
                    "continuity_restarts": sum(d.reason.startswith(IDENTITY_CHANGED) for d in decisions),
                    "decisions": [f"{d.outcome}: {d.reason}" for d in decisions],
                }
                out.append(Scored(item, 1.0 if opened else 0.0, frames=len(video), faces=len(video), extra=extra))
            if progress is not None:
                progress(b + 1, len(blinks))
    return out
