"""The door screen in headless Chromium, driven by a scripted state source (``ScriptedLink``) through the real app.

Every state at 800x480, 1024x600 and 1920x1080 in English and Simplified Chinese: it fits (no scrollbar, nothing cut
off), axe-core finds nothing, and the words come from the catalogue. Then the behaviour: results clear after
``result_s``, one decision shows once, out of service when the loop or the web process goes away and back after,
the countdown, the face box, the announcements, the optional sound.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from kiosk.web.i18n import I18n
from kiosk.web.scripted import ScriptedLink, door_state
from tests.browser import VIEWPORTS, LiveServer
from tests.door_screen_helpers import LAYOUT_PROBLEMS, preview_jpeg, scripted_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]

I18N = I18n()
FACE: dict[str, Any] = {"track": 7, "box": [0.35, 0.22, 0.3, 0.45], "state": "checking"}


@dataclass
class Door:
    base_url: str
    link: ScriptedLink
    seq: int = 1
    decisions: int = field(default=0)

    def show(self, service: str = "ok", **parts: Any) -> dict[str, Any]:
        self.seq += 1
        state = door_state(service, seq=self.seq, **parts)
        self.link.publish(state)
        return state

    def decide(self, outcome: str, name: str | None = None, **parts: Any) -> dict[str, Any]:
        self.decisions += 1
        result = {"seq": self.decisions, "outcome": outcome, "name": name, "reason": "", "t": 0.0}
        return self.show(result=result, **parts)


@pytest.fixture()
def door(live_server: Any) -> Any:
    def start(**screen: Any) -> Door:
        link = ScriptedLink(door_state("ok", seq=1))
        link.publish_frame(preview_jpeg())
        app, _ = scripted_app(link, **screen)
        return Door(live_server(app), link)

    return start


def open_door(page: Any, door: Door) -> None:
    page.goto(door.base_url + "/door", wait_until="domcontentloaded")
    page.wait_for_selector("body[data-view='idle']")
    page.wait_for_selector("#preview:not([hidden])")


def fits(page: Any, what: str) -> None:
    problems = page.evaluate(LAYOUT_PROBLEMS)
    assert not problems, f"{what} at {page.viewport_size}: {problems}"


def wait_text(page: Any, selector: str, text: str) -> None:
    page.wait_for_function(
        "([sel, text]) => document.querySelector(sel)?.textContent === text", arg=[selector, text], timeout=10_000
    )


@pytest.mark.parametrize("language", ["en", "zh-Hans"])
@pytest.mark.parametrize("viewport", list(VIEWPORTS.values()), ids=list(VIEWPORTS))
def test_every_state_fits_reads_right_and_passes_axe(page: Any, door: Any, axe_check: Any, language: str) -> None:
    d = door(language=language)
    t = lambda key, **kw: I18N.t(language, key, **kw)  # noqa: E731
    open_door(page, d)
    assert page.locator("html").get_attribute("lang") == language
    wait_text(page, "#prompt", t("door.idle"))
    fits(page, "idle")
    axe_check(page)

    d.show(faces=[FACE])
    page.wait_for_selector(".face[data-state='checking']")
    assert page.locator(".face-label").inner_text() == t("door.face.checking")
    wait_text(page, "#prompt", t("door.face.checking"))  # no prompt: the bar says what the loop is doing
    fits(page, "checking")
    axe_check(page)

    d.show(
        faces=[{**FACE, "state": "challenge"}], prompt={"track": 7, "code": "blink", "remaining_s": 4.2, "total_s": 5}
    )
    wait_text(page, "#prompt", t("door.prompt.blink"))
    page.wait_for_selector("#countdown:not([hidden])")
    assert page.locator(".bar").get_attribute("data-prompt") == "blink"
    fits(page, "blink prompt")
    axe_check(page)

    for code in ("come-closer", "look-at-camera", "turn-left", "turn-right", "hold-still"):
        d.show(faces=[FACE], prompt={"track": 7, "code": code, "remaining_s": None, "total_s": None})
        wait_text(page, "#prompt", t(f"door.prompt.{code}"))
        fits(page, code)
    assert page.locator("#countdown").is_hidden(), "guidance prompts have no countdown"

    long_name = "Bartholomew Featherstonehaugh-Cholmondeley" if language == "en" else "欧阳娜娜"
    for outcome, name, title in (
        ("granted", long_name, t("door.result.welcome-name", name=long_name)),
        ("denied", None, t("door.result.denied")),
        ("unknown", None, t("door.result.unknown")),
    ):
        d.decide(outcome, name, faces=[{**FACE, "state": outcome}])
        wait_text(page, "#result-title", title)
        assert page.locator("body").get_attribute("data-view") == "result"
        assert page.locator("#result").get_attribute("data-outcome") == outcome
        fits(page, outcome)
        axe_check(page)

    for service in ("down", "camera-down", "starting"):
        d.show(service)
        wait_text(page, "#down-title", t(f"door.{service}"))
        assert page.locator("#down-detail").inner_text() == t(f"door.{service}.detail")
        assert page.locator("#result").is_hidden() and page.locator("#preview").is_hidden()
        fits(page, service)
        axe_check(page)


def test_result_clears_after_result_s_and_one_decision_shows_once(page: Any, door: Any) -> None:
    d = door(result_s=0.5)
    open_door(page, d)
    state = d.decide("granted", "Ada")
    wait_text(page, "#result-title", "Welcome, Ada")
    assert page.locator("#say").inner_text() == "Welcome, Ada. The door is open"
    page.wait_for_selector("body[data-view='idle']")  # cleared by itself
    assert page.locator("#result").is_hidden() and page.locator("#say").inner_text() == ""
    # the loop repeats the same decision in its next states: it does not come back
    d.link.publish({**state, "seq": d.seq + 1})
    d.show()  # a later state; the page has seen both once this one is rendered
    page.wait_for_function("() => document.body.dataset.view === 'idle'")
    assert page.locator("#result").is_hidden()
    # a new decision shows again, without a name as "Welcome"
    d.decide("granted", None)
    wait_text(page, "#result-title", "Welcome")


def test_face_box_is_placed_on_the_preview_with_text_icon_and_colour(page: Any, door: Any) -> None:
    d = door()
    open_door(page, d)
    colours = {}
    for state in ("detected", "checking", "challenge", "granted", "denied", "unknown"):
        d.show(faces=[{**FACE, "state": state}])
        page.wait_for_selector(f".face[data-state='{state}']")
        label = page.locator(".face-label")
        assert label.inner_text() == I18N.t("en", f"door.face.{state}")
        assert label.locator("img").get_attribute("src").endswith(".svg")
        colours[state] = label.evaluate("el => getComputedStyle(el).backgroundColor")
    assert len(set(colours.values())) == 6, f"each face state has its own colour: {colours}"
    frame = page.locator("#frame").bounding_box()
    box = page.locator(".face").bounding_box()
    x, y, w, h = (float(v) for v in FACE["box"])
    assert box["x"] == pytest.approx(frame["x"] + x * frame["width"], abs=2)
    assert box["y"] == pytest.approx(frame["y"] + y * frame["height"], abs=2)
    assert box["width"] == pytest.approx(w * frame["width"], abs=2)
    assert box["height"] == pytest.approx(h * frame["height"], abs=2)
    d.show(faces=[])
    page.wait_for_selector(".face", state="detached")


def test_countdown_counts_down_and_is_labelled(page: Any, door: Any) -> None:
    d = door()
    open_door(page, d)
    d.show(prompt={"track": 7, "code": "blink", "remaining_s": 4.2, "total_s": 5.0})
    wait_text(page, "#countdown-text", "5 s")
    assert page.locator("#countdown").get_attribute("aria-label") == "Time left: 5 seconds"
    d.show(prompt={"track": 7, "code": "blink", "remaining_s": 0.8, "total_s": 5.0})
    wait_text(page, "#countdown-text", "1 s")
    page.wait_for_function("() => document.getElementById('countdown-text').textContent === '0 s'")  # runs locally
    d.show(prompt=None)
    page.wait_for_selector("#countdown", state="hidden")


def test_announcements_are_live_regions(page: Any, door: Any) -> None:
    d = door()
    open_door(page, d)
    assert page.locator("#prompt").get_attribute("aria-live") == "polite"
    assert page.locator("#say").get_attribute("aria-live") == "assertive"
    d.decide("denied")
    wait_text(page, "#say", "Access denied. Please ask a member of staff for help")
    d.show("down")
    wait_text(page, "#say", "Out of service. Please use another entrance or ask a member of staff")


def test_out_of_service_while_the_loop_is_down_and_back_after(page: Any, door: Any, axe_check: Any) -> None:
    d = door()
    open_door(page, d)
    assert d.link.preview_subscribers == 1
    d.show(faces=[FACE], prompt={"track": 7, "code": "blink", "remaining_s": 3, "total_s": 5})
    page.wait_for_selector(".face")
    d.show("down")
    page.wait_for_selector("body[data-view='down']")
    assert page.locator("#down").is_visible() and page.locator("#preview").is_hidden()
    assert page.locator(".face").count() == 0 and page.locator("#countdown").is_hidden()
    assert d.link.preview_subscribers == 0
    axe_check(page)
    d.show()  # the loop is back
    page.wait_for_selector("body[data-view='idle']")
    page.wait_for_selector("#preview:not([hidden])")
    assert d.link.preview_subscribers == 1, "the page reopened the preview"
    assert page.locator("#down").is_hidden()


def test_unknown_codes_do_not_break_the_screen(page: Any, door: Any) -> None:
    d = door()
    open_door(page, d)
    d.show(prompt={"track": 1, "code": "dance", "remaining_s": None, "total_s": None}, faces=[{**FACE, "state": "odd"}])
    page.wait_for_selector(".face[data-state='odd']")
    assert page.locator("#prompt").inner_text() == "Face found"  # the unknown prompt is left out
    assert page.locator(".face-label").inner_text() == "Face found"
    d.show("exploded")  # an unknown service is out of service
    wait_text(page, "#down-title", "Out of service")


def test_web_process_gone_shows_out_of_service(page: Any) -> None:
    link = ScriptedLink(door_state("ok", seq=1))
    link.publish_frame(preview_jpeg())
    app, _ = scripted_app(link)
    server = LiveServer(app)
    url = server.start()
    try:
        open_door(page, Door(url, link))
    finally:
        server.stop()
    page.wait_for_selector("body[data-view='down']")
    assert page.locator("#down-title").inner_text() == "Out of service"


SOUND_PROBE = """() => {
  window.tones = 0;
  const Real = window.AudioContext;
  window.AudioContext = class extends Real {
    createOscillator() { window.tones += 1; return super.createOscillator(); }
  };
}"""


@pytest.mark.parametrize("sound", [False, True])
def test_sound_only_when_configured(page: Any, door: Any, sound: bool) -> None:
    d = door(sound=sound)
    page.add_init_script(f"({SOUND_PROBE})()")
    open_door(page, d)
    d.decide("granted", "Ada")
    wait_text(page, "#result-title", "Welcome, Ada")
    assert (page.evaluate("window.tones") > 0) is sound


def test_enrolment_capture_shows_its_progress_and_hint(page: Any, door: Any) -> None:
    d = door()
    open_door(page, d)
    capture = {"id": "c1", "done": 2, "target": 5, "hint": "turn-left", "quality": 0.7, "state": "running"}
    d.show(faces=[FACE], capture=capture)
    wait_text(page, "#prompt", "Enrolment in progress · Photo 2 of 5 · Turn your head left")
    assert page.locator(".bar").get_attribute("data-prompt") == "capture"
    d.show(capture={**capture, "state": "done", "done": 5})  # over: back to the usual bar
    wait_text(page, "#prompt", "Step up and look at the camera")
