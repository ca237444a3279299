"""Passive liveness: the MiniFASNet re-implementation, its ONNX export (``python -m tools minifasnet``) and the kiosk's
passive layer (``kiosk/liveness/passive.py``) against the original implementation's stored outputs.

The checkpoints and the reference (``reference/expected.json``: logits of the original for a random input and for six
80x80 patches cut from the Silent-Face-Anti-Spoofing sample photos) are read from ``$KIOSK_MINIFASNET_DIR``
(default ``<KIOSK_TEST_DATA>/../models/minifasnet``); nothing is copied into the repository.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch", reason="the tools extra (torch) is not installed")

from kiosk.errors import ModelError, ModelIntegrityError, ModelMissingError  # noqa: E402
from kiosk.imageio import read_image  # noqa: E402
from kiosk.liveness.passive import (  # noqa: E402
    PassiveLiveness,
    PassiveModel,
    crop_box,
    crop_patch,
    face_box_xywh,
    softmax,
)
from kiosk.models.backends import RuntimeOptions, load_runner  # noqa: E402
from kiosk.models.manifest import Manifest, load_manifest, sha256_file  # noqa: E402
from kiosk.recognition.detect import build_detector, select_faces  # noqa: E402
from kiosk.types import Face  # noqa: E402
from tools.models.arch.minifasnet import minifasnet  # noqa: E402
from tools.models.convert.minifasnet import main  # noqa: E402
from tools.models.export import load_state_dict  # noqa: E402

TOL = 1e-4
V2 = "2.7_80x80_MiniFASNetV2.pth"
V1SE = "4_0_0_80x80_MiniFASNetV1SE.pth"
IDS = {V2: "minifasnet_v2", V1SE: "minifasnet_v1se"}
SAMPLES = Path("samples/antispoof-silentface/images/sample")
OPTIONS = RuntimeOptions(intra_op_threads=1)


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def manifest(minifasnet_models: Path) -> Manifest:
    return load_manifest(minifasnet_models / "manifest.yaml")


@pytest.fixture(scope="session")
def passive(manifest: Manifest) -> PassiveLiveness:
    return PassiveLiveness.from_manifest(manifest, [IDS[V2], IDS[V1SE]], OPTIONS)


def cases(minifasnet_dir: Path) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((minifasnet_dir / "reference" / "expected.json").read_text())["cases"]
    return data


def reference_input(minifasnet_dir: Path, case: dict[str, Any]) -> np.ndarray:
    """(1, 3, 80, 80) float32: random_input.npy as stored, a patch PNG as BGR uint8 → NCHW."""
    path = minifasnet_dir / "reference" / case["input"]
    if path.suffix == ".npy":
        x = np.load(path)
        assert x.shape == (1, 3, 80, 80) and x.dtype == np.float32
        return x
    return np.ascontiguousarray(reference_patch(minifasnet_dir, case).transpose(2, 0, 1)[None], dtype=np.float32)


def reference_patch(minifasnet_dir: Path, case: dict[str, Any]) -> np.ndarray:
    patch = cv2.imread(str(minifasnet_dir / "reference" / case["input"]), cv2.IMREAD_COLOR)
    assert patch is not None and patch.shape == (80, 80, 3)
    return np.asarray(patch)


ALL_CASES = range(8)  # expected.json: 2 models x (random input + 3 sample patches)
PATCH_CASES = range(2, 8)


def case_at(minifasnet_dir: Path, i: int) -> dict[str, Any]:
    found = cases(minifasnet_dir)
    assert len(found) == 8, "expected.json changed: update ALL_CASES / PATCH_CASES"
    return found[i]


# ------------------------------------------------------------------------------------------------ 1. PyTorch


@pytest.fixture(scope="module")
def torch_models(minifasnet_dir: Path) -> dict[str, Any]:
    return {name: minifasnet(load_state_dict(minifasnet_dir / name)) for name in (V2, V1SE)}


def test_architectures_are_read_from_the_checkpoints(torch_models: dict[str, Any]) -> None:
    v2, v1se = torch_models[V2].shape, torch_models[V1SE].shape
    assert (v2.variant, v1se.variant) == ("MiniFASNetV2", "MiniFASNetV1SE")
    assert v2.stages[0].mids == (13, 13, 13, 13) and v1se.stages[0].mids == (13, 26, 13, 52)
    # SE on the last block of each residual stage only.
    assert [s.se_hidden for s in v1se.stages] == [(None, None, None, 16), (None,) * 5 + (32,), (None, 32)]
    assert not v2.has_se and v2.head_kernel == v1se.head_kernel == 5 and v2.classes == 3


@pytest.mark.parametrize("i", ALL_CASES)
def test_pytorch_reimplementation_reproduces_the_original_logits(
    i: int, minifasnet_dir: Path, torch_models: dict[str, Any]
) -> None:
    case = case_at(minifasnet_dir, i)
    with torch.no_grad():
        got = torch_models[case["model"]](torch.from_numpy(reference_input(minifasnet_dir, case))).numpy()[0]
    assert np.abs(got - np.asarray(case["logits"])).max() <= TOL


# ------------------------------------------------------------------------------------------------ 2. ONNX


@pytest.mark.parametrize("i", ALL_CASES)
def test_exported_onnx_through_the_kiosk_reproduces_the_original_logits(
    i: int, minifasnet_dir: Path, passive: PassiveLiveness
) -> None:
    case = case_at(minifasnet_dir, i)
    model = next(m for m in passive.models if m.spec.id == IDS[case["model"]])
    if case["input"].endswith(".npy"):  # already the network's input: feed it past the kiosk's preprocessing
        x = reference_input(minifasnet_dir, case)
        got = np.asarray(model._runner.run({"input": x})[0])[0]
    else:
        got = model.logits_for_patch(reference_patch(minifasnet_dir, case))
    assert np.abs(got - np.asarray(case["logits"])).max() <= TOL


def test_batched_logits_equal_single_ones(minifasnet_dir: Path, passive: PassiveLiveness) -> None:
    patches = [reference_patch(minifasnet_dir, case_at(minifasnet_dir, i)) for i in PATCH_CASES]
    for model in passive.models:
        batch = model.logits_for_patches(patches)
        single = np.stack([model.logits_for_patch(p) for p in patches])
        assert batch.shape == (6, 3) and np.abs(batch - single).max() <= 1e-5


def test_manifest_entries(minifasnet_models: Path, minifasnet_dir: Path) -> None:
    models = yaml.safe_load((minifasnet_models / "manifest.yaml").read_text(encoding="utf-8"))["models"]
    assert "yunet" in models, "the repository's entries are kept"
    for name, scale in ((V2, 2.7), (V1SE, 4.0)):
        entry = models[IDS[name]]
        assert (entry["task"], entry["format"], entry["family"]) == ("liveness", "onnx", "minifasnet")
        assert entry["input"] == {
            "name": "input",
            "size": [80, 80],
            "color": "bgr",
            "layout": "nchw",
            "mean": [0.0] * 3,
            "std": [1.0] * 3,
        }
        assert entry["params"] == {"crop_scale": scale, "real_class": 1, "classes": 3}
        assert entry["licence"] == "Apache-2.0" and entry["file"] == f"{IDS[name]}.onnx"
        prov = entry["provenance"]
        assert prov["source_file"] == name and prov["source_sha256"] == sha256_file(minifasnet_dir / name)
        assert prov["max_abs_diff"] <= TOL and "torch" in prov["tools"]
        assert str(minifasnet_dir) not in json.dumps(prov), "no absolute path of the user's machine"
    assert not list(minifasnet_models.glob("*.pth")), "the checkpoints are never copied into the models folder"


@pytest.mark.slow
def test_the_export_is_reproducible(tmp_path: Path, minifasnet_dir: Path, minifasnet_models: Path) -> None:
    out = tmp_path / "models"
    argv = ["--checkpoint", str(minifasnet_dir / V1SE), "--models-dir", str(out), "--bench", "0"]
    assert main([*argv, "--exporter", "legacy"]) == 0
    assert sha256_file(out / "minifasnet_v1se.onnx") == sha256_file(minifasnet_models / "minifasnet_v1se.onnx")


@pytest.mark.slow
def test_the_command_default_dynamo_export_runs_in_the_kiosk(tmp_path: Path, minifasnet_dir: Path) -> None:
    pytest.importorskip("onnxscript", reason="the tools extra (onnxscript) is not installed")
    out = tmp_path / "models"
    assert main(["--checkpoint", str(minifasnet_dir / V2), "--models-dir", str(out), "--bench", "0"]) == 0
    spec = load_manifest(out / "manifest.yaml").get("minifasnet_v2", task="liveness")
    assert spec.provenance["exporter"] == "torch.onnx (dynamo), opset 18"
    model = PassiveModel(spec, load_runner(spec, OPTIONS))
    for i in (2, 4, 6):  # the V2 patches
        case = case_at(minifasnet_dir, i)
        got = model.logits_for_patch(reference_patch(minifasnet_dir, case))
        assert np.abs(got - np.asarray(case["logits"])).max() <= TOL


# ------------------------------------------------------------------------------------------------ 3. crop


@pytest.mark.parametrize("i", PATCH_CASES)
def test_crop_reproduces_the_reference_patch_exactly(i: int, minifasnet_dir: Path, faces_dir: Path) -> None:
    case = case_at(minifasnet_dir, i)
    image = read_image(faces_dir / SAMPLES / case["image"])
    patch = crop_patch(image, case["face_box_xywh"], case["crop_scale"])
    assert patch.shape == (80, 80, 3) and patch.dtype == np.uint8
    assert int(np.abs(patch.astype(np.int16) - reference_patch(minifasnet_dir, case)).max()) == 0


def test_crop_box_scales_about_the_centre_and_shifts_into_the_image() -> None:
    # Inside: a 10x10 box at (40, 40) grown 2.7x about its centre (45, 45): 31.5..58.5, truncated.
    assert crop_box(100, 100, (40, 40, 10, 10), 2.7) == (31, 31, 58, 58)
    # Past the bottom-right: shifted back by 9.5, not shrunk (72..99 keeps the 27-pixel extent).
    assert crop_box(100, 100, (90, 90, 10, 10), 2.7) == (72, 72, 99, 99)
    # Past the top-left (a box partly outside the image, as a detector reports it): shifted right/down.
    assert crop_box(100, 100, (-4, -2, 10, 10), 2.7) == (0, 0, 27, 27)
    # Too big for the image: the scale drops to min((H-1)/h, (W-1)/w) = 128/64 = 2, so the crop spans the height.
    assert crop_box(300, 129, (70, 20, 40, 64), 4.0) == (50, 0, 130, 128)
    with pytest.raises(ValueError, match="no area"):
        crop_box(100, 100, (10, 10, 0, 5), 2.7)


def test_face_box_is_truncated_like_the_reference() -> None:
    face = Face(
        box=np.array([187.9, 109.2, 382.6, 348.99], np.float32), landmarks=np.zeros((5, 2), np.float32), score=1
    )
    assert face_box_xywh(face) == (187, 109, 194, 239)
    edge = Face(box=np.array([-3.7, 10.0, 50.0, 80.5], np.float32), landmarks=np.zeros((5, 2), np.float32), score=1)
    assert face_box_xywh(edge) == (-3, 10, 53, 70)


# ------------------------------------------------------------------------------------------------ 4. end to end

# Fused live-face probability seen with the kiosk's own YuNet (320 px, manifest thresholds) on the three samples:
# T1 (live) 0.99996, F1 (print) 0.114, F2 (screen replay) 0.0027.
SAMPLE_TRUTH = {"image_T1.jpg": True, "image_F1.jpg": False, "image_F2.jpg": False}


@pytest.fixture(scope="module")
def detector(manifest: Manifest) -> Any:
    spec = manifest.get("yunet", task="detect")
    return build_detector(spec, load_runner(spec, OPTIONS))


@pytest.mark.parametrize("name", list(SAMPLE_TRUTH))
def test_kiosk_detector_and_passive_layer_tell_live_from_attacks(
    name: str, faces_dir: Path, detector: Any, passive: PassiveLiveness
) -> None:
    image = read_image(faces_dir / SAMPLES / name)
    faces = detector.detect(image)
    assert len(faces) == 1
    score = passive.score(image, faces[0])
    assert 0.0 <= score <= 1.0
    assert (score > 0.5) == SAMPLE_TRUTH[name], f"{name}: fused score {score:.4f}"
    probs = [m.probs(image, faces[0]) for m in passive.models]
    assert all(abs(p.sum() - 1.0) < 1e-9 for p in probs)
    assert score == pytest.approx(float(np.mean([p[1] for p in probs])), abs=1e-9)


def test_scores_of_several_faces_are_batched_and_equal_single_scores(
    faces_dir: Path, detector: Any, passive: PassiveLiveness
) -> None:
    image = read_image(faces_dir / "samples/face_recognition-examples/images/two_people.jpg")
    faces = select_faces(detector.detect(image), "all", image.shape)
    assert len(faces) >= 2
    batched = passive.scores(image, faces)
    assert batched == pytest.approx([passive.score(image, f) for f in faces], abs=1e-6)
    assert passive.scores(image, []) == []


def test_softmax_is_stable() -> None:
    p = softmax(np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]]))
    assert np.allclose(p, [[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])


# ------------------------------------------------------------------------------------------------ 5. failures


def _one_line_error(capsys: pytest.CaptureFixture[str], code: int, needle: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1 and needle in err, err


def test_missing_checkpoint_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--checkpoint", str(tmp_path / "2.7_80x80_MiniFASNetV2.pth"), "--models-dir", str(tmp_path)])
    _one_line_error(capsys, code, "not found")
    assert not (tmp_path / "manifest.yaml").exists()


def test_a_state_dict_that_is_not_minifasnet_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "2.7_80x80_MiniFASNetV2.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(2, 8)}, path)
    _one_line_error(capsys, main(["--checkpoint", str(path), "--models-dir", str(tmp_path)]), "not a MiniFASNet")
    path.write_text("not a checkpoint\n")
    _one_line_error(capsys, main(["--checkpoint", str(path), "--models-dir", str(tmp_path)]), "not a PyTorch")
    assert not (tmp_path / "manifest.yaml").exists()


def test_a_minifasnet_with_a_missing_tensor_is_refused(
    tmp_path: Path, minifasnet_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = load_state_dict(minifasnet_dir / V2)
    del state["conv_4.model.2.project.bn.running_var"]
    path = tmp_path / V2
    torch.save(state, path)
    code = main(["--checkpoint", str(path), "--models-dir", str(tmp_path / "models")])
    _one_line_error(capsys, code, "conv_4.model.2.project.bn.running_var")


def test_a_file_name_that_contradicts_the_weights_is_refused(
    tmp_path: Path, minifasnet_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    renamed = tmp_path / "4_0_0_80x80_MiniFASNetV2.pth"
    os.symlink(minifasnet_dir / V1SE, renamed)
    code = main(["--checkpoint", str(renamed), "--models-dir", str(tmp_path / "models")])
    _one_line_error(capsys, code, "squeeze-and-excitation")
    unnamed = tmp_path / "liveness.pth"
    os.symlink(minifasnet_dir / V2, unnamed)
    _one_line_error(capsys, main(["--checkpoint", str(unnamed), "--models-dir", str(tmp_path)]), "--crop-scale")
    code = main(["--checkpoint", str(unnamed), "--checkpoint", str(renamed), "--id", "x", "--models-dir", "."])
    assert code == 2
    capsys.readouterr()


def test_an_absent_or_wrong_manifest_id_is_an_error(manifest: Manifest) -> None:
    with pytest.raises(ModelMissingError, match="minifasnet_v3"):
        PassiveLiveness.from_manifest(manifest, ["minifasnet_v2", "minifasnet_v3"], OPTIONS)
    with pytest.raises(ModelError, match="not a liveness model"):
        PassiveLiveness.from_manifest(manifest, ["yunet"], OPTIONS)
    with pytest.raises(ValueError, match="no passive liveness model"):
        PassiveLiveness.from_manifest(manifest, [], OPTIONS)


def test_a_tampered_onnx_is_refused(tmp_path: Path, minifasnet_models: Path) -> None:
    shutil.copyfile(minifasnet_models / "manifest.yaml", tmp_path / "manifest.yaml")
    onnx_file = tmp_path / "minifasnet_v2.onnx"
    data = bytearray((minifasnet_models / "minifasnet_v2.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    onnx_file.write_bytes(bytes(data))
    tampered = load_manifest(tmp_path / "manifest.yaml")
    with pytest.raises(ModelIntegrityError, match="minifasnet_v2"):
        load_runner(tampered.get("minifasnet_v2"), OPTIONS)
    with pytest.raises(ModelIntegrityError):
        PassiveLiveness.from_manifest(tampered, ["minifasnet_v2"], OPTIONS)
