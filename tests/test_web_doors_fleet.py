"""A hub's admin app over a real site (tests/fleet_site.py: a nats-server from the pip wheel, the hub, a door): an
enrolment made in the app reaches the door through the hub's outbox triggers, the Doors API shows the door as the
hub hears it, and a remote unlock is carried out and recorded by the door itself; a door that stopped is a 504."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from kiosk.config import Config, parse_config
from kiosk.fleet import hubdb
from kiosk.gallery import Gallery
from kiosk.gallery.keys import generate_key_file, read_key_file
from kiosk.web.app import create_app
from kiosk.web.scripted import ScriptedLink
from kiosk.web.services import WebServices
from tests.admin_helpers import ADMIN, admin_services, capture_reply, csrf_of, page_login
from tests.fleet_kit import run
from tests.fleet_site import Site, running, until
from tests.web_helpers import PASSWORD

pytestmark = pytest.mark.slow


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Site, Config]]:
    """A site with door ``front`` whose hub gallery is the admin app's: one config, the site key in a key file."""
    (tmp_path / "hub").mkdir(mode=0o700)
    key = tmp_path / "site.key"
    generate_key_file(key)
    s = Site(tmp_path, ("front",), site_key=read_key_file(key))
    cfg = parse_config(
        {
            "data_dir": str(tmp_path / "hub"),
            "gallery": {"encrypt": True, "key_file": str(key)},
            "hub": {"server": s.server.url, "heartbeat_timeout_s": 5.0},
        }
    )
    assert cfg.gallery_path == s.hub_db and cfg.fleet_dir == s.secrets.root
    with s.server:
        yield s, cfg


@pytest.fixture
def services(tmp_path: Path, site: tuple[Site, Config]) -> Iterator[WebServices]:
    s = admin_services(tmp_path, site[1])
    yield s
    s.close()


def enrol_at_the_camera(client: TestClient, services: WebServices, name: str) -> None:
    """The admin page's door-camera enrolment (tests/test_admin_routes.py), the loop scripted."""
    token = csrf_of(client, "/people")
    link = services.link
    assert isinstance(link, ScriptedLink)
    link.replies["capture"] = {"ok": True, "id": "cap1"}
    link.state = link.state | {"capture": {"id": "cap1", "done": 1, "target": 3, "state": "running"}}
    r = client.post("/people/new/camera", data={"name": name, "csrf_token": token})
    progress = re.search(r'hx-get="(/people/new/camera/[^"]+/progress)"', r.text)
    assert progress, r.text
    link.state = link.state | {"capture": None}
    link.replies["capture-result"] = capture_reply(3)
    client.get(progress.group(1))
    key = progress.group(1).split("/")[4]
    stored = client.post(f"/people/new/camera/{key}/store", data={"csrf_token": token}, follow_redirects=False)
    assert stored.status_code == 303, stored.text


def door_people(site: Site) -> dict[str, int]:
    with Gallery(site.door_db("front")) as g:
        return {p.name: p.templates for p in g.list_people()}


def test_the_app_at_a_hub_reaches_the_door_and_unlocks_it(
    site: tuple[Site, Config], services: WebServices, tmp_path: Path
) -> None:
    s, _ = site
    unlocks: list[tuple[str, str]] = []

    def on_unlock(actor: str, reason: str) -> dict[str, Any]:
        """What the door service does (kiosk.door.service): pulse, and record it in the door's own event chain."""
        unlocks.append((actor, reason))
        with Gallery(s.door_db("front")) as g:
            g.add_event("door", "manual-unlock", door_action="pulse 2.0s", detail={"actor": f"hub:{actor}"})
        return {"pulse_s": 2.0}

    with TestClient(create_app(services), base_url="http://127.0.0.1:8080") as client:
        assert page_login(client, ADMIN).status_code == 303
        csrf = csrf_of(client, "/people")
        headers = {"X-CSRF-Token": csrf}
        unlock = {"reason": "delivery at the back", "password": PASSWORD}

        async def main() -> None:
            hub, door = s.hub(), s.door("front", on_unlock=on_unlock)
            async with running(hub, door):
                await until(lambda: door.stale_for() is not None, what="the door in sync")
                # An enrolment in the app is a write to the hub's gallery: its outbox triggers take it to the door.
                await asyncio.to_thread(enrol_at_the_camera, client, services, "Ada Lovelace")
                await until(lambda: door_people(s).get("Ada Lovelace") == 3, what="the app's enrolment at the door")

                def doors() -> list[dict[str, Any]]:
                    r = client.get("/api/doors")
                    assert r.status_code == 200, r.text
                    body: list[dict[str, Any]] = r.json()
                    return body

                def caught_up() -> bool:
                    (front,) = doors()
                    return bool(front["online"] and front["in_sync"] and front["lag"] == 0)

                for _ in range(200):  # the door's next heartbeat carries the new revision
                    if await asyncio.to_thread(caught_up):
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError(f"the door never showed in sync at the hub: {doors()}")
                r = await asyncio.to_thread(client.post, "/api/doors/front/unlock", json=unlock, headers=headers)
                assert r.status_code == 200, r.text
                assert r.json() == {"door": "front", "ok": True, "pulse_s": 2.0}
                assert unlocks == [("web:ada from testclient", "delivery at the back")]

                def unlock_at_hub() -> bool:
                    with s.hub_gallery() as g:
                        return any(k == ("front", 1) for k in hubdb.event_keys(g))

                await until(unlock_at_hub, what="the door's unlock event at the hub")
                page = await asyncio.to_thread(client.get, "/admin/doors")
                assert '<th scope="row">front</th>' in page.text and "Online" in page.text

        run(main)
        # The door has stopped (the broker still runs): nobody answers, nothing is done, a clean 504.
        r = client.post("/api/doors/front/unlock", json=unlock, headers=headers)
        assert r.status_code == 504, r.text
        assert r.json() == {"detail": "door front did not answer (offline, or not this site's)"}
        assert len(unlocks) == 1
    with s.hub_gallery() as g:
        (row,) = g._rows("SELECT kind, outcome, detail FROM fleet_events WHERE door = 'front'")
    assert (row["kind"], row["outcome"]) == ("door", "manual-unlock")
    assert json.loads(row["detail"])["actor"] == "hub:web:ada from testclient"
