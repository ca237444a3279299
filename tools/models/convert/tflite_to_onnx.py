"""TFLite -> ONNX for the few float ops MediaPipe's face models use, so the face mesh runs wherever onnxruntime runs.

``python -m tools tflite-onnx IN.tflite OUT.onnx`` writes the ONNX file and, when ai-edge-litert is installed,
checks it against the TFLite interpreter on random input (``--check``, ``--input-range``, ``--atol``, ``--rtol``).

Why not tf2onnx/onnx2tf: they need TensorFlow, and the kiosk's build step must not. The flatbuffer is read with
``ai_edge_litert.schema_py_generated`` (the TFLite schema in Python); nothing here imports TensorFlow.

How the graph is translated:

* Layout. TFLite keeps 4-D activations NHWC; ONNX convolutions want NCHW. Every 4-D activation is kept NCHW inside
  the ONNX graph; a Transpose is inserted only where a tensor is needed in the other layout: at the graph inputs and
  outputs (which keep TFLite's NHWC shapes and tensor names, so one manifest ``input:`` spec feeds both formats) and
  before a RESHAPE of a 4-D tensor (its element order is NHWC's). face_landmark.tflite has no RESHAPE, so its graph
  has exactly one Transpose per input and per output.
* Padding. TFLite's SAME puts the odd pixel of a stride-2 layer after the image (bottom/right). Explicit ``pads``
  computed from the static input shapes say exactly that, instead of relying on each runtime's ``auto_pad``.
* Options. Strides, padding, dilation, fused activations (RELU, RELU6, RELU_N1_TO_1, TANH), pool sizes and
  concatenation axes are read per op; an option this file cannot honour raises instead of being ignored.
* Weights. FLOAT16 and (u)int8 constants (per-tensor or per-axis scale and zero point) are dequantised to float32,
  and a DEQUANTIZE of a constant is folded away. Quantised *activations* (a fully integer model) are refused.
* PRELU becomes ``Relu(x) + alpha * Min(x, 0)`` (bit-identical, about twice as fast on onnxruntime's CPU; see
  ``_prelu``).
* Unsupported ops are listed, all at once, before anything is built (``UnsupportedOpError``, exit code MODEL).

The output is deterministic (no timestamps, no paths, fixed node and initializer order). It targets ONNX opset 13
and IR version 8 (ONNX 1.10), older than the installed onnx's defaults, so that older onnxruntime builds (JetPack's
onnxruntime-gpu wheels lag PyPI) do not refuse it for its version alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kiosk.errors import KioskError, ModelError

if TYPE_CHECKING:
    import onnx

OPSET = 13
IR_VERSION = 8
PRODUCER = "face-kiosk tools/models/convert/tflite_to_onnx.py"
NHWC_TO_NCHW = (0, 3, 1, 2)
NCHW_TO_NHWC = (0, 2, 3, 1)
# --check: every output within ATOL + RTOL x |TFLite value| of the TFLite interpreter. Not 1e-4 alone: the mesh's
# landmarks are pixel coordinates (up to ~190), where one float32 ulp is 1.5e-5 and TFLite's own XNNPACK and reference
# kernels already disagree by up to 9e-5; its presence logit and BlazeFace's outputs stay below 1e-4.
ATOL = 1e-4
RTOL = 1e-5


class UnsupportedOpError(ModelError):
    """The TFLite model uses an op, option or tensor type this converter does not translate."""


def _schema() -> Any:
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError as exc:
        raise ModelError("reading TFLite files needs ai-edge-litert: pip install 'face-kiosk[tflite]'") from exc
    return schema_py_generated


def _enum_names(enum_class: type) -> dict[int, str]:
    return {v: k for k, v in vars(enum_class).items() if not k.startswith("_") and isinstance(v, int)}


@dataclass(frozen=True)
class _Value:
    """An ONNX value standing for a TFLite tensor; ``nchw``: a 4-D tensor held transposed from TFLite's NHWC."""

    name: str
    nchw: bool


class _Graph:
    """The TFLite subgraph being translated, and the ONNX nodes and initializers emitted so far."""

    def __init__(self, schema: Any, model: Any, raw: bytes, source: str) -> None:
        self.schema = schema
        self.model = model
        self.raw = raw
        self.source = source
        self.sub = model.subgraphs[0]
        self.tensors: list[Any] = list(self.sub.tensors or [])
        self.types = _enum_names(schema.TensorType)
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.values: dict[int, _Value] = {}  # tensor index -> the value holding it
        self.views: dict[tuple[int, bool], str] = {}  # (tensor index, nchw) -> transposed copy
        self.folded: dict[int, np.ndarray] = {}  # outputs of ops evaluated at conversion time (DEQUANTIZE)
        self.names: set[str] = set()
        self.io = set(_ints(self.sub.inputs)) | set(_ints(self.sub.outputs))
        for i in sorted(self.io):  # graph I/O keep their TFLite names exactly: reserve them first
            self.names.add(self.tensor_name(i))

    # ------------------------------------------------------------------------------------------------- tensors
    def tensor_name(self, idx: int) -> str:
        name = self.tensors[idx].name
        return name.decode("utf-8") if isinstance(name, bytes) else str(name or f"tensor_{idx}")

    def shape(self, idx: int) -> tuple[int, ...]:
        return tuple(_ints(self.tensors[idx].shape))

    def type_name(self, idx: int) -> str:
        return self.types.get(int(self.tensors[idx].type), str(self.tensors[idx].type))

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def is_const(self, idx: int) -> bool:
        return idx in self.folded or self._buffer(idx) is not None

    def _buffer(self, idx: int) -> bytes | None:
        buf_idx = int(self.tensors[idx].buffer)
        buffers = self.model.buffers or []
        if buf_idx <= 0 or buf_idx >= len(buffers):
            return None
        buf = buffers[buf_idx]
        if buf.offset and buf.offset > 1:  # large models: data lives after the flatbuffer, addressed by offset
            return self.raw[int(buf.offset) : int(buf.offset) + int(buf.size)]
        if buf.data is None or len(buf.data) == 0:
            return None
        return bytes(np.asarray(buf.data, dtype=np.uint8))

    def const(self, idx: int, what: str) -> np.ndarray:
        """The constant tensor ``idx`` as a numpy array: float tensors dequantised to float32, int tensors as is."""
        if idx in self.folded:
            return self.folded[idx]
        data = self._buffer(idx)
        if data is None:
            raise UnsupportedOpError(
                f"{self.source}: {what} must be a constant, tensor '{self.tensor_name(idx)}' is not"
            )
        tensor = self.tensors[idx]
        if tensor.sparsity is not None:
            raise UnsupportedOpError(f"{self.source}: sparse tensor '{self.tensor_name(idx)}' is not supported")
        dtype = _DTYPES.get(self.type_name(idx))
        if dtype is None:
            raise UnsupportedOpError(f"{self.source}: tensor '{self.tensor_name(idx)}' has type {self.type_name(idx)}")
        array = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(self.shape(idx))
        return dequantize(array, tensor.quantization)

    # -------------------------------------------------------------------------------------------------- values
    def value(self, idx: int, nchw: bool) -> str:
        """ONNX name of tensor ``idx`` in the requested layout (``nchw`` only matters for 4-D tensors); a Transpose
        is added once, on first need, when the tensor is held in the other layout."""
        nchw = nchw and len(self.shape(idx)) == 4
        if idx not in self.values:
            if not self.is_const(idx):
                raise UnsupportedOpError(f"{self.source}: tensor '{self.tensor_name(idx)}' is used before it is made")
            array = self.const(idx, "operand")
            return self.initializer(array.transpose(NHWC_TO_NCHW) if nchw else array, self.tensor_name(idx))
        held = self.values[idx]
        if held.nchw == nchw:
            return held.name
        key = (idx, nchw)
        if key not in self.views:
            base = self.tensor_name(idx) + ("_nchw" if nchw else "_nhwc")
            out = self.fresh(base)
            self.node("Transpose", [held.name], [out], perm=list(NHWC_TO_NCHW if nchw else NCHW_TO_NHWC))
            self.views[key] = out
        return self.views[key]

    def output(self, idx: int, nchw: bool) -> str:
        """Name for an op writing tensor ``idx``; graph outputs held NCHW get a private name (transposed at the end)."""
        nchw = nchw and len(self.shape(idx)) == 4
        base = self.tensor_name(idx)
        # A graph output keeps its TFLite name (reserved in __init__) unless it is held NCHW here.
        name = base if idx in self.io and not nchw else self.fresh(base + "_nchw" if idx in self.io else base)
        self.values[idx] = _Value(name, nchw)
        return name

    def broadcast_const(self, idx: int, nchw: bool) -> str:
        """A constant operand of a broadcasting op (ADD, PRELU's alpha), laid out to broadcast against a 4-D NCHW
        activation: TFLite broadcasts from the right over NHWC, so pad the shape to 4-D, then transpose."""
        array = self.const(idx, "operand")
        if nchw:
            if array.ndim > 4:
                raise UnsupportedOpError(f"{self.source}: {array.ndim}-D constant broadcast against a 4-D tensor")
            array = array.reshape((1,) * (4 - array.ndim) + array.shape).transpose(NHWC_TO_NCHW)
        return self.initializer(array, self.tensor_name(idx))

    def initializer(self, array: np.ndarray, base: str) -> str:
        from onnx import numpy_helper

        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op_type: str, inputs: list[str], outputs: list[str], **attrs: Any) -> None:
        from onnx import helper

        name = f"{op_type}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name, **attrs))

    def activation(self, fused: int, x: str, out: str, where: str) -> None:
        """Apply a TFLite fused activation to ``x`` writing ``out`` (``x`` is ``out``'s pre-activation)."""
        kind = _enum_names(self.schema.ActivationFunctionType).get(int(fused), str(fused))
        if kind == "RELU":
            self.node("Relu", [x], [out])
        elif kind in ("RELU6", "RELU_N1_TO_1"):
            lo, hi = (0.0, 6.0) if kind == "RELU6" else (-1.0, 1.0)
            bounds = [
                self.initializer(np.array(v, np.float32), f"{out}_{tag}") for v, tag in ((lo, "min"), (hi, "max"))
            ]
            self.node("Clip", [x, *bounds], [out])
        elif kind == "TANH":
            self.node("Tanh", [x], [out])
        else:
            raise UnsupportedOpError(f"{self.source}: {where}: fused activation {kind} is not supported")

    def fused_output(self, idx: int, fused: int, nchw: bool) -> str:
        """Where an op writes its result before its fused activation (the handler then calls ``activation``)."""
        out = self.output(idx, nchw)
        return out if int(fused) == 0 else self.fresh(out + "_pre")


_DTYPES: dict[str, str] = {
    "FLOAT32": "float32",
    "FLOAT16": "float16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
}


def dequantize(array: np.ndarray, quantization: Any) -> np.ndarray:
    """Float32 values of a stored constant: FLOAT16 widened; int8/uint8/int16 with a scale mapped by
    ``(q - zero_point) * scale``, per tensor or per ``quantized_dimension``. Other ints (shapes, paddings) unchanged."""
    if array.dtype == np.float16 or array.dtype == np.float32:
        return array.astype(np.float32)
    scale = None if quantization is None or quantization.scale is None else np.asarray(quantization.scale, np.float32)
    if scale is None or scale.size == 0 or array.dtype not in (np.int8, np.uint8, np.int16):
        return array
    zero = np.asarray(quantization.zeroPoint if quantization.zeroPoint is not None else [0], np.float32)
    if scale.size == 1:
        return ((array.astype(np.float32) - float(zero.reshape(-1)[0])) * float(scale[0])).astype(np.float32)
    axis = int(quantization.quantizedDimension)
    shape = [1] * array.ndim
    shape[axis] = -1
    if zero.size == 1:
        zero = np.full_like(scale, zero.reshape(-1)[0])
    return ((array.astype(np.float32) - zero.reshape(shape)) * scale.reshape(shape)).astype(np.float32)


def same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TFLite's SAME padding for one spatial axis: (before, after), the odd pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _spatial_pads(
    g: _Graph,
    idx: int,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dil: tuple[int, int],
    padding: int,
    where: str,
) -> list[int]:
    """ONNX ``pads`` [top, left, bottom, right] for an NHWC input tensor ``idx`` and a TFLite Padding enum."""
    kind = _enum_names(g.schema.Padding).get(int(padding), str(padding))
    if kind == "VALID":
        return [0, 0, 0, 0]
    if kind != "SAME":
        raise UnsupportedOpError(f"{g.source}: {where}: padding {kind} is not supported")
    shape = g.shape(idx)
    if len(shape) != 4 or min(shape[1:3]) <= 0:
        raise UnsupportedOpError(f"{g.source}: {where}: SAME padding needs a static 4-D input, got {shape}")
    top, bottom = same_pads(shape[1], kernel[0], stride[0], dil[0])
    left, right = same_pads(shape[2], kernel[1], stride[1], dil[1])
    return [top, left, bottom, right]


def _opt(op: Any, field: str, default: int = 0) -> int:
    """An option of the op, TFLite's default (0) when the op has no options table."""
    return int(getattr(op.builtinOptions, field, default) if op.builtinOptions is not None else default)


def _ints(values: Any) -> list[int]:
    """A flatbuffer int vector (numpy array, list or None when absent) as a list."""
    return [] if values is None else [int(v) for v in values]


def _inputs(op: Any) -> list[int]:
    return _ints(op.inputs)


def _outputs(op: Any) -> list[int]:
    return _ints(op.outputs)


# ---------------------------------------------------------------------------------------------------- op handlers
def _conv(g: _Graph, op: Any, depthwise: bool) -> None:
    ins, (out_idx,) = _inputs(op), _outputs(op)
    where = f"{'DEPTHWISE_CONV_2D' if depthwise else 'CONV_2D'} '{g.tensor_name(out_idx)}'"
    x_idx, w_idx = ins[0], ins[1]
    weight = g.const(w_idx, f"{where} weights").astype(np.float32)  # [O, KH, KW, I] or depthwise [1, KH, KW, C*M]
    channels_in = g.shape(x_idx)[3]
    if depthwise:
        # NOTE: the depth_multiplier option is unreliable in some converted models (TFLite's kernel ignores it and
        # uses the shapes), so the multiplier is implied by shapes too: output channel c*M+m reads input channel c,
        # which is ONNX's grouped-convolution order with group = C.
        if weight.shape[0] != 1 or weight.shape[3] % channels_in:
            raise UnsupportedOpError(f"{g.source}: {where}: weights {weight.shape} for {channels_in} input channels")
        kernel = weight.transpose(3, 0, 1, 2)  # [C*M, 1, KH, KW]
        group = channels_in
    else:
        if channels_in % weight.shape[3]:
            raise UnsupportedOpError(f"{g.source}: {where}: weights {weight.shape} for {channels_in} input channels")
        kernel = weight.transpose(0, 3, 1, 2)  # [O, I/group, KH, KW]
        group = channels_in // weight.shape[3]
    stride = (_opt(op, "strideH", 1), _opt(op, "strideW", 1))
    dil = (max(_opt(op, "dilationHFactor", 1), 1), max(_opt(op, "dilationWFactor", 1), 1))
    ksize = (int(kernel.shape[2]), int(kernel.shape[3]))
    pads = _spatial_pads(g, x_idx, ksize, stride, dil, _opt(op, "padding"), where)
    args = [g.value(x_idx, nchw=True), g.initializer(kernel, g.tensor_name(w_idx))]
    if len(ins) > 2 and ins[2] >= 0:
        bias = g.const(ins[2], f"{where} bias").astype(np.float32).reshape(-1)
        args.append(g.initializer(bias, g.tensor_name(ins[2])))
    fused = _opt(op, "fusedActivationFunction")
    raw = g.fused_output(out_idx, fused, nchw=True)
    g.node(
        "Conv", args, [raw], kernel_shape=list(ksize), strides=list(stride), dilations=list(dil), pads=pads, group=group
    )
    if fused:
        g.activation(fused, raw, g.values[out_idx].name, where)


def _conv_2d(g: _Graph, op: Any) -> None:
    _conv(g, op, depthwise=False)


def _depthwise_conv_2d(g: _Graph, op: Any) -> None:
    _conv(g, op, depthwise=True)


def _max_pool_2d(g: _Graph, op: Any) -> None:
    (x_idx,), (out_idx,) = _inputs(op)[:1], _outputs(op)
    where = f"MAX_POOL_2D '{g.tensor_name(out_idx)}'"
    ksize = (_opt(op, "filterHeight", 1), _opt(op, "filterWidth", 1))
    stride = (_opt(op, "strideH", 1), _opt(op, "strideW", 1))
    # TFLite's max pool ignores padded cells, as ONNX MaxPool does: explicit pads give the same window maxima.
    pads = _spatial_pads(g, x_idx, ksize, stride, (1, 1), _opt(op, "padding"), where)
    fused = _opt(op, "fusedActivationFunction")
    raw = g.fused_output(out_idx, fused, nchw=True)
    g.node("MaxPool", [g.value(x_idx, nchw=True)], [raw], kernel_shape=list(ksize), strides=list(stride), pads=pads)
    if fused:
        g.activation(fused, raw, g.values[out_idx].name, where)


def _add(g: _Graph, op: Any) -> None:
    ins, (out_idx,) = _inputs(op), _outputs(op)
    where = f"ADD '{g.tensor_name(out_idx)}'"
    nchw = len(g.shape(out_idx)) == 4
    args = []
    for idx in ins:
        if g.is_const(idx):
            args.append(g.broadcast_const(idx, nchw))
        elif nchw and len(g.shape(idx)) != 4:
            raise UnsupportedOpError(f"{g.source}: {where}: a {len(g.shape(idx))}-D activation broadcast to 4-D")
        else:
            args.append(g.value(idx, nchw))
    fused = _opt(op, "fusedActivationFunction")
    raw = g.fused_output(out_idx, fused, nchw)
    g.node("Add", args, [raw])
    if fused:
        g.activation(fused, raw, g.values[out_idx].name, where)


def _prelu(g: _Graph, op: Any) -> None:
    """PRELU as ``Relu(x) + alpha * Min(x, 0)``, not ONNX PRelu: the same values bit for bit (one term is always
    zero), but onnxruntime's CPU PRelu takes a slow broadcasting path and breaks its NCHWc convolution chain. Measured
    on the face mesh, one thread, ORT_ENABLE_ALL, interleaved runs on a shared 2-core x86 box: 6.9 ms per
    inference with PRelu, 3.3 to 4.2 ms decomposed, identical outputs."""
    (x_idx, alpha_idx), (out_idx,) = _inputs(op)[:2], _outputs(op)
    nchw = len(g.shape(x_idx)) == 4
    alpha = g.broadcast_const(alpha_idx, nchw) if g.is_const(alpha_idx) else g.value(alpha_idx, nchw)
    x = g.value(x_idx, nchw)
    out = g.output(out_idx, nchw)
    zero = g.initializer(np.zeros((), np.float32), out + "_zero")
    pos, neg, scaled = g.fresh(out + "_pos"), g.fresh(out + "_neg"), g.fresh(out + "_neg_scaled")
    g.node("Relu", [x], [pos])
    g.node("Min", [x, zero], [neg])
    g.node("Mul", [neg, alpha], [scaled])
    g.node("Add", [pos, scaled], [out])


def _relu(g: _Graph, op: Any) -> None:
    (x_idx,), (out_idx,) = _inputs(op)[:1], _outputs(op)
    nchw = len(g.shape(x_idx)) == 4
    g.node("Relu", [g.value(x_idx, nchw)], [g.output(out_idx, nchw)])


def _pad(g: _Graph, op: Any) -> None:
    (x_idx, pads_idx), (out_idx,) = _inputs(op)[:2], _outputs(op)
    paddings = g.const(pads_idx, f"PAD '{g.tensor_name(out_idx)}' paddings").astype(np.int64).reshape(-1, 2)
    nchw = len(g.shape(x_idx)) == 4
    if nchw:
        paddings = paddings[list(NHWC_TO_NCHW)]
    pads = g.initializer(np.concatenate([paddings[:, 0], paddings[:, 1]]), g.tensor_name(pads_idx))
    g.node("Pad", [g.value(x_idx, nchw), pads], [g.output(out_idx, nchw)], mode="constant")


def _reshape(g: _Graph, op: Any) -> None:
    x_idx, (out_idx,) = _inputs(op)[0], _outputs(op)
    # The new shape is the output tensor's static shape (the shape input or option says the same, maybe with a -1).
    shape = g.initializer(np.asarray(g.shape(out_idx), np.int64), g.tensor_name(out_idx) + "_shape")
    g.node("Reshape", [g.value(x_idx, nchw=False), shape], [g.output(out_idx, nchw=False)])


def _concatenation(g: _Graph, op: Any) -> None:
    ins, (out_idx,) = _inputs(op), _outputs(op)
    rank = len(g.shape(out_idx))
    axis = _opt(op, "axis") % rank
    # Stay NCHW when every 4-D input already is; otherwise concatenate in TFLite's own layout.
    nchw = rank == 4 and all(g.is_const(i) or g.values[i].nchw for i in ins)
    fused = _opt(op, "fusedActivationFunction")
    raw = g.fused_output(out_idx, fused, nchw)
    g.node("Concat", [g.value(i, nchw) for i in ins], [raw], axis=NHWC_TO_NCHW.index(axis) if nchw else axis)
    if fused:
        g.activation(fused, raw, g.values[out_idx].name, f"CONCATENATION '{g.tensor_name(out_idx)}'")


def _dequantize(g: _Graph, op: Any) -> None:
    (x_idx,), (out_idx,) = _inputs(op)[:1], _outputs(op)
    g.folded[out_idx] = g.const(x_idx, f"DEQUANTIZE '{g.tensor_name(out_idx)}' input").astype(np.float32)


# TFLite builtin op name -> handler. Exactly the ops of MediaPipe's face_landmark (CONV_2D, DEPTHWISE_CONV_2D, PRELU,
# ADD, MAX_POOL_2D, PAD), iris_landmark (+ RESHAPE) and face_detection_short_range (+ DEQUANTIZE, RELU,
# CONCATENATION); anything else is refused by name.
OPS: dict[str, Callable[[_Graph, Any], None]] = {
    "CONV_2D": _conv_2d,
    "DEPTHWISE_CONV_2D": _depthwise_conv_2d,
    "PRELU": _prelu,
    "ADD": _add,
    "MAX_POOL_2D": _max_pool_2d,
    "PAD": _pad,
    "RESHAPE": _reshape,
    "CONCATENATION": _concatenation,
    "RELU": _relu,
    "DEQUANTIZE": _dequantize,
}


# ----------------------------------------------------------------------------------------------------- conversion
def _load(tflite_path: Path) -> tuple[Any, Any, bytes]:
    schema = _schema()
    try:
        raw = tflite_path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read {tflite_path}: {exc.strerror}") from exc
    if raw[4:8] != b"TFL3":
        raise ModelError(f"{tflite_path.name}: not a TFLite flatbuffer (no TFL3 identifier)")
    return schema, schema.ModelT.InitFromPackedBuf(raw, 0), raw


def _op_name(schema: Any, model: Any, op: Any) -> str:
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))  # schema v3a: the larger one is right
    name = _enum_names(schema.BuiltinOperator).get(builtin, f"BUILTIN_{builtin}")
    if name == "CUSTOM":
        custom = code.customCode.decode("utf-8") if isinstance(code.customCode, bytes) else code.customCode
        name = f"CUSTOM({custom})"
    return name


def list_ops(tflite_path: Path) -> dict[str, int]:
    """Op name -> count in the model's main subgraph, in order of first use."""
    schema, model, _ = _load(tflite_path)
    return dict(Counter(_op_name(schema, model, op) for op in model.subgraphs[0].operators or []))


def convert(tflite_path: Path) -> onnx.ModelProto:
    """Translate the main subgraph of ``tflite_path`` to an ONNX model with the same NHWC inputs and outputs."""
    from onnx import TensorProto, checker, helper

    schema, model, raw = _load(tflite_path)
    if not model.subgraphs:
        raise ModelError(f"{tflite_path.name}: no subgraph")
    g = _Graph(schema, model, raw, tflite_path.name)
    ops = list(g.sub.operators or [])
    names = [_op_name(schema, model, op) for op in ops]
    missing = Counter(n for n in names if n not in OPS)
    if missing:
        found = ", ".join(f"{n} (x{c}, first at op {names.index(n)})" for n, c in missing.items())
        raise UnsupportedOpError(
            f"{tflite_path.name}: unsupported TFLite op(s): {found}; this converter translates {', '.join(OPS)}"
        )
    consumed = {i for op in ops for i in _inputs(op)} | g.io
    for idx in sorted(consumed):
        if idx >= 0 and not g.is_const(idx) and g.type_name(idx) != "FLOAT32":
            raise UnsupportedOpError(
                f"{tflite_path.name}: activation '{g.tensor_name(idx)}' is {g.type_name(idx)}: only float models "
                "(float32 activations; fp16/int8 weights are fine) are supported"
            )

    graph_inputs = []
    for idx in _ints(g.sub.inputs):
        g.values[idx] = _Value(g.tensor_name(idx), nchw=False)
        graph_inputs.append(helper.make_tensor_value_info(g.tensor_name(idx), TensorProto.FLOAT, list(g.shape(idx))))
    for op, name in zip(ops, names, strict=True):
        OPS[name](g, op)
    graph_outputs = []
    for idx in _ints(g.sub.outputs):
        final = g.tensor_name(idx)
        held = g.values.get(idx)
        if held is None:
            raise UnsupportedOpError(f"{tflite_path.name}: output '{final}' is not computed by any op")
        if held.nchw:  # back to TFLite's NHWC under the TFLite name
            g.node("Transpose", [held.name], [final], perm=list(NCHW_TO_NHWC))
        elif held.name != final:
            g.node("Identity", [held.name], [final])
        graph_outputs.append(helper.make_tensor_value_info(final, TensorProto.FLOAT, list(g.shape(idx))))

    graph = helper.make_graph(g.nodes, _graph_name(model, g.sub), graph_inputs, graph_outputs, g.initializers)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER)
    onnx_model.ir_version = IR_VERSION
    onnx_model.doc_string = f"Converted from TFLite {tflite_path.name} by {PRODUCER}"
    checker.check_model(onnx_model)
    return onnx_model


def _graph_name(model: Any, sub: Any) -> str:
    for value in (sub.name, model.description):
        if value:
            return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    return "tflite"


def convert_file(src: Path, dst: Path) -> dict[str, int]:
    """Convert ``src`` and write ``dst`` atomically (byte-identical on every run). Returns the op counts."""
    model = convert(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(dst.suffix + ".tmp")
    tmp.write_bytes(model.SerializeToString(deterministic=True))
    tmp.replace(dst)
    return list_ops(src)


# ---------------------------------------------------------------------------------------------------------- check
def run_both(
    tflite_path: Path, onnx_path: Path, inputs: dict[str, np.ndarray], threads: int = 1
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Run the TFLite file (ai-edge-litert, default kernels) and the ONNX file (onnxruntime, CPU) on the same NHWC
    float32 inputs, keyed by input name. Returns (TFLite outputs, ONNX outputs), both keyed by output name."""
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(tflite_path), num_threads=threads)
    interp.allocate_tensors()
    for detail in interp.get_input_details():
        interp.set_tensor(detail["index"], inputs[detail["name"]])
    interp.invoke()
    want = {d["name"]: np.array(interp.get_tensor(d["index"])) for d in interp.get_output_details()}
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), sess_options=so, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = {name: np.asarray(v) for name, v in zip(names, session.run(names, inputs), strict=True)}
    if set(got) != set(want):
        raise ModelError(f"outputs differ: TFLite {sorted(want)}, ONNX {sorted(got)}")
    for name, value in want.items():
        if got[name].shape != value.shape:
            raise ModelError(f"output '{name}': ONNX shape {got[name].shape} != TFLite {value.shape}")
    return want, got


def random_inputs(onnx_path: Path, low: float, high: float, seed: int) -> dict[str, np.ndarray]:
    """Uniform float32 inputs in [low, high) for every graph input of the converted model (static shapes)."""
    import onnx

    rng = np.random.default_rng(seed)
    out = {}
    for inp in onnx.load(str(onnx_path)).graph.input:
        shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        out[inp.name] = rng.uniform(low, high, size=shape).astype(np.float32)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools tflite-onnx", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("src", type=Path, help="the .tflite file")
    parser.add_argument("dst", type=Path, help="the .onnx file to write")
    parser.add_argument("--check", type=int, default=3, help="random inputs to compare with TFLite (0: skip)")
    parser.add_argument(
        "--input-range",
        type=float,
        nargs=2,
        default=(0.0, 1.0),
        metavar=("LO", "HI"),
        help="range of the random check inputs (default: 0 1, the face mesh's; BlazeFace: -1 1)",
    )
    parser.add_argument("--atol", type=float, default=ATOL, help=f"absolute tolerance (default: {ATOL:g})")
    parser.add_argument("--rtol", type=float, default=RTOL, help=f"relative tolerance (default: {RTOL:g})")
    args = parser.parse_args(argv)
    try:
        t0 = time.perf_counter()
        ops = convert_file(args.src, args.dst)
        took = time.perf_counter() - t0
        listed = ", ".join(f"{name} x{count}" for name, count in ops.items())
        print(f"tflite-onnx: {args.src.name}: {sum(ops.values())} ops ({listed})")
        print(f"tflite-onnx: wrote {args.dst} ({args.dst.stat().st_size / 1e6:.1f} MB, opset {OPSET}, {took:.2f} s)")
        if args.check > 0:
            try:
                import ai_edge_litert.interpreter  # noqa: F401
            except ImportError:
                print("tflite-onnx: ai-edge-litert not installed: not compared with TFLite", file=sys.stderr)
                return 0
            worst: dict[str, float] = {}
            lo, hi = args.input_range
            for seed in range(args.check):
                want, got = run_both(args.src, args.dst, random_inputs(args.dst, lo, hi, seed=seed))
                for name, value in want.items():
                    if not np.allclose(got[name], value, rtol=args.rtol, atol=args.atol):
                        raise ModelError(
                            f"{args.dst.name}: output '{name}' differs from {args.src.name} by "
                            f"{np.abs(got[name] - value).max():.2e} (allowed {args.atol:g} + {args.rtol:g} x |value|)"
                        )
                    worst[name] = max(worst.get(name, 0.0), float(np.abs(got[name] - value).max()))
            shown = ", ".join(f"{k} {v:.2e}" for k, v in worst.items())
            print(f"tflite-onnx: max |TFLite - onnxruntime| over {args.check} random inputs: {shown}")
    except KioskError as exc:
        print(f"tflite-onnx: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
