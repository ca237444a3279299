"""Detection stage: image in, ``Face`` list out (boxes and landmarks in the original image's pixels).

Detectors are an explicit table keyed by the manifest's ``family``; the model runner is injected, so importing
this package never imports an inference runtime.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from ..backends import Runner
from ..errors import InputError, ModelError
from ..manifest import ModelSpec
from ..types import Face, Image

SELECT_POLICIES = ("largest", "central", "all")


class Detector(Protocol):
    """Finds faces in a HxWx3 uint8 BGR image.

    ``detect`` returns faces sorted by score (highest first), in the original image's pixels, and an empty
    list when there is none. Boxes are not clipped: a face cut off by the image edge has a box that extends
    past it.
    """

    spec: ModelSpec
    score_threshold: float
    nms_iou: float

    def detect(self, image: Image) -> list[Face]: ...


def nms(boxes: npt.ArrayLike, scores: npt.ArrayLike, iou: float, top_k: int = 750) -> npt.NDArray[np.intp]:
    """Greedy non-maximum suppression of the ``top_k`` best boxes (x1, y1, x2, y2); kept indices, best first.

    A box is dropped when its IoU with an already kept box is above ``iou`` (OpenCV's ``NMSBoxes`` rule).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-s, kind="stable")[: max(top_k, 0)]
    areas = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    keep: list[int] = []
    while order.size:
        i, rest = int(order[0]), order[1:]
        keep.append(i)
        iw = np.clip(np.minimum(b[i, 2], b[rest, 2]) - np.maximum(b[i, 0], b[rest, 0]), 0, None)
        ih = np.clip(np.minimum(b[i, 3], b[rest, 3]) - np.maximum(b[i, 1], b[rest, 1]), 0, None)
        inter = iw * ih
        union = areas[i] + areas[rest] - inter
        overlap = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.intp)


def check_image(image: Image) -> None:
    """Raise ``InputError`` unless ``image`` is a non-empty HxWx3 uint8 array, as every detector expects."""
    shape = getattr(image, "shape", None)
    if shape is None or len(shape) != 3 or shape[2] != 3 or image.dtype != np.uint8 or 0 in shape:
        desc = f"{image.dtype} array of shape {shape}" if shape is not None else type(image).__name__
        raise InputError(f"detector input must be a non-empty HxWx3 uint8 BGR image, got a {desc}")


def resolve_threshold(spec: ModelSpec, key: str, value: float | None) -> float:
    """``value`` if given, else the manifest's ``thresholds.<key>`` (which must then exist)."""
    if value is not None:
        return float(value)
    if key not in spec.thresholds:
        raise ModelError(f"model '{spec.id}': manifest has no thresholds.{key} and none was configured")
    return spec.thresholds[key]


def select_faces(faces: list[Face], policy: str, image_shape: tuple[int, ...]) -> list[Face]:
    """The face(s) to act on: the ``largest`` box, the most ``central`` one (ties: larger), or ``all``."""
    if policy not in SELECT_POLICIES:
        raise ValueError(f"face selection policy must be one of {SELECT_POLICIES}, got {policy!r}")
    if policy == "all" or not faces:
        return list(faces)
    if policy == "largest":
        return [max(faces, key=lambda f: f.area)]
    cy, cx = image_shape[0] / 2.0, image_shape[1] / 2.0

    def off_centre(f: Face) -> tuple[float, float]:
        fx, fy = f.center
        return (fx - cx) ** 2 + (fy - cy) ** 2, -f.area

    return [min(faces, key=off_centre)]


# NOTE: imported after nms() and resolve_threshold() are defined: the detector modules reuse them from here.
from .blazeface import BlazeFaceDetector  # noqa: E402
from .yunet import YuNetDetector  # noqa: E402

DetectorClass = type[YuNetDetector] | type[BlazeFaceDetector]

DETECTORS: dict[str, DetectorClass] = {
    "yunet": YuNetDetector,
    "blazeface": BlazeFaceDetector,
}


def build_detector(
    spec: ModelSpec,
    runner: Runner,
    *,
    score_threshold: float | None = None,
    nms_iou: float | None = None,
    input_size: int = 320,
) -> Detector:
    """The detector for ``spec.family``; ``None`` thresholds mean the manifest's ``thresholds`` values."""
    if spec.task != "detect":
        raise ModelError(f"model '{spec.id}' is a {spec.task} model, not a detect model")
    cls = DETECTORS.get(spec.family)
    if cls is None:
        known = ", ".join(sorted(DETECTORS))
        raise ModelError(f"model '{spec.id}': no detector for family {spec.family!r} (known: {known})")
    return cls(spec, runner, score_threshold=score_threshold, nms_iou=nms_iou, input_size=input_size)


__all__ = [
    "DETECTORS",
    "SELECT_POLICIES",
    "BlazeFaceDetector",
    "Detector",
    "YuNetDetector",
    "build_detector",
    "check_image",
    "nms",
    "select_faces",
]
