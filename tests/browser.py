"""The real-browser harness: headless Debian Chromium driven by Playwright, the app under uvicorn on 127.0.0.1.

Fixtures (re-exported by tests/conftest.py): ``browser`` (one Chromium per session), ``viewport`` (override with
``@pytest.mark.parametrize("viewport", [(800, 480)])``), ``page`` (a fresh context per test; fails the test on an
uncaught page error or a Content-Security-Policy violation), ``live_server`` (``live_server(app) -> base_url``)
and ``axe_check`` (``axe_check(page)``: zero axe-core violations, else a failure listing them).

Chromium comes from Debian (``apt-get install chromium``; ``.ci/run`` installs it), never from ``playwright
install``. Without it the browser tests fail with that message: CI treats a skip as a failure anyway.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

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
DEFAULT_VIEWPORT = VIEWPORTS["kiosk"]
TIMEOUT_MS = 10_000


def launch_chromium(playwright: Any) -> Any:
    """Debian's Chromium, headless, with a fresh temporary profile (Playwright's launch makes one per browser)."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"browser tests need Debian's Chromium at {CHROMIUM}: `sudo apt-get install chromium` "
            "(.ci/run installs it; never `playwright install`), or set KIOSK_CHROMIUM",
            pytrace=False,
        )
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = launch_chromium(pw)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture()
def viewport() -> tuple[int, int]:
    return DEFAULT_VIEWPORT


class PageProblems:
    """Uncaught script errors and CSP violations seen by one page: each one fails the test."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def on_page_error(self, error: Any) -> None:
        self.items.append(f"uncaught: {error}")

    def on_console(self, message: Any) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            self.items.append(f"CSP: {message.text}")


@pytest.fixture()
def page(browser: Any, viewport: tuple[int, int]) -> Iterator[Any]:
    width, height = viewport
    context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
    context.set_default_timeout(TIMEOUT_MS)
    p = context.new_page()
    problems = PageProblems()
    p.on("pageerror", problems.on_page_error)
    p.on("console", problems.on_console)
    try:
        yield p
    finally:
        context.close()
    if problems.items:
        pytest.fail("the page reported problems:\n  " + "\n  ".join(problems.items), pytrace=False)


class LiveServer:
    """uvicorn serving ``app`` on 127.0.0.1 on a free port, in a thread of this process."""

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
        self.server = uvicorn.Server(config)
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

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(5)
        self.sock.close()


@pytest.fixture()
def live_server() -> Iterator[Callable[[Any], str]]:
    servers: list[LiveServer] = []

    def start(app: Any) -> str:
        server = LiveServer(app)
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in reversed(servers):
            server.stop()


def axe_violations(page: Any, context: Any = None) -> list[str]:
    """axe-core's violations on the page as it is now, one line each with the offending nodes."""
    from axe_playwright_python.sync_playwright import Axe  # type: ignore[import-untyped]

    results = Axe().run(page, context, options={"resultTypes": ["violations"]})
    lines = []
    for v in results.response["violations"]:
        nodes = "; ".join(" ".join(map(str, n["target"])) for n in v["nodes"])
        lines.append(f"{v['id']} ({v['impact']}): {v['help']} — {nodes}")
    return lines


@pytest.fixture()
def axe_check() -> Callable[..., None]:
    def check(page: Any, context: Any = None) -> None:
        violations = axe_violations(page, context)
        if violations:
            pytest.fail(
                f"axe-core: {len(violations)} violations on {page.url}:\n  " + "\n  ".join(violations), pytrace=False
            )

    return check
