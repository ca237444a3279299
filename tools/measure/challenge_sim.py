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
  prompt, against a fresh random challenge (APCER), and when the fresh prompts happen to be the recorded ones;
- ``still_photo`` (with ``--stills``): the still-photo clips of ``python -m tools liveness-clips`` (LFW photos with
  hand-held jitter, sensor noise and compression), traced by the same models and looped: a photo held to the camera.

With ``--tilt N`` it measures instead whether a *flat photo turned* in front of the camera reads as a head turn:
N frontal LFW photos (mesh yaw within 5°) on the kiosk's 640x480 wall, each warped as a plane rotated about its
vertical axis by 15-60° (pinhole camera, f = 700 px), and the mesh yaw's change.

Usage: ``python -m tools challenge-sim [--data DIR] [--stills CLIPS/labels.csv] [--n 400] [--fps 30,15,10,7.5]
[--json OUT]``, or ``... --tilt 40 [--json OUT]``. The traces are
cached in ``--cache`` (default ``~/.cache/face-kiosk/traces``; derived from the recordings: never commit them).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from kiosk.config import parse_config
from kiosk.lab.blinks import VIDEOS, blinks_dir, iter_blink_video
from kiosk.lab.challenge_sim import PersonModel, Policy, Trace, evaluate
from kiosk.lab.machine import describe
from kiosk.liveness.blink import eye_openness
from kiosk.liveness.mesh import head_yaw_deg, load_face_mesh
from kiosk.models.manifest import load_manifest
from kiosk.recognition.detect import select_faces
from kiosk.recognition.pipeline import Pipeline, runtime_options
from kiosk.types import Image
from tools import ROOT

POLICIES = (
    Policy("blink x1, no reaction window (before)", ("blink",), 1, 6.0, min_reaction_s=0.0),
    Policy("blink x1", ("blink",), 1, 6.0),
    Policy("turn x1", ("turn",), 1, 6.0),
    Policy("blink|turn x1", ("blink", "turn"), 1, 6.0),
    Policy("turn x2", ("turn",), 2, 5.0),
    Policy("blink|turn x2", ("blink", "turn"), 2, 5.0),
    Policy("blink|turn x2, holds <= 0.75 s", ("blink", "turn"), 2, 5.0, pause_s=0.75),
    Policy("blink|turn x3", ("blink", "turn"), 3, 5.0),
)


class _Models:
    """The door's detector and face mesh (default config), loaded on first use."""

    def __init__(self) -> None:
        cfg = parse_config({})
        manifest = load_manifest(cfg.models.manifest)
        self.pipeline = Pipeline.from_config(cfg, manifest)
        self.mesh = load_face_mesh(manifest, cfg.liveness.active.model, runtime_options(cfg))
        hashes = [self.pipeline.detector.spec.sha256[:12], self.mesh.spec.sha256[:12]]
        if self.mesh.eyes is not None:
            hashes.append(self.mesh.eyes.spec.sha256[:12])
        self.key = "-".join(hashes)

    def measure(self, image: Image) -> tuple[npt.NDArray[np.float32], float]:
        """(mesh points, presence) of the largest face; NaN points and presence 0 without one."""
        faces = select_faces(self.pipeline.detect(image), "largest", image.shape)
        m = self.mesh.landmarks(image, faces[0]) if faces else None
        if m is None:
            return np.full((468, 3), np.nan, np.float32), 0.0
        return m.points, m.presence


def _trace(name: str, t: Any, points: Any, presence: Any, onsets: list[float]) -> Trace:
    ok = np.isfinite(points).all(axis=(1, 2))
    openness = np.array([eye_openness(p) if k else np.nan for p, k in zip(points, ok, strict=True)])
    yaw = np.array([head_yaw_deg(p) if k else np.nan for p, k in zip(points, ok, strict=True)])
    return Trace(name, np.asarray(t, dtype=np.float64), openness, yaw, np.asarray(presence), np.array(onsets))


def _stills(labels: Path, models: _Models, cache: Path, every: int) -> list[Trace]:
    """The still-photo clips listed in a liveness-clips labels.csv (attack rows), traced and cached."""
    out = []
    with labels.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("label") == "attack"]
    for n, row in enumerate(rows):
        path = labels.parent / row["path"]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        cached = cache / f"still-{digest}-{models.key}.npz"
        if not cached.is_file():
            cap = cv2.VideoCapture(str(path))
            fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0) or 10.0
            t: list[float] = []
            pts: list[npt.NDArray[np.float32]] = []
            presence: list[float] = []
            while True:
                ok, frame = cap.read()
                if not ok or frame is None:
                    break
                p, pr = models.measure(np.ascontiguousarray(frame, dtype=np.uint8))
                t.append(len(t) / fps)
                pts.append(p)
                presence.append(pr)
            cap.release()
            cache.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(cached, t=np.array(t), points=np.stack(pts), presence=np.array(presence))
            sys.stderr.write(f"\rstill clips: {n + 1}/{len(rows)}")
        d = np.load(cached)
        out.append(_trace(row["path"], d["t"][::every], d["points"][::every], d["presence"][::every], []))
    return out


def _traces(data: Path, models: _Models, cache: Path, every: int) -> list[Trace]:
    """Per-frame measures of the three recordings (mesh points cached per model hashes), every ``every``th frame."""
    onsets: dict[str, list[float]] = {}
    with (blinks_dir(data) / "blinks.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            onsets.setdefault(Path(row["video"]).stem, []).append(float(row["start_s"]))
    out = []
    for name in VIDEOS:
        path = cache / f"{name}-{models.key}.npz"
        if not path.is_file():
            t, pts, presence = [], [], []
            for f in iter_blink_video(data, name):
                p, pr = models.measure(f.image)
                t.append(f.t)
                pts.append(p)
                presence.append(pr)
                if f.index % 100 == 0:
                    sys.stderr.write(f"\r{name}: {f.index} frames")
            sys.stderr.write("\n")
            cache.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(path, t=np.array(t), points=np.stack(pts), presence=np.array(presence))
        d = np.load(path)
        out.append(_trace(name, d["t"][::every], d["points"][::every], d["presence"][::every], onsets.get(name, [])))
    return out


def _tilted(image: Image, deg: float, f: float = 700.0) -> Image:
    """``image`` as a camera sees it when it is a flat print rotated by ``deg`` about its vertical centre line."""
    h, w = image.shape[:2]
    cx, cy, th = w / 2.0, h / 2.0, np.radians(deg)
    rot = np.array([[np.cos(th), 0.0, np.sin(th)], [0.0, 1.0, 0.0], [-np.sin(th), 0.0, np.cos(th)]])
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
    dst = []
    for x, y in src:
        p = rot @ np.array([x - cx, y - cy, 0.0]) + np.array([0.0, 0.0, f])
        dst.append((cx + f * p[0] / p[2], cy + f * p[1] / p[2]))
    homography = cv2.getPerspectiveTransform(src.astype(np.float32), np.array(dst, np.float32))
    return np.ascontiguousarray(cv2.warpPerspective(image, homography, (w, h), borderValue=(118, 118, 118)))


def _tilt(args: argparse.Namespace, models: _Models) -> int:
    """``--tilt``: the mesh yaw of frontal photos turned as flat prints."""
    import random

    from kiosk.lab.simulate import scene

    def yaw(image: Image) -> float | None:
        points, presence = models.measure(image)
        return head_yaw_deg(points) if presence > 0.0 else None

    rows = [line.split(",")[0] for line in (args.data / "lfw" / "labels.csv").read_text().splitlines()[1:]]
    random.Random(args.seed).shuffle(rows)
    changes: dict[int, list[float]] = {a: [] for a in (15, 30, 45, 60)}
    used = 0
    for rel in rows:
        read = cv2.imread(str(args.data / "lfw" / rel))
        if read is None:
            continue
        image = scene(np.ascontiguousarray(read, dtype=np.uint8))
        y0 = yaw(image)
        if y0 is None or abs(y0) > 5.0:
            continue
        for a, out in changes.items():
            for sign in (1, -1):
                y = yaw(_tilted(image, sign * a))
                if y is not None:
                    out.append(abs(y - y0))
        used += 1
        if used >= args.tilt:
            break
    report: dict[str, Any] = {"photos": used, "turn_deg": 15.0, "tilts": {}}
    for a, v in changes.items():
        arr = np.array(v)
        row = {
            "n": len(v),
            "median_deg": round(float(np.median(arr)), 1),
            "p90_deg": round(float(np.percentile(arr, 90)), 1),
            "max_deg": round(float(arr.max()), 1),
            "share_at_least_15": round(float((arr >= 15.0).mean()), 3),
            "share_at_least_20": round(float((arr >= 20.0).mean()), 3),
        }
        report["tilts"][str(a)] = row
        print(
            f"print turned {a:>2}°: n={row['n']:>3}  mesh yaw change median {row['median_deg']:>4}°  p90 "
            f"{row['p90_deg']:>4}°  max {row['max_deg']:>4}°  >= 15°: {100 * row['share_at_least_15']:.0f} %  "
            f">= 20°: {100 * row['share_at_least_20']:.0f} %"
        )
    report["machine"] = describe()
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools challenge-sim", description=__doc__.splitlines()[0])
    default_data = os.environ.get("KIOSK_TEST_DATA", str(ROOT / ".." / "shared" / "data" / "faces"))
    parser.add_argument("--data", type=Path, default=Path(default_data), help="the faces folder (liveness/blinks/)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "face-kiosk" / "traces")
    parser.add_argument("--stills", type=Path, help="labels.csv of python -m tools liveness-clips: held photos too")
    parser.add_argument("--n", type=int, default=400, help="sessions per policy, frame rate and kind (default 400)")
    parser.add_argument("--fps", default="30,15,10,7.5", help="camera frame rates: the 30 fps recordings' every Nth")
    parser.add_argument("--reaction", type=float, default=PersonModel.reaction_median_s, help="median reaction, s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tilt", type=int, metavar="N", help="instead: N frontal photos turned as flat prints")
    parser.add_argument("--json", type=Path, dest="json_out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if not (blinks_dir(args.data) / "blinks.csv").is_file():
        print(f"error: no blink recordings under {blinks_dir(args.data)} (--data or KIOSK_TEST_DATA)", file=sys.stderr)
        return 2
    model = PersonModel(reaction_median_s=args.reaction)
    models = _Models()
    if args.tilt:
        return _tilt(args, models)
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {}
    for fps in [float(x) for x in args.fps.split(",")]:
        every = max(round(30.0 / fps), 1)
        traces = _traces(args.data, models, args.cache, every)
        # The still clips are 10 fps: every Nth of them for rates below that.
        stills = _stills(args.stills, models, args.cache, max(round(10.0 / fps), 1)) if args.stills else []
        real_fps = (len(traces[0].t) - 1) / traces[0].duration
        report = evaluate(POLICIES, traces, n=args.n, fps_list=[real_fps], model=model, seed=args.seed, stills=stills)
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
        still = f"{100 * r['still_photo']['apcer']:.1f}%" if "still_photo" in r else ""
        print(
            f"{r['fps']:>5.1f}  {r['policy']:<40} {100 * g['pass_rate']:>11.1f}% {g['time_s_median'] or 0:>8.2f} "
            f"{g['time_s_p90'] or 0:>6.2f} {g['expected_wait_s'] or float('nan'):>9.2f}  {100 * a['apcer']:>12.1f}% "
            f"{100 * (b['apcer'] or 0):>14.1f}% {same_s:>14} {still:>10}"
        )
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0
