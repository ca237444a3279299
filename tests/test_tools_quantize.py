"""``python -m tools quantize``: int8 SFace calibrated on a few real faces, loaded by the kiosk, and the gate.

Everything is written under tmp_path: a models folder holding the real YuNet and SFace files (linked) and a manifest
with just those two, an embedding cache, and a small pairs CSV built from LFW (32 genuine pairs and every
cross-identity pair of their images, so that TAR at FAR 1e-3 is defined: it needs 1,000 impostor pairs).
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiosk.config import parse_config
from kiosk.imageio import read_image
from kiosk.models.manifest import load_manifest
from kiosk.recognition.pipeline import Pipeline
from tools import ROOT
from tools.models.quantize import main
from tools.models.registry import read_manifest, write_manifest

pytest.importorskip("onnxruntime.quantization")
pytest.importorskip("sympy", reason="onnxruntime's quantisation pre-processing needs sympy (the tools extra)")


@dataclass(frozen=True)
class Setup:
    models: Path
    pairs: Path
    root: Path
    images: list[str]
    common: list[str]


@pytest.fixture(scope="module")
def setup(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    models = tmp_path_factory.mktemp("models")
    entries = {k: v for k, v in read_manifest(ROOT / "models")["models"].items() if k in ("yunet", "sface")}
    for entry in entries.values():
        (models / entry["file"]).symlink_to(ROOT / "models" / entry["file"])
    write_manifest(models, {"version": 1, "models": entries})

    lfw = faces_dir / "lfw"
    with (lfw / "pairs.csv").open(encoding="utf-8") as f:
        genuine = [(r["path1"], r["path2"]) for r in csv.DictReader(f) if r["same"] == "1"][:32]
    images = sorted({p for pair in genuine for p in pair})
    impostor = [(a, b) for a, b in itertools.combinations(images, 2) if a.split("/")[1] != b.split("/")[1]]
    assert len(impostor) >= 1000
    pairs = tmp_path_factory.mktemp("pairs") / "pairs_small.csv"
    with pairs.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path1", "path2", "same"])
        w.writerows([(a, b, 1) for a, b in genuine] + [(a, b, 0) for a, b in impostor])

    common = ["--out", str(models), "--pairs", str(pairs), "--root", str(lfw), "--calib-count", "16"]
    common += ["--latency-runs", "5"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KIOSK_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("KIOSK_TEST_DATA", str(faces_dir))
        yield Setup(models, pairs, lfw, images, common)


@pytest.fixture(scope="module")
def quantized(setup: Setup, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("out") / "quantize.json"
    # --max-drop 100: 32 genuine pairs are too few for a 0.5-point bound; this run tests the mechanics.
    rc = main(["sface", *setup.common, "--max-drop", "100", "--json", str(out)])
    assert rc == 0
    report: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return report


def test_int8_model_is_registered_and_loads_in_the_kiosk(setup: Setup, quantized: dict[str, Any]) -> None:
    manifest = load_manifest(setup.models / "manifest.yaml")
    spec = manifest.get("sface_int8", task="embed")
    spec.verify()
    fp32 = manifest.get("sface")
    assert spec.path.name == "sface_int8.onnx" and spec.path.stat().st_size < fp32.path.stat().st_size / 3
    assert (spec.input, spec.align_template, spec.output_dim, spec.metric) == (
        fp32.input,
        fp32.align_template,
        fp32.output_dim,
        fp32.metric,
    )
    prov = spec.provenance
    assert prov["source_model"] == "sface" and prov["source_sha256"] == fp32.sha256
    assert prov["calibration"]["count"] == 16 and len(prov["calibration"]["files_sha256"]) == 64
    assert "inherited" in prov["thresholds"] and spec.thresholds == fp32.thresholds
    assert str(setup.root) not in json.dumps(prov)  # no paths of the user's data
    assert quantized["registered"] and quantized["gate"]["passed"]
    assert quantized["calibration"]["count"] == 16
    assert quantized["int8"]["latency_ms"] > 0 and quantized["int8"]["size_mb"] < quantized["fp32"]["size_mb"] / 3

    # the kiosk runs it through the manifest, and its embeddings agree with fp32 on real faces
    def pipeline(recognizer: str) -> Pipeline:
        cfg = parse_config({"models": {"manifest": str(setup.models / "manifest.yaml"), "recognizer": recognizer}})
        return Pipeline.from_config(cfg)

    p32, p8 = pipeline("sface"), pipeline("sface_int8")
    for rel in setup.images[:6]:
        image = read_image(setup.root / rel)
        faces = p32.analyze(image, select="central")
        assert faces and faces[0].embedding is not None
        e8 = p8.embedder.embed([faces[0].aligned])[0]
        assert float(np.dot(faces[0].embedding, e8)) > 0.95
    assert quantized["embedding_cosine"]["n"] == len(setup.images)
    assert quantized["embedding_cosine"]["min"] > 0.95


def test_gate_refuses_and_registers_nothing(
    setup: Setup, quantized: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (setup.models / "manifest.yaml").read_text(encoding="utf-8")
    out = tmp_path / "refused.json"
    args = [*setup.common, "--latency-runs", "1"]  # same model as `quantized` (cached embeddings): the gate is tested
    rc = main(["sface", *args, "--id", "sface_refused", "--max-drop", "-100", "--json", str(out)])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused" in err[0] and "(fp32)" in err[0] and "(int8)" in err[0]
    assert (setup.models / "manifest.yaml").read_text(encoding="utf-8") == before
    assert not (setup.models / "sface_refused.onnx").exists()
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["registered"] is False and report["gate"]["passed"] is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuchmodel"], "not in"),
        (["yunet"], "quantises recognisers"),
        (["sface", "--calibration", "/nonexistent/calibration"], "does not exist"),
        (["sface", "--exclude", "no_such_node"], "no node named no_such_node"),
        (["sface", "--pairs", "/nonexistent/pairs.csv"], "pairs file"),
    ],
)
def test_bad_input_is_a_one_line_error(
    setup: Setup, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*args, "--out", str(setup.models), "--id", "sface_bad"]
    if "--pairs" not in args:
        argv += ["--pairs", str(setup.pairs), "--root", str(setup.root)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("quantize: ") and message in err[0]
    assert "sface_bad" not in read_manifest(setup.models)["models"]


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "--max-drop" in capsys.readouterr().out
