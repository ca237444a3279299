"""The site's doors, for the admin app when it runs against a hub (fleet mode): every door's state as the hub last
heard it, and a remote unlock. Shared by ``GET /api/doors``, ``POST /api/doors/{door}/unlock`` and the Doors page.

Fleet mode is ``WebServices.is_hub()``: the config's ``<data_dir>/fleet/hub.secret`` exists. The state comes from
the hub's tables in the site gallery (``kiosk.fleet.status``); a command goes out live through the site broker
as the hub (``kiosk.fleet.service.send_command``) and is never queued: a door that does not answer is not
unlocked later.
"""

from __future__ import annotations

import logging
import math
import re
import time
import types
from datetime import datetime
from typing import TYPE_CHECKING, Any

from kiosk.errors import ConfigError, DoorNotFoundError, FleetError, InputError, KioskError

if TYPE_CHECKING:
    from kiosk.web.services import WebServices

log = logging.getLogger(__name__)

NOT_A_HUB = "this admin app does not run against a site hub: no doors (see docs/web-admin.md, Doors)"
# A heartbeat is the door's word: each field is shown only when it has the type it should have.
_INT = ("rev", "lag", "outbox_depth", "last_event", "events_at_hub")
_FLOAT = ("stale_s", "fps")
_BROKEN_AT = re.compile(r"broken at (\d+)")


def _not_installed(err: ImportError) -> FleetError:
    return FleetError(f"the fleet packages are not installed ({err.name}): pip install 'face-kiosk[fleet]'")


def fleet_service() -> types.ModuleType:
    """``kiosk.fleet.service``, or a FleetError naming the extra to install when the fleet packages are missing."""
    try:
        from kiosk.fleet import service
    except ImportError as err:
        raise _not_installed(err) from None
    return service


def _number(value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return kind(value) if kind is float or float(value).is_integer() else None


def _age(when: str | None, now: float) -> float | None:
    """Seconds since an ISO 8601 time (the page says "2 min ago"; the API gives the time itself)."""
    try:
        return None if when is None else max(0.0, now - datetime.fromisoformat(when).timestamp())
    except ValueError:
        return None


def _row(raw: dict[str, Any], now: float) -> dict[str, Any]:
    row: dict[str, Any] = {
        "door": str(raw["door"]),
        "online": bool(raw.get("online")),
        "last_seen": raw.get("last_seen") if isinstance(raw.get("last_seen"), str) else None,
        "in_sync": raw.get("in_sync") if isinstance(raw.get("in_sync"), bool) else None,
        "chain": str(raw.get("chain") or "ok"),
    }
    row |= {k: _number(raw.get(k), int) for k in _INT}
    row |= {k: _number(raw.get(k), float) for k in _FLOAT}
    row["heard_s"] = _age(row["last_seen"], now)
    broken = _BROKEN_AT.fullmatch(row["chain"])
    row["chain_broken_at"] = int(broken.group(1)) if broken else None
    return row


def door_states(services: WebServices) -> list[dict[str, Any]]:
    """Every door of the site, by id: ``kiosk.fleet.service.status`` with each field of the expected type (or None).
    DoorNotFoundError when the app does not run against a hub."""
    if not services.is_hub():
        raise DoorNotFoundError(NOT_A_HUB)
    service = fleet_service()
    with services.gallery(need_key=False) as g:
        return [_row(r, time.time()) for r in service.status(services.cfg, g)]


def check_door(services: WebServices, door: str) -> str:
    """``door`` when it is a door of this hub; InputError for a malformed id (never echoed), DoorNotFoundError for
    one the hub does not know (or when the app does not run against a hub)."""
    from kiosk.fleet.broker import check_door_id

    try:
        check_door_id(door)
    except ConfigError:
        raise InputError("door: not a door id (1-63 of a-z, 0-9 and '-', starting with a letter or digit)") from None
    if not services.is_hub():
        raise DoorNotFoundError(NOT_A_HUB)
    from kiosk.fleet import hubdb

    with services.gallery(need_key=False) as g:
        hubdb.install(g)
        known = door in hubdb.doors(g)
    if not known:
        raise DoorNotFoundError(f"no door {door!r} at this hub: see GET /api/doors")
    return door


def unlock(services: WebServices, door: str, *, actor: str, reason: str) -> dict[str, Any]:
    """Unlock ``door`` once, now (blocking: run it in a thread). The door pulses its relay and records the unlock
    with ``actor`` and ``reason`` in its own event chain, which reaches the hub like every other event.
    DoorNoAnswerError (offline), BrokerUnreachableError or FleetError (refused) when it was not unlocked."""
    check_door(services, door)
    try:
        reply = services.send_command(door, "unlock", actor=actor, reason=reason)
    except KioskError:
        raise  # (DoorNoAnswerError and BrokerUnreachableError are OSErrors too)
    except ImportError as err:
        raise _not_installed(err) from None
    except OSError as err:  # the hub's secret unreadable by this process (another user, wrong mode)
        raise FleetError(f"cannot send as the hub: {err.strerror or err}") from None
    log.info("remote unlock of door %s by %s sent and confirmed", door, actor)
    return reply
