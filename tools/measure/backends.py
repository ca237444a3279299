"""``python -m tools backends``: the recogniser and the detector on every runtime this machine has, measured
side by side on real faces, and a pick per (task, threads) from the measurements (issue #7).

Candidates (each only when its model is in the manifest and its file exists; the others are listed as absent with
how to build them):

* recogniser: onnxruntime fp32 (``sface``), onnxruntime int8 QDQ (``sface_int8``), TFLite/XNNPACK fp32
  (``sface_tflite``) and full int8 (``sface_tflite_int8``), and OpenCV DNN on the ``sface`` ONNX file. Every one is
  a ``kiosk.recognition.embed.Embedder`` around a runner, so preprocessing and normalisation are the kiosk's own.
* detector: YuNet through the kiosk's ``YuNetDetector`` on onnxruntime and on OpenCV DNN (same decoder, only the
  runtime differs), OpenCV's own ``cv2.FaceDetectorYN`` on the same file, and BlazeFace (TFLite) — a different model,
  timed and compared but never picked as a runtime for YuNet.

Inputs are real: 112x112 crops aligned by the kiosk (YuNet + ArcFace template) from LFW photos, and 640x480 frames
of LFW photos on a plain wall composed with ``kiosk.lab.frames.compose``. Timing: per thread count (and per batch size
for the recogniser) a warm-up, then interleaved rounds — every candidate once per round, in a rotating order — and
median / p95 per candidate. Agreement: cosine of each recogniser's embeddings to onnxruntime fp32's on the same crops;
for detectors, IoU of the largest box, mean landmark distance and the frames where only one of the two finds a face,
against onnxruntime YuNet. Nothing here asserts a speed; the JSON records machine, versions and load average.
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from kiosk.config import parse_config
from kiosk.errors import BackendUnavailableError, KioskError
from kiosk.imageio import read_image
from kiosk.lab import frames as lab_frames
from kiosk.lab.machine import describe, loadavg, versions
from kiosk.models.backends import RuntimeOptions, load_runner
from kiosk.models.manifest import Manifest, ModelSpec, load_manifest
from kiosk.recognition.align import align, get_template
from kiosk.recognition.detect import Detector, build_detector, select_faces
from kiosk.recognition.embed import Embedder
from kiosk.recognition.pipeline import runtime_options
from kiosk.stats import dist, interleaved_ms
from kiosk.types import Face, FloatArray, Image

PROG = "python -m tools backends"
BUILD_HINT = "make models-all"
REFERENCE_REC = "ort-fp32"
REFERENCE_DET = "yunet/ort"
MIN_COSINE = 0.99  # a recogniser passes when its min cosine to onnxruntime fp32 on the same crops is at least this
MIN_DET_IOU = 0.9  # a YuNet runtime passes when the mean IoU of its largest box to onnxruntime YuNet's is at least
MAX_DET_DISAGREE = 0  # ... and it finds a face in exactly the frames onnxruntime YuNet does
SFACE_GFLOP = 1.14  # per face, ../shared/docs/MODELS.md
CORE_GFLOPS = 78.0  # fp32 peak of one AVX2 FMA core at 2.45 GHz (MODELS.md); AVX-512 parts can reach ~2x
DET_INPUT = 320
WARMUP = 3


@dataclass(frozen=True)
class Candidate:
    """One (model, runtime) to measure; ``build(threads)`` returns an Embedder or a Detector."""

    name: str
    task: str  # "recognizer" | "detector"
    model: str
    runtime: str
    build: Callable[[int], Any]
    note: str = ""
    same_model: bool = True  # detectors: False for a different model (BlazeFace), never picked for YuNet


@dataclass(frozen=True)
class Absent:
    name: str
    task: str
    model: str
    runtime: str
    reason: str


@dataclass(frozen=True)
class Options:
    faces: Path | None = None
    manifest: Path | None = None
    crops: int = 48
    frames: int = 24
    runs: int = 30
    threads: tuple[int, ...] = (1, 2)
    batches: tuple[int, ...] = (1, 2, 4)
    only: str | None = None  # "recognizer" | "detector"
    seed: int = 0
    quiet: bool = False


# -- runners -------------------------------------------------------------------------------------------------------


class CvDnnRunner:
    """OpenCV DNN as a kiosk ``Runner``. OpenCV 5: ``readNet`` takes an ``engine`` (``ENGINE_AUTO`` = the new graph
    engine, falling back to the classic one; the new engine ignores ``setPreferableTarget``); ``setInput`` needs the
    input's name; the thread count is process-wide (``cv2.setNumThreads``), set per thread block by the caller."""

    def __init__(self, spec: ModelSpec, engine: int | None = None) -> None:
        spec.verify()
        eng = cv2.dnn.ENGINE_AUTO if engine is None else engine
        self._net = cv2.dnn.readNet(str(spec.path), "", "", eng)
        self.input_names = [spec.input.name or "input"]
        self.output_names = list(self._net.getUnconnectedOutLayersNames())

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        for name, value in inputs.items():
            self._net.setInput(np.ascontiguousarray(value, dtype=np.float32), name)
        outs = self._net.forward(self.output_names)
        return [np.asarray(o) for o in outs]


class FaceDetectorYNAdapter:
    """``cv2.FaceDetectorYN`` (OpenCV's own YuNet pre/post-processing) on the frame resized as the kiosk resizes it."""

    def __init__(self, spec: ModelSpec, score: float, nms_iou: float, input_size: int) -> None:
        spec.verify()
        self.spec = spec
        self.score_threshold = score
        self.nms_iou = nms_iou
        self.input_size = input_size
        self._det = cv2.FaceDetectorYN.create(str(spec.path), "", (input_size, input_size), score, nms_iou, 750)
        self._size: tuple[int, int] | None = None

    def detect(self, image: Image) -> list[Face]:
        h, w = image.shape[:2]
        scale = self.input_size / max(h, w)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        if self._size != (nw, nh):
            self._det.setInputSize((nw, nh))
            self._size = (nw, nh)
        resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        _, found = self._det.detect(resized)
        if found is None:
            return []
        sx, sy = nw / w, nh / h
        faces = []
        for row in np.asarray(found, dtype=np.float32):
            x, y, bw, bh = row[:4]
            box = np.array([x / sx, y / sy, (x + bw) / sx, (y + bh) / sy], dtype=np.float32)
            kps = (row[4:14].reshape(5, 2) / np.array([sx, sy], dtype=np.float32)).astype(np.float32)
            faces.append(Face(box=box, landmarks=kps, score=float(row[14])))
        return sorted(faces, key=lambda f: -f.score)


# -- candidates ----------------------------------------------------------------------------------------------------

REC_TABLE = (  # name, model id, runtime, note
    ("ort-fp32", "sface", "onnxruntime", "the kiosk's default"),
    ("ort-int8", "sface_int8", "onnxruntime", "static QDQ int8 (tools/models/quantize.py)"),
    ("tflite-fp32", "sface_tflite", "tflite", "ai-edge-litert, XNNPACK delegate"),
    ("tflite-int8", "sface_tflite_int8", "tflite", "ai-edge-litert, full int8"),
    ("opencv-fp32", "sface", "opencv-dnn", "cv2.dnn.readNet on the sface ONNX file"),
)


def _options(threads: int) -> RuntimeOptions:
    """The kiosk's runtime options (config defaults) at ``threads`` intra-op / TFLite threads."""
    return dataclasses.replace(runtime_options(parse_config({})), intra_op_threads=threads, tflite_threads=threads)


def _missing(manifest: Manifest, model_id: str) -> str | None:
    spec = manifest.models.get(model_id)
    if spec is None:
        return f"model '{model_id}' is not in {manifest.path}; build it with `{BUILD_HINT}`"
    if not spec.path.is_file():
        return f"model file {spec.path} is missing; build it with `{BUILD_HINT}`"
    if spec.format == "tflite":
        try:
            from kiosk.models.backends.tflite import interpreter_class

            interpreter_class()
        except BackendUnavailableError as exc:
            return str(exc)
    return None


def recognizer_candidates(manifest: Manifest) -> tuple[list[Candidate], list[Absent]]:
    found: list[Candidate] = []
    absent: list[Absent] = []
    for name, model_id, runtime, note in REC_TABLE:
        reason = _missing(manifest, model_id)
        if reason is not None:
            absent.append(Absent(name, "recognizer", model_id, runtime, reason))
            continue
        spec = manifest.get(model_id, task="embed")
        if runtime == "opencv-dnn":

            def build(threads: int, spec: ModelSpec = spec) -> Embedder:
                return Embedder(spec, CvDnnRunner(spec))

        else:

            def build(threads: int, spec: ModelSpec = spec) -> Embedder:
                return Embedder(spec, load_runner(spec, _options(threads)))

        found.append(Candidate(name, "recognizer", model_id, runtime, build, note))
    return found, absent


def detector_candidates(manifest: Manifest) -> tuple[list[Candidate], list[Absent]]:
    found: list[Candidate] = []
    absent: list[Absent] = []
    reason = _missing(manifest, "yunet")
    if reason is not None:
        for name, runtime in (
            (REFERENCE_DET, "onnxruntime"),
            ("yunet/opencv", "opencv-dnn"),
            ("yunet/cv-yn", "opencv"),
        ):
            absent.append(Absent(name, "detector", "yunet", runtime, reason))
    else:
        spec = manifest.get("yunet", task="detect")
        score, nms_iou = spec.thresholds.get("score", 0.6), spec.thresholds.get("nms_iou", 0.3)

        def ort(threads: int) -> Detector:
            return build_detector(spec, load_runner(spec, _options(threads)), input_size=DET_INPUT)

        def cvdnn(threads: int) -> Detector:
            return build_detector(spec, CvDnnRunner(spec), input_size=DET_INPUT)

        def cvyn(threads: int) -> FaceDetectorYNAdapter:
            return FaceDetectorYNAdapter(spec, score, nms_iou, DET_INPUT)

        found += [
            Candidate(REFERENCE_DET, "detector", "yunet", "onnxruntime", ort, "kiosk YuNetDetector (the default)"),
            Candidate("yunet/opencv", "detector", "yunet", "opencv-dnn", cvdnn, "kiosk YuNetDetector on cv2.dnn"),
            Candidate("yunet/cv-yn", "detector", "yunet", "opencv", cvyn, "cv2.FaceDetectorYN (OpenCV's decoder)"),
        ]
    for other in manifest.models.values():
        if other.task != "detect" or other.format != "tflite":
            continue
        name = f"{other.id}/tflite"
        reason = _missing(manifest, other.id)
        if reason is not None:
            absent.append(Absent(name, "detector", other.id, "tflite", reason))
            continue

        def tfl(threads: int, spec: ModelSpec = other) -> Detector:
            return build_detector(spec, load_runner(spec, _options(threads)), input_size=DET_INPUT)

        note = f"DIFFERENT MODEL ({other.family})"
        found.append(Candidate(name, "detector", other.id, "tflite", tfl, note, same_model=False))
    return found, absent


def tflite_delegation(spec: ModelSpec, threads: int) -> dict[str, Any] | None:
    """How the XNNPACK delegate partitioned a TFLite model: delegate partitions and the op types left outside."""
    try:
        from kiosk.models.backends.tflite import interpreter_class

        interp = interpreter_class()(model_path=str(spec.path), num_threads=threads)
        interp.allocate_tensors()
        ops = interp._get_ops_details()
    except (BackendUnavailableError, AttributeError, ValueError, RuntimeError):
        return None
    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    fed = {int(t) for d in delegates for t in d["inputs"]}
    produced = {int(t) for d in delegates for t in d["outputs"]}
    outside = collections.Counter(
        o["op_name"]
        for o in ops
        if o["op_name"] != "DELEGATE" and any(int(t) in fed and int(t) not in produced for t in o["outputs"])
    )
    note = "the whole graph runs in one XNNPACK partition"
    if len(delegates) != 1 or outside:
        left = ", ".join(f"{n} x{k}" for n, k in sorted(outside.items())) or "none found"
        note = (
            f"XNNPACK split the graph into {len(delegates)} partitions; ops run by TFLite's own kernels between them: "
            f"{left} (each a delegate exit and re-entry)"
        )
    return {
        "note": note,
        "xnnpack_partitions": len(delegates),
        "ops": dict(collections.Counter(o["op_name"] for o in ops if o["op_name"] != "DELEGATE")),
        "ops_feeding_a_partition_from_outside": dict(outside),
    }


# -- inputs --------------------------------------------------------------------------------------------------------


def lfw_photos(faces: Path, n: int, seed: int) -> list[Path]:
    """``n`` LFW photos, one per identity, in seeded order."""
    labels = faces / "lfw" / "labels.csv"
    first: dict[str, str] = {}
    with labels.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            first.setdefault(row["identity"], row["path"])
    names = sorted(first)
    order = np.random.default_rng([seed, 7]).permutation(len(names))
    return [faces / "lfw" / first[names[int(i)]] for i in order[:n]]


def aligned_crops(photos: Sequence[Path], manifest: Manifest, n: int) -> list[Image]:
    """Aligned recogniser crops through the kiosk's detector (onnxruntime YuNet) and the recogniser's template."""
    det_spec = manifest.get("yunet", task="detect")
    detector = build_detector(det_spec, load_runner(det_spec, _options(2)), input_size=DET_INPUT)
    template = get_template(manifest.get("sface", task="embed").align_template)
    crops: list[Image] = []
    for path in photos:
        image = read_image(path)
        faces = select_faces(detector.detect(image), "largest", image.shape)
        if faces:
            crops.append(align(image, faces[0], template))
        if len(crops) == n:
            break
    return crops


def wall_frames(photos: Sequence[Path], n: int, seed: int) -> list[Image]:
    """640x480 frames as ``kiosk bench`` composes them; every 6th frame is empty wall."""
    frames: list[Image] = []
    for i, path in enumerate(photos[:n]):
        rng = np.random.default_rng([seed, 11, i])
        if i % 6 == 5:
            frames.append(np.full((lab_frames.H, lab_frames.W, 3), lab_frames.WALL, np.uint8))
            continue
        scale = float(rng.uniform(1.5, 1.9))
        centre = (lab_frames.W / 2 + float(rng.uniform(-50, 50)), lab_frames.H / 2 + float(rng.uniform(-20, 20)))
        frames.append(lab_frames.compose(read_image(path), rng, scale, centre))
    return frames


# -- measuring -----------------------------------------------------------------------------------------------------


def _cosine_stats(ref: FloatArray, emb: FloatArray) -> dict[str, float]:
    cos = np.sum(ref * emb, axis=1)  # both unit rows
    return {"mean": round(float(cos.mean()), 6), "min": round(float(cos.min()), 6), "n": len(cos)}


def _iou(a: FloatArray, b: FloatArray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, float(x2 - x1)) * max(0.0, float(y2 - y1))
    union = float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])) - inter
    return inter / union if union > 0 else 0.0


def detector_agreement(ref: list[list[Face]], got: list[list[Face]]) -> dict[str, Any]:
    ious: list[float] = []
    lm: list[float] = []
    only_ref = only_this = 0
    for r_faces, g_faces in zip(ref, got, strict=True):
        if bool(r_faces) != bool(g_faces):
            only_ref += bool(r_faces)
            only_this += bool(g_faces)
            continue
        if not r_faces:
            continue
        r, g = max(r_faces, key=lambda f: f.area), max(g_faces, key=lambda f: f.area)
        ious.append(_iou(r.box, g.box))
        if r.scheme == g.scheme and r.landmarks.shape == g.landmarks.shape:
            lm.append(float(np.linalg.norm(r.landmarks - g.landmarks, axis=1).mean()))
    return {
        "mean_iou": round(float(np.mean(ious)), 4) if ious else None,
        "min_iou": round(float(np.min(ious)), 4) if ious else None,
        "mean_landmark_px": round(float(np.mean(lm)), 3) if lm else None,
        "landmarks": "compared" if lm else "not comparable (different landmark scheme) or no common face",
        "frames_only_reference_finds": only_ref,
        "frames_only_this_finds": only_this,
        "frames_both_find": len(ious),
        "frames": len(ref),
    }


def floor_ms(threads: int) -> float:
    return SFACE_GFLOP / (CORE_GFLOPS * threads) * 1000.0


def _say(opts: Options, text: str) -> None:
    if not opts.quiet:
        print(f"[backends] {text}", file=sys.stderr, flush=True)


def measure_recognizers(
    cands: list[Candidate], crops: list[Image], opts: Options
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Latency per (threads, batch) and agreement (at the first thread count) of every recogniser candidate."""
    latency: dict[str, Any] = {}
    agreement: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for ti, threads in enumerate(opts.threads):
        cv2.setNumThreads(threads)
        engines: dict[str, Embedder] = {}
        for c in cands:
            if c.name in failed:
                continue
            try:
                engines[c.name] = c.build(threads)
            except KioskError as exc:
                failed[c.name] = f"cannot load: {exc}"
        if ti == 0:
            embs = {name: e.embed(crops) for name, e in engines.items()}
            ref = embs.get(REFERENCE_REC)
            for name, emb in embs.items():
                agreement[name] = _cosine_stats(ref, emb) if ref is not None else None
        for batch in opts.batches:
            chunks = [crops[(i * batch + j) % len(crops)] for i in range(len(crops)) for j in range(batch)]
            groups = [chunks[i * batch : (i + 1) * batch] for i in range(len(crops))]

            def call(e: Embedder, groups: list[list[Image]] = groups) -> Callable[[int], object]:
                return lambda r: e.embed(groups[r % len(groups)])

            _say(opts, f"recogniser: {threads} thread(s), batch {batch}, {len(engines)} candidates x {opts.runs}")
            load = loadavg()
            samples = interleaved_ms({n: call(e) for n, e in engines.items()}, opts.runs, WARMUP)
            for name, s in samples.items():
                per_face = [v / batch for v in s]
                d = dist(per_face, 3)
                latency.setdefault(name, {}).setdefault(str(threads), {})[str(batch)] = {
                    "loadavg_before": load,
                    "per_face_ms": d,
                    "per_call_ms": dist(s, 3),
                    "floor_ms": round(floor_ms(threads), 3),
                    "x_floor": round(d["median"] / floor_ms(threads), 2) if d["median"] else None,
                }
        del engines
    for name, reason in failed.items():
        agreement[name] = {"error": reason}
    return latency, agreement


def measure_detectors(
    cands: list[Candidate], frames: list[Image], opts: Options
) -> tuple[dict[str, Any], dict[str, Any]]:
    latency: dict[str, Any] = {}
    agreement: dict[str, Any] = {}
    for ti, threads in enumerate(opts.threads):
        cv2.setNumThreads(threads)
        engines = {c.name: c.build(threads) for c in cands}
        if ti == 0:
            found = {name: [e.detect(f) for f in frames] for name, e in engines.items()}
            ref = found.get(REFERENCE_DET)
            for name, faces in found.items():
                agreement[name] = detector_agreement(ref, faces) if ref is not None else None

        def call(e: Any) -> Callable[[int], object]:
            return lambda r: e.detect(frames[r % len(frames)])

        _say(opts, f"detector: {threads} thread(s), {len(engines)} candidates x {opts.runs}")
        load = loadavg()
        samples = interleaved_ms({n: call(e) for n, e in engines.items()}, opts.runs, WARMUP)
        for name, s in samples.items():
            latency.setdefault(name, {})[str(threads)] = {"loadavg_before": load, "ms": dist(s, 3)}
        del engines
    return latency, agreement


def _rec_verdict(name: str, agreement: dict[str, Any]) -> str | None:
    """None when the recogniser passes, else why it is rejected."""
    a = agreement.get(name)
    if a is None:
        return "no reference embeddings (onnxruntime fp32 absent)"
    if "error" in a:
        return str(a["error"])
    if a["min"] < MIN_COSINE:
        return f"cosine min {a['min']:.4f} < {MIN_COSINE} vs {REFERENCE_REC} (mean {a['mean']:.4f})"
    return None


def _det_verdict(c: Candidate, agreement: dict[str, Any]) -> str | None:
    if not c.same_model:
        return f"different model ({c.model}): an accuracy choice, not a runtime for YuNet"
    a = agreement.get(c.name)
    if a is None:
        return "no reference detections (onnxruntime YuNet absent)"
    disagree = a["frames_only_reference_finds"] + a["frames_only_this_finds"]
    if disagree > MAX_DET_DISAGREE:
        return f"{disagree} frame(s) where only one of it and {REFERENCE_DET} finds a face"
    if a["mean_iou"] is not None and a["mean_iou"] < MIN_DET_IOU:
        return f"mean IoU {a['mean_iou']} < {MIN_DET_IOU} vs {REFERENCE_DET}"
    return None


def pick(
    rec: list[Candidate],
    det: list[Candidate],
    rec_lat: dict[str, Any],
    rec_agree: dict[str, Any],
    det_lat: dict[str, Any],
    det_agree: dict[str, Any],
    absent: list[Absent],
    opts: Options,
) -> list[dict[str, Any]]:
    """Per (task, threads): the fastest candidate whose agreement passes (recogniser: per-face median at batch 1,
    or the smallest batch measured); everything else listed as rejected (with why) or slower."""
    out: list[dict[str, Any]] = []
    batch = str(min(opts.batches))
    for threads in (str(t) for t in opts.threads):
        for task, cands in (("recognizer", rec), ("detector", det)):
            if not cands:
                continue
            rejected: list[dict[str, Any]] = []
            passing: list[tuple[float, str]] = []
            for c in cands:
                why = _rec_verdict(c.name, rec_agree) if task == "recognizer" else _det_verdict(c, det_agree)
                if task == "recognizer":
                    lat = rec_lat.get(c.name, {}).get(threads, {}).get(batch)
                    ms = lat["per_face_ms"]["median"] if lat else None
                else:
                    lat = det_lat.get(c.name, {}).get(threads)
                    ms = lat["ms"]["median"] if lat else None
                if why is None and ms is None:
                    why = "not measured"
                if why is not None or ms is None:
                    rejected.append({"candidate": c.name, "reason": why, "median_ms": ms})
                else:
                    passing.append((float(ms), c.name))
            rejected += [
                {"candidate": a.name, "reason": f"absent: {a.reason}", "median_ms": None}
                for a in absent
                if a.task == task
            ]
            passing.sort()
            entry: dict[str, Any] = {
                "task": task,
                "threads": int(threads),
                "pick": passing[0][1] if passing else None,
                "median_ms": passing[0][0] if passing else None,
                "basis": f"per-face median at batch {batch}" if task == "recognizer" else "median per 640x480 frame",
                "runner_up_slower_pct": (
                    round((passing[1][0] / passing[0][0] - 1.0) * 100.0, 1) if len(passing) > 1 else None
                ),
                "passing_by_speed": [{"candidate": n, "median_ms": ms} for ms, n in passing],
                "rejected": rejected,
            }
            if task == "recognizer" and passing:
                best = rec_lat[passing[0][1]][threads]
                entry["batching"] = {b: best[b]["per_face_ms"]["median"] for b in best}
            out.append(entry)
    return out


def measure(opts: Options, extra_recognizers: Sequence[Candidate] = ()) -> dict[str, Any]:
    """Everything: inputs, candidates, latency, agreement, pick, machine and versions."""
    mach = describe()
    started = time.perf_counter()
    faces = lab_frames.data_dir(opts.faces)
    if not (faces / "lfw" / "labels.csv").is_file():
        raise KioskError(f"no LFW faces at {faces} (lfw/labels.csv missing); set {lab_frames.ENV_DATA} or --faces DIR")
    manifest = load_manifest(opts.manifest)
    rec, rec_absent = recognizer_candidates(manifest)
    rec += list(extra_recognizers)
    det, det_absent = detector_candidates(manifest)
    if opts.only == "detector":
        rec, rec_absent = [], []
    if opts.only == "recognizer":
        det, det_absent = [], []
    absent = rec_absent + det_absent
    photos = lfw_photos(faces, max(opts.crops * 2, opts.frames), opts.seed)
    crops = aligned_crops(photos, manifest, opts.crops) if rec else []
    frames = wall_frames(photos[::-1], opts.frames, opts.seed) if det else []
    _say(opts, f"{len(crops)} crops, {len(frames)} frames; absent: {[a.name for a in absent] or 'none'}")
    rec_lat, rec_agree = measure_recognizers(rec, crops, opts) if rec else ({}, {})
    det_lat, det_agree = measure_detectors(det, frames, opts) if det else ({}, {})
    delegation = {
        c.name: tflite_delegation(manifest.get(c.model), max(opts.threads))
        for c in rec + det
        if c.runtime == "tflite" and c.model in manifest.models
    }
    picks = pick(rec, det, rec_lat, rec_agree, det_lat, det_agree, absent, opts)
    mach["loadavg_end"] = loadavg()
    cfg = _options(max(opts.threads))
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "candidates": [
            {
                "name": c.name,
                "task": c.task,
                "model": c.model,
                "runtime": c.runtime,
                "format": manifest.models[c.model].format if c.model in manifest.models else None,
                "note": c.note,
                "same_model": c.same_model,
            }
            for c in rec + det
        ],
        "absent": [dataclasses.asdict(a) for a in absent],
        "recognizer": {"latency": rec_lat, "agreement": rec_agree, "reference": REFERENCE_REC},
        "detector": {"latency": det_lat, "agreement": det_agree, "reference": REFERENCE_DET, "input_size": DET_INPUT},
        "tflite_delegation": delegation,
        "pick": picks,
        "criteria": {
            "recognizer_min_cosine": MIN_COSINE,
            "detector_min_mean_iou": MIN_DET_IOU,
            "detector_max_disagreeing_frames": MAX_DET_DISAGREE,
            "floor": f"{SFACE_GFLOP} GFLOP per face / ({CORE_GFLOPS} GFLOP/s per core x threads); "
            "78 GFLOP/s is an AVX2 FMA core at 2.45 GHz (MODELS.md), AVX-512 can reach about twice that",
        },
        "inputs": {
            "faces": str(faces),
            "crops": len(crops),
            "frames": len(frames),
            "frame_size": [lab_frames.W, lab_frames.H],
            "crop_source": "LFW photos, one per identity, kiosk YuNet (onnxruntime) + ArcFace-template alignment",
            "frame_source": "LFW photos composed onto a 640x480 wall (kiosk.lab.frames.compose); every 6th frame empty",
        },
        "method": {
            "runs": opts.runs,
            "warmup": WARMUP,
            "threads": list(opts.threads),
            "batches": list(opts.batches),
            "interleaved": "every candidate once per round, order rotating each round",
            "seconds": round(time.perf_counter() - started, 1),
        },
        "runtime_options": {
            "providers": list(cfg.providers),
            "inter_op_threads": cfg.inter_op_threads,
            "onnxruntime_session_entries": cfg.extra,
            "opencv_threads": "cv2.setNumThreads(threads) for each thread block (process-wide)",
        },
        "machine": mach,
        "versions": versions(),
    }


# -- output --------------------------------------------------------------------------------------------------------


def _f(v: float | None, width: int = 8) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}.2f}"


def format_table(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"backends — {m['cpu']}, {m['cores']} cores ({', '.join(m['flags'])}), {m['arch']}; "
        f"load {m['loadavg_start']} → {m['loadavg_end']}; {r['method']['runs']} interleaved rounds",
        "",
        "recogniser (ms per face, median / p95; cos vs ort-fp32 on "
        f"{r['inputs']['crops']} LFW crops; xfloor = median / compute floor)",
    ]
    rec = r["recognizer"]
    for name, by_t in rec["latency"].items():
        a = rec["agreement"].get(name) or {}
        cos = f"cos mean {a['mean']:.4f} min {a['min']:.4f}" if "min" in a else "cos -"
        for t, by_b in by_t.items():
            cells = "  ".join(
                f"b{b} {_f(v['per_face_ms']['median'], 6)}/{_f(v['per_face_ms']['p95'], 6)} x{v['x_floor']}"
                for b, v in by_b.items()
            )
            lines.append(f"  {name:14} t{t}  {cells}  {cos}")
    lines += ["", f"detector (ms per 640x480 frame at input {r['detector']['input_size']}; vs {REFERENCE_DET})"]
    det = r["detector"]
    for name, by_t in det["latency"].items():
        a = det["agreement"].get(name) or {}
        agree = (
            f"IoU {a.get('mean_iou')} lm {a.get('mean_landmark_px')} px, "
            f"only-ref {a.get('frames_only_reference_finds')} only-this {a.get('frames_only_this_finds')}"
        )
        for t, v in by_t.items():
            lines.append(f"  {name:22} t{t}  {_f(v['ms']['median'])} / {_f(v['ms']['p95'])}   {agree}")
    for a in r["absent"]:
        lines.append(f"  absent: {a['name']} ({a['model']}, {a['runtime']}): {a['reason']}")
    lines += ["", "pick"]
    for p in r["pick"]:
        gap = p["runner_up_slower_pct"]
        close = f"; runner-up {p['passing_by_speed'][1]['candidate']} +{gap}%" if gap is not None else ""
        lines.append(f"  {p['task']:10} t{p['threads']}: {p['pick']} ({_f(p['median_ms'], 0)} ms, {p['basis']}{close})")
        if "batching" in p:
            lines.append(f"    per-face ms by batch: {p['batching']}")
        for rej in p["rejected"]:
            lines.append(f"    rejected {rej['candidate']}: {rej['reason']}")
    return "\n".join(lines)


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None) -> tuple[Options, Path | None]:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--faces", type=Path, help=f"face data folder with lfw/ (default ${lab_frames.ENV_DATA})")
    p.add_argument("--manifest", type=Path, help="model manifest (default models/manifest.yaml)")
    p.add_argument("--crops", type=int, default=48, help="aligned LFW crops for the recogniser (default 48)")
    p.add_argument("--frames", type=int, default=24, help="640x480 frames for the detectors (default 24)")
    p.add_argument("--runs", type=int, default=30, help="interleaved timed rounds per setting (default 30)")
    p.add_argument("--threads", type=_ints, default=(1, 2), help="thread counts, e.g. 1,2 (default)")
    p.add_argument("--batches", type=_ints, default=(1, 2, 4), help="recogniser batch sizes (default 1,2,4)")
    p.add_argument("--only", choices=("recognizer", "detector"), help="measure one task only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, metavar="OUT", help="write everything as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    a = p.parse_args(argv)
    if a.crops < 1 or a.frames < 1 or a.runs < 1:
        p.error("--crops, --frames and --runs must be at least 1")
    opts = Options(a.faces, a.manifest, a.crops, a.frames, a.runs, a.threads, a.batches, a.only, a.seed, a.quiet)
    return opts, a.json


def main(argv: Sequence[str] | None = None) -> int:
    opts, json_out = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        report = measure(opts)
    except KioskError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    print(format_table(report))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {json_out}")
    return 0


__all__ = ["Absent", "Candidate", "CvDnnRunner", "Options", "main", "measure", "pick"]
