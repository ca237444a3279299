"""Export a trained face backbone to ONNX and register it as a recogniser, gated against a baseline.

From ``tools train`` (a ``backbone.pt``, format face-kiosk-backbone/1), the recommended path::

    python -m tools export --checkpoint runs/x/backbone.pt --id mynet \
        --thresholds-from labels.csv --gate-pairs pairs.csv --baseline sface --json export.json

The architecture, embedding size, the manifest ``input`` block (size, colour, mean, std), the alignment template and
the family come from the checkpoint. An InsightFace arcface_torch ``backbone.pth`` (a plain state dict, or one held
under ``state_dict`` / ``state_dict_backbone`` / ``model``, with or without DataParallel's ``module.`` prefixes) needs
``--arch`` and is fed like ArcFace (112x112 RGB, (x − 127.5) / 127.5, arcface_112). Weights are loaded strictly
(every key, every shape), read with ``torch.load(weights_only=True)``.

Every step runs on a copy staged in a temporary folder; ``models/`` and its manifest are written only at the end:

1. export in eval mode with a dynamic batch; check PyTorch against onnxruntime on random crops and on real faces
   aligned by the kiosk's detector onto the checkpoint's template at its size, fed through the kiosk's own
   ``kiosk.recognition.embed.preprocess`` with the checkpoint's input spec;
2. the gate (``--gate-pairs CSV --baseline ID``): the candidate and a recogniser already in the manifest on the
   same pairs with the same detector; refused (exit 1, nothing written) when its TAR at FAR 1e-3 is more than
   ``--max-drop`` points (default 0: not worse) below the baseline's;
3. thresholds: ``--thresholds-from LABELS.csv`` measures them on the exported ONNX with the all-pairs protocol
   (accept at FMR 1e-5, likely at FMR 1e-3, and the FMR 1e-3/1e-4/1e-5 tail the door scales along), as ``tools
   quantize`` does. Measured thresholds let the model open the door, so they require the gate. Hand-given
   ``--threshold-accept/--threshold-likely`` still work (gate optional), and ``--provisional-thresholds`` registers
   a model that accepts nobody (to evaluate it, or to serve as a baseline);
4. register in ``models/manifest.yaml`` with the gate's record (metric, both values, pairs file and baseline with
   their sha256) and the thresholds' origin in the provenance; ``--json OUT`` writes the same as a report.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from kiosk.lab.cache import default_cache_path
from kiosk.models.manifest import ModelSpec
from kiosk.recognition.align import Template, get_template
from kiosk.recognition.embed import preprocess
from kiosk.stats import median_ms
from tools import ROOT
from tools.errors import ToolError, run_tool
from tools.models import deploy
from tools.models.arch import ARCHS, build
from tools.models.ort import session as _session
from tools.models.quantize import _move, open_cache
from tools.models.registry import (
    default_models_dir,
    file_provenance,
    read_manifest,
    register,
    strip_onnx_metadata,
    tool_versions,
)
from tools.train.backbones import BACKBONES, FORMAT, load_trained

DEFAULT_LICENCE = "user-supplied: check your training data's licence"
INPUT_SIZE = 112
MEAN = STD = 127.5
# A cosine similarity never exceeds 1, so these accept nobody: the door stays shut until real thresholds are set.
PROVISIONAL = 1.01
WRAPPER_KEYS = ("state_dict_backbone", "state_dict", "model", "backbone")
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
MEASURE_HINT = (
    "measure them on labelled photos of your own population: --thresholds-from labels.csv (path,identity; about 450 "
    "images of several people for FMR 1e-5) with --gate-pairs pairs.csv --baseline sface"
)

F32 = npt.NDArray[np.float32]


class ExportError(ToolError):
    """A one-line, user-facing reason the export was refused; ``code`` is the exit status (2: usage)."""


# --------------------------------------------------------------------------------------------------- checkpoints


def _read_checkpoint(path: Path) -> Any:
    """``torch.load(weights_only=True)`` of ``path``, any failure a one-line ExportError."""
    if not path.is_file():
        raise ExportError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip, EOF and runtime errors for files that are not checkpoints
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise ExportError(f"{path} is not a PyTorch checkpoint ({type(exc).__name__}: {first})") from None


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The backbone's tensors from ``path``: unwrapped from a training checkpoint and without ``module.`` prefixes."""
    return _state_dict_of(_read_checkpoint(path), path)


def _state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for key in WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise ExportError(f"{path} holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors)")
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ExportError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor: not a state dict")
        name = key[len("module.") :] if key.startswith("module.") else key
        state[name] = value
    return state


def _first(names: list[str], n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return f"{shown}, … ({len(names)} in all)" if len(names) > n else shown


def num_features_of(state: Mapping[str, torch.Tensor]) -> int:
    """The embedding size the checkpoint was trained with (arcface_torch's ``num_features``), 512 if not found."""
    for key in ("features.weight", "features.layers.3.weight"):
        if key in state and state[key].ndim == 1:
            return int(state[key].shape[0])
    return 512


def load_backbone(arch: str, state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """``arch`` with the checkpoint's weights (strict: every key present, none left over, every shape equal)."""
    model = build(arch, num_features_of(state))
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    hint = f"is --arch {arch} the architecture it was trained with?"
    if missing or unexpected:
        parts = [f"missing keys: {_first(missing)}"] if missing else []
        parts += [f"unexpected: {_first(unexpected)}"] if unexpected else []
        raise ExportError(f"{source} does not match {arch} ({'; '.join(parts)}); {hint}")
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape
    ]
    if wrong:
        raise ExportError(f"{source} does not match {arch} (shape mismatch: {_first(wrong)}); {hint}")
    model.load_state_dict(dict(state), strict=True)
    return model.eval()


ARCFACE_INPUT: dict[str, Any] = {
    "name": "input",
    "size": [INPUT_SIZE, INPUT_SIZE],
    "color": "rgb",
    "layout": "nchw",
    "mean": [MEAN] * 3,
    "std": [STD] * 3,
}


@dataclass
class Source:
    """The network to export and what the door must feed it (the manifest's ``input`` and ``align_template``)."""

    module: nn.Module
    arch: str
    dim: int
    input: dict[str, Any]
    template: str | dict[str, Any]
    family: str
    kind: str  # the checkpoint's format, for the description and provenance
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the network's input."""
        w, h = self.input["size"]
        return int(w), int(h)


def load_source(path: Path, arch: str | None) -> Source:
    """A ``backbone.pt`` from ``tools train`` (everything from the checkpoint; ``arch``, if given, must agree) or an
    arcface_torch state dict (``arch`` required; fed and aligned like ArcFace)."""
    obj = _read_checkpoint(path)
    fmt = obj.get("format") if isinstance(obj, Mapping) else None
    if fmt == FORMAT:
        trained = load_trained(path)
        if arch is not None and arch != trained.arch:
            raise ExportError(f"{path.name} is a {trained.arch} checkpoint, not {arch} (leave --arch out)", code=2)
        inp = {**trained.input, "name": "input"}  # the exporter names the graph's input "input"
        return Source(
            trained.module,
            trained.arch,
            trained.num_features,
            inp,
            trained.align_template,
            trained.family,
            FORMAT,
            dict(trained.training),
        )
    if fmt is not None:
        raise ExportError(
            f"{path.name} is a checkpoint of format {str(fmt)[:60]!r}: export reads {FORMAT} (tools train's "
            "backbone.pt) and arcface_torch state dicts"
        )
    state = _state_dict_of(obj, path)
    if arch is None:
        raise ExportError(
            f"{path.name} is an arcface_torch state dict: pass --arch (a backbone.pt from tools train names its own)",
            code=2,
        )
    if arch not in ARCHS:
        raise ExportError(f"--arch {arch}: an arcface_torch state dict is one of {', '.join(ARCHS)}", code=2)
    model = load_backbone(arch, state, path.name)
    return Source(model, arch, num_features_of(state), dict(ARCFACE_INPUT), "arcface_112", "arcface", "arcface_torch")


# --------------------------------------------------------------------------------------------------- export


@contextlib.contextmanager
def _quiet_exporter(buffer: io.StringIO) -> Iterator[None]:
    """Send the exporter's progress prints and log lines to ``buffer``; drop its deprecation warnings."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(
    model: nn.Module,
    dst: Path,
    opset: int,
    exporter: str,
    *,
    example: torch.Tensor | None = None,
    output_name: str = "embedding",
) -> None:
    """Eval-mode export with a dynamic batch and constant folding, ``input`` → ``output_name``; the exporter's
    per-node stack traces are stripped, so the same weights give the same bytes. ``example`` defaults to a batch of
    two 112x112 faces. Also used by ``tools.models.convert.minifasnet``."""
    import onnx

    if example is None:
        example = torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE)
    tmp = dst.with_suffix(f".{os.getpid()}.tmp.onnx")
    log = io.StringIO()
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _quiet_exporter(log), torch.no_grad():
            if exporter == "dynamo":
                torch.onnx.export(
                    model,
                    (example,),
                    str(tmp),
                    dynamo=True,
                    input_names=["input"],
                    output_names=[output_name],
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                    opset_version=opset,
                    optimize=True,  # constant folding and fusions
                    external_data=False,
                    verbose=False,
                )
            elif exporter == "legacy":
                torch.onnx.export(
                    model,
                    (example,),
                    str(tmp),
                    dynamo=False,
                    input_names=["input"],
                    output_names=[output_name],
                    dynamic_axes={"input": {0: "batch"}, output_name: {0: "batch"}},
                    opset_version=opset,
                    do_constant_folding=True,
                )
            else:
                raise ExportError(f"unknown exporter {exporter!r} (dynamo, legacy)", 2)
        strip_onnx_metadata(tmp)  # also runs onnx.checker
        got = max((o.version for o in onnx.load(str(tmp)).opset_import if o.domain in ("", "ai.onnx")), default=0)
        if got != opset:
            raise ExportError(
                f"the {exporter} exporter wrote opset {got}, not the requested {opset}: try --opset {got}"
            )
        tmp.replace(dst)
    except ExportError:
        raise
    except Exception as exc:
        tail = " ".join(log.getvalue().strip().splitlines()[-1:])
        raise ExportError(f"ONNX export failed ({type(exc).__name__}: {str(exc).strip()[:200]}) {tail}") from exc
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------- verification


def normalise(crops_bgr: list[npt.NDArray[np.uint8]] | npt.NDArray[np.uint8]) -> F32:
    """Aligned 112x112 BGR uint8 crops → the kiosk's input: RGB, (x − 127.5) / 127.5, NCHW float32."""
    batch = np.asarray(crops_bgr, dtype=np.float32)[..., ::-1]
    return np.ascontiguousarray(((batch - MEAN) / STD).transpose(0, 3, 1, 2), dtype=np.float32)


def _image_paths(args_paths: list[Path] | None) -> list[Path]:
    exts = {".jpg", ".jpeg", ".png", ".bmp"}
    if args_paths:
        out: list[Path] = []
        for p in args_paths:
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in exts) if p.is_dir() else [p]
        return out[:8]
    data = os.environ.get("KIOSK_TEST_DATA")
    root = Path(data) if data else ROOT.parent / "shared" / "data" / "faces"
    pairs = root / "lfw" / "pairs.csv"
    if not pairs.is_file():
        return []
    import csv

    with pairs.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:2]
    return [root / "lfw" / r[k] for r in rows for k in ("path1", "path2")]


def real_faces(
    paths: list[Path], models_dirs: list[Path], template: Template | None = None
) -> tuple[list[npt.NDArray[np.uint8]], str]:
    """Faces from ``paths`` aligned exactly as the kiosk aligns them (its detector, onto ``template``: by default
    arcface_112). Falls back to centre crops at the template's size when no detector model is available."""
    import cv2

    from kiosk.errors import KioskError
    from kiosk.imageio import read_image
    from kiosk.models.backends import RuntimeOptions, load_runner
    from kiosk.models.manifest import load_manifest
    from kiosk.recognition.align import align
    from kiosk.recognition.detect import build_detector, select_faces

    template = template or get_template("arcface_112")
    detector = None
    for d in models_dirs:
        try:
            spec = load_manifest(d / "manifest.yaml").get("yunet", task="detect")
            spec.verify()
            detector = build_detector(spec, load_runner(spec, RuntimeOptions(intra_op_threads=2)))
            break
        except KioskError:
            continue
    crops: list[npt.NDArray[np.uint8]] = []
    w, h = template.size
    how = (
        f"aligned by the kiosk's yunet detector onto the template at {w}x{h}"
        if detector
        else "centre crops (no detector found)"
    )
    for path in paths:
        try:
            image = read_image(path)
        except KioskError:
            continue
        faces = select_faces(detector.detect(image), "largest", image.shape) if detector else []
        if faces:
            crops.append(align(image, faces[0], template))
            continue
        ih, iw = image.shape[:2]
        s = min(ih, iw) // 2
        centre = image[ih // 2 - s // 2 : ih // 2 + s // 2, iw // 2 - s // 2 : iw // 2 + s // 2]
        crops.append(np.asarray(cv2.resize(centre, (w, h), interpolation=cv2.INTER_AREA), np.uint8))
    return crops, how


def compare(model: nn.Module, session: Any, x: F32) -> tuple[float, float]:
    """(max |PyTorch − onnxruntime|, max |PyTorch|) on one input batch."""
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    out = np.asarray(session.run(None, {"input": x})[0])
    if out.shape != ref.shape:
        raise ExportError(f"onnxruntime output shape {out.shape} != PyTorch {ref.shape}")
    return float(np.abs(out - ref).max()), float(np.abs(ref).max())


def verify_export(
    source: Source, spec: ModelSpec, image_paths: list[Path], models_dirs: list[Path]
) -> tuple[dict[str, float], float, str]:
    """PyTorch vs onnxruntime on random crops and on real aligned faces, both fed through the kiosk's own
    preprocessing with the staged entry's input spec: ``({check: max abs diff}, output scale, how faces were got)``."""
    w, h = source.size
    session = _session(spec.path)
    rng = np.random.default_rng(0)
    checks: dict[str, float] = {}
    random_x = preprocess(list(rng.integers(0, 256, (3, h, w, 3), dtype=np.uint8)), spec.input)
    checks["random"], scale = compare(source.module, session, random_x)
    checks["random_batch1"], _ = compare(source.module, session, random_x[:1])
    crops, how = real_faces(image_paths, models_dirs, get_template(spec.align_template))
    if crops:
        checks["faces"], face_scale = compare(source.module, session, preprocess(crops, spec.input))
        scale = max(scale, face_scale)
    return checks, scale, f"{len(crops)} ({how})" if crops else ""


def latency_ms(onnx_path: Path, runs: int, threads: int = 2, size: tuple[int, int] = (INPUT_SIZE, INPUT_SIZE)) -> float:
    """Median wall time of one face (batch 1, ``size`` = (width, height)) in onnxruntime with ``threads`` threads."""
    sess = _session(onnx_path, threads)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, size[1], size[0])).astype(np.float32)
    return median_ms(lambda: sess.run(None, {"input": x}), runs)


# --------------------------------------------------------------------------------------------------- command


def _thresholds(args: argparse.Namespace) -> tuple[dict[str, float] | None, str]:
    """The thresholds to register and how they were set; ``None`` when they are measured (``--thresholds-from``)."""
    accept, likely = args.threshold_accept, args.threshold_likely
    given = accept is not None or likely is not None
    if args.thresholds_from is not None:
        if given or args.provisional_thresholds:
            raise ExportError(
                "--thresholds-from measures the thresholds: leave out --threshold-accept/-likely and "
                "--provisional-thresholds",
                code=2,
            )
        return None, "measured"
    if not given:
        if args.provisional_thresholds:
            return {"accept": PROVISIONAL, "likely": PROVISIONAL}, "provisional: unmeasured, accepts nobody"
        raise ExportError(
            "thresholds are required: --thresholds-from LABELS.csv (measured here, recommended), or "
            f"--threshold-accept and --threshold-likely, or --provisional-thresholds; {MEASURE_HINT}",
            code=2,
        )
    if accept is None or likely is None:
        raise ExportError("give both --threshold-accept and --threshold-likely (cosine similarities)", code=2)
    if args.provisional_thresholds:
        raise ExportError("--provisional-thresholds and measured thresholds exclude each other", code=2)
    if not -1.0 <= likely <= accept <= 1.0:
        raise ExportError(f"thresholds must satisfy -1 <= likely ({likely}) <= accept ({accept}) <= 1", code=2)
    return {"accept": float(accept), "likely": float(likely)}, "given by the user (--threshold-accept/-likely)"


def _check_gate_args(args: argparse.Namespace) -> bool:
    """Whether the gate runs. Measured thresholds make a model that opens the door: they require it."""
    gate = args.gate_pairs is not None or args.baseline is not None
    if gate and (args.gate_pairs is None or args.baseline is None):
        raise ExportError("the gate needs both --gate-pairs PAIRS.csv and --baseline MODEL_ID", code=2)
    if not gate and args.max_drop is not None:
        raise ExportError("--max-drop is the gate's bound: give it with --gate-pairs and --baseline", code=2)
    if args.thresholds_from is not None and not gate:
        raise ExportError(
            "--thresholds-from registers a model the door will use: gate it with --gate-pairs PAIRS.csv and "
            "--baseline MODEL_ID (e.g. sface; --max-drop POINTS to allow a loss)",
            code=2,
        )
    if args.max_drop is not None and not args.max_drop >= 0.0:
        raise ExportError(f"--max-drop must be >= 0 points, got {args.max_drop}", code=2)
    return gate


def _check_id(models_dir: Path, model_id: str, source_sha256: str, force: bool) -> None:
    if not ID_PATTERN.match(model_id):
        raise ExportError(
            f"--id {model_id!r}: use lower-case letters, digits, '_', '.', '-' (it names the file)", code=2
        )
    existing = read_manifest(models_dir)["models"].get(model_id)
    stray = models_dir / f"{model_id}.onnx"
    if existing is None and stray.exists() and not force:
        raise ExportError(
            f"{stray} exists but is not in {models_dir / 'manifest.yaml'}; choose another --id or pass --force to "
            "replace it"
        )
    if existing and not force:
        prev = (existing.get("provenance") or {}).get("source_sha256")
        if prev != source_sha256:
            raise ExportError(
                f"model id {model_id!r} is already in {models_dir / 'manifest.yaml'} from another source; "
                "choose another --id or pass --force to replace it"
            )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools export",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Recommended, from tools train: --checkpoint backbone.pt --thresholds-from labels.csv --gate-pairs "
        "pairs.csv --baseline sface. Measured thresholds require the gate; a refused model exits 1 and nothing is "
        "written to the models folder. FMR 1e-5 needs about 450 labelled images of several people.",
    )
    arch_choices = list(dict.fromkeys([*ARCHS, *BACKBONES]))
    p.add_argument(
        "--arch",
        choices=arch_choices,
        help="architecture: required for an arcface_torch backbone.pth; a backbone.pt from tools train names its own",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="backbone.pt from `tools train` (face-kiosk-backbone/1), or backbone.pth (state dict) from arcface_torch",
    )
    p.add_argument("--id", dest="model_id", help="manifest id and file name (default: the arch name)")
    p.add_argument("--out", type=Path, default=None, help="models folder (default: models/, or $KIOSK_MODELS_DIR)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--exporter", choices=("dynamo", "legacy"), default="dynamo", help="torch.onnx exporter")
    p.add_argument("--licence", default=DEFAULT_LICENCE, help=f"licence recorded in the manifest ({DEFAULT_LICENCE!r})")
    t = p.add_argument_group("thresholds (one of)")
    t.add_argument(
        "--thresholds-from",
        type=Path,
        metavar="LABELS.csv",
        help="measure them on the exported model (all pairs of a path,identity CSV): accept at FMR 1e-5, likely at "
        "FMR 1e-3; needs the gate",
    )
    t.add_argument("--labels-root", type=Path, metavar="DIR", help="folder the labels' paths are relative to")
    t.add_argument("--threshold-accept", type=float, help="cosine score for 'the same person' (door, verify)")
    t.add_argument("--threshold-likely", type=float, help="cosine score below which it is 'not the same person'")
    t.add_argument(
        "--provisional-thresholds",
        action="store_true",
        help=f"register without measured thresholds (accept = likely = {PROVISIONAL}: nobody is accepted)",
    )
    g = p.add_argument_group("gate: refuse a model worse than a baseline (nothing is written)")
    g.add_argument("--gate-pairs", type=Path, metavar="PAIRS.csv", help="pairs CSV (path1,path2,same[,fold])")
    g.add_argument("--pairs-root", type=Path, metavar="DIR", help="folder the pairs' paths are relative to")
    g.add_argument("--baseline", metavar="MODEL_ID", help="a recogniser in the manifest to compare with (e.g. sface)")
    g.add_argument(
        "--max-drop",
        type=float,
        metavar="POINTS",
        help=f"allowed fall of TAR@FAR {deploy.GATE_FAR} below the baseline's, in points (default 0: not worse)",
    )
    g.add_argument("--detector", metavar="ID", help="detector id for the gate and thresholds (default: the config's)")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.add_argument("--json", type=Path, dest="json_out", metavar="OUT", help="write the report as JSON here")
    p.add_argument("--verify-images", type=Path, nargs="+", help="photos/folders to compare on (default: LFW pairs)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference PyTorch vs ONNX (1e-4)")
    p.add_argument("--bench", type=int, default=20, metavar="N", help="time N single-face runs (0: skip)")
    p.add_argument("--force", action="store_true", help="replace a manifest entry of the same id from another source")
    return p


def _entry(args: argparse.Namespace, source: Source, staged: Path, thresholds: dict[str, float]) -> dict[str, Any]:
    what = (
        f"{source.arch} backbone trained by tools train ({source.dim}-D)"
        if source.kind != "arcface_torch"
        else f"{source.arch} backbone (InsightFace arcface_torch layout)"
    )
    return {
        "task": "embed",
        "format": "onnx",
        "family": source.family,
        "input": source.input,
        "align_template": source.template,
        "output_dim": source.dim,
        "metric": "cosine",
        "thresholds": thresholds,
        "licence": args.licence,
        "description": f"{what} exported from {args.checkpoint.name}",
        "file": staged.name,
    }


def _training_summary(training: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint's training record, scalars only and no absolute paths (they name the user's home)."""
    return {
        k: v
        for k, v in training.items()
        if isinstance(v, bool | int | float) or (isinstance(v, str) and not os.path.isabs(v) and len(v) <= 200)
    }


def _write_json(path: Path | None, report: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"export: wrote {path}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Export, verify, gate, measure, and only then write to the models folder. The report's ``registered`` says
    whether the model was registered (False: the gate refused it)."""
    models_dir: Path = args.out or default_models_dir()
    thresholds, threshold_note = _thresholds(args)  # refuse before the slow part
    gated = _check_gate_args(args)
    if args.thresholds_from is not None:
        deploy.check_labels(args.thresholds_from)
    source = load_source(args.checkpoint, args.arch)
    model_id: str = args.model_id or source.arch
    prov = file_provenance(args.checkpoint)
    _check_id(models_dir, model_id, prov["source_sha256"], args.force)
    max_drop = 0.0 if args.max_drop is None else float(args.max_drop)
    gate_setup = (
        deploy.open_gate(models_dir, args.baseline, args.gate_pairs, args.pairs_root, args.detector, max_drop)
        if gated
        else None
    )
    n_params = sum(p.numel() for p in source.module.parameters())
    w, h = source.size
    print(
        f"export: {args.checkpoint.name}: {source.arch}, {n_params / 1e6:.2f} M parameters, {source.dim}-D, "
        f"input {w}x{h}, loaded strictly ({source.kind})"
    )
    report: dict[str, Any] = {
        "id": model_id,
        "source": {**prov, "format": source.kind, "arch": source.arch, "parameters": n_params},
        "registered": False,
    }

    with tempfile.TemporaryDirectory(prefix="export-") as tmp_name:
        staged = Path(tmp_name) / f"{model_id}.onnx"
        t0 = time.perf_counter()
        export_onnx(source.module, staged, args.opset, args.exporter, example=torch.zeros(2, 3, h, w))
        size_mb = staged.stat().st_size / 1e6
        took = time.perf_counter() - t0
        print(f"export: exported ({size_mb:.1f} MB, opset {args.opset}, {args.exporter}, {took:.1f} s)")
        # the staged entry carries placeholder thresholds until the real ones are known
        entry = _entry(args, source, staged, thresholds or {"accept": PROVISIONAL, "likely": PROVISIONAL})
        spec = deploy.stage_spec(staged.parent, model_id, entry)

        checks, scale, faces = verify_export(
            source, spec, _image_paths(args.verify_images), [models_dir, default_models_dir()]
        )
        if faces:
            print(f"export: real faces: {faces}")
        else:
            print("export: no real face photos found (pass --verify-images or set KIOSK_TEST_DATA): random inputs only")
        worst = max(checks.values())
        detail = ", ".join(f"{k} {v:.2e}" for k, v in checks.items())
        print(
            f"export: PyTorch vs onnxruntime max abs diff: {detail} (outputs up to {scale:.3g}; "
            f"tolerance {args.tolerance})"
        )
        if not worst <= args.tolerance:
            raise ExportError(f"ONNX output differs from PyTorch by {worst:.2e} > {args.tolerance}: not registered")
        ms = latency_ms(staged, args.bench, size=source.size) if args.bench > 0 else None
        if ms is not None:
            print(f"export: latency {ms:.1f} ms per face (onnxruntime, 2 threads, median of {args.bench})")
        report.update(
            sha256=spec.sha256,
            size_mb=round(size_mb, 3),
            max_abs_diff=checks,
            latency_ms=ms,
            input=source.input,
            align_template=source.template,
        )

        gate: dict[str, Any] | None = None
        labels_summary: dict[str, Any] | None = None
        if gate_setup is not None:
            cfg, candidate = deploy.candidate_pipeline(gate_setup, spec)
            with open_cache(None if args.no_cache else default_cache_path()) as cache:
                gate = deploy.run_gate(gate_setup, cfg, candidate, cache)
                report["gate"] = gate
                if not gate["passed"]:
                    reason = deploy.refusal(gate)
                    report["refused"] = reason
                    _write_json(args.json_out, report)
                    print(f"export: {reason}", file=sys.stderr)
                    return report
                print(f"export: {deploy.passed(gate)}")
                if args.thresholds_from is not None:
                    thresholds, labels_summary = deploy.measure_thresholds(
                        args.thresholds_from, args.labels_root, cfg, candidate, cache
                    )
                    threshold_note = (
                        f"measured on {args.thresholds_from.name} (all pairs, {labels_summary['n_images']} images, "
                        f"{labels_summary['n_impostor']:,} impostor pairs): accept at FMR {deploy.ACCEPT_FMR}, "
                        f"likely at FMR {deploy.LIKELY_FMR}"
                    )
                    print(f"export: thresholds {thresholds}: {threshold_note}")
        assert thresholds is not None  # measured above when --thresholds-from was given
        report["thresholds"] = {"values": thresholds, "how": threshold_note, "labels": labels_summary}

        entry.update(
            thresholds=thresholds,
            file=f"{model_id}.onnx",
            provenance={
                **prov,
                "arch": source.arch,
                "checkpoint_format": source.kind,
                "parameters": n_params,
                **({"training": _training_summary(source.training)} if source.training else {}),
                "thresholds": threshold_note,
                **({"thresholds_measured": labels_summary} if labels_summary else {}),
                **({"gate": gate} if gate else {}),
                "exporter": f"torch.onnx ({args.exporter}), opset {args.opset}",
                "max_abs_diff": {k: float(f"{v:.3g}") for k, v in checks.items()},
                "tools": tool_versions("torch", "onnx", "onnxscript", "onnxruntime"),
                "built_by": "tools/models/export.py",
            },
        )
        models_dir.mkdir(parents=True, exist_ok=True)
        dst = models_dir / f"{model_id}.onnx"
        _move(staged, dst)
    register(models_dir, model_id, entry)
    report["registered"] = True
    report["file"] = dst.name
    if thresholds["accept"] > 1.0:
        print(f"export: WARNING: {model_id} has provisional thresholds and accepts nobody; {MEASURE_HINT}")
    _write_json(args.json_out, report)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        return 0 if run(args)["registered"] else 1

    return run_tool("export", body)


if __name__ == "__main__":
    sys.exit(main())
