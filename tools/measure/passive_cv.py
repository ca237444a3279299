"""Choose the passive liveness rule on Replay-Attack frames by identity-disjoint cross-validation.

Every frame of ``$KIOSK_TEST_DATA/liveness/replay-attack`` (``labels_detail.csv``: 360 videos x 4 frames, 15
people) goes through the kiosk's detector (largest face) and each configured MiniFASNet model at its crop scale
times each of ``--scales`` (0.8, 1.0, 1.25). Candidates are then (models: V2, V1SE or both averaged as the door
does) x (crop scale factor) x (fusion of a video's frames: ``kiosk.liveness.passive.fuse`` rules). The rule and its
threshold are chosen by ``kiosk.lab.liveness_cv.cross_validate`` (people in ``--folds`` folds; threshold = the
highest with BPCER <= ``--bpcer-target`` on the tuning folds; candidate = lowest worst-type APCER there), per video
(the door) and per image. The door's defaults (both models, scale 1.0, mean, threshold 0.5) are reported untouched
on the same held-out folds, with Wilson and person-resampled bootstrap 95 % intervals.

Usage: ``python -m tools passive-cv -c live.yaml [--data DIR] [--cache FILE.npz] [--json OUT]`` where live.yaml names
the converted models (``models.manifest``, ``liveness.passive.models``). ``--cache`` keeps the per-frame logits
(derived from the data: keep it outside the repository). Prints figures; no image or crop is written anywhere.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from kiosk.config import PASSIVE_FUSIONS, load_config
from kiosk.context import Context
from kiosk.imageio import read_image
from kiosk.lab.liveness_cv import (
    Truth,
    choose,
    cluster_bootstrap,
    cross_validate,
    error_rates,
    with_wilson,
)
from kiosk.lab.liveness_eval import group_key
from kiosk.lab.machine import describe, loadavg, versions
from kiosk.liveness.passive import PassiveLiveness, crop_patch, face_box_xywh, fuse, softmax
from kiosk.recognition.pipeline import runtime_options
from tools import ROOT

F64 = npt.NDArray[np.float64]
SHORT = {"minifasnet_v2": "v2", "minifasnet_v1se": "v1se"}
DOOR_THRESHOLD = 0.5


def _rows(data: Path) -> list[dict[str, str]]:
    with (data / "labels_detail.csv").open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def score_frames(cfg_path: Path, data: Path, scales: list[float]) -> dict[str, Any]:
    """Per frame: the largest face's logits from each model at each scale factor (NaN where no face)."""
    cfg = load_config(cfg_path)
    rows = _rows(data)
    with Context(cfg) as ctx:
        ids = list(cfg.liveness.passive.models)
        passive = PassiveLiveness.from_manifest(ctx.manifest, ids, runtime_options(cfg))
        logits = np.full((len(rows), len(ids), len(scales), 3), np.nan, dtype=np.float64)
        for i, row in enumerate(rows):
            image = read_image(data / row["path"])
            faces = ctx.pipeline.detect(image)
            if faces:
                face = max(faces, key=lambda f: f.area)
                for j, model in enumerate(passive.models):
                    box = face_box_xywh(face)
                    patches = [crop_patch(image, box, model.params.crop_scale * s, model.size) for s in scales]
                    logits[i, j] = model.logits_for_patches(patches)
            if sys.stderr.isatty():
                sys.stderr.write(f"\r{i + 1}/{len(rows)} frames")
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        hashes = {m.spec.id: m.spec.sha256 for m in passive.models}
        hashes[ctx.pipeline.detector.spec.id] = ctx.pipeline.detector.spec.sha256
    return {"paths": [r["path"] for r in rows], "ids": ids, "scales": scales, "logits": logits, "hashes": hashes}


def frame_scores(logits: F64, ids: list[str], scales: list[float]) -> dict[str, F64]:
    """Candidate per-frame scores: each model alone and all of them averaged, at each scale factor."""
    real = softmax(logits)[..., 1]  # (frames, models, scales)
    out: dict[str, F64] = {}
    for k, s in enumerate(scales):
        both = "+".join(SHORT.get(i, i) for i in ids)
        out[f"{both}@{s:g}"] = real[:, :, k].mean(axis=1)
        for j, i in enumerate(ids):
            out[f"{SHORT.get(i, i)}@{s:g}"] = real[:, j, k]
    return dict(sorted(out.items(), key=lambda kv: (kv[0].split("@")[0] != both, abs(float(kv[0].split("@")[1]) - 1))))


def video_scores(per_frame: dict[str, F64], paths: list[str]) -> tuple[list[str], dict[str, F64]]:
    """Each video's fused score for every frame candidate x fusion rule (NaN when no frame has a face)."""
    keys = [group_key(p, "dir") for p in paths]
    videos = list(dict.fromkeys(keys))
    members = {v: [i for i, k in enumerate(keys) if k == v] for v in videos}
    out: dict[str, F64] = {}
    for name, scores in per_frame.items():
        for rule in PASSIVE_FUSIONS:
            col = np.full(len(videos), np.nan)
            for n, v in enumerate(videos):
                vals = [float(scores[i]) for i in members[v] if np.isfinite(scores[i])]
                if vals:
                    col[n] = fuse(vals, rule)
            out[f"{name}/{rule}"] = col
    return videos, out


def _truth(rows: list[dict[str, str]], index: list[int]) -> Truth:
    return Truth.of(
        [rows[i]["label"] for i in index], [rows[i]["attack_type"] for i in index], [rows[i]["identity"] for i in index]
    )


def operating_point(scores: F64, truth: Truth, threshold: float) -> dict[str, Any]:
    r = with_wilson(error_rates(scores, truth, threshold))
    r["ci95_person_bootstrap"] = cluster_bootstrap(scores, truth, threshold)
    return r


def _pct(v: float | None) -> str:
    return "  n/a" if v is None else f"{100 * v:5.1f}"


def _line(label: str, r: dict[str, Any]) -> str:
    a = "  ".join(f"{k} {_pct(v)}" for k, v in r["apcer"].items())
    return f"  {label:<44} APCER {a}  | BPCER {_pct(r['bpcer'])}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools passive-cv", description=__doc__.splitlines()[0])
    default_data = Path(os.environ.get("KIOSK_TEST_DATA", str(ROOT / ".." / "shared" / "data" / "faces")))
    parser.add_argument("-c", "--config", type=Path, required=True, help="kiosk config naming the liveness models")
    parser.add_argument("--data", type=Path, default=default_data / "liveness" / "replay-attack")
    parser.add_argument("--scales", default="0.8,1,1.25", help="crop scale factors to try (default 0.8,1,1.25)")
    parser.add_argument("--folds", type=int, default=5, help="identity-disjoint folds (default 5: 3 people each)")
    parser.add_argument("--bpcer-target", type=float, default=0.05, help="threshold rule on the tuning folds")
    parser.add_argument("--cache", type=Path, help="npz of per-frame logits (outside the repository)")
    parser.add_argument("--json", type=Path, dest="json_out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    scales = [float(s) for s in args.scales.split(",")]
    started = describe()
    if args.cache is not None and args.cache.is_file():
        z = np.load(args.cache, allow_pickle=False)
        raw = {k: z[k] for k in z.files}
        cached = json.loads(str(raw["meta"]))
        if cached["scales"] != scales:
            raise SystemExit(f"{args.cache}: cached scales {cached['scales']} differ from --scales; delete it")
        scored = {**cached, "logits": raw["logits"]}
    else:
        scored = score_frames(args.config, args.data, scales)
        if args.cache is not None:
            meta = {k: scored[k] for k in ("paths", "ids", "scales", "hashes")}
            np.savez_compressed(args.cache, logits=scored["logits"], meta=json.dumps(meta))
    rows = _rows(args.data)
    assert [r["path"] for r in rows] == scored["paths"], "labels_detail.csv changed since the cache was written"

    per_frame = frame_scores(scored["logits"], scored["ids"], scales)
    videos, per_video = video_scores(per_frame, scored["paths"])
    first = {v: next(i for i, p in enumerate(scored["paths"]) if group_key(p, "dir") == v) for v in videos}
    t_frames = _truth(rows, list(range(len(rows))))
    t_videos = _truth(rows, [first[v] for v in videos])
    door_frame = next(iter(per_frame))  # both models, scale 1
    door_video = f"{door_frame}/mean"

    report: dict[str, Any] = {
        "data": "liveness/replay-attack (Idiap Replay-Attack devel, 4 frames per video)",
        "models": scored["hashes"],
        "scales": scales,
        "candidates": {"per_video": list(per_video), "per_image": list(per_frame)},
        "threshold_rule": f"highest threshold with BPCER <= {args.bpcer_target:g} on the tuning folds; candidate with "
        "the lowest worst-type APCER there (ties: mean APCER, then the earlier, door-like candidate)",
    }
    # Three families: the models only (the door's mean fusion kept), what the door can be configured to do (models,
    # fusion; the crop scale is the one the model was trained with), and the same with the crop scale factors too (a
    # finding, not a setting). Per image there is nothing to fuse: the first two are the same.
    families: dict[str, Callable[[str], bool]] = {
        "door_models_only": lambda name: name.endswith(("@1", "@1/mean")),
        "door_configurable": lambda name: name.split("/")[0].endswith("@1"),
        "with_crop_scales": lambda name: True,
    }
    for level, all_cands, truth, base in (
        ("per_video", per_video, t_videos, door_video),
        ("per_image", per_frame, t_frames, door_frame),
    ):
        report[level] = {
            "n": len(truth),
            "door_defaults": {"candidate": base, **operating_point(all_cands[base], truth, DOOR_THRESHOLD)},
        }
        for family, keep in families.items():
            cands = {k: v for k, v in all_cands.items() if keep(k)}
            cv = cross_validate(cands, truth, args.folds, args.bpcer_target, baseline=(base, DOOR_THRESHOLD))
            final, thr, table = choose(cands, truth, np.ones(len(truth), dtype=bool), args.bpcer_target)
            report[level][family] = {
                "candidates": list(cands),
                "cv": cv,
                "final_choice_all_people": {
                    "candidate": final,
                    "threshold": thr,
                    "note": "chosen on all 15 people: its own rates are in-sample (optimistic); the CV pooled "
                    "held-out rates are the estimate",
                    "in_sample": operating_point(cands[final], truth, thr),
                },
                "all_candidates_in_sample_at_bpcer_target": {
                    k: {kk: v[kk] for kk in ("threshold", "apcer", "apcer_max", "bpcer")} for k, v in table.items()
                },
            }
            p = cv["pooled_held_out"]
            print(f"{level} ({len(truth)} presentations), {family}, {args.folds} identity-disjoint folds:")
            chosen = ", ".join(f"{f['chosen']['candidate']} @ {f['chosen']['threshold']:.4f}" for f in cv["per_fold"])
            print(f"  chosen per fold: {chosen}")
            print(_line("door defaults (threshold 0.5), held out", p["baseline"]))
            print(_line("door rule, CV threshold, held out", p["baseline_rule_cv_threshold"]))
            print(_line("CV choice, held out", p["chosen"]))
            print(f"  final choice on all people: {final} @ {thr:.4f}")
    report["machine"] = started | {"loadavg_end": loadavg()}
    report["versions"] = versions()
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
