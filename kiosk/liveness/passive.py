"""Passive liveness: MiniFASNet anti-spoofing models on scaled crops around the face, fused into one live-face
probability per face.

Each model (converted by ``python -m tools minifasnet``; manifest task "liveness") sees its own patch: the face box
grown by the model's ``params.crop_scale`` (2.7 or 4.0, so the patch shows the face's surroundings: a phone's bezel,
a print's edge, moiré), kept inside the image and resized to 80x80. The crop rule and its integer rounding are the
original Silent-Face-Anti-Spoofing ``CropImage`` ones, so the models see the patches they were trained on. The fused
score is the mean over models of the softmax probability of ``params.real_class``: 0..1, higher = more likely a
live face. This module needs onnxruntime only (through ``kiosk.models.backends``), never torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from kiosk.config import PASSIVE_FUSIONS
from kiosk.errors import ModelError
from kiosk.models.backends import Runner, RuntimeOptions, load_runner
from kiosk.models.manifest import Manifest, ModelSpec
from kiosk.types import Face, Image

F64 = npt.NDArray[np.float64]


def crop_box(image_w: int, image_h: int, box_xywh: Sequence[int], scale: float) -> tuple[int, int, int, int]:
    """The patch (x1, y1, x2, y2), bottom-right inclusive, that the model with ``scale`` sees around ``box_xywh``.

    The scale is first reduced so the patch fits the image (s' = min(s, (H-1)/h, (W-1)/w)); the (w·s', h·s') box
    centred on the face is then shifted, never shrunk, to lie inside; corners are truncated towards zero (Python's
    ``int``), as the original does. This reproduces the reference patches pixel for pixel; ``math.floor`` does not
    (a corner shifted to -1e-13 would become -1), nor does ``round``.
    """
    x, y, w, h = (int(v) for v in box_xywh)
    if w <= 0 or h <= 0:
        raise ValueError(f"face box {tuple(box_xywh)} has no area")
    if image_w < 2 or image_h < 2:
        raise ValueError(f"image {image_w}x{image_h} is too small to crop")
    s = min(float(scale), (image_h - 1) / h, (image_w - 1) / w)
    new_w, new_h = w * s, h * s
    cx, cy = x + w / 2, y + h / 2
    x1, y1, x2, y2 = cx - new_w / 2, cy - new_h / 2, cx + new_w / 2, cy + new_h / 2
    if x1 < 0:
        x2, x1 = x2 - x1, 0.0
    if y1 < 0:
        y2, y1 = y2 - y1, 0.0
    if x2 > image_w - 1:
        x1, x2 = x1 - (x2 - image_w + 1), float(image_w - 1)
    if y2 > image_h - 1:
        y1, y2 = y1 - (y2 - image_h + 1), float(image_h - 1)
    # int() truncates toward zero; the clamps only matter for boxes far outside the image (a no-op otherwise).
    return (
        min(max(int(x1), 0), image_w - 1),
        min(max(int(y1), 0), image_h - 1),
        min(max(int(x2), 0), image_w - 1),
        min(max(int(y2), 0), image_h - 1),
    )


def crop_patch(image: Image, box_xywh: Sequence[int], scale: float, size: tuple[int, int] = (80, 80)) -> Image:
    """The model's input patch: ``crop_box`` cut out of ``image`` and resized to ``size`` (w, h), bilinear."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = crop_box(w, h, box_xywh, scale)
    patch = cv2.resize(image[y1 : y2 + 1, x1 : x2 + 1], (int(size[0]), int(size[1])))  # cv2's default: INTER_LINEAR
    return np.ascontiguousarray(patch, dtype=np.uint8)


def face_box_xywh(face: Face) -> tuple[int, int, int, int]:
    """A kiosk face box (x1, y1, x2, y2 floats) as the integer (x, y, w, h) the crop rule takes.

    The reference fed YuNet's (x, y, w, h) floats through ``int``, i.e. truncation toward zero; a kiosk box is
    x2 = x + w, so the width is recovered as x2 - x1 before truncating. Width and height are at least 1.
    """
    x1, y1, x2, y2 = (float(v) for v in face.box[:4])
    return int(x1), int(y1), max(1, int(x2 - x1)), max(1, int(y2 - y1))


def softmax(logits: npt.ArrayLike) -> F64:
    """Row-wise softmax in float64 (logits reach ±10, so subtract the row maximum first)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: F64 = e / e.sum(axis=-1, keepdims=True)
    return out


# How a track's last ``liveness.passive.frames`` scores become the one score the threshold judges.
FUSIONS = PASSIVE_FUSIONS
_EPS = 1e-6  # scores are clipped to [eps, 1 - eps] before a logit: a softmax of ±10 logits reaches 1.0 in float


def fuse(scores: Sequence[float], rule: str = "mean") -> float:
    """One live-face score (0..1) from several frames' scores.

    ``mean``: the arithmetic mean of the probabilities (the door's rule before ``liveness.passive.fusion``);
    ``mean_logit``: the mean in log-odds, mapped back to 0..1 (one confident attack frame weighs more than in the
    mean); ``median``; ``min``: every frame must pass. An empty ``scores`` or an unknown rule is a ValueError.
    """
    if not scores:
        raise ValueError("fuse: no scores")
    x = np.asarray(scores, dtype=np.float64)
    if rule == "mean":
        return float(x.mean())
    if rule == "mean_logit":
        p = np.clip(x, _EPS, 1.0 - _EPS)
        z = float(np.mean(np.log(p) - np.log1p(-p)))
        return float(1.0 / (1.0 + np.exp(-z)))
    if rule == "median":
        return float(np.median(x))
    if rule == "min":
        return float(x.min())
    raise ValueError(f"fuse: unknown rule {rule!r} (one of {', '.join(FUSIONS)})")


@dataclass(frozen=True)
class PassiveParams:
    """A liveness model's ``params`` from the manifest, checked once at load."""

    crop_scale: float
    real_class: int
    classes: int

    @classmethod
    def of(cls, spec: ModelSpec) -> PassiveParams:
        p = spec.params
        missing = [k for k in ("crop_scale", "real_class", "classes") if k not in p]
        if missing:
            raise ModelError(
                f"model '{spec.id}': manifest params {missing} missing; re-run `python -m tools minifasnet`"
            )
        try:
            scale, real, classes = float(p["crop_scale"]), int(p["real_class"]), int(p["classes"])
        except (TypeError, ValueError) as exc:
            raise ModelError(f"model '{spec.id}': manifest params are not numbers ({exc})") from None
        if not scale > 0 or not 0 <= real < classes:
            raise ModelError(
                f"model '{spec.id}': params crop_scale {scale} must be > 0 and real_class {real} in 0..{classes - 1}"
            )
        return cls(crop_scale=scale, real_class=real, classes=classes)


class PassiveModel:
    """One liveness model: its crop around the face, preprocessing from the manifest, 3 logits out."""

    def __init__(self, spec: ModelSpec, runner: Runner) -> None:
        if spec.task != "liveness":
            raise ModelError(f"model '{spec.id}' is a {spec.task} model, not a liveness model")
        if spec.input.size is None:
            raise ModelError(f"model '{spec.id}': manifest input.size is required for a liveness model")
        self.spec = spec
        self.params = PassiveParams.of(spec)
        self.size: tuple[int, int] = spec.input.size
        self._runner = runner
        self._input = spec.input.name or runner.input_names[0]
        self._mean = np.asarray(spec.input.mean, dtype=np.float32)
        self._inv_std = 1.0 / np.asarray(spec.input.std, dtype=np.float32)

    def patch(self, image: Image, face: Face) -> Image:
        return crop_patch(image, face_box_xywh(face), self.params.crop_scale, self.size)

    def preprocess(self, patches: Sequence[Image]) -> npt.NDArray[np.float32]:
        batch = np.stack(patches).astype(np.float32)  # (N, H, W, 3) BGR
        if self.spec.input.color == "rgb":
            batch = batch[..., ::-1]
        batch = (batch - self._mean) * self._inv_std
        if self.spec.input.layout == "nchw":
            batch = batch.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(batch, dtype=np.float32)

    def logits_for_patches(self, patches: Sequence[Image]) -> npt.NDArray[np.float32]:
        """(N, classes) logits for N patches of ``size`` (BGR uint8), in one run."""
        if not patches:
            return np.zeros((0, self.params.classes), dtype=np.float32)
        out = np.asarray(self._runner.run({self._input: self.preprocess(patches)})[0], dtype=np.float32)
        out = out.reshape(len(patches), -1)
        if out.shape[1] != self.params.classes:
            raise ModelError(f"model '{self.spec.id}': {out.shape[1]} outputs, manifest says {self.params.classes}")
        if not np.all(np.isfinite(out)):
            raise ModelError(f"model '{self.spec.id}' produced non-finite logits")
        return out

    def logits_for_patch(self, patch: Image) -> npt.NDArray[np.float32]:
        """(classes,) logits for one patch."""
        out: npt.NDArray[np.float32] = self.logits_for_patches([patch])[0]
        return out

    def probs(self, image: Image, face: Face) -> F64:
        """(classes,) softmax probabilities for ``face`` in ``image``."""
        return softmax(self.logits_for_patch(self.patch(image, face)))

    def real_probs(self, image: Image, faces: Sequence[Face]) -> F64:
        """(N,) probability of the real-face class for each face, batched into one run."""
        logits = self.logits_for_patches([self.patch(image, f) for f in faces])
        out: F64 = softmax(logits)[:, self.params.real_class] if len(faces) else np.zeros(0)
        return out


class PassiveLiveness:
    """Fuses the models: a face's score is the mean of their real-face probabilities (0..1, higher = live)."""

    def __init__(self, models: Sequence[PassiveModel]) -> None:
        if not models:
            raise ValueError("passive liveness needs at least one model")
        self.models = list(models)

    @classmethod
    def from_manifest(
        cls, manifest: Manifest, ids: Sequence[str], options: RuntimeOptions | None = None
    ) -> PassiveLiveness:
        """Load (hash-checked) each liveness model ``ids`` names; ModelMissingError names an absent id.

        An empty ``ids`` is a ValueError: whether no model means "unavailable" or an error is the caller's call.
        """
        if not ids:
            raise ValueError("no passive liveness model ids given")
        models = []
        for model_id in ids:
            spec = manifest.get(model_id, task="liveness")
            models.append(PassiveModel(spec, load_runner(spec, options)))
        return cls(models)

    @property
    def ids(self) -> list[str]:
        return [m.spec.id for m in self.models]

    def scores(self, image: Image, faces: Sequence[Face]) -> list[float]:
        """The fused score of each face (one batched run per model)."""
        if not faces:
            return []
        per_model = np.stack([m.real_probs(image, faces) for m in self.models])
        return [float(v) for v in per_model.mean(axis=0)]

    def score(self, image: Image, face: Face) -> float:
        """The fused live-face probability of one face."""
        return self.scores(image, [face])[0]


__all__ = [
    "FUSIONS",
    "PassiveLiveness",
    "PassiveModel",
    "PassiveParams",
    "crop_box",
    "crop_patch",
    "face_box_xywh",
    "fuse",
    "softmax",
]
