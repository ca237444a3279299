"""Per-epoch validation through the kiosk's own evaluation code, so training and the door cannot disagree.

- **Pairs** (:class:`PairsValidation`, e.g. LFW's ``pairs.csv``): the photos are unaligned. Once, at the start, each is
  read, its faces detected and the central one aligned exactly as ``kiosk eval`` does it (the kiosk's
  :class:`~kiosk.recognition.pipeline.Pipeline`: its detector with the retry threshold, ``select_faces(central)``,
  ``Pipeline.prepare`` onto the backbone's template). Each epoch the crops go through the kiosk's
  :class:`~kiosk.recognition.embed.Embedder` (its preprocessing and L2 normalisation) around a PyTorch runner, and
  the scores through :func:`kiosk.lab.evaluate.evaluate_pairs`: 10-fold accuracy, TAR at FAR, ROC AUC.
- **Held-out identities** (:class:`HeldOutValidation`): the training folder's validation split is already aligned; the
  same embedder embeds it, and :func:`kiosk.lab.evaluate.evaluate_pairs` scores balanced pairs of it and
  :func:`kiosk.lab.evaluate.evaluate_labels` all its pairs (FNMR at FMR, rank-1).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from kiosk.config import parse_config
from kiosk.errors import KioskError
from kiosk.imageio import read_image
from kiosk.lab.cache import EmbeddingCache
from kiosk.lab.evaluate import evaluate_labels, evaluate_pairs, read_pairs
from kiosk.models.manifest import InputSpec, ModelSpec
from kiosk.recognition.align import Template, get_template
from kiosk.recognition.detect import select_faces
from kiosk.recognition.embed import Embedder
from kiosk.recognition.pipeline import Pipeline
from tools.train.data import Sample, load_crops, val_pairs, write_labels

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
EVAL_BATCH = 64


class TorchRunner:
    """A PyTorch module behind the kiosk's ``Runner`` protocol (named float32 inputs in, outputs out)."""

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        self.module, self.device = module, device
        self.input_names = ["input"]
        self.output_names = ["embedding"]

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(inputs["input"])).to(self.device)
        if self.device.type == "cpu" and x.ndim == 4:  # CPU modules are trained channels-last: 2x faster fed so
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            out = self.module(x).float().cpu().numpy()
        return [out]


def embedder_for(module: nn.Module, device: torch.device, spec: InputSpec, dim: int, name: str) -> Embedder:
    """The kiosk's embedder (preprocessing from ``spec``, L2 normalisation) around ``module``."""
    model = ModelSpec(
        id=name,
        path=Path(name),
        sha256="",
        task="embed",
        format="torch",
        family="trained",
        input=spec,
        output_dim=dim,
        metric="cosine",
    )
    return Embedder(model, TorchRunner(module, device))


def embed_all(embedder: Embedder, crops: Sequence[U8] | U8) -> F32:
    """Embeddings of ``crops`` in batches, the module in eval mode for the duration."""
    module = embedder._runner.module if isinstance(embedder._runner, TorchRunner) else None
    was_training = bool(module is not None and module.training)
    if module is not None:
        module.eval()
    try:
        parts = [embedder.embed(list(crops[i : i + EVAL_BATCH])) for i in range(0, len(crops), EVAL_BATCH)]
    finally:
        if module is not None and was_training:
            module.train()
    return np.concatenate(parts) if parts else np.zeros((0, embedder.dim or 0), np.float32)


def _lookup(root: Path, vectors: dict[str, F32], failures: dict[str, str]) -> Callable[[Path], Any]:
    def embed(path: Path) -> tuple[F32 | None, str | None]:
        key = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
        if key in vectors:
            return vectors[key], None
        return None, failures.get(key, "not aligned")

    return embed


class PairsValidation:
    """Verification pairs of unaligned photos (LFW style), aligned once by the kiosk's pipeline."""

    def __init__(
        self,
        pairs_csv: Path,
        root: Path | None,
        template: str | dict[str, Any],
        *,
        select: str = "central",
        models_dir: Path | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.csv = pairs_csv
        self.root = root if root is not None else pairs_csv.parent
        models: dict[str, Any] = {}
        if models_dir is not None:
            models["manifest"] = str(models_dir / "manifest.yaml")
        cfg = parse_config({"models": models} if models else {})
        base = Pipeline.from_config(cfg)
        self.pipeline = Pipeline(cfg, base.detector, base.embedder, get_template(template))
        self.detector = base.models.get("detector", {})
        self.crops: dict[str, U8] = {}
        self.failures: dict[str, str] = {}
        paths = sorted({p for pair in read_pairs(pairs_csv) for p in (pair.path1, pair.path2)})
        for k, rel in enumerate(paths):
            self._align(rel, select, cfg.enroll.max_image_pixels)
            if progress is not None:
                progress(k + 1, len(paths))

    def _align(self, rel: str, select: str, max_pixels: int) -> None:
        try:
            image = read_image(self.root / rel, max_pixels=max_pixels)
        except KioskError as exc:
            self.failures[rel] = str(exc)
            return
        faces = select_faces(self.pipeline.detect(image), select, image.shape)
        if not faces:
            self.failures[rel] = "no face found"
            return
        crop, _quality = self.pipeline.prepare(image, faces[:1])[0]
        self.crops[rel] = crop

    def run(self, embedder: Embedder, name: str) -> dict[str, Any]:
        keys = sorted(self.crops)
        vectors = dict(zip(keys, embed_all(embedder, [self.crops[k] for k in keys]), strict=True))
        return evaluate_pairs(
            self.csv,
            root=self.root,
            embed=_lookup(self.root, vectors, self.failures),
            fingerprint=name,
            cache=EmbeddingCache(None),
            models={"detector": self.detector, "recognizer": {"id": name}},
            progress=False,
        )


class HeldOutValidation:
    """The training folder's held-out identities: balanced pairs (accuracy) and all pairs (FNMR at FMR, rank-1)."""

    def __init__(
        self, data_root: Path, samples: Sequence[Sample], templates: tuple[Template, Template], run_dir: Path, seed: int
    ) -> None:
        self.root = data_root
        self.samples = list(samples)
        self.crops = load_crops(data_root, self.samples, *templates)
        self.labels_csv = run_dir / "val_labels.csv"
        write_labels(self.labels_csv, self.samples)
        self.pairs_csv = run_dir / "val_pairs.csv"
        pairs = val_pairs(self.samples, seed)
        with self.pairs_csv.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["path1", "path2", "same", "fold"])
            w.writerows(pairs)
        self.has_pairs = bool(pairs)

    def run(self, embedder: Embedder, name: str) -> dict[str, Any]:
        vectors = dict(zip((s.path for s in self.samples), embed_all(embedder, self.crops), strict=True))
        embed = _lookup(self.root, vectors, {})
        common: dict[str, Any] = dict(
            root=self.root,
            embed=embed,
            fingerprint=name,
            cache=EmbeddingCache(None),
            models={"recognizer": {"id": name}},
            progress=False,
        )
        out: dict[str, Any] = {"labels": evaluate_labels(self.labels_csv, **common)}
        if self.has_pairs:
            out["pairs"] = evaluate_pairs(self.pairs_csv, **common)
        return out
