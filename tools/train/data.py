"""Training data: a folder of aligned face crops by identity, split by identity, augmented, fed as the door feeds.

A dataset folder holds either ``labels.csv`` (``path,identity``, paths relative to the folder: what
``python -m tools align-dataset`` writes and ``kiosk eval --labels`` reads) or one sub-folder per identity. Crops must
already be aligned onto a kiosk template (``align-dataset`` does it with the door's own detector; ``arcface_112`` by
default); for a backbone with another framing each crop is warped once more, from that template onto the backbone's.

The split is identity-disjoint: validation people are never seen in training. Which identities go to validation is a
function of the seed and the names only (a hash order), so it does not change when photos are added.

Every batch reaches the network through :func:`kiosk.recognition.embed.preprocess`, the function the door uses, so
training and the door cannot disagree about colour order or standardisation.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from kiosk.errors import KioskError
from kiosk.imageio import read_image
from kiosk.lab.evaluate import read_labels
from kiosk.models.manifest import InputSpec
from kiosk.recognition.align import Template, similarity_transform
from kiosk.recognition.embed import preprocess
from tools.errors import ToolError

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
MAX_CROP_PIXELS = 1024 * 1024  # an aligned crop is small: anything bigger is not one


class DataError(ToolError):
    """The training folder cannot be used (one line)."""


@dataclass(frozen=True)
class Sample:
    path: str  # relative to the dataset root
    identity: str


def scan(root: Path) -> list[Sample]:
    """Every (crop, identity) in ``root``: from its ``labels.csv`` when present, else one sub-folder per identity."""
    if not root.is_dir():
        raise DataError(f"training data {root} is not a folder", code=2)
    labels = root / "labels.csv"
    if labels.is_file():
        try:
            rows = read_labels(labels)
        except KioskError as err:
            raise DataError(str(err)) from None
        samples = [Sample(r.path, r.identity) for r in rows]
    else:
        samples = [
            Sample(f"{person.name}/{photo.name}", person.name)
            for person in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
            for photo in sorted(person.iterdir())
            if photo.suffix.lower() in IMAGE_EXTS and not photo.name.startswith(".")
        ]
    if not samples:
        raise DataError(f"{root}: no labels.csv and no identity sub-folders with photos", code=2)
    return samples


def _hash_order(identity: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{identity}".encode()).hexdigest()


@dataclass(frozen=True)
class Split:
    train: list[Sample]
    val: list[Sample]
    classes: list[str]  # training identities, index = class label
    dropped: dict[str, int]  # identity -> photos, left out for having fewer than min_images

    def describe(self) -> dict[str, Any]:
        return {
            "train_images": len(self.train),
            "train_identities": len(self.classes),
            "val_images": len(self.val),
            "val_identities": len({s.identity for s in self.val}),
            "dropped_identities": len(self.dropped),
            "dropped_images": sum(self.dropped.values()),
        }


def split(
    samples: Sequence[Sample],
    *,
    val_fraction: float,
    seed: int,
    min_images: int = 2,
    limit_identities: int | None = None,
) -> Split:
    """Identity-disjoint split: ``val_fraction`` of the identities (hash order by ``seed``) are held out.

    Identities with fewer than ``min_images`` photos are left out (a class of one photo teaches a margin loss nothing
    and gives validation no genuine pair). ``limit_identities`` keeps that many identities in all (tiny runs).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}", code=2)
    counts = Counter(s.identity for s in samples)
    kept = sorted((i for i, n in counts.items() if n >= min_images), key=lambda i: _hash_order(i, seed))
    dropped = {i: n for i, n in counts.items() if n < min_images}
    if limit_identities is not None:
        kept = kept[:limit_identities]
    n_val = math.ceil(val_fraction * len(kept)) if val_fraction > 0 else 0
    val_ids, train_ids = set(kept[:n_val]), sorted(kept[n_val:])
    if len(train_ids) < 2:
        raise DataError(f"{len(train_ids)} training identities with >= {min_images} photos: need at least 2")
    train = [s for s in samples if s.identity in set(train_ids)]
    val = [s for s in samples if s.identity in val_ids]
    return Split(train, val, train_ids, dropped)


# --------------------------------------------------------------------------------------------------- loading


def rewarp(source: Template, target: Template) -> npt.NDArray[np.float32] | None:
    """The similarity transform from crops aligned onto ``source`` to crops aligned onto ``target`` (None: the same).

    The door warps a photo onto the target template directly; a crop already warped onto another template reaches
    the same geometry through this second warp, with black (the kiosk's warp fill) where the target framing reaches
    beyond the source crop.
    """
    if source.size == target.size and np.allclose(source.points, target.points):
        return None
    return similarity_transform(source.points, target.points)


def load_crops(root: Path, samples: Sequence[Sample], source: Template, target: Template) -> U8:
    """All crops as one (N, H, W, 3) BGR uint8 array, moved from the ``source`` template the folder was aligned to
    (``arcface_112``: what ``align-dataset`` and the shared set hold) onto the backbone's ``target`` template.

    Held in memory: 8,000 crops at 112x112 are 300 MB, and decoding them once instead of every epoch saves more CPU
    than the network's forward pass costs on small backbones.
    """
    w, h = target.size
    matrix = rewarp(source, target)
    out = np.empty((len(samples), h, w, 3), dtype=np.uint8)
    for k, sample in enumerate(samples):
        path = root / sample.path
        try:
            image = read_image(path, max_pixels=MAX_CROP_PIXELS)
        except KioskError as err:
            raise DataError(f"{sample.path}: {err}") from None
        if (image.shape[1], image.shape[0]) != source.size:
            raise DataError(
                f"{sample.path} is {image.shape[1]}x{image.shape[0]}, not {source.size[0]}x{source.size[1]}: "
                "not a crop aligned onto --data-template (align the folder with python -m tools align-dataset)"
            )
        if matrix is None:
            out[k] = image
        else:
            out[k] = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return out


# --------------------------------------------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class Augment:
    """What a door camera does to a face that an aligned crop does not show: alignment jitter, light, blur, JPEG.

    Horizontal flips too (the template is symmetric to within a pixel).
    """

    flip: float = 0.5
    shift_px: float = 3.0  # at 112 px; scaled with the crop
    rotate_deg: float = 6.0
    scale: float = 0.05
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.3
    grey: float = 0.1
    blur: float = 0.1
    jpeg: float = 0.2

    def __call__(self, crop: U8, rng: np.random.Generator) -> U8:
        h, w = crop.shape[:2]
        out: Any = crop  # OpenCV's results are untyped arrays
        if rng.random() < self.flip:
            out = out[:, ::-1]
        angle = rng.uniform(-self.rotate_deg, self.rotate_deg)
        zoom = 1.0 + rng.uniform(-self.scale, self.scale)
        shift = self.shift_px * w / 112.0
        m: Any = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, zoom)
        m[:, 2] += rng.uniform(-shift, shift, 2)
        out = cv2.warpAffine(np.ascontiguousarray(out), m, (w, h), flags=cv2.INTER_LINEAR)
        f: Any = out.astype(np.float32)
        mean = float(f.mean())  # contrast about the crop's mean, then a brightness offset of up to ±brightness/2
        f = (f - mean) * (1.0 + rng.uniform(-self.contrast, self.contrast)) + mean
        f += 127.5 * rng.uniform(-self.brightness, self.brightness)
        grey = f.mean(axis=2, keepdims=True)
        if rng.random() < self.grey:
            f = np.repeat(grey, 3, axis=2)
        else:
            f = grey + (f - grey) * (1.0 + rng.uniform(-self.saturation, self.saturation))
        out = np.clip(f, 0, 255).astype(np.uint8)
        if rng.random() < self.blur:
            out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 1.5))
        if rng.random() < self.jpeg:
            ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 90))])
            if ok:
                out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        result: U8 = np.ascontiguousarray(out, dtype=np.uint8)
        return result


AUGMENTS: dict[str, Augment | None] = {
    "standard": Augment(),
    "flip": Augment(0.5, 0, 0, 0, 0, 0, 0, 0, 0, 0),
    "none": None,
}


class Batches:
    """Shuffled training batches: (input float32 NCHW as the door feeds it, labels int64). Drops a last partial batch
    (BatchNorm with a batch of one is undefined)."""

    def __init__(
        self,
        crops: U8,
        labels: npt.NDArray[np.int64],
        spec: InputSpec,
        batch_size: int,
        augment: Augment | None,
    ) -> None:
        if len(crops) < batch_size:
            raise DataError(f"{len(crops)} training images, fewer than one batch of {batch_size}: lower --batch-size")
        self.crops, self.labels, self.spec = crops, labels, spec
        self.batch_size, self.augment = batch_size, augment

    def __len__(self) -> int:
        return len(self.crops) // self.batch_size

    def epoch(self, rng: np.random.Generator, start: int = 0) -> Any:
        """Yields ``(x, y)`` for one epoch, from batch ``start`` (a resumed epoch skips the batches already done)."""
        order = rng.permutation(len(self.crops))
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if b < start:
                continue
            crops = [self.augment(self.crops[i], rng) if self.augment else self.crops[i] for i in idx]
            yield preprocess(crops, self.spec), self.labels[idx]


def input_spec(block: dict[str, Any]) -> InputSpec:
    """The manifest ``input`` block of a backbone as the kiosk's :class:`InputSpec`."""
    size = block["size"]
    return InputSpec(
        size=(int(size[0]), int(size[1])),
        color=str(block.get("color", "rgb")),
        layout=str(block.get("layout", "nchw")),
        mean=tuple(float(v) for v in block.get("mean", (0.0, 0.0, 0.0))),  # type: ignore[arg-type]
        std=tuple(float(v) for v in block.get("std", (1.0, 1.0, 1.0))),  # type: ignore[arg-type]
        name=block.get("name"),
        normalize=str(block.get("normalize", "fixed")),
    )


def write_labels(path: Path, samples: Sequence[Sample]) -> None:
    """A ``path,identity`` CSV (what ``kiosk eval --labels`` reads), written atomically."""
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "identity"])
        for s in samples:
            w.writerow([s.path, s.identity])
    tmp.replace(path)


def val_pairs(
    samples: Sequence[Sample], seed: int, per_class: int = 600, folds: int = 10
) -> list[tuple[str, str, int, int]]:
    """Balanced verification pairs among held-out identities: up to ``per_class`` genuine and as many impostor pairs,
    in ``folds`` folds (LFW's protocol, so ``kiosk eval``'s k-fold accuracy applies)."""
    rng = np.random.default_rng(seed)
    by_id: dict[str, list[str]] = {}
    for s in samples:
        by_id.setdefault(s.identity, []).append(s.path)
    genuine = [(a, b) for paths in by_id.values() for i, a in enumerate(paths) for b in paths[i + 1 :]]
    if not genuine or len(by_id) < 2:
        return []
    pick = rng.permutation(len(genuine))[:per_class]
    out = [(genuine[i][0], genuine[i][1], 1) for i in pick]
    ids = sorted(by_id)
    impostor: set[tuple[str, str]] = set()
    while len(impostor) < len(out):
        a, b = rng.choice(len(ids), 2, replace=False)
        pa, pb = by_id[ids[a]], by_id[ids[b]]
        impostor.add((pa[int(rng.integers(len(pa)))], pb[int(rng.integers(len(pb)))]))
    out += [(a, b, 0) for a, b in sorted(impostor)]
    order = rng.permutation(len(out))
    return [(out[i][0], out[i][1], out[i][2], k % folds) for k, i in enumerate(order)]
