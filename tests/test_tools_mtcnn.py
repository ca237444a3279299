"""``python -m tools mtcnn``: facenet-pytorch's P/R/O-nets exported to ONNX, equal to torch, registered as ``mtcnn``."""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import io
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the model tools need the tools extra (torch)")

from kiosk.errors import ModelIntegrityError  # noqa: E402
from kiosk.models.backends import load_runner  # noqa: E402
from kiosk.models.manifest import ModelSpec, load_manifest  # noqa: E402
from tools.models.convert import mtcnn  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One export for the module (~30 s): the models folder and what the tool printed."""
    out = tmp_path_factory.mktemp("mtcnn_models")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert mtcnn.main(["--out", str(out)]) == 0
    return out, buf.getvalue()


@pytest.fixture(scope="module")
def spec(exported: tuple[Path, str]) -> ModelSpec:
    return load_manifest(exported[0] / "manifest.yaml").get("mtcnn", task="detect")


def test_help_names_the_source(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        mtcnn.main(["--help"])
    assert exc.value.code == 0
    assert "facenet-pytorch" in capsys.readouterr().out


def test_weights_load_strict_from_the_installed_wheel() -> None:
    for name, cls in mtcnn.NETS.items():
        state = torch.load(mtcnn.source_path(name), map_location="cpu", weights_only=True)
        assert set(state) == set(cls().state_dict()), name  # same layer names and nothing left over
        net = mtcnn.load_net(name)
        assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())


def test_export_prints_what_it_did_and_registers_three_files(exported: tuple[Path, str], spec: ModelSpec) -> None:
    out, printed = exported
    for name in ("pnet", "rnet", "onet"):
        assert f"mtcnn: {name}:" in printed and "max |torch - onnxruntime|" in printed
    assert "registered mtcnn" in printed
    for onnx_file in out.glob("*.onnx"):  # no exporter stack traces naming this machine's paths: reproducible files
        assert str(Path(mtcnn.__file__).parent.parent).encode() not in onnx_file.read_bytes(), onnx_file.name
    assert spec.family == "mtcnn" and spec.format == "onnx" and spec.landmarks == "5pt" and spec.licence == "MIT"
    assert spec.path.name == "mtcnn_pnet.onnx"
    assert {k: p.path.name for k, p in spec.parts.items()} == {"rnet": "mtcnn_rnet.onnx", "onet": "mtcnn_onet.onnx"}
    spec.verify()  # main file and both parts hash-checked
    assert spec.thresholds == {
        "pnet": 0.6,
        "rnet": 0.7,
        "score": 0.7,
        "nms_iou": 0.7,
        "min_face_size": 20.0,
        "factor": 0.709,
    }
    prov = spec.provenance
    assert prov["package"] == "facenet-pytorch" and prov["version"] == md.version("facenet-pytorch")
    assert prov["source_file"] == "facenet_pytorch/data/pnet.pt" and len(prov["source_sha256"]) == 64
    assert {k: v["source_file"] for k, v in prov["parts"].items()} == {
        "rnet": "facenet_pytorch/data/rnet.pt",
        "onet": "facenet_pytorch/data/onet.pt",
    }


def test_input_convention_is_facenet_pytorchs(spec: ModelSpec) -> None:
    # facenet-pytorch feeds RGB NCHW as (x - 127.5) * 0.0078125; the manifest's mean/std must give the same numbers.
    x = np.arange(256, dtype=np.float32)
    mean, std = np.float32(spec.input.mean[0]), np.float32(spec.input.std[0])
    assert np.array_equal((x - mean) / std, (x - np.float32(127.5)) * np.float32(0.0078125))
    assert spec.input.color == "rgb" and spec.input.layout == "nchw"


def test_onnx_equals_torch_on_real_sizes(spec: ModelSpec) -> None:
    """Each exported file through the kiosk's own runner vs the torch net: <= 1e-5, P-net at several H, W."""
    rng = np.random.default_rng(1)
    specs = {"pnet": spec, **spec.parts}
    shapes = {"pnet": [(1, 3, 12, 12), (1, 3, 151, 151), (1, 3, 289, 385)], "rnet": [(37, 3, 24, 24)]}
    shapes["onet"] = [(9, 3, 48, 48)]
    for name, part in specs.items():
        runner = load_runner(part)
        net = mtcnn.load_net(name)
        assert runner.output_names == mtcnn.OUTPUT_NAMES[name]
        for shape in shapes[name]:
            x = (rng.integers(0, 256, size=shape).astype(np.float32) - 127.5) / 128.0
            with torch.no_grad():
                ref = [t.numpy() for t in net(torch.from_numpy(x))]
            got = runner.run({runner.input_names[0]: x})
            for r, g in zip(ref, got, strict=True):
                assert r.shape == g.shape
                assert np.abs(r - g).max() <= mtcnn.TOLERANCE, (name, shape)


def test_tampered_part_is_refused(exported: tuple[Path, str], spec: ModelSpec, tmp_path: Path) -> None:
    copy = tmp_path / "models"
    shutil.copytree(exported[0], copy)
    with (copy / "mtcnn_onet.onnx").open("ab") as f:
        f.write(b"\0")
    tampered = load_manifest(copy / "manifest.yaml").get("mtcnn")
    with pytest.raises(ModelIntegrityError, match="mtcnn"):
        tampered.verify()
