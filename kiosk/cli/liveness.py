"""``kiosk eval-liveness``: APCER per attack type and BPCER of a liveness layer over labelled images and videos."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from kiosk.config import PASSIVE_FUSIONS, Config
from kiosk.context import Context
from kiosk.door.track import Tracker
from kiosk.errors import InputError, KioskError
from kiosk.imageio import read_image
from kiosk.lab.liveness_eval import (
    Presentation,
    Scored,
    breakdown,
    evaluate,
    group_detail,
    group_scored,
    intervals,
    parse_group_by,
    read_detail,
    read_presentations,
    score_all,
)
from kiosk.lab.machine import describe, loadavg
from kiosk.recognition.pipeline import Pipeline, runtime_options
from kiosk.types import Face, Image


def register(sub: Any) -> None:
    p = sub.add_parser(
        "eval-liveness",
        help="measure a liveness layer: APCER per attack type, BPCER (ISO/IEC 30107-3)",
        description=cmd_eval_liveness.__doc__,
    )
    p.add_argument("--labels", type=Path, help="CSV with columns path,label,attack_type (or --splice)")
    p.add_argument("--root", type=Path, help="folder the CSV paths are relative to (default: the CSV's folder)")
    p.add_argument("--json", type=Path, dest="json_out", metavar="OUT", help="write the full report as JSON here")
    p.add_argument(
        "--layer",
        choices=["passive", "active"],
        default="passive",
        help="passive: MiniFASNet live-face probability (default); active: 1 when a blink is seen in a video, else 0",
    )
    p.add_argument("--models", help="passive: comma-separated liveness model ids (default: liveness.passive.models)")
    p.add_argument("--threshold", type=float, help="decision threshold (default: liveness.passive.threshold; 0.5)")
    p.add_argument("--every", type=int, default=1, help="videos: score every Nth frame (default 1)")
    p.add_argument(
        "--group-by",
        metavar="dir|N",
        help="passive: a presentation is a group of rows, its rows' scores fused as the door fuses a track's frames: "
        "'dir' groups rows by their parent folder (one video's frames), N by their first N folders; reports per "
        "image and per group",
    )
    p.add_argument(
        "--fusion",
        choices=PASSIVE_FUSIONS,
        help="--group-by: how a group's scores become one (default: liveness.passive.fusion, the door's rule)",
    )
    p.add_argument(
        "--detail",
        type=Path,
        metavar="CSV",
        help="CSV with path plus attribute columns (Replay-Attack's labels_detail.csv: support); adds rates per "
        "value of each (and per light, from Replay-Attack folder names)",
    )
    p.add_argument(
        "--splice",
        action="store_true",
        help="instead of --labels: build spliced presentations (the face answering the blink challenge is not the "
        "one matched) in memory from the blink recordings and LFW in --faces, and run each through the real door "
        "loop; score 1 = the door opened for the claimed person",
    )
    p.add_argument(
        "--faces",
        type=Path,
        metavar="DIR",
        help="--splice: face data folder (default $KIOSK_TEST_DATA, else <project>/../shared/data/faces)",
    )
    p.add_argument("--limit", type=int, help="--splice: use only the first N labelled blinks (default: all 27)")
    p.add_argument(
        "--blinks",
        type=Path,
        metavar="CSV",
        help="instead of --labels: score blink events against labelled blinks (columns video,start_frame,end_frame,"
        "start_s,end_s; times from <video>_timestamps.txt when present): recall and false blinks per minute; with "
        "--every N all N phases are run",
    )
    p.set_defaults(func=cmd_eval_liveness)


def cmd_eval_liveness(args: argparse.Namespace, cfg: Config) -> int:
    """Score each presentation (image, or video counted once) with the passive layer's fused live-face probability
    (a video: the mean over its frames with a face) or, with --layer active, whether a blink is seen (videos only).
    Prints APCER per attack type (with Wilson 95 % intervals), BPCER, BPCER20/BPCER100 and failures to acquire;
    --json writes them with the curve over thresholds 0..1 and every presentation's score. With --group-by a
    presentation is a group of rows (a video's frames: --group-by dir), scored as the door scores a track: its rows'
    scores fused by liveness.passive.fusion (or --fusion); both the per-image and the per-group figures are given.
    --detail adds the rates per support and light. With --blinks CSV: blink events against labelled blinks
    (recall, false blinks per minute, time to the first blink, per video and in total)."""
    if args.every < 1:
        raise InputError("--every must be at least 1")
    if args.blinks is not None:
        if args.labels is not None or args.splice:
            raise InputError("--blinks scores its own CSV: leave out --labels and --splice")
        return _blinks(args, cfg)
    if args.splice:
        if args.labels is not None:
            raise InputError("--splice builds its own presentations: leave out --labels")
        return _splice(args, cfg)
    if args.labels is None:
        raise InputError("eval-liveness needs --labels CSV (or --blinks CSV, or --splice)")
    items = read_presentations(args.labels)
    root = args.root if args.root is not None else args.labels.parent
    threshold = args.threshold
    if threshold is None:
        threshold = cfg.liveness.passive.threshold if args.layer == "passive" else 0.5
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"--threshold must be within 0..1, got {threshold}")
    group_by = parse_group_by(args.group_by) if args.group_by is not None else None
    if group_by is not None and args.layer != "passive":
        raise InputError("--group-by fuses passive scores: use it with --layer passive")
    if args.fusion is not None and group_by is None:
        raise InputError("--fusion needs --group-by (it fuses a group's scores)")
    fusion = args.fusion or cfg.liveness.passive.fusion
    detail = read_detail(args.detail) if args.detail is not None else None
    started = describe()
    with Context(cfg) as ctx:
        pipeline = ctx.pipeline
        if args.layer == "passive":
            scorer, models = _passive_scorer(args, cfg, ctx, pipeline)
        else:
            scorer, models = _active_scorer(args, cfg, ctx, pipeline)
        show = sys.stderr.isatty()

        def progress(done: int, total: int) -> None:
            if show:
                sys.stderr.write(f"\r{done}/{total} presentations")
                sys.stderr.flush()

        scored = score_all(items, root, scorer, progress)
        if show:
            sys.stderr.write("\n")
    per_image = _measured(scored, threshold, detail)
    report: dict[str, Any] = {
        "labels": str(args.labels),
        "layer": args.layer,
        "models": models,
        "detector": {pipeline.detector.spec.id: pipeline.detector.spec.sha256},
        "machine": started | {"loadavg_end": loadavg()},
    }
    if group_by is None:
        report.update(per_image)
        report["presentations"] = [s.as_dict() for s in scored]
    else:
        groups = group_scored(scored, group_by, fusion)
        report.update({"group_by": group_by, "fusion": fusion})
        report.update(_measured(groups, threshold, group_detail(detail, group_by) if detail is not None else None))
        report["per_image"] = per_image
        report["presentations"] = [s.as_dict() for s in groups]
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if group_by is not None:
        print("per image:")
        _print({**per_image, "layer": args.layer, "models": models})
        print(f"per presentation (rows grouped by {group_by}, fusion {fusion}):")
    _print(report)
    return 0


def _measured(scored: list[Scored], threshold: float, detail: dict[str, dict[str, str]] | None) -> dict[str, Any]:
    """evaluate() plus Wilson intervals and, with a detail CSV, the rates per attribute value."""
    out = evaluate(scored, threshold)
    out["intervals"] = intervals(scored, threshold)
    if detail is not None:
        out["by"] = breakdown(scored, detail, threshold)
    return out


def _splice(args: argparse.Namespace, cfg: Config) -> int:
    """``--splice``: the door loop's decision (recogniser, identity continuity, active blink challenge) on spliced
    presentations; the configured gallery is not used (each clip enrols its claimed person in memory)."""
    from kiosk.door.decide import continuity_allowance
    from kiosk.lab.frames import data_dir
    from kiosk.lab.splice import score_splices

    if args.limit is not None and args.limit < 1:
        raise InputError("--limit must be at least 1")
    faces = data_dir(args.faces)
    if not (faces / "liveness" / "blinks" / "blinks.csv").is_file() or not (faces / "lfw" / "labels.csv").is_file():
        raise InputError(
            f"--splice needs the blink recordings and LFW under {faces} (liveness/blinks/, lfw/): pass --faces DIR "
            "or set KIOSK_TEST_DATA"
        )
    threshold = 0.5 if args.threshold is None else args.threshold
    # The recordings can answer a blink, not a head turn: the active layer is measured with the blink challenge.
    live_cfg = dataclasses.replace(
        cfg.liveness, mode="active", active=dataclasses.replace(cfg.liveness.active, challenges=("blink",), steps=1)
    )
    cfg = dataclasses.replace(cfg, liveness=live_cfg)
    with Context(cfg) as ctx:
        liveness = ctx.liveness
        assert liveness is not None and liveness.active is not None  # mode is active
        show = sys.stderr.isatty()

        def progress(done: int, total: int) -> None:
            if show:
                sys.stderr.write(f"\r{done}/{total} blinks")
                sys.stderr.flush()

        scored = score_splices(ctx, liveness, faces, limit=args.limit, progress=progress)
        if show:
            sys.stderr.write("\n")
        t = ctx.pipeline.thresholds
        continuity = t.accept - continuity_allowance(t.accept, t.likely)
        mesh = liveness.active.mesh
        models = {s.id: s.sha256 for s in (ctx.pipeline.detector.spec, ctx.pipeline.embedder.spec, mesh.spec)}
        if mesh.eyes is not None:
            models[mesh.eyes.spec.id] = mesh.eyes.spec.sha256
    report = evaluate(scored, threshold)
    kinds = sorted({s.item.attack_type or "bona_fide" for s in scored})
    of_kind = {
        k: [s for s in scored if (s.item.attack_type or "bona_fide") == k and s.score is not None] for k in kinds
    }
    # How many presentations got as far as a liveness challenge, and in how many the continuity rule restarted it.
    restarts = {
        k: {
            "challenged": sum(1 for s in v if s.extra.get("challenges")),
            "restarted": sum(1 for s in v if s.extra.get("continuity_restarts")),
        }
        for k, v in of_kind.items()
    }
    report = {
        "labels": "spliced presentations (kiosk.lab.splice) from liveness/blinks and lfw",
        "layer": "door",
        "models": models,
        "continuity_threshold": round(continuity, 4),
        **report,
        "continuity_restarts": restarts,
        "presentations": [s.as_dict() for s in scored],
    }
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    _print(report)
    print("  reached a liveness challenge / identity-continuity restart:")
    for k, v in restarts.items():
        print(f"    {k:<22} {v['challenged']:>3} / {v['restarted']:>3}   (n={len(of_kind[k])})")
    return 0


def _blinks(args: argparse.Namespace, cfg: Config) -> int:
    """``--blinks``: the active layer's blink detector on labelled videos, scored per blink event
    (``kiosk.lab.blink_eval``): the detector, tracker and mesh of the door, one blink detector per track."""
    from kiosk.lab.blink_eval import VideoTrace, evaluate_blinks, print_report, read_blinks, trace_video
    from kiosk.lab.machine import describe
    from kiosk.liveness.blink import BlinkDetector, eye_openness
    from kiosk.liveness.mesh import load_face_mesh

    labels = read_blinks(args.blinks)
    root = args.root if args.root is not None else args.blinks.parent
    machine = describe()
    with Context(cfg) as ctx:
        pipeline = ctx.pipeline
        mesh = load_face_mesh(ctx.manifest, cfg.liveness.active.model, runtime_options(cfg))
        models = {s.id: s.sha256 for s in (pipeline.detector.spec, mesh.spec)}
        if mesh.eyes is not None:
            models[mesh.eyes.spec.id] = mesh.eyes.spec.sha256
        show = sys.stderr.isatty()

        def openness(image: Image, face: Face) -> float | None:
            result = mesh.landmarks(image, face)
            if result is None or result.presence < mesh.presence_threshold:
                return None
            return eye_openness(result.points)

        def measure(path: Path) -> VideoTrace:
            def progress(done: int) -> None:
                if show and done % 30 == 0:
                    sys.stderr.write(f"\r{path.name}: {done} frames")
                    sys.stderr.flush()

            trace = trace_video(path, lambda image: _largest(pipeline, image), openness, progress)
            if show:
                sys.stderr.write("\n")
            return trace

        report = evaluate_blinks(
            labels,
            root,
            args.every,
            measure,
            BlinkDetector,
            lambda: Tracker(iou_threshold=cfg.decision.track_iou, max_age_s=cfg.decision.track_max_age_s),
        )
    sample = BlinkDetector()
    params = {k: v for k, v in vars(sample).items() if not k.startswith("_") and isinstance(v, int | float)}
    for k in ("blinks", "min_ratio", "last_onset"):
        params.pop(k, None)
    report = {
        "labels": str(args.blinks),
        "layer": "active blink",
        **{k: report[k] for k in ("n_blinks", "blink_recall", "false_blinks_per_min")},
        "detector": {"class": f"{type(sample).__module__}.{type(sample).__qualname__}", "params": params},
        "models": models,
        "machine": machine,
        **report,
    }
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print_report(report)
    return 0


# -- scorers -----------------------------------------------------------------------------------------------------


def _largest(pipeline: Pipeline, image: Image) -> Face | None:
    faces = pipeline.detect(image)
    return max(faces, key=lambda f: f.area) if faces else None


def _frames(path: Path, every: int) -> tuple[list[tuple[float, Image]], float]:
    """Decode a video: (time in seconds, frame) for every ``every``-th frame, and the frame rate."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise InputError(f"{path}: cannot open as a video")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        fps = fps if fps > 0.0 else 25.0
        out: list[tuple[float, Image]] = []
        i = 0
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            if i % every == 0:
                out.append((i / fps, np.ascontiguousarray(frame, dtype=np.uint8)))
            i += 1
    finally:
        cap.release()
    if not out:
        raise InputError(f"{path}: no frames could be decoded")
    return out, fps


def _passive_scorer(
    args: argparse.Namespace, cfg: Config, ctx: Context, pipeline: Pipeline
) -> tuple[Any, dict[str, Any]]:
    from kiosk.liveness.passive import PassiveLiveness

    ids = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else list(cfg.liveness.passive.models)
    if not ids:
        raise InputError(
            "no passive liveness model: set liveness.passive.models or pass --models "
            "(convert MiniFASNet checkpoints with `python -m tools minifasnet`)"
        )
    passive = PassiveLiveness.from_manifest(ctx.manifest, ids, runtime_options(cfg))
    models = {i: ctx.manifest.get(i).sha256 for i in ids}

    def score(item: Presentation, path: Path) -> Scored:
        try:
            frames = _frames(path, args.every)[0] if item.is_video else [(0.0, read_image(path))]
        except KioskError as exc:
            return Scored(item, None, reason=str(exc))
        values = []
        for _, image in frames:
            face = _largest(pipeline, image)
            if face is not None:
                values.append(passive.score(image, face))
        if not values:
            return Scored(item, None, reason="no face found", frames=len(frames))
        return Scored(item, sum(values) / len(values), frames=len(frames), faces=len(values))

    return score, models


def _active_scorer(
    args: argparse.Namespace, cfg: Config, ctx: Context, pipeline: Pipeline
) -> tuple[Any, dict[str, Any]]:
    from kiosk.liveness.blink import BlinkDetector, eye_openness
    from kiosk.liveness.mesh import load_face_mesh

    mesh = load_face_mesh(ctx.manifest, cfg.liveness.active.model, runtime_options(cfg))
    models = {mesh.spec.id: mesh.spec.sha256}
    if mesh.eyes is not None:
        models[mesh.eyes.spec.id] = mesh.eyes.spec.sha256

    def score(item: Presentation, path: Path) -> Scored:
        if not item.is_video:
            # A single image cannot answer a challenge: the active layer rejects every still presentation.
            return Scored(item, 0.0, reason="still image: no blink possible", frames=1, faces=1)
        try:
            frames, _ = _frames(path, args.every)
        except KioskError as exc:
            return Scored(item, None, reason=str(exc))
        # One blink detector per tracked face: the largest face may change from one person to another, and a blink
        # is one person's eyes closing and opening again.
        tracker = Tracker(iou_threshold=cfg.decision.track_iou, max_age_s=cfg.decision.track_max_age_s)
        detectors: dict[int, BlinkDetector] = {}
        blinks: list[float] = []
        faces = 0
        for t, image in frames:
            face = _largest(pipeline, image)
            tracks, _ = tracker.update([face] if face is not None else [], t)
            result = mesh.landmarks(image, face) if face is not None else None
            if result is None:
                continue
            faces += 1
            blink = detectors.setdefault(tracks[0].id, BlinkDetector())
            if blink.update(eye_openness(result.points), t):
                blinks.append(round(t, 2))
        if not faces:
            return Scored(item, None, reason="no face found", frames=len(frames))
        extra = {"blinks": len(blinks), "blink_times_s": blinks, "tracks": len(detectors)}
        return Scored(item, 1.0 if blinks else 0.0, frames=len(frames), faces=faces, extra=extra)

    return score, models


# -- output ------------------------------------------------------------------------------------------------------


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100.0 * v:.2f} %"


def _print(r: dict[str, Any]) -> None:
    n = r["n"]
    print(
        f"{n['bona_fide']} bona fide and {n['attack']} attack presentations scored, layer {r['layer']} "
        f"({', '.join(r['models'])}), threshold {r['threshold']:.2f}"
    )
    ci = r.get("intervals", {})

    def interval(v: dict[str, Any] | None) -> str:
        lo_hi = v.get("ci95") if v else None
        return "" if not lo_hi else f", 95 % CI {100 * lo_hi[0]:.1f}-{100 * lo_hi[1]:.1f} %"

    for kind, rate in r["apcer"].items():
        where = interval(ci.get("apcer", {}).get(kind))
        print(f"  APCER {kind:<16} {_pct(rate):>9}   (n={n['attack_types'].get(kind, 0)}{where})")
    print(f"  BPCER {'':<16} {_pct(r['bpcer']):>9}   (n={n['bona_fide']}{interval(ci.get('bpcer'))})")
    for key in ("bpcer20", "bpcer100"):
        v = r[key]
        label = key.upper() + f" (BPCER at APCER <= {'5' if key == 'bpcer20' else '1'} %)"
        print(f"  {label}: " + ("n/a" if v is None else f"{_pct(v['bpcer'])} at threshold {v['threshold']:.2f}"))
    fta = r["failed_to_acquire"]
    if fta["bona_fide"] or fta["attack"]:
        print(f"  failed to acquire (no face / unreadable): {fta['bona_fide']} bona fide, {fta['attack']} attack")
    for col, per in r.get("by", {}).items():
        for value, v in per.items():
            parts = [f"APCER {k} {_pct(a)}" for k, a in v["apcer"].items()]
            if v["bpcer"] is not None:
                parts.append(f"BPCER {_pct(v['bpcer'])}")
            print(f"  {col}={value}: " + ", ".join(parts))
