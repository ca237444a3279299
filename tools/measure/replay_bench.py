"""The real door loop measured on a realistic replay of LFW photos: grant rates, false grants, latency, loop speed.

``python -m tools.measure.replay_bench [--members 100 --strangers 300 --seed 0] [--json OUT]`` enrols ``--members`` LFW
identities (each with at least 3 images; alternately from one and from two photos) into a throwaway gallery with the
real ``kiosk.enroll.enroll``, then shows every member one *other* photo of themselves and ``--strangers`` photos of
people never enrolled. Each probe is a ~1 s clip (10 frames at 10 fps) of 640x480 frames — the photo scaled up
1.5-2x on a plain wall with hand-held jitter (a few px, ±3 % scale, ±15 % brightness, some frames mildly blurred or
noisy) — followed by 1.2 s of empty wall so the track ends (``decision.track_max_age_s`` = 1 s). Probes are shuffled
so members and strangers interleave. The frames are synthesised in memory (no photo is copied anywhere) and fed
through ``kiosk.door.camera.Camera`` into ``kiosk.door.loop.DoorLoop`` with the simulated door, exactly as ``kiosk run``
wires them.

Two modes, two questions:

* default, *lockstep* (``camera.replay_realtime = False``): every frame is processed, none dropped, and all times
  are *media* time (frame index / fps) — so the decisions and their latency in frames do not depend on how fast or
  busy this machine is. Answers "does the loop let the right people in, and only them?".
* ``--realtime``: the clips are replayed at their real 10 fps with the real clock, the camera drops frames the loop
  cannot keep up with, and latency is wall-clock from the face appearing to the door pulse. Answers "how long does a
  person wait at this machine?" — the README's decision-latency figure.

Why a media clock: in lockstep the reader thread hands frames over as fast as the loop takes them (much faster than
10 fps), so frames stamped with the real clock would be milliseconds apart, the 1.2 s gaps would shrink below the
tracker's 1 s max age and every clip would merge into one track. ``ReplaySource.media_clock`` is passed to
``Camera``, ``DoorLoop`` and the door instead; ``ReplaySource`` says why the stamps it gives are exactly index/fps.

This is a measuring command, not a test: it prints a table and (``--json``) writes every figure, the configuration,
model hashes, machine and versions. ``tests/test_replay_bench.py`` runs a tiny version of it.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from kiosk.config import Config, DecisionConfig, load_config, parse_config
from kiosk.context import Context
from kiosk.door.camera import Camera, Frame
from kiosk.door.decide import Decider, Decision, Observation
from kiosk.door.loop import DoorLoop
from kiosk.door.notify import Notifier
from kiosk.door.relay import SimulatedDoor, open_door
from kiosk.enroll import enroll
from kiosk.errors import FaceError
from kiosk.gallery import Gallery
from kiosk.imageio import read_image
from kiosk.lab.machine import describe, versions
from kiosk.recognition.match import MatchResult
from kiosk.recognition.pipeline import Pipeline
from kiosk.stats import dist
from kiosk.testing import ManualClock
from kiosk.types import Image
from tools import ROOT

log = logging.getLogger("tools.measure.replay_bench")

ENV_DATA = "KIOSK_TEST_DATA"
PROG = "python -m tools.measure.replay_bench"
W, H = 640, 480
WALL = 110  # grey level of the plain wall behind the person
REALTIME_PROBES = 30
MEMBER, STRANGER = "member", "stranger"


# -- selection and enrolment ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One photo to show at the door: a member's unseen photo, or a stranger's."""

    kind: str  # MEMBER | STRANGER
    identity: str  # LFW identity; members are enrolled under exactly this name
    path: Path  # absolute path of the photo under lfw/
    enrol_photos: int = 0  # members: how many photos enrolment was given (1 or 2)
    templates: int = 0  # members: how many templates enrolment stored


@dataclass
class Enrolment:
    """What enrolment did: the members, every rejected image with its reason, the candidates that failed entirely."""

    members: list[Probe] = field(default_factory=list)
    attempted: set[str] = field(default_factory=set)  # every identity tried as a member (never used as a stranger)
    images_tried: int = 0
    rejected: list[dict[str, str]] = field(default_factory=list)  # {identity, image, reason} of images not stored
    replaced: list[dict[str, str]] = field(default_factory=list)  # {identity, reason} of members nothing enrolled for
    seconds: float = 0.0


def data_dir(override: Path | None) -> Path:
    """The shared face data: ``--data``, else ``$KIOSK_TEST_DATA``, else ``<project>/../shared/data/faces``."""
    if override is not None:
        return override.expanduser().resolve()
    return Path(os.environ.get(ENV_DATA, ROOT / ".." / "shared" / "data" / "faces")).expanduser().resolve()


def read_lfw_labels(labels_csv: Path) -> dict[str, list[str]]:
    """``lfw/labels.csv`` as identity -> image paths relative to ``lfw/`` (sorted, so selection is reproducible)."""
    by_identity: dict[str, list[str]] = {}
    with labels_csv.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            by_identity.setdefault(row["identity"], []).append(row["path"])
    return {k: sorted(v) for k, v in sorted(by_identity.items())}


def _rng(seed: int, *salt: int | str) -> np.random.Generator:
    """A generator that depends only on the seed and the salt (a stable crc32 for strings), never on call order."""
    return np.random.default_rng([seed, *(zlib.crc32(s.encode()) if isinstance(s, str) else s for s in salt)])


def _shuffled(items: Sequence[str], rng: np.random.Generator) -> list[str]:
    return [items[int(i)] for i in rng.permutation(len(items))]


def _reason_kind(reason: str) -> str:
    """A short category for an enrolment rejection reason (the full reasons are kept in the JSON)."""
    for prefix, kind in (
        ("no face", "no face found"),
        ("already enrolled as", "already enrolled as someone else"),
        ("the two images do not look", "the two photos disagree"),
        ("does not look like", "unlike the other photos"),
        ("person already has the maximum", "template cap"),
    ):
        if reason.startswith(prefix):
            return kind
    if "faces found" in reason:
        return "several faces"
    return f"quality: {reason.split(';')[0].split('(')[0].strip()}"


def _failure_reasons(message: str, names: list[str]) -> list[str]:
    """Each image's reason out of enrol's "nothing enrolled for 'X': a.jpg: reason; b.jpg: reason" message."""
    body = message.split("': ", 1)[-1]
    reasons = []
    for i, name in enumerate(names):
        start = body.find(f"{name}: ")
        if start < 0:
            reasons.append(message)
            continue
        start += len(name) + 2
        end = body.find(f"; {names[i + 1]}: ", start) if i + 1 < len(names) else -1
        reasons.append(body[start:] if end < 0 else body[start:end])
    return reasons


def enrol_members(
    pipeline: Pipeline,
    gallery: Gallery,
    lfw: Path,
    by_identity: Mapping[str, list[str]],
    n: int,
    seed: int,
    *,
    select: str | None = None,
) -> Enrolment:
    """Enrol ``n`` members with ``kiosk.enroll.enroll``: slot i uses 1 photo when i is even, 2 when odd.

    Candidates are the identities with at least 3 images, in seeded random order. Each candidate's images are
    shuffled (seeded per identity); the first 1 or 2 are the enrolment photos, the next one is the probe, so the probe
    is never a photo enrolment saw. A candidate for whom nothing could be enrolled is replaced by the next candidate
    in the same slot (same number of photos) and reported, so the members are exactly ``n`` and the one/two-photo
    split stays even; rejected single images of an enrolled member are counted, not hidden. ``select`` is
    ``kiosk enroll --select`` (None, its default, refuses photos with several faces).
    """
    started = time.perf_counter()
    eligible = [identity for identity, paths in by_identity.items() if len(paths) >= 3]
    candidates = iter(_shuffled(eligible, _rng(seed, "members")))
    out = Enrolment()
    for slot in range(n):
        need = 1 if slot % 2 == 0 else 2
        while True:
            identity = next(candidates, None)
            if identity is None:
                raise SystemExit(f"{PROG}: not enough identities with 3+ images for {n} members ({len(eligible)})")
            out.attempted.add(identity)
            photos = _shuffled(by_identity[identity], _rng(seed, "photos", identity))
            paths = [lfw / p for p in photos[:need]]
            out.images_tried += need
            try:
                report = enroll(pipeline, gallery, identity, paths, select=select)
            except FaceError as exc:
                out.replaced.append({"identity": identity, "enrol_photos": str(need), "reason": str(exc)})
                reasons = _failure_reasons(str(exc), [p.name for p in paths])
                out.rejected += [
                    {"identity": identity, "image": p.name, "reason": r} for p, r in zip(paths, reasons, strict=True)
                ]
                continue
            out.rejected += [
                {"identity": identity, "image": v.source, "reason": v.reason} for v in report.verdicts if not v.accepted
            ]
            out.members.append(Probe(MEMBER, identity, lfw / photos[need], enrol_photos=need, templates=report.stored))
            break
    out.seconds = time.perf_counter() - started
    return out


def pick_strangers(
    by_identity: Mapping[str, list[str]], exclude: set[str], lfw: Path, n: int, seed: int
) -> list[Probe]:
    """``n`` identities never tried as members (any number of images), one seeded-random photo each."""
    others = [identity for identity in by_identity if identity not in exclude]
    if len(others) < n:
        raise SystemExit(f"{PROG}: only {len(others)} identities left for {n} strangers")
    chosen = _shuffled(others, _rng(seed, "strangers"))[:n]
    probes = []
    for identity in chosen:
        photos = by_identity[identity]
        pick = photos[int(_rng(seed, "stranger photo", identity).integers(len(photos)))]
        probes.append(Probe(STRANGER, identity, lfw / pick))
    return probes


def order_probes(members: list[Probe], strangers: list[Probe], seed: int, limit: int | None) -> list[Probe]:
    """All probes in seeded random order; with ``limit``, only the first ceil(limit/2) members and limit//2
    strangers of that order (a short realtime run still measures as many grants as denies)."""
    probes = members + strangers
    shuffled = [probes[int(i)] for i in _rng(seed, "order").permutation(len(probes))]
    if limit is None:
        return shuffled
    keep = {MEMBER: math.ceil(limit / 2), STRANGER: limit // 2}
    out = []
    for p in shuffled:
        if keep[p.kind] > 0:
            keep[p.kind] -= 1
            out.append(p)
    return out


# -- the replayed camera -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipSpec:
    """How each probe is filmed: frames of face, frames of empty wall, fps, and the hand-held jitter."""

    fps: float = 10.0
    face_frames: int = 10
    gap_frames: int = 12
    scale: tuple[float, float] = (1.5, 2.0)  # photo magnification, drawn once per clip
    jitter: float = 1.0  # 1 = ±4 px shift, ±3 % scale, ±15 % brightness per frame; 0 = a still photo
    degrade_prob: float = 0.2  # chance per face frame of a mild blur, and independently of sensor noise

    @property
    def frames_per_clip(self) -> int:
        return self.face_frames + self.gap_frames


def wall_frame() -> Image:
    """The empty scene: a plain wall."""
    return np.full((H, W, 3), WALL, np.uint8)


def noise_bank(seed: int, n: int = 8) -> list[npt.NDArray[np.int16]]:
    """``n`` full-frame sensor-noise fields (Gaussian, sigma 2 to 5 grey levels), made once: drawing fresh noise for
    every frame costs ~20 ms, more than detection, and would steal CPU from the loop being measured."""
    rng = _rng(seed, "noise")
    return [
        np.round(rng.standard_normal((H, W, 3), dtype=np.float32) * sigma).astype(np.int16)
        for sigma in np.linspace(2.0, 5.0, n)
    ]


def render_face_frame(
    photo: Image, spec: ClipSpec, seed: int, clip_no: int, k: int, noise: Sequence[npt.NDArray[np.int16]] = ()
) -> Image:
    """Frame ``k`` of clip ``clip_no``: the photo on the wall, as a hand-held camera would see it.

    Clip-level placement (magnification, off-centre position) and per-frame jitter come from generators keyed by
    (seed, clip, frame), so a frame is the same whatever order frames are rendered in and whatever the jitter level.
    Sensor noise, when drawn, is one of the precomputed ``noise`` fields (none when empty).
    """
    clip_rng = _rng(seed, "clip", clip_no)
    base_scale = float(clip_rng.uniform(*spec.scale))
    cx = W / 2 + float(clip_rng.uniform(-60, 60))
    cy = H / 2 + float(clip_rng.uniform(-25, 25))
    rng = _rng(seed, "frame", clip_no, k)
    j = spec.jitter
    scale = base_scale * (1.0 + float(rng.uniform(-0.03, 0.03)) * j)
    dx, dy = (round(float(v) * j) for v in rng.integers(-4, 5, size=2))
    gain = 1.0 + float(rng.uniform(-0.15, 0.15)) * j
    blur, noisy = (bool(v) for v in rng.random(2) < spec.degrade_prob)
    field_no = int(rng.integers(max(len(noise), 1)))
    img = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    canvas = wall_frame()
    h, w = img.shape[:2]
    x, y = round(cx - w / 2) + dx, round(cy - h / 2) + dy
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    canvas[y0:y1, x0:x1] = img[y0 - y : y1 - y, x0 - x : x1 - x]
    frame: Image = np.asarray(cv2.convertScaleAbs(canvas, alpha=gain), dtype=np.uint8)
    if blur:
        frame = np.asarray(cv2.GaussianBlur(frame, (0, 0), sigmaX=float(rng.uniform(0.6, 1.2))), dtype=np.uint8)
    if noisy and noise:
        frame = np.clip(frame.astype(np.int16) + noise[field_no], 0, 255).astype(np.uint8)
    return np.ascontiguousarray(frame)


class ReplaySource:
    """An in-memory ``kiosk.door.camera.FrameSource``: each probe's clip (face frames, then empty wall), rendered on
    demand so memory stays flat (8,800 frames of 640x480 would be 8 GB). Not live: ``Camera`` treats it as a replay.

    ``media_clock`` is a ``kiosk.testing.ManualClock`` that ``read()`` sets to the newest frame's media time,
    index / fps. ``Camera`` stamps a frame with ``clock()`` inside ``_publish``, on its reader thread, right after
    ``read()`` returned that frame and (in lockstep) after the loop took the previous one. The reader reads nothing
    between the two, so the stamp is exactly index/fps. The loop and the door call the same clock from the loop
    thread while the reader may already have read one or two frames further ahead, so *their* ``clock()`` runs up to
    0.2 s ahead of the frame being processed; the loop uses that only for the per-frame processing latency it
    attaches to observations, its status cadence and the time of the final flush, never for a decision (the decider
    works on frame stamps). Door-timeline times are therefore only used for counting and order here.
    """

    live = False

    def __init__(
        self,
        probes: Sequence[Probe],
        photos: Mapping[Path, Image],
        spec: ClipSpec,
        seed: int,
        *,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.name = "replay-bench"
        self.fps: float | None = spec.fps
        self.ended = False
        self.probes, self.photos, self.spec, self.seed = list(probes), photos, spec, seed
        self.total = len(self.probes) * spec.frames_per_clip
        self.produced = 0  # frames returned by read() so far; only the camera's reader thread writes it
        self.media_clock = ManualClock()  # media time of the newest frame read
        self.appeared_at: list[float | None] = [None] * len(self.probes)  # monotonic time each clip's face appeared
        self._wall = wall_frame()
        self._noise = noise_bank(seed)
        self._progress = progress

    def clip_of(self, index: int) -> tuple[int, int] | None:
        """(clip number, frame within the clip) when frame ``index`` shows a face, None on empty wall."""
        clip_no, k = divmod(index, self.spec.frames_per_clip)
        return (clip_no, k) if k < self.spec.face_frames and clip_no < len(self.probes) else None

    def clip_start_s(self, clip_no: int) -> float:
        """Media time of the clip's first face frame."""
        return clip_no * self.spec.frames_per_clip / self.spec.fps

    def open(self) -> None:
        """Nothing to open; a reopen after a (never expected) failure continues where the replay was."""

    def read(self) -> Image | None:
        if self.produced >= self.total:
            self.ended = True
            return None
        index = self.produced
        where = self.clip_of(index)
        if where is None:
            image = self._wall.copy()
        else:
            clip_no, k = where
            photo = self.photos[self.probes[clip_no].path]
            image = render_face_frame(photo, self.spec, self.seed, clip_no, k, self._noise)
            if k == 0:
                self.appeared_at[clip_no] = time.monotonic()
                step = max(1, len(self.probes) // 10)
                if self._progress is not None and clip_no % step == 0:
                    self._progress(f"clip {clip_no + 1}/{len(self.probes)} (frame {index}/{self.total})")
        self.produced = index + 1
        self.media_clock.advance_to(index / self.spec.fps)
        return image

    def close(self) -> None:
        """Nothing to release (frames are rendered from photos already in memory)."""


# -- the loop, recorded --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObsRecord:
    """One observation the loop made of a track (a frame with that face), as the decider received it."""

    track_id: int
    first_seen: float
    t: float
    quality_ok: bool
    quality_reasons: tuple[str, ...]
    match: MatchResult | None


@dataclass
class Recorder:
    """Everything the benchmark learns from a run, filled in from the loop thread only."""

    index_of_t: dict[float, int] = field(default_factory=dict)  # frame stamp -> frame index (to attribute tracks)
    stamps: list[tuple[int, float]] = field(default_factory=list)
    frame_ms: list[tuple[int, float]] = field(default_factory=list)
    observations: list[ObsRecord] = field(default_factory=list)
    decisions: list[tuple[Decision, str]] = field(default_factory=list)

    def frame(self, frame: Frame, frame_ms: float) -> None:
        """``DoorLoop``'s ``on_frame``: each frame's index, stamp and processing time (``LoopStats`` keeps only the
        last 200)."""
        self.index_of_t[frame.t] = frame.index
        self.stamps.append((frame.index, frame.t))
        self.frame_ms.append((frame.index, frame_ms))


class RecordingDecider(Decider):
    """The real ``Decider``; it only notes each observation before deciding on it (for per-frame diagnosis)."""

    def __init__(self, cfg: DecisionConfig, recorder: Recorder) -> None:
        super().__init__(cfg)
        self.recorder = recorder

    def observe(self, track_id: int, obs: Observation, first_seen: float) -> Decision | None:
        self.recorder.observations.append(
            ObsRecord(track_id, first_seen, obs.t, obs.quality_ok, obs.quality_reasons, obs.match)
        )
        return super().observe(track_id, obs, first_seen)


@dataclass
class RunResult:
    """One replay through the loop: what it recorded, the loop's own stats, the camera's counters, the door."""

    recorder: Recorder
    stats: dict[str, Any]
    stats_fps: float
    camera: dict[str, Any]
    timeline: list[tuple[float, str, str]]
    wall_s: float


def run_replay(pipeline: Pipeline, gallery: Gallery, cfg: Config, source: ReplaySource, *, realtime: bool) -> RunResult:
    """Wire camera, simulated door and loop as ``kiosk run`` does, run until the replay ends, and tear down.

    Lockstep runs on ``source.media_clock`` (camera, loop and door); ``--realtime`` on ``time.monotonic``. The
    camera's reader thread and the door's off-timers are ended in ``finally`` whatever happens.
    """
    clock: Callable[[], float] = time.monotonic if realtime else source.media_clock
    camera = Camera(source, cfg.camera, clock=clock)
    door = open_door(cfg.door, clock=clock)
    if not isinstance(door, SimulatedDoor):  # pragma: no cover - cfg.door.driver is forced to "simulated"
        door.close()
        raise RuntimeError("the replay bench needs the simulated door")
    recorder = Recorder()
    try:
        # The real DoorLoop (run and process unchanged), observing through RecordingDecider, recording every frame.
        loop = DoorLoop(
            pipeline,
            gallery,
            camera,
            door,
            notifier=Notifier(address=""),  # never talk to systemd, even when NOTIFY_SOCKET is set
            clock=clock,
            on_decision=lambda d, action: recorder.decisions.append((d, action)),
            decider=RecordingDecider(pipeline.cfg.decision, recorder),
            on_frame=recorder.frame,
        )
        camera.start()
        door.off()
        t0 = time.perf_counter()
        stats = loop.run()
        wall_s = time.perf_counter() - t0
        cam = camera.status()
    finally:
        camera.close()
        door.close()
    return RunResult(recorder, stats.as_dict(), stats.fps, cam, list(door.timeline), wall_s)


# -- analysis ------------------------------------------------------------------------------------------------------


def _dist(values: Sequence[float], ndigits: int = 3) -> dict[str, Any]:
    """``kiosk.stats.dist`` (nearest rank: media-time latencies stay whole frames) with the minimum and maximum."""
    d = dist(values, ndigits)
    return {
        "n": d["n"],
        "median": d["median"],
        "p95": d["p95"],
        "min": round(min(values), ndigits) if values else None,
        "max": round(max(values), ndigits) if values else None,
    }


def _rate(n: int, d: int) -> float | None:
    return n / d if d else None


def _decision_dict(d: Decision, door_action: str) -> dict[str, Any]:
    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 4)

    return {
        "outcome": d.outcome,
        "name": d.name,
        "score": r(d.score),
        "runner_up": d.runner_up,
        "runner_up_score": r(d.runner_up_score),
        "threshold": r(d.threshold),
        "frames_used": d.frames_used,
        "reason": d.reason,
        "track_latency_s": round(d.latency_s, 3),
        "door": door_action,
    }


@dataclass
class ClipView:
    """Everything that happened while one probe was on screen (tracks attributed by their first frame)."""

    probe: Probe
    clip_no: int
    decisions: list[tuple[Decision, str]] = field(default_factory=list)
    obs: list[ObsRecord] = field(default_factory=list)

    def outcome(self) -> str:
        """members: granted_self | granted_other | denied | no_decision; strangers: granted | denied | no_decision."""
        grants = [d for d, _ in self.decisions if d.granted]
        if self.probe.kind == MEMBER:
            if any(d.name != self.probe.identity for d in grants):
                return "granted_other"
            if grants:
                return "granted_self"
        elif grants:
            return "granted"
        return "denied" if self.decisions else "no_decision"

    def frame_summary(self) -> dict[str, Any]:
        """Per-frame view: detections, embeddings, quality failures, votes, best scores (for diagnosing failures)."""
        embedded = [o for o in self.obs if o.match is not None]
        votes = [o for o in embedded if o.quality_ok and o.match is not None and o.match.accepted]
        own = [o.match.score for o in embedded if o.match is not None and o.match.candidate == self.probe.identity]
        best = max(embedded, key=lambda o: -2.0 if o.match is None else o.match.score or -2.0, default=None)
        best_match = None if best is None else best.match
        return {
            "frames_detected": len(self.obs),
            "frames_embedded": len(embedded),
            "frames_quality_failed": sum(not o.quality_ok for o in embedded),
            "quality_reasons": dict(Counter(r for o in embedded for r in o.quality_reasons).most_common(3)),
            "votes": len(votes),
            "votes_self": sum(o.match is not None and o.match.name == self.probe.identity for o in votes),
            "best_self_score": max((round(s, 4) for s in own if s is not None), default=None),
            "best_score": None if best_match is None or best_match.score is None else round(best_match.score, 4),
            "best_candidate": None if best_match is None else best_match.candidate,
        }

    def grant_score(self, k: int, *, who: str) -> float | None:
        """The highest threshold at which this clip could still have been granted: the k-th best score of a single
        candidate over the clip's quality-passing frames. ``who``: "self" (the probe's own identity), "other" (anyone
        else) or "any". A what-if that ignores the margin and the sliding window, so it is an upper bound."""
        scores: dict[str, list[float]] = {}
        for o in self.obs:
            m = o.match
            if not (o.quality_ok and m is not None and m.candidate is not None and m.score is not None):
                continue
            mine = m.candidate == self.probe.identity
            if who == "any" or (who == "self") == mine:
                scores.setdefault(m.candidate, []).append(m.score)
        return max((sorted(v, reverse=True)[k - 1] for v in scores.values() if len(v) >= k), default=None)


def attribute(source: ReplaySource, rec: Recorder) -> tuple[list[ClipView], list[Decision]]:
    """Each decision and observation goes to the clip on screen at its track's ``first_seen`` frame; decisions
    whose track began on an empty-wall frame are returned separately (there should be none)."""
    views = [ClipView(p, i) for i, p in enumerate(source.probes)]
    stray: list[Decision] = []

    def view_of(first_seen: float) -> ClipView | None:
        index = rec.index_of_t.get(first_seen)
        where = None if index is None else source.clip_of(index)
        return None if where is None else views[where[0]]

    for d, action in rec.decisions:
        v = view_of(d.first_seen)
        if v is None:
            stray.append(d)
        else:
            v.decisions.append((d, action))
    for o in rec.observations:
        v = view_of(o.first_seen)
        if v is not None:
            v.obs.append(o)
    return views, stray


def _accepted_as(o: ObsRecord, identity: str) -> bool:
    return o.quality_ok and o.match is not None and o.match.accepted and o.match.name == identity


def _population(views: list[ClipView], kind: str, k: int) -> dict[str, Any]:
    """Per-frame figures over all clips of one kind: how often the face was found, embedded, passed quality, voted,
    the best score per clip (members: their own score; strangers: the closest enrolled person) and the k-th best
    (``grant_score``: what a threshold must not exceed for the clip to be granted)."""
    mine = [v for v in views if v.probe.kind == kind]
    obs = [o for v in mine for o in v.obs]
    embedded = [o for o in obs if o.match is not None]
    good = [(o, o.match) for o in embedded if o.quality_ok and o.match is not None]
    accepted = sum(m.accepted for _, m in good)
    below = sum(not m.accepted and m.score is not None and m.score < m.threshold for _, m in good)
    out: dict[str, Any] = {
        "frames_detected": len(obs),
        "frames_embedded": len(embedded),
        "frames_quality_failed": len(embedded) - len(good),
        "quality_fail_reasons": dict(Counter(r for o in embedded if not o.quality_ok for r in o.quality_reasons)),
        "frames_accepted": accepted,
        "frames_below_threshold": below,
        "frames_ambiguous": len(good) - accepted - below,
        "clips_without_detection": sum(not v.obs for v in mine),
    }
    if kind == MEMBER:
        out["frames_accepted_as_self"] = sum(_accepted_as(o, v.probe.identity) for v in mine for o in v.obs)
        own = [v.frame_summary()["best_self_score"] for v in mine]
        out["best_self_score_per_clip"] = _dist([s for s in own if s is not None])
        grant = [v.grant_score(k, who="self") for v in mine]
        out["self_grant_score_per_clip"] = _dist([s for s in grant if s is not None])
    else:
        best = [v.frame_summary()["best_score"] for v in mine]
        out["best_score_per_clip"] = _dist([s for s in best if s is not None])
        grant = [v.grant_score(k, who="any") for v in mine]
        out["grant_score_per_clip"] = _dist([s for s in grant if s is not None])
    return out


SWEEP = (0.36, 0.40, 0.42, 0.44, 0.47, 0.50, 0.55, 0.60)


def threshold_sweep(views: list[ClipView], k: int, current: float) -> list[dict[str, Any]]:
    """What-if per recognition threshold, from the scores this run saw (same frames, same quality gate): members
    who would be let in as themselves, members and strangers who would be let in as someone else. Approximate — it
    ignores the margin and the sliding window (an upper bound on grants) — and meant to show the headroom on either
    side of the threshold in force, not to pick a new one from 400 clips."""
    self_gs = [v.grant_score(k, who="self") for v in views if v.probe.kind == MEMBER]
    other_gs = [v.grant_score(k, who="other") for v in views if v.probe.kind == MEMBER]
    stranger_gs = [v.grant_score(k, who="any") for v in views if v.probe.kind == STRANGER]

    def at(t: float, values: list[float | None]) -> int:
        return sum(v is not None and v >= t for v in values)

    return [
        {
            "threshold": t,
            "in_force": math.isclose(t, current),
            "members_granted_self": at(t, self_gs),
            "members_granted_other": at(t, other_gs),
            "strangers_granted": at(t, stranger_gs),
        }
        for t in sorted({*SWEEP, round(current, 4)})
    ]


def _grant_rates(views: list[ClipView], key: Callable[[Probe], int]) -> dict[str, dict[str, Any]]:
    """Members grouped by ``key`` (photos given, templates stored): shown, granted as themselves, rate."""
    out: dict[str, dict[str, Any]] = {}
    for n in sorted({key(v.probe) for v in views}):
        group = [v for v in views if key(v.probe) == n]
        granted = sum(v.outcome() == "granted_self" for v in group)
        out[str(n)] = {"shown": len(group), "granted_self": granted, "genuine_grant_rate": _rate(granted, len(group))}
    return out


def _members(views: list[ClipView], k: int) -> dict[str, Any]:
    mine = [v for v in views if v.probe.kind == MEMBER]
    outcomes = Counter(v.outcome() for v in mine)
    # A deny first and a grant later in the same clip: the person saw a red light before the door opened.
    deny_then_grant = sum(
        v.outcome() == "granted_self" and v.decisions[0][0].outcome == "denied" for v in mine if v.decisions
    )
    # k votes for themselves in the clip but no grant: the cooldown held it back (possible only after a false grant
    # to them), or the votes were too far apart to fall in one decision window.
    held_back = sum(
        v.outcome() in ("denied", "no_decision") and sum(_accepted_as(o, v.probe.identity) for o in v.obs) >= k
        for v in mine
    )
    return {
        "shown": len(mine),
        "granted_self": outcomes["granted_self"],
        "granted_other": outcomes["granted_other"],
        "denied": outcomes["denied"],
        "no_decision": outcomes["no_decision"],
        "genuine_grant_rate": _rate(outcomes["granted_self"], len(mine)),
        "denied_before_granted": deny_then_grant,
        "enough_votes_but_no_grant": held_back,
        "by_enrol_photos": _grant_rates(mine, lambda p: p.enrol_photos),
        "by_templates_stored": _grant_rates(mine, lambda p: p.templates),
        "enrolled_with_one_template_of_two": sum(v.probe.enrol_photos == 2 and v.probe.templates < 2 for v in mine),
    }


def _strangers(views: list[ClipView]) -> dict[str, Any]:
    mine = [v for v in views if v.probe.kind == STRANGER]
    outcomes = Counter(v.outcome() for v in mine)
    return {
        "shown": len(mine),
        "granted": outcomes["granted"],
        "denied": outcomes["denied"],
        "no_decision": outcomes["no_decision"],
    }


def _latency(views: list[ClipView], source: ReplaySource, run: RunResult, realtime: bool) -> dict[str, Any]:
    """Genuine grants' latency. Lockstep: media time from the track's first frame (and from the clip's first frame)
    to the grant frame. Realtime: wall time from the face appearing on the camera to the door pulse."""
    genuine = [(v, d) for v in views for d, _ in v.decisions if d.granted and d.name == v.probe.identity]
    deny_first = [v.decisions[0][0] for v in views if v.probe.kind == STRANGER and v.outcome() == "denied"]
    out: dict[str, Any] = {
        "basis": "wall clock (time.monotonic)" if realtime else "media time (frame index / fps)",
        "first_seen_to_grant_s": _dist([d.latency_s for _, d in genuine]),
        "first_seen_to_stranger_deny_s": _dist([d.latency_s for d in deny_first]),
    }
    if not realtime:
        out["clip_start_to_grant_s"] = _dist([d.t - source.clip_start_s(v.clip_no) for v, d in genuine])
        return out
    grants = [d for d, _ in run.recorder.decisions if d.granted]
    unlocks = [t for t, what, _ in run.timeline if what == "unlock"]
    pulse_of = {id(d): t for d, t in zip(grants, unlocks, strict=False)} if len(grants) == len(unlocks) else {}
    appear, lag = [], []
    for v, d in genuine:
        pulse, seen = pulse_of.get(id(d)), source.appeared_at[v.clip_no]
        if pulse is not None and seen is not None:
            appear.append(pulse - seen)
            lag.append(pulse - d.t)
    out["appear_to_pulse_s"] = _dist(appear)
    out["grant_frame_to_pulse_s"] = _dist(lag)
    return out


def _loop(source: ReplaySource, run: RunResult) -> dict[str, Any]:
    rec = run.recorder
    all_ms = [ms for _, ms in rec.frame_ms]
    face_ms = [ms for i, ms in rec.frame_ms if source.clip_of(i) is not None]
    wall_ms = [ms for i, ms in rec.frame_ms if source.clip_of(i) is None]
    return {
        "frames_processed": len(rec.frame_ms),
        "frames_replayed": source.produced,
        "frames_dropped": run.camera.get("dropped"),
        "fps_recent": round(run.stats_fps, 2),  # LoopStats.fps: processing rate over the last 200 frames
        "fps_all_frames": round(1000.0 / (sum(all_ms) / len(all_ms)), 2) if all_ms else None,
        "throughput_fps": round(len(all_ms) / run.wall_s, 2) if run.wall_s > 0 else None,
        "frame_ms_all": _dist(all_ms, 2),
        "frame_ms_face": _dist(face_ms, 2),
        "frame_ms_empty": _dist(wall_ms, 2),
        "loop_stats": run.stats,
        "camera": run.camera,
    }


def _media_time(source: ReplaySource, run: RunResult) -> dict[str, Any]:
    """Lockstep sanity: every frame processed once, in order, stamped index/fps."""
    stamps = run.recorder.stamps
    fps = source.spec.fps
    err = max((abs(t - i / fps) for i, t in stamps), default=None)
    return {
        "fps": fps,
        "step_s": 1.0 / fps,
        "frames_checked": len(stamps),
        "every_frame_once_in_order": [i for i, _ in stamps] == list(range(source.total)),
        "max_stamp_error_s": err,
        "first_stamps": [[i, t] for i, t in stamps[:25]],
    }


def machine() -> dict[str, Any]:
    """CPU model and cores, the load while measuring (the CPU may be shared), OS: ``kiosk bench``'s description."""
    m = describe()
    return {**m, "platform": m["os"], "loadavg": m["loadavg_start"]}


def git_state() -> dict[str, Any]:
    """The commit measured and whether the tree had uncommitted changes (read-only git calls)."""

    def git(*a: str) -> str | None:
        try:
            done = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    status = git("status", "--porcelain")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def config_summary(cfg: Config, pipeline: Pipeline, templates: int) -> dict[str, Any]:
    """The settings that shape the result, with the thresholds actually in force (manifest defaults resolved; the
    door's threshold for a gallery of ``templates`` templates)."""
    return {
        "config_file": None if cfg.origin is None else str(cfg.origin),
        "models": pipeline.models,
        "decision": dataclasses.asdict(cfg.decision),
        "recognition": {
            "threshold": round(pipeline.accept_threshold(templates), 4),
            "threshold_model_accept": pipeline.thresholds.accept,
            "threshold_configured": cfg.recognition.threshold,
            "fpir": cfg.recognition.fpir,
            "expected_fpir": pipeline.expected_fpir(templates),
            "margin": cfg.recognition.margin,
            "likely": pipeline.thresholds.likely,
            "enrol_duplicate_threshold": pipeline.thresholds.duplicate,
        },
        "detection": {
            **dataclasses.asdict(cfg.detection),
            "score_threshold_effective": pipeline.score_threshold,
            "retry_threshold_effective": pipeline.retry_threshold,
        },
        "quality": dataclasses.asdict(cfg.quality),
        "runtime": dataclasses.asdict(cfg.runtime),
        "camera": {"replay_realtime": cfg.camera.replay_realtime, "fps": cfg.camera.fps},
        "door": {"driver": cfg.door.driver, "pulse_s": cfg.door.pulse_s},
    }


def _failures(views: list[ClipView]) -> list[dict[str, Any]]:
    """Members not let in as themselves and strangers let in, with what the loop saw frame by frame."""
    out = []
    for v in views:
        outcome = v.outcome()
        wrong = outcome != "granted_self" if v.probe.kind == MEMBER else outcome == "granted"
        if not wrong:
            continue
        out.append(
            {
                "clip": v.clip_no,
                "kind": v.probe.kind,
                "identity": v.probe.identity,
                "photo": v.probe.path.name,
                "enrol_photos": v.probe.enrol_photos,
                "templates": v.probe.templates,
                "outcome": outcome,
                **v.frame_summary(),
                "decisions": [_decision_dict(d, a) for d, a in v.decisions],
            }
        )
    return out


def _probe_rows(views: list[ClipView]) -> list[dict[str, Any]]:
    rows = []
    for v in views:
        grant = next((d for d, _ in v.decisions if d.granted), None)
        first = grant or (v.decisions[0][0] if v.decisions else None)
        rows.append(
            {
                "clip": v.clip_no,
                "kind": v.probe.kind,
                "identity": v.probe.identity,
                "enrol_photos": v.probe.enrol_photos,
                "outcome": v.outcome(),
                "granted_as": None if grant is None else grant.name,
                "score": None if first is None or first.score is None else round(first.score, 4),
                "latency_s": None if first is None else round(first.latency_s, 3),
            }
        )
    return rows


def build_report(
    *,
    args: argparse.Namespace,
    cfg: Config,
    pipeline: Pipeline,
    enrolment: Enrolment,
    source: ReplaySource,
    run: RunResult,
    timings: dict[str, float],
    started_utc: str,
    machine_before: dict[str, Any],
) -> dict[str, Any]:
    """Every figure of the run as one JSON-ready dict; ``false_grants`` and ``genuine_grant_rate`` on top."""
    views, stray = attribute(source, run.recorder)
    k = cfg.decision.frames_needed
    templates = sum(p.templates for p in enrolment.members)
    members, strangers = _members(views, k), _strangers(views)
    grants = sum(d.granted for d, _ in run.recorder.decisions)
    pulses = sum(what == "unlock" for _, what, _ in run.timeline)
    spec = source.spec
    report: dict[str, Any] = {
        "false_grants": members["granted_other"] + strangers["granted"] + sum(d.granted for d in stray),
        "genuine_grant_rate": members["genuine_grant_rate"],
        "tool": PROG,
        "mode": "realtime" if args.realtime else "lockstep",
        "started_utc": started_utc,
        "selection": {
            "seed": args.seed,
            "members": len(enrolment.members),
            "strangers_selected": args.strangers,
            "probes_shown": len(source.probes),
            "probe_limit": args.probes,
            "enrol_select": args.enrol_select,
            "policy": (
                "members: LFW identities with >= 3 images in seeded order; slot i enrolled from 1 photo (i even) or 2"
                " photos (i odd); probe = another photo of them. strangers: identities never tried as members, one"
                " seeded photo each. Probes shuffled (seeded); with a probe limit, half members and half strangers."
            ),
            "enrol_photos": {
                "1": sum(p.enrol_photos == 1 for p in enrolment.members),
                "2": sum(p.enrol_photos == 2 for p in enrolment.members),
            },
        },
        "enrolment": {
            "images_tried": enrolment.images_tried,
            "images_rejected": len(enrolment.rejected),
            "rejections_by_reason": dict(Counter(_reason_kind(r["reason"]) for r in enrolment.rejected)),
            "templates_stored": sum(p.templates for p in enrolment.members),
            "members_replaced": len(enrolment.replaced),
            "replaced": enrolment.replaced,
            "rejected": enrolment.rejected,
            "seconds": round(enrolment.seconds, 2),
        },
        "members": members,
        "strangers": strangers,
        "decisions": {
            "total": len(run.recorder.decisions),
            "granted": grants,
            "denied": len(run.recorder.decisions) - grants,
            "not_attributable": len(stray),
            "deny_reasons": dict(
                Counter(d.reason.split(":")[0] for d, _ in run.recorder.decisions if not d.granted).most_common()
            ),
        },
        "door": {"pulses": pulses, "grants": grants, "pulses_equal_grants": pulses == grants},
        "latency": _latency(views, source, run, args.realtime),
        "loop": _loop(source, run),
        "per_frame": {MEMBER: _population(views, MEMBER, k), STRANGER: _population(views, STRANGER, k)},
        "threshold_what_if": threshold_sweep(views, k, pipeline.accept_threshold(templates)),
        "clip": {
            "width": W,
            "height": H,
            "fps": spec.fps,
            "face_frames": spec.face_frames,
            "gap_frames": spec.gap_frames,
            "scale": list(spec.scale),
            "jitter": spec.jitter,
            "degrade_prob": spec.degrade_prob,
            "background": f"plain grey {WALL}",
        },
        "cooldown_note": (
            "each member appears once, so decision.cooldown_s can only hold a grant back after a false grant to that "
            "same member less than cooldown_s earlier; members.enough_votes_but_no_grant counts such cases"
        ),
        "frames": len(run.recorder.frame_ms),
        "media_s": round(source.total / spec.fps, 1),
        "wall_s": round(run.wall_s, 2),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "config": config_summary(cfg, pipeline, templates),
        "machine": {**machine_before, "loadavg_after": machine()["loadavg"]},
        "versions": versions(),
        "git": git_state(),
        "failures": _failures(views),
        "probes": _probe_rows(views),
    }
    if not args.realtime:
        report["media_time"] = _media_time(source, run)
    return report


# -- output --------------------------------------------------------------------------------------------------------


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:5.1f} %"


def _s(dist: Mapping[str, Any], key: str = "median") -> str:
    v = dist.get(key)
    return "-" if v is None else f"{v:.2f} s"


def format_table(r: Mapping[str, Any]) -> str:
    """The report as a readable table (the JSON has everything, this has what a person looks at first)."""
    m, s, e, lat, loop = r["members"], r["strangers"], r["enrolment"], r["latency"], r["loop"]
    sel = r["selection"]
    mode = r["mode"]
    lines = [
        f"replay bench ({mode}, {lat['basis']}) — seed {sel['seed']}, {sel['members']} members enrolled "
        f"({sel['enrol_photos']['1']} from 1 photo, {sel['enrol_photos']['2']} from 2), {sel['probes_shown']} probes "
        f"shown",
        f"  enrolment: {e['images_tried']} photos tried, {e['images_rejected']} rejected "
        f"{e['rejections_by_reason'] or ''}, {e['members_replaced']} member(s) replaced, {e['templates_stored']} "
        f"templates",
        f"  replay: {r['frames']} frames of {r['clip']['width']}x{r['clip']['height']} at {r['clip']['fps']:g} fps "
        f"({r['media_s']:g} s of video) in {r['wall_s']:.1f} s wall",
        "",
        f"  {'':34}{'count':>7}  {'rate':>8}",
        f"  {'members shown':34}{m['shown']:>7}",
        f"  {'  granted as themselves':34}{m['granted_self']:>7}  {_pct(m['genuine_grant_rate'])}",
        f"  {'  granted as someone else':34}{m['granted_other']:>7}  {_pct(_rate(m['granted_other'], m['shown']))}"
        "   false grant",
        f"  {'  denied':34}{m['denied']:>7}  {_pct(_rate(m['denied'], m['shown']))}",
        f"  {'  no decision':34}{m['no_decision']:>7}  {_pct(_rate(m['no_decision'], m['shown']))}",
        f"  {'strangers shown':34}{s['shown']:>7}",
        f"  {'  granted':34}{s['granted']:>7}  {_pct(_rate(s['granted'], s['shown']))}   false grant (goal 0)",
        f"  {'  denied':34}{s['denied']:>7}  {_pct(_rate(s['denied'], s['shown']))}",
        f"  {'  no decision':34}{s['no_decision']:>7}  {_pct(_rate(s['no_decision'], s['shown']))}",
        f"  {'FALSE GRANTS':34}{r['false_grants']:>7}",
        f"  {'door pulses':34}{r['door']['pulses']:>7}   "
        f"{'= grants' if r['door']['pulses_equal_grants'] else '!= grants (' + str(r['door']['grants']) + ')'}",
        "",
        "  genuine grant rate by enrolment: "
        + ", ".join(
            f"{k} photo{'s' if k == '2' else ''} {_pct(v['genuine_grant_rate']).strip()} "
            f"({v['granted_self']}/{v['shown']})"
            for k, v in m["by_enrol_photos"].items()
        ),
        f"  latency, track first seen → grant: median {_s(lat['first_seen_to_grant_s'])}, "
        f"p95 {_s(lat['first_seen_to_grant_s'], 'p95')} (n={lat['first_seen_to_grant_s']['n']})",
    ]
    if "appear_to_pulse_s" in lat:
        lines.append(
            f"  latency, face appears → door pulse (wall): median {_s(lat['appear_to_pulse_s'])}, "
            f"p95 {_s(lat['appear_to_pulse_s'], 'p95')}, max {_s(lat['appear_to_pulse_s'], 'max')}"
        )
    else:
        lines.append(
            f"  latency, face on screen → grant: median {_s(lat['clip_start_to_grant_s'])}, "
            f"p95 {_s(lat['clip_start_to_grant_s'], 'p95')}"
        )
    lines += [
        f"  stranger denied after (track): median {_s(lat['first_seen_to_stranger_deny_s'])}",
        f"  loop: {loop['fps_all_frames']} fps processing over all frames (LoopStats.fps, last 200 frames: "
        f"{loop['fps_recent']}); frame median {loop['frame_ms_face']['median']} ms with a face, "
        f"{loop['frame_ms_empty']['median']} ms empty; {loop['frames_dropped']} frames dropped",
        f"  machine: {r['machine']['cpu']}, {r['machine']['cores']} cores, load {r['machine']['loadavg']} → "
        f"{r['machine']['loadavg_after']}",
    ]
    sweep = r["threshold_what_if"]
    lines += [
        "",
        f"  {'threshold what-if (same frames, approx.)':44}"
        + "".join(f"{w['threshold']:.2f}{'*' if w['in_force'] else ' '}  " for w in sweep),
        f"  {'  members let in as themselves':44}" + "".join(f"{w['members_granted_self']:>5}  " for w in sweep),
        f"  {'  false grants (strangers + members)':44}"
        + "".join(f"{w['strangers_granted'] + w['members_granted_other']:>5}  " for w in sweep),
    ]
    return "\n".join(line.rstrip() for line in lines)


# -- command line --------------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within 0..1, got {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Measure the real door loop (detect, track, recognise, K-of-N decide, simulated door) on a "
        "replay of LFW photos shown as 640x480 hand-held clips: genuine grant rate, false grants, decision latency, "
        "loop speed. Prints a table; --json writes every figure.",
        epilog=f"Face data: --data, else ${ENV_DATA}, else <project>/../shared/data/faces (needs lfw/labels.csv).",
    )
    p.add_argument("--members", type=_positive_int, default=100, help="people to enrol and show (default 100)")
    p.add_argument("--strangers", type=int, default=300, help="never-enrolled people to show (default 300)")
    p.add_argument("--seed", type=int, default=0, help="selects people, photos, order and jitter (default 0)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the full report as JSON here")
    p.add_argument(
        "--realtime",
        action="store_true",
        help="replay at the real fps with the real clock (frames may drop) and report wall-clock latency, face "
        f"appears → door pulse; shows --probes clips (default {REALTIME_PROBES})",
    )
    p.add_argument(
        "--probes",
        type=_positive_int,
        help="show only this many probes, half members and half strangers (default: all; "
        f"{REALTIME_PROBES} with --realtime). All members are still enrolled.",
    )
    p.add_argument(
        "--enrol-select",
        choices=("largest", "central"),
        help="like kiosk enroll --select: which face to enrol from a photo with several (default: refuse such "
        "photos, as kiosk enroll does)",
    )
    p.add_argument("--config", type=Path, help="kiosk config YAML to measure (default: the built-in defaults)")
    p.add_argument("--data", type=Path, help=f"face data folder (default ${ENV_DATA})")
    p.add_argument("--fps", type=float, default=10.0, help="frame rate of the clips (default 10)")
    p.add_argument("--face-frames", type=_positive_int, default=10, help="frames each face is shown (default 10)")
    p.add_argument(
        "--gap-frames",
        type=_positive_int,
        default=12,
        help="empty frames after each face (default 12); must last longer than decision.track_max_age_s",
    )
    p.add_argument(
        "--scale",
        type=float,
        nargs=2,
        default=(1.5, 2.0),
        metavar=("MIN", "MAX"),
        help="photo magnification range, drawn per clip (default 1.5 2.0)",
    )
    p.add_argument(
        "--jitter",
        type=float,
        default=1.0,
        help="hand-held jitter strength: 1 = ±4 px, ±3 %% scale, ±15 %% brightness per frame; 0 = still (default 1)",
    )
    p.add_argument(
        "--degrade-prob",
        type=_fraction,
        default=0.2,
        help="chance per face frame of a mild blur, and independently of sensor noise (default 0.2)",
    )
    p.add_argument(
        "--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="kiosk log level"
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    if args.strangers < 0:
        p.error("--strangers must be 0 or more")
    if not 0 < args.scale[0] <= args.scale[1]:
        p.error("--scale: need 0 < MIN <= MAX")
    if args.fps <= 0:
        p.error("--fps must be above 0")
    if args.probes is None and args.realtime:
        args.probes = REALTIME_PROBES
    return args


def bench_config(args: argparse.Namespace, tmp: Path) -> Config:
    """The measured config (defaults or --config) in a throwaway data folder, with the simulated door and the
    in-memory replay's fps; ``camera.replay_realtime`` is what selects lockstep or realtime."""
    cfg = load_config(args.config) if args.config is not None else parse_config({})
    return dataclasses.replace(
        cfg,
        data_dir=tmp,
        gallery=dataclasses.replace(cfg.gallery, path=tmp / "gallery.db"),
        door=dataclasses.replace(cfg.door, driver="simulated"),
        camera=dataclasses.replace(cfg.camera, fps=args.fps, replay_realtime=bool(args.realtime)),
        events=dataclasses.replace(cfg.events, snapshots=False),
        # Recognition and decision latency on replayed still photos: liveness is measured by `kiosk eval-liveness`.
        liveness=dataclasses.replace(cfg.liveness, mode="off"),
    )


def load_photos(probes: Iterable[Probe]) -> dict[Path, Image]:
    """Decode every probe photo up front, so the camera thread never touches the disk and a bad file fails early."""
    return {p.path: read_image(p.path) for p in probes}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when it ran and the door agreed with the decisions, 1 on an inconsistency, 2 when the
    face data is missing (one line on stderr)."""
    args = parse_args(argv)
    faces = data_dir(args.data)
    labels = faces / "lfw" / "labels.csv"
    if not labels.is_file():
        print(f"{PROG}: no face data at {faces} (lfw/labels.csv missing): set {ENV_DATA} or --data", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:  # run as a command; in-process (tests) the host owns logging
        logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def progress(text: str) -> None:
        if not args.quiet:
            print(f"[{PROG}] {text}", file=sys.stderr, flush=True)

    started_utc = datetime.now(UTC).isoformat(timespec="seconds")
    machine_before = machine()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    spec = ClipSpec(
        fps=args.fps,
        face_frames=args.face_frames,
        gap_frames=args.gap_frames,
        scale=(args.scale[0], args.scale[1]),
        jitter=args.jitter,
        degrade_prob=args.degrade_prob,
    )
    by_identity = read_lfw_labels(labels)
    lfw = labels.parent
    with tempfile.TemporaryDirectory(prefix="replay-bench-") as tmp:
        cfg = bench_config(args, Path(tmp))
        if spec.gap_frames / spec.fps <= cfg.decision.track_max_age_s:
            print(
                f"{PROG}: --gap-frames {spec.gap_frames} at {spec.fps:g} fps does not outlast "
                f"decision.track_max_age_s ({cfg.decision.track_max_age_s:g} s): clips would merge into one track",
                file=sys.stderr,
            )
            return 2
        with Context(cfg) as ctx:
            pipeline = ctx.pipeline
            pipeline.warmup()
            timings["models_s"] = time.perf_counter() - t0
            progress(f"enrolling {args.members} members")
            enrolment = enrol_members(
                pipeline, ctx.gallery, lfw, by_identity, args.members, args.seed, select=args.enrol_select
            )
            timings["enrol_s"] = enrolment.seconds
            strangers = pick_strangers(by_identity, enrolment.attempted, lfw, args.strangers, args.seed)
            probes = order_probes(enrolment.members, strangers, args.seed, args.probes)
            source = ReplaySource(probes, load_photos(probes), spec, args.seed, progress=progress)
            progress(
                f"replaying {len(probes)} probes ({source.total} frames, {source.total / spec.fps:g} s of video) "
                f"{'in real time' if args.realtime else 'in lockstep'}"
            )
            run = run_replay(pipeline, ctx.gallery, cfg, source, realtime=bool(args.realtime))
            timings["replay_s"] = run.wall_s
            timings["total_s"] = time.perf_counter() - t0
            report = build_report(
                args=args,
                cfg=cfg,
                pipeline=pipeline,
                enrolment=enrolment,
                source=source,
                run=run,
                timings=timings,
                started_utc=started_utc,
                machine_before=machine_before,
            )
    print(format_table(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"  JSON: {args.json}")
    problems = []
    if not report["door"]["pulses_equal_grants"]:
        problems.append(f"door pulses {report['door']['pulses']} != grants {report['door']['grants']}")
    if report["decisions"]["not_attributable"]:
        problems.append(f"{report['decisions']['not_attributable']} decisions began on an empty-wall frame")
    mt = report.get("media_time")
    if mt is not None and not (mt["every_frame_once_in_order"] and (mt["max_stamp_error_s"] or 0.0) < 1e-9):
        problems.append("lockstep replay dropped frames or stamped them off media time")
    for problem in problems:
        print(f"{PROG}: inconsistent run: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
