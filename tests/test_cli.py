"""The ``kiosk`` CLI end to end, in-process: real models, real photos, a gallery in tmp_path."""

from __future__ import annotations

import argparse
import functools
import json
import re
import shutil
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest

from kiosk.cli import build_parser, main
from kiosk.errors import ExitCode
from tests.helpers import config_file, run_cli


@pytest.fixture()
def cfg_file(tmp_path: Path) -> Path:
    return config_file(tmp_path)


@pytest.fixture()
def kiosk(cfg_file: Path, capsys: pytest.CaptureFixture[str]):
    """Run the CLI; returns (exit code, stdout, stderr)."""
    return functools.partial(run_cli, cfg_file, capsys)


@pytest.fixture(scope="module")
def photos(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    lfw = faces_dir / "lfw" / "images"
    d = tmp_path_factory.mktemp("photos")
    from skimage import data

    p = {
        "abel1": lfw / "Abel_Pacheco/Abel_Pacheco_0001.jpg",
        "abel2": lfw / "Abel_Pacheco/Abel_Pacheco_0002.jpg",
        "abel4": lfw / "Abel_Pacheco/Abel_Pacheco_0004.jpg",
        "colin1": lfw / "Colin_Powell/Colin_Powell_0001.jpg",
        "colin2": lfw / "Colin_Powell/Colin_Powell_0002.jpg",
        "amber1": lfw / "Amber_Tamblyn/Amber_Tamblyn_0001.jpg",
        "multi": faces_dir / "samples/face_recognition-examples/images/two_people.jpg",
    }
    p["noface"] = d / "coffee.png"
    cv2.imwrite(str(p["noface"]), data.coffee()[..., ::-1])
    p["corrupt"] = d / "corrupt.jpg"
    p["corrupt"].write_bytes(b"GIF89a" + bytes(range(256)) * 4)
    p["truncated"] = d / "truncated.jpg"
    raw = p["abel1"].read_bytes()
    p["truncated"].write_bytes(raw[: len(raw) // 2])
    p["gray"] = d / "gray.png"
    cv2.imwrite(str(p["gray"]), cv2.imread(str(p["colin2"]), cv2.IMREAD_GRAYSCALE))
    p["rgba"] = d / "rgba.png"
    cv2.imwrite(str(p["rgba"]), cv2.cvtColor(cv2.imread(str(p["abel4"])), cv2.COLOR_BGR2BGRA))
    p["blurry"] = d / "blurry.png"
    cv2.imwrite(str(p["blurry"]), cv2.GaussianBlur(cv2.imread(str(p["amber1"])), (0, 0), 5))
    return p


def test_every_command_has_help() -> None:
    parser = build_parser()

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                for name, sub in action.choices.items():
                    assert helps.get(name), f"`{path} {name}` has no help text"
                    assert sub.description, f"`{path} {name}` has no description"
                    walk(sub, f"{path} {name}")
            elif action.dest not in ("help", "version") and action.option_strings:
                assert action.help, f"`{path} {action.option_strings[0]}` has no help"

    walk(parser, "kiosk")


def test_enroll_identify_people_lifecycle(kiosk, photos) -> None:
    code, out, err = kiosk("enroll", "Abel Pacheco", str(photos["abel1"]), str(photos["abel2"]), "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["stored"] == 2 and res["person"]["name"] == "Abel Pacheco"

    code, out, _ = kiosk("enroll", "Colin", str(photos["colin1"]), str(photos["noface"]), str(photos["corrupt"]))
    assert code == 0
    assert "no face found" in out and "not a readable image" in out and "1 new template" in out

    code, out, _ = kiosk("identify", str(photos["abel4"]), str(photos["amber1"]), "--json")
    assert code == 0
    results = json.loads(out)["results"]
    assert results[0]["match"] == "Abel Pacheco" and results[0]["score"] > results[0]["threshold"]
    assert results[1]["match"] is None and results[1]["reason"].startswith("best score")

    code, out, _ = kiosk("people", "list", "--json")
    people = {p["name"]: p for p in json.loads(out)}
    assert people["Abel Pacheco"]["templates"] == 2 and people["Colin"]["templates"] == 1

    assert kiosk("people", "rename", "colin", "Colin Powell")[0] == 0
    assert kiosk("people", "disable", "Abel Pacheco")[0] == 0
    code, out, _ = kiosk("identify", str(photos["abel4"]), "--json")
    assert json.loads(out)["results"][0]["match"] is None, "a disabled person must not match"
    assert kiosk("people", "enable", "Abel Pacheco")[0] == 0
    code, out, _ = kiosk("people", "show", "Colin Powell", "--json")
    assert json.loads(out)["templates"] == 1

    code, out, _ = kiosk("people", "remove", "Abel Pacheco", "--yes")
    assert code == 0 and "erased 2 template" in out
    code, _, err = kiosk("people", "show", "Abel Pacheco")
    assert code == ExitCode.NOT_FOUND and "kiosk people list" in err


def test_enroll_rejections_keep_what_is_stored(kiosk, photos) -> None:
    assert kiosk("enroll", "Abel", str(photos["abel1"]))[0] == 0
    # Same face under another name: refused, nothing stored.
    code, _, err = kiosk("enroll", "Someone Else", str(photos["abel2"]))
    assert code == ExitCode.NO_FACE and "already enrolled as 'Abel'" in err
    # Name taken.
    code, _, err = kiosk("enroll", "abel", str(photos["abel2"]))
    assert code == ExitCode.DUPLICATE and "--append" in err
    # Several faces without a choice; then with one.
    code, _, err = kiosk("enroll", "Group", str(photos["multi"]))
    assert code == ExitCode.NO_FACE and "faces found" in err
    # Blurry and truncated photos are refused with their reasons.
    code, _, err = kiosk("enroll", "Amber", str(photos["blurry"]), str(photos["truncated"]))
    assert code == ExitCode.NO_FACE and "blurry" in err and "truncated" in err
    code, out, _ = kiosk("people", "list", "--json")
    assert [p["name"] for p in json.loads(out)] == ["Abel"]
    assert json.loads(out)[0]["templates"] == 1
    # Appending grayscale / RGBA photos of the same person works.
    code, out, err = kiosk("enroll", "Abel", str(photos["rgba"]), "--append")
    assert code == 0, err


def test_enroll_pick_a_face_in_a_group_photo(kiosk, photos) -> None:
    code, _, err = kiosk("enroll", "Left", str(photos["multi"]), "--face", "0", "--json")
    assert code == 0, err
    code, _, err = kiosk("enroll", "Right", str(photos["multi"]), "--face", "9")
    assert code == ExitCode.NO_FACE and "out of range" in err


def test_verify_three_level_verdict(kiosk, photos) -> None:
    code, out, _ = kiosk("verify", str(photos["abel1"]), str(photos["abel4"]), "--json")
    r = json.loads(out)
    assert code == 0 and r["verdict"] == "the same person" and r["score"] >= r["thresholds"]["accept"]
    code, out, _ = kiosk("verify", str(photos["abel1"]), str(photos["amber1"]), "--json")
    r = json.loads(out)
    assert r["verdict"] == "not the same person" and r["score"] < r["thresholds"]["likely"]
    code, out, _ = kiosk("verify", str(photos["colin2"]), str(photos["gray"]))
    assert code == 0 and "the same person" in out
    code, _, err = kiosk("verify", str(photos["abel1"]), str(photos["noface"]))
    assert code == ExitCode.NO_FACE and "no face found" in err
    code, _, err = kiosk("verify", str(photos["abel1"]), str(photos["corrupt"]))
    assert code == ExitCode.INPUT and err.count("\n") == 1


def test_identify_reports_bad_images_per_image(kiosk, photos) -> None:
    kiosk("enroll", "Abel", str(photos["abel1"]))
    code, out, _ = kiosk("identify", str(photos["abel2"]), str(photos["noface"]), str(photos["corrupt"]))
    assert code == ExitCode.NO_FACE
    assert "Abel" in out and "no face found" in out and "not a readable image" in out
    code, out, _ = kiosk("identify", str(photos["multi"]), "--all-faces", "--json")
    assert code == 0 and len(json.loads(out)["results"]) >= 2


def test_check_and_models(kiosk, cfg_file: Path) -> None:
    code, out, _ = kiosk("check", "--json")
    r = json.loads(out)
    assert code == 0 and r["ok"], r
    assert {c["check"] for c in r["checks"]} >= {
        "config",
        "model detector",
        "model recognizer",
        "gallery",
        "camera",
        "door",
        "liveness",
    }
    live = next(c for c in r["checks"] if c["check"] == "liveness")
    assert live["ok"] and live["detail"] == "mode active"  # the default: face mesh loaded and hash-checked
    cfg_file.write_text(cfg_file.read_text() + "camera:\n  source: /nonexistent/clip.mp4\n")
    code, out, _ = kiosk("check", "--json")
    r = json.loads(out)
    assert code == ExitCode.FAILURE and not r["ok"]
    assert [c["check"] for c in r["checks"] if not c["ok"]] == ["camera"]
    code, out, _ = kiosk("models", "--json")
    ids = {m["id"] for m in json.loads(out)}
    assert {"yunet", "sface", "blazeface", "face_mesh", "face_iris"} <= ids
    # Passive liveness with no model configured: the kiosk starts, but check says every grant will be refused.
    cfg_file.write_text(cfg_file.read_text().replace("/nonexistent/clip.mp4", "0") + "liveness:\n  mode: both\n")
    code, out, _ = kiosk("check", "--json")
    live = next(c for c in json.loads(out)["checks"] if c["check"] == "liveness")
    assert code == ExitCode.FAILURE and not live["ok"] and "every grant will be refused" in live["detail"]


def test_check_reports_gallery_size_and_expected_false_grants(kiosk, cfg_file: Path, photos) -> None:
    kiosk("enroll", "Abel", str(photos["abel1"]))
    kiosk("enroll", "Colin", str(photos["colin1"]))
    code, out, _ = kiosk("check", "--json")
    fg = next(c for c in json.loads(out)["checks"] if c["check"] == "false grants")
    assert code == 0 and fg["ok"] and (fg["people"], fg["templates"]) == (2, 2)
    # Two templates: the fpir-calibrated threshold is below the model's accept threshold, which stays in force.
    assert fg["threshold"] == 0.47 and fg["target_fpir"] == 1e-3
    assert fg["expected_fpir"] == pytest.approx(2e-5, rel=0.05)
    assert re.search(r"about 1 in 5\d,\d{3}\)$", fg["detail"]) and "2 people, 2 templates" in fg["detail"]
    # A fixed threshold far too low for any gallery: check fails and says how many strangers it lets in.
    cfg_file.write_text(cfg_file.read_text() + "recognition:\n  threshold: 0.2\n")
    code, out, _ = kiosk("check", "--json")
    fg = next(c for c in json.loads(out)["checks"] if c["check"] == "false grants")
    assert code == ExitCode.FAILURE and not fg["ok"] and "fixed by recognition.threshold" in fg["detail"]
    assert fg["expected_fpir"] > 0.5


def test_bad_config_exits_with_config_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("recognition:\n  threshold: 1.4\n")
    assert main(["--config", str(f), "people", "list"]) == ExitCode.CONFIG
    err = capsys.readouterr().err
    assert err.strip() == "kiosk: error: recognition.threshold: must be within -1.0..1.0, got 1.4"
    f.write_text("recogniton: {}\n")
    assert main(["--config", str(f), "check"]) == ExitCode.CONFIG
    assert main(["--config", str(tmp_path / "missing.yaml"), "check"]) == ExitCode.CONFIG


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["enroll"])
    assert e.value.code == ExitCode.USAGE
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == ExitCode.USAGE


def test_corrupt_and_locked_gallery(kiosk, cfg_file: Path, photos, tmp_path: Path) -> None:
    assert kiosk("enroll", "Abel", str(photos["abel1"]))[0] == 0
    db = tmp_path / "data" / "gallery.db"
    # Locked: another process holds the write lock; a write fails with one line, after the busy timeout.
    cfg_file.write_text(f"data_dir: {tmp_path / 'data'}\ngallery:\n  busy_timeout_s: 0.2\n")
    other = sqlite3.connect(db)
    other.execute("BEGIN EXCLUSIVE")
    try:
        code, _, err = kiosk("people", "rename", "Abel", "Abel P")
        assert code == ExitCode.GALLERY and "locked" in err
    finally:
        other.rollback()
        other.close()
    code, out, _ = kiosk("people", "list", "--json")
    assert [p["name"] for p in json.loads(out)] == ["Abel"], "a failed write must not lose anything"
    # Corrupt: garbage over the header.
    backup = tmp_path / "backup.db"
    shutil.copy(db, backup)
    with db.open("r+b") as f:
        f.write(b"\x00garbage" * 64)
    code, _, err = kiosk("people", "list")
    assert code == ExitCode.GALLERY and "backup" in err and err.count("\n") == 1
    code, out, _ = kiosk("check")
    assert code != 0 and "FAIL" in out


def test_tampered_model_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kiosk.models.manifest import default_models_dir

    src = default_models_dir()
    models = tmp_path / "models"
    shutil.copytree(src, models, ignore=shutil.ignore_patterns("*.tmp"))
    cfg = tmp_path / "k.yaml"
    cfg.write_text(f"data_dir: {tmp_path}\nmodels:\n  manifest: {models / 'manifest.yaml'}\n")
    sface = models / "sface_2021dec.onnx"
    data = bytearray(sface.read_bytes())
    data[len(data) // 2] ^= 0xFF
    sface.write_bytes(bytes(data))
    img = tmp_path / "x.png"
    cv2.imwrite(str(img), np.zeros((64, 64, 3), np.uint8))
    assert main(["--config", str(cfg), "identify", str(img)]) == ExitCode.MODEL
    err = capsys.readouterr().err
    assert "sface_2021dec.onnx" in err and "manifest expects" in err and "make models" in err
    sface.unlink()
    assert main(["--config", str(cfg), "verify", str(img), str(img)]) == ExitCode.MODEL
    err = capsys.readouterr().err
    assert "is missing" in err and "make models" in err and err.count("\n") == 1


def test_blazeface_tflite_detector_runs_the_whole_pipeline(tmp_path: Path, photos, capsys) -> None:
    cfg = tmp_path / "blaze.yaml"
    cfg.write_text(f"data_dir: {tmp_path}\nmodels:\n  detector: blazeface\n")
    assert main(["--config", str(cfg), "verify", str(photos["abel1"]), str(photos["abel4"]), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["verdict"] == "the same person" and r["models"]["detector"]["id"] == "blazeface"
    assert main(["--config", str(cfg), "enroll", "Colin", str(photos["colin1"])]) == 0
    capsys.readouterr()
    assert main(["--config", str(cfg), "identify", str(photos["colin2"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["match"] == "Colin"


@pytest.mark.slow
def test_eval_pairs_and_labels_on_real_photos(kiosk, faces_dir: Path, tmp_path: Path) -> None:
    lfw = faces_dir / "lfw"
    rows = (lfw / "pairs_dev_test.csv").read_text().splitlines()
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("\n".join(rows[:21] + rows[-20:]) + "\n")  # 20 genuine + 20 impostor pairs
    out_json = tmp_path / "eval.json"
    plot = tmp_path / "eval.png"
    code, out, err = kiosk(
        "eval", "--pairs", str(pairs), "--root", str(lfw), "--json", str(out_json), "--plot", str(plot),
        "--threshold", "0.4", "--no-cache",
    )  # fmt: skip
    assert code == 0, err
    assert "accuracy" in out and "TAR @ FAR 1e-2" in out
    r = json.loads(out_json.read_text())
    for key in ("n_pairs", "n_failed", "accuracy_mean", "accuracy_std", "threshold", "tar_at_far", "roc_auc",
                "seconds", "models", "at_threshold"):  # fmt: skip
        assert key in r, key
    assert r["n_pairs"] == 40 and r["accuracy_mean"] >= 0.95
    assert r["tar_at_far"]["1e-3"] is None  # 20 impostor pairs cannot estimate FAR 1e-3
    assert r["models"]["recognizer"]["id"] == "sface"
    assert cv2.imread(str(plot)) is not None
    labels = tmp_path / "labels.csv"
    lines = (lfw / "labels.csv").read_text().splitlines()
    keep = [ln for ln in lines[1:] if ln.split(",")[1] in ("Colin_Powell", "Abel_Pacheco", "AJ_Cook", "Amber_Tamblyn")]
    labels.write_text("path,identity\n" + "\n".join(keep[:30]) + "\n")
    code, _, err = kiosk("eval", "--labels", str(labels), "--root", str(lfw), "--json", str(out_json), "--no-cache")
    assert code == 0, err
    r = json.loads(out_json.read_text())
    assert r["n_images"] == 30 and r["rank1"] >= 0.9 and "fnmr_at_fmr" in r and "dir_at_fpir_1e-2" in r
    code, _, err = kiosk("eval", "--pairs", str(tmp_path / "nope.csv"))
    assert code == ExitCode.INPUT and "not found" in err
    # --detector / --recognizer pick other manifest entries; an unknown id is a model error naming the known ones.
    code, _, err = kiosk("eval", "--pairs", str(pairs), "--root", str(lfw), "--recognizer", "nope", "--no-cache")
    assert code == ExitCode.MODEL and "model 'nope' is not in" in err
    code, _, err = kiosk("eval", "--pairs", str(pairs), "--root", str(lfw), "--detector", "sface", "--no-cache")
    assert code == ExitCode.MODEL and "not a detect model" in err
    code, _, err = kiosk(
        "eval", "--pairs", str(pairs), "--root", str(lfw), "--detector", "blazeface", "--json", str(out_json),
        "--no-cache",
    )  # fmt: skip
    assert code == 0, err
    r = json.loads(out_json.read_text())
    assert r["models"]["detector"]["id"] == "blazeface" and r["config"]["detector"] == "blazeface"
    assert r["accuracy_mean"] >= 0.95


def test_enroll_rejects_the_odd_photo_out_and_caps_templates(kiosk, photos, faces_dir: Path, cfg_file: Path) -> None:
    colin = sorted((faces_dir / "lfw/images/Colin_Powell").glob("*.jpg"))[:5]
    code, out, err = kiosk("enroll", "Colin", *map(str, colin[:3]), str(photos["abel1"]), "--json")
    assert code == 0, err
    verdicts = {v["source"]: v for v in json.loads(out)["images"]}
    assert not verdicts["Abel_Pacheco_0001.jpg"]["accepted"]
    assert "does not look like the other images" in verdicts["Abel_Pacheco_0001.jpg"]["reason"]
    assert sum(v["accepted"] for v in verdicts.values()) == 3
    cfg_file.write_text(cfg_file.read_text() + "enroll:\n  max_templates: 4\n")
    code, out, err = kiosk("enroll", "Colin", *map(str, colin[3:5]), "--append", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["stored"] == 1 and r["person"]["templates"] == 4
    assert any("maximum of 4 templates" in v["reason"] for v in r["images"])
