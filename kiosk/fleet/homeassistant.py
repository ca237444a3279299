"""The hub's optional bridge to Home Assistant: the user's MQTT broker (Mosquitto) and Home Assistant's MQTT discovery.

Per door, one Home Assistant device with a ``lock`` entity (LOCKED/UNLOCKED, from the door's pulses; UNLOCK from
Home Assistant asks the hub to unlock) and an ``event`` entity (one event per access decision or door event). Topics
(``<base>`` is ``base_topic/site``, ``<prefix>`` the discovery prefix)::

    <base>/bridge/availability           online / offline, retained; offline is also the bridge's last will
    <base>/door/<door>/availability      online / offline, retained (the door's heartbeats, as the hub sees them)
    <base>/door/<door>/lock/state        LOCKED / UNLOCKED, retained
    <base>/door/<door>/lock/set          commands from Home Assistant: exactly UNLOCK (LOCK: no-op), never retained
    <base>/door/<door>/event             {"event_type": "granted", "outcome": ..., "ts": ..., "rule": ...}
    <prefix>/lock/face-kiosk-<site>/<door>/config    discovery, retained
    <prefix>/event/face-kiosk-<site>/<door>/config   discovery, retained

An entity is available only while both the bridge and its door are online (``availability_mode: all``). Privacy:
access events carry only an allowlist of fields (kind, outcome, ts, rule, door action); the person's name only with
``include_names``; never images, scores or the event's detail. Events while the broker is unreachable are dropped
and counted (``dropped_events``): Home Assistant events are signals for automations, not the audit log (the hub's
database is), and one replayed minutes late would fire an automation at the wrong time. For the same reason events
older than ``max_event_age_s`` (a door catching up after an outage) are not sent. Retained state (discovery,
availability, lock state) is re-published on every (re)connection and when Home Assistant announces it restarted.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kiosk import __version__
from kiosk.config import HomeAssistantConfig
from kiosk.errors import ConfigError
from kiosk.fleet.broker import DOOR_ID, check_door_id

log = logging.getLogger(__name__)

__all__ = ["EVENT_TYPES", "HomeAssistantBridge", "HomeAssistantConfig"]

KEY = "hub.home_assistant"
ONLINE, OFFLINE = "online", "offline"
LOCKED, UNLOCKED = "LOCKED", "UNLOCKED"
# Every outcome the doors record (access: granted/denied/unknown; door: the relay's and the admin's events); any
# other outcome is sent as "other" with the outcome itself as an attribute (Home Assistant drops unlisted types).
EVENT_TYPES = (
    "granted",
    "denied",
    "unknown",
    "manual-unlock",
    "exit_request",
    "door_forced_open",
    "door_held_open",
    "door_closed",
    "other",
)
PULSE = re.compile(r"^pulse (\d{1,6}(?:\.\d{1,6})?)s$")  # the door loop's door_action, e.g. "pulse 3.0s"
MAX_RELOCK_S = 600.0  # door.max_pulse_s's own ceiling: a longer "pulse" in an event is a corrupt row
MAX_TEXT = 200  # longest string attribute sent (outcome, rule, name...)
MAX_QUEUED = 200  # paho's outgoing queue bound while a connection is being lost
LOG_EVERY_S = 60.0  # a broker that flaps or a client that floods commands: at most one log line a minute per kind


@dataclass
class _Door:
    online: bool
    locked: bool = True
    relock: threading.Timer | None = None


class _Throttle:
    """Log the first of a kind at once, then at most once per ``LOG_EVERY_S`` with how many were not logged."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def __call__(self, kind: str, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < LOG_EVERY_S:
            self._quiet[kind] = self._quiet.get(kind, 0) + 1
            return
        quiet = self._quiet.pop(kind, 0)
        self._last[kind] = now
        log.log(level, msg + (f" ({quiet} more like this not logged)" if quiet else ""), *args)

    def reset(self, kind: str) -> None:
        self._last.pop(kind, None)
        self._quiet.pop(kind, None)


def _text(value: Any) -> str:
    return " ".join(str(value).split())[:MAX_TEXT]


def _slug(value: str) -> str:
    return value.replace("-", "_")


class HomeAssistantBridge:
    """Publishes the hub's doors to Home Assistant and passes its UNLOCK commands to ``unlock(door_id, actor)``.

    ``unlock`` runs on the bridge's own command thread (one at a time, one pending per door), never on the MQTT
    network thread, so a slow door cannot stall the connection's keepalives; it returns True when the door confirmed.
    Every public method returns at once: the connection, reconnections and re-publishing happen on paho's thread.
    """

    def __init__(self, cfg: HomeAssistantConfig, *, unlock: Callable[[str, str], bool]) -> None:
        self.cfg = cfg
        self._unlock = unlock
        self._lock = threading.RLock()
        self._doors: dict[str, _Door] = {}
        self._client: Any = None  # paho.mqtt.client.Client, imported in start() (the fleet extra)
        self._commands: ThreadPoolExecutor | None = None
        self._pending: set[str] = set()
        self._throttle = _Throttle()
        self.connected = False
        self.dropped_events = 0  # access events not sent: broker unreachable
        self.stale_events = 0  # access events not sent: older than max_event_age_s
        self.ignored_commands = 0  # command messages that were not an UNLOCK or LOCK for a known door
        self.last_error: str | None = None  # the broker's or the network's last complaint, for a status page
        self._dropped_since_connect = 0
        base = f"{cfg.base_topic}/{cfg.site}"
        self.bridge_topic = f"{base}/bridge/availability"
        self._door_base = f"{base}/door"
        self.command_filter = f"{base}/door/+/lock/set"
        self.status_topic = f"{cfg.discovery_prefix}/status"  # Home Assistant's birth message

    @property
    def unlocks_under_way(self) -> frozenset[str]:
        """Doors whose unlock the hub is still working on (another UNLOCK for one of them is ignored)."""
        with self._lock:
            return frozenset(self._pending)

    # -- topics and payloads ----------------------------------------------------------------------------------

    def topic(self, door: str, *levels: str) -> str:
        return "/".join((self._door_base, door, *levels))

    def discovery_topic(self, component: str, door: str) -> str:
        return f"{self.cfg.discovery_prefix}/{component}/face-kiosk-{self.cfg.site}/{door}/config"

    def discovery(self, door: str) -> dict[str, dict[str, Any]]:
        """The discovery configs of ``door``'s entities, by component."""
        site = self.cfg.site
        ident = f"face-kiosk_{site}_{door}"
        common: dict[str, Any] = {
            "device": {
                "identifiers": [ident],
                "name": door,
                "manufacturer": "face-kiosk",
                "model": "face-recognition door",
                "sw_version": __version__,
            },
            "origin": {"name": "face-kiosk", "sw_version": __version__},
            "availability": [{"topic": self.bridge_topic}, {"topic": self.topic(door, "availability")}],
            "availability_mode": "all",
            "qos": 1,
        }
        slug = f"face_kiosk_{_slug(site)}_{_slug(door)}"
        return {
            "lock": {
                **common,
                "name": None,  # the device's main feature: Home Assistant names it after the door
                "unique_id": f"{ident}_lock",
                "default_entity_id": f"lock.{slug}",
                "state_topic": self.topic(door, "lock", "state"),
                "command_topic": self.topic(door, "lock", "set"),
                "payload_lock": "LOCK",
                "payload_unlock": "UNLOCK",
                "state_locked": LOCKED,
                "state_unlocked": UNLOCKED,
                "optimistic": False,
                "retain": False,
            },
            "event": {
                **common,
                "name": "Access",
                "unique_id": f"{ident}_access",
                "default_entity_id": f"event.{slug}_access",
                "state_topic": self.topic(door, "event"),
                "event_types": list(EVENT_TYPES),
                "icon": "mdi:door",
            },
        }

    def event_payload(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """What Home Assistant gets of one access event: an allowlist, never the detail, never an image."""
        outcome = _text(event.get("outcome", ""))
        payload: dict[str, Any] = {
            "event_type": outcome if outcome in EVENT_TYPES else "other",
            "kind": _text(event.get("kind", "")),
            "outcome": outcome,
        }
        ts = event.get("ts")
        number = isinstance(ts, int | float) and not isinstance(ts, bool) and math.isfinite(ts)
        payload["ts"] = ts if number else _text(ts or "")  # NaN is not JSON
        detail = event.get("detail")
        rule = detail.get("rule") if isinstance(detail, Mapping) else None
        payload["rule"] = _text(rule) if rule is not None else None
        action = event.get("door_action")
        payload["door_action"] = _text(action) if action is not None else None
        name = event.get("person_name")
        if self.cfg.include_names and name:
            payload["person_name"] = _text(name)
        return payload

    # -- the hub's calls --------------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; returns at once whether or not the broker is reachable."""
        try:
            from paho.mqtt import client as mqtt
            from paho.mqtt.enums import CallbackAPIVersion
        except ImportError as exc:
            raise ConfigError(f"{KEY}.enabled: needs paho-mqtt: pip install 'face-kiosk[fleet]' ({exc})") from None
        with self._lock:
            if self._client is not None:
                return
            cfg = self.cfg
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=cfg.client_id or f"face-kiosk-{cfg.site}",
                protocol=mqtt.MQTTv311,
                clean_session=True,
            )
            if cfg.username:
                client.username_pw_set(cfg.username, self._password())
            if cfg.tls:
                try:
                    client.tls_set(ca_certs=str(cfg.ca_file) if cfg.ca_file else None)
                except (OSError, ValueError) as exc:
                    raise ConfigError(f"{KEY}.ca_file: cannot be used: {_text(exc)}") from None
            client.will_set(self.bridge_topic, OFFLINE, qos=1, retain=True)
            client.reconnect_delay_set(1, cfg.reconnect_max_s)
            client.max_queued_messages_set(MAX_QUEUED)
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            client.on_connect_fail = self._on_connect_fail
            client.on_message = self._on_message
            self._commands = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ha-unlock")
            client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
            self._client = client
            client.loop_start()
            log.info(
                "Home Assistant bridge: connecting to %s:%d as %s", cfg.host, cfg.port, cfg.username or "anonymous"
            )

    def stop(self) -> None:
        """Publish the bridge's offline availability, disconnect and join the threads; safe to call twice."""
        with self._lock:
            client, self._client = self._client, None
            commands, self._commands = self._commands, None
            for door in self._doors.values():
                if door.relock is not None:
                    door.relock.cancel()
                    door.relock = None
            connected, self.connected = self.connected, False
        if client is None:
            return
        if connected:
            try:
                info = client.publish(self.bridge_topic, OFFLINE, qos=1, retain=True)
                info.wait_for_publish(timeout=2.0)
            except (RuntimeError, ValueError) as exc:  # the connection went while we were stopping
                log.debug("Home Assistant bridge: offline not published: %s", exc)
        client.disconnect()
        client.loop_stop()
        if commands is not None:
            commands.shutdown(wait=True, cancel_futures=True)
        log.info("Home Assistant bridge stopped")

    def door_seen(self, door_id: str, online: bool) -> None:
        """A door came online or went offline: its discovery on first sight, its availability on every change."""
        door_id = check_door_id(door_id)
        with self._lock:
            door = self._doors.get(door_id)
            if door is None:
                door = self._doors[door_id] = _Door(online=online)
                self._announce(door_id, door)
            elif door.online != online:
                door.online = online
                self._publish(self.topic(door_id, "availability"), ONLINE if online else OFFLINE, retain=True)

    def door_event(self, door_id: str, event: Mapping[str, Any]) -> None:
        """One access event as the hub recorded it: to the door's event entity, and its pulse to the lock's state."""
        door_id = check_door_id(door_id)
        age = self._age_s(event.get("ts"))
        if age is not None and age > self.cfg.max_event_age_s:
            with self._lock:
                self.stale_events += 1
            self._throttle(
                "stale",
                logging.INFO,
                "Home Assistant bridge: events older than %.0f s are not sent (door %s is catching up)",
                self.cfg.max_event_age_s,
                door_id,
            )
            return
        payload = json.dumps(self.event_payload(event), default=str)
        with self._lock:
            if door_id not in self._doors:  # an event before the first heartbeat: the door is evidently up
                self._doors[door_id] = _Door(online=True)
                self._announce(door_id, self._doors[door_id])
            if not self._publish(self.topic(door_id, "event"), payload, retain=False):
                self.dropped_events += 1
                self._dropped_since_connect += 1
                self._throttle(
                    "dropped",
                    logging.WARNING,
                    "Home Assistant bridge: MQTT broker unreachable, access events are dropped until it is back "
                    "(the hub's database keeps them)",
                )
            match = PULSE.match(str(event.get("door_action") or ""))
            if match:
                self._pulse(door_id, min(float(match.group(1)), MAX_RELOCK_S))

    # -- state ------------------------------------------------------------------------------------------------

    def _pulse(self, door_id: str, seconds: float) -> None:
        if self._client is None:
            return  # not started or stopped: no timer may outlive the bridge (the door relocks itself anyway)
        door = self._doors[door_id]
        if door.relock is not None:
            door.relock.cancel()
        door.locked = False
        self._publish(self.topic(door_id, "lock", "state"), UNLOCKED, retain=True)
        timer = threading.Timer(seconds, self._relock, args=(door_id, door))
        timer.name, timer.daemon = f"ha-relock-{door_id}", True
        door.relock = timer
        timer.start()

    def _relock(self, door_id: str, door: _Door) -> None:
        with self._lock:
            if door.relock is None or door.relock is not threading.current_thread():
                return  # replaced by a newer pulse, or the bridge stopped
            door.relock = None
            door.locked = True
            self._publish(self.topic(door_id, "lock", "state"), LOCKED, retain=True)

    def _announce(self, door_id: str, door: _Door) -> None:
        """Everything Home Assistant needs for one door, retained (called with the lock held)."""
        for component, config in self.discovery(door_id).items():
            self._publish(self.discovery_topic(component, door_id), json.dumps(config), retain=True)
        self._publish(self.topic(door_id, "availability"), ONLINE if door.online else OFFLINE, retain=True)
        self._publish(self.topic(door_id, "lock", "state"), LOCKED if door.locked else UNLOCKED, retain=True)

    def _publish(self, topic: str, payload: str, *, retain: bool) -> bool:
        """Publish if connected (QoS 1); False when not sent. Retained state is re-sent on the next connection."""
        client = self._client
        if client is None or not self.connected:
            return False
        info = client.publish(topic, payload, qos=1, retain=retain)
        return bool(info.rc == 0)

    def _age_s(self, ts: Any) -> float | None:
        if not isinstance(ts, str):
            return None
        try:
            when = datetime.fromisoformat(ts)
        except ValueError:
            return None
        when = when.replace(tzinfo=UTC) if when.tzinfo is None else when
        return (datetime.now(UTC) - when).total_seconds()

    def _password(self) -> str | None:
        path = self.cfg.password_file
        if path is None:
            return None
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ConfigError(f"{KEY}.password_file: cannot read {path}: {why}") from None
        password = text.strip("\r\n")
        if not password:
            raise ConfigError(f"{KEY}.password_file: {path} is empty")
        return password

    # -- paho callbacks (its network thread; an exception escaping one would end that thread) ------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        try:
            if reason.is_failure:
                self.last_error = f"the broker refused the connection: {reason}"
                hint = ""
                if reason.value in (4, 5, 134, 135):  # bad user name or password / not authorised
                    hint = f": check {KEY}.username and {KEY}.password_file, and the broker's password file"
                self._throttle(
                    "refused",
                    logging.ERROR,
                    "Home Assistant bridge: MQTT broker %s:%d refused the connection (%s)%s",
                    self.cfg.host,
                    self.cfg.port,
                    reason,
                    hint,
                )
                return
            with self._lock:
                if self._client is not client:
                    return  # stopping
                self.connected = True
                self.last_error = None
                for kind in ("refused", "unreachable", "lost", "dropped"):
                    self._throttle.reset(kind)
                dropped, self._dropped_since_connect = self._dropped_since_connect, 0
                self._publish(self.bridge_topic, ONLINE, retain=True)
                for door_id, door in self._doors.items():
                    self._announce(door_id, door)
                client.subscribe(self.status_topic, qos=1)
                if self.cfg.allow_unlock:
                    client.subscribe(self.command_filter, qos=1)
            log.info(
                "Home Assistant bridge: connected to %s:%d, %d doors published%s",
                self.cfg.host,
                self.cfg.port,
                len(self._doors),
                f"; {dropped} access events dropped while away" if dropped else "",
            )
        except Exception:
            log.exception("Home Assistant bridge: error after connecting")

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with self._lock:
            was, self.connected = self.connected, False
        if was and self._client is client:
            self.last_error = f"connection lost: {reason}"
            self._throttle(
                "lost",
                logging.WARNING,
                "Home Assistant bridge: lost the MQTT broker %s:%d (%s), reconnecting",
                self.cfg.host,
                self.cfg.port,
                reason,
            )

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        tls = f" (or did not accept its TLS certificate: check {KEY}.ca_file)" if self.cfg.tls else ""
        self.last_error = f"cannot reach the MQTT broker at {self.cfg.host}:{self.cfg.port}{tls}"
        self._throttle(
            "unreachable",
            logging.WARNING,
            "Home Assistant bridge: %s, retrying (the hub goes on)",
            self.last_error,
        )

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            self._handle(msg.topic, bytes(msg.payload), bool(msg.retain))
        except Exception:  # a hostile payload must never end the network thread
            log.exception("Home Assistant bridge: error handling an MQTT message")

    def _handle(self, topic: str, payload: bytes, retained: bool) -> None:
        if topic == self.status_topic:
            if payload == b"online":  # Home Assistant restarted: it may have lost what it knew
                log.info("Home Assistant came online: re-publishing %d doors", len(self._doors))
                with self._lock:
                    for known, state in self._doors.items():
                        self._announce(known, state)
            return
        levels = topic.split("/")
        door_id = levels[-3] if len(levels) >= 3 else ""
        if topic != self.topic(door_id, "lock", "set") or not DOOR_ID.match(door_id):
            return self._ignore(topic, payload, "not a lock command topic")
        if retained:
            # NOTE: a retained UNLOCK would open the door again on every reconnection: never act on one.
            return self._ignore(topic, payload, "retained (clear it: mosquitto_pub -r -n -t TOPIC)")
        with self._lock:
            door = self._doors.get(door_id)
            if door is None:
                return self._ignore(topic, payload, "unknown door")
            if payload == b"LOCK":
                log.info("Home Assistant bridge: LOCK for %s is a no-op (the door relocks itself)", door_id)
                self._publish(self.topic(door_id, "lock", "state"), LOCKED if door.locked else UNLOCKED, retain=True)
                return None
            if payload != b"UNLOCK":
                return self._ignore(topic, payload, "not UNLOCK or LOCK")
            if door_id in self._pending or self._commands is None:
                return self._ignore(topic, payload, "an unlock of this door is already under way")
            self._pending.add(door_id)
            self._commands.submit(self._run_unlock, door_id)
        return None

    def _ignore(self, topic: str, payload: bytes, why: str) -> None:
        self.ignored_commands += 1
        self._throttle(
            "ignored",
            logging.WARNING,
            "Home Assistant bridge: ignored a message on %r (%s): %r",
            topic[:120],
            why,
            payload[:40],
        )

    def _run_unlock(self, door_id: str) -> None:
        actor = self.cfg.actor
        log.info("Home Assistant bridge: UNLOCK %s by %s", door_id, actor)
        try:
            ok = bool(self._unlock(door_id, actor))
        except Exception:
            log.exception("Home Assistant bridge: unlock of %s failed", door_id)
            ok = False
        finally:
            with self._lock:
                self._pending.discard(door_id)
        if ok:
            return  # the door's pulse comes back as an access event, which sets the lock's state
        log.warning("Home Assistant bridge: door %s did not confirm the unlock", door_id)
        with self._lock:
            door = self._doors.get(door_id)
            if door is not None:  # Home Assistant may show "unlocking": tell it the state again
                self._publish(self.topic(door_id, "lock", "state"), LOCKED if door.locked else UNLOCKED, retain=True)
