"""Every door's state as the hub last heard it: ``kiosk fleet status`` and the admin app read this."""

from __future__ import annotations

import json
import time
from typing import Any

from kiosk.fleet import hubdb
from kiosk.fleet.protocol import digest
from kiosk.gallery import Gallery


def door_status(gallery: Gallery, heartbeat_timeout_s: float, now: float | None = None) -> list[dict[str, Any]]:
    """One row per door: ``online`` (heard from within ``heartbeat_timeout_s``), the gallery revision it applied and
    how many stream messages it is behind (``lag``), whether its digest equals the hub's (``in_sync``), its outbox
    depth and newest event, how far the hub holds its events, its chain state, staleness and frame rate."""
    now = time.time() if now is None else now
    hub_seq = int(hubdb.meta(gallery, "people_stream_seq", "0"))
    hub_digest = digest(hubdb.live_revisions(gallery))
    through = hubdb.events_through(gallery)
    chains = hubdb.chain_report(gallery)
    out = []
    for r in gallery._rows("SELECT id, last_seen, status FROM fleet_doors ORDER BY id"):
        beat: dict[str, Any] = json.loads(r["status"]) if r["status"] else {}
        received = beat.get("received")
        chain = chains.get(r["id"])
        rev = beat.get("rev")
        out.append(
            {
                "door": r["id"],
                "online": isinstance(received, int | float) and now - received <= heartbeat_timeout_s,
                "last_seen": r["last_seen"],
                "rev": rev,
                # NOTE: a heartbeat is the door's word: a revision that is not a number gives no lag, not an error
                "lag": max(0, hub_seq - rev) if isinstance(rev, int) and not isinstance(rev, bool) else None,
                "in_sync": None if not beat else beat.get("digest") == hub_digest,
                "outbox_depth": beat.get("outbox_depth"),
                "last_event": beat.get("last_event"),
                "events_at_hub": through.get(r["id"], 0),
                "chain": "ok" if chain is None or chain["broken_at"] is None else f"broken at {chain['broken_at']}",
                "stale_s": beat.get("stale_s"),
                "fps": (beat.get("loop") or {}).get("fps"),
            }
        )
    return out
