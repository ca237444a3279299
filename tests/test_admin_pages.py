"""The admin app in headless Chromium: log in, enrol from uploaded photos with a rejected one among them, see the
person, watch an event arrive live, a viewer's read-only pages, and axe-core on every admin page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiosk.web.app import create_app
from kiosk.web.services import WebServices
from tests.admin_helpers import ADMIN, VIEWER, add_person, admin_services
from tests.web_helpers import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SLOW_MS = 60_000  # the first enrolment loads the recognition models


@pytest.fixture()
def services(tmp_path: Path) -> Iterator[WebServices]:
    s = admin_services(tmp_path)
    yield s
    s.close()


@pytest.fixture()
def base(services: WebServices, live_server: Any) -> str:
    url: str = live_server(create_app(services))
    return url


def log_in(page: Any, base: str, name: str = ADMIN, path: str = "/") -> None:
    page.goto(base + path)
    assert "/login" in page.url
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(re.escape(base + path) + "$"))
    assert page.get_by_text(f"Signed in as {name}").is_visible()


def lfw_photos(faces_dir: Path, n: int = 3) -> list[Path]:
    """``n`` photos of the first LFW person with that many (read from KIOSK_TEST_DATA, never copied)."""
    folder = faces_dir / "lfw" / "images"
    for person in sorted(folder.iterdir()):
        photos = sorted(person.glob("*.jpg"))
        if len(photos) >= n + 2:
            return photos[:n]
    raise AssertionError(f"no LFW person with {n} photos under {folder}")


def no_face_photo(faces_dir: Path) -> Path:
    return faces_dir / "samples" / "skimage-cc0-samples" / "nonface" / "coffee.png"


def test_enrol_from_photos_with_a_rejected_one(
    page: Any, base: str, services: WebServices, faces_dir: Path, axe_check: Any
) -> None:
    log_in(page, base, path="/people")
    axe_check(page)
    page.get_by_role("link", name="Enrol a person").click()
    page.wait_for_url(base + "/people/new")
    axe_check(page)
    page.locator("#name").fill("Test Person")
    photos = [*lfw_photos(faces_dir), no_face_photo(faces_dir)]
    page.get_by_label("Photos", exact=True).set_input_files([str(p) for p in photos])
    page.get_by_role("button", name="Check the photos").click()
    page.wait_for_url(base + "/people/new/check", timeout=SLOW_MS)
    cards = page.locator("li.verdict")
    assert cards.count() == 4
    rejected = cards.filter(has_text="coffee.png")
    assert rejected.get_by_text("No face").first.is_visible()
    assert "no face found" in rejected.inner_text()
    good = cards.filter(has=page.locator(".badge.ok")).count()
    assert good >= 1
    with services.gallery() as g:
        assert g.list_people() == []  # nothing is saved before "store"
    axe_check(page)  # the enrol page with its verdicts
    page.get_by_role("button", name=re.compile(r"Store the \d+ good photos")).click()
    page.wait_for_url(re.compile(r"/people/\d+\?done=enrolled$"), timeout=SLOW_MS)
    assert page.get_by_role("heading", level=1).inner_text() == "Test Person"
    assert page.get_by_text("Enrolled.").is_visible()
    axe_check(page)  # a person's page
    with services.gallery() as g:
        (person,) = g.list_people()
    assert person.name == "Test Person" and person.templates == good
    page.get_by_role("link", name="← All people").click()
    page.get_by_label("Search by name").fill("test")
    assert page.locator("#people-rows").get_by_role("link", name="Test Person").is_visible()
    page.get_by_label("Search by name").fill("nobody here")
    page.locator("#people-rows").get_by_text("Nobody's name contains").wait_for()


def test_pick_a_face_on_a_photo_with_several(page: Any, base: str, services: WebServices, tmp_path: Path) -> None:
    import cv2
    import numpy as np
    from skimage import data

    astronaut = np.ascontiguousarray(data.astronaut()[..., ::-1])  # public domain (NASA)
    two = tmp_path / "two.jpg"
    cv2.imwrite(str(two), np.concatenate([astronaut, astronaut], axis=1))
    log_in(page, base, path="/people/new")
    page.locator("#name").fill("Picked Face")
    page.get_by_label("Photos", exact=True).set_input_files([str(two)])
    page.get_by_role("button", name="Check the photos").click()
    page.wait_for_url(base + "/people/new/check", timeout=SLOW_MS)
    assert page.get_by_text("Several faces").first.is_visible()
    assert page.get_by_role("button", name=re.compile("Store")).is_disabled()
    boxes = page.locator("button.face-box")
    assert boxes.count() == 2
    boxes.nth(1).click()  # the box on the photo picks the radio button below it
    assert page.get_by_role("radio", name="Face 2").is_checked()
    assert boxes.nth(1).get_attribute("aria-pressed") == "true"
    page.get_by_role("button", name="Check again with the faces chosen").click()
    page.wait_for_url(base + "/people/new/store", timeout=SLOW_MS)
    page.get_by_role("button", name="Store the 1 good photos").click()
    page.wait_for_url(re.compile(r"/people/\d+\?done=enrolled$"), timeout=SLOW_MS)
    with services.gallery() as g:
        assert g.get_person("Picked Face").templates == 1


def test_event_arrives_live(page: Any, base: str, services: WebServices, axe_check: Any) -> None:
    add_person(services, "Grace Hopper")
    log_in(page, base, path="/events")
    page.get_by_text("Live: new events appear here.").wait_for()
    axe_check(page)
    assert page.locator("#events-rows").get_by_text("Grace Hopper").count() == 0
    with services.gallery() as g:
        g.add_event("access", "granted", person_id=1, person_name="Grace Hopper", score=0.83, liveness="pass")
    row = page.locator("#events-rows tr").filter(has_text="Grace Hopper")
    row.wait_for()
    assert "Granted" in row.inner_text() and "0.83" in row.inner_text()
    assert page.get_by_text("1 new event(s)").is_visible()


def test_viewer_sees_and_cannot_change(page: Any, base: str, services: WebServices) -> None:
    pid = add_person(services, "Grace Hopper")
    log_in(page, base, VIEWER, path=f"/people/{pid}")
    assert page.get_by_role("heading", level=1).inner_text() == "Grace Hopper"
    assert page.get_by_role("button").filter(has_text=re.compile("Rename|Disable|Remove|Delete")).count() == 0
    assert page.get_by_role("link", name="Add photos").count() == 0
    token = page.locator('input[name="csrf_token"]').first.get_attribute("value")
    r = page.request.post(base + f"/people/{pid}/rename", form={"name": "Mallory", "csrf_token": token})
    assert r.status == 403
    page.goto(base + "/people")
    assert page.get_by_role("link", name="Enrol a person").count() == 0
    with services.gallery() as g:
        assert g.get_person(pid).name == "Grace Hopper"


@pytest.mark.parametrize("viewport", [(1024, 600), (1920, 1080)])
def test_every_admin_page_passes_axe(page: Any, base: str, services: WebServices, axe_check: Any) -> None:
    pid = add_person(services, "Grace Hopper")
    with services.gallery() as g:
        g.add_event("access", "granted", person_id=pid, person_name="Grace Hopper", score=0.83, liveness="pass")
        g.add_event("access", "unknown", score=0.21, liveness="not_checked")
    page.goto(base + "/login")
    axe_check(page)
    log_in(page, base)
    axe_check(page)  # dashboard
    for path in ("/people", f"/people/{pid}", "/people/new", "/events", "/admin/door", "/system"):
        page.goto(base + path)
        assert page.locator("main h1").count() == 1
        axe_check(page)
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(base + "/login")


def test_enrol_at_the_door_camera(page: Any, base: str, services: WebServices, axe_check: Any) -> None:
    """The page follows the loop's capture (state ``capture``) live, then stores the frames of ``capture-result``."""
    from kiosk.web.scripted import ScriptedLink
    from tests.admin_helpers import capture_reply

    link = services.link
    assert isinstance(link, ScriptedLink)
    link.replies["capture"] = {"ok": True, "id": "cap1"}
    running = {"id": "cap1", "done": 1, "target": 5, "hint": "look-at-camera", "quality": 0.42, "state": "running"}
    link.state = link.state | {"capture": running}
    log_in(page, base, path="/people/new")
    page.locator("#camera-name").fill("Door Camera Person")
    page.get_by_role("button", name="Start the capture").click()
    page.get_by_text("Frames taken: 1 of 5").wait_for()
    assert page.get_by_text("Look at the camera").is_visible()
    axe_check(page)
    link.state = link.state | {"capture": running | {"done": 4, "hint": "turn-right", "quality": 0.81}}
    page.get_by_text("Frames taken: 4 of 5").wait_for()  # htmx polls the progress
    assert page.get_by_text("Turn the head a little right").is_visible()
    assert page.locator("meter").get_attribute("value") == "0.81"
    link.replies["capture-result"] = capture_reply(5)
    link.state = link.state | {"capture": None}
    page.get_by_role("button", name="Store").click()
    page.wait_for_url(re.compile(r"/people/\d+\?done=enrolled$"))
    with services.gallery() as g:
        assert g.get_person("Door Camera Person").templates == 5
    assert [q["op"] for q in link.requests if q["op"].startswith("capture")][:1] == ["capture"]


def test_delete_a_template_asks_first_and_remove_needs_the_box(page: Any, base: str, services: WebServices) -> None:
    pid = add_person(services, "Grace Hopper", templates=2)
    log_in(page, base, path=f"/people/{pid}")
    delete = page.get_by_role("button", name=re.compile(r"Delete template \d+")).first
    page.once("dialog", lambda dialog: dialog.dismiss())
    delete.click()
    with services.gallery() as g:
        assert g.get_person(pid).templates == 2  # dismissed: nothing sent
    page.once("dialog", lambda dialog: dialog.accept())
    delete.click()
    page.wait_for_url(re.compile(r"done=template-deleted$"))
    assert page.get_by_text("Template deleted and erased.").is_visible()
    with services.gallery() as g:
        assert g.get_person(pid).templates == 1
    remove = page.get_by_role("button", name="Remove person")
    remove.click()  # the browser refuses: the box is required
    assert page.url.endswith("done=template-deleted")
    page.get_by_label("Yes, remove Grace Hopper").check()
    remove.click()
    page.wait_for_url(base + "/people?done=removed")
    assert page.get_by_text("Person removed and their templates erased.").is_visible()
    with services.gallery() as g:
        assert g.list_people() == []


@pytest.mark.parametrize("viewport", [(1024, 600), (1920, 1080)])
def test_doors_page_at_a_hub(page: Any, base: str, services: WebServices, axe_check: Any) -> None:
    """A hub's admin app: every door with its state, refreshed live; a remote unlock through the form."""
    import time

    from kiosk.fleet import hubdb
    from kiosk.gallery import utc_iso
    from tests.doors_helpers import ScriptedCommands, make_hub

    make_hub(services)
    services.fleet_command = commands = ScriptedCommands()
    log_in(page, base)
    page.get_by_role("link", name="Doors").click()
    page.wait_for_url(base + "/admin/doors")
    assert page.get_by_role("heading", level=1).inner_text() == "Doors of the site"
    rows = page.locator("#doors-rows tr")
    assert rows.count() == 2
    front, back = rows.filter(has_text="front"), rows.filter(has_text="back")
    assert "Online" in front.inner_text() and "In sync" in front.inner_text() and "9.7" in front.inner_text()
    assert "Offline" in back.inner_text() and "Broken at event 9" in back.inner_text()
    axe_check(page)
    # The door comes back: the table shows it at its next refresh (htmx, every 5 s), the form stays as typed.
    page.get_by_label("Reason").fill("delivery at the back")
    with services.gallery(need_key=False) as g:
        beat = {"rev": 12, "digest": "older", "outbox_depth": 0, "last_event": 17, "loop": {"fps": 8.5},
                "received": time.time()}  # fmt: skip
        hubdb.save_heartbeats(g, {"back": (utc_iso(), beat)})
    back.get_by_text("Online").wait_for(timeout=12_000)
    assert page.get_by_label("Reason").input_value() == "delivery at the back"
    page.get_by_label("Door", exact=True).select_option("back")
    page.get_by_label("Your password, again").fill(PASSWORD)
    page.get_by_role("button", name="Unlock now").click()
    page.wait_for_url(base + "/admin/doors?done=door-unlocked")
    assert page.get_by_role("status").inner_text().startswith("The door was unlocked")
    assert commands.calls == [
        {"door": "back", "cmd": "unlock", "actor": commands.calls[0]["actor"], "reason": "delivery at the back"}
    ]
    axe_check(page)
