"""The browser harness itself: Chromium starts, the live server serves, axe and the CSP watch catch problems."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from tests.browser import PageProblems, axe_violations
from tools.measure.browser import ChromiumMissingError, chromium_missing, launch_chromium

pytestmark = [pytest.mark.browser, pytest.mark.slow]

GOOD = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>ok</title></head>
<body><main><h1>Hello</h1><p>fine</p></main></body></html>"""
BAD = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>bad</title></head>
<body><main><img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=">
<script>window.ran = 1</script></main></body></html>"""


def app() -> FastAPI:
    a = FastAPI()
    csp = {"Content-Security-Policy": "default-src 'self'; script-src 'self'"}

    @a.get("/good", response_class=HTMLResponse)
    def good() -> HTMLResponse:
        return HTMLResponse(GOOD, headers=csp)

    @a.get("/bad", response_class=HTMLResponse)
    def bad() -> HTMLResponse:
        return HTMLResponse(BAD, headers=csp)

    return a


@pytest.mark.parametrize("viewport", [(800, 480)])
def test_live_server_page_and_axe_pass_on_a_clean_page(page: Any, live_server: Any, axe_check: Any) -> None:
    base = live_server(app())
    page.goto(base + "/good")
    assert page.evaluate("[innerWidth, innerHeight]") == [800, 480]
    assert page.locator("h1").inner_text() == "Hello"
    axe_check(page)


def test_axe_lists_violations_and_csp_blocks_inline_script(browser: Any, live_server: Any) -> None:
    base = live_server(app())
    context = browser.new_context()
    p = context.new_page()
    problems = PageProblems()
    p.on("console", problems.on_console)
    with p.expect_console_message(lambda m: "Content Security Policy" in m.text):
        p.goto(base + "/bad")
    found = " ".join(axe_violations(p))
    assert "image-alt" in found and "html-has-lang" in found
    assert p.evaluate("window.ran") is None  # the inline script never ran
    context.close()
    assert any("Content Security Policy" in item for item in problems.items)


def test_a_missing_chromium_is_a_clear_error_not_a_skip(tmp_path: Any) -> None:
    gone = tmp_path / "chromium"
    why = chromium_missing(gone)
    assert why is not None and str(gone) in why and "apt-get install chromium" in why
    with pytest.raises(ChromiumMissingError, match="apt-get install chromium"):
        launch_chromium(object(), gone)  # fails before it touches Playwright
