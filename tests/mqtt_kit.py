"""The Home Assistant bridge's tests' broker: Debian's Mosquitto on 127.0.0.1 with password auth and the ACL of
docs/home-assistant.md, ended by its own PID; and a paho client playing Home Assistant."""

from __future__ import annotations

import getpass
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt import client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from kiosk.fleet.broker import free_port

MOSQUITTO = Path("/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = Path("/usr/bin/mosquitto_passwd")
BRIDGE_USER, HA_USER = "face-kiosk", "homeassistant"
# The ACL docs/home-assistant.md recommends: the bridge writes its own topics and discovery and reads only the lock
# commands and Home Assistant's status; Home Assistant reads everything and writes commands and its status.
ACL = """\
user face-kiosk
topic write face-kiosk/#
topic read face-kiosk/+/door/+/lock/set
topic write homeassistant/lock/#
topic write homeassistant/event/#
topic read homeassistant/status

user homeassistant
topic readwrite #
"""


def wait_for(predicate: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.02)


class Mosquitto:
    """A mosquitto process with its own config, password file and ACL in ``workdir``, on ``port``; ``kill`` is a
    crash (SIGKILL), ``start`` again brings it back on the same port with nothing retained (no persistence)."""

    def __init__(
        self, workdir: Path, port: int, passwords: dict[str, str], tls: tuple[int, Path, Path] | None = None
    ) -> None:
        self.workdir, self.port, self.passwords = workdir, port, passwords
        self.tls = tls  # (port, certificate, key) of a second listener with TLS
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "mosquitto.log"

    def _configure(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        pwfile, aclfile, conf = self.workdir / "passwd", self.workdir / "acl", self.workdir / "mosquitto.conf"
        pwfile.unlink(missing_ok=True)
        for i, (user, password) in enumerate(self.passwords.items()):
            flags = ["-b", "-c"] if i == 0 else ["-b"]
            subprocess.run([str(MOSQUITTO_PASSWD), *flags, str(pwfile), user, password], check=True)
        os.chmod(pwfile, 0o600)
        aclfile.write_text(ACL)
        os.chmod(aclfile, 0o600)
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous false\n"
            f"password_file {pwfile}\n"
            f"acl_file {aclfile}\n"
            "persistence false\n"
            # As root mosquitto drops to the `mosquitto` user, who cannot read this test's files: stay who we are.
            f"user {getpass.getuser()}\n"
            "log_dest stderr\n"
            "log_type all\n"
        )
        if self.tls is not None:
            tls_port, cert, key = self.tls
            with conf.open("a") as f:
                f.write(f"listener {tls_port} 127.0.0.1\ncertfile {cert}\nkeyfile {key}\n")
        return conf

    def start(self, timeout_s: float = 10.0) -> Mosquitto:
        conf = self._configure()
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen([str(MOSQUITTO), "-c", str(conf)], stdout=logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-600:]
                raise RuntimeError(f"mosquitto exited with status {self.proc.returncode}: {tail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout_s:.0f} s")

    def kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    if not MOSQUITTO.is_file():  # .ci/run installs it; a skip would fail CI (KIOSK_FAIL_ON_SKIP)
        pytest.skip("mosquitto not installed: apt-get install mosquitto")
    server = Mosquitto(tmp_path / "mosquitto", free_port(), {BRIDGE_USER: "bridge-secret", HA_USER: "ha-secret"})
    server.start()
    try:
        yield server
    finally:
        server.stop()
    assert server.proc is not None and server.proc.poll() is not None, "ended by its own PID"


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class HomeAssistant:
    """A paho client in Home Assistant's place: records every message on ``#`` and publishes commands."""

    def __init__(self, port: int, user: str = HA_USER, password: str = "ha-secret") -> None:
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ha-test-{time.monotonic_ns()}")
        self.client.username_pw_set(user, password)
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe("#", qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        wait_for(self.subscribed.is_set, what="the Home Assistant test client's subscription")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append(Message(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, topic: str) -> list[Message]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def last(self, topic: str, timeout_s: float = 10.0) -> Message:
        def latest() -> Message | None:
            got = self.on(topic)
            return got[-1] if got else None

        return wait_for(latest, timeout_s, what=f"a message on {topic}")

    def wait_payload(self, topic: str, payload: bytes, timeout_s: float = 10.0) -> Message:
        def latest() -> Message | None:
            got = self.on(topic)
            return got[-1] if got and got[-1].payload == payload else None

        return wait_for(latest, timeout_s, what=f"{payload!r} on {topic}")

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(timeout=5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
