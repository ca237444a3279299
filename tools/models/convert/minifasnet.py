"""Convert MiniFASNet passive anti-spoofing checkpoints (Silent-Face-Anti-Spoofing) to ONNX liveness models.

``python -m tools minifasnet --checkpoint 2.7_80x80_MiniFASNetV2.pth --checkpoint 4_0_0_80x80_MiniFASNetV1SE.pth``
(or ``--checkpoint-dir DIR``: every ``*.pth`` in it).

The checkpoints are Apache-2.0 but not on any package index, so the kiosk cannot ship them: the user supplies them and
this tool converts them; they are never copied into the models folder. Each is read with
``torch.load(weights_only=True)``, its architecture (MiniFASNetV2, or V1SE when it carries squeeze-and-excitation
gates) and every width are read off its tensors (``tools/models/arch/minifasnet.py``), and its crop scale and input size
off its file name as the original does (``2.7_80x80_MiniFASNetV2.pth``: scale 2.7, 80x80;
``4_0_0_80x80_MiniFASNetV1SE.pth``: the first field, 4). It is exported in eval mode with a dynamic batch (input
``input``: 80x80 BGR 0-255 NCHW, no normalisation; output ``logits``: 3, class 1 = real face), checked against
PyTorch in onnxruntime, and registered as ``minifasnet_v2`` / ``minifasnet_v1se`` (task "liveness"), with the crop
scale in the entry's ``params`` for ``kiosk/liveness/passive.py``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from kiosk.stats import median_ms
from tools import ROOT
from tools.errors import run_tool
from tools.models.arch.minifasnet import MiniFASNet, ShapeError, minifasnet
from tools.models.export import ExportError, load_state_dict
from tools.models.export import export_onnx as shared_export
from tools.models.ort import session
from tools.models.registry import (
    default_models_dir,
    file_provenance,
    read_manifest,
    register,
    tool_versions,
    write_manifest,
)

REAL_CLASS = 1
LICENCE = "Apache-2.0"
SOURCE = "minivision-ai/Silent-Face-Anti-Spoofing (resources/anti_spoof_models)"
# The arch names the original's file names use; V1SE/V2SE carry SE gates, V1/V2 do not (the widths differ).
NAMED_ARCHS = {"MiniFASNetV1": False, "MiniFASNetV2": False, "MiniFASNetV1SE": True, "MiniFASNetV2SE": True}
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]


class MiniFASNetError(ExportError):
    """A one-line, user-facing reason a checkpoint was refused (``code`` is the exit status)."""


@dataclass(frozen=True)
class NameInfo:
    """What the original reads from a checkpoint's file name: crop scale, input (w, h) and architecture."""

    scale: float | None  # None: "org_…", a whole-frame model (no crop)
    size: tuple[int, int]
    arch: str


def parse_name(name: str) -> NameInfo:
    """``<scale>[_…]_<H>x<W>_<arch>.pth`` as the original's ``parse_model_name``: the scale is the first field."""
    stem = name[: -len(".pth")] if name.endswith(".pth") else name
    fields = stem.split("_")
    m = re.fullmatch(r"(\d+)x(\d+)", fields[-2]) if len(fields) >= 3 else None
    if m is None:
        raise MiniFASNetError(
            f"{name}: file name is not <scale>_<H>x<W>_<arch>.pth (e.g. 2.7_80x80_MiniFASNetV2.pth); "
            "keep the original name or pass --crop-scale"
        )
    h, w = int(m.group(1)), int(m.group(2))
    if fields[0] == "org":
        return NameInfo(None, (w, h), fields[-1])
    try:
        scale = float(fields[0])
    except ValueError:
        raise MiniFASNetError(f"{name}: crop scale {fields[0]!r} in the file name is not a number") from None
    return NameInfo(scale, (w, h), fields[-1])


@dataclass
class Checkpoint:
    """A checkpoint accepted for conversion: its network (weights loaded strictly) and what it is."""

    path: Path
    model: MiniFASNet
    arch: str
    crop_scale: float
    size: tuple[int, int]
    model_id: str
    scale_from: str  # "file name" or "--crop-scale"


def default_id(arch: str) -> str:
    return "minifasnet_" + arch.removeprefix("MiniFASNet").lower()


def load_checkpoint(path: Path, crop_scale: float | None = None, model_id: str | None = None) -> Checkpoint:
    """Read and check one checkpoint (nothing is written); MiniFASNetError says why one is refused."""
    try:
        state = load_state_dict(path)
    except ExportError as exc:
        raise MiniFASNetError(str(exc)) from None
    try:
        model = minifasnet(state)
    except (ShapeError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise MiniFASNetError(f"{path.name} is not a MiniFASNet state dict ({first})") from None
    shape = model.shape
    if crop_scale is None:
        info = parse_name(path.name)
        if info.scale is None:
            raise MiniFASNetError(f"{path.name} is a whole-frame ('org') model; the kiosk uses face-crop models only")
        scale, size, named = info.scale, info.size, info.arch
    else:
        scale, named = crop_scale, ""
        size = (16 * shape.head_kernel, 16 * shape.head_kernel)
    if named in NAMED_ARCHS and NAMED_ARCHS[named] != shape.has_se:
        has = "has" if shape.has_se else "has no"
        raise MiniFASNetError(f"{path.name}: named {named} but its state dict {has} squeeze-and-excitation gates")
    arch = named if named in NAMED_ARCHS else shape.variant
    # 80 → 40 → 20 → 10 → 5: conv_6_dw covers the whole final map, which fixes the input size.
    if size != (16 * shape.head_kernel, 16 * shape.head_kernel):
        raise MiniFASNetError(
            f"{path.name}: the name says {size[0]}x{size[1]} input but the network's {shape.head_kernel}x"
            f"{shape.head_kernel} head needs {16 * shape.head_kernel}x{16 * shape.head_kernel}"
        )
    if not 0 < scale <= 16:
        raise MiniFASNetError(f"{path.name}: crop scale {scale} is outside (0, 16]")
    mid = model_id or default_id(arch)
    if not ID_PATTERN.match(mid):
        raise MiniFASNetError(f"--id {mid!r}: use lower-case letters, digits, '_', '.', '-' (it names the file)", 2)
    return Checkpoint(
        path=path,
        model=model,
        arch=arch,
        crop_scale=scale,
        size=size,
        model_id=mid,
        scale_from="file name" if crop_scale is None else "--crop-scale",
    )


# --------------------------------------------------------------------------------------------------- export


def export_onnx(model: MiniFASNet, dst: Path, size: tuple[int, int], opset: int = 18, exporter: str = "dynamo") -> None:
    """Eval-mode export with a dynamic batch (``input`` → ``logits``); byte-for-byte reproducible.

    ``dynamo`` (torch.export, the default) takes ~5-10 s per model on 2 cores; ``legacy`` (TorchScript tracing,
    deprecated by torch) under a second, which is what the tests use. Both match PyTorch to ~1e-6 here.
    """
    try:
        shared_export(model, dst, opset, exporter, example=torch.zeros(2, 3, size[1], size[0]), output_name="logits")
    except MiniFASNetError:
        raise
    except ExportError as exc:
        raise MiniFASNetError(str(exc), exc.code) from exc


def to_input(patches: U8) -> F32:
    """(N, H, W, 3) BGR uint8 patches → the network's input: float32 NCHW 0-255, no normalisation."""
    return np.ascontiguousarray(np.asarray(patches, dtype=np.float32).transpose(0, 3, 1, 2))


def torch_logits(model: MiniFASNet, x: F32) -> F32:
    with torch.no_grad():
        out: F32 = model(torch.from_numpy(x)).numpy()
    return out


def compare(model: MiniFASNet, path: Path, size: tuple[int, int]) -> dict[str, float]:
    """Max |PyTorch − onnxruntime| on random uint8 patches, as a batch of 4 and alone."""
    x = to_input(np.random.default_rng(0).integers(0, 256, (4, size[1], size[0], 3), dtype=np.uint8))
    sess = session(path)
    out = {}
    for name, batch in (("batch4", x), ("batch1", x[:1])):
        ref = torch_logits(model, batch)
        got = np.asarray(sess.run(None, {"input": batch})[0])
        if got.shape != ref.shape:
            raise MiniFASNetError(f"onnxruntime output shape {got.shape} != PyTorch {ref.shape}")
        out[name] = float(np.abs(got - ref).max())
    return out


def latency_ms(path: Path, size: tuple[int, int], runs: int, threads: int = 1) -> float:
    """Median wall time of one patch (batch 1) in onnxruntime with ``threads`` intra-op threads."""
    sess = session(path, threads)
    x = to_input(np.random.default_rng(1).integers(0, 256, (1, size[1], size[0], 3), dtype=np.uint8))
    return median_ms(lambda: sess.run(None, {"input": x}), runs)


# --------------------------------------------------------------------------------------------------- command


def manifest_entry(ck: Checkpoint, file: str, provenance: dict[str, Any]) -> dict[str, Any]:
    w, h = ck.size
    return {
        "task": "liveness",
        "format": "onnx",
        "family": "minifasnet",
        "input": {
            "name": "input",
            "size": [w, h],
            "color": "bgr",
            "layout": "nchw",
            "mean": [0.0, 0.0, 0.0],
            "std": [1.0, 1.0, 1.0],
        },
        "params": {"crop_scale": ck.crop_scale, "real_class": REAL_CLASS, "classes": ck.model.shape.classes},
        "licence": LICENCE,
        "description": (
            f"{ck.arch} passive anti-spoofing (Silent-Face-Anti-Spoofing): {w}x{h} BGR patch of the face box "
            f"x{ck.crop_scale:g}, {ck.model.shape.classes} logits, class {REAL_CLASS} = real face"
        ),
        "file": file,
        "provenance": provenance,
    }


def convert(
    ck: Checkpoint,
    models_dir: Path,
    opset: int = 18,
    tolerance: float = 1e-4,
    bench: int = 200,
    exporter: str = "dynamo",
) -> dict[str, Any]:
    """Export, check and register one accepted checkpoint; returns the figures it measured."""
    n_params = sum(int(p.numel()) for p in ck.model.parameters())
    print(f"minifasnet: {ck.path.name}: {ck.arch}, {n_params:,} parameters, crop scale {ck.crop_scale:g}")
    dst = models_dir / f"{ck.model_id}.onnx"
    t0 = time.perf_counter()
    export_onnx(ck.model, dst, ck.size, opset, exporter)
    size_kb = dst.stat().st_size / 1e3
    print(f"minifasnet: wrote {dst} ({size_kb:.0f} kB, opset {opset}, {time.perf_counter() - t0:.1f} s)")
    diffs = compare(ck.model, dst, ck.size)
    worst = max(diffs.values())
    print(f"minifasnet: PyTorch vs onnxruntime max abs diff {worst:.2e} (tolerance {tolerance})")
    if not worst <= tolerance:
        dst.unlink(missing_ok=True)
        raise MiniFASNetError(f"{ck.path.name}: ONNX differs from PyTorch by {worst:.2e} > {tolerance}: not registered")
    ms = latency_ms(dst, ck.size, bench) if bench > 0 else None
    if ms is not None:
        print(f"minifasnet: latency {ms:.2f} ms per patch (onnxruntime, 1 thread, median of {bench})")
    provenance = {
        **file_provenance(ck.path),
        "source": SOURCE,
        "arch": ck.arch,
        "parameters": n_params,
        "crop_scale_from": ck.scale_from,
        "exporter": f"torch.onnx ({exporter}), opset {opset}",
        "max_abs_diff": float(f"{worst:.3g}"),
        "built_by": "tools/models/convert/minifasnet.py",
        "tools": tool_versions("torch", "onnx", "onnxscript", "onnxruntime"),
    }
    register(models_dir, ck.model_id, manifest_entry(ck, dst.name, provenance))
    return {"id": ck.model_id, "path": dst, "size_kb": size_kb, "max_abs_diff": diffs, "latency_ms": ms}


def checkpoints_of(args: argparse.Namespace) -> list[Path]:
    paths: list[Path] = list(args.checkpoint or [])
    for d in args.checkpoint_dir or []:
        if not d.is_dir():
            raise MiniFASNetError(f"checkpoint folder {d} not found")
        found = sorted(d.glob("*.pth"))
        if not found:
            raise MiniFASNetError(f"no *.pth checkpoint in {d}")
        paths += found
    if not paths:
        raise MiniFASNetError("give at least one --checkpoint or --checkpoint-dir", 2)
    return paths


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools minifasnet", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--checkpoint", type=Path, action="append", help="a MiniFASNet .pth (repeatable)")
    p.add_argument("--checkpoint-dir", type=Path, action="append", help="convert every *.pth in this folder")
    p.add_argument("--models-dir", type=Path, help="models folder (default: models/, or $KIOSK_MODELS_DIR)")
    p.add_argument("--id", dest="model_id", help="manifest id (one checkpoint only; default minifasnet_<arch>)")
    p.add_argument("--crop-scale", type=float, help="crop scale (one checkpoint only; default: from the file name)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--exporter", choices=("dynamo", "legacy"), default="dynamo", help="torch.onnx exporter")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference PyTorch vs ONNX (1e-4)")
    p.add_argument("--bench", type=int, default=200, metavar="N", help="time N single-patch runs (0: skip)")
    return p


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    paths = checkpoints_of(args)
    if len(paths) > 1 and (args.model_id or args.crop_scale is not None):
        raise MiniFASNetError("--id and --crop-scale apply to a single checkpoint", 2)
    models_dir: Path = args.models_dir or default_models_dir()
    # Check every checkpoint before writing anything.
    accepted = [load_checkpoint(p, args.crop_scale, args.model_id) for p in paths]
    ids = [ck.model_id for ck in accepted]
    if len(set(ids)) != len(ids):
        raise MiniFASNetError(
            f"two checkpoints would both be registered as {ids}: convert them one at a time with --id"
        )
    existing = read_manifest(models_dir)["models"]
    for ck in accepted:
        prev = existing.get(ck.model_id)
        if prev is not None and prev.get("task") != "liveness":
            raise MiniFASNetError(f"model id {ck.model_id!r} is a {prev.get('task')} model in the manifest: use --id")
    return [convert(ck, models_dir, args.opset, args.tolerance, args.bench, args.exporter) for ck in accepted]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        run(args)
        return 0

    return run_tool("minifasnet", body)


# --------------------------------------------------------------------------------------------------- for tests


def default_checkpoint_dir() -> Path:
    """``$KIOSK_MINIFASNET_DIR``, else ``<KIOSK_TEST_DATA>/../models/minifasnet`` (shared/data/models/minifasnet)."""
    env = os.environ.get("KIOSK_MINIFASNET_DIR")
    if env:
        return Path(env)
    root = ROOT
    faces = Path(os.environ.get("KIOSK_TEST_DATA", root / ".." / "shared" / "data" / "faces"))
    return (faces / ".." / "models" / "minifasnet").resolve()


def build_minifasnet_models(tmp_dir: Path, checkpoint_dir: Path | None = None, exporter: str = "legacy") -> Path:
    """A models folder in ``tmp_dir`` with the repository's manifest plus the converted MiniFASNet models.

    The repository's entries are kept with absolute paths to its model files (read, never written), so a pipeline
    and its detector load from the new manifest; only the ONNX files converted here are written, under
    ``tmp_dir/models``. Raises MiniFASNetError when ``checkpoint_dir`` (default ``default_checkpoint_dir()``) has
    no checkpoint. The fast ``legacy`` exporter is the default here (a test fixture); the command's is dynamo.
    """
    src = default_models_dir()
    out = tmp_dir / "models"
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(src)
    for entry in manifest["models"].values():
        entry["file"] = str((src / entry["file"]).resolve())
        for part in (entry.get("parts") or {}).values():
            part["file"] = str((src / part["file"]).resolve())
    write_manifest(out, manifest)
    folder = checkpoint_dir or default_checkpoint_dir()
    argv = ["--checkpoint-dir", str(folder), "--models-dir", str(out), "--bench", "0", "--exporter", exporter]
    args = parser().parse_args(argv)
    run(args)
    return out


if __name__ == "__main__":
    sys.exit(main())
