"""Write test clips for the active liveness layer from real photos, for ``kiosk eval-liveness --layer active``.

For each of N LFW photos (a seeded sample of ``lfw/labels.csv``) two clips of ``--seconds`` at ``--fps``, the photo
on a 640x480 wall with hand-held camera jitter (``kiosk.lab.simulate``):

- ``still/<n>.mp4``: the photo unchanged — a printed photo held up to the camera. Label ``attack``, type
  ``still_replay``; a blink detected here is a false blink, so its APCER is the false-blink rate.
- ``blink/<n>.mp4``: the same photo with one simulated blink (eyelids pulled shut along the face mesh's lid
  contours) after a third of the clip. Label ``bona_fide``; its BPCER is the rate of missed (simulated) blinks.

The simulated blink is a stand-in for a real one: it measures the detector's arithmetic on real faces, not how real
eyelids move. Writes ``labels.csv`` (``path,label,attack_type``) in ``--out``. Photos are never copied anywhere else.

Usage: ``python -m tools liveness-clips --data ../shared/data/faces --out /tmp/clips [--n 100] [--seed 0]``
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
from pathlib import Path

import cv2
import numpy as np

from kiosk.config import parse_config
from kiosk.context import Context
from kiosk.lab.simulate import H, W, blink_frames, scene, still_frames
from kiosk.liveness.mesh import load_face_mesh
from kiosk.recognition.pipeline import runtime_options
from kiosk.types import Image
from tools import ROOT


def _write(path: Path, frames: list[Image], fps: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (W, H))
    if not writer.isOpened():
        raise SystemExit(f"liveness-clips: cannot write {path} (no mp4v encoder in this OpenCV?)")
    try:
        for f in frames:
            writer.write(f)
    finally:
        writer.release()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools liveness-clips", description=__doc__.splitlines()[0])
    default_data = os.environ.get("KIOSK_TEST_DATA", str(ROOT / ".." / "shared" / "data" / "faces"))
    parser.add_argument("--data", type=Path, default=Path(default_data), help="the faces folder (has lfw/)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the clips and labels.csv")
    parser.add_argument("--n", type=int, default=100, help="photos to use (default 100)")
    parser.add_argument("--seconds", type=float, default=6.0, help="clip length (default 6 s: the challenge timeout)")
    parser.add_argument("--fps", type=float, default=10.0, help="frame rate (default 10, a slow Pi camera loop)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    labels = args.data / "lfw" / "labels.csv"
    if not labels.is_file():
        print(f"liveness-clips: {labels} not found (--data or KIOSK_TEST_DATA)", file=sys.stderr)
        return 2
    with labels.open(encoding="utf-8") as f:
        paths = [row["path"] for row in csv.DictReader(f)]
    random.Random(args.seed).shuffle(paths)
    cfg = parse_config({})
    n_frames = round(args.seconds * args.fps)
    n_open = n_frames // 3
    rows: list[tuple[str, str, str]] = []
    skipped = 0
    with Context(cfg) as ctx:
        mesh = load_face_mesh(ctx.manifest, cfg.liveness.active.model, runtime_options(cfg))
        for rel in paths:
            if len(rows) // 2 >= args.n:
                break
            photo = cv2.imread(str(args.data / "lfw" / rel))
            if photo is None:
                skipped += 1
                continue
            image = scene(np.asarray(photo, dtype=np.uint8), 1.6)
            faces = ctx.pipeline.detect(image)
            result = mesh.landmarks(image, max(faces, key=lambda fc: fc.area)) if faces else None
            if result is None:
                skipped += 1
                continue
            k = len(rows) // 2
            seed = args.seed * 100_003 + k
            _write(args.out / "still" / f"{k:04d}.mp4", still_frames(image, n_frames, seed=seed), args.fps)
            blink = blink_frames(image, result.points, n_open=n_open, n_closed=3, n_after=n_frames - n_open - 5,
                                 seed=seed)  # fmt: skip
            _write(args.out / "blink" / f"{k:04d}.mp4", blink, args.fps)
            rows += [(f"still/{k:04d}.mp4", "attack", "still_replay"), (f"blink/{k:04d}.mp4", "bona_fide", "")]
            print(f"\r{k + 1}/{args.n} clip pairs", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    with (args.out / "labels.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "attack_type"])
        w.writerows(rows)
    print(f"liveness-clips: {len(rows) // 2} photos -> {len(rows)} clips in {args.out} ({skipped} photos skipped: "
          f"unreadable or no face); labels in {args.out / 'labels.csv'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
