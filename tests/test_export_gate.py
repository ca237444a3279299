"""``tools export`` from a ``tools train`` checkpoint: the gate against a named baseline, measured thresholds, and the
door running what was registered.

Nothing is trained: two backbone checkpoints are written with ``save_backbone``:

- ``random.pt``: MobileFaceNet at the paper's width (128-D), seeded random weights: near chance;
- ``dlib.pt``: dlib's ResNet with its pretrained weights (``create('dlib-resnet', None, 'dlib')``), its 150x150
  input and per-channel mean from the checkpoint; the template set to dlib's own chip geometry
  (``TEMPLATE_MEANFACE``), on which its weights were trained, as an inline template the checkpoint carries.

Everything is written under tmp_path: a models folder with the real YuNet and SFace files (linked), a gate pairs CSV
from LFW's dev-test pairs (40 genuine pairs and every cross-identity pair of their 80 images: TAR at FAR 1e-3 needs
1,000 impostor pairs), a labels CSV of 470 LFW images (>= 100,000 impostor pairs, for FMR 1e-5), and an embedding
cache.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the tools extra (torch) is not installed")

from kiosk.config import parse_config  # noqa: E402
from kiosk.imageio import read_image  # noqa: E402
from kiosk.lab.evaluate import SPECIAL_IDENTITIES  # noqa: E402
from kiosk.recognition.embed import preprocess  # noqa: E402
from kiosk.recognition.pipeline import Pipeline  # noqa: E402
from tests.helpers import run_main  # noqa: E402
from tools import ROOT  # noqa: E402
from tools.models.export import PROVISIONAL, main  # noqa: E402
from tools.models.quantize import measured_thresholds, round_up  # noqa: E402
from tools.models.registry import read_manifest, write_manifest  # noqa: E402
from tools.train.backbones import create, load_trained, save_backbone  # noqa: E402

LABELS_IMAGES = 470  # 162 identities, 109,702 impostor pairs: FMR 1e-5 is defined


@dataclass(frozen=True)
class Site:
    models: Path
    lfw: Path
    pairs: Path
    labels: Path
    random_ckpt: Path
    dlib_ckpt: Path
    tmp: Path

    def gate(self, baseline: str) -> list[str]:
        return ["--gate-pairs", str(self.pairs), "--pairs-root", str(self.lfw), "--baseline", baseline]

    def thresholds(self) -> list[str]:
        return ["--thresholds-from", str(self.labels), "--labels-root", str(self.lfw)]

    def common(self, ckpt: Path, model_id: str) -> list[str]:
        face = str(self.lfw / "images/Abdullah_Gul/Abdullah_Gul_0013.jpg")
        argv = ["--checkpoint", str(ckpt), "--id", model_id, "--out", str(self.models), "--bench", "0"]
        return [*argv, "--exporter", "legacy", "--verify-images", face]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (names, and the sha256 of the bytes): what 'untouched' means."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _pairs_csv(lfw: Path, dst: Path) -> Path:
    with (lfw / "pairs_dev_test.csv").open(encoding="utf-8") as f:
        genuine = [(r["path1"], r["path2"]) for r in csv.DictReader(f) if r["same"] == "1"][::8][:40]
    images = sorted({p for pair in genuine for p in pair})
    impostor = [(a, b) for a, b in itertools.combinations(images, 2) if a.split("/")[1] != b.split("/")[1]]
    assert len(impostor) >= 1000
    with dst.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path1", "path2", "same"])
        w.writerows([(a, b, 1) for a, b in genuine] + [(a, b, 0) for a, b in impostor])
    return dst


def _labels_csv(lfw: Path, dst: Path) -> Path:
    by_identity: dict[str, list[str]] = defaultdict(list)
    with (lfw / "labels.csv").open(encoding="utf-8") as f:
        for r in csv.DictReader(f):
            by_identity[r["identity"]].append(r["path"])
    rows: list[tuple[str, str]] = []
    for identity in sorted(by_identity):
        if identity in SPECIAL_IDENTITIES or len(by_identity[identity]) < 2:
            continue
        rows += [(p, identity) for p in by_identity[identity][:4]]
        if len(rows) >= LABELS_IMAGES:
            break
    with dst.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "identity"])
        w.writerows(rows)
    return dst


@pytest.fixture(scope="module")
def site(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    from tools.models.convert.dlib_resnet import CHIP_SIZE, TEMPLATE_MEANFACE

    models = tmp_path_factory.mktemp("models")
    entries = {k: v for k, v in read_manifest(ROOT / "models")["models"].items() if k in ("yunet", "sface")}
    for entry in entries.values():
        (models / entry["file"]).symlink_to(ROOT / "models" / entry["file"])
    write_manifest(models, {"version": 1, "models": entries})
    tmp = tmp_path_factory.mktemp("export_gate")
    lfw = faces_dir / "lfw"

    torch.manual_seed(0)
    rand, _ = create("mobilefacenet-s1", None, None)
    rand.module.eval()
    save_backbone(tmp / "random.pt", rand)
    dlib, _ = create("dlib-resnet", None, "dlib")
    dlib.align_template = {"size": [CHIP_SIZE, CHIP_SIZE], "points": TEMPLATE_MEANFACE}
    save_backbone(tmp / "dlib.pt", dlib)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KIOSK_CACHE_DIR", str(tmp / "cache"))
        mp.setenv("KIOSK_TEST_DATA", str(faces_dir))
        yield Site(
            models,
            lfw,
            _pairs_csv(lfw, tmp / "pairs_small.csv"),
            _labels_csv(lfw, tmp / "labels_small.csv"),
            tmp / "random.pt",
            tmp / "dlib.pt",
            tmp,
        )


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err.strip()


@pytest.fixture(scope="module")
def refused(site: Site) -> dict[str, Any]:
    """The random network, gated against sface with measured thresholds asked for: refused."""
    before = snapshot(site.models)
    out = site.tmp / "refused.json"
    argv = [*site.common(site.random_ckpt, "random_gated"), *site.thresholds(), *site.gate("sface")]
    rc = main([*argv, "--json", str(out)])
    return {"rc": rc, "before": before, "after": snapshot(site.models), "report": json.loads(out.read_text())}


@pytest.fixture(scope="module")
def baseline(site: Site, refused: dict[str, Any]) -> str:
    """The random network registered as a baseline with provisional thresholds (no gate: it accepts nobody)."""
    assert main([*site.common(site.random_ckpt, "random128"), "--provisional-thresholds"]) == 0
    return "random128"


@pytest.fixture(scope="module")
def deployed(site: Site, baseline: str) -> dict[str, Any]:
    """dlib's ResNet, measured on the labels and gated against the random baseline: registered."""
    out = site.tmp / "deployed.json"
    argv = [*site.common(site.dlib_ckpt, "dlib128"), *site.thresholds(), *site.gate(baseline)]
    assert main([*argv, "--json", str(out)]) == 0
    report: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return report


def _config(site: Site, recognizer: str) -> Path:
    cfg = site.tmp / f"kiosk-{recognizer}.yaml"
    text = f"data_dir: {site.tmp / 'data'}\nmodels:\n  manifest: {site.models / 'manifest.yaml'}\n"
    cfg.write_text(text + f"  recognizer: {recognizer}\n", encoding="utf-8")
    return cfg


# ------------------------------------------------------------------------------------------------ the gate refuses


def test_gate_refuses_a_worse_model_and_writes_nothing(
    site: Site, refused: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert refused["rc"] == 1
    assert refused["after"] == refused["before"], "models/ and its manifest are byte-for-byte untouched"
    report = refused["report"]
    gate = report["gate"]
    assert report["registered"] is False and gate["passed"] is False
    assert gate["metric"] == "TAR@FAR 1e-3" and gate["baseline_id"] == "sface"
    assert gate["candidate_value"] < gate["baseline_value"] - 0.5, "a random network is near chance, sface is not"
    assert gate["drop_points"] > gate["max_drop_points"] == 0.0
    assert gate["pairs_file"] == "pairs_small.csv"
    assert gate["pairs_sha256"] == hashlib.sha256(site.pairs.read_bytes()).hexdigest()
    assert gate["baseline_sha256"] == read_manifest(site.models)["models"]["sface"]["sha256"]
    assert gate["baseline"]["roc_auc"] > 0.99 and gate["candidate"]["roc_auc"] < 0.8
    assert "thresholds" not in report, "nothing is measured for a refused model"
    assert report["refused"].startswith("refused: TAR@FAR 1e-3 on pairs_small.csv")


def test_refusal_is_one_line_with_both_values(
    site: Site, refused: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # the same refusal again (cached embeddings), to read its stderr
    argv = [*site.common(site.random_ckpt, "random_gated"), *site.gate("sface"), "--provisional-thresholds"]
    rc, _, err = _run(argv, capsys)
    lines = err.splitlines()
    assert rc == 1 and len(lines) == 1
    gate = refused["report"]["gate"]
    assert lines[0].startswith("export: refused: ") and "nothing registered" in lines[0]
    assert f"{100 * gate['candidate_value']:.2f} %" in lines[0] and f"{100 * gate['baseline_value']:.2f} %" in lines[0]
    assert "random_gated" not in read_manifest(site.models)["models"]


# ------------------------------------------------------------------------------------------------ the gate passes


def test_gate_passes_and_measured_thresholds_are_registered(site: Site, deployed: dict[str, Any]) -> None:
    manifest = read_manifest(site.models)["models"]
    assert set(manifest) == {"yunet", "sface", "random128", "dlib128"}
    assert sorted(p.name for p in site.models.iterdir()) == sorted(
        ["manifest.yaml", "yunet_2023mar.onnx", "sface_2021dec.onnx", "random128.onnx", "dlib128.onnx"]
    ), "no staged or temporary file is left in models/"
    entry = manifest["dlib128"]
    # input, template and family from the checkpoint, not from --arch
    ckpt = load_trained(site.dlib_ckpt)
    assert entry["input"] == {**ckpt.input, "name": "input"} and entry["input"]["size"] == [150, 150]
    assert entry["input"]["std"] == [256.0] * 3 and entry["input"]["mean"] == ckpt.input["mean"]
    assert entry["align_template"] == ckpt.align_template and entry["family"] == "dlib_resnet"
    assert entry["output_dim"] == 128 and entry["metric"] == "cosine"

    labels = deployed["thresholds"]["labels"]
    assert labels["n_impostor"] >= 100_000 and labels["n_images"] == LABELS_IMAGES
    thresholds = entry["thresholds"]
    assert thresholds == measured_thresholds(labels) == deployed["thresholds"]["values"]
    assert set(thresholds) == {"accept", "likely", "fmr_1e-3", "fmr_1e-4", "fmr_1e-5"}
    assert thresholds["likely"] <= thresholds["accept"] < PROVISIONAL
    assert thresholds["accept"] == round_up(labels["fnmr_at_fmr"]["1e-5"]["threshold"])
    assert thresholds["accept"] >= labels["fnmr_at_fmr"]["1e-5"]["threshold"], "rounded up, never below the measure"

    prov = entry["provenance"]
    gate = prov["gate"]
    assert gate == deployed["gate"] and gate["passed"] is True
    assert gate["baseline_id"] == "random128" and gate["baseline_sha256"] == manifest["random128"]["sha256"]
    assert gate["candidate_value"] >= gate["baseline_value"]
    assert gate["pairs_sha256"] == hashlib.sha256(site.pairs.read_bytes()).hexdigest()
    assert prov["checkpoint_format"] == "face-kiosk-backbone/1" and prov["source_file"] == "dlib.pt"
    assert "measured on labels_small.csv" in prov["thresholds"]
    assert prov["thresholds_measured"]["labels_sha256"] == hashlib.sha256(site.labels.read_bytes()).hexdigest()
    assert str(site.lfw) not in json.dumps(prov) and str(site.tmp) not in json.dumps(prov), "no paths of user data"
    assert deployed["registered"] is True and deployed["sha256"] == entry["sha256"]


def test_kiosk_eval_measures_the_same_thresholds_on_the_registered_file(
    site: Site, deployed: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    out = site.tmp / "eval.json"
    argv = ["eval", "--labels", str(site.labels), "--root", str(site.lfw), "--recognizer", "dlib128", "--no-cache"]
    code, _, err = run_main(capsys, "--config", str(_config(site, "dlib128")), *argv, "--json", str(out))
    assert code == 0, err
    fnmr = json.loads(out.read_text(encoding="utf-8"))["fnmr_at_fmr"]
    entry = read_manifest(site.models)["models"]["dlib128"]["thresholds"]
    assert (
        round_up(fnmr["1e-5"]["threshold"]) == entry["accept"]
        and round_up(fnmr["1e-3"]["threshold"]) == entry["likely"]
    )


def test_the_door_matches_two_photos_of_one_person_with_the_measured_thresholds(
    site: Site, deployed: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(site, "dlib128")
    code, out, err = run_main(capsys, "--config", str(cfg), "check", "--json")
    checks = {c["check"]: c for c in json.loads(out)["checks"]}
    sha = read_manifest(site.models)["models"]["dlib128"]["sha256"]
    assert checks["model recognizer"]["ok"] and checks["model recognizer"]["detail"] == f"dlib128 sha256 {sha[:12]}"
    with site.labels.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by_identity: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        by_identity[r["identity"]].append(r["path"])
    same = [paths[:2] for paths in by_identity.values()][:6]
    thresholds = read_manifest(site.models)["models"]["dlib128"]["thresholds"]
    verdicts = []
    for a, b in same:
        code, out, err = run_main(
            capsys, "--config", str(cfg), "verify", str(site.lfw / a), str(site.lfw / b), "--json"
        )
        assert code == 0, err
        result = json.loads(out)
        assert result["thresholds"] == {"accept": thresholds["accept"], "likely": thresholds["likely"]}
        assert result["models"]["recognizer"]["id"] == "dlib128"
        verdicts.append((result["verdict"], result["score"]))
    assert any(v == "the same person" and s >= thresholds["accept"] for v, s in verdicts), verdicts
    a, b = same[0][0], same[1][0]  # two different people
    code, out, _ = run_main(capsys, "--config", str(cfg), "verify", str(site.lfw / a), str(site.lfw / b), "--json")
    assert code == 0 and json.loads(out)["verdict"] != "the same person"


def test_registered_onnx_through_the_kiosks_embedder_equals_pytorch(site: Site, deployed: dict[str, Any]) -> None:
    cfg = parse_config({"models": {"manifest": str(site.models / "manifest.yaml"), "recognizer": "dlib128"}})
    pipe = Pipeline.from_config(cfg)
    module = load_trained(site.dlib_ckpt).module
    spec = pipe.embedder.spec
    assert pipe.template.size == (150, 150)
    with site.labels.open(encoding="utf-8") as f:
        paths = [r["path"] for r in itertools.islice(csv.DictReader(f), 6)]
    crops, kiosk = [], []
    for rel in paths:
        faces = pipe.analyze(read_image(site.lfw / rel), select="central")
        assert faces and faces[0].embedding is not None
        assert faces[0].aligned.shape == (150, 150, 3)
        crops.append(faces[0].aligned)
        kiosk.append(faces[0].embedding)
    with torch.no_grad():
        ref = module(torch.from_numpy(preprocess(crops, spec.input))).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    cos = np.sum(np.asarray(kiosk) * ref, axis=1)
    assert cos.min() > 0.9999, cos


def test_the_embedding_cache_key_names_the_candidates_bytes(site: Site, baseline: str) -> None:
    # Two candidates staged under the same id, same entry, one weight apart: they never share cached embeddings.
    import onnx
    from onnx import numpy_helper

    from tools.models import deploy
    from tools.models.quantize import _fingerprint

    setup = deploy.open_gate(site.models, "sface", site.pairs, site.lfw, None, 0.0)
    registered = read_manifest(site.models)["models"][baseline]
    entry = {k: v for k, v in registered.items() if k not in ("sha256", "provenance")}
    model = onnx.load(str(site.models / f"{baseline}.onnx"))
    keys, shas = [], []
    for n, bump in enumerate((0.0, 1e-3)):
        init = model.graph.initializer[0]
        weights = numpy_helper.to_array(init).copy()
        weights.flat[0] += bump
        init.CopyFrom(numpy_helper.from_array(weights, init.name))
        folder = site.tmp / f"staged-{n}"
        folder.mkdir()
        onnx.save(model, str(folder / "cand.onnx"))
        spec = deploy.stage_spec(folder, "cand", {**entry, "file": "cand.onnx"})
        cfg, pipe = deploy.candidate_pipeline(setup, spec)
        keys.append(_fingerprint(pipe, cfg))
        shas.append(spec.sha256)
    assert shas[0] == registered["sha256"] != shas[1], "the first copy is the registered bytes, the second is not"
    assert keys[0] != keys[1]


def test_equal_to_the_baseline_passes_but_labels_that_fail_to_embed_refuse(
    site: Site, baseline: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The same weights as the baseline: a drop of exactly 0 points passes the default --max-drop 0. Then the labels
    # list 470 images of which only 30 exist: enough rows for FMR 1e-5 before embedding, too few usable after.
    with site.labels.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing = site.tmp / "labels_missing.csv"
    with missing.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "identity"])
        w.writerows((r["path"] if i < 30 else f"gone/{i}.jpg", r["identity"]) for i, r in enumerate(rows))
    before = snapshot(site.models)
    argv = [*site.common(site.random_ckpt, "random_again"), *site.gate(baseline)]
    argv += ["--thresholds-from", str(missing), "--labels-root", str(site.lfw)]
    rc, out, err = _run(argv, capsys)
    assert "export: gate passed" in out and "drop +0.00 points" in out
    assert rc == 2 and len(err.splitlines()) == 1
    assert "labels_missing.csv: 30 usable images (440 failed)" in err and "too few" in err
    assert snapshot(site.models) == before


# ------------------------------------------------------------------------------------------------ bad inputs


def _one_line(site: Site, argv: list[str], capsys: pytest.CaptureFixture[str], code: int, *parts: str) -> None:
    before = snapshot(site.models)
    rc, _, err = _run(argv, capsys)
    lines = err.splitlines()
    assert rc == code and len(lines) == 1 and lines[0].startswith("export: error: "), err
    for part in parts:
        assert part in lines[0], (part, lines[0])
    assert snapshot(site.models) == before


def test_bad_checkpoints_are_one_line_errors(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--out", str(site.models), "--bench", "0", "--provisional-thresholds"]
    other = site.tmp / "other.pt"
    torch.save({"format": "someone-else/3", "weights": {"a": torch.zeros(2)}}, other)
    _one_line(site, ["--checkpoint", str(other), *base], capsys, 1, "format 'someone-else/3'", "face-kiosk-backbone/1")

    truncated = site.tmp / "truncated.pt"
    data = site.random_ckpt.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    _one_line(site, ["--checkpoint", str(truncated), *base], capsys, 1, "truncated.pt is not a PyTorch checkpoint")

    obj = torch.load(site.random_ckpt, weights_only=True)
    key = next(k for k, v in obj["state_dict"].items() if v.ndim == 4)
    obj["state_dict"][key] = torch.zeros(3, 3, 3, 3)
    tampered = site.tmp / "tampered.pt"
    torch.save(obj, tampered)
    _one_line(
        site, ["--checkpoint", str(tampered), *base], capsys, 1, "tampered.pt does not match mobilefacenet-s1", key
    )

    _one_line(
        site,
        ["--checkpoint", str(site.random_ckpt), "--arch", "iresnet18", *base],
        capsys,
        2,
        "random.pt is a mobilefacenet-s1 checkpoint, not iresnet18",
    )
    pth = site.tmp / "backbone.pth"
    torch.save(obj["state_dict"], pth)
    _one_line(site, ["--checkpoint", str(pth), *base], capsys, 2, "arcface_torch state dict: pass --arch")


def test_bad_gate_and_labels_arguments_are_one_line_errors(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = ["--checkpoint", str(site.random_ckpt), "--out", str(site.models), "--bench", "0", "--id", "bad"]
    gate = site.gate("sface")
    labels = site.thresholds()

    nope = site.tmp / "nope.csv"
    _one_line(
        site, [*ckpt, *labels, "--gate-pairs", str(nope), "--baseline", "sface"], capsys, 2, "nope.csv: file not found"
    )
    _one_line(
        site, [*ckpt, *labels, *site.gate("nosuch")], capsys, 2, "--baseline 'nosuch' is not a recogniser", "sface"
    )
    _one_line(site, [*ckpt, *labels, *site.gate("yunet")], capsys, 2, "--baseline 'yunet' is not a recogniser")
    _one_line(site, [*ckpt, *labels], capsys, 2, "--thresholds-from registers a model the door will use", "--baseline")
    _one_line(site, [*ckpt, "--provisional-thresholds", "--gate-pairs", str(site.pairs)], capsys, 2, "needs both")
    _one_line(site, [*ckpt, "--provisional-thresholds", "--max-drop", "1"], capsys, 2, "--max-drop is the gate's")
    _one_line(site, [*ckpt, *labels, *gate, "--max-drop", "-1"], capsys, 2, "--max-drop must be >= 0")
    _one_line(site, [*ckpt, *labels, *gate, "--threshold-accept", "0.5"], capsys, 2, "leave out --threshold-accept")
    _one_line(site, [*ckpt, "--thresholds-from", str(nope), *gate], capsys, 2, "nope.csv: file not found")

    few_pairs = site.tmp / "few_pairs.csv"
    few_pairs.write_text("\n".join(site.pairs.read_text(encoding="utf-8").splitlines()[:200]) + "\n", encoding="utf-8")
    _one_line(
        site,
        [*ckpt, *labels, "--gate-pairs", str(few_pairs), "--pairs-root", str(site.lfw), "--baseline", "sface"],
        capsys,
        2,
        "impostor pairs: TAR at FAR 1e-3 needs 1000",
    )

    one = site.tmp / "one_identity.csv"
    one.write_text("path,identity\n" + "".join(f"images/x/x_{i:04}.jpg,x\n" for i in range(500)), encoding="utf-8")
    _one_line(
        site, [*ckpt, "--thresholds-from", str(one), *gate], capsys, 2, "500 images of 1 identities give 0 impostor"
    )
    small = site.tmp / "small_labels.csv"
    small.write_text("path,identity\n" + "".join(f"images/p{i % 10}/{i}.jpg,p{i % 10}\n" for i in range(40)))
    _one_line(site, [*ckpt, "--thresholds-from", str(small), *gate], capsys, 2, "needs 100,000")
    singles = site.tmp / "singles.csv"
    singles.write_text("path,identity\n" + "".join(f"images/{i}.jpg,p{i}\n" for i in range(500)))
    _one_line(site, [*ckpt, "--thresholds-from", str(singles), *gate], capsys, 2, "no genuine pair")


def test_a_file_not_in_the_manifest_is_not_overwritten(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    stray = site.models / "mine.onnx"
    stray.write_bytes(b"someone's file")
    try:
        argv = ["--checkpoint", str(site.random_ckpt), "--out", str(site.models), "--id", "mine"]
        _one_line(site, [*argv, "--provisional-thresholds"], capsys, 1, "mine.onnx exists but is not in")
        assert stray.read_bytes() == b"someone's file"
    finally:
        stray.unlink()


def test_help_describes_the_gate(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--thresholds-from", "--labels-root", "--gate-pairs", "--baseline", "--max-drop", "--json"):
        assert flag in text
