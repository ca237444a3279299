"""``kiosk bench``: the report's schema and consistency on a few real frames, the cold-start child, the errors.

The figures themselves are for a person to read on a quiet machine; nothing here asserts a speed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from kiosk.cli import main
from kiosk.errors import ExitCode
from kiosk.imageio import read_image
from kiosk.lab import bench, frames
from kiosk.models.manifest import load_manifest

STAGES = {"decode", "detect", "quality", "align", "embed", "match", "liveness"}
TOP_KEYS = {
    "end_to_end_ms",
    "fps",
    "stages_ms",
    "decision_latency_ms",
    "match_ms",
    "cold_start_s",
    "peak_rss_mb",
    "loop",
    "frames",
    "config",
    "machine",
    "versions",
}


@pytest.fixture(autouse=True)
def _no_user_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KIOSK_CONFIG", raising=False)


def _bench(tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[dict[str, Any], str]:
    out = tmp_path / "bench.json"
    rc = main(["bench", "--json", str(out), "--quiet", *argv])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    report: dict[str, Any] = json.loads(out.read_text())
    return report, printed


def _check_dist(d: dict[str, Any], n: int | None = None) -> None:
    assert d["n"] >= 1 if n is None else d["n"] == n
    assert 0 < d["median"] <= d["p95"]


def _check_report(r: dict[str, Any], frames: int, sizes: set[str]) -> None:
    assert r.keys() >= TOP_KEYS
    st = r["stages_ms"]
    assert set(st) == STAGES
    _check_dist(st["decode"], frames)
    _check_dist(st["detect"], frames)
    face_stages = [s for s in ("align", "quality", "embed", "match", "liveness") if isinstance(st[s], dict)]
    for s in face_stages:
        _check_dist(st[s], st["align"]["n"])  # every face frame went through each per-face stage once
    assert st["align"]["n"] <= frames
    by = r["end_to_end_ms_by_frame"]
    _check_dist(by["all"], frames)
    assert by["face"]["n"] + by["empty"]["n"] == frames
    assert r["end_to_end_ms"] == by["face"] and r["loop"]["frames_with_face"] == by["face"]["n"] >= 1
    # Face frames split by whether the recogniser ran (new or undecided tracks) or not (granted / decided tracks).
    assert by["face_embedded"]["n"] + by["face_not_embedded"]["n"] == by["face"]["n"]
    _check_dist(by["face_embedded"])
    floor = r["recognizer_floor"]
    threads = r["config"]["runtime"]["intra_op_threads"]
    assert floor["floor_ms"] == pytest.approx(1.14 / (78.0 * threads) * 1e3, abs=1e-3)
    assert floor["embed_ms_median"] == st["embed"]["median"]
    assert floor["ratio"] == pytest.approx(st["embed"]["median"] / floor["floor_ms"], rel=1e-3)
    _check_dist(r["end_to_end_ms"])
    assert r["fps"] > 0 and r["loop"]["frames"] == frames
    assert r["loop"]["stats"]["frames"] == frames  # the real DoorLoop processed every frame (lockstep)
    assert set(r["match_ms"]) == sizes
    for d in r["match_ms"].values():
        _check_dist(d)
    assert r["peak_rss_mb"] > 0
    lat = r["decision_latency_ms"]
    assert lat["n"] == lat["grants"] >= 1, "a member shown their own photo is let in"
    assert 0 < lat["median"] <= lat["p95"]
    assert r["frames"]["size"] == [640, 480] and r["frames"]["count"] == frames
    m = r["machine"]
    assert m["cpu"] and m["cores"] >= 1 and isinstance(m["flags"], list)
    assert len(m["loadavg_start"]) == 3 and len(m["loadavg_end"]) == 3
    assert {"python", "onnxruntime", "opencv", "numpy"} <= r["versions"].keys()
    assert r["config"]["models"]["recognizer"]["format"] in ("onnx", "tflite")


def test_bench_report_schema(faces_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r, printed = _bench(
        tmp_path, capsys, "--faces", str(faces_dir), "--frames", "24", "--gallery-sizes", "50,300", "--skip-cold-start"
    )
    _check_report(r, 24, {"50", "300"})
    # Defaults: active liveness measured as a stage and run in the loop; decision latency with it off (said so).
    assert r["loop"]["liveness"] == r["config"]["liveness"] == "active"
    assert isinstance(r["stages_ms"]["liveness"], dict)
    assert r["decision_latency_ms"]["liveness"].startswith("off (configured active")
    assert r["cold_start_s"] is None and r["cold_start"] is None
    off = r["end_to_end_ms_liveness_off"]  # the decision-latency run (liveness off) is reported too
    assert off["all"]["n"] == 24 and off["face"]["n"] == r["end_to_end_ms"]["n"]
    assert r["config"]["runtime"]["intra_op_threads"] == 2
    # With liveness off the member is granted and the granted track is not embedded again (with it active, a
    # still photo keeps its challenge pending: every frame is embedded).
    assert off["face_not_embedded"]["n"] >= 1 and off["face_embedded"]["n"] >= 1
    for word in ("detect", "embed", "end to end", "1:N match", "cold start: skipped", "peak RSS", "load", "floor"):
        assert word in printed


def test_bench_liveness_off_threads_and_source(
    faces_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --source folder (6 empty frames, then 8 of one face), liveness off and one thread, all as asked."""
    photo = read_image(faces_dir / "lfw" / "images" / "AJ_Cook" / "AJ_Cook_0001.jpg")
    src = tmp_path / "frames"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(14):
        frame = np.full((480, 640, 3), 110, np.uint8) if i < 6 else frames.compose(photo, rng, 1.7, (320.0, 240.0))
        cv2.imwrite(str(src / f"{i:03d}.png"), frame)
    cfg = tmp_path / "kiosk.yaml"
    cfg.write_text("liveness:\n  mode: 'off'\n")
    out = tmp_path / "bench.json"
    argv = ["--config", str(cfg), "bench", "--json", str(out), "--quiet", "--source", str(src), "--threads", "1"]
    rc = main([*argv, "--gallery-sizes", "20", "--skip-cold-start"])
    assert rc == 0
    r = json.loads(out.read_text())
    _check_report(r, 14, {"20"})
    assert r["stages_ms"]["liveness"] == "off"
    assert r["decision_latency_ms"]["liveness"] == "off (as configured)"
    assert r["end_to_end_ms_liveness_off"] is None  # the loop ran once: its liveness was already off
    assert r["end_to_end_ms_by_frame"]["face"]["n"] == 8 and r["end_to_end_ms_by_frame"]["empty"]["n"] == 6
    assert r["frames"]["origin"].startswith("--source") and r["frames"]["members_enrolled"] == 1
    assert r["decision_latency_ms"]["appearances"] == 1
    assert r["config"]["runtime"]["intra_op_threads"] == 1 and r["config"]["runtime"]["tflite_threads"] == 1


def test_cold_start_child(faces_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One frame; the cold start runs in a real `python -m kiosk bench --cold-start-child` process."""
    r, printed = _bench(tmp_path, capsys, "--faces", str(faces_dir), "--frames", "1", "--gallery-sizes", "10")
    cold = r["cold_start"]
    s = cold["since_launch_s"]
    assert r["cold_start_s"] == s["first_decision"]
    assert 0 < s["command_start"] <= s["models_warm"] <= s["first_decision"]
    assert cold["decision"] == "granted", "the enrolled member's frame is recognised in the fresh process"
    assert cold["frames_shown"] >= r["config"]["decision"]["frames_needed"]
    assert 0 < cold["peak_rss_mb_models_warm"] <= cold["peak_rss_mb"]
    assert "--cold-start-child" in cold["command"]
    assert "cold start:" in printed and "to the first decision" in printed


def test_no_faces_and_no_source_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KIOSK_TEST_DATA", str(tmp_path / "nowhere"))
    assert main(["bench", "--skip-cold-start"]) == ExitCode.INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "KIOSK_TEST_DATA" in err and "--source" in err and str(tmp_path / "nowhere") in err
    assert main(["bench", "--source", str(tmp_path / "missing.mp4")]) == ExitCode.INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--source" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["bench", "--source", str(empty)]) == ExitCode.INPUT
    assert "no frames" in capsys.readouterr().err


def test_help_documents_options_and_hides_the_child(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--json", "--frames", "--faces", "--source", "--threads", "--backend", "--detector", "--recognizer"):
        assert opt in text
    assert "--gallery-sizes" in text and "--skip-cold-start" in text and "KIOSK_TEST_DATA" in text
    assert "--cold-start-child" not in text and "--child-data" not in text


@pytest.mark.parametrize("bad", ["0,10", "ten", ""])
def test_bad_gallery_sizes_are_usage_errors(bad: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--gallery-sizes", bad])
    assert exc.value.code == ExitCode.USAGE


def test_backend_picks_the_variant_when_there_is_one() -> None:
    import dataclasses

    # A fresh checkout's manifest has no TFLite SFace (`make models-all` adds it): add the variant here.
    manifest = load_manifest()
    variant = dataclasses.replace(manifest.get("sface", task="embed"), id="sface_tflite", format="tflite")
    manifest = dataclasses.replace(manifest, models={**manifest.models, "sface_tflite": variant})
    assert bench.backend_model(manifest, "sface", "embed", "tflite") == "sface_tflite"
    assert bench.backend_model(manifest, "sface", "embed", "onnx") == "sface"
    assert bench.backend_model(manifest, "yunet", "detect", "tflite") == "yunet"  # no TFLite YuNet: kept


def test_bench_viewer_reports_fps_without_and_with_a_preview_client(
    faces_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--viewer`: alternating passes of the same frames; only the watched ones encode, and the client got every
    JPEG it was sent. The figures themselves are measured, not asserted."""
    argv = ("--faces", str(faces_dir), "--frames", "12", "--gallery-sizes", "50", "--skip-cold-start", "--viewer")
    r, printed = _bench(tmp_path, capsys, *argv)
    v = r["viewer"]
    assert [p["viewer"] for p in v["passes"]] == [False, True, False, True]
    for p in v["passes"]:
        assert p["frames"] == 12 and p["fps"] > 0
        if p["viewer"]:
            assert p["jpegs_encoded"] >= 1 and p["jpegs_received"] == p["jpegs_sent"] == p["jpegs_encoded"]
        else:
            assert p["jpegs_encoded"] == p["jpegs_sent"] == 0, "nobody watches: nothing is encoded"
    assert v["fps_without"] > 0 and v["fps_with"] > 0
    assert v["relative_drop"] == pytest.approx(1 - v["fps_with"] / v["fps_without"], abs=1e-3)
    assert v["preview"]["width"] == 480 and "screen viewer:" in printed
