"""tools/models/convert/dlib_resnet.py: dlib's .dat read in pure Python, PyTorch = ONNX, ONNX = dlib itself, and the
kiosk runs it."""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch", reason="the dlib conversion needs the tools extra (torch)")

from tools.models.convert import dlib_resnet as dr

LFW_SAMPLES = [
    "images/Aaron_Peirsol/Aaron_Peirsol_0001.jpg",
    "images/Colin_Powell/Colin_Powell_0001.jpg",
    "images/Jennifer_Aniston/Jennifer_Aniston_0001.jpg",
]


@pytest.fixture(scope="module")
def net() -> dr.DlibNet:
    return dr.parse_dat(dr.locate_source().read_bytes())


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One export per session: yunet (for the pipeline) and dlib_resnet registered in a temporary models folder."""
    from tools.models.build import build

    models = tmp_path_factory.mktemp("models")
    build(models, only=["yunet"])
    assert dr.main(["--out", str(models)]) == 0
    yield models


def test_compact_integers_floats_and_bools_follow_dlib_serialize() -> None:
    r = dr.DatReader(bytes([0x00, 0x01, 0x02, 0x02, 0x80, 0x12, 0x81, 0x05]) + b"10")
    assert [r.integer(), r.integer(), r.integer(), r.integer()] == [0, 2, 0x1280, -5]
    assert r.boolean() is True and r.boolean() is False
    # 0.6 as dlib writes it: mantissa 0x99999a, exponent -24
    r = dr.DatReader(bytes([0x03, 0x9A, 0x99, 0x99, 0x81, 0x18]))
    assert r.real() == pytest.approx(0.6, abs=1e-7)
    with pytest.raises(dr.DatError, match="end of file"):
        dr.DatReader(bytes([0x02, 0x01])).integer()


def test_parser_reads_the_whole_file_into_dlibs_resnet_29(net: dr.DlibNet) -> None:
    assert net.loss == "loss_metric_2"
    assert net.loss_attrs["distance_threshold"] == pytest.approx(0.6)
    assert net.input_layer == "input_rgb_image_sized" and net.input_size == (150, 150)
    assert net.mean_rgb == pytest.approx((122.782, 117.001, 104.298), abs=1e-3)
    assert len(net.wrappers) == 130 and len(net.layers) == 108
    wrappers, kinds = dr.expected_layout()
    assert net.kinds == kinds and net.wrappers == wrappers
    cons = [layer for layer in net.layers if layer.kind == "con_4"]
    assert len(cons) == 29  # ResNet-29: 1 stem + 14 blocks x 2
    assert cons[0].shapes["filters"] == (32, 3, 7, 7)
    assert cons[0].params.size == 32 * 3 * 7 * 7 + 32
    assert cons[-1].shapes["filters"] == (256, 256, 3, 3)
    fc = net.layers[-1]
    assert fc.kind == "fc_2" and fc.shapes["weights"] == (256, 128, 1, 1) and fc.attrs["bias_mode"] == 1
    affines = [layer for layer in net.layers if layer.kind == "affine_"]
    assert all(a.shapes["gamma"] == a.shapes["beta"] for a in affines)


def test_truncated_or_padded_files_are_refused(net: dr.DlibNet) -> None:
    data = dr.locate_source().read_bytes()
    with pytest.raises(dr.DatError, match="end of file"):
        dr.parse_dat(data[:-100])
    with pytest.raises(dr.DatError, match="left over"):
        dr.parse_dat(data + b"\x00")


def test_pytorch_and_onnx_agree(net: dr.DlibNet, exported: Path) -> None:
    model = dr.build_model(net)
    x = np.random.default_rng(1).normal(0.0, 0.4, (3, 3, 150, 150)).astype(np.float32)
    assert dr.compare_torch_onnx(model, exported / dr.OUTPUT_FILE, x) <= 1e-5
    # the batch dimension is dynamic
    session = dr.onnx_session(exported / dr.OUTPUT_FILE)
    assert session.run(None, {"input": x[:1]})[0].shape == (1, 128)
    # no exporter stack traces naming this machine's paths: the same weights give the same file and sha256
    assert str(Path(dr.__file__).parent.parent).encode() not in (exported / dr.OUTPUT_FILE).read_bytes()


@pytest.fixture(scope="module")
def dlib_chips(faces_dir: Path) -> list[np.ndarray]:
    """dlib's own 150x150 chips: HOG detector, 5-point predictor, get_face_chip(…, 150, 0.25)."""
    import cv2

    dlib = pytest.importorskip("dlib", reason="dlib-bin (a test-only dependency) is needed to compare with dlib")
    predictor = dlib.shape_predictor(str(md.distribution(dr.PACKAGE).locate_file(dr.SHAPE5)))
    detector = dlib.get_frontal_face_detector()
    chips = []
    for rel in LFW_SAMPLES:
        bgr = cv2.imread(str(faces_dir / "lfw" / rel))
        assert bgr is not None, rel
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        dets = detector(rgb, 1)
        assert len(dets) >= 1, rel
        chips.append(np.asarray(dlib.get_face_chip(rgb, predictor(rgb, dets[0]), size=150, padding=0.25)))
    return chips


def test_onnx_descriptors_equal_dlibs_own_on_real_faces(
    dlib_chips: list[np.ndarray], net: dr.DlibNet, exported: Path
) -> None:
    dlib = pytest.importorskip("dlib", reason="dlib-bin (a test-only dependency) is needed to compare with dlib")
    chips = dlib_chips
    recogniser = dlib.face_recognition_model_v1(str(dr.locate_source()))
    ref = np.array([np.asarray(recogniser.compute_face_descriptor(c)) for c in chips], dtype=np.float32)
    ours = dr.onnx_session(exported / dr.OUTPUT_FILE).run(None, {"input": dr.preprocess(chips, net.mean_rgb)})[0]
    assert ours.shape == ref.shape == (len(LFW_SAMPLES), 128)
    assert float(np.abs(ours - ref).max()) <= 1e-4
    # and they are not trivially equal: different people are far apart in dlib's metric
    assert float(np.linalg.norm(ref[0] - ref[1])) > 0.6


def test_the_kiosk_loads_the_registered_model_and_embeds_a_face(
    faces_dir: Path, dlib_chips: list[np.ndarray], exported: Path
) -> None:
    from kiosk.config import parse_config
    from kiosk.imageio import read_image
    from kiosk.models.manifest import load_manifest
    from kiosk.recognition.pipeline import Pipeline

    manifest = load_manifest(exported / "manifest.yaml")
    spec = manifest.get("dlib_resnet", task="embed")
    assert spec.licence == "CC0-1.0 (public domain)" and spec.output_dim == 128 and spec.metric == "cosine"
    assert spec.provenance["source_sha256"] == dr.SOURCE_SHA256
    assert spec.thresholds["accept"] >= spec.thresholds["likely"]
    cfg: Any = parse_config(
        {"models": {"manifest": str(exported / "manifest.yaml"), "detector": "yunet", "recognizer": "dlib_resnet"}}
    )
    pipeline = Pipeline.from_config(cfg)
    assert pipeline.template.size == (150, 150)
    image = read_image(faces_dir / "lfw" / LFW_SAMPLES[1])
    results = pipeline.analyze(image, select="central")
    assert len(results) == 1 and results[0].embedding is not None
    emb = results[0].embedding
    assert emb.shape == (128,) and abs(float(np.linalg.norm(emb)) - 1.0) < 1e-5
    # the kiosk's alignment approximates dlib's chip: the same face's descriptors nearly coincide
    chip = dlib_chips[1]
    session = dr.onnx_session(exported / dr.OUTPUT_FILE)
    ref = session.run(None, {"input": dr.preprocess([chip], spec.input.mean)})[0][0]
    assert float(emb @ (ref / np.linalg.norm(ref))) > 0.95
