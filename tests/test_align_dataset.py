"""``python -m tools align-dataset``: real unaligned LFW photos plus hostile files, through the kiosk's own pipeline."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from kiosk.lab.evaluate import read_labels
from kiosk.recognition.align import TEMPLATES
from kiosk.recognition.detect import select_faces
from kiosk.recognition.pipeline import Pipeline
from tools.__main__ import main as tools_main
from tools.train.align_dataset import Aligner

ROOT = Path(__file__).resolve().parents[1]
PEOPLE = ("Adrien_Brody", "Amelie_Mauresmo", "Ana_Palacio", "Andy_Roddick")
PHOTOS = 4
BAD_NAME = "bad\nname"


def _lfw(faces_dir: Path, name: str, i: int) -> Path:
    return faces_dir / "lfw" / "images" / name / f"{name}_{i:04d}.jpg"


def _write(path: Path, image: np.ndarray) -> None:
    ok, buf = cv2.imencode(path.suffix, image)
    assert ok
    path.write_bytes(buf.tobytes())


@pytest.fixture(scope="module")
def src(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 people x 4 real photos, plus one hostile file of each kind; see EXPECTED for what each must give."""
    root = tmp_path_factory.mktemp("align") / "src"
    for name in PEOPLE:
        (root / name).mkdir(parents=True)
        for i in range(1, PHOTOS + 1):
            shutil.copy(_lfw(faces_dir, name, i), root / name)
    adrien = _lfw(faces_dir, "Adrien_Brody", 1)
    (root / "Adrien_Brody" / "broken.jpg").write_bytes(adrien.read_bytes()[:3000])  # truncated JPEG
    (root / "Adrien_Brody" / "notes.txt").write_text("not a photo\n")
    (root / "Adrien_Brody" / ".DS_Store").write_bytes(b"\0\1")
    _write(root / "Ana_Palacio" / "grey.PNG", np.full((240, 320, 3), 128, np.uint8))  # no face, upper-case suffix
    shutil.copy(adrien, root / "Andy_Roddick" / "copy_of_adrien.jpg")  # the same file under another identity
    # Two people side by side: several faces.
    ana_img, adrien_img = cv2.imread(str(_lfw(faces_dir, "Ana_Palacio", 1))), cv2.imread(str(adrien))
    assert ana_img is not None and adrien_img is not None
    pair = np.hstack([ana_img, adrien_img])
    _write(root / "Ana_Palacio" / "pair.jpg", pair)
    # A face of ~28 px inside a grey frame: found, but below --min-face 40.
    small = cv2.resize(cv2.imread(str(_lfw(faces_dir, "Andy_Roddick", 4))), None, fx=0.3, fy=0.3)
    frame = np.full((250, 250, 3), 128, np.uint8)
    frame[90 : 90 + small.shape[0], 90 : 90 + small.shape[1]] = small
    _write(root / "Andy_Roddick" / "tiny.jpg", frame)
    # Blurred: a fine training face, but refused by the enrolment quality gate.
    blurred = cv2.GaussianBlur(cv2.imread(str(_lfw(faces_dir, "Amelie_Mauresmo", 1))), (21, 21), 0)
    _write(root / "Amelie_Mauresmo" / "blurred.jpg", blurred)
    (root / "Al_Sharpton").mkdir()  # a single photo: dropped by --min-images 2
    shutil.copy(_lfw(faces_dir, "Al_Sharpton", 1), root / "Al_Sharpton")
    bad = root / BAD_NAME  # Linux allows a newline in a folder name; a labels CSV must never see it
    bad.mkdir()
    for i in (1, 2):
        shutil.copy(_lfw(faces_dir, "Ana_Palacio", i), bad)
    (root / "loose.jpg").write_bytes(adrien.read_bytes())
    (root / "Adrien_Brody" / "tab\tname.jpg").write_bytes(adrien.read_bytes()[:-1])  # not CSV-safe as a label
    os.mkfifo(root / "Adrien_Brody" / "fifo.jpg")  # would block a naive open(); the reader refuses it
    # The same stem twice: Amelie_Mauresmo_0001.jpg and .png become ..._0001.jpg and ..._0001_png.jpg.
    amelie = cv2.imread(str(_lfw(faces_dir, "Amelie_Mauresmo", 1)))
    _write(root / "Amelie_Mauresmo" / "Amelie_Mauresmo_0001.png", amelie)
    (root / ".hidden_person").mkdir()
    return root


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = tools_main(["align-dataset", *argv, "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def _report(dst: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((dst / "align_report.json").read_text(encoding="utf-8"))
    return data


def _reasons(report: dict[str, Any]) -> dict[str, str]:
    return {d["path"]: d["reason"] for d in report["dropped"]}


@pytest.fixture(scope="module")
def aligned(src: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str, dict[str, Any]]:
    before = _snapshot(src)
    dst = tmp_path_factory.mktemp("out") / "dst"
    code = tools_main(["align-dataset", str(src), str(dst), "--no-progress"])
    assert _snapshot(src) == before, "align-dataset modified SRC"
    return dst, code, "", _report(dst)


def test_default_run_writes_aligned_crops_and_drops_each_hostile_file_with_its_reason(
    aligned: tuple[Path, int, str, dict[str, Any]],
) -> None:
    dst, code, _, report = aligned
    assert code == 0
    assert _reasons(report) == {
        "Adrien_Brody/broken.jpg": "unreadable",
        "Adrien_Brody/fifo.jpg": "unreadable",
        "Adrien_Brody/tab\tname.jpg": "bad_name",
        "Ana_Palacio/grey.PNG": "no_face",
        "Andy_Roddick/copy_of_adrien.jpg": "duplicate",
        "Andy_Roddick/tiny.jpg": "face_too_small",
        "Al_Sharpton/Al_Sharpton_0001.jpg": "too_few_images",
    }
    c = report["counts"]
    assert c["dropped"] == {
        "bad_name": 1,
        "duplicate": 1,
        "face_too_small": 1,
        "no_face": 1,
        "too_few_images": 1,
        "unreadable": 2,
    }
    assert c["ignored"] == {"hidden": 2, "not a photo (extension)": 1, "not in an identity folder": 1}
    assert c["identities_in"] == 5 and c["identities_out"] == 4 and c["identities_refused"] == 1
    # 16 LFW photos + the pair (largest face) + the blurred one + the PNG copy.
    assert c["faces_written"] == len(report["written"]) == PHOTOS * len(PEOPLE) + 3
    assert {"Amelie_Mauresmo/Amelie_Mauresmo_0001.jpg", "Amelie_Mauresmo/Amelie_Mauresmo_0001_png.jpg"} <= {
        r["path"] for r in report["written"]
    }
    assert c["photos_in"] == c["faces_written"] + sum(c["dropped"].values())
    assert c["several_faces"] >= 1  # at least the side-by-side pair
    assert report["duplicates"] == [{"kept": "Adrien_Brody", "dropped": "Andy_Roddick", "count": 1}]
    assert report["refused_identities"] == [
        {"name": BAD_NAME, "reason": "identity folder name holds a control character"}
    ]
    assert report["models"]["detector"]["id"] == "yunet" and len(report["models"]["detector"]["sha256"]) == 64
    assert report["models"]["template_of"]["id"] == "sface" and report["models"]["template"] == "arcface_112"
    # Nothing from the refused or dropped identities, nothing else in DST.
    assert not (dst / BAD_NAME).exists() and not (dst / "Al_Sharpton").exists()
    crops = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.jpg"))
    assert crops == sorted(r["path"] for r in report["written"])
    for rel in crops:
        image = cv2.imread(str(dst / rel))
        assert image is not None and image.shape == (112, 112, 3)


def test_labels_round_trip_through_kiosk_eval_reader(aligned: tuple[Path, int, str, dict[str, Any]]) -> None:
    dst, _, _, report = aligned
    labels = read_labels(dst / "labels.csv")
    assert {(x.path, x.identity) for x in labels} == {(r["path"], r["identity"]) for r in report["written"]}
    assert {x.identity for x in labels} == set(PEOPLE)
    assert all((dst / x.path).is_file() for x in labels)


def test_crops_are_aligned_faces_by_the_kiosk_embedder(
    aligned: tuple[Path, int, str, dict[str, Any]], pipeline: Pipeline
) -> None:
    dst, _, _, report = aligned
    rows = [r for r in report["written"] if r["source"].split("/")[1].startswith(r["identity"])]  # LFW originals
    emb = pipeline.embedder.embed([cv2.imread(str(dst / r["path"])) for r in rows])
    ids = np.array([r["identity"] for r in rows])
    sims = emb @ emb.T
    same = ids[:, None] == ids[None, :]
    off = ~np.eye(len(rows), dtype=bool)
    genuine, impostor = sims[same & off], sims[~same]
    assert len(genuine) and len(impostor)
    # Aligned faces: same-person cosines sit well above different-person ones (unaligned crops would not).
    assert genuine.mean() > impostor.mean() + 0.3
    assert np.median(genuine) > np.percentile(impostor, 95)


def test_crops_put_the_landmarks_on_the_template(
    aligned: tuple[Path, int, str, dict[str, Any]], pipeline: Pipeline
) -> None:
    """The detector, run again on each crop (padded), finds the five landmarks where the template puts them: a few
    px of detector jitter on aligned crops (centre crops of the same LFW photos are off by about 8 px)."""
    dst, _, _, report = aligned
    errors = []
    for rec in report["written"]:
        crop = cv2.imread(str(dst / rec["path"]))
        padded = cv2.copyMakeBorder(crop, 56, 56, 56, 56, cv2.BORDER_CONSTANT, value=(128, 128, 128))
        faces = select_faces(pipeline.detector.detect(padded), "largest", padded.shape)
        assert faces, rec["path"]
        errors.append(float(np.linalg.norm(faces[0].landmarks - 56 - TEMPLATES["arcface_112"].points, axis=1).mean()))
    assert np.median(errors) < 5.0, errors


def test_rerun_refuses_and_resume_does_no_extra_work(
    aligned: tuple[Path, int, str, dict[str, Any]], src: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dst, _, _, first = aligned
    code, _, err = _run(capsys, str(src), str(dst))
    assert code == 2 and "is not empty: --resume" in err and err.count("\n") == 1
    before = _snapshot(dst)
    code, out, _ = _run(capsys, str(src), str(dst), "--resume")
    assert code == 0 and "detected 0, carried over" in out
    again = _report(dst)
    assert again["counts"]["detected_this_run"] == 0
    # All but the duplicate and the bad name, decided again without reading a pixel.
    assert again["counts"]["carried_over"] == first["counts"]["photos_in"] - 2
    assert {k: v for k, v in again["counts"].items() if k not in ("detected_this_run", "carried_over")} == {
        k: v for k, v in first["counts"].items() if k not in ("detected_this_run", "carried_over")
    }
    crops_before = {k: v for k, v in before.items() if k.endswith(".jpg")}
    assert {k: v for k, v in _snapshot(dst).items() if k.endswith(".jpg")} == crops_before  # no crop rewritten
    # Other settings on resume: refused, DST untouched.
    code, _, err = _run(capsys, str(src), str(dst), "--resume", "--multi", "drop")
    assert code == 2 and "other settings (multi)" in err


def test_resume_after_a_photo_left_src_removes_its_crop(
    faces_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    for name in PEOPLE[:2]:
        (src / name).mkdir(parents=True)
        for i in (1, 2, 3):
            shutil.copy(_lfw(faces_dir, name, i), src / name)
    dst = tmp_path / "d"
    assert _run(capsys, str(src), str(dst))[0] == 0
    gone = "Adrien_Brody/Adrien_Brody_0003.jpg"
    assert (dst / gone).is_file()
    (src / gone).unlink()
    code, out, _ = _run(capsys, str(src), str(dst), "--resume")
    assert code == 0 and "detected 0, carried over 5" in out
    assert not (dst / gone).exists()
    assert len(read_labels(dst / "labels.csv")) == 5 == len(list(dst.rglob("*.jpg")))


def test_names_that_are_not_utf8_are_refused_and_reported(
    faces_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    (src / "Adrien_Brody").mkdir(parents=True)
    for i in (1, 2):
        shutil.copy(_lfw(faces_dir, "Adrien_Brody", i), src / "Adrien_Brody")
    photo = _lfw(faces_dir, "Adrien_Brody", 3).read_bytes()
    raw = os.fsencode(src)
    with open(raw + b"/Adrien_Brody/caf\xe9.jpg", "wb") as f:  # Latin-1 bytes: not a UTF-8 name
        f.write(photo)
    os.mkdir(raw + b"/Jos\xe9")
    dst = tmp_path / "d"
    code, out, _ = _run(capsys, str(src), str(dst))
    assert code == 0, out
    report = _report(dst)
    assert [d["reason"] for d in report["dropped"]] == ["bad_name"]
    assert [r["reason"] for r in report["refused_identities"]] == ["identity folder name is not valid UTF-8"]
    assert "refused identity 'Jos\\udce9'" in out
    assert len(read_labels(dst / "labels.csv")) == 2


def test_multi_drop_and_quality_gate(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, str(src), str(tmp_path / "d"), "--multi", "drop", "--quality-gate")
    assert code == 0, out
    report = _report(tmp_path / "d")
    reasons = _reasons(report)
    assert reasons["Ana_Palacio/pair.jpg"] == "several_faces"
    assert reasons["Amelie_Mauresmo/blurred.jpg"] == "quality"
    detail = {d["path"]: d["detail"] for d in report["dropped"]}
    assert "too blurry" in detail["Amelie_Mauresmo/blurred.jpg"]
    assert report["counts"]["dropped"]["several_faces"] == report["counts"]["several_faces"]
    assert f"several_faces {report['counts']['several_faces']}" in out and "quality 1" in out


def test_force_replaces_only_the_previous_outputs(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dst = tmp_path / "d"
    assert _run(capsys, str(src), str(dst))[0] == 0
    first = {r["path"] for r in _report(dst)["written"]}
    (dst / "mine.txt").write_text("keep me\n")
    code, _, _ = _run(capsys, str(src), str(dst), "--force", "--min-images", "5")
    assert code == 0
    second = {r["path"] for r in _report(dst)["written"]}
    # Only Amelie_Mauresmo and Ana_Palacio keep 5 faces; the other two identities' old crops are removed.
    assert {p.split("/")[0] for p in second} == {"Amelie_Mauresmo", "Ana_Palacio"} and second < first
    assert {p.relative_to(dst).as_posix() for p in dst.rglob("*.jpg")} == second
    assert (dst / "mine.txt").read_text() == "keep me\n"


def test_a_hand_edited_report_cannot_make_force_delete_outside_dst(
    faces_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    (src / "Adrien_Brody").mkdir(parents=True)
    for i in (1, 2):
        shutil.copy(_lfw(faces_dir, "Adrien_Brody", i), src / "Adrien_Brody")
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"keep")
    dst = tmp_path / "d"
    dst.mkdir()
    hostile = {
        "tool": "align-dataset",
        "settings": [],
        "written": [{"path": "../outside.jpg"}, {"path": str(outside)}, "junk", {"path": None}],
        "dropped": 7,
    }
    (dst / "align_report.json").write_text(json.dumps(hostile))
    code, _, err = _run(capsys, str(src), str(dst), "--resume")
    assert code == 2 and "other settings" in err and err.count("\n") == 1
    code, _, _ = _run(capsys, str(src), str(dst), "--force")
    assert code == 0 and outside.read_bytes() == b"keep"
    assert len(read_labels(dst / "labels.csv")) == 2
    (dst / "align_report.json").write_text("{")  # unreadable: --resume refuses, --force replaces it
    assert _run(capsys, str(src), str(dst), "--resume")[0] == 2
    assert _run(capsys, str(src), str(dst), "--force")[0] == 0
    assert _report(dst)["counts"]["faces_written"] == 2


def test_inline_150_template_of_another_recogniser(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = yaml.safe_load((ROOT / "models" / "manifest.yaml").read_text())
    for entry in manifest["models"].values():
        entry["file"] = str(ROOT / "models" / entry["file"])
    points = (TEMPLATES["arcface_112"].points * (150 / 112)).tolist()
    manifest["models"]["sface150"] = {
        **manifest["models"]["sface"],
        "align_template": {"size": [150, 150], "points": points},
    }
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    dst = tmp_path / "d"
    code, _, err = _run(
        capsys, str(src), str(dst), "--manifest", str(tmp_path / "manifest.yaml"), "--recognizer", "sface150"
    )
    assert code == 0, err
    report = _report(dst)
    assert report["models"]["template_of"]["id"] == "sface150" and report["models"]["template"] == "inline"
    assert report["settings"]["template_size"] == [150, 150]
    shapes = {cv2.imread(str(dst / r["path"])).shape for r in report["written"]}
    assert shapes == {(150, 150, 3)}


def test_interrupt_writes_what_was_done_and_resume_finishes(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Aligner.process
    calls = {"n": 0}

    def stop_on_tenth(self: Aligner, photo: Any, sha: str | None) -> Any:
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return real(self, photo, sha)

    monkeypatch.setattr(Aligner, "process", stop_on_tenth)
    dst = tmp_path / "d"
    code, out, _ = _run(capsys, str(src), str(dst))
    assert code == 130 and "interrupted" in out
    partial = _report(dst)
    assert partial["interrupted"] is True
    done_ids = {r["identity"] for r in partial["written"]}
    # Sorted: Adrien_Brody (6 photos read: calls 1-6, and the bad name), Al_Sharpton (1: dropped, too few), stopped
    # inside Amelie_Mauresmo.
    assert done_ids == {"Adrien_Brody"}
    assert partial["counts"]["photos_in"] == 8 and partial["counts"]["identities_in"] == 2
    assert {x.identity for x in read_labels(dst / "labels.csv")} == done_ids
    monkeypatch.setattr(Aligner, "process", real)
    code, _, _ = _run(capsys, str(src), str(dst), "--resume")
    assert code == 0
    final = _report(dst)
    assert final["interrupted"] is False and final["counts"]["identities_out"] == 4
    assert final["counts"]["carried_over"] == partial["counts"]["photos_in"] - 1  # the bad name is decided again
    # Read this time: all but those carried over, the duplicate and the bad name.
    assert final["counts"]["detected_this_run"] == final["counts"]["photos_in"] - 7 - 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--quality", "0"], "--quality must be within 1..100"),
        (["--min-images", "0"], "--min-images must be at least 1"),
        (["--min-face", "0"], "--min-face must be at least 1 px"),
        (["--resume", "--force"], "--resume and --force exclude each other"),
    ],
)
def test_bad_options_are_one_line(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = _run(capsys, str(src), str(tmp_path / "d"), *argv)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "d").exists()


def test_bad_src_and_dst(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, str(tmp_path / "nope"), str(tmp_path / "d"))
    assert code == 2 and "not found" in err
    (tmp_path / "file.jpg").write_bytes(b"x")
    code, _, err = _run(capsys, str(tmp_path / "file.jpg"), str(tmp_path / "d"))
    assert code == 2 and "is not a folder" in err
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(src / "loose.jpg", flat)
    code, _, err = _run(capsys, str(flat), str(tmp_path / "d"))
    assert code == 2 and "no identity sub-folders" in err
    code, _, err = _run(capsys, str(src), str(src / "out"))
    assert code == 2 and "must be outside SRC" in err
    code, _, err = _run(capsys, str(src / "Adrien_Brody"), str(src.parent))
    assert code == 2 and "must be outside SRC" in err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    code, _, err = _run(capsys, str(src), str(tmp_path / "full"), "--resume")
    assert code == 2 and "no align_report.json to resume from" in err
    (tmp_path / "full" / "align_report.json").write_text("{")
    code, _, err = _run(capsys, str(src), str(tmp_path / "full"), "--resume")
    assert code == 2 and "cannot be read (JSONDecodeError): use --force" in err
    assert not (src / "out").exists()


def test_every_face_refused_is_an_error_with_a_report(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dst = tmp_path / "d"
    code, out, err = _run(capsys, str(src), str(dst), "--min-face", "400")
    assert code == 1 and "nothing written" in err
    assert _report(dst)["counts"]["faces_written"] == 0
    assert "face_too_small" in out
    code, _, _ = _run(capsys, str(src), str(tmp_path / "e"), "--max-pixels", "50000")  # LFW photos are 250x250
    assert code == 1
    assert set(_reasons(_report(tmp_path / "e")).values()) <= {"too_large", "duplicate", "unreadable", "bad_name"}
    assert "too_large" in _report(tmp_path / "e")["counts"]["dropped"]


def test_unknown_recognizer_is_one_line(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, str(src), str(tmp_path / "d"), "--recognizer", "no_such_model")
    assert code != 0 and "no_such_model" in err and err.count("\n") == 1
    assert not (tmp_path / "d").exists()


def test_help_names_the_policies(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        tools_main(["align-dataset", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--multi", "--min-face", "--min-images", "--quality-gate", "--resume", "--force", "--recognizer"):
        assert option in out


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_only(
    faces_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    (src / "Adrien_Brody").mkdir(parents=True)
    for i in (1, 2):
        shutil.copy(_lfw(faces_dir, "Adrien_Brody", i), src / "Adrien_Brody")
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert tools_main(["align-dataset", str(src), str(tmp_path / "a")]) == 0
    assert "2/2" in terminal.getvalue() and "photo" in terminal.getvalue()
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert tools_main(["align-dataset", str(src), str(tmp_path / "b"), "--no-progress"]) == 0
    assert terminal.getvalue() == ""
    monkeypatch.undo()
    assert tools_main(["align-dataset", str(src), str(tmp_path / "c")]) == 0  # not a terminal: no bar
    assert capsys.readouterr().err == ""
