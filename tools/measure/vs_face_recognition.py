"""Side by side with ``face_recognition`` (dlib): the same frames, the same run, alternating; and LFW accuracy.

``python -m tools vs-face-recognition [--venv DIR] [--frames N] [--runs K] [--pairs N] [--json OUT]``

* Installs ``face_recognition`` (``--no-deps``: its ``dlib`` requirement would compile dlib from source),
  ``dlib-bin`` (a prebuilt wheel that provides the ``dlib`` module), ``face-recognition-models``, Click, numpy and
  Pillow into a throwaway venv (default ``~/.cache/face-kiosk/vs-fr-venv``), never into the project's ``.venv``.
* Builds ``--frames`` 640x480 frames, one public LFW photo each on a plain wall (``tools.measure.replay_bench``'s
renderer,
  no jitter), written as JPEG files to a temporary folder, and times both libraries on exactly those files:

  - face_recognition's documented pipeline: ``load_image_file`` → ``face_locations(img, model="hog")`` →
    ``face_encodings(img, locations)``, defaults otherwise (one upsample, one jitter, the "small" landmarks);
  - face-kiosk's per-frame pipeline with the default config: decode (``read_image``) → detect → align → quality →
    embed (``Pipeline.analyze``) → 1:N match against a 100-person gallery. Liveness is off (the default config's
    active blink challenge needs a video of a live person; face_recognition has no liveness either).

  Each library runs in its own long-lived worker process (this file, ``--worker NAME``; face_recognition's in the
  throwaway venv), warmed up on a few frames, then runs alternate A B A B ... over all frames; a worker times each
  frame itself (``perf_counter``), so process start and the pipe are never timed. Every run is a row of the JSON.
* LFW accuracy on ``lfw/pairs.csv`` (10 folds): face_recognition's at its default tolerance (distance ≤ 0.6 = same),
  its 10-fold accuracy and TAR at FAR 1e-3 from the distances; beside it ``kiosk eval --pairs`` for the default
  config (its embedding cache makes a re-run cheap) with the accuracy at the manifest's accept threshold. Both pick
  the most central face of a photo and count a photo without a face as "different" in every pair it is in.
  ``--pairs N`` evaluates an evenly spaced subset (both libraries the same pairs); ``--pairs 0`` skips accuracy.

Worker protocol (one JSON object per line, request on stdin, answer on stdout; ``{"ok": false, "error": ...}`` on
failure): ``{"op": "hello"}`` → ``{"ok", "library", "versions", "pipeline"}``; ``{"op": "time", "paths": [...]}`` →
``{"ok", "ms": [...], "faces": [...], "stages_ms": {stage: [...]}}``; ``{"op": "encode", "paths": [...]}`` →
``{"ok", "items": [{"vector": [...] | null, "reason": str | null}]}``; ``{"op": "quit"}``.

This file's top-level imports are the standard library only: the face_recognition venv runs it by path.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import platform
import queue
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

# The checkout (this file is also run by path in another venv, so it cannot import tools.ROOT).
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
PROG = "python -m tools vs-face-recognition"
FR, FK = "face_recognition", "face_kiosk"
DEFAULT_VENV = Path("~/.cache/face-kiosk/vs-fr-venv")
FR_PACKAGES_NODEPS = ("face_recognition",)
FR_PACKAGES = ("dlib-bin", "face-recognition-models", "Click", "numpy", "Pillow")
TOLERANCE = 0.6  # face_recognition.compare_faces's default
FAILED_DISTANCE = 10.0  # a pair with a face-less photo: farther than any real distance, i.e. "different"
W, H = 640, 480
JPEG_QUALITY = 95
GALLERY_PEOPLE = 100
ENCODE_CHUNK = 50
WORKER_TIMEOUT_S = 600.0


class VsError(Exception):
    """A one-line reason this comparison cannot run (venv, worker, data).

    NOTE not a ``tools.errors.ToolError``: face_recognition's venv runs this file by path, where neither ``tools`` nor
    ``kiosk`` can be imported; ``main`` reports it in ``run_tool``'s format.
    """


# -- workers (run inside each library's environment) -----------------------------------------------------------------


def _central(boxes: Sequence[tuple[int, int, int, int]], width: int, height: int) -> int:
    """Index of the (top, right, bottom, left) box whose centre is nearest the image centre (ties: larger)."""

    def key(i: int) -> tuple[float, float]:
        t, r, b, left = boxes[i]
        dx, dy = (left + r) / 2 - width / 2, (t + b) / 2 - height / 2
        return (dx * dx + dy * dy, -float((r - left) * (b - t)))

    return min(range(len(boxes)), key=key)


class _FaceRecognitionWorker:
    def __init__(self) -> None:
        # imported by name: face_recognition lives only in the throwaway venv, dlib has no type information
        self.fr: Any = importlib.import_module("face_recognition")

    def hello(self) -> dict[str, Any]:
        import importlib.metadata as md

        dlib: Any = importlib.import_module("dlib")
        return {
            "library": FR,
            "versions": {
                "face_recognition": md.version("face_recognition"),
                "dlib": str(dlib.__version__),
                "dlib_distribution": "dlib-bin " + md.version("dlib-bin"),
                "face_recognition_models": md.version("face_recognition_models"),
                "python": platform.python_version(),
            },
            "pipeline": 'load_image_file → face_locations(model="hog") → face_encodings(img, locations)',
        }

    def time_frames(self, paths: Sequence[str]) -> dict[str, Any]:
        ms: list[float] = []
        faces: list[int] = []
        stages: dict[str, list[float]] = {"load": [], "locate": [], "encode": []}
        for path in paths:
            t0 = time.perf_counter()
            img = self.fr.load_image_file(path)
            t1 = time.perf_counter()
            locations = self.fr.face_locations(img, model="hog")
            t2 = time.perf_counter()
            encodings = self.fr.face_encodings(img, locations)
            t3 = time.perf_counter()
            ms.append((t3 - t0) * 1000)
            faces.append(len(encodings))
            for name, a, b in (("load", t0, t1), ("locate", t1, t2), ("encode", t2, t3)):
                stages[name].append((b - a) * 1000)
        return {"ms": ms, "faces": faces, "stages_ms": stages}

    def encode(self, paths: Sequence[str]) -> dict[str, Any]:
        items: list[dict[str, Any]] = []
        for path in paths:
            try:
                img = self.fr.load_image_file(path)
            except OSError as exc:
                items.append({"vector": None, "reason": f"unreadable: {exc}"})
                continue
            boxes = self.fr.face_locations(img, model="hog")
            if not boxes:
                items.append({"vector": None, "reason": "no face found"})
                continue
            box = boxes[_central(boxes, img.shape[1], img.shape[0])]
            vector = self.fr.face_encodings(img, [box])[0]
            items.append({"vector": [float(v) for v in vector], "reason": None})
        return {"items": items}


class _KioskWorker:
    def __init__(self) -> None:
        import dataclasses

        import numpy as np

        from kiosk.config import parse_config
        from kiosk.imageio import read_image
        from kiosk.recognition.match import Matcher
        from kiosk.recognition.pipeline import Pipeline

        cfg = parse_config({})
        self.liveness_default = cfg.liveness.mode
        self.cfg = dataclasses.replace(cfg, liveness=dataclasses.replace(cfg.liveness, mode="off"))
        self.pipeline = Pipeline.from_config(self.cfg)
        self.pipeline.warmup()
        self.read_image = read_image
        dim = self.pipeline.embedder.spec.output_dim or 128
        rng = np.random.default_rng(0)
        gallery = rng.standard_normal((GALLERY_PEOPLE, dim)).astype(np.float32)
        gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
        self.matcher = Matcher(
            gallery,
            np.arange(GALLERY_PEOPLE),
            [f"p{i}" for i in range(GALLERY_PEOPLE)],
            threshold=self.pipeline.thresholds.accept,
            margin=self.cfg.recognition.margin,
        )

    def hello(self) -> dict[str, Any]:
        import importlib.metadata as md

        import onnxruntime

        models = self.pipeline.models
        return {
            "library": FK,
            "versions": {
                "face_kiosk": md.version("face-kiosk"),
                "onnxruntime": str(onnxruntime.__version__),
                "python": platform.python_version(),
            },
            "pipeline": f"read_image → Pipeline.analyze ({models['detector']['id']} at "
            f"{self.cfg.detection.input_size} → align → quality → {models['recognizer']['id']}) → "
            f"Matcher.match ({GALLERY_PEOPLE} people)",
            "config": {
                "detector": models["detector"]["id"],
                "recognizer": models["recognizer"]["id"],
                "detection_input_size": self.cfg.detection.input_size,
                "select": self.cfg.detection.select,
                "intra_op_threads": self.cfg.runtime.intra_op_threads,
                "inter_op_threads": self.cfg.runtime.inter_op_threads,
                "liveness": f"off (the default config's liveness.mode is {self.liveness_default!r}: a blink "
                "challenge over several frames of a live person, not a per-frame cost on still photos)",
                "gallery": f"{GALLERY_PEOPLE} people, one template each",
            },
        }

    def time_frames(self, paths: Sequence[str]) -> dict[str, Any]:
        ms: list[float] = []
        faces: list[int] = []
        stages: dict[str, list[float]] = {"decode": [], "analyze": [], "match": []}
        for path in paths:
            t0 = time.perf_counter()
            image = self.read_image(path)
            t1 = time.perf_counter()
            results = self.pipeline.analyze(image)
            t2 = time.perf_counter()
            for r in results:
                if r.embedding is not None:
                    self.matcher.match(r.embedding)
            t3 = time.perf_counter()
            ms.append((t3 - t0) * 1000)
            faces.append(len(results))
            for name, a, b in (("decode", t0, t1), ("analyze", t1, t2), ("match", t2, t3)):
                stages[name].append((b - a) * 1000)
        return {"ms": ms, "faces": faces, "stages_ms": stages}

    def encode(self, paths: Sequence[str]) -> dict[str, Any]:
        raise VsError("face-kiosk's accuracy comes from kiosk eval, not from this worker")


def worker_main(name: str, stdin: IO[str], stdout: IO[str]) -> int:
    """Serve the JSON-lines protocol for library ``name`` until ``quit`` or end of input."""
    try:
        impl: _FaceRecognitionWorker | _KioskWorker = _FaceRecognitionWorker() if name == FR else _KioskWorker()
    except Exception as exc:  # reported to the harness as one line
        stdout.write(json.dumps({"ok": False, "error": f"{name} worker: {type(exc).__name__}: {exc}"}) + "\n")
        stdout.flush()
        return 1
    for line in stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            op = req.get("op")
            if op == "quit":
                return 0
            if op == "hello":
                answer = impl.hello()
            elif op == "time":
                answer = impl.time_frames(req["paths"])
            elif op == "encode":
                answer = impl.encode(req["paths"])
            else:
                raise VsError(f"unknown op {op!r}")
            out = {"ok": True, **answer}
        except Exception as exc:  # one line back to the harness; the worker keeps serving
            out = {"ok": False, "error": " ".join(f"{type(exc).__name__}: {exc}".split())}
        stdout.write(json.dumps(out) + "\n")
        stdout.flush()
    return 0


# -- the harness side ------------------------------------------------------------------------------------------------


class Worker:
    """A worker process speaking the protocol above; answers are read by a thread so every request has a timeout."""

    def __init__(self, name: str, argv: Sequence[str], *, cwd: Path = ROOT, timeout_s: float = WORKER_TIMEOUT_S):
        self.name = name
        self.timeout_s = timeout_s
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8")  # noqa: SIM115 - closed in close()
        try:
            self.proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                text=True,
                encoding="utf-8",
            )
        except OSError as exc:
            self._stderr.close()
            raise VsError(f"{name} worker: cannot start {argv[0]}: {exc.strerror or exc}") from exc
        self._answers: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._answers.put(line)
        self._answers.put(None)

    def _last_stderr_line(self) -> str:
        self._stderr.seek(0)
        lines = [ln.strip() for ln in self._stderr.read().splitlines() if ln.strip()]
        return lines[-1] if lines else "no output"

    def request(self, req: Mapping[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise VsError(f"{self.name} worker exited: {self._last_stderr_line()}") from exc
        try:
            line = self._answers.get(timeout=timeout_s or self.timeout_s)
        except queue.Empty as exc:
            raise VsError(f"{self.name} worker: no answer to {req.get('op')!r} within {timeout_s} s") from exc
        if line is None:
            raise VsError(f"{self.name} worker exited: {self._last_stderr_line()}")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise VsError(str(answer.get("error") or f"{self.name} worker failed"))
        return answer

    def close(self) -> None:
        try:
            if self.proc.poll() is None and self.proc.stdin is not None:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._reader.join(timeout=10)  # the worker is gone: its stdout is at end of file
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                with contextlib.suppress(OSError):  # stdin of a worker that already exited: nothing to flush
                    stream.close()
        self._stderr.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _run_step(cmd: Sequence[str], what: str, timeout_s: float = 900.0) -> None:
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VsError(f"{what}: {exc}") from exc
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
        raise VsError(f"{what}: {lines[-1] if lines else f'exit {done.returncode}'}")


def ensure_venv(venv: Path, *, python: str = sys.executable, log: Callable[[str], None] = print) -> Path:
    """The throwaway venv with face_recognition importable (created and installed when it is not); its python."""
    venv = venv.expanduser().absolute()
    if (ROOT / ".venv").absolute() in (venv, *venv.parents):
        raise VsError(f"cannot create a venv at {venv}: it would touch the project's .venv")
    py = venv_python(venv)
    probe = [str(py), "-c", "import face_recognition, dlib"]
    if py.is_file() and subprocess.run(probe, capture_output=True, timeout=120, check=False).returncode == 0:
        return py
    log(f"creating {venv} and installing face_recognition, dlib-bin, face-recognition-models")
    _run_step([python, "-m", "venv", str(venv)], f"cannot create a venv at {venv}")
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    _run_step([*pip, "--no-deps", *FR_PACKAGES_NODEPS], "pip install face_recognition failed")
    _run_step([*pip, *FR_PACKAGES], "pip install dlib-bin face-recognition-models failed")
    _run_step(probe, f"face_recognition does not import in {venv}")
    return py


def _dist(samples: Sequence[float]) -> dict[str, float]:
    """Median and p95 by ``kiosk.stats``' rule (nearest rank), and the mean; ms to 0.001."""
    from kiosk.stats import percentile  # lazily: this file's top level stays stdlib-only

    return {
        "median": round(percentile(samples, 50), 3),
        "p95": round(percentile(samples, 95), 3),
        "mean": round(statistics.fmean(samples), 3),
    }


def timing_runs(
    workers: Sequence[Worker], paths: Sequence[str], runs: int, *, warmup: int = 3, log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Warm each worker on ``warmup`` frames, then ``runs`` rounds of every worker in turn (A B A B ...) over all
    frames; one row per (round, worker)."""
    from kiosk.lab.machine import loadavg

    for w in workers:
        w.request({"op": "time", "paths": list(paths[:warmup])})
    rows: list[dict[str, Any]] = []
    for k in range(runs):
        for w in workers:
            before = loadavg()
            t0 = time.perf_counter()
            answer = w.request({"op": "time", "paths": list(paths)})
            wall = time.perf_counter() - t0
            ms = [float(v) for v in answer["ms"]]
            if len(ms) != len(paths):
                raise VsError(f"{w.name} worker timed {len(ms)} frames, expected {len(paths)}")
            row: dict[str, Any] = {
                "run": len(rows) + 1,
                "round": k + 1,
                "library": w.name,
                "frames": len(ms),
                "ms": _dist(ms),
                "fps": round(1000.0 * len(ms) / sum(ms), 3),
                "frames_with_face": sum(1 for f in answer["faces"] if f > 0),
                "stages_ms": {s: _dist(v) for s, v in (answer.get("stages_ms") or {}).items()},
                "wall_s": round(wall, 3),
                "loadavg": before,
                "samples_ms": [round(v, 3) for v in ms],
            }
            rows.append(row)
            log(
                f"run {row['run']}: {w.name:<17} median {row['ms']['median']:8.1f} ms  "
                f"fps {row['fps']:7.2f}  load {before}"
            )
    return rows


def summarise(rows: Sequence[Mapping[str, Any]], a: str = FR, b: str = FK) -> dict[str, Any]:
    """Per library over all its runs (every frame of every run pooled): ms median and p95, fps; and the ratios
    a / b (how many times slower ``a`` is), overall and per round."""
    from kiosk.stats import median

    out: dict[str, Any] = {}
    for lib in (a, b):
        mine = [r for r in rows if r["library"] == lib]
        samples = [v for r in mine for v in r["samples_ms"]]
        if not samples:
            raise VsError(f"no runs of {lib}")
        out[lib] = {
            "runs": len(mine),
            "frames_timed": len(samples),
            "ms": _dist(samples),
            "fps": round(1000.0 * len(samples) / sum(samples), 3),
            "frames_with_face": min(r["frames_with_face"] for r in mine),
            "frames": mine[0]["frames"],
        }
    per_round = []
    for k in sorted({r["round"] for r in rows}):
        ra = next(r for r in rows if r["round"] == k and r["library"] == a)
        rb = next(r for r in rows if r["round"] == k and r["library"] == b)
        per_round.append(round(ra["ms"]["median"] / rb["ms"]["median"], 3))
    out["ratio"] = {
        "what": f"{a} / {b}: how many times more time per frame {a} takes",
        "median_ms": round(out[a]["ms"]["median"] / out[b]["ms"]["median"], 3),
        "p95_ms": round(out[a]["ms"]["p95"] / out[b]["ms"]["p95"], 3),
        "fps": round(out[b]["fps"] / out[a]["fps"], 3),
        "per_round_median_ms": per_round,
        "median_of_rounds": round(median(per_round), 3),
    }
    return out


# -- frames ----------------------------------------------------------------------------------------------------------


def build_frames(lfw: Path, n: int, seed: int, folder: Path) -> list[tuple[str, Path]]:
    """``n`` 640x480 JPEG frames in ``folder``, each one LFW photo (one per identity, seeded) on a plain wall."""
    import cv2

    from kiosk.imageio import read_image
    from tools.measure.replay_bench import ClipSpec, _rng, read_lfw_labels, render_face_frame

    by_identity = read_lfw_labels(lfw / "labels.csv")
    identities = list(by_identity)
    order = _rng(seed, "vs-fr").permutation(len(identities))
    if n > len(identities):
        raise VsError(f"--frames {n}: only {len(identities)} LFW identities")
    spec = ClipSpec(jitter=0.0, degrade_prob=0.0)
    out = []
    for i, j in enumerate(order[:n]):
        rel = by_identity[identities[int(j)]][0]
        frame = render_face_frame(read_image(lfw / rel), spec, seed, i, 0)
        path = folder / f"frame_{i:04d}.jpg"
        if not cv2.imwrite(str(path), frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
            raise VsError(f"cannot write {path}")
        out.append((rel, path))
    return out


# -- accuracy --------------------------------------------------------------------------------------------------------


def pair_subset(n_total: int, n: int) -> list[int]:
    """Indices of ``n`` evenly spaced pairs out of ``n_total`` (all of them when ``n >= n_total``)."""
    if n >= n_total:
        return list(range(n_total))
    return sorted({i * n_total // n for i in range(n)})


def distance_metrics(
    distances: npt.ArrayLike, same: npt.ArrayLike, folds: Sequence[str | None], tolerance: float = TOLERANCE
) -> dict[str, Any]:
    """face_recognition's verification figures from pair distances (smaller = more alike; ``<= tolerance`` = same):
    accuracy, FAR and FRR at the tolerance; leave-one-fold-out accuracy; TAR at FAR 1e-2/1e-3 (as distances)."""
    import numpy as np

    from kiosk.lab import metrics

    d = np.asarray(distances, dtype=np.float64)
    y = np.asarray(same, dtype=bool)
    said_same = d <= tolerance
    scores = -d  # kiosk.lab.metrics works on similarities
    out: dict[str, Any] = {
        "tolerance": tolerance,
        "accuracy_at_tolerance": float(np.mean(said_same == y)),
        "far_at_tolerance": float(np.mean(said_same[~y])),
        "frr_at_tolerance": float(np.mean(~said_same[y])),
    }
    fold_ids = {f for f in folds if f is not None}
    if len(fold_ids) >= 2:
        mean, std, _ = metrics.kfold_accuracy(scores, y, np.asarray(folds))
        out["accuracy_10fold"], out["accuracy_10fold_std"] = mean, std
    else:
        out["accuracy_10fold"], out["accuracy_10fold_std"] = None, None
    tar = metrics.tar_at_far(scores[y], scores[~y], (1e-2, 1e-3))
    out["tar_at_far"] = {
        k: None if v is None else {"tar": v["tar"], "max_distance": -v["threshold"]} for k, v in tar.items()
    }
    out["roc_auc"] = metrics.roc_auc(scores[y], scores[~y])
    return out


def fr_accuracy(
    worker: Worker, pairs_csv: Path, root: Path, indices: Sequence[int], log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Encode every image of the chosen pairs once with the face_recognition worker and score the pairs."""
    import numpy as np

    from kiosk.lab.evaluate import read_pairs

    every = read_pairs(pairs_csv)
    pairs = [every[i] for i in indices]
    unique = list(dict.fromkeys(p for pair in pairs for p in (pair.path1, pair.path2)))
    vectors: dict[str, np.ndarray | None] = {}
    failed: list[dict[str, str]] = []
    t0 = time.perf_counter()
    for start in range(0, len(unique), ENCODE_CHUNK):
        chunk = unique[start : start + ENCODE_CHUNK]
        answer = worker.request({"op": "encode", "paths": [str(root / p) for p in chunk]})
        for rel, item in zip(chunk, answer["items"], strict=True):
            if item["vector"] is None:
                vectors[rel] = None
                failed.append({"path": rel, "reason": str(item["reason"])})
            else:
                vectors[rel] = np.asarray(item["vector"], dtype=np.float64)
        done = start + len(chunk)
        rate = done / max(time.perf_counter() - t0, 1e-9)
        log(f"face_recognition LFW: {done}/{len(unique)} images, {rate:.1f} img/s")
    distances = []
    for pair in pairs:
        a, b = vectors[pair.path1], vectors[pair.path2]
        distances.append(FAILED_DISTANCE if a is None or b is None else float(np.linalg.norm(a - b)))
    out = distance_metrics(distances, [p.same for p in pairs], [p.fold for p in pairs])
    return {
        "n_pairs": len(pairs),
        "n_images": len(unique),
        "n_failed": len(failed),
        "failed_policy": "a pair with a photo where HOG finds no face counts as 'different'",
        "failed_images": failed[:20],
        "face_choice": "the most central face found by HOG (as kiosk eval --select central)",
        "seconds": round(time.perf_counter() - t0, 1),
        **out,
    }


def kiosk_accuracy(pairs_csv: Path, root: Path, out_json: Path) -> dict[str, Any]:
    """``kiosk eval --pairs`` for the default config (through its CLI, embedding cache on), plus the accuracy at
    the manifest's accept threshold."""
    from kiosk.cli import main as kiosk_main
    from kiosk.config import parse_config
    from kiosk.models.manifest import load_manifest

    cfg = parse_config({})
    spec = load_manifest(cfg.models.manifest).get(cfg.models.recognizer, task="embed")
    accept = cfg.recognition.threshold if cfg.recognition.threshold is not None else spec.thresholds["accept"]
    args = ["eval", "--pairs", str(pairs_csv), "--root", str(root), "--json", str(out_json)]
    args += ["--threshold", str(accept)]
    code = kiosk_main(args)
    if code != 0:
        raise VsError(f"kiosk eval failed (exit {code})")
    r: dict[str, Any] = json.loads(out_json.read_text(encoding="utf-8"))
    tar = r.get("tar_at_far") or {}
    return {
        "command": "kiosk " + " ".join([*args[:-2], "--threshold", f"{accept:g}"]),
        "n_pairs": r["n_pairs"],
        "n_failed": r["n_failed"],
        "accuracy_10fold": r["accuracy_mean"],
        "accuracy_10fold_std": r["accuracy_std"],
        "accept_threshold": accept,
        "accuracy_at_threshold": r["at_threshold"]["accuracy"],
        "far_at_threshold": r["at_threshold"]["fmr"],
        "frr_at_threshold": r["at_threshold"]["fnmr"],
        "tar_at_far": {k: tar.get(k) for k in ("1e-2", "1e-3")},
        "roc_auc": r["roc_auc"],
        "models": r["models"],
        "seconds": r["seconds"],
    }


def accuracy(
    fr_worker: Worker, lfw: Path, n_pairs: int, tmp: Path, log: Callable[[str], None] = print
) -> dict[str, Any]:
    from kiosk.lab.evaluate import read_pairs

    pairs_csv = lfw / "pairs.csv"
    every = read_pairs(pairs_csv)
    indices = pair_subset(len(every), n_pairs)
    csv_for_kiosk = pairs_csv
    if len(indices) < len(every):
        lines = pairs_csv.read_text(encoding="utf-8").splitlines()
        csv_for_kiosk = tmp / "pairs-subset.csv"
        # pairs.csv has no blank lines: data row i is line i + 1 (after the header)
        csv_for_kiosk.write_text("\n".join([lines[0], *(lines[i + 1] for i in indices)]) + "\n", encoding="utf-8")
    log(f"LFW accuracy on {len(indices)} of {len(every)} pairs")
    fr = fr_accuracy(fr_worker, pairs_csv, lfw, indices, log=log)
    fk = kiosk_accuracy(csv_for_kiosk, lfw, tmp / "kiosk-eval.json")
    return {"pairs_csv": "lfw/pairs.csv", "n_pairs": len(indices), "subset": len(indices) < len(every), FR: fr, FK: fk}


# -- report ----------------------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """``kiosk.lab.machine``'s description (imported here: this file's top level must stay stdlib-only)."""
    from kiosk.lab.machine import describe, loadavg

    m = describe()
    return {**m, "platform": m["os"], "loadavg": loadavg()}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f} %"


def format_table(r: Mapping[str, Any]) -> str:
    s, fr, fk = r["summary"], r["summary"][FR], r["summary"][FK]
    m = r["machine"]
    lines = [
        f"face_recognition vs face-kiosk — {r['frames']['n']} frames {W}x{H} (one LFW photo each), "
        f"{r['runs_per_library']} alternating runs each",
        f"  machine: {m['cpu']}, {m['cores']} cores, load {m['loadavg']} → {r['loadavg_after']}",
        "",
        f"  {'':44}{'median ms':>10}{'p95 ms':>10}{'fps':>9}{'face found':>12}",
    ]
    for lib, row in ((FR, fr), (FK, fk)):
        label = f"{lib} {r['libraries'][lib]['versions'].get(lib, '')}".strip()
        lines.append(
            f"  {label:44}{row['ms']['median']:>10.1f}{row['ms']['p95']:>10.1f}{row['fps']:>9.2f}"
            f"{row['frames_with_face']:>7}/{row['frames']}"
        )
    ratio = s["ratio"]
    lines.append(
        f"  {'ratio face_recognition / face-kiosk':44}{ratio['median_ms']:>9.1f}x{ratio['p95_ms']:>9.1f}x"
        f"{ratio['fps']:>8.1f}x   per round {ratio['per_round_median_ms']}"
    )
    acc = r.get("accuracy")
    if acc:
        a, b = acc[FR], acc[FK]
        lines += [
            "",
            f"  LFW pairs ({acc['n_pairs']}{' subset' if acc['subset'] else ''}) {'':11}{'10-fold':>10}"
            f"{'at default thr.':>17}{'TAR@FAR1e-3':>13}{'no face':>9}",
            f"  {FR + ' (tolerance 0.6)':44}{_pct(a['accuracy_10fold']):>10}{_pct(a['accuracy_at_tolerance']):>17}"
            f"{_pct((a['tar_at_far'].get('1e-3') or {}).get('tar')):>13}{a['n_failed']:>9}",
            f"  {'face-kiosk (accept ' + format(b['accept_threshold'], 'g') + ')':44}"
            f"{_pct(b['accuracy_10fold']):>10}{_pct(b['accuracy_at_threshold']):>17}"
            f"{_pct((b['tar_at_far'].get('1e-3') or {}).get('tar')):>13}{b['n_failed']:>9}",
        ]
    return "\n".join(lines)


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _non_negative(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {v}")
    return v


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Time face_recognition's HOG pipeline and face-kiosk's per-frame pipeline on the same 640x480 "
        "frames in alternating runs, and compare their LFW pair accuracy. Prints a table; --json writes every run.",
    )
    p.add_argument(
        "--venv", type=Path, default=DEFAULT_VENV, help=f"throwaway venv for face_recognition ({DEFAULT_VENV})"
    )
    p.add_argument("--frames", type=_positive, default=30, help="frames per run (default 30)")
    p.add_argument("--runs", type=_positive, default=3, help="runs per library, alternating (default 3)")
    p.add_argument("--pairs", type=_non_negative, help="LFW pairs to evaluate (default: all; 0 skips accuracy)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the full report here")
    p.add_argument("--seed", type=int, default=0, help="selects the LFW photos for the frames (default 0)")
    p.add_argument("--data", type=Path, help="face data folder (default $KIOSK_TEST_DATA or ../shared/data/faces)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    # Replace a side's worker with another command speaking the same protocol (the tests use fakes).
    p.add_argument("--fr-worker", help=argparse.SUPPRESS)
    p.add_argument("--kiosk-worker", help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=(FR, FK), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison: 0 when it ran, 1 with one line on stderr when it cannot (venv, worker, data)."""
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker, sys.stdin, sys.stdout)

    def log(text: str) -> None:
        if not args.quiet:
            print(f"[vs-face-recognition] {text}", file=sys.stderr, flush=True)

    try:
        report = compare(args, log)
    except VsError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    print(format_table(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"  JSON: {args.json}")
    return 0


def compare(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    from kiosk.lab.machine import loadavg, versions
    from tools.measure.replay_bench import data_dir, git_state

    started = datetime.now(UTC).isoformat(timespec="seconds")
    t_start = time.perf_counter()
    lfw = data_dir(args.data) / "lfw"
    if not (lfw / "labels.csv").is_file() or not (lfw / "pairs.csv").is_file():
        raise VsError(f"no LFW data at {lfw} (labels.csv and pairs.csv): set KIOSK_TEST_DATA or --data")
    machine_before = machine()
    if args.fr_worker:
        fr_cmd = shlex.split(args.fr_worker)
    else:
        py = ensure_venv(args.venv, log=log)
        fr_cmd = [str(py), "-I", str(Path(__file__).resolve()), "--worker", FR]  # -I: tools/ not on sys.path
    fk_cmd = (
        shlex.split(args.kiosk_worker)
        if args.kiosk_worker
        else [sys.executable, "-m", "tools.measure.vs_face_recognition"]
    )
    if not args.kiosk_worker:
        fk_cmd += ["--worker", FK]
    with tempfile.TemporaryDirectory(prefix="vs-fr-") as tmp_name:
        tmp = Path(tmp_name)
        frames = build_frames(lfw, args.frames, args.seed, tmp)
        paths = [str(p) for _, p in frames]
        with Worker(FR, fr_cmd) as fr_w, Worker(FK, fk_cmd) as fk_w:
            libraries = {
                w.name: {k: v for k, v in w.request({"op": "hello"}).items() if k != "ok"} for w in (fr_w, fk_w)
            }
            log(f"timing {len(paths)} frames, {args.runs} runs per library, alternating")
            rows = timing_runs([fr_w, fk_w], paths, args.runs, log=log)
            summary = summarise(rows)
            n_pairs = args.pairs if args.pairs is not None else 10**9
            acc = accuracy(fr_w, lfw, n_pairs, tmp, log=log) if n_pairs > 0 else None
    return {
        "command": f"{PROG} " + " ".join(_argv(args)),
        "started_utc": started,
        "machine": machine_before,
        "loadavg_after": loadavg(),
        "versions": versions(),
        "git": git_state(),
        "frames": {
            "n": len(frames),
            "width": W,
            "height": H,
            "jpeg_quality": JPEG_QUALITY,
            "seed": args.seed,
            "what": "one LFW photo per frame, scaled 1.5-2x onto a plain grey wall (tools.measure.replay_bench "
            "renderer, no jitter), JPEG files read and decoded by each library inside the timed frame",
            "photos": [rel for rel, _ in frames],
        },
        "libraries": libraries,
        "runs_per_library": args.runs,
        "order": [r["library"] for r in rows],
        "runs": rows,
        "summary": summary,
        "accuracy": acc,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }


def _argv(args: argparse.Namespace) -> list[str]:
    """The options that shape the result, as a command line (the test-only worker overrides are left out)."""
    out = ["--frames", str(args.frames), "--runs", str(args.runs), "--seed", str(args.seed)]
    if args.pairs is not None:
        out += ["--pairs", str(args.pairs)]
    return out


if __name__ == "__main__":
    sys.exit(main())
