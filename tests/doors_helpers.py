"""Helpers for the Doors tests (``kiosk.web.doors``): a hub's admin app on tmp_path (its ``hub.secret`` and two doors
with heartbeats in the hub tables of the gallery), and a scripted ``send_command`` that records every command."""

from __future__ import annotations

import time
from typing import Any

from kiosk.config import Config
from kiosk.errors import KioskError
from kiosk.fleet import hubdb
from kiosk.fleet.protocol import digest
from kiosk.fleet.secrets import FleetSecrets
from kiosk.gallery import utc_iso
from kiosk.web.services import WebServices

DOORS = ("back", "front")


def make_hub(services: WebServices, *, beats: bool = True, now: float | None = None) -> None:
    """Make the app's config a hub's (its broker password) with doors ``front`` (online, in sync, 9.7 fps) and
    ``back`` (heard from an hour ago, behind, 5 events not yet at the hub, its chain broken at event 9)."""
    now = time.time() if now is None else now
    FleetSecrets(services.cfg.fleet_dir).hub_password()
    with services.gallery(need_key=False) as g:
        hubdb.install(g)
        for door in DOORS:
            hubdb.add_door(g, door)
        with g._write() as db:
            hubdb.set_meta(db, "people_stream_seq", 12)
        if not beats:
            return
        in_sync = digest(hubdb.live_revisions(g))
        front = {"rev": 12, "digest": in_sync, "outbox_depth": 0, "last_event": 41, "stale_s": 3.2,
                 "loop": {"fps": 9.7}, "received": now}  # fmt: skip
        back = {"rev": 9, "digest": "older", "outbox_depth": 5, "last_event": 17, "stale_s": 3700.0,
                "loop": {"fps": 0.0}, "received": now - 3600}  # fmt: skip
        hubdb.save_heartbeats(g, {"front": (utc_iso(), front), "back": ("2026-12-06T10:00:00+00:00", back)})
        back_events = chained_events(12)
        back_events[8]["outcome"] = "denied"  # event 9 altered after it was chained: the hub finds the break
        hubdb.record_events(g, [("front", e) for e in chained_events(41)] + [("back", e) for e in back_events])


def chained_events(n: int) -> list[dict[str, Any]]:
    """Events 1..n of a door as it sends them, each linked to the one before, so the hub can verify the chain."""
    from kiosk.gallery import GENESIS_HASH, event_hash

    prev, rows = GENESIS_HASH, []
    for i in range(1, n + 1):
        row: dict[str, Any] = {"id": i, "ts": f"2026-12-06T09:00:{i:02d}+00:00", "kind": "access", "outcome": "granted"}
        row |= {"prev_hash": prev, "hash": event_hash(prev, row)}
        prev = row["hash"]
        rows.append(row)
    return rows


class ScriptedCommands:
    """``kiosk.fleet.service.send_command`` scripted: records each call; ``replies[door]`` is the answer, or an
    exception to raise (a door that does not answer: ``DoorNoAnswerError``)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.replies: dict[str, dict[str, Any] | KioskError] = {}

    def __call__(self, cfg: Config, door: str, name: str, **kw: Any) -> dict[str, Any]:
        self.calls.append({"door": door, "cmd": name, **kw})
        reply = self.replies.get(door, {"ok": True, "pulse_s": 1.5})
        if isinstance(reply, KioskError):
            raise reply
        return reply
