"""Model manifest: what each model file is, how to feed it, and the hash it must have.

``models/manifest.yaml`` is written by ``tools/models/build.py`` (and later by the other model tools). Nothing in the
kiosk guesses a model's type or normalisation from tensor shapes: it reads them from here.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kiosk import SOURCE_ROOT
from kiosk.errors import ModelError, ModelIntegrityError, ModelMissingError

REBUILD_HINT = "run `make models` (or `python -m tools.models.build`) to rebuild it"
TASKS = ("detect", "embed", "liveness", "landmarks")
FORMATS = ("onnx", "tflite")
NORMALIZE = ("fixed", "per_image")


def default_models_dir() -> Path:
    """``$KIOSK_MODELS_DIR``, else the ``models/`` folder of the source checkout."""
    env = os.environ.get("KIOSK_MODELS_DIR")
    if env:
        return Path(env)
    return SOURCE_ROOT / "models"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class InputSpec:
    size: tuple[int, int] | None  # (width, height); None = any size (multiple of ``stride``)
    color: str  # "bgr" | "rgb"
    layout: str  # "nchw" | "nhwc"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    name: str | None = None
    stride: int = 1
    normalize: str = "fixed"  # "fixed": (x - mean) / std; "per_image": FaceNet prewhitening over the whole crop


@dataclass(frozen=True)
class ModelSpec:
    id: str
    path: Path
    sha256: str
    task: str
    format: str
    family: str  # decoder / preprocessing family, e.g. yunet, blazeface, arcface
    input: InputSpec
    output_dim: int | None = None
    metric: str | None = None
    landmarks: str | None = None
    # A template name from kiosk/recognition/align.py, or inline: {"size": [w, h], "points": [[x, y] x 5]} (5pt order).
    align_template: str | dict[str, Any] | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    licence: str = "unknown"
    # Multi-file models (MTCNN's R- and O-nets): each part is a full spec of its own, hash-checked like the main file.
    parts: dict[str, ModelSpec] = field(default_factory=dict)
    # Task-specific settings a stage reads, e.g. a liveness model's ``crop_scale`` and ``real_class``.
    params: dict[str, Any] = field(default_factory=dict)

    def part(self, name: str) -> ModelSpec:
        spec = self.parts.get(name)
        if spec is None:
            raise ModelError(f"model '{self.id}': manifest has no part {name!r} (has: {sorted(self.parts) or 'none'})")
        return spec

    def verify(self) -> None:
        """Raise unless the file (and every part's file) exists and has the manifest's sha256."""
        for part in self.parts.values():
            part.verify()
        if not self.path.is_file():
            raise ModelMissingError(f"model '{self.id}': file {self.path} is missing; {REBUILD_HINT}")
        actual = sha256_file(self.path)
        if actual != self.sha256:
            raise ModelIntegrityError(
                f"model '{self.id}': {self.path} has sha256 {actual[:12]}…, manifest expects {self.sha256[:12]}…"
                f" (altered or corrupt); {REBUILD_HINT}"
            )


def _field(entry: dict[str, Any], key: str, model_id: str, manifest: Path) -> Any:
    if key not in entry:
        raise ModelError(f"{manifest}: models.{model_id}.{key} is missing; {REBUILD_HINT}")
    return entry[key]


def _parse_entry(model_id: str, entry: dict[str, Any], root: Path, manifest: Path) -> ModelSpec:
    task = _field(entry, "task", model_id, manifest)
    fmt = _field(entry, "format", model_id, manifest)
    if task not in TASKS:
        raise ModelError(f"{manifest}: models.{model_id}.task must be one of {TASKS}, got {task!r}")
    if fmt not in FORMATS:
        raise ModelError(f"{manifest}: models.{model_id}.format must be one of {FORMATS}, got {fmt!r}")
    inp = _field(entry, "input", model_id, manifest)
    size = inp.get("size")
    spec_in = InputSpec(
        size=(int(size[0]), int(size[1])) if size else None,
        color=str(inp.get("color", "bgr")),
        layout=str(inp.get("layout", "nchw")),
        mean=tuple(float(v) for v in inp.get("mean", (0.0, 0.0, 0.0))),  # type: ignore[arg-type]
        std=tuple(float(v) for v in inp.get("std", (1.0, 1.0, 1.0))),  # type: ignore[arg-type]
        name=inp.get("name"),
        stride=int(inp.get("stride", 1)),
        normalize=str(inp.get("normalize", "fixed")),
    )
    if spec_in.normalize not in NORMALIZE:
        raise ModelError(
            f"{manifest}: models.{model_id}.input.normalize must be one of {NORMALIZE}, got {spec_in.normalize!r}"
        )
    align_template = entry.get("align_template")
    if align_template is not None and not isinstance(align_template, (str, dict)):
        raise ModelError(f"{manifest}: models.{model_id}.align_template must be a name or a mapping with size, points")
    parts: dict[str, ModelSpec] = {}
    raw_parts = entry.get("parts") or {}
    if not isinstance(raw_parts, dict):
        raise ModelError(f"{manifest}: models.{model_id}.parts must be a mapping of name -> {{file, sha256}}")
    for name, part in raw_parts.items():
        if not isinstance(part, dict):
            raise ModelError(f"{manifest}: models.{model_id}.parts.{name} must be a mapping with file and sha256")
        for key in ("file", "sha256"):
            if key not in part:
                raise ModelError(f"{manifest}: models.{model_id}.parts.{name}.{key} is missing; {REBUILD_HINT}")
        sub = {**entry, **part, "parts": None, "task": task, "format": part.get("format", fmt)}
        sub["input"] = {**inp, **(part.get("input") or {})}
        parts[str(name)] = _parse_entry(f"{model_id}.{name}", sub, root, manifest)
    path = Path(_field(entry, "file", model_id, manifest))
    return ModelSpec(
        id=model_id,
        path=path if path.is_absolute() else root / path,
        sha256=str(_field(entry, "sha256", model_id, manifest)),
        task=task,
        format=fmt,
        family=str(_field(entry, "family", model_id, manifest)),
        input=spec_in,
        output_dim=entry.get("output_dim"),
        metric=entry.get("metric"),
        landmarks=entry.get("landmarks"),
        align_template=align_template,
        thresholds={k: float(v) for k, v in (entry.get("thresholds") or {}).items()},
        provenance=dict(entry.get("provenance") or {}),
        licence=str(entry.get("licence", "unknown")),
        parts=parts,
        params=_params(entry.get("params"), model_id, manifest),
    )


def _params(raw: Any, model_id: str, manifest: Path) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ModelError(f"{manifest}: models.{model_id}.params must be a mapping, got {type(raw).__name__}")
    return dict(raw)


@dataclass(frozen=True)
class Manifest:
    path: Path
    models: dict[str, ModelSpec]

    def get(self, model_id: str, task: str | None = None) -> ModelSpec:
        spec = self.models.get(model_id)
        if spec is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelMissingError(f"model '{model_id}' is not in {self.path} (known: {known}); {REBUILD_HINT}")
        if task is not None and spec.task != task:
            raise ModelError(f"model '{model_id}' is a {spec.task} model, not a {task} model")
        return spec


def load_manifest(path: Path | None = None) -> Manifest:
    """Parse the manifest. Hashes are checked when a model is loaded (``ModelSpec.verify``)."""
    path = path or default_models_dir() / "manifest.yaml"
    if not path.is_file():
        raise ModelMissingError(f"model manifest {path} is missing; {REBUILD_HINT}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelError(f"model manifest {path} is not valid YAML ({exc.__class__.__name__}); {REBUILD_HINT}") from exc
    entries = data.get("models") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise ModelError(f"model manifest {path} has no 'models' mapping; {REBUILD_HINT}")
    models = {mid: _parse_entry(mid, e, path.parent, path) for mid, e in entries.items()}
    return Manifest(path=path, models=models)
