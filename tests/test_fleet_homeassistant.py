"""The hub's Home Assistant bridge wired to a real site: a door's heartbeat makes it available in Home Assistant, its
events (as the hub records them) reach the event entity without names, and Home Assistant's Unlock is a live command
that the door carries out and records."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from kiosk.config import parse_config
from kiosk.fleet.service import home_assistant
from kiosk.gallery import Gallery
from tests.fleet_kit import run
from tests.fleet_site import Site, running, template, until
from tests.mqtt_kit import BRIDGE_USER, HomeAssistant, Mosquitto, mosquitto  # noqa: F401 (fixture)


def test_a_site_in_home_assistant(tmp_path: Path, mosquitto: Mosquitto) -> None:  # noqa: F811
    site = Site(tmp_path / "site", ("front",))
    with site.hub_gallery() as g:
        g.enroll("Ada", [template(1)])
    pw = tmp_path / "ha-password"
    pw.write_text("bridge-secret\n")
    pw.chmod(0o600)
    cfg = parse_config({"hub": {"heartbeat_timeout_s": 2, "home_assistant": {
        "enabled": True, "port": mosquitto.port, "username": BRIDGE_USER, "password_file": str(pw), "site": "hq",
        "keepalive_s": 5, "reconnect_max_s": 1}}})  # fmt: skip
    ha = HomeAssistant(mosquitto.port)
    unlocks: list[tuple[str, str]] = []

    def unlock(actor: str, reason: str) -> dict[str, Any]:
        unlocks.append((actor, reason))
        with Gallery(site.door_db("front")) as g:  # what the door loop's manual_unlock records
            g.add_event("door", "manual-unlock", door_action="pulse 3.0s", detail={"actor": actor, "reason": reason})
        return {"pulse_s": 3.0}

    with site.server:

        async def main() -> None:
            hub, door = site.hub(), site.door("front", on_unlock=unlock)
            bridge = home_assistant(cfg, hub, asyncio.get_running_loop())
            try:
                async with running(hub, door):
                    base = "face-kiosk/hq/door/front"
                    await asyncio.to_thread(ha.wait_payload, f"{base}/availability", b"online", 20)
                    config = (await asyncio.to_thread(ha.last, "homeassistant/lock/face-kiosk-hq/front/config")).json()
                    assert config["command_topic"] == f"{base}/lock/set"
                    with Gallery(site.door_db("front")) as g:
                        g.add_event("access", "granted", person_id=1, person_name="Ada", door_action="pulse 3.0s",
                                    detail={"rule": "staff-front"})  # fmt: skip
                    event = (await asyncio.to_thread(ha.last, f"{base}/event", 20)).json()
                    assert event["event_type"] == "granted" and event["rule"] == "staff-front"
                    assert "Ada" not in json.dumps(event)  # no names by default
                    ha.publish(f"{base}/lock/set", "UNLOCK")
                    await until(lambda: unlocks == [("home-assistant", "Home Assistant")], 20, "the door unlocked")
                    await asyncio.to_thread(ha.wait_payload, f"{base}/lock/state", b"UNLOCKED", 20)
                # The door is gone: after heartbeat_timeout_s Home Assistant shows it unavailable.
                hub2 = site.hub()
                bridge.stop()
                bridge2 = home_assistant(cfg, hub2, asyncio.get_running_loop())
                try:
                    from kiosk.fleet.service import _watch_doors

                    hub2.online["front"] = 0.0  # last heard long ago
                    watch = asyncio.create_task(_watch_doors(cfg, hub2, site.secrets, None, bridge2))
                    await asyncio.to_thread(ha.wait_payload, f"{base}/availability", b"offline", 20)
                    watch.cancel()
                finally:
                    bridge2.stop()
            finally:
                bridge.stop()

        run(main, 120)
    ha.close()
