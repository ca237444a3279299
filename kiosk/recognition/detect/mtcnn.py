"""MTCNN (Zhang et al. 2016) with facenet-pytorch's weights: image pyramid, P-net proposals, R-net and O-net refinement.

The three nets run through injected runners (P-net is the manifest's main file, R-net and O-net its ``parts``);
everything else is numpy/OpenCV and follows facenet-pytorch 2.6's ``detect_face`` step for step, so boxes and
landmarks match the original:

* pyramid: scales ``12 / min_face_size * factor**k`` while the shorter side stays >= 12 px; each level is
  ``(int(h*s + 1), int(w*s + 1))`` resampled by PyTorch's ``interpolate(mode="area")`` (adaptive average pooling),
  reproduced exactly from an integral image;
* P-net: cells with face probability >= ``thresholds.pnet`` become 12x12 boxes (stride 2), NMS 0.5 per level,
  then 0.7 across levels, box regression, squaring;
* R-net on 24x24 crops (score > ``thresholds.rnet``), NMS 0.7, regression, squaring; O-net on 48x48 crops (score >
  ``score_threshold``), landmarks, regression, and a last NMS by intersection over the *smaller* box at ``nms_iou``.
  Crops are the box clipped to the image (not zero-padded) resized to the net's size, as facenet-pytorch does.
  R-net and O-net each run once on the batch of all crops.

Frame size: ``input_size`` is the longer side at which the detector looks for faces of ``min_face_size`` (20) px,
as YuNet's frame is scaled to ``input_size``: on a frame whose longer side L exceeds it, the smallest face searched
is ``20 * L / input_size`` px (40 px on a 640x480 frame at the default 320, below the quality gate's 48). This is
folded into the pyramid rather than done by resizing, so it is exactly facenet-pytorch with that ``min_face_size``,
and R-net/O-net crop the full-resolution frame. Frames up to ``input_size`` run exactly as facenet-pytorch with its
defaults. Only frames longer than ``4 * input_size`` are first downscaled (INTER_AREA) to that, bounding the
memory and cost of the pyramid's integral image on very large photos.

Manifest ``thresholds``: ``pnet``, ``rnet`` (stage thresholds), ``score`` (O-net), ``nms_iou`` (the final NMS), and
optionally ``min_face_size`` and ``factor`` (facenet-pytorch's 20 and 0.709 when absent). Boxes are MTCNN's own
(regressed, not squared, pixel-inclusive as in facenet-pytorch); landmarks are in image pixels.

Landmark order is MTCNN's, which already is the kiosk's "5pt" scheme: the eye, then mouth corner, with the smaller
x first (the subject's right), nose in the middle; checked against YuNet on LFW.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import cast

import cv2
import numpy as np
import numpy.typing as npt

from kiosk.errors import ModelError
from kiosk.models.backends import Runner
from kiosk.models.manifest import ModelSpec
from kiosk.recognition.detect._common import check_image, nms, resolve_threshold
from kiosk.types import Face, FloatArray, Image

log = logging.getLogger(__name__)

PARTS = ("rnet", "onet")
MIN_FACE_SIZE = 20.0
FACTOR = 0.709
PNET_THRESHOLD = 0.6
RNET_THRESHOLD = 0.7
LEVEL_NMS_IOU = 0.5  # within one pyramid level
STAGE_NMS_IOU = 0.7  # across levels and after R-net
MAX_SIDE_FACTOR = 4  # frames longer than this many input_size are downscaled first
NO_LIMIT = 1 << 30  # top_k for the shared NMS: keep every box, as facenet-pytorch does

IntArray = npt.NDArray[np.int64]
F64Array = npt.NDArray[np.float64]
Integral = npt.NDArray[np.int32] | npt.NDArray[np.float64]


def pyramid_scales(h: int, w: int, min_face_size: float, factor: float) -> list[float]:
    """facenet-pytorch's scale list (same float arithmetic, so the level sizes match exactly)."""
    m = 12.0 / min_face_size
    minl = min(h, w) * m
    scales = []
    scale = m
    while minl >= 12:
        scales.append(scale)
        scale = scale * factor
        minl = minl * factor
    return scales


def integral_image(pixels: Image) -> Integral:
    """``cv2.integral`` of an HxWx3 uint8 image: int32 when every sum fits (fast gathers), else float64 (exact)."""
    h, w = pixels.shape[:2]
    depth = cv2.CV_32S if h * w * 255 < 2**31 else cv2.CV_64F
    return cast(Integral, cv2.integral(pixels, sdepth=depth))


def _windows(n_in: IntArray, n_out: int, offset: IntArray) -> tuple[IntArray, IntArray]:
    """Adaptive-pooling source windows ``[start, end)`` per output index: floor(i*n/m) .. ceil((i+1)*n/m)."""
    i = np.arange(n_out, dtype=np.int64)
    start = offset[:, None] + (i[None, :] * n_in[:, None]) // n_out
    end = offset[:, None] + ((i[None, :] + 1) * n_in[:, None] + n_out - 1) // n_out
    return start, end


def area_resize(
    integral: Integral, y0: IntArray, x0: IntArray, hc: IntArray, wc: IntArray, out_h: int, out_w: int
) -> FloatArray:
    """Crops ``[y0:y0+hc, x0:x0+wc]`` (N of them) resized to ``out_h x out_w`` as PyTorch's adaptive average pooling.

    Output cell (i, j) averages the source rows ``floor(i*hc/out_h) .. ceil((i+1)*hc/out_h)`` and the same columns:
    ``interpolate(mode="area")`` for any ratio, up or down. ``integral`` is ``integral_image`` of the whole image,
    so every window sum is exact. Returns (N, out_h, out_w, C) float32.
    """
    rs, re = _windows(hc, out_h, y0)
    cs, ce = _windows(wc, out_w, x0)
    area = ((re - rs)[:, :, None] * (ce - cs)[:, None, :]).astype(np.float32)[..., None]
    if len(y0) == 1:  # one big region (a pyramid level): separable gathers, rows then columns
        rows = np.take(integral, re[0], axis=0) - np.take(integral, rs[0], axis=0)
        total = np.take(rows, ce[0], axis=1) - np.take(rows, cs[0], axis=1)
        level: FloatArray = (total[None].astype(np.float32) / area).astype(np.float32)
        return level
    flat = integral.reshape(-1, integral.shape[2])
    stride = integral.shape[1]
    r0, r1 = (rs * stride)[:, :, None], (re * stride)[:, :, None]
    c0, c1 = cs[:, None, :], ce[:, None, :]
    total = (
        np.take(flat, r1 + c1, axis=0)
        - np.take(flat, r0 + c1, axis=0)
        - np.take(flat, r1 + c0, axis=0)
        + np.take(flat, r0 + c0, axis=0)
    )
    crops: FloatArray = (total.astype(np.float32) / area).astype(np.float32)
    return crops


def nms_min(boxes: FloatArray, scores: FloatArray, threshold: float) -> IntArray:
    """facenet-pytorch's final "Min" NMS: overlap = intersection / smaller area, pixel-inclusive (+1) sizes."""
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i, rest = int(order[-1]), order[:-1]
        keep.append(i)
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        overlap = iw * ih / np.minimum(area[i], area[rest])
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def square(boxes: FloatArray) -> FloatArray:
    """facenet-pytorch's ``rerec``: the square of side max(w, h) on the same centre."""
    b = boxes.copy()
    h = b[:, 3] - b[:, 1]
    w = b[:, 2] - b[:, 0]
    side = np.maximum(w, h)
    b[:, 0] = b[:, 0] + w * 0.5 - side * 0.5
    b[:, 1] = b[:, 1] + h * 0.5 - side * 0.5
    b[:, 2] = b[:, 0] + side
    b[:, 3] = b[:, 1] + side
    return b


def regress(boxes: FloatArray, reg: FloatArray) -> FloatArray:
    """facenet-pytorch's ``bbreg``: offsets in units of the pixel-inclusive box size."""
    b = boxes.copy()
    w = b[:, 2] - b[:, 0] + 1
    h = b[:, 3] - b[:, 1] + 1
    b[:, 0] = b[:, 0] + reg[:, 0] * w
    b[:, 1] = b[:, 1] + reg[:, 1] * h
    b[:, 2] = b[:, 2] + reg[:, 2] * w
    b[:, 3] = b[:, 3] + reg[:, 3] * h
    return b


class MTCNNDetector:
    """Runs MTCNN through three injected runners; thresholds default to the manifest's ``thresholds``."""

    def __init__(
        self,
        spec: ModelSpec,
        runner: Runner,
        *,
        score_threshold: float | None = None,
        nms_iou: float | None = None,
        input_size: int = 320,
        parts: Mapping[str, Runner] | None = None,
    ) -> None:
        if input_size < 32:
            raise ValueError(f"MTCNN input_size must be at least 32, got {input_size}")
        missing = [p for p in PARTS if p not in (parts or {})]
        if parts is None or missing:
            raise ModelError(f"model '{spec.id}': MTCNN needs parts {list(PARTS)} (R-net, O-net); missing {missing}")
        self.spec = spec
        self.runner = runner
        self.rnet = parts["rnet"]
        self.onet = parts["onet"]
        self.score_threshold = resolve_threshold(spec, "score", score_threshold)
        self.nms_iou = resolve_threshold(spec, "nms_iou", nms_iou)
        self.pnet_threshold = spec.thresholds.get("pnet", PNET_THRESHOLD)
        self.rnet_threshold = spec.thresholds.get("rnet", RNET_THRESHOLD)
        self.min_face_size = spec.thresholds.get("min_face_size", MIN_FACE_SIZE)
        self.factor = spec.thresholds.get("factor", FACTOR)
        if not 0.0 < self.factor < 1.0 or self.min_face_size < 1.0:
            raise ModelError(f"model '{spec.id}': MTCNN needs 0 < factor < 1 and min_face_size >= 1")
        self.input_size = input_size
        self.max_side = MAX_SIDE_FACTOR * input_size
        self._mean = np.asarray(spec.input.mean, dtype=np.float32)
        self._std = np.asarray(spec.input.std, dtype=np.float32)
        self._names = {
            "pnet": (spec.input.name or runner.input_names[0], ("reg", "prob"), runner),
            "rnet": (self.rnet.input_names[0], ("reg", "prob"), self.rnet),
            "onet": (self.onet.input_names[0], ("reg", "landmarks", "prob"), self.onet),
        }
        for net, (_, outputs, r) in self._names.items():
            absent = [o for o in outputs if o not in r.output_names]
            if absent:
                raise ModelError(f"model '{spec.id}': {net} outputs {absent} missing (model has {r.output_names})")

    def _run(self, net: str, x: FloatArray) -> list[np.ndarray]:
        """Normalise (N, H, W, 3) 0-255 crops, run ``net`` on the NCHW batch, outputs by name in declared order."""
        name, outputs, runner = self._names[net]
        blob = ((x - self._mean) / self._std).transpose(0, 3, 1, 2)
        outs = runner.run({name: np.ascontiguousarray(blob, dtype=np.float32)})
        return [outs[runner.output_names.index(o)] for o in outputs]

    def _proposals(self, integral: Integral, h: int, w: int, min_face: float) -> tuple[FloatArray, FloatArray]:
        """Stage 1: P-net over the pyramid; squared, regressed candidate boxes and their P-net scores."""
        zero = np.zeros(1, dtype=np.int64)
        per_level: list[tuple[FloatArray, FloatArray]] = []
        for scale in pyramid_scales(h, w, min_face, self.factor):
            hs, ws = int(h * scale + 1), int(w * scale + 1)
            level = area_resize(integral, zero, zero, np.array([h]), np.array([w]), hs, ws)
            reg, prob = self._run("pnet", level)
            ys, xs = np.nonzero(prob[0, 1] >= self.pnet_threshold)
            if ys.size == 0:
                continue
            score = prob[0, 1][ys, xs]
            cell = np.stack([xs, ys], axis=1).astype(np.float32)
            q1 = np.floor((2 * cell + 1) / np.float32(scale))
            q2 = np.floor((2 * cell + 12) / np.float32(scale))
            boxes = np.concatenate([q1, q2, reg[0][:, ys, xs].T], axis=1).astype(np.float32)
            pick = nms(boxes[:, :4], score, LEVEL_NMS_IOU, NO_LIMIT)
            per_level.append((boxes[pick], score[pick]))
        if not per_level:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        boxes = np.concatenate([b for b, _ in per_level])
        scores = np.concatenate([s for _, s in per_level])
        pick = nms(boxes[:, :4], scores, STAGE_NMS_IOU, NO_LIMIT)
        boxes, scores = boxes[pick], scores[pick]
        regw = boxes[:, 2] - boxes[:, 0]
        regh = boxes[:, 3] - boxes[:, 1]
        out = np.stack(
            [
                boxes[:, 0] + boxes[:, 4] * regw,
                boxes[:, 1] + boxes[:, 5] * regh,
                boxes[:, 2] + boxes[:, 6] * regw,
                boxes[:, 3] + boxes[:, 7] * regh,
            ],
            axis=1,
        )
        return square(out), scores

    @staticmethod
    def _crops(integral: Integral, boxes: FloatArray, h: int, w: int, size: int) -> tuple[FloatArray, IntArray]:
        """Boxes clipped to the image (facenet-pytorch's ``pad``) and area-resized to ``size``; kept box indices."""
        b = np.trunc(boxes[:, :4]).astype(np.int64)
        x, y = np.maximum(b[:, 0], 1), np.maximum(b[:, 1], 1)
        ex, ey = np.minimum(b[:, 2], w), np.minimum(b[:, 3], h)
        keep = np.flatnonzero((ey > y - 1) & (ex > x - 1))  # non-empty after clipping
        x, y, ex, ey = x[keep], y[keep], ex[keep], ey[keep]
        crops = area_resize(integral, y - 1, x - 1, ey - (y - 1), ex - (x - 1), size, size)
        return crops, keep

    def detect(self, image: Image) -> list[Face]:
        """Faces sorted by score, in ``image`` pixels; empty when none reaches ``score_threshold``."""
        check_image(image)
        h0, w0 = image.shape[:2]
        scale = min(1.0, self.max_side / max(h0, w0))
        if scale < 1.0:
            nw, nh = max(1, round(w0 * scale)), max(1, round(h0 * scale))
            image = np.asarray(cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA), dtype=np.uint8)
        h, w = image.shape[:2]
        to_orig = np.array([w / w0, h / h0], dtype=np.float32)
        rgb = self.spec.input.color == "rgb"
        pixels = np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), dtype=np.uint8) if rgb else image
        integral = integral_image(pixels)
        min_face = self.min_face_size * max(1.0, max(h0, w0) / self.input_size) * (h / h0)

        boxes, _ = self._proposals(integral, h, w, min_face)
        if len(boxes) == 0:
            return []

        # Stage 2: R-net.
        crops, keep = self._crops(integral, boxes, h, w, 24)
        if keep.size == 0:
            return []
        boxes = boxes[keep]
        reg, prob = self._run("rnet", crops)
        ok = prob[:, 1] > self.rnet_threshold
        boxes, scores, reg = boxes[ok], prob[ok, 1], reg[ok]
        pick = nms(boxes, scores, STAGE_NMS_IOU, NO_LIMIT)
        boxes = square(regress(boxes[pick], reg[pick]))
        if len(boxes) == 0:
            return []

        # Stage 3: O-net, landmarks relative to the (pixel-inclusive) box before regression.
        crops, keep = self._crops(integral, boxes, h, w, 48)
        if keep.size == 0:
            return []
        boxes = boxes[keep]
        reg, marks, prob = self._run("onet", crops)
        ok = prob[:, 1] > self.score_threshold
        boxes, scores, reg, marks = boxes[ok], prob[ok, 1], reg[ok], marks[ok]
        bw = boxes[:, 2] - boxes[:, 0] + 1
        bh = boxes[:, 3] - boxes[:, 1] + 1
        px = bw[:, None] * marks[:, :5] + boxes[:, 0:1] - 1
        py = bh[:, None] * marks[:, 5:] + boxes[:, 1:2] - 1
        points = np.stack([px, py], axis=2)
        boxes = regress(boxes, reg)
        faces = [
            Face(
                box=(boxes[i].reshape(2, 2) / to_orig).reshape(4).astype(np.float32),
                landmarks=(points[i] / to_orig).astype(np.float32),
                score=float(scores[i]),
            )
            for i in nms_min(boxes, scores, self.nms_iou)
        ]
        return sorted(faces, key=lambda f: -f.score)
