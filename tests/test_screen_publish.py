"""kiosk.screen's state model and socket server: state at once / on change / keep-alive, preview encoded only while
watched, slow clients never hold the caller, stale sockets, permissions, errors contained in the thread."""

from __future__ import annotations

import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from kiosk.config import ScreenConfig, parse_config
from kiosk.door.decide import Decision, LivenessResult
from kiosk.door.track import Track
from kiosk.errors import ScreenError
from kiosk.screen import publish
from kiosk.screen.publish import ScreenServer
from kiosk.screen.state import (
    ScreenModel,
    capture_hint,
    guidance_code,
    outcome_of,
    prompt_code,
    reason_code,
    screen_box,
    shown_name,
)
from kiosk.testing import ManualClock
from kiosk.types import Face, QualityReport
from tests.helpers import wait_until
from tests.screen_kit import LineReader, connect, read_jpeg, short_dir


def _state(n: int = 0, **kw: Any) -> dict[str, Any]:
    return {"v": 1, "t": 0.0, "service": "ok", "faces": [{"track": n, "box": [0, 0, 1, 1], "state": "checking"}],
            "prompt": None, "result": None, "capture": None, "fps": 9.0, **kw}  # fmt: skip


@pytest.fixture()
def rundir() -> Iterator[Path]:
    with short_dir() as d:
        yield d / "run"


@pytest.fixture()
def clock() -> ManualClock:
    return ManualClock(100.0)


@pytest.fixture()
def server(rundir: Path, clock: ManualClock) -> Iterator[ScreenServer]:
    s = ScreenServer(rundir, ScreenConfig(preview_width=160, preview_fps=10.0), clock=clock)
    s.update(_state())
    s.start()
    yield s
    s.stop()


# -- the state model -------------------------------------------------------------------------------------------


def _decision(
    outcome: str, person_id: int | None, name: str | None, liveness: str = "not_required", track: int = 2
) -> Decision:
    return Decision(outcome, track, person_id, name, 0.6, None, None, 0.47, 3, LivenessResult(liveness),
                    f"3 of 5 frames matched {name}", 0.0, 1.0)  # fmt: skip


def test_codes_and_names_map_the_loops_words() -> None:
    assert [prompt_code(p) for p in ("please blink", "please turn your head to your left")] == ["blink", "turn-left"]
    assert prompt_code("please turn your head to your right") == "turn-right" and prompt_code("dance") is None
    assert guidance_code(["face too small: 40 px < 80 px"]) == "come-closer"
    assert guidance_code(["head turned: yaw +40° beyond ±30°"]) == "look-at-camera"
    assert guidance_code(["head tilted up/down: pitch +30° beyond ±25°"]) == "look-at-camera"
    assert guidance_code(["too blurry: sharpness 3 < 40"]) == "hold-still"
    assert guidance_code(["too dark: brightness 10 < 40"]) is None
    assert capture_hint("turn your head a little to the left") == "turn-left"
    assert capture_hint("two faces: only one person in view please") == "one-person"
    assert [shown_name("Ada Lovelace", m) for m in ("full", "first", "none")] == ["Ada Lovelace", "Ada", None]
    granted = _decision("granted", 7, "Ada Lovelace")
    refused = _decision("denied", 7, "Ada Lovelace", liveness="fail")
    stranger = _decision("denied", None, None)
    assert [outcome_of(d) for d in (granted, refused, stranger)] == ["granted", "denied", "unknown"]
    assert [reason_code(d) for d in (granted, refused, stranger)] == ["", "liveness", "not-recognised"]


def test_boxes_are_fractions_of_the_preview_mirrored_when_asked() -> None:
    box = np.array([64.0, 48.0, 192.0, 240.0])
    assert screen_box(box, (480, 640, 3), mirror=False) == [0.1, 0.1, 0.2, 0.4]
    assert screen_box(box, (480, 640, 3), mirror=True) == [0.7, 0.1, 0.2, 0.4]
    assert screen_box(np.array([-10.0, -10.0, 700.0, 500.0]), (480, 640, 3), mirror=True) == [0.0, 0.0, 1.0, 1.0]


def _track(tid: int, width: float = 200.0) -> Track:
    face = Face(np.array([100.0, 100.0, 100.0 + width, 100.0 + width]), np.zeros((5, 2)), 0.9)
    return Track(tid, face, 0.0, 0.0)


def test_the_model_follows_tracks_prompts_and_results() -> None:
    cfg = parse_config({"screen": {"show_name": "first", "result_s": 2.0, "mirror": False}})
    m = ScreenModel(cfg, wall=lambda: 1000.0)
    small = QualityReport(False, ("face too small: 40 px < 80 px",), {"size_px": 40.0})
    good = QualityReport(True, (), {"size_px": 160.0})
    m.frame([_track(1, 30.0), _track(2)], {1: small, 2: good}, [], (480, 640, 3), 10.0)
    s = m.snapshot()
    assert [(f["track"], f["state"]) for f in s["faces"]] == [(1, "detected"), (2, "checking")]
    assert s["prompt"] == {"track": 1, "code": "come-closer", "remaining_s": None, "total_s": None}
    m.challenge(2, "please blink", 10.0)
    m.frame([_track(2)], {2: good}, [], (480, 640, 3), 11.5)
    s = m.snapshot()
    assert s["faces"][0]["state"] == "challenge"
    assert s["prompt"] == {"track": 2, "code": "blink", "remaining_s": 3.5, "total_s": 5.0}
    # A sequence: the hold between two prompts has no countdown; the next prompt gets a fresh one.
    m.challenge(2, "please hold still", 11.6)
    m.frame([_track(2)], {2: good}, [], (480, 640, 3), 11.7)
    assert m.snapshot()["prompt"] == {"track": 2, "code": "hold-still", "remaining_s": None, "total_s": None}
    m.challenge(2, "please turn your head to your left", 11.8)
    m.frame([_track(2)], {2: good}, [], (480, 640, 3), 11.9)
    assert m.snapshot()["prompt"] == {"track": 2, "code": "turn-left", "remaining_s": 4.9, "total_s": 5.0}
    m.frame([_track(2)], {2: good}, [_decision("granted", 7, "Ada Lovelace")], (480, 640, 3), 12.0)
    s = m.snapshot()
    assert s["faces"][0]["state"] == "granted" and s["prompt"] is None
    assert s["result"] == {"seq": 1, "outcome": "granted", "name": "Ada", "reason": "", "t": 1000.0}
    m.frame([_track(3)], {}, [_decision("denied", None, "Bob", track=3)], (480, 640, 3), 13.0)
    r = m.snapshot()["result"]
    assert r["seq"] == 2 and r["outcome"] == "unknown" and r["name"] is None  # a name only for a grant
    m.idle(15.5)
    assert m.snapshot()["result"] is None, "kept screen.result_s, then gone"


# -- the server ------------------------------------------------------------------------------------------------


def test_state_at_once_on_change_and_as_keep_alive(server: ScreenServer, clock: ManualClock) -> None:
    with connect(server.paths["state.sock"]) as s:
        lines = LineReader(s)
        first = lines.next()
        assert first["faces"][0]["track"] == 0 and first["service"] == "ok" and isinstance(first["seq"], int)
        clock.advance(0.1)
        server.update(_state(1))
        changed = lines.until(lambda st: st["faces"][0]["track"] == 1)
        assert changed["seq"] > first["seq"]
        clock.advance(1.0)  # nothing changed for a second: the same state again, as a keep-alive
        alive = lines.next()
        assert alive["faces"] == changed["faces"] and alive["seq"] > changed["seq"]


def test_changes_are_rate_limited_and_the_newest_wins(server: ScreenServer, clock: ManualClock) -> None:
    with connect(server.paths["state.sock"]) as s:
        lines = LineReader(s)
        lines.next()
        clock.advance(0.1)
        server.update(_state(1))
        lines.until(lambda st: st["faces"][0]["track"] == 1)
        for n in range(2, 12):  # ten changes within the same instant: at most 20 lines a second
            server.update(_state(n))
        clock.advance(0.06)
        newest = lines.next()
        assert newest["faces"][0]["track"] == 11


def test_preview_is_encoded_only_while_watched_mirrored_and_reduced(server: ScreenServer, clock: ManualClock) -> None:
    image = np.zeros((480, 640, 3), np.uint8)
    image[:, :320] = 255  # the left half white: mirrored, the preview's right half is
    for _ in range(5):
        clock.advance(0.2)
        server.offer_frame(image)
    assert server.encoded == 0 and server.offered == 0, "nobody watches: nothing kept, nothing encoded"
    with connect(server.paths["preview.sock"]) as s:
        assert wait_until(lambda: server.watchers == 1)
        clock.advance(0.2)
        server.offer_frame(image)
        jpeg = read_jpeg(s)
        preview = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert preview.shape == (120, 160, 3)
        assert preview[:, :70].mean() < 30 and preview[:, 90:].mean() > 220
        clock.advance(0.01)  # within 1 / preview_fps: not encoded again
        server.offer_frame(image)
        assert server.encoded == 1
    assert wait_until(lambda: server.watchers == 0)
    clock.advance(1.0)
    server.offer_frame(image)
    assert server.encoded == 1 and server._frame is None


def test_a_client_that_never_reads_does_not_hold_the_loop(server: ScreenServer, clock: ManualClock) -> None:
    server.cfg = ScreenConfig(preview_width=1920, preview_fps=30.0, preview_quality=95)
    rng = np.random.default_rng(0)
    noisy = [rng.integers(0, 255, (1080, 1920, 3), dtype=np.uint8) for _ in range(3)]
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(str(server.paths["preview.sock"]))
    state_stuck = connect(server.paths["state.sock"])  # never read either
    try:
        assert wait_until(lambda: server.watchers == 1)
        for i in range(400):  # the loop's calls: each returns at once, whatever the client does
            clock.advance(0.05)
            server.offer_frame(noisy[i % 3])
            server.update(_state(i))
            if server.dropped >= 3:
                break
            wait_until(lambda n=server.encoded: server.encoded > n, timeout=0.5)  # let the thread encode
        assert server.dropped >= 3, "newer frames replaced the unsent ones, and were counted"
        assert server.watchers == 1, "the slow client is still served (the newest frame waits for it)"
        assert server.sent <= 1 and server.encoded >= server.dropped
        assert server.errors == 0
    finally:
        stuck.close()
        state_stuck.close()


def test_a_state_client_that_never_reads_is_dropped(
    server: ScreenServer, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publish, "STATE_BACKLOG", 16 * 1024)
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(str(server.paths["state.sock"]))
    try:
        big = _state(0, capture={"pad": "x" * 2000})
        for n in range(2000):
            clock.advance(0.06)
            server.update({**big, "faces": [{"track": n, "box": [0, 0, 1, 1], "state": "checking"}]})
            if server.clients_dropped:
                break
            wait_until(lambda n=server.state_lines: server.state_lines > n, timeout=0.2)
        assert server.clients_dropped == 1 and server.errors == 0
    finally:
        stuck.close()


def test_permissions_and_sockets_removed_on_stop(rundir: Path) -> None:
    rundir.mkdir(mode=0o777)
    os.chmod(rundir, 0o777)
    s = ScreenServer(rundir, ScreenConfig())
    s.start()
    try:
        assert stat.S_IMODE(rundir.stat().st_mode) == 0o750
        for path in s.paths.values():
            st = path.lstat()
            assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660, path
    finally:
        s.stop()
    assert not any(p.exists() for p in s.paths.values())
    s.stop()  # safe twice


def test_missing_parents_are_made_private(rundir: Path) -> None:
    deep = rundir / "data" / "run"
    with ScreenServer(deep, ScreenConfig()):
        assert stat.S_IMODE((rundir / "data").stat().st_mode) == 0o700


def test_stale_sockets_are_removed_live_ones_refused(rundir: Path) -> None:
    rundir.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(rundir / "state.sock"))
    stale.close()  # a crashed run: the file stays, nobody listens
    first = ScreenServer(rundir, ScreenConfig())
    first.update(_state())
    with first:
        with connect(first.paths["state.sock"]) as c:
            assert LineReader(c).next()["service"] == "ok"
        with pytest.raises(ScreenError, match="another running door loop"):
            ScreenServer(rundir, ScreenConfig()).start()
        assert first.paths["state.sock"].exists(), "the running loop's sockets are left alone"
    (rundir / "preview.sock").write_text("not a socket")
    with pytest.raises(ScreenError, match="not a socket"):
        ScreenServer(rundir, ScreenConfig()).start()


def test_too_long_a_socket_path_is_a_clear_error(rundir: Path) -> None:
    with pytest.raises(ScreenError, match="too long for a Unix socket"):
        ScreenServer(rundir / ("x" * 120), ScreenConfig()).start()


def test_an_error_in_the_thread_is_contained(server: ScreenServer, clock: ManualClock) -> None:
    def broken(_image: Any) -> bytes:
        raise RuntimeError("encoder exploded")

    server._encode = broken
    with connect(server.paths["preview.sock"]) as p, connect(server.paths["state.sock"]) as s:
        assert wait_until(lambda: server.watchers == 1)
        clock.advance(0.2)
        server.offer_frame(np.zeros((48, 64, 3), np.uint8))
        assert wait_until(lambda: server.errors >= 1)
        assert server._thread is not None and server._thread.is_alive()
        lines = LineReader(s)
        lines.next()
        clock.advance(0.1)
        server.update(_state(5))
        assert lines.until(lambda st: st["faces"][0]["track"] == 5)
        p.close()
    assert threading.active_count() >= 1
