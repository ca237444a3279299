"""The door loop's cost of a connected screen viewer (``kiosk bench --viewer``): the same replay through the real
loop with its screen publisher, alternately without and with one preview client reading every frame it is sent.

Measured, never asserted: the figure depends on the machine and its load (a timed test would be a flaky test).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from kiosk.config import Config
from kiosk.context import Context
from kiosk.lab.bench import run_loop
from kiosk.lab.frames import FrameSet
from kiosk.liveness import Liveness
from kiosk.recognition.pipeline import Pipeline
from kiosk.screen.loop import LoopScreen
from kiosk.screen.protocol import PREVIEW_SOCK
from kiosk.stats import dist

PASSES = 4  # without, with, without, with: a drift in the machine's speed falls on both sides


class PreviewReader:
    """A preview client in a thread that reads every frame as fast as it comes."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.frames = 0
        self.bytes = 0
        self._thread = threading.Thread(target=self._read, name="bench-viewer", daemon=True)
        self._thread.start()

    def _exactly(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            data = self.sock.recv(n - len(out))
            if not data:
                raise EOFError
            out += data
        return out

    def _read(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            while True:
                (n,) = struct.unpack(">I", self._exactly(4))
                self._exactly(n)
                self.frames += 1
                self.bytes += n + 4

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5.0)


def viewer_cost(
    cfg: Config, pipeline: Pipeline, ctx: Context, frames: FrameSet, liveness: Liveness | None
) -> dict[str, Any]:
    """Loop fps (frames / wall time, JPEG decode + ``DoorLoop.process`` with the screen attached) without and with
    one preview client, over ``PASSES`` alternating passes of the same frames; and the relative drop."""
    passes: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kiosk-viewer-", dir="/tmp") as tmp:
        screen = LoopScreen(cfg, runtime_dir=Path(tmp) / "run").start()
        server = screen.server
        try:
            for i in range(PASSES):
                watched = i % 2 == 1
                reader = PreviewReader(server.paths[PREVIEW_SOCK]) if watched else None
                deadline = time.monotonic() + 5.0
                while watched and server.watchers < 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                if liveness is not None:
                    liveness.reset()  # every pass starts as the first did: same challenges, same costs
                encoded, dropped, sent = server.encoded, server.dropped, server.sent
                run = run_loop(pipeline, ctx, frames, liveness, screen)
                time.sleep(0.2)  # the last frame in flight reaches the reader
                received = 0
                if reader is not None:
                    reader.close()
                    received = reader.frames
                passes.append(
                    {
                        "viewer": watched,
                        "frames": len(run.frame_ms),
                        "wall_s": round(run.wall_s, 3),
                        "fps": round(len(run.frame_ms) / run.wall_s, 2) if run.wall_s > 0 else None,
                        "jpegs_encoded": server.encoded - encoded,
                        "jpegs_sent": server.sent - sent,
                        "jpegs_dropped": server.dropped - dropped,
                        "jpegs_received": received,
                    }
                )
            encode_ms = list(server.encode_ms)
        finally:
            screen.close()

    def fps(watched: bool) -> float | None:
        chosen = [p for p in passes if p["viewer"] is watched]
        wall = sum(p["wall_s"] for p in chosen)
        return round(sum(p["frames"] for p in chosen) / wall, 2) if wall > 0 else None

    without, with_viewer = fps(False), fps(True)
    drop = None if not without or with_viewer is None else round(1.0 - with_viewer / without, 4)
    return {
        "fps_without": without,
        "fps_with": with_viewer,
        "relative_drop": drop,
        "passes": passes,
        "encode_ms": dist(encode_ms) if encode_ms else None,
        "preview": {
            "width": cfg.screen.preview_width,
            "fps_max": cfg.screen.preview_fps,
            "quality": cfg.screen.preview_quality,
            "mirror": cfg.screen.mirror,
        },
        "basis": f"{PASSES} alternating passes of the same frames (without, with, ...) through DoorLoop.process in "
        "lockstep with the screen publisher attached; fps = frames / wall time (JPEG decode + process); 'with' = "
        "one preview client on preview.sock reading every frame it is sent (the publisher's thread encodes at "
        "most preview_fps a second of wall time); encode_ms: that thread's resize + mirror + JPEG per preview frame",
    }
