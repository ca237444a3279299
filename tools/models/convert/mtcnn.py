"""MTCNN's P-, R- and O-nets from the ``facenet-pytorch`` wheel to three ONNX files, registered as detector ``mtcnn``.

facenet-pytorch pins torch<2.3, so it is never imported: its state dicts (``facenet_pytorch/data/{pnet,rnet,onet}.pt``)
are read with ``torch.load(weights_only=True)`` into the re-implementation below (same layer names, loaded strict).
The nets only: the image pyramid, proposal decoding, NMS, box regression and refinement run in the kiosk
(``kiosk/recognition/detect/mtcnn.py``, numpy/OpenCV). Inputs are RGB NCHW, ``(x - 127.5) / 128`` (facenet-pytorch's
``(x - 127.5) * 0.0078125``). P-net takes any H, W >= 12; R-net (24x24) and O-net (48x48) take a dynamic batch.
Outputs keep facenet-pytorch's names and order: ``reg``, (``landmarks``,) ``prob`` (softmax over
[background, face]). Each file is checked against torch (max abs difference <= 1e-5) before it is registered.

Usage: ``python -m tools mtcnn [--out models/]``
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tools.models.registry import default_models_dir, package_provenance, register, strip_onnx_metadata, tool_versions

PACKAGE = "facenet-pytorch"
SOURCES = {name: f"facenet_pytorch/data/{name}.pt" for name in ("pnet", "rnet", "onet")}
OUTPUTS = {"pnet": "mtcnn_pnet.onnx", "rnet": "mtcnn_rnet.onnx", "onet": "mtcnn_onet.onnx"}
TOLERANCE = 1e-5
OPSET = 18

# facenet-pytorch's MTCNN defaults: thresholds=[0.6, 0.7, 0.7], min_face_size=20, factor=0.709; NMS IoU 0.5 within a
# pyramid level (fixed in the kiosk), 0.7 across levels and after each stage (the final one by intersection-over-min).
ENTRY: dict[str, Any] = {
    "task": "detect",
    "format": "onnx",
    "family": "mtcnn",
    "input": {
        "name": "input",
        "size": None,
        "color": "rgb",
        "layout": "nchw",
        "mean": [127.5, 127.5, 127.5],
        "std": [128.0, 128.0, 128.0],
    },
    "landmarks": "5pt",
    "thresholds": {"pnet": 0.6, "rnet": 0.7, "score": 0.7, "nms_iou": 0.7, "min_face_size": 20.0, "factor": 0.709},
    "licence": "MIT",
    "description": "MTCNN P/R/O-nets (facenet-pytorch weights), 5 landmarks; pyramid, NMS and refinement in the kiosk",
}


class PNet(nn.Module):
    """Proposal net: fully convolutional, 12x12 receptive field, stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    """Refinement net on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).flatten(1)  # the weights were converted from a (W, H, C)-ordered flatten
        x = self.prelu4(self.dense4(x))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """Output net on 48x48 crops: score, box regression and 5 landmarks (x1..x5, y1..y5, relative to the box)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).flatten(1)
        x = self.prelu5(self.dense5(x))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


NETS: dict[str, type[nn.Module]] = {"pnet": PNet, "rnet": RNet, "onet": ONet}
OUTPUT_NAMES = {"pnet": ["reg", "prob"], "rnet": ["reg", "prob"], "onet": ["reg", "landmarks", "prob"]}
# Example inputs for export and for the equivalence check (P-net: two sizes, to exercise the dynamic H/W).
EXAMPLE_SHAPES: dict[str, list[tuple[int, int, int, int]]] = {
    "pnet": [(1, 3, 97, 131), (1, 3, 12, 12), (1, 3, 301, 250)],
    "rnet": [(5, 3, 24, 24), (1, 3, 24, 24)],
    "onet": [(3, 3, 48, 48), (1, 3, 48, 48)],
}


def source_path(name: str) -> Path:
    """The state dict file inside the installed facenet-pytorch wheel."""
    try:
        dist = md.distribution(PACKAGE)
    except md.PackageNotFoundError:
        raise SystemExit(
            f"mtcnn: {PACKAGE} is not installed; install it with: pip install --no-deps {PACKAGE}"
        ) from None
    path = Path(str(dist.locate_file(SOURCES[name])))
    if not path.is_file():
        raise SystemExit(f"mtcnn: {SOURCES[name]} not found in {PACKAGE} {dist.version}")
    return path


def load_net(name: str) -> nn.Module:
    """The re-implemented net with facenet-pytorch's weights loaded strict, in eval mode."""
    net = NETS[name]()
    state = torch.load(source_path(name), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval()


def export_onnx(name: str, net: nn.Module, dst: Path) -> None:
    """TorchScript-free export (dynamo) with a dynamic batch, and dynamic H/W for P-net."""
    shape = EXAMPLE_SHAPES[name][0]
    example = (torch.zeros(shape),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    if name == "pnet":
        dims = {0: torch.export.Dim.STATIC, 2: torch.export.Dim("height", min=12), 3: torch.export.Dim("width", min=12)}
    else:
        dims = {0: batch}
    tmp = dst.with_suffix(dst.suffix + ".tmp")
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed"
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # torch 2.13's own exporter trips its pytree deprecation; nothing this code can change.
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            program = torch.onnx.export(
                net,
                example,
                dynamo=True,
                input_names=["input"],
                output_names=OUTPUT_NAMES[name],
                dynamic_shapes=(dims,),
                opset_version=OPSET,
                external_data=False,
                verbose=False,
            )
    finally:
        quiet.setLevel(level)
    if program is None:  # pragma: no cover - dynamo export always returns a program
        raise SystemExit(f"mtcnn: ONNX export of {name} returned nothing")
    program.save(str(tmp), external_data=False)
    strip_onnx_metadata(tmp)
    tmp.replace(dst)


def check_onnx(name: str, net: nn.Module, path: Path) -> float:
    """Max abs difference between torch and onnxruntime over the example shapes (random 0-255 images)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    if names != OUTPUT_NAMES[name]:
        raise SystemExit(f"mtcnn: {path.name} outputs {names}, expected {OUTPUT_NAMES[name]}")
    rng = np.random.default_rng(0)
    worst = 0.0
    for shape in EXAMPLE_SHAPES[name]:
        x = ((rng.integers(0, 256, size=shape).astype(np.float32)) - 127.5) / 128.0
        with torch.no_grad():
            ref = [t.numpy() for t in net(torch.from_numpy(x))]
        got = session.run(names, {"input": x})
        for r, g in zip(ref, got, strict=True):
            if r.shape != g.shape:
                raise SystemExit(f"mtcnn: {path.name} output shape {g.shape} != torch {r.shape} for input {shape}")
            worst = max(worst, float(np.max(np.abs(r - g))))
    return worst


def export_all(out_dir: Path) -> dict[str, float]:
    """Export and check the three nets into ``out_dir``; max abs difference per net."""
    out_dir.mkdir(parents=True, exist_ok=True)
    diffs: dict[str, float] = {}
    for name in NETS:
        net = load_net(name)
        dst = out_dir / OUTPUTS[name]
        export_onnx(name, net, dst)
        diffs[name] = check_onnx(name, net, dst)
        params = sum(p.numel() for p in net.parameters())
        print(
            f"mtcnn: {name}: {params} parameters -> {dst.name} ({dst.stat().st_size / 1e3:.0f} kB), "
            f"max |torch - onnxruntime| = {diffs[name]:.2e}"
        )
        if diffs[name] > TOLERANCE:
            raise SystemExit(f"mtcnn: {name}: ONNX output differs from torch by {diffs[name]:.2e} > {TOLERANCE}")
    return diffs


def build_entry(diffs: dict[str, float]) -> dict[str, Any]:
    entry: dict[str, Any] = {**ENTRY, "file": OUTPUTS["pnet"]}
    entry["parts"] = {name: {"file": OUTPUTS[name]} for name in ("rnet", "onet")}
    prov = package_provenance(PACKAGE, SOURCES["pnet"])
    prov["parts"] = {name: package_provenance(PACKAGE, SOURCES[name]) for name in ("rnet", "onet")}
    worst = max(diffs.values())
    prov["transform"] = f"PyTorch re-implementation, weights loaded strict, ONNX opset {OPSET}; max |diff| {worst:.1e}"
    prov["built_by"] = "tools/models/convert/mtcnn.py"
    prov["tools"] = tool_versions("torch", "onnx", "onnxruntime")
    entry["provenance"] = prov
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools mtcnn", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="models folder (default: models/ or $KIOSK_MODELS_DIR)")
    args = parser.parse_args(argv)
    out: Path = args.out or default_models_dir()
    torch.set_num_threads(2)
    diffs = export_all(out)
    register(out, "mtcnn", build_entry(diffs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
