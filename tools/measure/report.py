"""Evaluate every model in the manifest and write ``models/README.md`` (generated; never edit it by hand).

For each recogniser the pipeline is the default detector (``yunet``; ``blazeface`` for a TFLite recogniser, so the
whole pipeline runs on the TFLite backend) → that recogniser; for each other detector it is that detector → ``sface``.
Each pipeline gets ``kiosk eval`` on the LFW public pairs (accuracy, TAR at FAR 1e-3) and on all pairs of the LFW
labels (FNMR at FMR 1e-4), run through the kiosk's own CLI so the figures are exactly what a user reproduces, and a
latency measurement on this machine: per face for a recogniser (one aligned crop, batch 1), per 640x480 frame with
one face for a detector. Evaluations are cached (``kiosk eval``'s embedding cache), so a re-run only pays for models
that changed.

Usage: ``python -m tools report [--only ID ...] [--data DIR] [--out models/README.md]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from kiosk.config import Config
from kiosk.lab.machine import describe, package_version
from kiosk.models.manifest import ModelSpec, load_manifest, sha256_file
from kiosk.stats import Timing, timings
from tools import ROOT
from tools.models.registry import default_models_dir

RESULTS = ROOT / "docs" / "results" / "models"
DEFAULT_DETECTOR = "yunet"
TFLITE_DETECTOR = "blazeface"
DEFAULT_RECOGNIZER = "sface"


@dataclass(frozen=True)
class Row:
    model: ModelSpec
    detector: str
    recognizer: str


def machine() -> dict[str, Any]:
    """``kiosk.lab.machine``'s description with the Python and onnxruntime versions the table's latencies ran on."""
    versions = {"python": platform.python_version(), "onnxruntime": package_version("onnxruntime")}
    return {**describe(), **versions}


def plan(models: dict[str, ModelSpec], only: list[str] | None) -> list[Row]:
    rows = []
    for spec in models.values():
        if only and spec.id not in only:
            continue
        if spec.task == "embed":
            det = TFLITE_DETECTOR if spec.format == "tflite" and TFLITE_DETECTOR in models else DEFAULT_DETECTOR
            rows.append(Row(spec, det, spec.id))
        elif spec.task == "detect":
            rows.append(Row(spec, spec.id, DEFAULT_RECOGNIZER))
        # Liveness and landmark models are not recognition pipelines: `kiosk eval-liveness` measures them.
    return rows


def _current(report: dict[str, Any], models: dict[str, ModelSpec], row: Row) -> bool:
    """True when a saved ``kiosk eval`` JSON was made with exactly the manifest's current model files."""
    used = report.get("models") or {}
    want = {"detector": row.detector, "recognizer": row.recognizer}
    return all(
        isinstance(used.get(role), dict)
        and used[role].get("id") == mid
        and mid in models
        and used[role].get("sha256") == models[mid].sha256
        for role, mid in want.items()
    )


def run_eval(
    row: Row, mode: str, csv_path: Path, root: Path, models: dict[str, ModelSpec], fresh: bool = False
) -> dict[str, Any]:
    """``kiosk eval`` through the CLI (same code path, cache and JSON as a user's run).

    A JSON already in ``docs/results/models/`` made by ``kiosk eval`` on this very csv with the same model hashes is
    reused unless ``fresh``; anything else is re-run."""
    from kiosk.cli import main as kiosk_main

    out = RESULTS / f"{row.detector}-{row.recognizer}-{mode}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not fresh and out.is_file():
        saved: dict[str, Any] = json.loads(out.read_text())
        if _current(saved, models, row) and saved.get("csv_sha256") in (None, sha256_file(csv_path)):
            print(f"report: {out.name}: made with the current model files; reused (--fresh re-runs it)", flush=True)
            return saved
    args = ["eval", f"--{mode}", str(csv_path), "--root", str(root), "--json", str(out)]
    args += ["--detector", row.detector, "--recognizer", row.recognizer]
    print(f"report: kiosk {' '.join(args)}", flush=True)
    code = kiosk_main(args)
    if code != 0:
        raise SystemExit(f"report: kiosk eval failed for {row.detector} → {row.recognizer} (exit {code})")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def measure_latency(row: Row, face_image: Path, runs: int) -> dict[str, float]:
    """Recogniser: ms per aligned face (batch 1). Detector: ms per 640x480 frame holding one face."""
    from kiosk.imageio import read_image
    from kiosk.recognition.pipeline import Pipeline

    cfg = Config()
    cfg = replace(cfg, models=replace(cfg.models, detector=row.detector, recognizer=row.recognizer))
    pipeline = Pipeline.from_config(cfg)
    image = read_image(face_image)
    frame = np.full((480, 640, 3), 128, dtype=np.uint8)
    h, w = image.shape[:2]
    y, x = (480 - h) // 2, (640 - w) // 2
    frame[y : y + h, x : x + w] = image
    if row.model.task == "detect":
        return _latency(timings(lambda: pipeline.detect(frame), runs, warmup=5))
    faces = pipeline.detect(frame)
    if not faces:
        raise SystemExit(f"report: no face found in {face_image.name} for the latency run")
    crop, _ = pipeline.prepare(frame, faces[:1])[0]
    return _latency(timings(lambda: pipeline.embedder.embed([crop]), runs, warmup=5))


def _latency(t: Timing) -> dict[str, float]:
    """The summary's ``latency_ms``: median and p95 (``kiosk.stats``, nearest rank) and the number of runs."""
    return {"median": t["median"], "p95": t["p95"], "runs": t["n"]}


def size_mb(spec: ModelSpec) -> float:
    files = [spec.path] + [p.path for p in spec.parts.values()]
    return sum(f.stat().st_size for f in files) / 1e6


def source(spec: ModelSpec) -> str:
    prov = spec.provenance
    derived = prov.get("source_model") or prov.get("source_id")
    if derived:  # quantised or converted from another manifest model
        return f"`{derived}`, {prov.get('built_by', 'converted').removeprefix('tools/').removesuffix('.py')}"
    if prov.get("package"):
        return f"{prov['package']}=={prov.get('version', '?')}"
    return str(prov.get("source_file", "user-supplied"))


def _pct(value: float | None) -> str:
    return "not run" if value is None else f"{100.0 * value:.2f} %"


def _tar(pairs: dict[str, Any], far: str) -> float | None:
    """TAR at ``far`` from a ``kiosk eval --pairs`` report (``{"tar", "threshold"}``, or None when not estimable)."""
    point = (pairs.get("tar_at_far") or {}).get(far)
    if isinstance(point, dict):
        return float(point["tar"])
    return None if point is None else float(point)


def summarise(row: Row, pairs: dict[str, Any], labels: dict[str, Any], latency: dict[str, float]) -> dict[str, Any]:
    fnmr = (labels.get("fnmr_at_fmr") or {}).get("1e-4") or {}
    return {
        "id": row.model.id,
        "task": row.model.task,
        "format": row.model.format,
        "pipeline": f"{row.detector} → {row.recognizer}",
        "source": source(row.model),
        "licence": row.model.licence,
        "size_mb": round(size_mb(row.model), 2),
        "sha256": row.model.sha256,
        "lfw_accuracy": pairs.get("accuracy_mean"),
        "lfw_accuracy_std": pairs.get("accuracy_std"),
        "tar_at_far_1e-3": _tar(pairs, "1e-3"),
        "fnmr_at_fmr_1e-4": fnmr.get("fnmr"),
        "threshold_at_fmr_1e-4": fnmr.get("threshold"),
        "no_face": pairs.get("n_failed"),
        "latency_ms": latency,
        "latency_unit": "per 640x480 frame" if row.model.task == "detect" else "per face",
    }


def render(results: list[dict[str, Any]], info: dict[str, Any], command: str) -> str:
    lines = [
        "<!-- Generated by `python -m tools report`. Do not edit by hand: re-run it. -->",
        "# Models",
        "",
        "Every model in `models/manifest.yaml`, evaluated by the kiosk's own `kiosk eval` on the LFW public part "
        "(`pairs.csv`: 10-fold accuracy and TAR at FAR 1e-3; `labels.csv`: all-pairs FNMR at FMR 1e-4) and timed "
        "on the machine below. A recogniser is measured behind the default detector (YuNet; BlazeFace for TFLite "
        "recognisers, so that pipeline is TFLite end to end); a detector in front of SFace.",
        "",
        f"Machine: {info.get('cpu', '?')}, {info.get('cores')} cores, flags {', '.join(info.get('flags', []))}; "
        f"Python {info.get('python')}, onnxruntime {info.get('onnxruntime')}; 2 inference threads. "
        f"Generated {time.strftime('%Y-%m-%d')} by `{command}`.",
        "",
        "| model | task | format | pipeline | source | licence | size | LFW accuracy | TAR @ FAR 1e-3 "
        "| FNMR @ FMR 1e-4 | latency (median / p95) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lat = r["latency_ms"]
        acc = "–"
        if r["lfw_accuracy"] is not None:
            acc = f"{100 * r['lfw_accuracy']:.2f} ± {100 * r['lfw_accuracy_std']:.2f} %"
        lines.append(
            f"| `{r['id']}` | {r['task']} | {r['format']} | {r['pipeline']} | {r['source']} | {r['licence']} "
            f"| {r['size_mb']:.1f} MB | {acc} | {_pct(r['tar_at_far_1e-3'])} | {_pct(r['fnmr_at_fmr_1e-4'])} "
            f"| {lat['median']:.1f} / {lat['p95']:.1f} ms {r['latency_unit']} |"
        )
    lines += [
        "",
        '"not run": the all-pairs evaluation was skipped for that model in this run (`--no-labels`). '
        "Per-model JSON (full `kiosk eval` reports) is in `docs/results/models/`. Reproduce one row with "
        "`kiosk eval --pairs $KIOSK_TEST_DATA/lfw/pairs.csv --detector DET --recognizer REC` (and `--labels "
        "$KIOSK_TEST_DATA/lfw/labels.csv`).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools report", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="only these model ids (the other rows are kept from the last run)")
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("KIOSK_TEST_DATA", ROOT.parent / "shared/data/faces"))
    )
    parser.add_argument("--out", type=Path, default=None, help="default: <models dir>/README.md")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per latency figure (default 200)")
    parser.add_argument("--fresh", action="store_true", help="re-run every evaluation even when a current JSON exists")
    parser.add_argument(
        "--no-labels", nargs="*", metavar="ID", help="skip the all-pairs evaluation for these ids (shown as not run)"
    )
    args = parser.parse_args(argv)
    lfw = args.data / "lfw"
    pairs_csv, labels_csv = lfw / "pairs.csv", lfw / "labels.csv"
    for path in (pairs_csv, labels_csv):
        if not path.is_file():
            print(f"report: {path} not found; set KIOSK_TEST_DATA or --data to the face data folder", file=sys.stderr)
            return 2
    models_dir = default_models_dir()
    out = args.out or models_dir / "README.md"
    manifest = load_manifest(models_dir / "manifest.yaml")
    summary_path = RESULTS / "summary.json"
    previous: dict[str, dict[str, Any]] = {}
    if args.only and summary_path.is_file():
        previous = {r["id"]: r for r in json.loads(summary_path.read_text())["models"]}
    face = lfw / "images" / "Colin_Powell" / "Colin_Powell_0001.jpg"
    results = []
    for row in plan(manifest.models, None):
        if args.only and row.model.id not in args.only:
            kept = previous.get(row.model.id)
            if kept and kept["sha256"] == row.model.sha256:
                results.append(kept)  # not asked for and unchanged since the last run
            else:
                print(f"report: {row.model.id}: not in --only and no current figures; left out", flush=True)
            continue
        pairs = run_eval(row, "pairs", pairs_csv, lfw, manifest.models, args.fresh)
        labels: dict[str, Any] = {}
        if row.model.id not in (args.no_labels or []):
            labels = run_eval(row, "labels", labels_csv, lfw, manifest.models, args.fresh)
        latency = measure_latency(row, face, args.runs)
        results.append(summarise(row, pairs, labels, latency))
        print(f"report: {row.model.id}: {json.dumps(results[-1])}", flush=True)
    info = machine()
    command = "python -m tools report" + (f" --only {' '.join(args.only)}" if args.only else "")
    command += f" --no-labels {' '.join(args.no_labels)}" if args.no_labels else ""
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps({"machine": info, "models": results}, indent=2) + "\n", encoding="utf-8")
    out.write_text(render(results, info, command), encoding="utf-8")
    print(f"report: wrote {out} and {summary_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
