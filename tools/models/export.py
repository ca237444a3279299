"""Export your own ArcFace-trained backbone (InsightFace arcface_torch layout) to ONNX and register it as a recogniser.

``python -m tools export --arch iresnet50 --checkpoint backbone.pth --threshold-accept 0.40 --threshold-likely 0.30``

The checkpoint is read with ``torch.load(weights_only=True)``: a plain state dict (arcface_torch's ``backbone.pth``),
a dict holding it under ``state_dict`` / ``state_dict_backbone`` / ``model``, with or without DataParallel's
``module.`` prefixes; it must match the architecture exactly (strict). The network is exported in eval mode with a
dynamic batch (112x112 RGB NCHW; the kiosk feeds (x − 127.5) / 127.5), checked against PyTorch on random inputs and
on real faces aligned by the kiosk's own detector and template, and registered in ``models/manifest.yaml``.

Thresholds: a model you trained has no measured operating point, and the kiosk's door and ``verify`` need one. Pass
``--threshold-accept`` and ``--threshold-likely`` (measured with ``kiosk eval --labels``), or register with
``--provisional-thresholds``: the model can then be evaluated, but accepts nobody until you re-run with real ones.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from kiosk.stats import median_ms
from tools import ROOT
from tools.errors import ToolError, run_tool
from tools.models.arch import ARCHS, build
from tools.models.ort import session as _session
from tools.models.registry import (
    default_models_dir,
    file_provenance,
    read_manifest,
    register,
    strip_onnx_metadata,
    tool_versions,
)

DEFAULT_LICENCE = "user-supplied: check your training data's licence"
INPUT_SIZE = 112
MEAN = STD = 127.5
# A cosine similarity never exceeds 1, so these accept nobody: the door stays shut until real thresholds are set.
PROVISIONAL = 1.01
WRAPPER_KEYS = ("state_dict_backbone", "state_dict", "model", "backbone")
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
MEASURE_HINT = (
    "measure them on labelled photos of your own population: register once with --provisional-thresholds, run "
    "`kiosk eval --recognizer ID --labels labels.csv --json out.json` and take fnmr_at_fmr['1e-5'].threshold as "
    "--threshold-accept and fnmr_at_fmr['1e-3'].threshold as --threshold-likely (as for sface), then re-run export"
)

F32 = npt.NDArray[np.float32]


class ExportError(ToolError):
    """A one-line, user-facing reason the export was refused; ``code`` is the exit status (2: usage)."""


# --------------------------------------------------------------------------------------------------- checkpoints


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The backbone's tensors from ``path``: unwrapped from a training checkpoint and without ``module.`` prefixes."""
    if not path.is_file():
        raise ExportError(f"checkpoint {path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip, EOF and runtime errors for files that are not checkpoints
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise ExportError(f"{path} is not a PyTorch checkpoint ({type(exc).__name__}: {first})") from None
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


def real_faces(paths: list[Path], models_dirs: list[Path]) -> tuple[list[npt.NDArray[np.uint8]], str]:
    """Faces from ``paths`` aligned exactly as the kiosk aligns them (its detector and the arcface_112 template).

    Falls back to centre crops when no detector model is available.
    """
    import cv2

    from kiosk.errors import KioskError
    from kiosk.imageio import read_image
    from kiosk.models.backends import RuntimeOptions, load_runner
    from kiosk.models.manifest import load_manifest
    from kiosk.recognition.align import TEMPLATES, align
    from kiosk.recognition.detect import build_detector, select_faces

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
    how = "aligned by the kiosk's yunet detector onto arcface_112" if detector else "centre crops (no detector found)"
    for path in paths:
        try:
            image = read_image(path)
        except KioskError:
            continue
        faces = select_faces(detector.detect(image), "largest", image.shape) if detector else []
        if faces:
            crops.append(align(image, faces[0], TEMPLATES["arcface_112"]))
            continue
        h, w = image.shape[:2]
        s = min(h, w) // 2
        centre = image[h // 2 - s // 2 : h // 2 + s // 2, w // 2 - s // 2 : w // 2 + s // 2]
        crops.append(np.asarray(cv2.resize(centre, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA), np.uint8))
    return crops, how


def compare(model: nn.Module, session: Any, x: F32) -> tuple[float, float]:
    """(max |PyTorch − onnxruntime|, max |PyTorch|) on one input batch."""
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    out = np.asarray(session.run(None, {"input": x})[0])
    if out.shape != ref.shape:
        raise ExportError(f"onnxruntime output shape {out.shape} != PyTorch {ref.shape}")
    return float(np.abs(out - ref).max()), float(np.abs(ref).max())


def latency_ms(onnx_path: Path, runs: int, threads: int = 2) -> float:
    """Median wall time of one face (batch 1) in onnxruntime with ``threads`` intra-op threads."""
    sess = _session(onnx_path, threads)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, INPUT_SIZE, INPUT_SIZE)).astype(np.float32)
    return median_ms(lambda: sess.run(None, {"input": x}), runs)


# --------------------------------------------------------------------------------------------------- command


def _thresholds(args: argparse.Namespace) -> tuple[dict[str, float], str]:
    accept, likely = args.threshold_accept, args.threshold_likely
    if accept is None and likely is None:
        if args.provisional_thresholds:
            return {"accept": PROVISIONAL, "likely": PROVISIONAL}, "provisional: unmeasured, accepts nobody"
        raise ExportError(f"--threshold-accept and --threshold-likely are required: {MEASURE_HINT}", code=2)
    if accept is None or likely is None:
        raise ExportError("give both --threshold-accept and --threshold-likely (cosine similarities)", code=2)
    if args.provisional_thresholds:
        raise ExportError("--provisional-thresholds and measured thresholds exclude each other", code=2)
    if not -1.0 <= likely <= accept <= 1.0:
        raise ExportError(f"thresholds must satisfy -1 <= likely ({likely}) <= accept ({accept}) <= 1", code=2)
    return {"accept": float(accept), "likely": float(likely)}, "given by the user (--threshold-accept/-likely)"


def _check_id(models_dir: Path, model_id: str, source_sha256: str, force: bool) -> None:
    if not ID_PATTERN.match(model_id):
        raise ExportError(
            f"--id {model_id!r}: use lower-case letters, digits, '_', '.', '-' (it names the file)", code=2
        )
    existing = read_manifest(models_dir)["models"].get(model_id)
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
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog=MEASURE_HINT,
    )
    p.add_argument("--arch", required=True, choices=list(ARCHS), help="backbone architecture (arcface_torch layout)")
    p.add_argument("--checkpoint", required=True, type=Path, help="backbone.pth (state dict) from arcface_torch")
    p.add_argument("--id", dest="model_id", help="manifest id and file name (default: the arch name)")
    p.add_argument("--out", type=Path, default=None, help="models folder (default: models/, or $KIOSK_MODELS_DIR)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--exporter", choices=("dynamo", "legacy"), default="dynamo", help="torch.onnx exporter")
    p.add_argument("--licence", default=DEFAULT_LICENCE, help=f"licence recorded in the manifest ({DEFAULT_LICENCE!r})")
    p.add_argument("--threshold-accept", type=float, help="cosine score for 'the same person' (door, verify)")
    p.add_argument("--threshold-likely", type=float, help="cosine score below which it is 'not the same person'")
    p.add_argument(
        "--provisional-thresholds",
        action="store_true",
        help=f"register without measured thresholds (accept = likely = {PROVISIONAL}: nobody is accepted)",
    )
    p.add_argument("--verify-images", type=Path, nargs="+", help="photos/folders to compare on (default: LFW pairs)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference PyTorch vs ONNX (1e-4)")
    p.add_argument("--bench", type=int, default=20, metavar="N", help="time N single-face runs (0: skip)")
    p.add_argument("--force", action="store_true", help="replace a manifest entry of the same id from another source")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    models_dir: Path = args.out or default_models_dir()
    model_id: str = args.model_id or args.arch
    thresholds, threshold_note = _thresholds(args)  # refuse before the slow part
    state = load_state_dict(args.checkpoint)
    prov = file_provenance(args.checkpoint)
    _check_id(models_dir, model_id, prov["source_sha256"], args.force)
    model = load_backbone(args.arch, state, args.checkpoint.name)
    dim = num_features_of(state)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"export: {args.checkpoint.name}: {args.arch}, {n_params / 1e6:.2f} M parameters, {dim}-D, loaded strictly")

    models_dir.mkdir(parents=True, exist_ok=True)
    dst = models_dir / f"{model_id}.onnx"
    t0 = time.perf_counter()
    export_onnx(model, dst, args.opset, args.exporter)
    size_mb = dst.stat().st_size / 1e6
    print(
        f"export: wrote {dst} ({size_mb:.1f} MB, opset {args.opset}, {args.exporter}, {time.perf_counter() - t0:.1f} s)"
    )

    rng = np.random.default_rng(0)
    session = _session(dst)
    checks: dict[str, float] = {}
    random_x = normalise(rng.integers(0, 256, (3, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8))
    checks["random"], scale = compare(model, session, random_x)
    checks["random_batch1"], _ = compare(model, session, random_x[:1])
    crops, how = real_faces(_image_paths(args.verify_images), [models_dir, default_models_dir()])
    if crops:
        checks["faces"], face_scale = compare(model, session, normalise(crops))
        scale = max(scale, face_scale)
        print(f"export: real faces: {len(crops)} ({how})")
    else:
        print("export: no real face photos found (pass --verify-images or set KIOSK_TEST_DATA): random inputs only")
    worst = max(checks.values())
    detail = ", ".join(f"{k} {v:.2e}" for k, v in checks.items())
    print(
        f"export: PyTorch vs onnxruntime max abs diff: {detail} (outputs up to {scale:.3g}; tolerance {args.tolerance})"
    )
    del session
    if not worst <= args.tolerance:
        dst.unlink(missing_ok=True)
        raise ExportError(f"ONNX output differs from PyTorch by {worst:.2e} > {args.tolerance}: not registered")

    ms = latency_ms(dst, args.bench) if args.bench > 0 else None
    if ms is not None:
        print(f"export: latency {ms:.1f} ms per face (onnxruntime, 2 threads, median of {args.bench})")

    entry: dict[str, Any] = {
        "task": "embed",
        "format": "onnx",
        "family": "arcface",
        "input": {
            "name": "input",
            "size": [INPUT_SIZE, INPUT_SIZE],
            "color": "rgb",
            "layout": "nchw",
            "mean": [MEAN] * 3,
            "std": [STD] * 3,
        },
        "align_template": "arcface_112",
        "output_dim": dim,
        "metric": "cosine",
        "thresholds": thresholds,
        "licence": args.licence,
        "description": f"{args.arch} backbone (InsightFace arcface_torch layout) exported from {args.checkpoint.name}",
        "file": dst.name,
        "provenance": {
            **prov,
            "arch": args.arch,
            "parameters": n_params,
            "thresholds": threshold_note,
            "exporter": f"torch.onnx ({args.exporter}), opset {args.opset}",
            "max_abs_diff": {k: float(f"{v:.3g}") for k, v in checks.items()},
            "tools": tool_versions("torch", "onnx", "onnxscript", "onnxruntime"),
            "built_by": "tools/models/export.py",
        },
    }
    register(models_dir, model_id, entry)
    if thresholds["accept"] > 1.0:
        print(f"export: WARNING: {model_id} has provisional thresholds and accepts nobody; {MEASURE_HINT}")
    return {
        "id": model_id,
        "path": dst,
        "parameters": n_params,
        "size_mb": size_mb,
        "max_abs_diff": checks,
        "latency_ms": ms,
    }


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        run(args)
        return 0

    return run_tool("export", body)


if __name__ == "__main__":
    sys.exit(main())
