"""YuNet 2023mar (OpenCV Zoo) face detector: boxes and 5 landmarks, decoded as OpenCV's ``FaceDetectorYN``.

The image is resized so its longer side is ``input_size``, padded right/bottom to a multiple of 32 and fed as
BGR 0-255 NCHW. Landmark order is the "5pt" scheme: right eye, left eye, nose tip, right and left mouth corner
(the subject's right eye is on the image's left).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import lru_cache

import cv2
import numpy as np

from kiosk.errors import ModelError
from kiosk.models.backends import Runner
from kiosk.models.manifest import ModelSpec
from kiosk.recognition.detect._common import check_image, nms, resolve_threshold
from kiosk.types import Face, FloatArray, Image

log = logging.getLogger(__name__)

STRIDES = (8, 16, 32)
_KINDS = ("cls", "obj", "bbox", "kps")


@lru_cache(maxsize=16)
def _grid(rows: int, cols: int) -> tuple[FloatArray, FloatArray]:
    """Column and row index of every cell of a rows x cols feature map, row-major (cached per input shape)."""
    r, c = np.divmod(np.arange(rows * cols, dtype=np.float32), np.float32(cols))
    r.setflags(write=False)
    c.setflags(write=False)
    return c, r


class YuNetDetector:
    """Runs YuNet through an injected runner; thresholds default to the manifest's ``thresholds``."""

    def __init__(
        self,
        spec: ModelSpec,
        runner: Runner,
        *,
        score_threshold: float | None = None,
        nms_iou: float | None = None,
        input_size: int = 320,
        top_k: int = 750,
        parts: Mapping[str, Runner] | None = None,  # single-file model: no parts
    ) -> None:
        if input_size < 32:
            raise ValueError(f"YuNet input_size must be at least 32, got {input_size}")
        self.spec = spec
        self.runner = runner
        self.score_threshold = resolve_threshold(spec, "score", score_threshold)
        self.nms_iou = resolve_threshold(spec, "nms_iou", nms_iou)
        self.input_size = input_size
        self.top_k = top_k
        self._input_name = spec.input.name or runner.input_names[0]
        self._divisor = max(spec.input.stride, 32)
        self._mean = np.asarray(spec.input.mean, dtype=np.float32).reshape(3, 1, 1)
        self._std = np.asarray(spec.input.std, dtype=np.float32).reshape(3, 1, 1)
        self._shift = bool(np.any(self._mean != 0.0) or np.any(self._std != 1.0))
        wanted = [f"{k}_{s}" for k in _KINDS for s in STRIDES]
        missing = [n for n in wanted if n not in runner.output_names]
        if missing:
            raise ModelError(f"model '{spec.id}': YuNet outputs {missing} missing (model has {runner.output_names})")
        self._index = {n: runner.output_names.index(n) for n in wanted}

    def _blob(self, image: Image) -> tuple[np.ndarray, float, float]:
        """Resized, padded NCHW float blob and the x/y scale from original to network pixels."""
        h, w = image.shape[:2]
        scale = self.input_size / max(h, w)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(image, (nw, nh), interpolation=interp)
        if self.spec.input.color == "rgb":
            resized = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
        d = self._divisor
        ph, pw = -(-nh // d) * d, -(-nw // d) * d
        blob = np.zeros((1, 3, ph, pw), dtype=np.float32)
        view = blob[0, :, :nh, :nw]
        np.copyto(view, resized.transpose(2, 0, 1))  # uint8 -> float32 in one pass, no temporaries
        if self._shift:  # YuNet's manifest mean/std are 0 and 1: nothing to do
            view -= self._mean
            view /= self._std
        return blob, nw / w, nh / h

    def detect(self, image: Image) -> list[Face]:
        """Faces sorted by score, in ``image`` pixels; empty when none reaches ``score_threshold``."""
        check_image(image)
        blob, sx, sy = self._blob(image)
        outs = self.runner.run({self._input_name: blob})
        ph, pw = blob.shape[2:]
        boxes, kps, scores = [], [], []
        for s in STRIDES:
            cls, obj, bbox, kp = (
                outs[self._index[f"{k}_{s}"]].reshape(-1, n) for k, n in zip(_KINDS, (1, 1, 4, 10), strict=True)
            )
            score = np.sqrt(np.clip(cls[:, 0], 0, 1) * np.clip(obj[:, 0], 0, 1))
            keep = np.flatnonzero(score >= self.score_threshold)
            if keep.size == 0:
                continue
            c, r = (g[keep] for g in _grid(ph // s, pw // s))
            b = bbox[keep]
            cx, cy = (c + b[:, 0]) * s, (r + b[:, 1]) * s
            bw, bh = np.exp(b[:, 2]) * s, np.exp(b[:, 3]) * s
            boxes.append(np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1))
            kps.append((kp[keep].reshape(-1, 5, 2) + np.stack([c, r], axis=1)[:, None, :]) * s)
            scores.append(score[keep])
        if not scores:
            return []
        all_boxes, all_kps, all_scores = np.concatenate(boxes), np.concatenate(kps), np.concatenate(scores)
        to_orig = np.array([sx, sy], dtype=np.float32)
        faces = []
        for i in nms(all_boxes, all_scores, self.nms_iou, self.top_k):
            box = (all_boxes[i].reshape(2, 2) / to_orig).reshape(4).astype(np.float32)
            faces.append(Face(box=box, landmarks=(all_kps[i] / to_orig).astype(np.float32), score=float(all_scores[i])))
        return faces
