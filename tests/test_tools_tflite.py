"""``python -m tools tflite``: SFace ONNX -> TFLite fp32 and full int8, checked on real faces and run end to end.

One module fixture converts SFace into a temporary models folder (fp32, then int8 reusing the same onnx2tf graph):
about 1-2 minutes on two idle cores, mostly TensorFlow's converter.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from kiosk.config import parse_config
from kiosk.gallery import Gallery
from kiosk.imageio import read_image
from kiosk.models.backends import RuntimeOptions, load_runner
from kiosk.models.manifest import Manifest, load_manifest, sha256_file
from kiosk.recognition.embed import Embedder
from kiosk.recognition.match import Matcher
from kiosk.recognition.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]
FP32_ATOL = 1e-4  # raw embedding, max abs difference to ONNX
FP32_MIN_COSINE = 0.99999
INT8_MIN_COSINE = 0.98  # every face, int8 vs fp32 TFLite
INT8_MEAN_COSINE = 0.99

# Same person (enrol the first photo, verify the second) and a stranger, from the LFW public set.
ENROL = "images/Colin_Powell/Colin_Powell_0001.jpg"
SAME = "images/Colin_Powell/Colin_Powell_0002.jpg"
OTHER = "images/George_HW_Bush/George_HW_Bush_0001.jpg"


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, faces_dir: Path) -> Path:
    pytest.importorskip("tensorflow", reason="the tflite tool needs the tools extra (tensorflow)")
    pytest.importorskip("onnx2tf", reason="the tflite tool needs the tools extra (onnx2tf)")
    from tools.models.tflite import main

    models = tmp_path_factory.mktemp("models")
    src = load_manifest(ROOT / "models" / "manifest.yaml")
    shutil.copyfile(ROOT / "models" / "manifest.yaml", models / "manifest.yaml")
    for mid in ("sface", "yunet", "blazeface"):
        shutil.copyfile(src.get(mid).path, models / src.get(mid).path.name)
    common = ["--out", str(models), "--calibration", "lfw", "--check-count", "8", "--bench", "0"]
    assert main(["sface", *common]) == 0
    assert main(["sface", "--int8", "--calib-count", "64", *common]) == 0
    return models


@pytest.fixture(scope="module")
def manifest(converted: Path) -> Manifest:
    return load_manifest(converted / "manifest.yaml")


@pytest.fixture(scope="module")
def crops(manifest: Manifest, faces_dir: Path) -> list[np.ndarray]:
    """Real aligned faces (kiosk alignment) from LFW images."""
    cfg = parse_config({"models": {"manifest": str(manifest.path)}})
    pipe = Pipeline.from_config(cfg, manifest)
    paths = sorted((faces_dir / "lfw" / "images").glob("A*/*_0001.jpg"))[:24]
    out = []
    for p in paths:
        results = pipe.analyze(read_image(p))
        if results:
            out.append(results[0].aligned)
    assert len(out) >= 16
    return out


def _raw(manifest: Manifest, model_id: str, crops: list[np.ndarray]) -> np.ndarray:
    spec = manifest.get(model_id)
    runner = load_runner(spec, RuntimeOptions(intra_op_threads=2, tflite_threads=2))
    batch = Embedder(spec, runner).preprocess(crops)  # exactly the kiosk's preprocessing
    name = spec.input.name or runner.input_names[0]
    return np.concatenate(
        [np.asarray(runner.run({name: batch[i : i + 1]})[0]).reshape(1, -1) for i in range(len(batch))]
    )


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray(np.sum(a * b, axis=1))


def test_help() -> None:
    from tools.models.tflite import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0


def test_entries_describe_tflite_models(converted: Path, manifest: Manifest) -> None:
    src = manifest.get("sface")
    assert sha256_file(src.path) == src.sha256, "the conversion must not touch the source ONNX file"
    for mid in ("sface_tflite", "sface_tflite_int8"):
        spec = manifest.get(mid, task="embed")
        spec.verify()
        assert spec.format == "tflite" and spec.input.layout == "nhwc"
        assert (spec.input.size, spec.input.color, spec.input.mean, spec.input.std) == (
            src.input.size,
            src.input.color,
            src.input.mean,
            src.input.std,
        )
        assert spec.align_template == src.align_template and spec.output_dim == 128
        assert spec.thresholds == src.thresholds
        assert spec.provenance["source_model_sha256"] == src.sha256
    fp32, int8 = manifest.get("sface_tflite").path.stat().st_size, manifest.get("sface_tflite_int8").path.stat().st_size
    assert int8 < fp32 / 3.5


def test_fp32_agrees_with_onnx(manifest: Manifest, crops: list[np.ndarray]) -> None:
    ref, got = _raw(manifest, "sface", crops), _raw(manifest, "sface_tflite", crops)
    assert np.abs(got - ref).max() <= FP32_ATOL
    assert _cos(got, ref).min() >= FP32_MIN_COSINE


def test_int8_is_int8_and_close_to_fp32(manifest: Manifest, crops: list[np.ndarray]) -> None:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(manifest.get("sface_tflite_int8").path))
    dtypes = {str(d["dtype"].__name__) for d in interp.get_tensor_details()}
    assert "int8" in dtypes
    assert interp.get_input_details()[0]["dtype"] == np.float32  # the Embedder feeds float32 unchanged
    c = _cos(_raw(manifest, "sface_tflite_int8", crops), _raw(manifest, "sface_tflite", crops))
    assert c.min() >= INT8_MIN_COSINE
    assert c.mean() >= INT8_MEAN_COSINE


def test_batched_embedding_matches_single(manifest: Manifest, crops: list[np.ndarray]) -> None:
    spec = manifest.get("sface_tflite")
    emb = Embedder(spec, load_runner(spec))
    batched = emb.embed(crops[:4])
    single = np.concatenate([emb.embed([c]) for c in crops[:4]])
    assert np.abs(batched - single).max() < 1e-5


@pytest.mark.parametrize("recognizer", ["sface_tflite", "sface_tflite_int8"])
def test_end_to_end_on_tflite(recognizer: str, manifest: Manifest, faces_dir: Path, tmp_path: Path) -> None:
    from kiosk.enroll import enroll

    cfg = parse_config({"models": {"manifest": str(manifest.path), "detector": "blazeface", "recognizer": recognizer}})
    pipe = Pipeline.from_config(cfg, manifest)
    assert pipe.detector.spec.format == pipe.embedder.spec.format == "tflite"  # both on the tflite backend
    lfw = faces_dir / "lfw"
    with Gallery(tmp_path / "gallery.db") as gallery:
        report = enroll(pipe, gallery, "colin", [lfw / ENROL])
        assert report.stored == 1, report
        spec = pipe.embedder.spec
        m = gallery.matrix(spec.id, spec.sha256)
        matcher = Matcher(m.embeddings, m.person_ids, m.names, threshold=pipe.thresholds.accept, margin=0.0)
        same = pipe.analyze(read_image(lfw / SAME))[0].embedding
        other = pipe.analyze(read_image(lfw / OTHER))[0].embedding
        assert same is not None and other is not None
        hit, miss = matcher.match(same), matcher.match(other)
    assert hit.accepted and hit.name == "colin", hit
    assert not miss.accepted and miss.score is not None and miss.score < pipe.thresholds.likely, miss


def test_refuses_a_non_onnx_model(converted: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tools.models.tflite import main

    assert main(["blazeface", "--out", str(converted)]) == 2
    assert "only ONNX recognisers" in capsys.readouterr().err
