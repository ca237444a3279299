"""The real-browser harness: headless Debian Chromium driven by Playwright, the app under uvicorn on 127.0.0.1.

Fixtures (re-exported by tests/conftest.py): ``browser`` (one Chromium per test module), ``viewport`` (override with
``@pytest.mark.parametrize("viewport", [(800, 480)])``), ``page`` (a fresh context per test; fails the test on an
uncaught page error or a Content-Security-Policy violation), ``live_server`` (``live_server(app) -> base_url``)
and ``axe_check`` (``axe_check(page)``: zero axe-core violations, else a failure listing them).

Chromium comes from Debian (``apt-get install chromium``; ``.ci/run`` installs it), never from ``playwright
install``. Without it the browser tests fail with that message: CI treats a skip as a failure anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tools.measure.browser import CHROMIUM, CHROMIUM_ARGS, VIEWPORTS, LiveServer, chromium_missing, launch_chromium

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "VIEWPORTS", "LiveServer", "axe_check", "browser", "live_server", "page"]

DEFAULT_VIEWPORT = VIEWPORTS["kiosk"]
TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium per test module. NOTE: not per session: while Playwright's sync API is open, its event loop
    counts as running in this thread (it runs in a greenlet), so ``asyncio.run`` in any later test would fail;
    closing it at the end of each module gives the other modules their thread back."""
    from playwright.sync_api import sync_playwright

    why = chromium_missing()
    if why:
        pytest.fail(f"browser tests need {why}", pytrace=False)
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
