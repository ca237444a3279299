"""``kiosk bench``: how fast this machine runs face-kiosk, stage by stage and end to end, on real faces.

Frames are LFW public photos (``$KIOSK_TEST_DATA/lfw``) composed onto 640x480 walls, one face per frame, each clip
followed by empty wall so its track ends — or a ``--source`` replay (video file or image folder). Every frame is
JPEG-encoded once up front, so "decode" is the JPEG decode a camera's MJPEG stream costs. What is measured:

* per-stage latency (median, p95): decode, detect (at ``detection.input_size``), quality, align, embed, match
  (against the enrolled bench gallery), and liveness (the configured mode's per-frame model cost);
* the real loop: ``DoorLoop.process`` on every frame in lockstep (media clock, no frame dropped), end-to-end ms
  per frame (decode + process) and frames per second, with liveness as configured;
* decision latency, face appears → door pulse (simulated door): the media time from the first frame showing the
  face to the granting frame at the camera's fps, plus the wall time spent on the granting frame until the pulse.
  Liveness is off for this run when the configured mode needs a live person (a still photo cannot blink);
* 1:N ``Matcher.match`` over synthetic unit-norm galleries (1k, 10k, 100k templates by default);
* cold start: a fresh ``python -m kiosk bench --cold-start-child`` process, from launch to models warm to the first
  decision on one frame (shown until the loop decides);
* peak RSS of this process after the loop runs (before the synthetic galleries) and of the cold-start child.

Nothing here asserts a speed; the JSON records the machine, versions and configuration next to every figure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from kiosk.config import Config
from kiosk.context import Context
from kiosk.door.camera import Camera, Frame
from kiosk.door.decide import Decider, Decision
from kiosk.door.loop import DoorLoop, Screen
from kiosk.door.notify import Notifier
from kiosk.door.relay import SimulatedDoor, open_door
from kiosk.enroll import enroll
from kiosk.errors import ConfigError, FaceError, InputError, KioskError
from kiosk.gallery import Gallery
from kiosk.lab.frames import (
    DEFAULT_FPS,
    ENV_DATA,
    JPEG_QUALITY,
    FrameSet,
    data_dir,
    decode,
    lfw_frames,
    seeded_rng,
    source_frames,
)
from kiosk.lab.machine import describe, loadavg, peak_rss_mb, ru_maxrss_mb, versions
from kiosk.liveness import Liveness
from kiosk.models.manifest import Manifest, load_manifest
from kiosk.recognition.align import align
from kiosk.recognition.detect import select_faces
from kiosk.recognition.match import Matcher
from kiosk.recognition.pipeline import Pipeline
from kiosk.recognition.quality import assess
from kiosk.stats import dist, time_ms
from kiosk.testing import ManualClock, ScriptedSource
from kiosk.types import Image

MATCH_RUNS = 60
WARMUP_FRAMES = 3
STAGES = ("decode", "detect", "quality", "align", "embed", "match", "liveness")
# The recogniser's compute floor (../shared/docs/MODELS.md): GFLOP per face by model id, and an AVX2 FMA core's fp32
# peak. The floor on N threads is gflop / (peak * N); the target is the embed stage within 1.5x of it.
FLOOR_GFLOP = {"sface": 1.14, "sface_tflite": 1.14}  # fp32 models only: an int8 floor is a different peak
FLOOR_CORE_GFLOPS = 78.0


@dataclass(frozen=True)
class BenchOptions:
    """What ``kiosk bench`` was asked for (the config overrides are already applied to the ``Config``)."""

    frames: int = 200
    faces: Path | None = None  # face data folder (holds lfw/labels.csv); default $KIOSK_TEST_DATA
    source: Path | None = None  # a video file or image folder to replay instead of LFW
    gallery_sizes: tuple[int, ...] = (1000, 10000, 100000)
    skip_cold_start: bool = False
    seed: int = 0
    config_file: Path | None = None  # passed on to the cold-start child
    overrides: tuple[str, ...] = ()  # the child's command-line overrides (--threads, --detector, ...)
    viewer: bool = False  # also measure the loop's fps without and with one preview client (``viewer_cost``)


def load_frames(opts: BenchOptions, cfg: Config) -> FrameSet:
    """The frames to measure on; InputError (one line) when neither LFW faces nor ``--source`` is available."""
    fps = cfg.camera.fps or DEFAULT_FPS
    if opts.source is not None:
        if not opts.source.exists():
            raise InputError(f"--source {opts.source} does not exist")
        return source_frames(opts.source, opts.frames, cfg.camera.fps)
    faces = data_dir(opts.faces)
    if not (faces / "lfw" / "labels.csv").is_file():
        raise InputError(
            f"no benchmark frames: no LFW faces at {faces} (lfw/labels.csv missing); set {ENV_DATA} or --faces DIR, "
            "or give --source FILE|DIR"
        )
    gap = math.ceil(cfg.decision.track_max_age_s * fps) + 2  # long enough for the track to end between clips
    return lfw_frames(faces, opts.frames, fps, gap, opts.seed)


# -- configuration -------------------------------------------------------------------------------------------------


def backend_model(manifest: Manifest, model_id: str, task: str, backend: str) -> str:
    """``model_id`` when its format is ``backend``, else its ``<id>_<backend>`` variant when the manifest has one,
    else ``model_id`` unchanged (the JSON records every model's format)."""
    if manifest.get(model_id, task=task).format == backend:
        return model_id
    variant = manifest.models.get(f"{model_id}_{backend}")
    return variant.id if variant is not None and variant.task == task else model_id


def bench_config(
    cfg: Config,
    data: Path,
    *,
    threads: int | None = None,
    backend: str | None = None,
    detector: str | None = None,
    recognizer: str | None = None,
) -> Config:
    """The measured config: ``cfg`` with the overrides, a throwaway data folder and the simulated door."""
    runtime = cfg.runtime
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {threads}")
        runtime = dataclasses.replace(runtime, intra_op_threads=threads, tflite_threads=threads)
    models = dataclasses.replace(
        cfg.models, detector=detector or cfg.models.detector, recognizer=recognizer or cfg.models.recognizer
    )
    if backend is not None:
        manifest = load_manifest(models.manifest)
        if recognizer is None:
            models = dataclasses.replace(
                models, recognizer=backend_model(manifest, models.recognizer, "embed", backend)
            )
        if detector is None:
            models = dataclasses.replace(models, detector=backend_model(manifest, models.detector, "detect", backend))
    return dataclasses.replace(
        cfg,
        data_dir=data,
        runtime=runtime,
        models=models,
        gallery=dataclasses.replace(cfg.gallery, path=data / "gallery.db", encrypt=False),
        door=dataclasses.replace(cfg.door, driver="simulated"),
        events=dataclasses.replace(cfg.events, snapshots=False),
    )


def config_summary(cfg: Config, pipeline: Pipeline) -> dict[str, Any]:
    return {
        "config_file": None if cfg.origin is None else str(cfg.origin),
        "models": {
            "detector": {**pipeline.models["detector"], "format": pipeline.detector.spec.format},
            "recognizer": {**pipeline.models["recognizer"], "format": pipeline.embedder.spec.format},
        },
        "runtime": dataclasses.asdict(cfg.runtime),
        "opencv_threads": cv2.getNumThreads(),
        "thread_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
        "detection": {"input_size": cfg.detection.input_size, "score_threshold": pipeline.score_threshold},
        "decision": dataclasses.asdict(cfg.decision),
        "liveness": cfg.liveness.mode,
        "recognition": {"threshold": pipeline.thresholds.accept, "margin": cfg.recognition.margin},
    }


# -- the measurements ----------------------------------------------------------------------------------------------


def _liveness_cost(liveness: Liveness | None) -> Callable[[Image, Any], object] | None:
    """The configured mode's per-frame model work: the face mesh (active), MiniFASNet (passive), or both."""
    if liveness is None:
        return None
    passive, active = liveness.passive, liveness.active

    def run(image: Image, face: Any) -> None:
        if passive is not None:
            passive.score(image, face)
        if active is not None:
            active.mesh.landmarks(image, face)

    return run


def stage_times(
    pipeline: Pipeline, matcher: Matcher, liveness: Liveness | None, frames: FrameSet
) -> tuple[dict[str, list[float]], list[int]]:
    """Each stage timed on its own over every frame (after a few warm-up frames); returns the samples and the
    indices of frames where a face was found (the ``--source`` appearances come from these)."""
    samples: dict[str, list[float]] = {s: [] for s in STAGES}
    with_face: list[int] = []
    live = _liveness_cost(liveness)
    n = len(frames.jpegs)
    order = [*range(min(WARMUP_FRAMES, n)), *range(n)]
    for k, i in enumerate(order):
        keep = k >= min(WARMUP_FRAMES, n)
        t0 = time.perf_counter()
        image = decode(frames.jpegs[i])
        t1 = time.perf_counter()
        faces = select_faces(pipeline.detect(image), "largest", image.shape)
        t2 = time.perf_counter()
        if keep:
            samples["decode"].append((t1 - t0) * 1e3)
            samples["detect"].append((t2 - t1) * 1e3)
        if not faces:
            continue
        face = faces[0]
        t2 = time.perf_counter()
        crop = align(image, face, pipeline.template)
        t3 = time.perf_counter()
        assess(face, crop, pipeline.cfg.quality)
        t4 = time.perf_counter()
        vector = pipeline.embedder.embed([crop])[0]
        t5 = time.perf_counter()
        matcher.match(vector)
        t6 = time.perf_counter()
        if live is not None:
            live(image, face)
        t7 = time.perf_counter()
        if keep:
            with_face.append(i)
            for stage, ms in (
                ("align", t3 - t2),
                ("quality", t4 - t3),
                ("embed", t5 - t4),
                ("match", t6 - t5),
                ("liveness", t7 - t6),
            ):
                if stage != "liveness" or live is not None:
                    samples[stage].append(ms * 1e3)
    return samples, with_face


@dataclass
class LoopRun:
    frame_ms: list[float]
    wall_s: float
    grants: list[tuple[int, float]]  # (frame index, ms from the start of that frame's decode to the pulse)
    decisions: int
    pulses: int
    stats: dict[str, Any]
    embedded: list[bool] = field(default_factory=list)  # per frame: did the recogniser run on it


@contextlib.contextmanager
def lockstep_loop(
    pipeline: Pipeline,
    gallery: Gallery,
    clock: ManualClock,
    on_decision: Callable[[Decision, str], None],
    liveness: Liveness | None = None,
    *,
    decider: Decider | None = None,
    screen: Screen | None = None,
) -> Iterator[tuple[DoorLoop, SimulatedDoor]]:
    """The real ``DoorLoop`` driven frame by frame through ``DoorLoop.process`` on the media clock ``clock`` (its
    camera, on an empty scripted source, is never started), with the simulated door; both closed on the way out.
    ``decider``, ``screen``: as ``DoorLoop``'s (a measuring tool's own decider; default: the loop builds the door's)."""
    cfg = pipeline.cfg
    camera = Camera(ScriptedSource(name="bench"), cfg.camera, clock=clock)
    door = open_door(cfg.door, clock=clock)
    try:
        if not isinstance(door, SimulatedDoor):  # pragma: no cover - bench_config forces the simulated door
            raise KioskError("kiosk bench needs the simulated door")
        loop = DoorLoop(
            pipeline,
            gallery,
            camera,
            door,
            notifier=Notifier(address=""),
            clock=clock,
            on_decision=on_decision,
            liveness=liveness,
            decider=decider,
            screen=screen,
        )
        yield loop, door
    finally:
        camera.close()
        door.close()


def run_loop(
    pipeline: Pipeline, ctx: Context, frames: FrameSet, liveness: Liveness | None, screen: Screen | None = None
) -> LoopRun:
    """The real ``DoorLoop.process`` on every frame in lockstep on media time (index / fps), simulated door."""
    clock = ManualClock()
    grants: list[tuple[int, float]] = []
    decisions: list[Decision] = []
    current: dict[str, Any] = {"i": 0, "t0": 0.0}

    def on_decision(d: Decision, action: str) -> None:
        decisions.append(d)
        if d.granted and action.startswith("pulse"):
            grants.append((int(current["i"]), (time.perf_counter() - float(current["t0"])) * 1e3))

    frame_ms: list[float] = []
    embedded: list[bool] = []
    with lockstep_loop(pipeline, ctx.gallery, clock, on_decision, liveness, screen=screen) as (loop, door):
        door.off()
        started = time.perf_counter()
        for i, jpeg in enumerate(frames.jpegs):
            clock.advance_to(i / frames.fps)
            t0 = time.perf_counter()
            current["i"], current["t0"] = i, t0
            before = loop.stats.embeddings
            loop.process(Frame(decode(jpeg), i, clock()))
            door.check()
            frame_ms.append((time.perf_counter() - t0) * 1e3)
            embedded.append(loop.stats.embeddings > before)
        wall_s = time.perf_counter() - started
        pulses = sum(what == "unlock" for _, what, _ in door.timeline)
        stats = loop.stats.as_dict()
    return LoopRun(frame_ms, wall_s, grants, len(decisions), pulses, stats, embedded)


def _appearances(frames: FrameSet, with_face: Sequence[int]) -> list[int]:
    """LFW: the clips' first frames. ``--source``: frames with a face after a frame without one (or the first)."""
    if frames.appearances:
        return frames.appearances
    seen = set(with_face)
    return [i for i in sorted(seen) if i - 1 not in seen]


def split_frames(frame_ms: Sequence[float], face: set[int], embedded: Sequence[bool] = ()) -> dict[str, Any]:
    """Per-frame ms over all frames, over frames showing a face, and over empty ones; with ``embedded`` also over
    the face frames the recogniser ran on and the tracked ones it skipped (granted, or decided and not due)."""
    out = {
        "all": dist(frame_ms, 3),
        "face": dist([ms for i, ms in enumerate(frame_ms) if i in face], 3),
        "empty": dist([ms for i, ms in enumerate(frame_ms) if i not in face], 3),
    }
    if embedded:
        out["face_embedded"] = dist([ms for i, ms in enumerate(frame_ms) if i in face and embedded[i]], 3)
        out["face_not_embedded"] = dist([ms for i, ms in enumerate(frame_ms) if i in face and not embedded[i]], 3)
    return out


def recognizer_floor(model_id: str, threads: int, embed: Mapping[str, Any]) -> dict[str, Any] | None:
    """The recogniser's compute floor on this many cores and the measured embed median's ratio to it, from the
    model's GFLOP per face and a core's fp32 peak in ``FLOOR`` (../shared/docs/MODELS.md); None for other models."""
    known = FLOOR_GFLOP.get(model_id)
    if known is None or embed.get("median") is None:
        return None
    floor_ms = known / (FLOOR_CORE_GFLOPS * threads) * 1e3
    return {
        "model": model_id,
        "gflop_per_face": known,
        "core_peak_gflops": FLOOR_CORE_GFLOPS,
        "threads": threads,
        "floor_ms": round(floor_ms, 3),
        "embed_ms_median": embed["median"],
        "ratio": round(embed["median"] / floor_ms, 3),
        "basis": "GFLOP per face / (fp32 peak per core x threads); constants from ../shared/docs/MODELS.md",
    }


def decision_latency(run: LoopRun, appearances: Sequence[int], fps: float) -> list[float]:
    """ms from the face appearing to the door pulse: media time to the granting frame + its processing until the
    pulse. Each grant is paired with the latest appearance at or before its frame."""
    out = []
    for index, pulse_ms in run.grants:
        start = max((a for a in appearances if a <= index), default=None)
        if start is not None:
            out.append((index - start) / fps * 1e3 + pulse_ms)
    return out


def _matching(matcher: Matcher, probes: np.ndarray) -> Callable[[], object]:
    """A call that matches the next probe each time (the first 3 calls are the timer's warm-up)."""
    feed = iter(probes)
    return lambda: matcher.match(next(feed))


def match_times(sizes: Sequence[int], dim: int, threshold: float, margin: float, seed: int) -> dict[str, Any]:
    """``Matcher.match`` over synthetic unit-norm galleries of each size (one template per person)."""
    rng = seeded_rng(seed, "gallery")
    out: dict[str, Any] = {}
    for size in sizes:
        emb = rng.standard_normal((size, dim), dtype=np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        matcher = Matcher(emb, np.arange(size), [f"p{i}" for i in range(size)], threshold=threshold, margin=margin)
        probes = rng.standard_normal((MATCH_RUNS + 3, dim), dtype=np.float32)
        probes /= np.linalg.norm(probes, axis=1, keepdims=True)
        out[str(size)] = dist(time_ms(_matching(matcher, probes), MATCH_RUNS, warmup=3))
        del matcher, emb
    return out


def enrol_members(pipeline: Pipeline, ctx: Context, frames: FrameSet, data: Path) -> list[str]:
    """Enrol the LFW members (one photo each); for ``--source``, the largest face of the first frame that has one
    (so a replay of one person is granted). Photos enrolment refuses are skipped."""
    todo = list(frames.enrol)
    if not todo:
        for jpeg in frames.jpegs:
            image = decode(jpeg)
            if pipeline.detect(image):
                path = data / "subject.jpg"
                path.write_bytes(jpeg)
                todo = [("subject", path)]
                break
    names = []
    for name, path in todo:
        try:
            enroll(pipeline, ctx.gallery, name, [path], select="largest")
        except FaceError:
            continue
        names.append(name)
    return names


# -- cold start ----------------------------------------------------------------------------------------------------


def cold_start(opts: BenchOptions, frame: bytes, data: Path, timeout_s: float = 180.0) -> dict[str, Any]:
    """Launch ``python -m kiosk bench --cold-start-child`` and read its timestamps (seconds since launch)."""
    frame_path = data / "cold-start-frame.jpg"
    frame_path.write_bytes(frame)
    cmd = [sys.executable, "-m", "kiosk"]
    if opts.config_file is not None:
        cmd += ["-c", str(opts.config_file)]
    cmd += ["bench", *opts.overrides, "--cold-start-child", str(frame_path), "--child-data", str(data)]
    launched = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise KioskError(f"cold-start child did not finish within {timeout_s:.0f} s") from None
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        last = (err.strip().splitlines() or ["no output"])[-1]
        raise KioskError(f"cold-start child failed (exit {proc.returncode}): {last}")
    child: dict[str, Any] = json.loads(lines[-1])
    stamps = {k: round(v - launched, 3) for k, v in child.pop("stamps").items()}
    shown = ["python", *cmd[1:-4], "--cold-start-child", "FRAME"]
    return {**child, "since_launch_s": stamps, "command": " ".join(shown)}


def cold_start_child(cfg: Config, frame_path: Path) -> dict[str, Any]:
    """The child's side: load models and gallery (as ``kiosk run`` does), warm up, then show the one frame to the
    loop until it decides (liveness off for the decision: a still frame cannot answer a challenge)."""
    stamps = {"command_start": time.time()}
    jpeg = frame_path.read_bytes()
    with Context(cfg) as ctx:
        pipeline = ctx.pipeline
        pipeline.warmup()
        ctx.liveness  # noqa: B018 - load the configured liveness models: they are part of being ready
        ctx.matcher()
        stamps["models_warm"] = time.time()
        rss_warm = peak_rss_mb()
        clock = ManualClock()
        decided: list[Decision] = []
        with lockstep_loop(pipeline, ctx.gallery, clock, lambda d, _a: decided.append(d)) as (loop, _door):
            fps = cfg.camera.fps or DEFAULT_FPS
            frames = 0
            limit = cfg.decision.window * 4 + 10
            while not decided and frames < limit:
                clock.advance_to(frames / fps)
                loop.process(Frame(decode(jpeg), frames, clock()))
                frames += 1
        stamps["first_decision"] = time.time()
    return {
        "stamps": stamps,
        "frames_shown": frames,
        "decision": decided[0].outcome if decided else None,
        "liveness": f"{cfg.liveness.mode} models loaded; off for the decision (a still frame cannot pass a challenge)",
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_mb_models_warm": rss_warm,
        "ru_maxrss_mb": ru_maxrss_mb(),  # includes the parent's size at the fork (Linux), see peak_rss_mb
    }


# -- the whole run -------------------------------------------------------------------------------------------------


def run_bench(cfg: Config, opts: BenchOptions, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure everything on ``cfg`` (already passed through ``bench_config``'s overrides except the data folder)
    and return the JSON-ready report."""

    def say(text: str) -> None:
        if progress is not None:
            progress(text)

    started_utc = datetime.now(UTC).isoformat(timespec="seconds")
    mach = describe()
    frames = load_frames(opts, cfg)
    with tempfile.TemporaryDirectory(prefix="kiosk-bench-") as tmp:
        data = Path(tmp)
        cfg = dataclasses.replace(
            cfg, data_dir=data, gallery=dataclasses.replace(cfg.gallery, path=data / "gallery.db")
        )
        t0 = time.perf_counter()
        with Context(cfg) as ctx:
            pipeline = ctx.pipeline
            pipeline.warmup()
            liveness = ctx.liveness
            models_s = time.perf_counter() - t0
            say(f"enrolling {len(frames.enrol) or 1} person(s)")
            members = enrol_members(pipeline, ctx, frames, data)
            matcher = ctx.matcher()
            say(f"timing stages on {len(frames.jpegs)} frames ({frames.origin})")
            samples, with_face = stage_times(pipeline, matcher, liveness, frames)
            say(f"door loop on {len(frames.jpegs)} frames (liveness {cfg.liveness.mode})")
            loop = run_loop(pipeline, ctx, frames, liveness)
            if liveness is None:
                decision_run, decision_liveness = loop, "off (as configured)"
            else:
                say("door loop again with liveness off, for decision latency")
                decision_run = run_loop(pipeline, ctx, frames, None)
                decision_liveness = f"off (configured {cfg.liveness.mode}: a still photo cannot pass it)"
            viewer = None
            if opts.viewer:
                from kiosk.lab.viewer import viewer_cost

                say("door loop without and with one preview viewer (alternating passes)")
                viewer = viewer_cost(cfg, pipeline, ctx, frames, liveness)
            rss_loop = peak_rss_mb()
            ru_loop = ru_maxrss_mb()
            appear = _appearances(frames, with_face)
            latency = decision_latency(decision_run, appear, frames.fps)
            summary = config_summary(cfg, pipeline)
            dim = pipeline.embedder.dim or int(matcher.embeddings.shape[1])
            thresholds = (pipeline.thresholds.accept, cfg.recognition.margin)
        say(f"1:N match over {', '.join(map(str, opts.gallery_sizes))} templates")
        match_ms = match_times(opts.gallery_sizes, dim, *thresholds, seed=opts.seed)
        cold: dict[str, Any] | None = None
        if not opts.skip_cold_start:
            say("cold start (a fresh process)")
            first = min(with_face, default=0)
            cold = cold_start(opts, frames.jpegs[first], data)
    mach["loadavg_end"] = loadavg()
    total_s = sum(loop.frame_ms) / 1e3
    face_set = frames.face_frames or set(with_face)
    by_kind = split_frames(loop.frame_ms, face_set, loop.embedded)
    return {
        "tool": "kiosk bench",
        "started_utc": started_utc,
        "end_to_end_ms": by_kind["face"] if by_kind["face"]["n"] else by_kind["all"],
        "end_to_end_ms_by_frame": {
            **by_kind,
            "basis": "end_to_end_ms is over frames showing a face (all frames when none was found); per frame = "
            "JPEG decode + DoorLoop.process",
        },
        "end_to_end_ms_liveness_off": None
        if decision_run is loop
        else split_frames(decision_run.frame_ms, face_set, decision_run.embedded),
        "fps": round(len(loop.frame_ms) / total_s, 2) if total_s > 0 else None,
        "stages_ms": {s: ("off" if s == "liveness" and liveness is None else dist(samples[s])) for s in STAGES},
        "decision_latency_ms": {
            **dist(latency, 1),
            "liveness": decision_liveness,
            "basis": f"media time from the face's first frame to the granting frame at {frames.fps:g} fps, plus the "
            "wall time processing the granting frame until the door pulse",
            "grants": len(decision_run.grants),
            "appearances": len(appear),
        },
        "recognizer_floor": recognizer_floor(
            summary["models"]["recognizer"]["id"], cfg.runtime.intra_op_threads, dist(samples["embed"])
        ),
        "match_ms": match_ms,
        "cold_start_s": None if cold is None else cold["since_launch_s"]["first_decision"],
        "cold_start": cold,
        "peak_rss_mb": rss_loop,
        "peak_rss": {
            "basis": "VmHWM of this process after the door loop runs, before the synthetic match galleries",
            "ru_maxrss_mb": ru_loop,
        },
        "loop": {
            "frames": len(loop.frame_ms),
            "liveness": cfg.liveness.mode,
            "mode": "lockstep: DoorLoop.process on every frame, media clock, simulated door; per frame = JPEG decode "
            "+ process",
            "wall_s": round(loop.wall_s, 3),
            "frames_with_face": len(face_set),
            "decisions": loop.decisions,
            "door_pulses": loop.pulses,
            "stats": loop.stats,
        },
        "frames": {
            "origin": frames.origin,
            "count": len(frames.jpegs),
            "fps": frames.fps,
            "size": list(decode(frames.jpegs[0]).shape[1::-1]) if frames.jpegs else None,
            "jpeg_quality": JPEG_QUALITY,
            "members_enrolled": len(members),
        },
        "viewer": viewer,
        "timings_s": {"models_load_and_warmup": round(models_s, 3)},
        "config": summary,
        "machine": mach,
        "versions": versions(),
    }
