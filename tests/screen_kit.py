"""Helpers for the kiosk.screen tests: short socket folders, blocking socket clients, a real kiosk running in a
thread on a replayed face."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from kiosk.config import Config, parse_config
from kiosk.lab.door_thread import LoopThread

W, H = 640, 480


@contextlib.contextmanager
def short_dir() -> Iterator[Path]:
    """A folder under /tmp with a short path (a Unix socket path has at most 107 bytes; pytest's tmp_path may not)."""
    d = Path(tempfile.mkdtemp(prefix="kscr-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def connect(path: Path, timeout: float = 5.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(path))
    return s


class LineReader:
    """Newline-delimited JSON from a blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def next(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the server closed the connection")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        out = json.loads(line)
        assert isinstance(out, dict)
        return out

    def until(self, cond: Callable[[dict[str, Any]], bool], limit: int = 500) -> dict[str, Any]:
        for _ in range(limit):
            state = self.next()
            if cond(state):
                return state
        raise AssertionError(f"no state line matched in {limit} lines")


def read_jpeg(sock: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        out = b""
        while len(out) < n:
            data = sock.recv(n - len(out))
            if not data:
                raise EOFError("preview closed")
            out += data
        return out

    (n,) = struct.unpack(">I", exactly(4))
    return exactly(n)


def control(path: Path, request: dict[str, Any] | bytes, timeout: float = 10.0) -> dict[str, Any]:
    """One control.sock exchange: a dict is sent as a JSON line, bytes as they are."""
    with connect(path, timeout) as s:
        s.sendall(request if isinstance(request, bytes) else (json.dumps(request) + "\n").encode())
        reader = LineReader(s)
        return reader.next()


def scene(photo: np.ndarray, dx: int = 0, scale: float = 1.5) -> np.ndarray:
    canvas = np.full((H, W, 3), 110, np.uint8)
    img = cv2.resize(photo, None, fx=scale, fy=scale)
    h, w = img.shape[:2]
    x, y = (W - w) // 2 + dx, (H - h) // 2
    canvas[y : y + h, x : x + w] = img
    return canvas


def colin_frames(faces_dir: Path, photos: int = 6) -> list[np.ndarray]:
    """Several photos of one real person (different poses), each shifted a little over four frames."""
    colin = sorted((faces_dir / "lfw/images/Colin_Powell").glob("*.jpg"))[:photos]
    return [scene(cv2.imread(str(p)), dx) for p in colin for dx in (0, 4, 8, 12)]


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (W, H))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def kiosk_config(data_dir: Path, runtime_dir: Path, **sections: Any) -> Config:
    data: dict[str, Any] = {
        "data_dir": str(data_dir),
        "door": {"driver": "simulated", "pulse_s": 0.2},
        "decision": {"frames_needed": 3, "window": 5},
        "liveness": {"mode": "off"},
        "screen": {"runtime_dir": str(runtime_dir)},
    }
    for k, v in sections.items():
        data[k] = {**data.get(k, {}), **v}
    return parse_config(data)


@contextlib.contextmanager
def running_kiosk(
    cfg: Config, frames: list[np.ndarray] | None = None, *, frame_s: float = 0.05, **kwargs: Any
) -> Iterator[LoopThread]:
    """A real kiosk (models, gallery, simulated door, screen) on ``frames`` played in a loop as a live camera (or
    on ``cfg.camera.source`` when ``frames`` is None); ``kwargs`` go to ``run_kiosk``. Stopped at the end of the
    block if the test did not ``stop()`` it."""
    rk = LoopThread(cfg, frames, frame_s, **kwargs).start()
    try:
        yield rk
    finally:
        if rk.thread.is_alive():
            if rk.loop is not None:
                rk.loop.stop()
            rk.thread.join(60)
