"""kiosk.door.camera with real media and no camera: MJPG video files, PNG folders and patterns written by OpenCV, an
MJPEG-over-HTTP "IP camera" on 127.0.0.1 that is killed and restarted, and ``kiosk.testing.ScriptedSource`` for the
timing rules.

Every frame carries its number as a block code (``mjpeg_server.encode_index``) so order and identity are checked on
the pixels. Every camera, server and thread a test starts is closed by a fixture finaliser.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from kiosk.config import CameraConfig
from kiosk.door.camera import (
    Camera,
    Frame,
    ImageDirSource,
    OpenCVSource,
    PiCameraSource,
    VideoFileSource,
    open_source,
    safe_url,
)
from kiosk.errors import ConfigError, HardwareError
from kiosk.testing import ManualClock, ScriptedSource, ScriptItem
from tests.helpers import no_new_threads, wait_until
from tests.mjpeg_server import MjpegServer, decode_index, encode_index

N_FRAMES = 40
FAST = {"stall_timeout_s": 0.3, "reconnect_min_s": 0.05, "reconnect_max_s": 0.2}


def cfg(**kw: Any) -> CameraConfig:
    return CameraConfig(**{**FAST, **kw})


def drain(cam: Camera, timeout: float = 2.0) -> list[Frame]:
    """Take frames until the camera has none for ``timeout`` (or it ended)."""
    frames = []
    while (f := cam.latest(timeout)) is not None:
        frames.append(f)
    return frames


# -- media and fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> Iterator[None]:
    """Every thread a test starts (camera readers, HTTP server and handlers) is ended by that test."""
    with no_new_threads(join_timeout=2.0):
        yield


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 frames, 320x240, MJPG in AVI at 50 fps: frame i shows the number i."""
    path = tmp_path_factory.mktemp("media") / "door.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 50.0, (320, 240))
    assert writer.isOpened()
    for i in range(N_FRAMES):
        writer.write(encode_index(i))
    writer.release()
    return path


def write_pngs(folder: Path, n: int, name: str = "frame_{:04d}.png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name.format(i) for i in range(n)]
    for i, p in enumerate(paths):
        assert cv2.imwrite(str(p), encode_index(i, 64 * 4, 48 * 2))
    return paths


@pytest.fixture
def cameras() -> Iterator[Callable[..., Camera]]:
    """Make started cameras; every one is closed (and its thread joined) at the end of the test."""
    made: list[Camera] = []

    def make(source: Any, config: CameraConfig, start: bool = True, **kw: Any) -> Camera:
        cam = Camera(source, config, **kw)
        made.append(cam)
        if start:
            cam.start()
        return cam

    yield make
    for cam in made:
        cam.close()
        assert cam._thread is None or not cam._thread.is_alive()


@pytest.fixture
def server() -> Iterator[MjpegServer]:
    srv = MjpegServer(fps=30.0).start()
    yield srv
    srv.stop()


def numbered(frames_per_open: int = 10**9, then: str = "none") -> Callable[[int], Iterator[ScriptItem]]:
    """A live camera's script per connection: ``frames_per_open`` frames showing the open() call's number, then no
    frame (a stall) or, with ``then="raise"``, a failing read (unplugged)."""

    def connection(n: int) -> Iterator[ScriptItem]:
        for _ in range(frames_per_open):
            yield encode_index(n, 256, 48)
        if then == "raise":
            yield HardwareError("read failed (unplugged)")

    return connection


def fake_source(opens: list[bool] | None = None, frames_per_open: int = 10**9, then: str = "none") -> ScriptedSource:
    """A live source named "fake" (a read takes 2 ms); ``opens`` says per open() call whether it succeeds (past the
    list every open fails)."""
    return ScriptedSource(numbered(frames_per_open, then), name="fake", live=True, opens=opens, read_delay_s=0.002)


# -- the spec table ----------------------------------------------------------------------------------------------


def test_spec_table(tmp_path: Path, video: Path) -> None:
    c = CameraConfig()
    write_pngs(tmp_path / "seq", 3)
    cases: list[tuple[str, type, bool]] = [
        ("0", OpenCVSource, True),
        ("/dev/video3", OpenCVSource, True),
        ("/dev/v4l/by-id/usb-Logitech_C920-video-index0", OpenCVSource, True),
        ("rtsp://admin:s3cret@10.0.0.5:554/stream1", OpenCVSource, True),
        ("https://cam.local/video.mjpg?token=abc", OpenCVSource, True),
        ("tcp://127.0.0.1:5000", OpenCVSource, True),
        (str(video), VideoFileSource, False),
        (str(tmp_path / "seq"), ImageDirSource, False),
        (str(tmp_path / "seq" / "frame_%04d.png"), ImageDirSource, False),
        ("picamera", PiCameraSource, True),
    ]
    for spec, kind, live in cases:
        src = open_source(spec, c)
        assert type(src) is kind, spec
        assert src.live is live, spec
        src.close()  # safe before open
    index, dev = open_source("0", c), open_source("/dev/video3", c)
    assert isinstance(index, OpenCVSource) and isinstance(dev, OpenCVSource)
    assert (index.target, index.backend, index.name) == (0, cv2.CAP_V4L2, "/dev/video0")
    assert (dev.target, dev.backend) == ("/dev/video3", cv2.CAP_V4L2)
    rtsp = open_source(" rtsp://admin:s3cret@10.0.0.5:554/stream1 ", c)
    assert isinstance(rtsp, OpenCVSource) and rtsp.backend == cv2.CAP_FFMPEG
    assert rtsp.name == "rtsp://10.0.0.5:554/stream1" and "s3cret" not in rtsp.name and "admin" not in rtsp.name
    assert safe_url("https://cam.local/video.mjpg?token=abc") == "https://cam.local/video.mjpg?..."


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("/nonexistent/door.mp4", r"camera\.source: '/nonexistent/door.mp4' does not exist; expected .*video file"),
        ("", "camera.source: '' does not exist"),
        ("ftp://user:pw@host/x.mp4", r"camera\.source: unsupported URL scheme in ftp://host/x.mp4"),
        ("{tmp}/empty", "camera.source: no .* images found"),
        ("{tmp}/none_%04d.png", "camera.source: no .* images found"),
        ("{tmp}/photo.png", "is a single image"),
        ("{tmp}/notes.txt", "is not a video OpenCV can read"),
    ],
)
def test_bad_specs_are_config_errors(tmp_path: Path, spec: str, match: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a video\n")
    cv2.imwrite(str(tmp_path / "photo.png"), encode_index(1))
    with pytest.raises(ConfigError, match=match) as err:
        open_source(spec.format(tmp=tmp_path), CameraConfig())
    assert "\n" not in str(err.value)
    assert "s3cret" not in str(err.value) and "pw@" not in str(err.value)


def test_bad_fourcc_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"camera\.fourcc: must be 4 characters"):
        open_source("0", CameraConfig(fourcc="MJPEG"))


def test_missing_devices_fail_to_open_with_one_line() -> None:
    for spec in ("/dev/video3", "http://127.0.0.1:1/stream.mjpg"):
        src = open_source(spec, cfg())
        with pytest.raises(HardwareError, match="cannot open") as err:
            src.open()
        assert "\n" not in str(err.value)
        src.close()


def test_picamera_without_picamera2_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import picamera2 -> ImportError
    src = open_source("picamera", CameraConfig())
    with pytest.raises(HardwareError, match=r"needs picamera2: sudo apt install python3-picamera2 \(Raspberry Pi OS\)"):
        src.open()
    src.close()


def test_picamera_reads_frames_through_picamera2(monkeypatch: pytest.MonkeyPatch, cameras: Any) -> None:
    """A stand-in picamera2 module: configuration asked for, XRGB frames cut to BGR, stop+close on close."""
    calls: list[Any] = []

    class Picamera2:
        def create_video_configuration(self, **kw: Any) -> dict[str, Any]:
            return kw

        def configure(self, config: dict[str, Any]) -> None:
            calls.append(config)

        def start(self) -> None:
            calls.append("start")

        def capture_array(self, name: str, wait: bool = True) -> str:
            return "job"

        def wait(self, job: str, timeout: float | None = None) -> np.ndarray:
            time.sleep(0.005)
            return np.dstack([encode_index(7, 256, 48), np.zeros((48, 256), np.uint8)])

        def stop(self) -> None:
            calls.append("stop")

        def close(self) -> None:
            calls.append("close")

    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=Picamera2))
    cam = cameras(open_source("picamera", cfg(width=256, height=48, fps=15.0)), cfg())
    frame = cam.latest(2.0)
    assert frame is not None and frame.image.shape == (48, 256, 3) and decode_index(frame.image) == 7
    cam.close()
    assert calls[0] == {"main": {"format": "RGB888", "size": (256, 48)}, "controls": {"FrameRate": 15.0}}
    assert calls[1:] == ["start", "stop", "close"]


# -- replays -----------------------------------------------------------------------------------------------------


def test_video_lockstep_delivers_every_frame_once_in_order_then_ends(video: Path, cameras: Any) -> None:
    c = cfg(replay_realtime=False)
    cam = cameras(open_source(str(video), c), c)
    frames = []
    while (f := cam.latest(2.0)) is not None:
        frames.append(f)
        if len(frames) % 10 == 0:
            time.sleep(0.05)  # a slow consumer: the reader waits instead of dropping
    assert [decode_index(f.image) for f in frames] == list(range(N_FRAMES))
    assert [f.index for f in frames] == list(range(N_FRAMES))
    assert all(f.image.shape == (240, 320, 3) and f.image.dtype == np.uint8 for f in frames)
    assert cam.source.fps == pytest.approx(50.0)
    assert cam.ended
    st = cam.status()
    assert (st["state"], st["frames"], st["dropped"], st["reconnects"]) == ("ended", N_FRAMES, 0, 0)
    t = time.monotonic()
    assert cam.latest(5.0) is None and time.monotonic() - t < 1.0  # ended: no waiting


def test_video_realtime_slow_consumer_gets_newest_frames(video: Path, cameras: Any) -> None:
    """Paced at the file's 50 fps, a consumer taking 10 fps sees the newest frame each time: drops, no backlog."""
    c = cfg(replay_realtime=True)
    cam = cameras(open_source(str(video), c), c)
    frames, ages = [], []
    while (f := cam.latest(2.0)) is not None:
        ages.append(time.monotonic() - f.t)
        frames.append(f)
        time.sleep(0.1)
    idx = [f.index for f in frames]
    assert [decode_index(f.image) for f in frames] == idx
    assert idx == sorted(set(idx)) and idx[-1] == N_FRAMES - 1  # newer each time; the last frame is delivered
    assert len(frames) < N_FRAMES / 2 and max(np.diff(idx)) > 1
    st = cam.status()
    assert st["state"] == "ended" and st["dropped"] == N_FRAMES - len(frames)
    assert 0 < st["fps"] <= 55.0  # measured over the last 30 frames read
    # a queue would make the age grow by ~0.08 s per call (to ~0.6 s); newest-only keeps it near one frame period
    assert max(ages) < 0.25, ages
    # paced, not read as fast as the disk allows: the rate between two delivered frames is at most the file's
    assert (idx[-1] - idx[0]) / (frames[-1].t - frames[0].t) <= 55.0


def test_loop_replay_rewinds(video: Path, cameras: Any) -> None:
    c = cfg(replay_realtime=False, loop_replay=True)
    cam = cameras(open_source(str(video), c), c)
    got = [decode_index(f.image) for f in (cam.latest(2.0) for _ in range(2 * N_FRAMES + 10)) if f is not None]
    assert got == [i % N_FRAMES for i in range(2 * N_FRAMES + 10)]
    assert not cam.ended and cam.status()["state"] == "ok"


def test_image_folder_skips_a_corrupt_file(tmp_path: Path, cameras: Any, caplog: pytest.LogCaptureFixture) -> None:
    paths = write_pngs(tmp_path / "seq", 12)
    paths[5].write_bytes(paths[5].read_bytes()[:200])  # truncated PNG
    (tmp_path / "seq" / "notes.txt").write_text("ignored")
    c = cfg(replay_realtime=False)
    cam = cameras(open_source(str(tmp_path / "seq"), c), c)
    frames = drain(cam)
    assert [decode_index(f.image) for f in frames] == [i for i in range(12) if i != 5]
    assert cam.ended and cam.source.skipped == 1
    assert cam.source.fps == 10.0  # cfg.fps unset: the default replay rate
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "frame_0005.png" in warnings[0] and "skipping unreadable image" in warnings[0]


def test_printf_pattern_and_natural_order(tmp_path: Path, cameras: Any) -> None:
    write_pngs(tmp_path / "p", 12)
    cv2.imwrite(str(tmp_path / "p" / "other_0001.png"), encode_index(99, 256, 48))
    write_pngs(tmp_path / "n", 12, name="img{}.png")  # img2 before img10
    c = cfg(replay_realtime=False, fps=25.0)
    for spec in (tmp_path / "p" / "frame_%04d.png", tmp_path / "n"):
        cam = cameras(open_source(str(spec), c), c)
        assert [decode_index(f.image) for f in drain(cam)] == list(range(12))
        assert cam.source.fps == 25.0


# -- failure, stall and reconnect ---------------------------------------------------------------------------------


def test_mjpeg_stream_dies_and_comes_back(
    server: MjpegServer, cameras: Any, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real MJPEG-over-HTTP camera read by OpenCV's FFMPEG backend is killed, then restarted on the same port."""
    caplog.set_level(logging.INFO, logger="kiosk.door.camera")
    c = cfg()
    cam = cameras(open_source(server.url, c), c)
    first = [cam.latest(5.0) for _ in range(5)]
    assert all(f is not None for f in first)
    served = [decode_index(f.image) for f in first if f is not None]
    assert served == sorted(served) and cam.status()["state"] == "ok"

    t0 = time.monotonic()
    server.stop()
    assert wait_until(lambda: cam.status()["state"] == "reconnecting")
    detect_s = time.monotonic() - t0
    assert cam.latest(0.5) is None and cam.status()["state"] == "reconnecting"
    lost = [r.getMessage() for r in caplog.records if "lost (" in r.getMessage()]
    assert len(lost) == 1 and lost[0].startswith(f"camera {server.url}: lost (read failed")
    assert "reconnecting in 0.05 s" in lost[0]

    t1 = time.monotonic()
    server.start()
    frame = cam.latest(10.0)
    back_s = time.monotonic() - t1
    assert frame is not None and decode_index(frame.image) >= served[-1]
    assert wait_until(lambda: cam.status()["reconnects"] >= 1) and cam.status()["state"] == "ok"
    assert any("reconnected after" in r.getMessage() for r in caplog.records)
    # only one WARNING for the whole outage, however many attempts it took
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 1
    with capsys.disabled():
        print(f"\n[mjpeg] loss detected in {detect_s:.3f} s, frames again {back_s:.3f} s after restart", end=" ")


def test_silent_stream_is_a_stall(server: MjpegServer, cameras: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The server keeps the connection open but stops sending: FFMPEG's read timeout (= stall_timeout_s) fires."""
    c = cfg()
    cam = cameras(open_source(server.url, c), c)
    assert cam.latest(5.0) is not None
    server.paused.set()
    assert wait_until(lambda: cam.status()["state"] == "reconnecting", timeout=3.0)
    assert cam.status()["last_frame_age_s"] >= 0.25
    server.paused.clear()
    assert cam.latest(8.0) is not None
    assert wait_until(lambda: cam.status()["reconnects"] == 1)


@pytest.mark.parametrize("then", ["none", "raise"])
def test_stall_or_read_failure_reopens(then: str, cameras: Any, caplog: pytest.LogCaptureFixture) -> None:
    """No frame for stall_timeout_s (read() keeps returning None) or a raising read() closes and reopens."""
    src = fake_source(frames_per_open=3, then=then)
    cam = cameras(src, cfg())
    opens: list[int] = []  # which open() each delivered frame came from (the number is drawn in the frame)
    while len(set(opens)) < 3 and (f := cam.latest(2.0)) is not None:
        opens.append(decode_index(f.image))
    # The reader keeps only the newest frame, so a consumer that starts late (a loaded CI machine) may never see
    # the first open's frames: what matters is frames from consecutive reopens, in order.
    distinct = sorted(set(opens))
    assert len(distinct) == 3 and distinct == list(range(distinct[0], distinct[0] + 3)) and opens == sorted(opens)
    reason = "no frame for 0.3 s" if then == "none" else "read failed (unplugged)"
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert msgs[0] == f"camera fake: lost ({reason}); reconnecting in 0.05 s"
    assert cam.status()["reconnects"] >= 1 and src.close_calls >= 2


def test_open_failures_back_off_exponentially(cameras: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="kiosk.door.camera")
    t = ManualClock(1000.0, yield_s=0.001)  # sleeping advances it; a real 1 ms yield keeps the reader cheap
    # 200 frames (~0.4 s) on the good open: a consumer woken late on a loaded machine still finds one.
    src = fake_source(opens=[False] * 9 + [True], frames_per_open=200, then="raise")
    cam = cameras(src, CameraConfig(), clock=t, sleep=t.sleep)  # defaults: 0.5 s doubling to 30 s
    frame = cam.latest(5.0)
    assert frame is not None and frame.t >= 1000.0 + sum(t.sleeps[:9])  # stamped with the injected clock
    assert t.sleeps[:9] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert wait_until(lambda: len(t.sleeps) >= 11)
    assert t.sleeps[9:11] == [0.5, 1.0]  # a good frame resets the backoff
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[0] == "camera fake: unavailable (cannot open fake: refused); reconnecting in 0.5 s"
    assert warnings[1] == "camera fake: lost (read failed (unplugged)); reconnecting in 0.5 s"
    assert any(r.getMessage() == "camera fake: connected after 10 attempts" for r in caplog.records)
    assert sum(r.levelno == logging.DEBUG and "attempt" in r.getMessage() for r in caplog.records) >= 8
    assert cam.status()["reconnects"] == 0  # the first connection is not a reconnect


# -- lifecycle ---------------------------------------------------------------------------------------------------


def test_close_joins_the_thread_and_is_idempotent(video: Path, cameras: Any) -> None:
    c = cfg(replay_realtime=False)
    cam = cameras(open_source(str(video), c), c)
    assert cam.latest(2.0) is not None  # the reader is now blocked waiting for the consumer
    thread = cam._thread
    assert thread is not None and thread.is_alive()
    t = time.monotonic()
    cam.close()
    assert not thread.is_alive() and time.monotonic() - t < 1.0
    cam.close()
    assert cam.status()["state"] == "closed" and cam.latest(1.0) is None
    with pytest.raises(RuntimeError, match="start\\(\\) after close\\(\\)"):
        cam.start()
    with pytest.raises(dataclasses.FrozenInstanceError):
        Frame(np.zeros((2, 2, 3), np.uint8), 0, 0.0).index = 1


def test_close_without_start_closes_the_source_and_context_manager(cameras: Any) -> None:
    src = fake_source()
    cam = cameras(src, cfg(), start=False)
    assert cam.status()["state"] == "starting" and cam.status()["last_frame_age_s"] is None
    cam.close()
    cam.close()
    assert src.close_calls == 1 and src.open_calls == 0
    src2 = fake_source()
    with Camera(src2, cfg()) as cam2:
        assert cam2.latest(2.0) is not None
        thread = cam2._thread
    assert thread is not None and not thread.is_alive() and src2.close_calls >= 1
