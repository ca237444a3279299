"""End to end: the real door loop (``run_kiosk``, screen enabled) on the astronaut's replayed frames, ``kiosk web``'s
app serving ``/door`` through a real ``DoorLink``, headless Chromium watching: out of service before the loop runs,
the blink prompt, then the welcome; out of service when the loop stops, and back when it runs again."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiosk.screen.client import DoorLink
from kiosk.web.scripted import ScriptedServices, door_app
from tests.door_screen_helpers import LoopThread, astronaut_door

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Every prompt and outcome the page shows, in order, recorded in the page as it happens.
RECORDER = """(() => {
  window.seen = [];
  const note = (what) => { if (what && window.seen.at(-1) !== what) window.seen.push(what); };
  new MutationObserver(() => {
    note(document.querySelector(".bar")?.dataset.prompt);
    note(document.body.dataset.outcome && "result:" + document.body.dataset.outcome);
  }).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-prompt", "data-outcome"] });
})();"""


@pytest.fixture()
def short_dir() -> Iterator[Path]:
    """A folder with a short path: a Unix socket path holds at most 107 bytes, pytest's tmp_path may be longer."""
    d = Path(tempfile.mkdtemp(prefix="kdoor-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_real_loop_prompt_then_welcome_then_out_of_service_and_back(
    page: Any, live_server: Any, axe_check: Any, short_dir: Path
) -> None:
    door = astronaut_door(short_dir, short_dir / "run", result_s=5.0, show_name="first")
    cfg, frames = door.cfg, door.blinking
    app = door_app(ScriptedServices(cfg, DoorLink(cfg.runtime_dir)))
    url = live_server(app)
    page.add_init_script(RECORDER)
    page.goto(url + "/door", wait_until="domcontentloaded")
    page.wait_for_selector("body[data-view='down']")  # no loop yet
    assert page.locator("#down-title").inner_text() == "Out of service"

    loop = LoopThread(cfg, frames).start()
    try:
        page.wait_for_selector("#preview:not([hidden])", timeout=60_000)  # the loop's own preview frames
        page.wait_for_selector("body[data-outcome='granted']", timeout=60_000)
        assert page.locator("#result-title").inner_text() == "Welcome, Eileen"  # screen.show_name: first
        axe_check(page)
        seen = page.evaluate("window.seen")
        assert "blink" in seen and seen.index("blink") < seen.index("result:granted"), seen
    finally:
        loop.stop()
    assert ("granted", "Eileen Collins") in loop.decisions
    page.wait_for_selector("body[data-view='down']", timeout=30_000)
    axe_check(page)

    again = LoopThread(cfg, frames).start()
    try:
        page.wait_for_selector("body[data-service='ok']", timeout=60_000)
        page.wait_for_selector("#preview:not([hidden])", timeout=30_000)
        assert page.locator("#down").is_hidden()
    finally:
        again.stop()
