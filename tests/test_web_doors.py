"""The Doors of a hub's admin app (``kiosk.web.doors``) through the ASGI client, with a scripted ``send_command``:
every door's state (``GET /api/doors`` and the page), roles, CSRF, hostile door ids, and a remote unlock that is
refused, unanswered or confirmed. The real broker and door are in tests/test_web_doors_fleet.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kiosk.config import parse_config
from kiosk.errors import BrokerUnreachableError, DoorNoAnswerError, FleetError
from kiosk.fleet.broker import free_port
from kiosk.web.app import create_app
from kiosk.web.services import WebServices
from tests.admin_helpers import ADMIN, VIEWER, admin_services, csrf_of, page_login
from tests.doors_helpers import ScriptedCommands, make_hub
from tests.web_helpers import PASSWORD, login

HOSTILE = ["FRONT", "-front", "front_door", "fr%20ont", "a" * 64, "..", "front%00", "%3Cscript%3E", "é"]


@pytest.fixture()
def services(tmp_path: Path) -> Iterator[WebServices]:
    s = admin_services(tmp_path)
    s.fleet_command = ScriptedCommands()
    yield s
    s.close()


@pytest.fixture()
def hub(services: WebServices) -> WebServices:
    make_hub(services)
    return services


def commands(services: WebServices) -> ScriptedCommands:
    assert isinstance(services.fleet_command, ScriptedCommands)
    return services.fleet_command


def api_client(services: WebServices, who: str | None = ADMIN) -> TestClient:
    client = TestClient(create_app(services), raise_server_exceptions=False)
    client.__enter__()
    if who is not None:
        client.headers["X-CSRF-Token"] = login(client, who)
    return client


@pytest.fixture()
def admin(services: WebServices) -> Iterator[TestClient]:
    client = api_client(services)
    yield client
    client.__exit__(None, None, None)


@pytest.fixture()
def viewer(services: WebServices) -> Iterator[TestClient]:
    client = api_client(services, VIEWER)
    yield client
    client.__exit__(None, None, None)


UNLOCK = {"reason": "delivery at the back", "password": PASSWORD}


# -- the doors' state --------------------------------------------------------------------------------------------------


def test_every_door_with_its_state(hub: WebServices, viewer: TestClient) -> None:
    r = viewer.get("/api/doors")
    assert r.status_code == 200, r.text
    back, front = r.json()
    assert front == {
        "door": "front",
        "online": True,
        "last_seen": front["last_seen"],
        "rev": 12,
        "lag": 0,
        "in_sync": True,
        "outbox_depth": 0,
        "last_event": 41,
        "events_at_hub": 41,
        "chain": "ok",
        "chain_broken_at": None,
        "stale_s": 3.2,
        "fps": 9.7,
    }
    assert back["online"] is False and back["lag"] == 3 and back["in_sync"] is False and back["outbox_depth"] == 5
    assert back["chain"] == "broken at 9" and back["chain_broken_at"] == 9 and back["events_at_hub"] == 8


def test_a_door_not_heard_yet_and_a_heartbeat_with_wrong_types(services: WebServices, viewer: TestClient) -> None:
    from kiosk.fleet import hubdb
    from kiosk.gallery import utc_iso

    make_hub(services, beats=False)
    with services.gallery(need_key=False) as g:
        nonsense = {"rev": "12", "digest": 5, "outbox_depth": -1.5, "last_event": True, "stale_s": "never",
                    "loop": {"fps": "fast"}, "received": "now"}  # fmt: skip
        hubdb.save_heartbeats(g, {"front": (utc_iso(), nonsense)})
    back, front = viewer.get("/api/doors").json()
    assert back["online"] is False and back["in_sync"] is None and back["rev"] is None and back["last_seen"] is None
    assert front["online"] is False and front["rev"] is None and front["lag"] is None and front["fps"] is None
    assert front["outbox_depth"] is None and front["last_event"] is None and front["stale_s"] is None


def test_not_a_hub_has_no_doors(services: WebServices, admin: TestClient) -> None:
    r = admin.get("/api/doors")
    assert r.status_code == 404 and "not run against a site hub" in r.json()["detail"]
    r = admin.post("/api/doors/front/unlock", json=UNLOCK)
    assert r.status_code == 404
    assert commands(services).calls == []
    assert not (services.cfg.fleet_dir / "hub.secret").exists()  # nothing made a hub of it on the way


def test_doors_need_a_login(hub: WebServices) -> None:
    client = api_client(hub, None)
    assert client.get("/api/doors").status_code == 401
    assert client.post("/api/doors/front/unlock", json=UNLOCK).status_code in (401, 403)
    assert commands(hub).calls == []


# -- remote unlock ---------------------------------------------------------------------------------------------------


def test_unlock_sends_the_command_with_actor_and_reason(hub: WebServices, admin: TestClient) -> None:
    r = admin.post("/api/doors/front/unlock", json={"reason": "  delivery at the back ", "password": PASSWORD})
    assert r.status_code == 200, r.text
    assert r.json() == {"door": "front", "ok": True, "pulse_s": 1.5}
    assert commands(hub).calls == [
        {"door": "front", "cmd": "unlock", "actor": "web:ada from testclient", "reason": "delivery at the back"}
    ]


def test_unlock_is_for_admins_with_the_csrf_token_and_their_password(
    hub: WebServices, admin: TestClient, viewer: TestClient
) -> None:
    assert viewer.post("/api/doors/front/unlock", json=UNLOCK).status_code == 403
    token = admin.headers.pop("X-CSRF-Token")
    r = admin.post("/api/doors/front/unlock", json=UNLOCK)
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    r = admin.post("/api/doors/front/unlock", json=UNLOCK, headers={"X-CSRF-Token": "forged"})
    assert r.status_code == 403
    admin.headers["X-CSRF-Token"] = token
    r = admin.post("/api/doors/front/unlock", json={"reason": "delivery", "password": "not the password"})
    assert r.status_code == 403 and "wrong password" in r.json()["detail"]
    for reason in ("", "   ", "line\nbreak", "x" * 201):
        r = admin.post("/api/doors/front/unlock", json={"reason": reason, "password": PASSWORD})
        assert r.status_code == 422, reason
    assert commands(hub).calls == []


@pytest.mark.parametrize("door", HOSTILE)
def test_hostile_door_ids_are_refused_and_never_sent(hub: WebServices, admin: TestClient, door: str) -> None:
    r = admin.post(f"/api/doors/{door}/unlock", json=UNLOCK)
    assert r.status_code in (404, 422), (door, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    assert "<script" not in r.text.lower()
    assert commands(hub).calls == []


def test_a_door_the_hub_does_not_know_is_404(hub: WebServices, admin: TestClient) -> None:
    r = admin.post("/api/doors/side/unlock", json=UNLOCK)
    assert r.status_code == 404 and r.json()["detail"] == "no door 'side' at this hub: see GET /api/doors"
    assert commands(hub).calls == []


@pytest.mark.parametrize(
    "error, status",
    [
        (DoorNoAnswerError("door back did not answer (offline, or not this site's)"), 504),
        (BrokerUnreachableError("cannot reach the site broker at nats://127.0.0.1:4222: refused"), 503),
        (FleetError("door back refused unlock: this door has no relay to unlock"), 502),
    ],
)
def test_a_door_that_does_not_unlock_is_a_clean_error(
    hub: WebServices, admin: TestClient, error: FleetError, status: int
) -> None:
    commands(hub).replies["back"] = error
    r = admin.post("/api/doors/back/unlock", json=UNLOCK)
    assert r.status_code == status and r.json() == {"detail": str(error)}
    assert len(commands(hub).calls) == 1


def test_the_real_send_command_with_no_broker_is_503(hub: WebServices, admin: TestClient) -> None:
    """``kiosk.fleet.service.send_command`` itself (no script), against a port where nothing listens."""
    hub.fleet_command = None
    port = free_port()
    hub.cfg = parse_config({"data_dir": str(hub.cfg.data_dir), "hub": {"server": f"nats://127.0.0.1:{port}"}})
    r = admin.post("/api/doors/front/unlock", json=UNLOCK)
    assert r.status_code == 503 and r.json()["detail"].startswith("cannot reach the site broker")
    assert "\n" not in r.json()["detail"]


# -- the page ----------------------------------------------------------------------------------------------------------


@pytest.fixture()
def client(services: WebServices) -> Iterator[TestClient]:
    with TestClient(create_app(services), base_url="http://127.0.0.1:8080") as c:
        yield c


def test_the_menu_shows_doors_only_at_a_hub(services: WebServices, client: TestClient) -> None:
    page_login(client, ADMIN)
    assert 'href="/admin/doors"' not in client.get("/").text
    assert client.get("/admin/doors").status_code == 404
    make_hub(services)
    assert 'href="/admin/doors"' in client.get("/").text


def test_the_page_lists_every_door_and_refreshes(hub: WebServices, client: TestClient) -> None:
    page_login(client, VIEWER)
    r = client.get("/admin/doors")
    assert r.status_code == 200
    text = r.text
    assert 'aria-current="page"' in text and "Doors of the site" in text
    assert '<th scope="row">front</th>' in text and '<th scope="row">back</th>' in text
    assert "Online" in text and "Offline" in text and "In sync" in text and "Not in sync" in text
    assert "Broken at event 9" in text and "9.7" in text
    assert 'hx-get="/admin/doors/rows" hx-trigger="every 5s"' in text
    assert "/admin/doors/unlock" not in text  # a viewer gets no unlock form
    rows = client.get("/admin/doors/rows")
    assert rows.status_code == 200 and '<tbody id="doors-rows"' in rows.text
    assert "<html" not in rows.text


def test_page_unlock(hub: WebServices, client: TestClient) -> None:
    page_login(client, ADMIN)
    token = csrf_of(client, "/admin/doors")
    assert 'action="/admin/doors/unlock"' in client.get("/admin/doors").text
    form = {"door": "front", "reason": "delivery", "password": PASSWORD, "csrf_token": token}
    r = client.post("/admin/doors/unlock", data=form, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/admin/doors?done=door-unlocked"
    assert "The door was unlocked" in client.get(r.headers["location"]).text
    assert commands(hub).calls[-1]["door"] == "front" and commands(hub).calls[-1]["actor"].startswith("web:ada")
    commands(hub).replies["back"] = DoorNoAnswerError("door back did not answer (offline, or not this site's)")
    r = client.post("/admin/doors/unlock", data=form | {"door": "back"})
    assert r.status_code == 504 and "door back did not answer" in r.text and 'role="alert"' in r.text
    r = client.post("/admin/doors/unlock", data=form | {"password": "wrong one!"})
    assert r.status_code == 403 and "Wrong password" in r.text
    r = client.post("/admin/doors/unlock", data=form | {"door": "../etc"})
    assert r.status_code == 422 and "not a door id" in r.text
    assert len(commands(hub).calls) == 2


def test_page_unlock_needs_an_admin_and_the_token(hub: WebServices, client: TestClient) -> None:
    page_login(client, VIEWER)
    token = csrf_of(client, "/admin/doors")
    form = {"door": "front", "reason": "delivery", "password": PASSWORD}
    assert client.post("/admin/doors/unlock", data=form | {"csrf_token": token}).status_code == 403
    client.post("/logout", data={"csrf_token": token})
    page_login(client, ADMIN)
    assert client.post("/admin/doors/unlock", data=form | {"csrf_token": "forged"}).status_code == 403
    assert commands(hub).calls == []
