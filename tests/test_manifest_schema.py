"""Manifest features the model tools rely on: inline alignment templates, per-image normalisation, multi-file models,
and ``tools.models.registry.register``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from kiosk.errors import ModelError, ModelIntegrityError
from kiosk.models.manifest import default_models_dir, load_manifest
from kiosk.recognition.align import get_template
from kiosk.recognition.embed import Embedder
from tools.models.registry import read_manifest, register

TEMPLATE = {"size": [150, 150], "points": [[50, 60], [100, 60], [75, 85], [55, 110], [95, 110]]}


def _models(tmp_path: Path) -> Path:
    """A models folder holding only the small YuNet file and its manifest entry."""
    src = default_models_dir()
    entry = load_manifest().get("yunet")
    out = tmp_path / "models"
    out.mkdir()
    shutil.copyfile(entry.path, out / entry.path.name)
    data = yaml.safe_load((src / "manifest.yaml").read_text())
    (out / "manifest.yaml").write_text(yaml.safe_dump({"version": 1, "models": {"yunet": data["models"]["yunet"]}}))
    return out


def _entry(**extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "task": "embed",
        "format": "onnx",
        "family": "test",
        "file": "yunet_2023mar.onnx",
        "input": {"size": [150, 150], "color": "rgb", "layout": "nchw"},
        "output_dim": 4,
        "metric": "cosine",
        "thresholds": {"accept": 0.5},
    }
    entry.update(extra)
    return entry


def test_inline_alignment_template_round_trips(tmp_path: Path) -> None:
    models = _models(tmp_path)
    register(models, "inline", _entry(align_template=TEMPLATE))
    spec = load_manifest(models / "manifest.yaml").get("inline")
    template = get_template(spec.align_template)
    assert template.size == (150, 150)
    assert template.points.shape == (5, 2)
    assert template.points[2].tolist() == [75.0, 85.0]
    assert get_template("arcface_112").size == (112, 112)


@pytest.mark.parametrize(
    "bad",
    [
        {"size": [150, 150], "points": [[1, 2]] * 4},
        {"size": [150], "points": TEMPLATE["points"]},
        {"points": TEMPLATE["points"]},
        {"size": [4, 4], "points": TEMPLATE["points"]},
        {"size": [150, 150], "points": [[1, "x"]] * 5},
    ],
)
def test_malformed_inline_template_is_a_model_error(bad: dict[str, Any]) -> None:
    with pytest.raises(ModelError, match="inline alignment template"):
        get_template(bad)


def test_unknown_template_name_lists_the_known_ones() -> None:
    with pytest.raises(ModelError, match="known: arcface_112"):
        get_template("dlib_150_typo")


class _FakeRunner:
    def __init__(self) -> None:
        self.input_names = ["x"]
        self.output_names = ["y"]

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [inputs["x"].reshape(len(inputs["x"]), -1)[:, :4]]


def test_per_image_normalisation_is_facenet_prewhitening(tmp_path: Path) -> None:
    models = _models(tmp_path)
    register(models, "pw", _entry(input={"size": [8, 8], "color": "rgb", "layout": "nchw", "normalize": "per_image"}))
    spec = load_manifest(models / "manifest.yaml").get("pw")
    assert spec.input.normalize == "per_image"
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), np.full((8, 8, 3), 77, dtype=np.uint8)]
    batch = Embedder(spec, _FakeRunner()).preprocess(crops)
    assert batch.shape == (2, 3, 8, 8)
    assert abs(float(batch[0].mean())) < 1e-5 and abs(float(batch[0].std()) - 1.0) < 1e-4
    # A flat crop has std 0: the floor 1/sqrt(n) keeps it finite (all zeros), as FaceNet's prewhiten does.
    assert np.all(batch[1] == 0.0)


def test_unknown_normalisation_is_refused(tmp_path: Path) -> None:
    models = _models(tmp_path)
    data = read_manifest(models)
    data["models"]["bad"] = {**_entry(input={"size": [8, 8], "normalize": "zscore"}), "sha256": "0" * 64}
    (models / "manifest.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ModelError, match=r"models\.bad\.input\.normalize must be one of"):
        load_manifest(models / "manifest.yaml")


def test_parts_are_parsed_and_each_is_hash_checked(tmp_path: Path) -> None:
    models = _models(tmp_path)
    shutil.copyfile(models / "yunet_2023mar.onnx", models / "second.onnx")
    entry = {**_entry(task="detect", family="test", input={"size": None}), "parts": {"second": {"file": "second.onnx"}}}
    register(models, "multi", entry)
    spec = load_manifest(models / "manifest.yaml").get("multi")
    assert list(spec.parts) == ["second"]
    part = spec.part("second")
    assert part.id == "multi.second" and part.path.name == "second.onnx" and part.task == "detect"
    spec.verify()
    with pytest.raises(ModelError, match="has no part 'third'"):
        spec.part("third")
    (models / "second.onnx").write_bytes(b"tampered")
    with pytest.raises(ModelIntegrityError, match=r"model 'multi\.second'"):
        spec.verify()


def test_a_part_without_a_hash_is_refused(tmp_path: Path) -> None:
    models = _models(tmp_path)
    data = read_manifest(models)
    data["models"]["multi"] = {**_entry(), "sha256": "0" * 64, "parts": {"p": {"file": "x.onnx"}}}
    (models / "manifest.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ModelError, match=r"models\.multi\.parts\.p\.sha256 is missing"):
        load_manifest(models / "manifest.yaml")


def test_register_keeps_other_entries_and_refuses_a_missing_file(tmp_path: Path) -> None:
    models = _models(tmp_path)
    register(models, "one", _entry())
    register(models, "two", _entry())
    assert set(read_manifest(models)["models"]) == {"yunet", "one", "two"}
    with pytest.raises(FileNotFoundError):
        register(models, "three", _entry(file="absent.onnx"))
    assert "three" not in read_manifest(models)["models"]
