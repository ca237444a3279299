"""``python -m tools ort-options``: every session variant timed against the kiosk's baseline, on the kiosk's inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tools.measure import ort_options


@pytest.mark.slow
def test_report_has_every_variant_against_the_baseline(tmp_path: Path, faces_dir: Path) -> None:
    out = tmp_path / "ort.json"
    rc = ort_options.main(
        ["--models", "sface,yunet", "--rounds", "2", "--gap-ms", "0", "--faces", str(faces_dir), "--json", str(out)]
    )
    assert rc == 0
    r = json.loads(out.read_text())
    names = {v.name for v in ort_options.variants(2)}
    for model_id in ("sface", "yunet"):
        body = r["models"][model_id]
        assert set(body["variants"]) == names
        assert body["variants"]["baseline"]["vs_baseline"] == 1.0
        assert body["input"].startswith("LFW face")  # the kiosk's own preprocessing of a real face, not noise
        for row in body["variants"].values():
            assert row["n"] == 2 and 0 < row["median"] <= row["p95"]
    assert r["threads"] == 2 and r["machine"]["cores"] >= 1 and "onnxruntime" in r["versions"]


@pytest.mark.parametrize("name", [v.name for v in ort_options.variants(2)])
def test_each_variant_computes_the_same_embedding(name: str, faces_dir: Path) -> None:
    """A session option may change speed, never the result (io_binding: the bound output buffer holds it)."""
    import onnxruntime as ort

    from kiosk.config import load_config
    from kiosk.models.manifest import load_manifest

    spec = load_manifest(load_config(None).models.manifest).get("sface")
    feed, _ = ort_options.model_inputs(spec, faces_dir)
    reference = ort.InferenceSession(str(spec.path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    variant = next(v for v in ort_options.variants(2) if v.name == name)
    result = ort_options.runner(spec.path, variant, 2, feed)()
    if variant.io_binding:
        assert result is None
        result = ort_options.last_outputs(spec.path, variant, 2, feed)[0]
    else:
        result = result[0]
    np.testing.assert_allclose(result, reference, rtol=1e-3, atol=1e-3)


def test_a_tflite_model_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert ort_options.main(["--models", "blazeface", "--rounds", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "ort-options: model 'blazeface' is tflite, not onnx"
