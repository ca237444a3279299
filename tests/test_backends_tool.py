"""``python -m tools backends`` on a handful of crops and frames: the JSON's shape, absent candidates, agreement of
the reference with itself, and that the pick refuses a fast candidate whose embeddings disagree. Not the figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from kiosk.models.manifest import load_manifest
from kiosk.types import FloatArray, Image
from tools.measure import backends

TOP_KEYS = {
    "candidates",
    "absent",
    "recognizer",
    "detector",
    "tflite_delegation",
    "pick",
    "criteria",
    "inputs",
    "method",
    "runtime_options",
    "machine",
    "versions",
}
SMALL = ["--crops", "4", "--frames", "6", "--runs", "2", "--threads", "1", "--batches", "1,2", "--quiet"]


@pytest.fixture(scope="module")
def report(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("backends") / "backends.json"
    assert backends.main(["--faces", str(faces_dir), "--json", str(out), *SMALL]) == 0
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def test_json_shape(report: dict[str, Any]) -> None:
    assert report.keys() >= TOP_KEYS
    assert {"cpu", "flags", "arch", "loadavg_start", "loadavg_end"} <= report["machine"].keys()
    names = {c["name"] for c in report["candidates"]} | {a["name"] for a in report["absent"]}
    assert {"ort-fp32", "ort-int8", "tflite-fp32", "tflite-int8", "opencv-fp32", "yunet/ort", "yunet/opencv"} <= names
    rec = report["recognizer"]["latency"]["ort-fp32"]["1"]
    assert set(rec) == {"1", "2"}
    assert rec["1"]["per_face_ms"]["n"] == 2 and rec["1"]["floor_ms"] > 0 and rec["1"]["x_floor"] > 0
    assert report["detector"]["latency"]["yunet/ort"]["1"]["ms"]["n"] == 2
    tasks = {(p["task"], p["threads"]) for p in report["pick"]}
    assert tasks == {("recognizer", 1), ("detector", 1)}
    for p in report["pick"]:
        assert p["pick"] is not None and p["median_ms"] > 0


def test_reference_agrees_with_itself(report: dict[str, Any]) -> None:
    rec = report["recognizer"]["agreement"]["ort-fp32"]
    assert rec["min"] == pytest.approx(1.0, abs=1e-5) and rec["mean"] == pytest.approx(1.0, abs=1e-5)
    det = report["detector"]["agreement"]["yunet/ort"]
    assert det["mean_iou"] == 1.0 and det["mean_landmark_px"] == 0.0
    assert det["frames_only_reference_finds"] == det["frames_only_this_finds"] == 0


def test_different_detector_model_is_never_picked(report: dict[str, Any]) -> None:
    different = {c["name"] for c in report["candidates"] if c["task"] == "detector" and not c["same_model"]}
    for p in report["pick"]:
        if p["task"] == "detector":
            assert p["pick"] not in different
            assert different <= {r["candidate"] for r in p["rejected"]}


class _Noise:
    """A recogniser that answers at once with random unit vectors: fastest of all, agreeing with nothing."""

    def __init__(self) -> None:
        self._rng = np.random.default_rng(0)

    def embed(self, crops: list[Image]) -> FloatArray:
        v = self._rng.normal(size=(len(crops), 128)).astype(np.float32)
        out: FloatArray = v / np.linalg.norm(v, axis=1, keepdims=True)
        return out


def _core_manifest(tmp: Path) -> Path:
    """A copy of the manifest with only sface and yunet (a fresh checkout), files pointing at the real ones."""
    real = load_manifest()
    raw = yaml.safe_load(real.path.read_text(encoding="utf-8"))
    keep = {k: raw["models"][k] for k in ("sface", "yunet")}
    for k, entry in keep.items():
        entry["file"] = str(real.models[k].path)
    path = tmp / "manifest.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "models": keep}), encoding="utf-8")
    return path


def test_absent_candidates_and_failed_agreement(faces_dir: Path, tmp_path: Path) -> None:
    noise = backends.Candidate("noise", "recognizer", "sface", "fake", lambda threads: _Noise(), "random vectors")
    opts = backends.Options(
        faces=faces_dir,
        manifest=_core_manifest(tmp_path),
        crops=4,
        frames=4,
        runs=2,
        threads=(1,),
        batches=(1,),
        only="recognizer",
        quiet=True,
    )
    r = backends.measure(opts, extra_recognizers=[noise])
    absent = {a["name"]: a["reason"] for a in r["absent"]}
    assert set(absent) == {"ort-int8", "tflite-fp32", "tflite-int8"}
    assert all("make models-all" in reason for reason in absent.values())
    assert {c["name"] for c in r["candidates"]} == {"ort-fp32", "opencv-fp32", "noise"}
    assert r["recognizer"]["agreement"]["noise"]["min"] < 0.5
    (p,) = r["pick"]
    assert p["task"] == "recognizer" and p["pick"] in {"ort-fp32", "opencv-fp32"}
    rejected = {x["candidate"]: x["reason"] for x in p["rejected"]}
    assert "cosine min" in rejected["noise"]
    assert all(rejected[name].startswith("absent:") for name in absent)
    assert "noise" not in {x["candidate"] for x in p["passing_by_speed"]}


def test_no_faces_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert backends.main(["--faces", str(tmp_path), "--quiet"]) == 2
    assert "lfw/labels.csv" in capsys.readouterr().err
