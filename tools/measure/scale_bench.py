"""False grants and member waits as the gallery grows: the real door loop at 100, 300, 1,000 and 4,000 enrolled people.

``python -m tools.measure.scale_bench [--sizes 100 300 1000 4000] [--seeds 0 1 2] [--json OUT]``

Per seed, one *population* is drawn from the shared face data and enrolled once, with the real ``kiosk.enroll``:

* **members** (up to ``--members``, default 1,000): LFW identities, slot i enrolled from one photo (i even; the
  identity needs 2+ images) or two photos (i odd; 3+ images); the probe is another photo of them. A candidate for whom
  nothing could be enrolled is replaced in its slot and reported.
* **distractors**: enrolled after the members from one photo each — the remaining LFW identities (through
  ``kiosk.enroll``) and the aligned identities of ``train/`` (their 112x112 crops were aligned by the kiosk's own
  pipeline, so they are embedded directly; no duplicate check, which can only make the gallery harder) — in one seeded
  order. They are never shown.
* **strangers** (``--strangers``, default 300): LFW identities never enrolled, one photo each.

The gallery of size N is the first N people enrolled: the first min(N, members) members, then distractors. At size N
the door is shown those members and every stranger, in one seeded order — each a ~1 s hand-held clip of the photo on a
wall (``tools.measure.replay_bench``'s clips, same renderer), then an empty frame after the tracker's max age.

**Recorded once, decided many times.** The expensive part — detection, alignment, quality and the recogniser on
every face frame — does not depend on the gallery or the decision rule, so it runs once per seed through the real
``DoorLoop.process`` (a decider that asks for an embedding on every frame) and is recorded (``--cache``). Each
(size, config) is then decided by the real ``DoorLoop.process`` again — tracker, embedding needs, matcher, decider,
simulated door, event log — with the detector, quality stage and recogniser replaced by the recorded results of the
same frames. Only what a decision can change is re-run, and it is the product's own code: change the rule, re-run in
seconds. ``tests/test_scale_bench.py`` checks that a replayed decision equals the live loop's on the same frames.

LFW's known label errors take no part (``lfw_errata.csv``: one person under two names, one photo filed under two
people; each with its evidence): at size N the gallery holds N people less those, and they are never shown. Every
other look-alike, identical twins included, counts as a stranger.

Liveness is off (it is measured by ``kiosk eval-liveness``); times are media time (frame index / fps).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import logging
import pickle
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from kiosk.config import Config, load_config, parse_config
from kiosk.context import Context
from kiosk.door.camera import Frame
from kiosk.door.decide import EVERY_FRAME, Decider, Decision
from kiosk.enroll import enroll
from kiosk.errors import FaceError, KioskError
from kiosk.gallery import Gallery, GalleryMatrix, TemplateIn
from kiosk.imageio import read_image
from kiosk.lab.bench import lockstep_loop
from kiosk.lab.machine import versions
from kiosk.models.manifest import ModelSpec
from kiosk.recognition.match import Matcher
from kiosk.recognition.pipeline import Pipeline
from kiosk.stats import dist
from kiosk.testing import ManualClock
from kiosk.types import Face, FloatArray, Image, QualityReport
from tools.errors import ToolError
from tools.measure.replay_bench import (
    MEMBER,
    STRANGER,
    ClipSpec,
    Probe,
    _rng,
    _shuffled,
    data_dir,
    git_state,
    machine,
    noise_bank,
    pick_strangers,
    read_lfw_labels,
    render_face_frame,
)

log = logging.getLogger(__name__)

PROG = "python -m tools.measure.scale_bench"
SIZES = (100, 300, 1000, 4000)
RECORDING_VERSION = 1
WAIT_BASIS = "track first seen → grant, media time"
IMAGE = np.zeros((480, 640, 3), np.uint8)  # what a replayed frame "shows": the recorded results stand in for it


class ScaleBenchError(ToolError):
    """The face data is missing or too small for the sizes asked, or a cached recording is unusable."""


# -- the population ------------------------------------------------------------------------------------------------


@dataclass
class Population:
    """One seed's people, in enrolment order (person ids ascend in this order: the gallery of size N is a prefix)."""

    members: list[Probe] = field(default_factory=list)
    distractors: list[str] = field(default_factory=list)  # names, after the members
    strangers: list[Probe] = field(default_factory=list)
    replaced: list[dict[str, str]] = field(default_factory=list)  # members nothing could be enrolled for
    distractors_skipped: Counter[str] = field(default_factory=Counter)  # reason -> count
    person_ids: list[int] = field(default_factory=list)  # gallery person id of each enrolled person, in order


def _member_slots(by_identity: Mapping[str, list[str]], n: int, seed: int) -> Iterator[tuple[int, Iterator[str]]]:
    """For slot i: (photos to enrol, candidates in seeded order). Two seeded pools: identities with 3+ images for
    two-photo slots; for one-photo slots those with exactly 2, then the 3+ ones the other pool left (LFW public has
    636 identities with 3+ images and 540 with exactly 2). The caller skips a candidate already used."""
    three = _shuffled([k for k, v in by_identity.items() if len(v) >= 3], _rng(seed, "members", 2))
    exactly_two = _shuffled([k for k, v in by_identity.items() if len(v) == 2], _rng(seed, "members", 1))
    two = iter(exactly_two + three[::-1])
    three_it = iter(three)
    for slot in range(n):
        yield (1, two) if slot % 2 == 0 else (2, three_it)


def enrol_population(
    pipeline: Pipeline,
    gallery: Gallery,
    faces: Path,
    n_members: int,
    n_distractors: int,
    n_strangers: int,
    seed: int,
    progress: Callable[[str], None],
) -> Population:
    lfw = faces / "lfw"
    by_identity = read_lfw_labels(lfw / "labels.csv")
    pop = Population()
    used: set[str] = set()
    for slot, (need, pool) in enumerate(_member_slots(by_identity, n_members, seed)):
        while True:
            identity = next((c for c in pool if c not in used), None)
            if identity is None:
                raise ScaleBenchError(f"not enough LFW identities for {n_members} members (slot {slot})")
            used.add(identity)
            photos = _shuffled(by_identity[identity], _rng(seed, "photos", identity))
            try:
                report = enroll(pipeline, gallery, identity, [lfw / p for p in photos[:need]])
            except FaceError as exc:
                pop.replaced.append({"identity": identity, "enrol_photos": str(need), "reason": str(exc)})
                continue
            pop.members.append(Probe(MEMBER, identity, lfw / photos[need], enrol_photos=need, templates=report.stored))
            assert report.person is not None  # enroll raises when nothing is stored
            pop.person_ids.append(report.person.id)
            break
        if slot % 200 == 199:
            progress(f"seed {seed}: {slot + 1} members enrolled")
    pop.strangers = pick_strangers(by_identity, used, lfw, n_strangers, seed)
    used |= {p.identity for p in pop.strangers}
    train = _train_labels(faces)
    rest = [("lfw", k) for k in by_identity if k not in used] + [("train", k) for k in train]
    order = [rest[int(i)] for i in _rng(seed, "distractors").permutation(len(rest))]
    spec = pipeline.embedder.spec
    for source, identity in order:
        if len(pop.distractors) >= n_distractors:
            break
        try:
            if source == "lfw":
                # One photo, the largest face in it (LFW photos often show someone else in the background: the
                # installer's `kiosk enroll --select largest`); enrol's own quality and duplicate checks apply.
                photos = by_identity[identity]
                pick = photos[int(_rng(seed, "distractor photo", identity).integers(len(photos)))]
                report = enroll(pipeline, gallery, identity, [lfw / pick], select="largest")
                assert report.person is not None
                pid = report.person.id
            else:
                crops = train[identity]
                crop = faces / "train" / crops[int(_rng(seed, "train crop", identity).integers(len(crops)))]
                vector = pipeline.embedder.embed([read_image(crop)])[0]
                template = TemplateIn(vector, spec.id, spec.sha256, 1.0, f"train/{crop.name}")
                pid = gallery.enroll(identity, [template]).id
        except FaceError as exc:
            pop.distractors_skipped[str(exc).split(": ", 2)[-1].split("(")[0].strip()[:60]] += 1
            continue
        pop.distractors.append(identity)
        pop.person_ids.append(pid)
        if len(pop.distractors) % 500 == 0:
            progress(f"seed {seed}: {len(pop.distractors)} distractors enrolled")
    if len(pop.distractors) < n_distractors:
        why = ", ".join(f"{n} {reason}" for reason, n in pop.distractors_skipped.most_common(4))
        raise ScaleBenchError(
            f"only {len(pop.distractors)} distractors could be enrolled, {n_distractors} needed (refused: {why})"
        )
    return pop


def _train_labels(faces: Path) -> dict[str, list[str]]:
    """``train/labels.csv`` as identity -> crop paths (sorted); empty when the folder is absent."""
    labels = faces / "train" / "labels.csv"
    out: dict[str, list[str]] = {}
    if labels.is_file():
        with labels.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                out.setdefault(row["identity"], []).append(row["path"])
    return {k: sorted(v) for k, v in sorted(out.items())}


# -- recording -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameRec:
    """What the pipeline made of one frame: the faces, each face's quality and embedding (None: too small)."""

    faces: tuple[Face, ...]
    quality: tuple[QualityReport, ...]
    vectors: tuple[FloatArray | None, ...]


EMPTY = FrameRec((), (), ())


@dataclass
class Recording:
    """One seed: the population, every probe's recorded face frames (recording order), the full gallery matrix."""

    seed: int
    spec: ClipSpec
    fingerprint: str
    population: Population
    probes: list[Probe]  # recording order (seeded shuffle of all members and strangers)
    clips: list[list[FrameRec]]  # per probe: its face frames
    matrix: GalleryMatrix
    seconds: dict[str, float]
    version: int = RECORDING_VERSION


class _RecordingPipeline:
    """The real pipeline, noting what ``detect``, ``prepare`` and ``embed`` returned for the current frame."""

    def __init__(self, inner: Pipeline) -> None:
        self.inner = inner
        self.cfg = inner.cfg
        self.thresholds = inner.thresholds
        self.embedder = self  # the loop calls pipeline.embedder.embed and reads .spec
        self.spec = inner.embedder.spec
        self.selected: list[Face] = []  # the faces the loop prepared (its tracks' faces), in its order
        self.prepared: list[tuple[Image, QualityReport]] = []
        self.vectors: dict[int, FloatArray] = {}

    def matcher(self, m: GalleryMatrix) -> Matcher:
        return self.inner.matcher(m)

    def detect(self, image: Image) -> list[Face]:
        self.selected, self.prepared, self.vectors = [], [], {}
        return self.inner.detect(image)

    def prepare(self, image: Image, faces: list[Face]) -> list[tuple[Image, QualityReport]]:
        self.selected, self.prepared = list(faces), self.inner.prepare(image, faces)
        return self.prepared

    def embed(self, crops: list[Image]) -> FloatArray:
        out = self.inner.embedder.embed(crops)
        for crop, vector in zip(crops, out, strict=True):
            i = next(i for i, (c, _) in enumerate(self.prepared) if c is crop)
            self.vectors[i] = np.array(vector, dtype=np.float32)
        return out

    def take(self) -> FrameRec:
        """What the frame just processed gave (nothing when it had no face)."""
        n = len(self.selected)
        return FrameRec(
            tuple(self.selected), tuple(q for _, q in self.prepared), tuple(map(self.vectors.get, range(n)))
        )


class _EmbedEveryFrame(Decider):
    """Recording only: every face frame is embedded, whatever the decision (a replay then picks what it needs)."""

    def embedding_need(self, track_id: int) -> str:
        return EVERY_FRAME


class _Replayed:
    """A pipeline whose detector, quality stage and recogniser return the recorded results of the current frame."""

    def __init__(self, real: Pipeline) -> None:
        self.cfg = real.cfg
        self.thresholds = real.thresholds
        self._real = real
        self.embedder = self
        self.spec = real.embedder.spec
        self.current = EMPTY

    def matcher(self, m: GalleryMatrix) -> Matcher:
        return self._real.matcher(m)

    def detect(self, image: Image) -> list[Face]:
        return list(self.current.faces)

    def prepare(self, image: Image, faces: list[Face]) -> list[tuple[Image, QualityReport]]:
        index = [next(i for i, f in enumerate(self.current.faces) if f is face) for face in faces]
        return [(np.array([i]), self.current.quality[i]) for i in index]

    def embed(self, crops: list[Image]) -> FloatArray:
        vectors = [self.current.vectors[int(c[0])] for c in crops]
        if any(v is None for v in vectors):
            raise ScaleBenchError("the replay asked for an embedding the recording does not have")
        return np.stack([v for v in vectors if v is not None])


def record(
    pipeline: Pipeline, gallery: Gallery, pop: Population, spec: ClipSpec, seed: int, progress: Callable[[str], None]
) -> Recording:
    """Every probe's face frames through the real ``DoorLoop.process``, every face embedded, results noted."""
    started = time.perf_counter()
    probes = pop.members + pop.strangers
    probes = [probes[int(i)] for i in _rng(seed, "order").permutation(len(probes))]
    spec_m = pipeline.embedder.spec
    full = gallery.matrix(spec_m.id, spec_m.sha256)
    rec_pipeline = _RecordingPipeline(pipeline)
    clock = ManualClock()
    noise = noise_bank(seed)
    clips: list[list[FrameRec]] = []
    period = spec.frames_per_clip / spec.fps
    every_frame = _EmbedEveryFrame(pipeline.cfg.decision)
    runner: Any = rec_pipeline  # enough of a Pipeline for the loop
    with lockstep_loop(runner, gallery, clock, lambda _d, _a: None, decider=every_frame) as (loop, _door):
        for n, probe in enumerate(probes):
            photo = read_image(probe.path)
            frames = []
            for k in range(spec.face_frames):
                t = n * period + k / spec.fps
                clock.advance_to(t)
                loop.process(Frame(render_face_frame(photo, spec, seed, n, k, noise), n * spec.frames_per_clip + k, t))
                frames.append(rec_pipeline.take())
            t = n * period + (spec.frames_per_clip - 1) / spec.fps
            clock.advance_to(t)
            loop.process(Frame(np.full_like(IMAGE, 110), n * spec.frames_per_clip + spec.frames_per_clip - 1, t))
            rec_pipeline.take()
            clips.append(frames)
            if n % 100 == 99:
                progress(f"seed {seed}: {n + 1}/{len(probes)} clips recorded")
    return Recording(
        seed=seed,
        spec=spec,
        fingerprint=pipeline.fingerprint,
        population=pop,
        probes=probes,
        clips=clips,
        matrix=full,
        seconds={"record_s": time.perf_counter() - started},
    )


# -- deciding ------------------------------------------------------------------------------------------------------


def prefix(m: GalleryMatrix, person_ids: Sequence[int]) -> GalleryMatrix:
    """The templates of exactly these people (the gallery of that size)."""
    keep = np.isin(m.person_ids, np.asarray(person_ids, dtype=np.int64))
    return GalleryMatrix(
        m.template_ids[keep],
        m.person_ids[keep],
        [n for n, k in zip(m.names, keep, strict=True) if k],
        m.embeddings[keep],
    )


ERRATA = Path(__file__).with_name("lfw_errata.csv")


def lfw_errata(path: Path = ERRATA) -> frozenset[str]:
    """Every LFW identity named in the errata list (``identity_a,identity_b,kind,evidence``)."""
    with path.open(newline="", encoding="utf-8") as f:
        return frozenset(name for row in csv.DictReader(f) for name in (row["identity_a"], row["identity_b"]))


@dataclass
class SizeResult:
    size: int
    people: int
    templates: int
    threshold: float
    members: list[tuple[Probe, list[Decision]]]
    strangers: list[tuple[Probe, list[Decision]]]
    seconds: float


def gallery_of(m: GalleryMatrix, spec: ModelSpec) -> Gallery:
    """A throwaway in-memory gallery holding exactly the templates of ``m``, people in their order: the door loop
    loads it, builds its matcher and writes its events as it does at a real door."""
    gallery = Gallery(":memory:")
    for pid in dict.fromkeys(m.person_ids.tolist()):
        rows = np.flatnonzero(m.person_ids == pid)
        templates = [TemplateIn(m.embeddings[r], spec.id, spec.sha256, 1.0, "scale-bench") for r in rows]
        gallery.enroll(m.names[rows[0]], templates)
    return gallery


def decide(rec: Recording, pipeline: Pipeline, size: int, *, live: bool = False) -> SizeResult:
    """Replay the probes of gallery size ``size`` through the real loop on the recorded frames; with ``live``,
    render the same frames again and run them through the real pipeline instead (``--verify``: a replay must decide
    exactly as the live loop does)."""
    started = time.perf_counter()
    pop = rec.population
    n_members = min(size, len(pop.members))
    if len(pop.person_ids) < size:
        raise ScaleBenchError(f"the recording has {len(pop.person_ids)} people enrolled, size {size} asked")
    # LFW's label errors (one person under two names, one photo under two people) are not strangers to each other:
    # such people take no part, neither enrolled nor shown (tools/measure/lfw_errata.csv says who and why).
    skip = lfw_errata()
    names = [p.identity for p in pop.members] + pop.distractors
    ids = [pid for pid, name in zip(pop.person_ids[:size], names[:size], strict=True) if name not in skip]
    members = {p.identity for p in pop.members[:n_members]} - skip
    shown = [
        (n, p)
        for n, p in enumerate(rec.probes)
        if p.identity not in skip and (p.kind == STRANGER or p.identity in members)
    ]
    m = prefix(rec.matrix, ids)
    replayed = _Replayed(pipeline)
    clock = ManualClock()
    decisions: list[Decision] = []
    noise = noise_bank(rec.seed) if live else []
    spec = rec.spec
    period = spec.frames_per_clip / spec.fps
    per_clip: list[list[Decision]] = []
    runner: Any = pipeline if live else replayed
    with (
        gallery_of(m, pipeline.embedder.spec) as gallery,
        lockstep_loop(runner, gallery, clock, lambda d, _a: decisions.append(d)) as (loop, _door),
    ):
        for slot, (n, probe) in enumerate(shown):
            before = len(decisions)
            photo = read_image(probe.path) if live else IMAGE
            for k, frame in enumerate(rec.clips[n]):
                t = slot * period + k / spec.fps
                clock.advance_to(t)
                replayed.current = frame
                image = render_face_frame(photo, spec, rec.seed, n, k, noise) if live else IMAGE
                loop.process(Frame(image, slot * spec.frames_per_clip + k, t))
            t = slot * period + (spec.frames_per_clip - 1) / spec.fps
            clock.advance_to(t)
            replayed.current = EMPTY
            loop.process(Frame(IMAGE, slot * spec.frames_per_clip + spec.frames_per_clip - 1, t))
            per_clip.append(decisions[before:])
    pairs = [(p, ds) for (_, p), ds in zip(shown, per_clip, strict=True)]
    return SizeResult(
        size=size,
        people=len(ids),
        templates=len(m),
        threshold=pipeline.accept_threshold(len(m)),  # what the loop's matcher used (Pipeline.matcher)
        members=[(p, ds) for p, ds in pairs if p.kind == MEMBER],
        strangers=[(p, ds) for p, ds in pairs if p.kind == STRANGER],
        seconds=time.perf_counter() - started,
    )


def decision_key(d: Decision) -> tuple[Any, ...]:
    """What a decision is, for comparing two runs: outcome, who, when, on how many frames, the score, the reason."""
    return (d.outcome, d.person_id, d.name, round(d.t, 6), d.frames_used, _r(d.score), d.reason)


def same_decisions(a: SizeResult, b: SizeResult) -> bool:
    def keys(r: SizeResult) -> list[tuple[Any, ...]]:
        return [decision_key(d) for _, ds in r.members + r.strangers for d in ds]

    return keys(a) == keys(b)


def summarise(r: SizeResult) -> dict[str, Any]:
    """Counts, rates and waits of one size."""

    def granted(ds: list[Decision]) -> Decision | None:
        return next((d for d in ds if d.granted), None)

    by_photos: dict[str, dict[str, Any]] = {}
    waits: list[float] = []
    wrong: list[dict[str, Any]] = []
    for p, ds in r.members:
        g = granted(ds)
        row = by_photos.setdefault(str(p.enrol_photos), {"shown": 0, "granted_self": 0})
        row["shown"] += 1
        if g is not None and g.name == p.identity:
            row["granted_self"] += 1
            waits.append(g.latency_s)
        elif g is not None:
            wrong.append({"kind": MEMBER, "identity": p.identity, "granted_as": g.name, "score": _r(g.score)})
    for row in by_photos.values():
        row["rate"] = row["granted_self"] / row["shown"] if row["shown"] else None
    strangers_in = []
    for p, ds in r.strangers:
        g = granted(ds)
        if g is not None:
            strangers_in.append(
                {
                    "identity": p.identity,
                    "photo": p.path.name,
                    "granted_as": g.name,
                    "score": _r(g.score),
                    "reason": g.reason,
                }
            )
    shown_members = len(r.members)
    granted_self = sum(row["granted_self"] for row in by_photos.values())
    wait = dist(waits, 3)
    return {
        "size": r.size,
        "people": r.people,
        "templates": r.templates,
        "threshold": round(r.threshold, 4),
        "members_shown": shown_members,
        "members_granted_self": granted_self,
        "member_rate": granted_self / shown_members if shown_members else None,
        "by_enrol_photos": dict(sorted(by_photos.items())),
        "members_granted_other": len(wrong),
        "strangers_shown": len(r.strangers),
        "strangers_granted": len(strangers_in),
        "false_grants": len(strangers_in) + len(wrong),
        "wait_s": {
            "median": wait["median"],
            "p95": wait["p95"],
            "n": wait["n"],
            "basis": "track first seen → grant, media time",
        },
        "strangers_let_in": strangers_in,
        "members_let_in_as_others": wrong,
        "seconds": round(r.seconds, 2),
    }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


# -- cache, command line -------------------------------------------------------------------------------------------


def _cache_path(cache: Path, seed: int, key: str) -> Path:
    return cache / f"seed{seed}-{key}.pkl"


def _recording_key(args: argparse.Namespace, fingerprint: str, spec: ClipSpec, faces: Path) -> str:
    text = json.dumps(
        [fingerprint, dataclasses.asdict(spec), args.members, args.strangers, max(args.sizes), str(faces)],
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``--set a.b=value`` pairs as a nested mapping (values parsed as YAML: numbers, null, lists)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ScaleBenchError(f"--set {pair!r}: expected KEY=VALUE, e.g. recognition.margin=0.1")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, Mapping) and isinstance(out.get(k), dict | None) else v
    return out


def bench_config(args: argparse.Namespace, tmp: Path) -> Config:
    raw: dict[str, Any] = {}
    if args.config is not None:
        raw = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
        load_config(args.config)  # validate the file as the kiosk would (errors name the key)
    raw = _merge(raw, _overrides(args.set))
    raw = _merge(
        raw,
        {
            "data_dir": str(tmp),
            "gallery": {"path": str(tmp / "gallery.db")},
            "door": {"driver": "simulated"},
            "events": {"snapshots": False},
            "liveness": {"mode": "off"},
        },
    )
    return parse_config(raw, args.config)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="False grants and member waits of the real door loop at several gallery sizes (LFW members, "
        "LFW + train/ distractors, never-enrolled strangers). Records each seed's frames once (--cache), then decides "
        "every size with the product's own loop, matcher and decider.",
    )
    p.add_argument(
        "--sizes", type=int, nargs="+", default=list(SIZES), help="gallery sizes (default 100 300 1000 4000)"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default 0)")
    p.add_argument("--members", type=int, default=1000, help="most members probed (default 1000)")
    p.add_argument("--strangers", type=int, default=300, help="strangers shown at every size (default 300)")
    p.add_argument("--config", type=Path, help="kiosk config YAML to measure (default: built-in defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config key")
    p.add_argument("--cache", type=Path, help="folder for recordings (default ~/.cache/face-kiosk/scale-bench)")
    p.add_argument("--data", type=Path, help="face data folder (default $KIOSK_TEST_DATA)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write every figure as JSON here")
    p.add_argument(
        "--verify",
        action="store_true",
        help="also run the smallest size through the live pipeline (frames rendered again) and fail unless every "
        "decision equals the replay's",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    if any(s < 1 for s in args.sizes) or args.members < 1 or args.strangers < 0:
        p.error("sizes and --members must be at least 1, --strangers at least 0")
    args.sizes = sorted(set(args.sizes))
    if args.cache is None:
        args.cache = Path.home() / ".cache" / "face-kiosk" / "scale-bench"
    return args


def load_or_record(
    args: argparse.Namespace, ctx: Context, faces: Path, seed: int, progress: Callable[[str], None]
) -> Recording:
    pipeline = ctx.pipeline
    spec = ClipSpec()
    key = _recording_key(args, pipeline.fingerprint, spec, faces)
    path = _cache_path(args.cache, seed, key)
    if path.is_file():
        with path.open("rb") as f:
            rec: Recording = pickle.load(f)  # our own cache file (never a download)
        if rec.version == RECORDING_VERSION:
            progress(f"seed {seed}: recording from {path}")
            return rec
    started = time.perf_counter()
    size = max(args.sizes)
    n_members = min(args.members, size)
    progress(f"seed {seed}: enrolling {n_members} members and {size - n_members} distractors")
    with Gallery(":memory:") as gallery:
        pop = enrol_population(pipeline, gallery, faces, n_members, size - n_members, args.strangers, seed, progress)
        enrol_s = time.perf_counter() - started
        rec = record(pipeline, gallery, pop, spec, seed, progress)
    rec.seconds["enrol_s"] = enrol_s
    args.cache.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_suffix(".tmp")
    with tmp_path.open("wb") as f:
        pickle.dump(rec, f, protocol=pickle.HIGHEST_PROTOCOL)
    tmp_path.replace(path)
    progress(f"seed {seed}: recorded in {time.perf_counter() - started:.0f} s → {path}")
    return rec


def format_table(report: Mapping[str, Any]) -> str:
    lines = [
        f"scale bench — {report['config']['rule']}",
        f"  {'seed':>4} {'size':>5} {'people':>6} {'templ':>6} {'thr':>5}  {'strangers in':>12}  {'members in':>10}  "
        f"{'1 photo':>7}  {'2 photos':>8}  {'other':>5}  {'wait med':>8}  {'p95':>5}",
    ]
    for row in report["runs"]:
        rates = {k: v.get("rate") for k, v in row["by_enrol_photos"].items()}

        def pct(k: str, rates: Mapping[str, float | None] = rates) -> str:
            v = rates.get(k)
            return "-" if v is None else f"{100 * v:.1f}%"

        w = row["wait_s"]
        lines.append(
            f"  {row['seed']:>4} {row['size']:>5} {row['people']:>6} {row['templates']:>6} {row['threshold']:>5.3f}  "
            f"{row['strangers_granted']:>5} / {row['strangers_shown']:<4}  {100 * (row['member_rate'] or 0):>9.1f}%  "
            f"{pct('1'):>7}  {pct('2'):>8}  {row['members_granted_other']:>5}  "
            f"{'-' if w['median'] is None else format(w['median'], '.1f') + ' s':>8}  "
            f"{'-' if w['p95'] is None else format(w['p95'], '.1f'):>5}"
        )
    wrong = [
        f"    seed {row['seed']} size {row['size']}: {w.get('kind', STRANGER)} {w['identity']} let in as "
        f"{w['granted_as']} (score {w['score']})"
        for row in report["runs"]
        for w in row["strangers_let_in"] + row["members_let_in_as_others"]
    ]
    if wrong:
        lines += ["  false grants:", *wrong]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    faces = data_dir(args.data)
    if not (faces / "lfw" / "labels.csv").is_file():
        print(
            f"{PROG}: no face data at {faces} (lfw/labels.csv missing): set KIOSK_TEST_DATA or --data", file=sys.stderr
        )
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def progress(text: str) -> None:
        if not args.quiet:
            print(f"[{PROG}] {text}", file=sys.stderr, flush=True)

    started_utc = datetime.now(UTC).isoformat(timespec="seconds")
    machine_before = machine()
    runs: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
            cfg = bench_config(args, Path(tmp))
            with Context(cfg) as ctx:
                pipeline = ctx.pipeline
                for seed in args.seeds:
                    rec = load_or_record(args, ctx, faces, seed, progress)
                    for size in args.sizes:
                        result = decide(rec, pipeline, size)
                        row = {"seed": seed, **summarise(result)}
                        if args.verify and size == args.sizes[0]:
                            live = decide(rec, pipeline, size, live=True)
                            row["verified_live"] = same_decisions(result, live)
                            if not row["verified_live"]:
                                raise ScaleBenchError(
                                    f"seed {seed} size {size}: the replay decided unlike the live loop"
                                )
                            progress(f"seed {seed} size {size}: live loop decided exactly as the replay")
                        runs.append(row)
                        progress(
                            f"seed {seed} size {size}: strangers in {row['strangers_granted']}, members in "
                            f"{row['members_granted_self']}/{row['members_shown']} ({result.seconds:.1f} s)"
                        )
                config = {
                    "rule": rule_text(cfg, pipeline),
                    "decision": dataclasses.asdict(cfg.decision),
                    "recognition": dataclasses.asdict(cfg.recognition),
                    "threshold_base": pipeline.thresholds.accept,
                    "set": args.set,
                    "config_file": None if args.config is None else str(args.config),
                    "models": pipeline.models,
                }
    except (ScaleBenchError, KioskError) as exc:  # missing data, a bad --set or --config: one line
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    report = {
        "tool": PROG,
        "started_utc": started_utc,
        "sizes": args.sizes,
        "seeds": args.seeds,
        "members_max": args.members,
        "strangers": args.strangers,
        "config": config,
        "runs": runs,
        "machine": {**machine_before, "loadavg_after": machine()["loadavg"]},
        "versions": versions(),
        "git": git_state(),
    }
    print(format_table(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
        print(f"  JSON: {args.json}")
    return 0


def rule_text(cfg: Config, pipeline: Pipeline) -> str:
    d, r = cfg.decision, cfg.recognition
    if r.threshold is not None or pipeline.tail is None:
        threshold = f"fixed threshold {pipeline.thresholds.accept:g}"
    else:
        threshold = (
            f"threshold for recognition.fpir {r.fpir:g} at each size (never below {pipeline.thresholds.accept:g})"
        )
    return f"{d.frames_needed} of {d.window} frames, {threshold}, margin {r.margin:g}"


if __name__ == "__main__":
    # Through the importable module, so the recordings it pickles name tools.measure.scale_bench, not __main__.
    from tools.measure import scale_bench

    sys.exit(scale_bench.main())
