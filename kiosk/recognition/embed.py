"""Embedding: aligned crops in, L2-normalised float32 vectors out. Preprocessing comes from the manifest."""

from __future__ import annotations

import numpy as np

from kiosk.errors import ModelError
from kiosk.models.backends import Runner
from kiosk.models.manifest import InputSpec, ModelSpec
from kiosk.types import FloatArray, Image


class Embedder:
    def __init__(self, spec: ModelSpec, runner: Runner) -> None:
        if spec.task != "embed":
            raise ModelError(f"model '{spec.id}' is a {spec.task} model, not a recogniser")
        if spec.input.size is None:
            raise ModelError(f"model '{spec.id}': manifest input.size is required for a recogniser")
        self.spec = spec
        self._runner = runner
        self._input = spec.input.name or runner.input_names[0]
        self.dim = spec.output_dim

    @property
    def input_size(self) -> tuple[int, int]:
        assert self.spec.input.size is not None  # checked in __init__
        return self.spec.input.size

    def preprocess(self, crops: list[Image]) -> FloatArray:
        return preprocess(crops, self.spec.input)

    def embed(self, crops: list[Image]) -> FloatArray:
        """Embed aligned crops (each input_size, BGR uint8); returns (N, D) unit vectors."""
        if not crops:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        out = self._runner.run({self._input: self.preprocess(crops)})[0]
        out = np.asarray(out, dtype=np.float32).reshape(len(crops), -1)
        if self.dim is not None and out.shape[1] != self.dim:
            raise ModelError(f"model '{self.spec.id}': output dim {out.shape[1]}, manifest says {self.dim}")
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        if not np.all(np.isfinite(out)) or np.any(norms < 1e-12):
            raise ModelError(f"model '{self.spec.id}' produced a non-finite or zero embedding")
        unit: FloatArray = (out / norms).astype(np.float32, copy=False)
        return unit


def preprocess(crops: list[Image], spec: InputSpec) -> FloatArray:
    """Aligned BGR uint8 crops → the recogniser's input as the manifest describes it (colour order, layout, fixed
    mean/std or FaceNet's per-image standardisation). The one implementation: the door, ``kiosk eval`` and
    ``tools train`` all feed a recogniser through it."""
    stacked = np.stack(crops)  # (N, H, W, 3) BGR uint8
    if spec.normalize == "per_image":
        batch = stacked.astype(np.float32)
        if spec.color == "rgb":
            batch = batch[..., ::-1]
        # FaceNet prewhitening: each crop standardised over all its pixels and channels.
        flat = batch.reshape(len(batch), -1)
        mean = flat.mean(axis=1).reshape(-1, 1, 1, 1)
        std = np.maximum(flat.std(axis=1), 1.0 / np.sqrt(flat.shape[1])).reshape(-1, 1, 1, 1)
        batch = (batch - mean) / std
        if spec.layout == "nchw":
            batch = batch.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(batch, dtype=np.float32)
    # One pass from the uint8 crops into the contiguous float32 input (channel swap and layout as views), then
    # mean/std in place, skipped when they are the identity (SFace: 0 and 1).
    src = stacked[..., ::-1] if spec.color == "rgb" else stacked
    nchw = spec.layout == "nchw"
    if nchw:
        src = src.transpose(0, 3, 1, 2)
    out = np.empty(src.shape, dtype=np.float32)
    np.copyto(out, src)
    shape = (3, 1, 1) if nchw else (3,)
    mean_arr = np.asarray(spec.mean, dtype=np.float32)
    std_arr = np.asarray(spec.std, dtype=np.float32)
    if np.any(mean_arr != 0.0):
        out -= mean_arr.reshape(shape)
    if np.any(std_arr != 1.0):
        out *= (1.0 / std_arr).reshape(shape)
    return out
