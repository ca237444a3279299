"""The JSON API as a whole: who may call what (every route enumerated from the app, so a new one cannot slip
past), CSRF on every change, the door and its manual unlock, the system page's data, backups, the OpenAPI
document."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from kiosk.gallery.open import open_gallery
from kiosk.screen.client import DoorLink
from kiosk.web.app import create_app
from kiosk.web.scripted import ScriptedLink
from kiosk.web.services import WebServices
from tests.web_helpers import PASSWORD, make_services
from tests.webapi_support import api_config, client_for, enrol, powell

pytest_plugins = ("tests.webapi_fixtures",)

CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
# The routes any visitor may use: health, logging in, the OpenAPI document.
PUBLIC = {("GET", "/api/health"), ("POST", "/api/session"), ("GET", "/api/openapi.json")}


def _api_routes(services: WebServices) -> list[tuple[str, str]]:
    app = create_app(services)
    found = [
        (str(method), str(route.path))
        for route in iter_route_contexts(app.routes)  # the included routers' routes too
        if str(route.path).startswith("/api") and getattr(route, "dependant", None) is not None
        for method in sorted(getattr(route, "methods", None) or ())
    ]
    assert len(found) >= 15, found  # the enumeration itself works
    return found


def _url(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def _link(services: WebServices) -> ScriptedLink:
    link = services.link
    assert isinstance(link, ScriptedLink)
    return link


def _admin_events(services: WebServices) -> list[dict[str, Any]]:
    with open_gallery(services.cfg, need_key=False) as g:
        return [e for e in g.events() if e["kind"] == "admin"]


def test_every_changing_route_is_403_for_a_viewer(viewer: TestClient, services: WebServices) -> None:
    changing = [(m, p) for m, p in _api_routes(services) if m in CHANGING and p != "/api/session"]
    assert ("POST", "/api/door/unlock") in changing and ("POST", "/api/people") in changing
    for method, path in changing:
        r = viewer.request(method, _url(path), json={})
        assert r.status_code == 403, (method, path, r.status_code, r.text)
    assert _link(services).requests == [] and _admin_events(services) == []


def test_every_changing_route_needs_the_csrf_token(services: WebServices) -> None:
    changing = [(m, p) for m, p in _api_routes(services) if m in CHANGING and (m, p) not in PUBLIC]
    with client_for(services, "ada") as admin:
        del admin.headers["X-CSRF-Token"]
        for method, path in changing:
            r = admin.request(method, _url(path), json={"reason": "r", "password": PASSWORD})
            assert r.status_code == 403 and "CSRF" in r.json()["detail"], (method, path, r.text)
        # A token from another session is no better than none.
        r = admin.post("/api/door/unlock", json={"reason": "r", "password": PASSWORD}, headers={"X-CSRF-Token": "x"})
        assert r.status_code == 403
    assert _link(services).requests == []


def test_every_other_route_needs_a_login(services: WebServices) -> None:
    with client_for(services, None) as anonymous:
        for method, path in _api_routes(services):
            if (method, path) in PUBLIC:
                continue
            r = anonymous.request(method, _url(path))
            assert r.status_code in (401, 403), (method, path, r.status_code)
            assert "detail" in r.json()


def test_admin_only_reads(viewer: TestClient, admin: TestClient) -> None:
    name = admin.post("/api/backups").json()["name"]
    assert viewer.get(f"/api/backups/{name}").status_code == 403  # a backup holds the templates


# -- door -----------------------------------------------------------------------------------------------------------


def test_door_state(viewer: TestClient, services: WebServices) -> None:
    body = viewer.get("/api/door").json()
    assert body == {
        "loop": "up",
        "service": "ok",
        "relay": "locked",
        "contact": "closed",
        "fps": 9.5,
        "detail": None,
    }
    _link(services).go_down()
    body = viewer.get("/api/door").json()
    assert body["loop"] == "down" and body["relay"] is None and "cannot be reached" in body["detail"]


def test_unlock_sends_the_request_with_actor_and_reason(admin: TestClient, services: WebServices) -> None:
    r = admin.post("/api/door/unlock", json={"reason": "  delivery at the back door ", "password": PASSWORD})
    assert r.status_code == 200 and r.json() == {"ok": True, "pulse_s": 3.0}
    assert _link(services).requests == [
        {"op": "unlock", "reason": "delivery at the back door", "actor": "web:ada from testclient"}
    ]


def test_unlock_with_a_wrong_password_is_refused_and_not_sent(admin: TestClient, services: WebServices) -> None:
    r = admin.post("/api/door/unlock", json={"reason": "delivery", "password": "not the password"})
    assert r.status_code == 403 and "wrong password" in r.json()["detail"]
    assert _link(services).requests == []


@pytest.mark.parametrize("reason", ["", "   ", "x" * 201, "line\nbreak", "bidi \u202e trick"])
def test_unlock_needs_a_reason(admin: TestClient, services: WebServices, reason: str) -> None:
    r = admin.post("/api/door/unlock", json={"reason": reason, "password": PASSWORD})
    assert r.status_code == 422 and "reason" in r.json()["detail"]
    assert _link(services).requests == []


def test_unlock_malformed_bodies(admin: TestClient, services: WebServices) -> None:
    for body in ({}, {"reason": "x"}, {"password": PASSWORD}, {"reason": 5, "password": PASSWORD}):
        assert admin.post("/api/door/unlock", json=body).status_code == 422
    assert admin.post("/api/door/unlock", content=b"not json", headers={"content-type": "text/plain"}).status_code in (
        415,
        422,
    )
    assert _link(services).requests == []


def test_unlock_as_viewer_is_403(viewer: TestClient, services: WebServices) -> None:
    r = viewer.post("/api/door/unlock", json={"reason": "let me in", "password": PASSWORD})
    assert r.status_code == 403 and _link(services).requests == []


def test_unlock_with_the_loop_down_is_503(admin: TestClient, services: WebServices) -> None:
    _link(services).go_down()
    r = admin.post("/api/door/unlock", json={"reason": "delivery", "password": PASSWORD})
    assert r.status_code == 503
    assert r.json()["detail"].startswith("the door loop is not running or did not answer")
    assert "no unlock was confirmed" in r.json()["detail"]


def test_with_the_real_door_link_and_no_loop_running(tmp_path: Path, pipeline: Any) -> None:
    """kiosk.screen.client.DoorLink on a runtime folder where no loop serves: the door is down, unlocking is 503."""
    services = make_services(tmp_path, api_config(tmp_path))
    services.link = DoorLink(services.cfg.runtime_dir, stale_s=0.2)
    services.use_pipeline(pipeline)
    services.accounts.add("ada", "admin", PASSWORD)
    with client_for(services, "ada") as admin:
        door = admin.get("/api/door").json()
        assert door["loop"] == "down" and door["relay"] is None and door["detail"]
        r = admin.post("/api/door/unlock", json={"reason": "delivery", "password": PASSWORD})
        assert r.status_code == 503 and "no unlock was confirmed" in r.json()["detail"]
        assert admin.get("/api/system").json()["loop"] is None
    services.close()


@pytest.mark.parametrize(("error", "status"), [("forbidden", 502), ("busy", 409), ("bad-request", 502)])
def test_unlock_refused_by_the_loop(admin: TestClient, services: WebServices, error: str, status: int) -> None:
    _link(services).replies["unlock"] = {"ok": False, "error": error, "detail": "peer not allowed"}
    r = admin.post("/api/door/unlock", json={"reason": "delivery", "password": PASSWORD})
    assert r.status_code == status and f"({error})" in r.json()["detail"]


def test_repeated_wrong_unlock_passwords_are_throttled(admin: TestClient, services: WebServices) -> None:
    codes = [
        admin.post("/api/door/unlock", json={"reason": "x", "password": f"guess {i}"}).status_code
        for i in range(services.cfg.web.login_attempts + 1)
    ]
    assert codes[:-1] == [403] * services.cfg.web.login_attempts and codes[-1] == 429
    assert _link(services).requests == []


# -- system and backups ---------------------------------------------------------------------------------------------


def test_system(viewer: TestClient, services: WebServices) -> None:
    body = viewer.get("/api/system").json()
    names = {c["check"] for c in body["checks"]}
    assert {"config", "gallery", "event chain", "camera", "door"} <= names
    assert any(c["check"] == "model recognizer" and c["ok"] for c in body["checks"])
    active = [m for m in body["models"] if m["active"]]
    assert {m["id"] for m in active} == {"yunet", "sface"} and all(len(m["sha256"]) == 64 for m in active)
    assert body["loop"] == {"fps": 9.5, "frames": 1200, "granted": 3, "denied": 1, "frame_ms_median": 41.0}
    assert body["chain"]["ok"] is True
    assert body["config"]["gallery"]["encrypt"] is False and body["config"]["data_dir"] == str(services.cfg.data_dir)
    _link(services).go_down()
    assert viewer.get("/api/system").json()["loop"] is None


def test_system_config_never_holds_key_material(viewer: TestClient, services: WebServices, tmp_path: Any) -> None:
    body = viewer.get("/api/system").text
    assert "key_file" in body and PASSWORD not in body and "csrf" not in body.lower()


def test_backups_create_list_download(admin: TestClient, services: WebServices) -> None:
    enrol(admin, "Colin Powell", *powell(1, 2))
    created = admin.post("/api/backups")
    assert created.status_code == 201
    name = created.json()["name"]
    assert re.fullmatch(r"gallery-\d{8}T\d{6}Z(-\d+)?\.db", name)
    assert [b["name"] for b in admin.get("/api/backups").json()] == [name]
    r = admin.get(f"/api/backups/{name}")
    assert r.status_code == 200 and r.content[:16] == b"SQLite format 3\0"
    assert r.content == (services.cfg.backup_dir / name).read_bytes()
    assert "attachment" in r.headers["content-disposition"]
    outcomes = [e["outcome"] for e in _admin_events(services)]
    assert outcomes[-2:] == ["backed up", "backup downloaded"]
    assert _admin_events(services)[-1]["detail"] == {"by": "web:ada from testclient", "file": name}


@pytest.mark.parametrize(
    "name",
    ["..%2Fgallery.db", "gallery.db", "%2Fetc%2Fpasswd", "gallery-20260101T000000Z.db", "other.db", "%2E%2E", "%00"],
)
def test_backup_download_only_by_an_exact_listed_name(admin: TestClient, services: WebServices, name: str) -> None:
    admin.post("/api/backups")
    services.cfg.backup_dir.joinpath("other.db").write_bytes(b"SQLite format 3\0 someone else's")
    r = admin.get(f"/api/backups/{name}")
    assert r.status_code in (404, 405) and b"SQLite format" not in r.content


# -- the OpenAPI document -------------------------------------------------------------------------------------------


def test_openapi_describes_requests_and_responses(viewer: TestClient, services: WebServices) -> None:
    doc = viewer.get("/api/openapi.json").json()
    paths = doc["paths"]
    for method, path in _api_routes(services):
        if path == "/api/openapi.json":
            continue
        op = paths[path][method.lower()]
        assert op.get("summary") or op.get("description"), (method, path)
        assert any(code.startswith("2") for code in op["responses"]), (method, path)
    schemas = doc["components"]["schemas"]
    assert {"PersonOut", "PersonDetailOut", "VerdictOut", "EventsOut", "UnlockIn", "SystemOut", "BackupOut"} <= set(
        schemas
    )
    people = paths["/api/people"]["post"]
    assert "multipart/form-data" in people["requestBody"]["content"]
    assert set(people["responses"]) >= {"201", "401", "403", "409", "422"}
    assert paths["/api/door/unlock"]["post"]["requestBody"]["content"]["application/json"]
