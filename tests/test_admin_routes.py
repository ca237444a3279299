"""The admin pages through the ASGI test client: login and its redirects, CSRF, roles, every change through the
service layer with the account as its actor, the upload store, the door unlock and the capture flow."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from kiosk.web.app import create_app
from kiosk.web.pages.enrol import Upload, UploadStore
from kiosk.web.scripted import ScriptedLink
from kiosk.web.services import WebServices
from tests.admin_helpers import (
    ADMIN,
    VIEWER,
    add_person,
    admin_config,
    admin_services,
    capture_reply,
    csrf_of,
    page_login,
)
from tests.web_helpers import PASSWORD

PAGES = ("/", "/people", "/events", "/admin/door", "/system")
LEAKED_KEY = re.compile(r"\badmin\.[a-z_]+\.[a-z_.-]+")


@pytest.fixture()
def services(tmp_path: Path) -> Iterator[WebServices]:
    s = admin_services(tmp_path)
    yield s
    s.close()


@pytest.fixture()
def client(services: WebServices) -> Iterator[TestClient]:
    with TestClient(create_app(services), base_url="http://127.0.0.1:8080") as c:
        yield c


def logged_in(client: TestClient, name: str = ADMIN) -> str:
    r = page_login(client, name)
    assert r.status_code == 303, r.text
    return csrf_of(client, "/people")


def link_of(services: WebServices) -> ScriptedLink:
    assert isinstance(services.link, ScriptedLink)
    return services.link


def admin_events(services: WebServices) -> list[dict[str, Any]]:
    with services.gallery() as g:
        return [e for e in g.events() if e["kind"] == "admin"]


# -- login -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/people", "/people/1", "/events", "/admin/door", "/system", "/people/new"])
def test_pages_redirect_to_login_with_next(client: TestClient, path: str) -> None:
    r = client.get(path, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login?next=")


def test_login_redirect_keeps_the_query(client: TestClient) -> None:
    r = client.get("/people?q=ad", follow_redirects=False)
    assert r.headers["location"] == "/login?next=%2Fpeople%3Fq%3Dad"


def test_login_form_logs_in_and_goes_to_next(client: TestClient) -> None:
    page = client.get("/login?next=/people")
    assert page.status_code == 200 and 'name="next" value="/people"' in page.text
    r = page_login(client, ADMIN, next_path="/people")
    assert r.status_code == 303 and r.headers["location"] == "/people"
    cookie = r.headers["set-cookie"].lower()
    assert "kiosk_session=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    home = client.get("/")
    assert home.status_code == 200 and ADMIN in home.text


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/x",
        "/\\evil.example",
        "http:/evil",
        "javascript:alert(1)",
        "/\t/evil.example",
        "evil.example",
        "/login?next=//evil",
    ],
)
def test_login_never_redirects_off_site(client: TestClient, target: str) -> None:
    r = page_login(client, ADMIN, next_path=target)
    assert r.status_code == 303
    assert r.headers["location"] == "/"
    page = client.get("/login", params={"next": target}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/"  # already logged in: straight on, locally


def test_login_page_sanitises_next_in_the_form(client: TestClient) -> None:
    page = client.get("/login", params={"next": "//evil.example"})
    assert 'name="next" value="/"' in page.text


def test_wrong_password_shows_one_message(client: TestClient) -> None:
    r = page_login(client, ADMIN, "wrong password!")
    assert r.status_code == 401
    assert "Wrong user name or password." in r.text
    assert "set-cookie" not in r.headers
    assert page_login(client, "nobody", "wrong password!").text.count("Wrong user name or password.") == 1


def test_login_is_throttled(tmp_path: Path) -> None:
    s = admin_services(tmp_path, admin_config(tmp_path, web={"login_attempts": 2}))
    with TestClient(create_app(s), base_url="http://127.0.0.1:8080") as c:
        for _ in range(2):
            assert page_login(c, ADMIN, "wrong password!").status_code == 401
        r = page_login(c, ADMIN)  # even the right password waits
        assert r.status_code == 429
        assert "Too many failed logins" in r.text and int(r.headers["retry-after"]) >= 1
    s.close()


def test_login_from_another_origin_is_refused(client: TestClient) -> None:
    r = client.post(
        "/login",
        data={"username": ADMIN, "password": PASSWORD, "next": "/"},
        headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert r.status_code == 403 and "set-cookie" not in r.headers


def test_login_replaces_a_planted_session(client: TestClient, services: WebServices) -> None:
    planted = services.accounts.login(VIEWER, PASSWORD, "127.0.0.1")
    client.cookies.set("kiosk_session", planted.token)
    r = page_login(client, ADMIN)
    assert r.status_code == 303
    assert services.accounts.session(planted.token) is None
    assert planted.token not in r.headers["set-cookie"]


def test_logout_ends_the_session(client: TestClient, services: WebServices) -> None:
    token = logged_in(client)
    session_token = client.cookies.get("kiosk_session")
    r = client.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert services.accounts.session(session_token) is None
    assert client.get("/", follow_redirects=False).status_code == 303


def test_logout_without_csrf_is_refused(client: TestClient) -> None:
    logged_in(client)
    assert client.post("/logout", data={}, follow_redirects=False).status_code == 403
    assert client.get("/", follow_redirects=False).status_code == 200


# -- pages -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", [ADMIN, VIEWER])
def test_every_page_renders_with_every_string_translated(client: TestClient, services: WebServices, who: str) -> None:
    pid = add_person(services, "Grace Hopper")
    logged_in(client, who)
    for path in (*PAGES, f"/people/{pid}", "/people?q=gr", "/login"):
        r = client.get(path, follow_redirects=False)
        if path == "/login":
            assert r.status_code == 303  # logged in already
            continue
        assert r.status_code == 200, (path, r.text)
        assert not LEAKED_KEY.search(r.text), (path, LEAKED_KEY.search(r.text))
        assert f"Signed in as {who}" in r.text
        assert "<main" in r.text and "<nav" in r.text and "<h1" in r.text
        assert 'style="' not in r.text and "<script>" not in r.text  # the CSP allows neither


def test_people_search_as_you_type_returns_rows_only(client: TestClient, services: WebServices) -> None:
    add_person(services, "Grace Hopper")
    add_person(services, "Alan Turing", seed=1)
    logged_in(client)
    r = client.get("/people?q=tur", headers={"HX-Request": "true", "HX-Target": "people-rows"})
    assert r.status_code == 200
    assert r.text.lstrip().startswith("<tbody") and "Alan Turing" in r.text and "Grace Hopper" not in r.text
    assert "<html" not in r.text
    full = client.get("/people?q=tur")
    assert "<html" in full.text and "Grace Hopper" not in full.text


def test_unknown_person_is_404(client: TestClient) -> None:
    logged_in(client)
    assert client.get("/people/999").status_code == 404
    assert client.get("/people/0").status_code == 404
    assert client.get("/people/abc").status_code == 422


def test_status_cards_say_when_the_loop_is_down(client: TestClient, services: WebServices) -> None:
    logged_in(client)
    link = link_of(services)
    link.state = {"v": 1, "service": "down", "faces": []}
    link.replies.pop("status")
    r = client.get("/status")
    assert r.status_code == 200
    assert "Not reachable" in r.text and "The door loop cannot be reached" in r.text


# -- roles and CSRF --------------------------------------------------------------------------------------------------


def test_viewer_sees_no_change_buttons(client: TestClient, services: WebServices) -> None:
    pid = add_person(services, "Grace Hopper")
    logged_in(client, VIEWER)
    person = client.get(f"/people/{pid}").text
    for action in ("/rename", "/enabled", "/validity", "/remove", "/templates/", "/people/new"):
        assert action not in person
    assert "/people/new" not in client.get("/people").text
    assert "/admin/door/unlock" not in client.get("/admin/door").text
    assert "/system/backups" not in client.get("/system").text


@pytest.mark.parametrize(
    "path, data",
    [
        ("/people/{pid}/rename", {"name": "Mallory"}),
        ("/people/{pid}/enabled", {"enabled": "false"}),
        ("/people/{pid}/validity", {"valid_from": "2030-01-01T00:00"}),
        ("/people/{pid}/remove", {"confirm": "yes"}),
        ("/people/{pid}/templates/1/delete", {}),
        ("/people/new/check", {"name": "Mallory"}),
        ("/people/new/store", {"upload": "x"}),
        ("/people/new/camera", {"name": "Mallory"}),
        ("/admin/door/unlock", {"reason": "let me in", "password": PASSWORD}),
        ("/system/backups", {}),
    ],
)
def test_viewer_changes_are_403(client: TestClient, services: WebServices, path: str, data: dict[str, str]) -> None:
    pid = add_person(services, "Grace Hopper")
    token = logged_in(client, VIEWER)
    r = client.post(path.format(pid=pid), data={**data, "csrf_token": token}, follow_redirects=False)
    assert r.status_code == 403
    with services.gallery() as g:
        person = g.get_person(pid)
    assert person.name == "Grace Hopper" and person.enabled and person.templates == 2
    assert link_of(services).requests == [] or all(q["op"] == "status" for q in link_of(services).requests)


@pytest.mark.parametrize("token", [None, "", "forged-token"])
def test_changes_without_the_csrf_token_are_403(client: TestClient, services: WebServices, token: str | None) -> None:
    pid = add_person(services, "Grace Hopper")
    logged_in(client)
    data = {"name": "Mallory"} | ({} if token is None else {"csrf_token": token})
    r = client.post(f"/people/{pid}/rename", data=data, follow_redirects=False)
    assert r.status_code == 403
    with services.gallery() as g:
        assert g.get_person(pid).name == "Grace Hopper"


def test_change_from_another_origin_is_403(client: TestClient, services: WebServices) -> None:
    pid = add_person(services, "Grace Hopper")
    token = logged_in(client)
    r = client.post(
        f"/people/{pid}/rename",
        data={"name": "Mallory", "csrf_token": token},
        headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert r.status_code == 403


def test_change_without_a_session_goes_to_login(client: TestClient, services: WebServices) -> None:
    pid = add_person(services, "Grace Hopper")
    r = client.post(f"/people/{pid}/rename", data={"name": "Mallory"}, follow_redirects=False)
    assert r.status_code in (303, 401)
    with services.gallery() as g:
        assert g.get_person(pid).name == "Grace Hopper"


# -- changes ---------------------------------------------------------------------------------------------------------


def test_rename_disable_validity_are_audited_with_the_account(client: TestClient, services: WebServices) -> None:
    pid = add_person(services, "Grace Hopper")
    token = logged_in(client)
    r = client.post(
        f"/people/{pid}/rename", data={"name": "Grace B. Hopper", "csrf_token": token}, follow_redirects=False
    )
    assert r.status_code == 303 and r.headers["location"] == f"/people/{pid}?done=renamed"
    assert "Renamed." in client.get(r.headers["location"]).text
    r = client.post(f"/people/{pid}/enabled", data={"enabled": "false", "csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303
    r = client.post(
        f"/people/{pid}/validity",
        data={"valid_from": "2030-01-01T08:00", "valid_until": "2030-12-31T18:00", "csrf_token": token},
        follow_redirects=False,
    )
    assert r.status_code == 303
    with services.gallery() as g:
        p = g.get_person(pid)
    assert p.name == "Grace B. Hopper" and not p.enabled
    assert p.valid_from is not None and p.valid_from.isoformat().startswith("2030-01-01T08:00")
    assert p.valid_until is not None and p.valid_until.isoformat().startswith("2030-12-31T18:00")
    page = client.get(f"/people/{pid}").text
    assert 'value="2030-01-01T08:00"' in page and "Disabled" in page
    actions = [(e["outcome"], e["detail"]["by"]) for e in admin_events(services)]
    assert [a for a, _ in actions][-3:] == ["renamed", "disabled", "validity set"]
    assert all(by.startswith(f"web:{ADMIN} from ") for _, by in actions[-3:])


def test_bad_changes_show_the_reason_and_change_nothing(client: TestClient, services: WebServices) -> None:
    pid = add_person(services, "Grace Hopper")
    add_person(services, "Alan Turing", seed=1)
    token = logged_in(client)
    taken = client.post(f"/people/{pid}/rename", data={"name": "alan turing", "csrf_token": token})
    assert taken.status_code == 422 and 'role="alert"' in taken.text
    backwards = client.post(
        f"/people/{pid}/validity",
        data={"valid_from": "2030-12-31T00:00", "valid_until": "2030-01-01T00:00", "csrf_token": token},
    )
    assert backwards.status_code == 422
    garbage = client.post(f"/people/{pid}/validity", data={"valid_from": "yesterday", "csrf_token": token})
    assert garbage.status_code == 422
    assert client.post(f"/people/{pid}/enabled", data={"enabled": "maybe", "csrf_token": token}).status_code == 422
    with services.gallery() as g:
        p = g.get_person(pid)
    assert p.name == "Grace Hopper" and p.valid_from is None and p.valid_until is None and p.enabled


def test_delete_one_template(client: TestClient, services: WebServices) -> None:
    pid = add_person(services, "Grace Hopper", templates=3)
    token = logged_in(client)
    with services.gallery() as g:
        first = g.templates(pid)[0]["id"]
    r = client.post(f"/people/{pid}/templates/{first}/delete", data={"csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303
    with services.gallery() as g:
        assert [t["id"] for t in g.templates(pid)] == [first + 1, first + 2]
    again = client.post(f"/people/{pid}/templates/{first}/delete", data={"csrf_token": token}, follow_redirects=False)
    assert again.status_code == 404


def test_remove_needs_the_box_ticked(client: TestClient, services: WebServices) -> None:
    pid = add_person(services, "Grace Hopper")
    token = logged_in(client)
    r = client.post(f"/people/{pid}/remove", data={"csrf_token": token})
    assert r.status_code == 422 and "Tick the box" in r.text
    r = client.post(f"/people/{pid}/remove", data={"csrf_token": token, "confirm": "yes"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/people?done=removed"
    assert client.get(f"/people/{pid}").status_code == 404
    assert admin_events(services)[-1]["outcome"] == "removed"


# -- uploads waiting for a decision -----------------------------------------------------------------------------------


def test_upload_store_is_per_session_and_expires() -> None:
    now = [0.0]
    store = UploadStore(keep_s=60.0, per_session=2, clock=lambda: now[0])
    token = store.put(Upload("alice", "Ada", None, [("a.jpg", b"x")]))
    assert store.get("alice", token) is not None
    assert store.get("mallory", token) is None
    now[0] = 61.0
    assert store.get("alice", token) is None and len(store) == 0
    first = store.put(Upload("alice", "A", None))
    second = store.put(Upload("alice", "B", None))
    third = store.put(Upload("alice", "C", None))
    assert store.get("alice", first) is None  # the oldest made room
    assert store.get("alice", second) is not None and store.get("alice", third) is not None


def test_uploaded_photo_only_for_the_session_that_sent_it(client: TestClient, services: WebServices) -> None:
    token = logged_in(client)
    session = services.accounts.session(client.cookies.get("kiosk_session"))
    assert session is not None
    store = client.app.state.admin_uploads = UploadStore()
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
    key = store.put(Upload(UploadStore.owner_of(session), "Ada", None, [("a.png", png), ("b.txt", b"text")]))
    r = client.get(f"/people/new/upload/{key}/0")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content == png
    assert client.get(f"/people/new/upload/{key}/1").status_code == 404  # not an image: no preview
    assert client.get(f"/people/new/upload/{key}/5").status_code == 404
    other = store.put(Upload("someone else", "Eve", None, [("a.png", png)]))
    assert client.get(f"/people/new/upload/{other}/0").status_code == 410
    gone = client.post("/people/new/store", data={"upload": "nope", "csrf_token": token})
    assert gone.status_code == 410 and "choose them again" in gone.text
    client.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert store.get(UploadStore.owner_of(session), key) is None  # logging out drops the waiting photos
    assert store.get("someone else", other) is not None


def test_enrol_needs_a_good_name_and_photos(client: TestClient) -> None:
    token = logged_in(client)
    r = client.post("/people/new/check", data={"name": "  ", "csrf_token": token})
    assert r.status_code == 422 and 'role="alert"' in r.text
    r = client.post("/people/new/check", data={"name": "Ada", "csrf_token": token})
    assert r.status_code == 422 and "Choose between 1 and" in r.text
    assert client.get("/people/new?person=999").status_code == 404


# -- the door --------------------------------------------------------------------------------------------------------


def test_unlock_needs_the_password_again(client: TestClient, services: WebServices) -> None:
    token = logged_in(client)
    link = link_of(services)
    r = client.post("/admin/door/unlock", data={"reason": "delivery", "password": "not it!", "csrf_token": token})
    assert r.status_code == 422 and "Wrong password" in r.text
    r = client.post("/admin/door/unlock", data={"reason": " ", "password": PASSWORD, "csrf_token": token})
    assert r.status_code == 422 and "say why the door is unlocked" in r.text
    assert not [q for q in link.requests if q["op"] == "unlock"]
    r = client.post(
        "/admin/door/unlock",
        data={"reason": "delivery", "password": PASSWORD, "csrf_token": token},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/admin/door?done=unlocked"
    (unlock,) = [q for q in link.requests if q["op"] == "unlock"]
    assert unlock["reason"] == "delivery" and unlock["actor"].startswith(f"web:{ADMIN}")


def test_unlock_refused_by_the_loop_is_shown(client: TestClient, services: WebServices) -> None:
    token = logged_in(client)
    link_of(services).replies["unlock"] = {"ok": False, "error": "forbidden", "detail": "not an admin group member"}
    r = client.post("/admin/door/unlock", data={"reason": "delivery", "password": PASSWORD, "csrf_token": token})
    assert r.status_code == 422 and "not an admin group member" in r.text


# -- the door camera -------------------------------------------------------------------------------------------------


def test_capture_at_the_door_camera(client: TestClient, services: WebServices) -> None:
    token = logged_in(client)
    link = link_of(services)
    link.replies["capture"] = {"ok": True, "id": "cap1"}
    link.state = link.state | {
        "capture": {"id": "cap1", "done": 2, "target": 5, "hint": "turn-left", "quality": 0.72, "state": "running"}
    }
    r = client.post("/people/new/camera", data={"name": "Ada Lovelace", "csrf_token": token})
    assert r.status_code == 200
    assert "Frames taken: 2 of 5" in r.text and "Turn the head a little left" in r.text
    (start,) = [q for q in link.requests if q["op"] == "capture"]
    assert start["actor"].startswith(f"web:{ADMIN}")
    progress = re.search(r'hx-get="(/people/new/camera/[^"]+/progress)"', r.text)
    assert progress
    key = progress.group(1).split("/")[4]
    link.state = link.state | {"capture": None}
    link.replies["capture-result"] = capture_reply(3)
    done = client.get(progress.group(1))
    assert "Done: store the frames taken." in done.text and f"/people/new/camera/{key}/store" in done.text
    stored = client.post(f"/people/new/camera/{key}/store", data={"csrf_token": token}, follow_redirects=False)
    assert stored.status_code == 303
    with services.gallery() as g:
        person = g.get_person("Ada Lovelace")
    assert person.templates == 3 and stored.headers["location"] == f"/people/{person.id}?done=enrolled"


def test_capture_refused_or_malformed(client: TestClient, services: WebServices) -> None:
    token = logged_in(client)
    link = link_of(services)
    link.replies["capture"] = {"ok": False, "error": "busy", "detail": "a capture is already running"}
    r = client.post("/people/new/camera", data={"name": "Ada Lovelace", "csrf_token": token})
    assert r.status_code == 503 and "a capture is already running" in r.text
    link.replies["capture"] = {"ok": True, "id": "cap2"}
    link.state = link.state | {"capture": {"id": "cap2", "done": 0, "target": 5, "state": "running"}}
    r = client.post("/people/new/camera", data={"name": "Ada Lovelace", "csrf_token": token})
    found = re.search(r"/people/new/camera/([^/]+)/", r.text)
    assert found
    key = found.group(1)
    good = capture_reply(3)
    for bad, why in [
        (good | {"frames": [{"embedding": "%%%"}]}, "malformed embedding"),
        (good | {"frames": []}, "no frames"),
        (good | {"model": {"id": "arcface", "sha256": "0" * 64}}, "restart both after a model change"),
    ]:
        link.replies["capture-result"] = bad
        r = client.post(f"/people/new/camera/{key}/store", data={"csrf_token": token})
        assert r.status_code == 200 and why in r.text
    with services.gallery() as g:
        assert not g.list_people()
    r = client.post(f"/people/new/camera/{key}/cancel", data={"csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303
    assert [q["op"] for q in link.requests if q["op"].startswith("capture-cancel")] == ["capture-cancel"]


# -- events ----------------------------------------------------------------------------------------------------------


def test_events_filters_and_bad_values(client: TestClient, services: WebServices) -> None:
    with services.gallery() as g:
        g.add_event("access", "granted", person_id=1, person_name="Grace Hopper", score=0.81, liveness="pass")
        g.add_event("access", "unknown", score=0.2, liveness="not_checked")
    logged_in(client)
    r = client.get("/events?outcome=granted")
    assert r.status_code == 200 and "Grace Hopper" in r.text and "Not recognised" not in r.text.split("<tbody")[1]
    assert "format=csv&amp;outcome=granted" in r.text
    bad = client.get("/events?since=yesterday")
    assert bad.status_code == 422 and "since" in bad.text and 'role="alert"' in bad.text
    assert client.get("/events?before_id=-3").status_code == 422
    rows = client.get("/events/rows?outcome=unknown")
    assert rows.status_code == 200 and rows.text.lstrip().startswith("<tbody")
    assert "0.20" in rows.text and "Grace Hopper" not in rows.text
    assert client.get("/events/1/snapshot").status_code == 404  # snapshots are off


def test_browser_form_posts_under_no_referrer_are_accepted(client: TestClient) -> None:
    """Referrer-Policy no-referrer makes a browser send ``Origin: null`` with a page's own form; Sec-Fetch-Site
    (which no page can set) tells the site's forms from another's."""
    own = {"Origin": "null", "Sec-Fetch-Site": "same-origin"}
    r = client.post("/login", data={"username": ADMIN, "password": PASSWORD}, headers=own, follow_redirects=False)
    assert r.status_code == 303
    token = csrf_of(client, "/people")
    foreign = {"Origin": "null", "Sec-Fetch-Site": "cross-site"}
    r = client.post("/logout", data={"csrf_token": token}, headers=foreign, follow_redirects=False)
    assert r.status_code == 403
    r = client.post("/logout", data={"csrf_token": token}, headers={"Origin": "null"}, follow_redirects=False)
    assert r.status_code == 403
    assert client.post("/logout", data={"csrf_token": token}, headers=own, follow_redirects=False).status_code == 303


def test_live_parts_send_an_ended_session_to_the_login_page(client: TestClient) -> None:
    headers = {"HX-Request": "true", "HX-Current-URL": "http://127.0.0.1:8080/events?outcome=granted"}
    r = client.get("/events/rows", headers=headers, follow_redirects=False)
    assert r.status_code == 401
    assert r.headers["hx-redirect"] == "/login?next=%2Fevents%3Foutcome%3Dgranted"
    evil = {"HX-Request": "true", "HX-Current-URL": "https://evil.example//evil.example/x"}
    assert client.get("/status", headers=evil, follow_redirects=False).headers["hx-redirect"] == "/login?next=%2F"


def test_snapshots_shown_and_served_when_enabled(tmp_path: Path) -> None:
    cfg = admin_config(tmp_path, events={"snapshots": True})
    s = admin_services(tmp_path, cfg)
    cfg.snapshot_dir.mkdir(parents=True, mode=0o700)
    jpeg = b"\xff\xd8\xff\xe0" + b"\0" * 32
    (cfg.snapshot_dir / "20261206T101500_000000Z_granted.jpg").write_bytes(jpeg)
    with s.gallery() as g:
        with_snap = g.add_event("access", "granted", detail={"snapshot": "20261206T101500_000000Z_granted.jpg"})
        tricky = g.add_event("access", "denied", detail={"snapshot": "../../etc/passwd"})
    with TestClient(create_app(s), base_url="http://127.0.0.1:8080") as c:
        logged_in(c)
        page = c.get("/events").text
        assert f'src="/events/{with_snap}/snapshot"' in page and f"/events/{tricky}/snapshot" not in page
        r = c.get(f"/events/{with_snap}/snapshot")
        assert r.status_code == 200 and r.content == jpeg and r.headers["content-type"] == "image/jpeg"
        assert c.get(f"/events/{tricky}/snapshot").status_code == 404
    s.close()


def test_verdicts_page_shows_each_kind_of_verdict(
    client: TestClient, services: WebServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verdict cards, with the service's verdicts scripted (the browser tests run the real ones)."""
    from kiosk.web import people as people_service

    grace = add_person(services, "Grace Hopper")
    scripted = [
        people_service.PhotoVerdict(0, "good.jpg", True, "ok", "ok (quality 0.83)", measured={"sharpness": 88.0}),
        people_service.PhotoVerdict(
            1,
            "two.jpg",
            False,
            "several-faces",
            "2 faces found: pick the one to enrol",
            faces=[[0.1, 0.1, 0.2, 0.3], [0.6, 0.1, 0.2, 0.3]],
        ),
        people_service.PhotoVerdict(
            2, "blur.jpg", False, "quality", "failed quality: too blurry: sharpness 5 < 20", measured={"sharpness": 5.0}
        ),
        people_service.PhotoVerdict(
            3,
            "other.jpg",
            False,
            "looks-like",
            "looks like Grace Hopper (0.71)",
            looks_like={"person_id": grace, "name": "Grace Hopper", "score": 0.71},
        ),
        people_service.PhotoVerdict(4, "notes.txt", False, "unreadable", "not an image"),
    ]
    seen: list[Any] = []

    def assess(services: Any, photos: Any, faces: Any = None, **kw: Any) -> Any:
        seen.append((len(photos), faces, kw))
        return scripted

    monkeypatch.setattr(people_service, "assess_photos", assess)
    token = logged_in(client)
    files = [("photos", (f"p{i}.jpg", b"\xff\xd8\xff" + bytes([i]), "image/jpeg")) for i in range(5)]
    r = client.post("/people/new/check", data={"name": "Ada Lovelace", "csrf_token": token}, files=files)
    assert r.status_code == 200
    assert seen == [(5, None, {"name": "Ada Lovelace", "append": False})]
    text = r.text
    assert "1 of 5 photos can be stored." in text
    for label in ("Good", "Several faces", "Failed quality", "Not readable", "sharpness 5 &lt; 20"):
        assert label in text
    assert "Looks like Grace Hopper (0.71)." in text and f'href="/people/{grace}"' in text
    assert text.count('name="face_1"') == 2 and "data-faces=" in text
    assert text.count("<img") == 4  # no preview for the unreadable file
    assert "Store the 1 good photos" in text
    with services.gallery() as g:
        assert [p.name for p in g.list_people()] == ["Grace Hopper"]  # nothing stored yet
    upload = re.search(r'name="upload" value="([^"]+)"', text)
    assert upload
    again = client.post(
        "/people/new/store", data={"upload": upload.group(1), "face_1": "1", "action": "check", "csrf_token": token}
    )
    assert again.status_code == 200 and seen[-1][1] == {1: 1}
    assert re.search(r'name="face_1" value="1" checked', again.text)


def test_pages_follow_the_configured_language(tmp_path: Path) -> None:
    s = admin_services(tmp_path, admin_config(tmp_path, screen={"language": "zh-Hans"}))
    with TestClient(create_app(s), base_url="http://127.0.0.1:8080") as c:
        login = c.get("/login").text
        assert '<html lang="zh-Hans">' in login and "用户名" in login
        r = page_login(c, ADMIN, "wrong password!")
        assert "用户名或密码错误。" in r.text
        logged_in(c)
        people = c.get("/people").text
        assert "按姓名搜索" in people and not LEAKED_KEY.search(people)
    s.close()


def test_capture_of_someone_already_enrolled_is_refused(client: TestClient, services: WebServices) -> None:
    """The capture goes through the CLI's batch checks: a face enrolled as somebody else is not stored again."""
    token = logged_in(client)
    link = link_of(services)
    link.replies["capture"] = {"ok": True, "id": "c"}
    link.replies["capture-result"] = capture_reply(3, seed=9)
    for name in ("First Name", "Second Name"):
        r = client.post("/people/new/camera", data={"name": name, "csrf_token": token})
        found = re.search(r"/people/new/camera/([^/]+)/", r.text)
        assert found
        r = client.post(
            f"/people/new/camera/{found.group(1)}/store", data={"csrf_token": token}, follow_redirects=False
        )
    assert r.status_code == 200 and "already enrolled as &#39;First Name&#39;" in r.text
    with services.gallery() as g:
        assert [p.name for p in g.list_people()] == ["First Name"]


def test_the_status_refresh_does_not_walk_the_event_chain(
    client: TestClient, services: WebServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dashboard's cards refresh every 5 s; checking the whole chain is left to the full page."""
    from kiosk.web import events as event_service

    logged_in(client)
    calls: list[int] = []
    real = event_service.chain_state

    def counted(s: WebServices) -> dict[str, Any]:
        calls.append(1)
        return real(s)

    monkeypatch.setattr(event_service, "chain_state", counted)
    assert client.get("/status").status_code == 200 and calls == []
    assert "Intact" in client.get("/").text and calls == [1]
