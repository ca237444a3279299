"""Helpers shared by the detectors: NMS, input checks, thresholds from the manifest."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from kiosk.errors import InputError, ModelError
from kiosk.models.manifest import ModelSpec
from kiosk.types import Image


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
