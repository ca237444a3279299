"""The benchmark's frames: LFW photos composed onto 640x480 walls (one face per clip, then empty wall so the track
ends) or a replayed video file or image folder, JPEG-encoded once up front."""

from __future__ import annotations

import csv
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from kiosk import SOURCE_ROOT
from kiosk.errors import InputError
from kiosk.imageio import read_image
from kiosk.types import Image

ENV_DATA = "KIOSK_TEST_DATA"
ROOT = SOURCE_ROOT
W, H = 640, 480
WALL = 110
JPEG_QUALITY = 90
DEFAULT_FPS = 10.0
FACE_FRAMES = 8
MAX_MEMBERS = 8
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass
class FrameSet:
    """The benchmark's frames as JPEG bytes, which frames begin a face appearance, and who to enrol."""

    jpegs: list[bytes]
    fps: float
    origin: str
    appearances: list[int] = field(default_factory=list)  # frame indices where a face appears (LFW: known)
    enrol: list[tuple[str, Path]] = field(default_factory=list)  # (name, photo) to enrol before the loop runs
    face_frames: set[int] = field(default_factory=set)  # LFW: frames showing a face (None known for --source)


def data_dir(override: Path | None) -> Path:
    """``--faces``, else ``$KIOSK_TEST_DATA``, else ``<project>/../shared/data/faces``."""
    if override is not None:
        return override.expanduser().resolve()
    return Path(os.environ.get(ENV_DATA, ROOT / ".." / "shared" / "data" / "faces")).expanduser().resolve()


def seeded_rng(seed: int, *salt: int | str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(s.encode()) if isinstance(s, str) else s for s in salt)])


def _jpeg(image: Image) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 BGR image
        raise InputError("cannot JPEG-encode a benchmark frame")
    return bytes(buf.tobytes())


def decode(jpeg: bytes) -> Image:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if image is None:  # pragma: no cover - frames are encoded by _jpeg
        raise InputError("cannot decode a benchmark frame")
    return np.asarray(image, dtype=np.uint8)


def compose(photo: Image, rng: np.random.Generator, scale: float, centre: tuple[float, float]) -> Image:
    """The photo scaled onto a plain 640x480 wall, shifted a few pixels (a hand-held camera)."""
    img = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    canvas = np.full((H, W, 3), WALL, np.uint8)
    h, w = img.shape[:2]
    dx, dy = (int(v) for v in rng.integers(-3, 4, size=2))
    x, y = round(centre[0] - w / 2) + dx, round(centre[1] - h / 2) + dy
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    canvas[y0:y1, x0:x1] = img[y0 - y : y1 - y, x0 - x : x1 - x]
    return canvas


def lfw_frames(faces: Path, n: int, fps: float, gap_frames: int, seed: int) -> FrameSet:
    """Clips of ``FACE_FRAMES`` frames of one member's probe photo, then ``gap_frames`` of empty wall, until ``n``
    frames. Members (up to ``MAX_MEMBERS``) are LFW identities with 2+ photos: one to enrol, another to show."""
    labels = faces / "lfw" / "labels.csv"
    by_identity: dict[str, list[str]] = {}
    with labels.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            by_identity.setdefault(row["identity"], []).append(row["path"])
    eligible = sorted(k for k, v in by_identity.items() if len(v) >= 2)
    if not eligible:
        raise InputError(f"no LFW identity with two photos in {labels}")
    order = [eligible[int(i)] for i in seeded_rng(seed, "members").permutation(len(eligible))]
    clip_len = FACE_FRAMES + gap_frames
    clips = max(1, math.ceil(n / clip_len))
    members = order[: min(MAX_MEMBERS, clips, len(order))]
    fs = FrameSet(jpegs=[], fps=fps, origin=f"LFW {faces / 'lfw'}")
    probes = []
    for name in members:
        photos = sorted(by_identity[name])
        fs.enrol.append((name, faces / "lfw" / photos[0]))
        probes.append(read_image(faces / "lfw" / photos[1]))
    wall = _jpeg(np.full((H, W, 3), WALL, np.uint8))
    for clip in range(clips):
        rng = seeded_rng(seed, "clip", clip)
        scale = float(rng.uniform(1.5, 1.9))
        centre = (W / 2 + float(rng.uniform(-50, 50)), H / 2 + float(rng.uniform(-20, 20)))
        photo = probes[clip % len(probes)]
        fs.appearances.append(len(fs.jpegs))
        for _ in range(FACE_FRAMES):
            fs.face_frames.add(len(fs.jpegs))
            fs.jpegs.append(_jpeg(compose(photo, rng, scale, centre)))
        fs.jpegs += [wall] * gap_frames
    del fs.jpegs[n:]
    fs.appearances = [i for i in fs.appearances if i < n]
    fs.face_frames = {i for i in fs.face_frames if i < n}
    return fs


def source_frames(source: Path, n: int, fps: float | None) -> FrameSet:
    """Up to ``n`` frames of a video file or an image folder (sorted by name), JPEG-encoded."""
    images: list[Image] = []
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        images = [read_image(p) for p in files[:n]]
        rate = fps or DEFAULT_FPS
    else:
        cap = cv2.VideoCapture(str(source))
        try:
            rate = fps or float(cap.get(cv2.CAP_PROP_FPS) or 0.0) or DEFAULT_FPS
            while len(images) < n:
                ok, image = cap.read()
                if not ok:
                    break
                images.append(np.asarray(image, dtype=np.uint8))
        finally:
            cap.release()
    if not images:
        raise InputError(f"--source {source}: no frames could be read (a video file or a folder of images)")
    return FrameSet(jpegs=[_jpeg(im) for im in images], fps=rate, origin=f"--source {source}")
