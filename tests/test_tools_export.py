"""``tools export``: arcface_torch backbones load strictly, export to ONNX that matches PyTorch, and run in the kiosk.

No pretrained weights exist here, so every checkpoint is randomly initialised (seeded), with batch-norm statistics
calibrated on a batch so activations stay at a trained network's scale, and saved to tmp_path like a user's file.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch", reason="the tools extra (torch) is not installed")
pytest.importorskip("onnxscript", reason="the tools extra (onnxscript) is not installed")

from torch import nn  # noqa: E402

from tools.models.arch import build  # noqa: E402
from tools.models.export import DEFAULT_LICENCE, PROVISIONAL, main, normalise, parser  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4
# Parameter counts of InsightFace arcface_torch's r18/r34/r50/r100 and mbf (num_features 512).
PARAMS = {
    "iresnet18": 24_025_600,
    "iresnet34": 34_139_328,
    "iresnet50": 43_590_848,
    "iresnet100": 65_156_160,
    "mobilefacenet": 2_059_520,
}
THRESHOLDS = ["--threshold-accept", "0.4", "--threshold-likely", "0.3"]


def random_backbone(arch: str, seed: int = 0) -> nn.Module:
    """Seeded random weights; BN affine/PReLU randomised and BN running stats set from one calibration batch."""
    torch.manual_seed(seed)
    model = build(arch)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.momentum = None  # cumulative average: running stats = the calibration batch's
            elif isinstance(m, nn.PReLU):
                m.weight.uniform_(0.0, 0.4)
        model.train()
        model(torch.rand(8, 3, 112, 112) * 2 - 1)
    return model.eval()


def save_checkpoint(model: nn.Module, path: Path, wrapped: bool = False) -> Path:
    state = model.state_dict()
    if wrapped:  # a training checkpoint of a DataParallel model
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    else:  # arcface_torch's backbone.pth
        torch.save(state, path)
    return path


def lfw_images(faces_dir: Path, n: int = 4) -> list[Path]:
    rows = (faces_dir / "lfw" / "pairs.csv").read_text(encoding="utf-8").splitlines()[1:3]
    paths = [faces_dir / "lfw" / p for row in rows for p in row.split(",")[1:3]]
    return paths[:n]


def onnx_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"input": x})[0])


def torch_outputs(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out: np.ndarray = model(torch.from_numpy(x)).numpy()
    return out


def models_dir_with_detector(dst: Path) -> Path:
    """A models folder holding only the shipped detector (yunet), copied from models/manifest.yaml."""
    shipped = yaml.safe_load((ROOT / "models" / "manifest.yaml").read_text(encoding="utf-8"))
    entry = shipped["models"]["yunet"]
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "models" / entry["file"], dst / entry["file"])
    (dst / "manifest.yaml").write_text(yaml.safe_dump({"version": 1, "models": {"yunet": entry}}), encoding="utf-8")
    return dst


def export(arch: str, out: Path, faces: list[Path], ckpt: Path, *extra: str) -> int:
    argv = ["--arch", arch, "--checkpoint", str(ckpt), "--out", str(out), "--bench", "0", *THRESHOLDS]
    argv += ["--verify-images", *map(str, faces), *extra]
    return main(argv)


@pytest.fixture(scope="module")
def mbf_export(tmp_path_factory: pytest.TempPathFactory, faces_dir: Path) -> Iterator[dict[str, Any]]:
    """mobilefacenet exported once (default exporter) into a models folder that also holds the yunet detector."""
    tmp = tmp_path_factory.mktemp("mbf")
    out = models_dir_with_detector(tmp / "models")
    model = random_backbone("mobilefacenet")
    ckpt = save_checkpoint(model, tmp / "checkpoint_gpu_0.pt", wrapped=True)
    assert export("mobilefacenet", out, lfw_images(faces_dir), ckpt) == 0
    yield {"out": out, "model": model, "ckpt": ckpt}


# ------------------------------------------------------------------------------------------------ architectures


@pytest.mark.parametrize("arch", list(PARAMS))
def test_architectures_have_arcface_torch_parameter_counts_and_keys(arch: str) -> None:
    model = build(arch)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[arch]
    keys = set(model.state_dict())
    if arch.startswith("iresnet"):
        expected = {"conv1.weight", "prelu.weight", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_var"}
        expected |= {"layer4.1.bn3.num_batches_tracked", "bn2.weight", "fc.weight", "fc.bias", "features.running_mean"}
        assert expected <= keys
        assert "layer1.1.downsample.0.weight" not in keys
    else:
        assert {
            "layers.0.layers.0.weight",
            "layers.1.layers.2.weight",  # grouped 3x3 ConvBlock (blocks[0] == 1)
            "layers.2.layers.0.layers.0.weight",  # DepthWise → ConvBlock → conv
            "layers.5.layers.5.layers.2.layers.1.running_var",  # 6th residual unit of stage 3, LinearBlock's BN
            "conv_sep.layers.2.weight",
            "features.layers.0.layers.0.weight",  # GDC 7x7 depthwise
            "features.layers.2.weight",  # Linear, no bias
            "features.layers.3.running_var",
        } <= keys
        assert "features.layers.2.bias" not in keys


# ------------------------------------------------------------------------------------------------ export


def test_mobilefacenet_export_matches_pytorch_and_is_registered(mbf_export: dict[str, Any], faces_dir: Path) -> None:
    out: Path = mbf_export["out"]
    manifest = yaml.safe_load((out / "manifest.yaml").read_text(encoding="utf-8"))
    assert set(manifest["models"]) == {"yunet", "mobilefacenet"}, "other entries are kept"
    entry = manifest["models"]["mobilefacenet"]
    assert entry["task"] == "embed" and entry["format"] == "onnx" and entry["family"] == "arcface"
    assert entry["input"] == {
        "name": "input",
        "size": [112, 112],
        "color": "rgb",
        "layout": "nchw",
        "mean": [127.5] * 3,
        "std": [127.5] * 3,
    }
    assert entry["align_template"] == "arcface_112" and entry["output_dim"] == 512 and entry["metric"] == "cosine"
    assert entry["thresholds"] == {"accept": 0.4, "likely": 0.3}
    assert entry["licence"] == DEFAULT_LICENCE
    prov = entry["provenance"]
    assert prov["source_file"] == "checkpoint_gpu_0.pt" and prov["arch"] == "mobilefacenet"
    assert prov["tools"]["torch"] == torch.__version__.split("+")[0] or prov["tools"]["torch"] == torch.__version__
    assert max(prov["max_abs_diff"].values()) <= TOL and "faces" in prov["max_abs_diff"]
    # Independently of the tool's own check: random inputs at two batch sizes.
    x = np.random.default_rng(1).uniform(-1, 1, (3, 3, 112, 112)).astype(np.float32)
    for batch in (x, x[:1]):
        assert (
            np.abs(onnx_outputs(out / "mobilefacenet.onnx", batch) - torch_outputs(mbf_export["model"], batch)).max()
            <= TOL
        )


@pytest.mark.parametrize(
    ("arch", "exporter"),
    [
        ("iresnet18", "dynamo"),
        ("iresnet50", "legacy"),
        pytest.param("iresnet34", "legacy", marks=pytest.mark.slow),
        pytest.param("iresnet100", "dynamo", marks=pytest.mark.slow),
    ],
)
def test_iresnet_export_matches_pytorch(arch: str, exporter: str, tmp_path: Path, faces_dir: Path) -> None:
    model = random_backbone(arch)
    ckpt = save_checkpoint(model, tmp_path / "backbone.pth")
    assert export(arch, tmp_path / "models", lfw_images(faces_dir, 2), ckpt, "--exporter", exporter) == 0
    onnx_path = tmp_path / "models" / f"{arch}.onnx"
    x = np.random.default_rng(2).uniform(-1, 1, (2, 3, 112, 112)).astype(np.float32)
    assert np.abs(onnx_outputs(onnx_path, x) - torch_outputs(model, x)).max() <= TOL
    entry = yaml.safe_load((tmp_path / "models" / "manifest.yaml").read_text(encoding="utf-8"))["models"][arch]
    assert entry["provenance"]["parameters"] == PARAMS[arch] and entry["output_dim"] == 512


def test_the_kiosk_runs_the_exported_model_end_to_end(mbf_export: dict[str, Any], faces_dir: Path) -> None:
    from kiosk.config import parse_config
    from kiosk.recognition.pipeline import Pipeline

    out: Path = mbf_export["out"]
    cfg = parse_config({"models": {"manifest": str(out / "manifest.yaml"), "recognizer": "mobilefacenet"}})
    pipe = Pipeline.from_config(cfg)
    assert pipe.models["recognizer"]["id"] == "mobilefacenet" and pipe.thresholds.accept == 0.4
    from kiosk.imageio import read_image

    image = read_image(lfw_images(faces_dir, 1)[0])
    results = pipe.analyze(image)
    assert len(results) == 1 and results[0].embedding is not None
    emb = results[0].embedding
    assert emb.shape == (512,) and emb.dtype == np.float32
    assert abs(float(np.linalg.norm(emb)) - 1.0) < 1e-5
    # The kiosk's preprocessing (BGR → RGB, (x − 127.5) / 127.5, NCHW) is the one the network was exported for.
    ref = torch_outputs(mbf_export["model"], normalise([results[0].aligned]))[0]
    assert float(emb @ (ref / np.linalg.norm(ref))) > 0.99999


# ------------------------------------------------------------------------------------------------ refusals


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    return rc, err


def test_bad_checkpoints_fail_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "models"
    base = ["--out", str(out), "--bench", "0", *THRESHOLDS]

    rc, err = _run(["--arch", "iresnet18", "--checkpoint", str(tmp_path / "nope.pth"), *base], capsys)
    assert rc == 1 and err == f"export: error: checkpoint {tmp_path / 'nope.pth'} not found"

    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    rc, err = _run(["--arch", "iresnet18", "--checkpoint", str(text), *base], capsys)
    assert rc == 1 and "is not a PyTorch checkpoint" in err and "\n" not in err

    pickled = tmp_path / "object.pth"
    torch.save({"net": nn.PReLU()}, pickled)  # a pickled module, refused by weights_only=True
    rc, err = _run(["--arch", "iresnet18", "--checkpoint", str(pickled), *base], capsys)
    assert rc == 1 and "is not a PyTorch checkpoint" in err and "\n" not in err

    notdict = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), notdict)
    rc, err = _run(["--arch", "iresnet18", "--checkpoint", str(notdict), *base], capsys)
    assert rc == 1 and "not a state dict" in err

    mbf = save_checkpoint(build("mobilefacenet"), tmp_path / "mbf.pth")
    rc, err = _run(["--arch", "iresnet18", "--checkpoint", str(mbf), *base], capsys)
    assert rc == 1 and "missing keys: conv1.weight, bn1.weight, bn1.bias, …" in err
    assert "unexpected: layers.0.layers.0.weight" in err and "is --arch iresnet18" in err and "\n" not in err

    state = build("iresnet18").state_dict()
    r34 = tmp_path / "r18_as_r34.pth"
    torch.save(state, r34)
    rc, err = _run(["--arch", "iresnet34", "--checkpoint", str(r34), *base], capsys)
    assert rc == 1 and "missing keys: layer1.2.bn1.weight" in err and "unexpected" not in err

    extra = tmp_path / "extra.pth"
    torch.save({**state, "head.kernel": torch.zeros(2)}, extra)
    rc, err = _run(["--arch", "iresnet18", "--checkpoint", str(extra), *base], capsys)
    assert rc == 1 and "unexpected: head.kernel" in err and "missing" not in err

    state["fc.weight"] = torch.zeros(512, 10)
    shape = tmp_path / "shape.pth"
    torch.save(state, shape)
    rc, err = _run(["--arch", "iresnet18", "--checkpoint", str(shape), *base], capsys)
    assert rc == 1 and "shape mismatch: fc.weight (512, 10) != (512, 25088)" in err
    assert not out.exists(), "nothing is written for a refused checkpoint"


def test_thresholds_are_required_or_explicitly_provisional(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "backbone.pth"  # never read: thresholds are checked first
    rc, err = _run(["--arch", "mobilefacenet", "--checkpoint", str(ckpt), "--out", str(tmp_path)], capsys)
    assert rc == 2 and "thresholds are required: --thresholds-from LABELS.csv" in err
    assert "--threshold-accept and --threshold-likely" in err and "--provisional-thresholds" in err
    rc, err = _run(["--arch", "mobilefacenet", "--checkpoint", str(ckpt), "--threshold-accept", "0.4"], capsys)
    assert rc == 2 and "give both" in err
    argv = ["--arch", "mobilefacenet", "--checkpoint", str(ckpt), *THRESHOLDS[:2], "--threshold-likely", "0.6"]
    rc, err = _run(argv, capsys)
    assert rc == 2 and "likely (0.6) <= accept (0.4)" in err

    from tools.models.export import _thresholds

    args = parser().parse_args(["--arch", "mobilefacenet", "--checkpoint", "x.pth", "--provisional-thresholds"])
    thresholds, note = _thresholds(args)
    assert thresholds == {"accept": PROVISIONAL, "likely": PROVISIONAL} and PROVISIONAL > 1.0, "accepts nobody"
    assert "provisional" in note


def test_an_existing_id_from_another_source_is_not_replaced(
    mbf_export: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = save_checkpoint(build("mobilefacenet"), tmp_path / "other.pth")
    argv = ["--arch", "mobilefacenet", "--checkpoint", str(other), "--out", str(mbf_export["out"]), *THRESHOLDS]
    rc, err = _run([*argv, "--id", "yunet"], capsys)
    assert rc == 1 and "model id 'yunet' is already in" in err and "--force" in err
    rc, err = _run([*argv, "--id", "My Model"], capsys)
    assert rc == 2 and "--id 'My Model'" in err


def test_help_lists_the_architectures(capsys: pytest.CaptureFixture[str]) -> None:
    from tools.__main__ import main as tools_main

    with pytest.raises(SystemExit) as exc:
        tools_main(["export", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "iresnet100" in text and "mobilefacenet" in text and "--threshold-accept" in text
    assert "--thresholds-from" in text and "--gate-pairs" in text and "backbone.pt" in text
