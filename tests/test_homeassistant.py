"""The hub's Home Assistant bridge against a real Mosquitto (password auth, the documented ACL), with a paho client
in Home Assistant's place."""

from __future__ import annotations

import dataclasses
import gc
import logging
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kiosk.config import HomeAssistantConfig, _build
from kiosk.errors import ConfigError
from kiosk.fleet.broker import free_port
from kiosk.fleet.homeassistant import EVENT_TYPES, HomeAssistantBridge
from kiosk.web.tls import generate_self_signed
from tests.mqtt_kit import BRIDGE_USER, HomeAssistant, Mosquitto, mosquitto, wait_for

__all__ = ["mosquitto"]  # the fixture, imported for pytest

SITE = "hq"
BASE = f"face-kiosk/{SITE}"
BRIDGE = f"{BASE}/bridge/availability"


def door_topic(door: str, *levels: str) -> str:
    return "/".join((BASE, "door", door, *levels))


def now_iso(delta_s: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_s)).isoformat(timespec="seconds")


class Unlocks:
    """The hub's unlock callback: records each call; answers ``result`` (or raises it)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.result: bool | Exception = True
        self._lock = threading.Lock()

    def __call__(self, door: str, actor: str) -> bool:
        with self._lock:
            self.calls.append((door, actor))
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def config(tmp_path: Path, port: int, password: str = "bridge-secret", **kw: Any) -> HomeAssistantConfig:
    pw = tmp_path / "ha-password"
    pw.write_text(password + "\n")
    pw.chmod(0o600)
    base: dict[str, Any] = {
        "enabled": True,
        "port": port,
        "username": BRIDGE_USER,
        "password_file": pw,
        "site": SITE,
        "keepalive_s": 5,
        "reconnect_max_s": 1,
    }
    return HomeAssistantConfig(**(base | kw))


@pytest.fixture
def unlocks() -> Unlocks:
    return Unlocks()


@pytest.fixture
def bridge(tmp_path: Path, mosquitto: Mosquitto, unlocks: Unlocks) -> Iterator[HomeAssistantBridge]:
    b = HomeAssistantBridge(config(tmp_path, mosquitto.port), unlock=unlocks)
    b.start()
    try:
        wait_for(lambda: b.connected, what="the bridge to connect")
        yield b
    finally:
        b.stop()


@pytest.fixture
def ha(mosquitto: Mosquitto) -> Iterator[HomeAssistant]:
    client = HomeAssistant(mosquitto.port)
    try:
        yield client
    finally:
        client.close()


def test_discovery_is_retained_json_with_unique_ids_and_availability(
    bridge: HomeAssistantBridge, mosquitto: Mosquitto
) -> None:
    live = HomeAssistant(mosquitto.port)
    bridge.door_seen("front", True)
    bridge.door_seen("back", True)
    live.wait_payload(door_topic("back", "lock", "state"), b"LOCKED")  # the last of what the bridge published
    live.close()
    # A Home Assistant that starts later still finds everything: discovery, availability and state are retained.
    ha = HomeAssistant(mosquitto.port)
    try:
        lock = ha.last("homeassistant/lock/face-kiosk-hq/front/config")
        event = ha.last("homeassistant/event/face-kiosk-hq/front/config")
        assert lock.retain and event.retain
        lock_cfg, event_cfg = lock.json(), event.json()
        assert lock_cfg["unique_id"] == "face-kiosk_hq_front_lock"
        assert event_cfg["unique_id"] == "face-kiosk_hq_front_access"
        assert lock_cfg["default_entity_id"] == "lock.face_kiosk_hq_front"
        assert lock_cfg["device"]["identifiers"] == event_cfg["device"]["identifiers"] == ["face-kiosk_hq_front"]
        assert lock_cfg["command_topic"] == door_topic("front", "lock", "set")
        assert lock_cfg["state_topic"] == door_topic("front", "lock", "state")
        assert (lock_cfg["payload_unlock"], lock_cfg["state_locked"], lock_cfg["state_unlocked"]) == (
            "UNLOCK",
            "LOCKED",
            "UNLOCKED",
        )
        assert "payload_open" not in lock_cfg  # no "open": the door has a latch, not a bolt
        assert event_cfg["state_topic"] == door_topic("front", "event")
        assert set(event_cfg["event_types"]) >= {"granted", "denied", "unknown"}
        for cfg in (lock_cfg, event_cfg):
            assert cfg["availability_mode"] == "all"
            assert [a["topic"] for a in cfg["availability"]] == [BRIDGE, door_topic("front", "availability")]
        back = ha.last("homeassistant/lock/face-kiosk-hq/back/config").json()
        assert back["unique_id"] != lock_cfg["unique_id"]
        assert ha.wait_payload(BRIDGE, b"online").retain
        assert ha.wait_payload(door_topic("front", "availability"), b"online").retain
        assert ha.wait_payload(door_topic("front", "lock", "state"), b"LOCKED").retain

        bridge.door_seen("front", False)
        ha.wait_payload(door_topic("front", "availability"), b"offline")
        bridge.door_seen("front", True)
        ha.wait_payload(door_topic("front", "availability"), b"online")
        configs = ha.on("homeassistant/lock/face-kiosk-hq/front/config")
        assert len(configs) == 1, "discovery once, on first sight"
    finally:
        ha.close()
    bridge.stop()
    ha2 = HomeAssistant(mosquitto.port)
    try:
        ha2.wait_payload(BRIDGE, b"offline")
    finally:
        ha2.close()


@pytest.mark.parametrize("include_names", [False, True])
def test_access_event_carries_the_name_only_when_asked(
    tmp_path: Path, mosquitto: Mosquitto, ha: HomeAssistant, unlocks: Unlocks, include_names: bool
) -> None:
    bridge = HomeAssistantBridge(config(tmp_path, mosquitto.port, include_names=include_names), unlock=unlocks)
    bridge.start()
    try:
        wait_for(lambda: bridge.connected, what="the bridge to connect")
        bridge.door_seen("front", True)
        ts = now_iso()
        bridge.door_event(
            "front",
            {
                "kind": "access",
                "outcome": "granted",
                "ts": ts,
                "door_action": "pulse 3.0s",
                "person_name": "Ada Lovelace",
                "person_id": 7,
                "score": 0.71,
                "detail": {"rule": "staff", "snapshot": "/var/lib/face-kiosk/snapshots/x.jpg", "reason": "match"},
            },
        )
        msg = ha.last(door_topic("front", "event"))
        assert not msg.retain, "events are signals, not state"
        payload = msg.json()
        assert payload["event_type"] == "granted"
        assert (payload["outcome"], payload["rule"], payload["ts"]) == ("granted", "staff", ts)
        assert payload["kind"] == "access"
        assert payload["event_type"] in EVENT_TYPES
        raw = msg.payload.decode()
        for private in ("snapshot", ".jpg", "score", "person_id", "0.71", "reason"):
            assert private not in raw
        if include_names:
            assert payload["person_name"] == "Ada Lovelace"
        else:
            assert "Ada" not in raw and "person_name" not in payload
        # An outcome Home Assistant was not told about is sent as "other" (it drops unlisted types).
        bridge.door_event("front", {"kind": "door", "outcome": "tailgating", "ts": now_iso(), "door_action": None})
        wait_for(lambda: len(ha.on(door_topic("front", "event"))) == 2, what="the second event")
        other = ha.on(door_topic("front", "event"))[-1].json()
        assert (other["event_type"], other["outcome"], other["rule"]) == ("other", "tailgating", None)
    finally:
        bridge.stop()


def test_stale_events_are_not_sent(bridge: HomeAssistantBridge, ha: HomeAssistant) -> None:
    bridge.door_seen("front", True)
    bridge.door_event("front", {"kind": "access", "outcome": "granted", "ts": now_iso(-3600), "door_action": None})
    bridge.door_event("front", {"kind": "access", "outcome": "denied", "ts": now_iso(), "door_action": "none"})
    msg = ha.last(door_topic("front", "event"))
    assert msg.json()["outcome"] == "denied"
    assert len(ha.on(door_topic("front", "event"))) == 1
    assert bridge.stale_events == 1
    # A timestamp that is not one is passed on as text (NaN is not JSON), never an error for the hub.
    bridge.door_event("front", {"kind": "access", "outcome": "denied", "ts": float("nan"), "detail": "not a dict"})
    wait_for(lambda: len(ha.on(door_topic("front", "event"))) == 2, what="the second event")
    assert ha.on(door_topic("front", "event"))[-1].json()["ts"] == "nan"


def test_one_unlock_at_a_time_per_door(bridge: HomeAssistantBridge, ha: HomeAssistant) -> None:
    release = threading.Event()
    calls: list[str] = []

    def slow_unlock(door: str, actor: str) -> bool:
        calls.append(door)
        return release.wait(timeout=10)

    bridge._unlock = slow_unlock
    bridge.door_seen("front", True)
    bridge.door_seen("back", True)
    ha.last(door_topic("back", "lock", "state"))
    ha.publish(door_topic("front", "lock", "set"), b"UNLOCK")
    wait_for(lambda: calls == ["front"], what="the first unlock under way")
    ha.publish(door_topic("front", "lock", "set"), b"UNLOCK")  # a double click: ignored, not queued
    wait_for(lambda: bridge.ignored_commands == 1, what="the second UNLOCK ignored")
    release.set()
    wait_for(lambda: not bridge.unlocks_under_way, what="the unlock finished")
    ha.publish(door_topic("back", "lock", "set"), b"UNLOCK")
    wait_for(lambda: calls == ["front", "back"], what="the other door's unlock")


def test_lock_state_unlocked_then_locked_after_the_pulse(bridge: HomeAssistantBridge, ha: HomeAssistant) -> None:
    state = door_topic("front", "lock", "state")
    bridge.door_seen("front", True)
    ha.wait_payload(state, b"LOCKED")

    def states() -> list[bytes]:
        return [m.payload for m in ha.on(state)]

    bridge.door_event("front", {"kind": "access", "outcome": "granted", "ts": now_iso(), "door_action": "pulse 0.3s"})
    wait_for(lambda: states() == [b"LOCKED", b"UNLOCKED", b"LOCKED"], what="UNLOCKED, then LOCKED")
    # A second pulse during the first extends it: one relock, after the later pulse.
    for kind, outcome in (("access", "granted"), ("door", "manual-unlock")):
        bridge.door_event("front", {"kind": kind, "outcome": outcome, "ts": now_iso(), "door_action": "pulse 0.4s"})
    wait_for(lambda: len(states()) == 6, what="two UNLOCKED and one LOCKED")
    assert states()[3:] == [b"UNLOCKED", b"UNLOCKED", b"LOCKED"]
    # Denials and garbage actions leave the state alone.
    n = len(ha.on(state))
    bridge.door_event("front", {"kind": "access", "outcome": "denied", "ts": now_iso(), "door_action": "none"})
    bridge.door_event("front", {"kind": "access", "outcome": "granted", "ts": now_iso(), "door_action": "pulse -1s"})
    wait_for(lambda: len(ha.on(door_topic("front", "event"))) == 5, what="five events")
    assert len(ha.on(state)) == n


GARBAGE: list[bytes] = [
    b"",
    b"unlock",
    b"UNLOCK ",
    b"UNLOCK\x00",
    b'{"state": "UNLOCK"}',
    b"\xff\xfe" * 500,
    b"OPEN",
    b"A" * 100_000,
]


def test_unlock_command_calls_the_hub_and_garbage_does_not(
    bridge: HomeAssistantBridge, ha: HomeAssistant, unlocks: Unlocks
) -> None:
    bridge.door_seen("front", True)
    command = door_topic("front", "lock", "set")
    ha.last(command.replace("/set", "/state"))
    for payload in GARBAGE:
        ha.publish(command, payload)
    ha.publish(command, b"LOCK")  # a no-op: the door relocks itself
    ha.publish(door_topic("ghost", "lock", "set"), b"UNLOCK")  # a door the hub never saw
    wait_for(lambda: bridge.ignored_commands == len(GARBAGE) + 1, what="every bad command counted")
    assert unlocks.calls == []
    ha.publish(command, b"UNLOCK")
    wait_for(lambda: unlocks.calls == [("front", "home-assistant")], what="the hub's unlock callback")
    wait_for(lambda: not bridge.unlocks_under_way, what="the unlock finished")
    assert bridge.connected, "still connected after the garbage"

    # The door did not confirm, then the callback itself fails: the lock's state is told again, the bridge goes on.
    unlocks.result = False
    ha.publish(command, b"UNLOCK")
    wait_for(lambda: len(unlocks.calls) == 2, what="the second unlock")
    wait_for(lambda: not bridge.unlocks_under_way, what="the unlock finished")
    unlocks.result = RuntimeError("hub exploded")
    ha.publish(command, b"UNLOCK")
    wait_for(lambda: len(unlocks.calls) == 3, what="the third unlock")
    wait_for(lambda: not bridge.unlocks_under_way, what="the unlock finished")
    unlocks.result = True
    ha.publish(command, b"UNLOCK")
    wait_for(lambda: len(unlocks.calls) == 4, what="an unlock after a failing one")


def test_a_retained_unlock_is_never_acted_on(
    tmp_path: Path, mosquitto: Mosquitto, ha: HomeAssistant, unlocks: Unlocks
) -> None:
    ha.publish(door_topic("front", "lock", "set"), b"UNLOCK", retain=True)
    bridge = HomeAssistantBridge(config(tmp_path, mosquitto.port), unlock=unlocks)
    bridge.door_seen("front", True)  # known before the connection: the retained command arrives for a known door
    bridge.start()
    try:
        wait_for(lambda: bridge.ignored_commands == 1, what="the retained command ignored")
        assert unlocks.calls == []
    finally:
        bridge.stop()


def test_unlock_commands_can_be_turned_off(
    tmp_path: Path, mosquitto: Mosquitto, ha: HomeAssistant, unlocks: Unlocks
) -> None:
    bridge = HomeAssistantBridge(config(tmp_path, mosquitto.port, allow_unlock=False), unlock=unlocks)
    bridge.start()
    try:
        wait_for(lambda: bridge.connected, what="the bridge to connect")
        bridge.door_seen("front", True)
        ha.last(door_topic("front", "lock", "state"))
        ha.publish(door_topic("front", "lock", "set"), b"UNLOCK")
        # The status topic is a subscription too: once Home Assistant's "online" is handled, the UNLOCK before it
        # would have been too (one connection delivers in order).
        ha.publish("homeassistant/status", b"online")
        wait_for(lambda: len(ha.on("homeassistant/lock/face-kiosk-hq/front/config")) == 2, what="re-published")
        assert unlocks.calls == []
    finally:
        bridge.stop()


def test_survives_the_broker_killed_and_restarted(
    bridge: HomeAssistantBridge, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kiosk.fleet.homeassistant")
    bridge.door_seen("front", True)
    bridge.door_seen("back", True)
    ha = HomeAssistant(mosquitto.port)
    ha.wait_payload(door_topic("back", "availability"), b"online")
    ha.close()

    mosquitto.kill()  # SIGKILL by PID; it retained nothing on disk (persistence false)
    wait_for(lambda: not bridge.connected, what="the bridge to notice")
    bridge.door_seen("back", False)  # while away: the hub's calls return at once
    bridge.door_event("front", {"kind": "access", "outcome": "granted", "ts": now_iso(), "door_action": "pulse 60s"})
    assert bridge.dropped_events == 1

    mosquitto.start()
    wait_for(lambda: bridge.connected, timeout_s=15, what="the bridge to reconnect")
    ha = HomeAssistant(mosquitto.port)
    try:
        ha.last("homeassistant/lock/face-kiosk-hq/front/config")
        ha.last("homeassistant/event/face-kiosk-hq/back/config")
        ha.wait_payload(BRIDGE, b"online")
        ha.wait_payload(door_topic("front", "availability"), b"online")
        ha.wait_payload(door_topic("back", "availability"), b"offline")  # the state as it is now
        ha.wait_payload(door_topic("front", "lock", "state"), b"UNLOCKED")  # the pulse seen while away
        assert ha.on(door_topic("front", "event")) == [], "events are not replayed"
    finally:
        ha.close()
    assert any("1 access events dropped" in r.getMessage() for r in caplog.records)


def test_last_will_marks_the_bridge_offline_when_its_connection_dies(
    bridge: HomeAssistantBridge, ha: HomeAssistant
) -> None:
    ha.wait_payload(BRIDGE, b"online")
    sock = bridge._client.socket()
    sock.shutdown(socket.SHUT_RDWR)  # the hub's host vanishing: no DISCONNECT, the broker sends the will
    ha.wait_payload(BRIDGE, b"offline")
    ha.wait_payload(BRIDGE, b"online", timeout_s=15)  # and the bridge is back by itself


def test_broker_down_at_start_does_not_block_and_catches_up(tmp_path: Path, unlocks: Unlocks) -> None:
    port = free_port()
    bridge = HomeAssistantBridge(config(tmp_path, port), unlock=unlocks)
    bridge.start()  # nothing listens: returns at once
    try:
        bridge.door_seen("front", True)
        bridge.door_event("front", {"kind": "access", "outcome": "denied", "ts": now_iso(), "door_action": "none"})
        assert not bridge.connected and bridge.dropped_events == 1
        wait_for(lambda: bridge.last_error, what="the failure noted")
        server = Mosquitto(tmp_path / "late", port, {BRIDGE_USER: "bridge-secret", "homeassistant": "ha-secret"})
        server.start()
        try:
            wait_for(lambda: bridge.connected, timeout_s=15, what="the bridge to connect")
            for _ in range(2):  # the second Home Assistant connects surely after the bridge published: retained
                ha = HomeAssistant(port)
                try:
                    config_msg = ha.last("homeassistant/lock/face-kiosk-hq/front/config")
                    ha.wait_payload(door_topic("front", "availability"), b"online")
                finally:
                    ha.close()
            assert config_msg.retain
        finally:
            bridge.stop()
            server.stop()
    finally:
        bridge.stop()


@pytest.fixture
def tls_mosquitto(tmp_path: Path) -> Iterator[tuple[Mosquitto, int, Path]]:
    """Mosquitto with a plain listener (for Home Assistant) and a TLS one with a self-signed certificate."""
    cert, key = generate_self_signed(tmp_path / "tls", ["127.0.0.1"])  # self-signed: its own CA
    tls_port = free_port()
    passwords = {BRIDGE_USER: "bridge-secret", "homeassistant": "ha-secret"}
    server = Mosquitto(tmp_path / "mosquitto", free_port(), passwords, tls=(tls_port, cert, key)).start()
    try:
        yield server, tls_port, cert
    finally:
        server.stop()


def test_tls_with_the_brokers_ca(tmp_path: Path, tls_mosquitto: tuple[Mosquitto, int, Path], unlocks: Unlocks) -> None:
    server, tls_port, cert = tls_mosquitto
    ha = HomeAssistant(server.port)
    bridge = HomeAssistantBridge(config(tmp_path, tls_port, tls=True, ca_file=cert), unlock=unlocks)
    bridge.start()
    try:
        wait_for(lambda: bridge.connected, what="the bridge to connect over TLS")
        bridge.door_seen("front", True)
        ha.wait_payload(door_topic("front", "availability"), b"online")
    finally:
        bridge.stop()
        ha.close()
    garbage = tmp_path / "not-a-ca.pem"
    garbage.write_text("not a certificate")
    bad = HomeAssistantBridge(config(tmp_path, tls_port, tls=True, ca_file=garbage), unlock=unlocks)
    with pytest.raises(ConfigError, match=r"hub\.home_assistant\.ca_file: cannot be used"):
        bad.start()


# NOTE: paho-mqtt 2.2 does not close the socket of a failed TLS handshake (Client._ssl_wrap_socket); CPython frees
# it at once, with a ResourceWarning that this suite turns into an error. Collected here, inside this test.
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_tls_certificate_not_trusted_is_logged_and_retried(
    tmp_path: Path, tls_mosquitto: tuple[Mosquitto, int, Path], unlocks: Unlocks, caplog: pytest.LogCaptureFixture
) -> None:
    _, tls_port, _ = tls_mosquitto
    bridge = HomeAssistantBridge(config(tmp_path, tls_port, tls=True), unlock=unlocks)  # the system's CAs
    bridge.start()
    try:
        wait_for(lambda: "hub.home_assistant.ca_file" in (bridge.last_error or ""), what="the TLS failure")
        assert not bridge.connected
        assert any("TLS certificate" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        bridge.door_seen("front", True)  # the hub goes on
    finally:
        bridge.stop()
        gc.collect()


def test_bad_credentials_are_a_clear_logged_error(
    tmp_path: Path, mosquitto: Mosquitto, unlocks: Unlocks, caplog: pytest.LogCaptureFixture
) -> None:
    bridge = HomeAssistantBridge(config(tmp_path, mosquitto.port, password="wrong"), unlock=unlocks)
    bridge.start()
    try:

        def refusal() -> logging.LogRecord | None:
            errors = (r for r in caplog.records if r.levelno == logging.ERROR)
            return next((r for r in errors if "refused" in r.getMessage()), None)

        record = wait_for(refusal, what="the refusal logged")
        message = record.getMessage()
        assert "hub.home_assistant.password_file" in message and "127.0.0.1" in message
        assert "bridge-secret" not in message and "wrong" not in message
        assert not bridge.connected
        bridge.door_seen("front", True)  # the hub goes on
    finally:
        bridge.stop()
    bridge.stop()  # twice is fine


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"port": 0}, "hub.home_assistant.port: must be within 1..65535"),
        ({"port": "1883"}, "hub.home_assistant.port: must be an integer"),
        ({"hots": "x"}, "hub.home_assistant.hots: unknown key"),
        ({"base_topic": "face-kiosk/#"}, "hub.home_assistant.base_topic: must be MQTT topic levels"),
        ({"discovery_prefix": "homeassistant/"}, "hub.home_assistant.discovery_prefix: must be MQTT topic levels"),
        ({"base_topic": "$SYS/kiosk"}, "hub.home_assistant.base_topic: must be MQTT topic levels"),
        ({"base_topic": "a//b"}, "hub.home_assistant.base_topic: must be MQTT topic levels"),
        ({"site": "Head Office"}, "hub.home_assistant.site: must be 1-63 of a-z"),
        ({"password_file": "/x"}, "hub.home_assistant.password_file: set hub.home_assistant.username too"),
        ({"ca_file": "/ca.pem"}, "hub.home_assistant.ca_file: set hub.home_assistant.tls: true"),
        ({"include_names": "yes"}, "hub.home_assistant.include_names: must be true or false"),
        ({"max_event_age_s": 0}, "hub.home_assistant.max_event_age_s: must be within 1.0..86400.0"),
        ({"host": " "}, "hub.home_assistant.host: must not be empty"),
    ],
)
def test_config_errors_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _build(HomeAssistantConfig, data, "hub.home_assistant")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_defaults_are_off_and_private() -> None:
    cfg = _build(HomeAssistantConfig, {}, "hub.home_assistant")
    assert cfg == HomeAssistantConfig()
    assert (cfg.enabled, cfg.include_names, cfg.port, cfg.discovery_prefix) == (False, False, 1883, "homeassistant")


def test_unreadable_password_file_names_the_key(tmp_path: Path, unlocks: Unlocks) -> None:
    cfg = dataclasses.replace(config(tmp_path, free_port()), password_file=tmp_path / "missing")
    bridge = HomeAssistantBridge(cfg, unlock=unlocks)
    with pytest.raises(ConfigError, match=r"hub\.home_assistant\.password_file: cannot read"):
        bridge.start()
    bridge.stop()


def test_door_ids_are_checked(tmp_path: Path, unlocks: Unlocks) -> None:
    bridge = HomeAssistantBridge(config(tmp_path, free_port()), unlock=unlocks)
    for bad in ("Front", "a/b", "+", "#", "", "x" * 64):
        with pytest.raises(ConfigError):
            bridge.door_seen(bad, True)
        with pytest.raises(ConfigError):
            bridge.door_event(bad, {"outcome": "granted"})


def test_an_event_before_the_first_heartbeat_announces_the_door(bridge: HomeAssistantBridge, ha: HomeAssistant) -> None:
    bridge.door_event("side", {"kind": "access", "outcome": "denied", "ts": now_iso(), "door_action": "none"})
    assert ha.last("homeassistant/event/face-kiosk-hq/side/config").json()["unique_id"] == "face-kiosk_hq_side_access"
    ha.wait_payload(door_topic("side", "availability"), b"online")
    assert ha.last(door_topic("side", "event")).json()["event_type"] == "denied"
