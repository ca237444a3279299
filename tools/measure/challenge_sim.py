"""Choose the active liveness challenges: how long a real person waits, and how often a replayed recording passes.

Runs ``kiosk.lab.challenge_sim`` (read its docstring for what is measured and what is modelled) on the three real
blink recordings (``$KIOSK_TEST_DATA/liveness/blinks``): the kiosk's own detector (YuNet), face mesh and iris model
measure every frame once (eye openness by ``kiosk.liveness.blink.eye_openness``, head yaw, presence); those traces are
then played against each challenge policy at each frame rate (every Nth frame for a slower camera).

For each policy and frame rate it prints and writes:

- ``genuine``: pass rate of a person answering the prompts, median and 90th percentile of the time from the first
  prompt to the pass, and the expected wait counting retries (a failed try costs its worst-case time + 3 s);
- ``replay_natural``: a video of the enrolled person blinking naturally, facing the camera, shown when the prompt
  appears (APCER of the active layer against it);
- ``replay_recorded``: a genuine session recorded against one random challenge and replayed, in sync with the first
  prompt, against a fresh random challenge (APCER), and when the fresh prompts happen to be the recorded ones.

Usage: ``python -m tools challenge-sim [--data DIR] [--n 400] [--fps 30,15,10,7.5] [--json OUT]``. The traces are
cached in ``--cache`` (default ``~/.cache/face-kiosk/traces``; derived from the recordings: never commit them).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from kiosk.config import parse_config
from kiosk.lab.blinks import VIDEOS, blinks_dir, iter_blink_video
from kiosk.lab.challenge_sim import PersonModel, Policy, Trace, evaluate
from kiosk.lab.machine import describe
from kiosk.liveness.blink import eye_openness
from kiosk.liveness.mesh import head_yaw_deg, load_face_mesh
from kiosk.models.manifest import load_manifest
from kiosk.recognition.detect import select_faces
from kiosk.recognition.pipeline import Pipeline, runtime_options
from tools import ROOT

POLICIES = (
    Policy("blink x1, no reaction window (before)", ("blink",), 1, 6.0, min_reaction_s=0.0),
    Policy("blink x1", ("blink",), 1, 6.0),
    Policy("turn x1", ("turn",), 1, 6.0),
    Policy("blink|turn x1", ("blink", "turn"), 1, 6.0),
    Policy("turn x2", ("turn",), 2, 5.0),
    Policy("blink|turn x2", ("blink", "turn"), 2, 5.0),
    Policy("blink|turn x3", ("blink", "turn"), 3, 5.0),
)


def _traces(data: Path, cache: Path, every: int) -> list[Trace]:
    """Per-frame measures of the three recordings (mesh points cached per model hashes), every ``every``th frame."""
    cfg = parse_config({})
    manifest = load_manifest(cfg.models.manifest)
    pipeline = Pipeline.from_config(cfg, manifest)
    mesh = load_face_mesh(manifest, cfg.liveness.active.model, runtime_options(cfg))
    hashes = [pipeline.detector.spec.sha256[:12], mesh.spec.sha256[:12]]
    if mesh.eyes is not None:
        hashes.append(mesh.eyes.spec.sha256[:12])
    onsets: dict[str, list[float]] = {}
    with (blinks_dir(data) / "blinks.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            onsets.setdefault(Path(row["video"]).stem, []).append(float(row["start_s"]))
    out = []
    for name in VIDEOS:
        path = cache / f"{name}-{'-'.join(hashes)}.npz"
        if not path.is_file():
            t, pts, presence = [], [], []
            for f in iter_blink_video(data, name):
                faces = select_faces(pipeline.detect(f.image), "largest", f.image.shape)
                m = mesh.landmarks(f.image, faces[0]) if faces else None
                t.append(f.t)
                pts.append(m.points if m is not None else np.full((468, 3), np.nan, np.float32))
                presence.append(m.presence if m is not None else 0.0)
                if f.index % 100 == 0:
                    sys.stderr.write(f"\r{name}: {f.index} frames")
            sys.stderr.write("\n")
            cache.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(path, t=np.array(t), points=np.stack(pts), presence=np.array(presence))
        d = np.load(path)
        t, points, presence = d["t"][::every], d["points"][::every], d["presence"][::every]
        ok = np.isfinite(points).all(axis=(1, 2))
        openness = np.array([eye_openness(p) if k else np.nan for p, k in zip(points, ok, strict=True)])
        yaw = np.array([head_yaw_deg(p) if k else np.nan for p, k in zip(points, ok, strict=True)])
        out.append(Trace(name, t, openness, yaw, presence, np.array(onsets.get(name, []))))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools challenge-sim", description=__doc__.splitlines()[0])
    default_data = os.environ.get("KIOSK_TEST_DATA", str(ROOT / ".." / "shared" / "data" / "faces"))
    parser.add_argument("--data", type=Path, default=Path(default_data), help="the faces folder (liveness/blinks/)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "face-kiosk" / "traces")
    parser.add_argument("--n", type=int, default=400, help="sessions per policy, frame rate and kind (default 400)")
    parser.add_argument("--fps", default="30,15,10,7.5", help="camera frame rates: the 30 fps recordings' every Nth")
    parser.add_argument("--reaction", type=float, default=PersonModel.reaction_median_s, help="median reaction, s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, dest="json_out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if not (blinks_dir(args.data) / "blinks.csv").is_file():
        print(f"error: no blink recordings under {blinks_dir(args.data)} (--data or KIOSK_TEST_DATA)", file=sys.stderr)
        return 2
    model = PersonModel(reaction_median_s=args.reaction)
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {}
    for fps in [float(x) for x in args.fps.split(",")]:
        every = max(round(30.0 / fps), 1)
        traces = _traces(args.data, args.cache, every)
        real_fps = (len(traces[0].t) - 1) / traces[0].duration
        report = evaluate(POLICIES, traces, n=args.n, fps_list=[real_fps], model=model, seed=args.seed)
        for row in report["results"]:
            row["every"] = every
        rows += report["results"]
    report["results"] = rows
    report["machine"] = describe()
    report["command"] = "python -m tools challenge-sim " + " ".join(argv if argv is not None else sys.argv[1:])
    print(
        f"{'fps':>5}  {'policy':<40} {'genuine pass':>12} {'median s':>8} {'p90 s':>6} {'E[wait] s':>9}"
        f"  {'natural video':>13} {'recorded answer':>15} {'(same prompts)':>14}"
    )
    for r in rows:
        g, a, b = r["genuine"], r["replay_natural"], r["replay_recorded"]
        same = b["apcer_same_prompts"]
        same_s = "" if same is None else f"{100 * same:.0f}% of {b['same_prompts']}"
        print(
            f"{r['fps']:>5.1f}  {r['policy']:<40} {100 * g['pass_rate']:>11.1f}% {g['time_s_median'] or 0:>8.2f} "
            f"{g['time_s_p90'] or 0:>6.2f} {g['expected_wait_s'] or float('nan'):>9.2f}  {100 * a['apcer']:>12.1f}% "
            f"{100 * (b['apcer'] or 0):>14.1f}% {same_s:>14}"
        )
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0
