"""`kiosk run`, `kiosk events` and `kiosk enroll --camera` through the real CLI."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from kiosk.errors import ExitCode
from tests.helpers import config_file, run_cli

W, H = 640, 480


def _scene(photo: np.ndarray, dx: int = 0) -> np.ndarray:
    canvas = np.full((H, W, 3), 110, np.uint8)
    img = cv2.resize(photo, None, fx=1.5, fy=1.5)
    h, w = img.shape[:2]
    x, y = (W - w) // 2 + dx, (H - h) // 2
    canvas[y : y + h, x : x + w] = img
    return canvas


def _video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (W, H))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    return path


@pytest.fixture()
def cfg_file(tmp_path: Path) -> Path:
    return config_file(
        tmp_path,
        "door:\n  driver: simulated\n  pulse_s: 0.2\ncamera:\n  loop_replay: true\n"
        # Still photos replayed: these tests are about the CLI and the door; liveness has its own tests.
        "liveness:\n  mode: off\n",
    )


def test_enroll_from_camera_collects_several_poses(cfg_file: Path, faces_dir: Path, tmp_path: Path, capsys) -> None:
    colin = sorted((faces_dir / "lfw/images/Colin_Powell").glob("*.jpg"))[:6]
    frames = [_scene(cv2.imread(str(p)), dx) for p in colin for dx in (0, 4, 8, 12)]
    clip = _video(tmp_path / "enrol.avi", frames)
    code, out, err = run_cli(cfg_file, capsys, "enroll", "Colin", "--camera", "--source", str(clip), "--frames", "3",
                            "--timeout", "60", "--json")  # fmt: skip
    assert code == 0, err
    r = json.loads(out)
    assert r["stored"] >= 2 and all(v["source"].startswith("camera frame") for v in r["images"])


def test_enroll_from_camera_explains_rejections(cfg_file: Path, faces_dir: Path, tmp_path: Path, capsys) -> None:
    a = cv2.imread(str(faces_dir / "lfw/images/Colin_Powell/Colin_Powell_0001.jpg"))
    b = cv2.imread(str(faces_dir / "lfw/images/Abel_Pacheco/Abel_Pacheco_0001.jpg"))
    two = np.full((H, W, 3), 110, np.uint8)
    two[100:350, 40:290] = a
    two[100:350, 350:600] = b
    clip = _video(tmp_path / "two.avi", [two] * 8 + [np.full((H, W, 3), 110, np.uint8)] * 4)
    cfg_file.write_text(cfg_file.read_text().replace("loop_replay: true", "loop_replay: false"))
    code, _, err = run_cli(cfg_file, capsys, "enroll", "Nobody", "--camera", "--source", str(clip), "--timeout", "20")
    assert code == ExitCode.NO_FACE
    assert "two faces" in err and "no face in view" in err
    code, _, err = run_cli(cfg_file, capsys, "enroll", "Nobody", str(clip), "--camera")
    assert code == ExitCode.INPUT and "not both" in err


def test_run_stops_on_sigterm_with_the_door_locked_and_events_recorded(
    cfg_file: Path, faces_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lfw = faces_dir / "lfw/images"
    colin = sorted((lfw / "Colin_Powell").glob("*.jpg"))
    assert run_cli(cfg_file, capsys, "enroll", "Colin", str(colin[0]), str(colin[1]))[0] == 0
    frames = [_scene(cv2.imread(str(colin[3])), 2 * i) for i in range(12)]
    frames += [np.full((H, W, 3), 110, np.uint8)] * 15
    frames += [_scene(cv2.imread(str(lfw / "Abel_Pacheco/Abel_Pacheco_0001.jpg")), 2 * i) for i in range(12)]
    frames += [np.full((H, W, 3), 110, np.uint8)] * 15
    clip = _video(tmp_path / "door.avi", frames)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiosk", "--config", str(cfg_file), "--log-level", "INFO", "run", "--source", str(clip)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        seen = ""
        assert proc.stdout is not None
        while "denied" not in seen and time.monotonic() < deadline and proc.poll() is None:
            seen += proc.stdout.readline()
        assert "granted" in seen and "denied" in seen, seen
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "received SIGTERM: stopping" in err
    assert "door: UNLOCK" in err and err.rstrip().splitlines()[-1] != "door: UNLOCK"
    last_door = [ln for ln in err.splitlines() if "door: " in ln][-1]
    assert "LOCKED" in last_door, "the relay is locked when the process ends"
    # Logs carry decisions, never biometrics: no run of numbers that could be an embedding.
    assert not re.search(r"(-?\d+\.\d+[,\s]+){16,}", err), "something vector-like was logged"
    assert any(ln for ln in err.splitlines() if "decision outcome=granted" in ln and "name=Colin" in ln)
    # The decisions are in the event log, in every output format.
    code, out, _ = run_cli(cfg_file, capsys, "events", "--json")
    events = [e for e in json.loads(out) if e["kind"] == "access"]
    assert events[0]["outcome"] == "granted" and events[0]["person_name"] == "Colin"
    assert any(e["outcome"] == "denied" and e["person_name"] is None for e in events)
    code, out, _ = run_cli(cfg_file, capsys, "events", "--csv", "--person", "colin")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows and all(r["person_name"] == "Colin" for r in rows)
    code, out, _ = run_cli(cfg_file, capsys, "events", "--since", "1h")
    assert code == 0 and "granted" in out
    code, out, _ = run_cli(cfg_file, capsys, "events", "--since", "2999-01-01")
    assert code == 0 and out.strip() == "no events"


def test_run_refuses_a_missing_source_and_bad_driver(cfg_file: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(cfg_file, capsys, "run", "--source", str(tmp_path / "nope.mp4"))
    assert code == ExitCode.CONFIG and "camera.source" in err
    cfg_file.write_text(cfg_file.read_text().replace("driver: simulated", "driver: solenoid"))
    code, _, err = run_cli(cfg_file, capsys, "run")
    assert code == ExitCode.CONFIG and "door.driver" in err
