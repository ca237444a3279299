"""A tiny MJPEG-over-HTTP server on 127.0.0.1 for capture tests: what a cheap IP camera serves.

``GET /stream.mjpg`` answers ``multipart/x-mixed-replace`` with one JPEG part per frame at ``fps``; each frame
carries its number as a block code (see ``encode_index``). ``stop()`` ends every open stream, closes the socket
and joins every thread it started, so a test can kill the "camera" and later ``start()`` it again on the same port.
"""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import cv2
import numpy as np

BOUNDARY = "kioskframe"
BLOCK = 20  # pixels per bit: survives JPEG compression
BITS = 12


def encode_index(index: int, width: int = 320, height: int = 240) -> np.ndarray:
    """A BGR frame whose top row of blocks spells ``index`` in binary (white = 1), on a mid-grey background."""
    img = np.full((height, width, 3), 96, np.uint8)
    for bit in range(BITS):
        value = 255 if (index >> bit) & 1 else 0
        img[0:BLOCK, bit * BLOCK : (bit + 1) * BLOCK] = value
    cv2.putText(img, str(index), (10, height - 20), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (0, 255, 0), 3)
    return img


def decode_index(img: np.ndarray) -> int:
    """Read back the number written by ``encode_index`` (robust to JPEG/MJPG compression)."""
    index = 0
    for bit in range(BITS):
        block = img[4 : BLOCK - 4, bit * BLOCK + 4 : (bit + 1) * BLOCK - 4]
        if float(block.mean()) > 128:
            index |= 1 << bit
    return index


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MjpegServer:
    """Serve numbered JPEG frames at ``fps`` on ``http://127.0.0.1:port/stream.mjpg`` until ``stop()``."""

    def __init__(self, port: int | None = None, fps: float = 30.0) -> None:
        self.port = port or free_port()
        self.fps = fps
        self.url = f"http://127.0.0.1:{self.port}/stream.mjpg"
        self.served = 0  # frames written to any client, across restarts
        self._stop = threading.Event()
        self.paused = threading.Event()  # set: keep the connection open but send nothing (a stalled camera)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> MjpegServer:
        self._stop.clear()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5.0  # NOTE: a client that stops reading cannot block stop() forever

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                if self.path != "/stream.mjpg":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                try:
                    while not owner._stop.is_set():
                        if owner.paused.is_set():
                            owner._stop.wait(0.02)
                            continue
                        ok, jpg = cv2.imencode(".jpg", encode_index(owner.served))
                        assert ok
                        data = jpg.tobytes()
                        head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n"
                        self.wfile.write(head.encode() + data + b"\r\n")
                        self.wfile.flush()
                        owner.served += 1
                        owner._stop.wait(1.0 / owner.fps)
                except OSError:
                    pass  # the client went away (OpenCV reconnecting) or stopped reading
                self.close_connection = True

        class Server(ThreadingHTTPServer):
            daemon_threads = False  # NOTE: so server_close() joins the handler threads
            block_on_close = True
            allow_reuse_address = True  # restart on the same port right after stop()

        self._server = Server(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()
        return self

    def stop(self) -> None:
        """End open streams, stop accepting, close the socket and join all threads. Safe twice."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def wait_served(self, n: int, timeout: float = 5.0) -> bool:
        end = time.monotonic() + timeout
        while self.served < n and time.monotonic() < end:
            time.sleep(0.01)
        return self.served >= n
