"""The door loop end to end: real models, real LFW photos replayed as a camera, gpiozero's mock relay."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from kiosk.config import Config, parse_config
from kiosk.context import Context
from kiosk.door.decide import Decision
from kiosk.door.loop import DoorLoop, FrameErrorsExceeded
from kiosk.door.notify import Notifier
from kiosk.door.relay import open_door
from kiosk.door.service import run_kiosk
from kiosk.enroll import enroll

gpiozero = pytest.importorskip("gpiozero", reason="gpiozero (dev extra) is needed for the mock relay")
from gpiozero.pins.mock import MockFactory  # noqa: E402

W, H, FPS = 640, 480, 10
RELAY_PIN = 17
PULSE_S = 0.3


def _cfg(tmp_path: Path, **sections: dict[str, object]) -> Config:
    data: dict[str, object] = {
        "data_dir": str(tmp_path / "data"),
        "door": {"driver": "gpiozero", "relay_pin": RELAY_PIN, "pulse_s": PULSE_S, "max_pulse_s": 1.0},
        "decision": {"frames_needed": 3, "window": 5, "cooldown_s": 60.0, "track_max_age_s": 0.6},
        "camera": {"fps": FPS, "stall_timeout_s": 1.0, "reconnect_min_s": 0.1, "reconnect_max_s": 0.4},
        # These tests replay still photos: they test recognition and the door; liveness has its own tests.
        "liveness": {"mode": "off"},
    }
    data.update(sections)
    return parse_config(data)


def _scene(photo: np.ndarray, i: int, rng: np.random.Generator) -> np.ndarray:
    """The photo on a 640x480 wall, with hand-held jitter (a few px shift, a few % scale, light changes)."""
    canvas = np.full((H, W, 3), 110, np.uint8)
    scale = 1.4 * (1.0 + rng.uniform(-0.03, 0.03))
    img = cv2.resize(photo, None, fx=scale, fy=scale)
    img = cv2.convertScaleAbs(img, alpha=rng.uniform(0.85, 1.15))
    h, w = img.shape[:2]
    x = (W - w) // 2 + int(rng.integers(-6, 7)) + 2 * i
    y = (H - h) // 2 + int(rng.integers(-6, 7))
    canvas[y : y + h, x : x + w] = img
    return canvas


def _write_clip(folder: Path, segments: list[tuple[str, Path | None, int]]) -> None:
    """Write an image sequence: each segment shows one photo (or an empty wall) for n frames."""
    folder.mkdir()
    rng = np.random.default_rng(7)
    k = 0
    for _, photo_path, n in segments:
        photo = cv2.imread(str(photo_path)) if photo_path else None
        for i in range(n):
            frame = _scene(photo, i, rng) if photo is not None else np.full((H, W, 3), 110, np.uint8)
            cv2.imwrite(str(folder / f"frame_{k:04d}.png"), frame)
            k += 1


def _relay_timeline(factory: MockFactory) -> list[tuple[float, bool]]:
    """(seconds since the previous change, state) for every change of the relay pin."""
    return [(float(s.timestamp), bool(s.state)) for s in factory.pin(RELAY_PIN).states]


@pytest.mark.slow
def test_replay_grants_the_enrolled_person_once_and_denies_strangers(
    tmp_path: Path, faces_dir: Path, factory: MockFactory
) -> None:
    lfw = faces_dir / "lfw" / "images"
    colin = sorted((lfw / "Colin_Powell").glob("*.jpg"))
    cfg = _cfg(tmp_path)
    with Context(cfg) as ctx:
        enroll(ctx.pipeline, ctx.gallery, "Colin Powell", colin[:2])
    clip = tmp_path / "clip"
    _write_clip(
        clip,
        [
            ("empty", None, 5),
            ("colin, another photo", colin[3], 12),
            ("empty", None, 10),
            ("stranger", lfw / "Abel_Pacheco/Abel_Pacheco_0001.jpg", 12),
            ("empty", None, 10),
            ("colin again, inside the cooldown", colin[4], 12),
            ("empty", None, 10),
            ("stranger", lfw / "Amber_Tamblyn/Amber_Tamblyn_0001.jpg", 12),
            ("empty", None, 10),
        ],
    )
    decisions: list[tuple[Decision, str]] = []
    stats = run_kiosk(
        cfg, source=str(clip), pin_factory=factory, on_decision=lambda d, door: decisions.append((d, door))
    )
    assert stats.frames > 60, "the replay was processed"
    # Only frames that can change a decision are embedded: Colin's granted track and the denied strangers' tracks
    # (refreshed every embed_interval_s = 0.5 s at the clip's 10 fps) skip most of their frames.
    assert stats.embeddings_skipped > 0 and stats.embeddings < stats.faces
    granted = [d for d, _ in decisions if d.outcome == "granted"]
    denied = [d for d, _ in decisions if d.outcome == "denied"]
    assert [d.name for d in granted] == ["Colin Powell"]
    assert granted[0].frames_used >= 3 and granted[0].score is not None and granted[0].score >= 0.47
    assert len(denied) == 2 and all(d.person_id is None for d in denied)
    # The relay: off at start, exactly one pulse of the configured length, off at the end.
    timeline = _relay_timeline(factory)
    states = [s for _, s in timeline]
    assert states[0] is False and states[-1] is False
    assert states.count(True) == 1, timeline
    on = states.index(True)
    assert timeline[on + 1][1] is False, timeline
    pulse = timeline[on + 1][0]  # MockPin timestamps are the time since the previous change
    assert PULSE_S * 0.9 <= pulse < 1.0, timeline  # the configured pulse, never past max_pulse_s
    # Every decision is recorded; empty frames produce nothing.
    with Context(cfg) as ctx:
        events = ctx.gallery.events()
    assert [e["outcome"] for e in events if e["kind"] == "access"] == [d.outcome for d, _ in decisions]
    grant_event = next(e for e in events if e["outcome"] == "granted")
    assert grant_event["person_name"] == "Colin Powell" and grant_event["door_action"].startswith("pulse")
    assert grant_event["latency_ms"] is not None and grant_event["threshold"] == pytest.approx(0.47)


def test_frames_without_faces_produce_no_decision(tmp_path: Path, factory: MockFactory) -> None:
    clip = tmp_path / "clip"
    _write_clip(clip, [("empty", None, 15)])
    decisions: list[Decision] = []
    stats = run_kiosk(
        _cfg(tmp_path), source=str(clip), pin_factory=factory, on_decision=lambda d, _: decisions.append(d)
    )
    assert stats.frames == 15 and stats.faces == 0 and not decisions
    assert all(not s for _, s in _relay_timeline(factory))


def _frame_of(photo: Path) -> np.ndarray:
    return _scene(cv2.imread(str(photo)), 0, np.random.default_rng(0))


def test_camera_lost_mid_run_reconnects_and_the_door_stays_locked(
    tmp_path: Path, faces_dir: Path, factory: MockFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests import mjpeg_server

    lfw = faces_dir / "lfw" / "images"
    colin = sorted((lfw / "Colin_Powell").glob("*.jpg"))
    cfg = _cfg(tmp_path, camera={"stall_timeout_s": 0.5, "reconnect_min_s": 0.1, "reconnect_max_s": 0.3})
    with Context(cfg) as ctx:
        enroll(ctx.pipeline, ctx.gallery, "Colin Powell", colin[:2])
    # The "IP camera" first shows an empty wall; after the outage it shows Colin.
    wall = np.full((H, W, 3), 110, np.uint8)
    face = _frame_of(colin[3])
    showing = [wall]
    monkeypatch.setattr(mjpeg_server, "encode_index", lambda *_a, **_k: showing[0])
    server = mjpeg_server.MjpegServer(fps=15).start()
    sock_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(sock_path))
    listener.settimeout(0.05)
    loops: list[DoorLoop] = []
    decisions: list[Decision] = []
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["stats"] = run_kiosk(
                cfg,
                source=server.url,
                pin_factory=factory,
                notifier=Notifier(str(sock_path), watchdog_usec="200000"),
                on_decision=lambda d, _: decisions.append(d),
                started=loops.append,
            )
        except BaseException as exc:  # surfaced by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    messages: list[bytes] = []

    def pump(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with contextlib.suppress(TimeoutError):
                messages.append(listener.recv(256))

    try:
        deadline = time.monotonic() + 30
        while not loops and thread.is_alive() and time.monotonic() < deadline:
            pump(0.1)
        assert loops, f"the loop did not start: {result.get('error')}"
        loop = loops[0]
        while loop.stats.frames < 5 and time.monotonic() < deadline:
            pump(0.1)
        assert b"READY=1" in b"".join(messages)
        server.stop()  # the camera goes away
        while loop.camera.status()["state"] != "reconnecting" and time.monotonic() < deadline:
            pump(0.1)
        assert loop.camera.status()["state"] == "reconnecting"
        frames_during_outage = loop.stats.frames
        messages.clear()
        pump(1.0)
        assert b"WATCHDOG=1" in messages, "the loop keeps running (and pinging) while the camera is gone"
        assert loop.stats.frames == frames_during_outage
        assert not any(s for _, s in _relay_timeline(factory)), "the door stayed locked"
        showing[0] = face
        server = mjpeg_server.MjpegServer(port=server.port, fps=15).start()
        while not decisions and time.monotonic() < deadline:
            pump(0.1)
        assert loop.camera.status()["reconnects"] >= 1
        assert [d.outcome for d in decisions] == ["granted"] and decisions[0].name == "Colin Powell"
    finally:
        if loops:
            loops[0].stop()
        thread.join(30)
        server.stop()
        listener.close()
    assert not thread.is_alive()
    assert "error" not in result, result.get("error")
    timeline = _relay_timeline(factory)
    assert [s for _, s in timeline].count(True) == 1 and timeline[-1][1] is False


def test_relay_is_forced_off_when_the_loop_crashes(
    tmp_path: Path, factory: MockFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    clip = tmp_path / "clip"
    _write_clip(clip, [("empty", None, 5)])
    cfg = _cfg(tmp_path, safety={"max_frame_errors": 3})
    door = open_door(cfg.door, pin_factory=factory)
    door.pulse(1.0)  # the relay is on when the crash happens

    def boom(self: DoorLoop, frame: object) -> list[Decision]:
        raise RuntimeError("simulated crash in a stage")

    monkeypatch.setattr(DoorLoop, "process", boom)
    # Each failing frame is contained (relay off, frame dropped); max_frame_errors in a row stop the loop.
    with pytest.raises(FrameErrorsExceeded, match=r"3 consecutive frames failed.*simulated crash"):
        run_kiosk(cfg, source=str(clip), door=door)
    assert factory.pin(RELAY_PIN).state is False or factory.pin(RELAY_PIN).state == 0
    assert not door.unlocked
