"""Headless Debian Chromium and a live uvicorn server in a thread: shared by the browser tests (``tests/browser.py``)
and the tools that drive the web app in a real browser (``screenshots``, ``screen_latency``).

Chromium is Debian's (``apt-get install chromium``), launched through Playwright's ``executable_path`` with a fresh
temporary profile; never ``playwright install`` (it downloads a browser).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from tools.errors import ToolError

CHROMIUM = Path(os.environ.get("KIOSK_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORTS = {"small": (800, 480), "kiosk": (1024, 600), "full-hd": (1920, 1080)}


class ChromiumMissingError(ToolError):
    """Debian's Chromium is not installed where we look."""


def chromium_missing(path: Path = CHROMIUM) -> str | None:
    """Why the browser cannot start, or None."""
    if path.is_file():
        return None
    return (
        f"Debian's Chromium is not at {path}: `sudo apt-get install chromium` (.ci/run installs it; "
        "never `playwright install`), or set KIOSK_CHROMIUM"
    )


def launch_chromium(playwright: Any, path: Path = CHROMIUM) -> Any:
    """Debian's Chromium, headless (Playwright's launch makes a fresh temporary profile for each browser)."""
    why = chromium_missing(path)
    if why:
        raise ChromiumMissingError(why)
    return playwright.chromium.launch(executable_path=str(path), headless=True, args=CHROMIUM_ARGS)


class LiveServer:
    """uvicorn serving ``app`` on 127.0.0.1 on a free port, in a thread of this process. ``stop`` first closes the
    open connections (the browser's event streams would otherwise hold a graceful shutdown for its whole timeout),
    which the app sees as a client disconnect."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, log_level="warning", http="h11", ws="none", lifespan="auto", timeout_graceful_shutdown=2
        )
        loop_box: list[asyncio.AbstractEventLoop] = []

        class Server(uvicorn.Server):
            async def startup(self, sockets: list[socket.socket] | None = None) -> None:
                loop_box.append(asyncio.get_running_loop())
                await super().startup(sockets)

        self._loop = loop_box
        self.server = Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self, timeout_s: float = 15.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while self.thread.is_alive() and not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.server.started:
            self.stop()
            raise RuntimeError(f"uvicorn did not start on {self.base_url} (see the log above)")
        return self.base_url

    def drop_connections(self) -> None:
        """Close every open connection now, as a vanished client would."""
        if not self._loop or not self.thread.is_alive():
            return
        done = threading.Event()

        def close_all() -> None:
            for connection in list(self.server.server_state.connections):
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.close()
            done.set()

        self._loop[0].call_soon_threadsafe(close_all)
        done.wait(5)

    def stop(self) -> None:
        self.drop_connections()
        self.server.should_exit = True
        self.thread.join(5)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(5)
        self.sock.close()
