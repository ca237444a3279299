"""``kiosk web``: every listener of the config in one process, one event loop, one set of services.

Listeners come from ``web.listen`` (door screen and admin app; ``--listen`` replaces it), ``web.door_listen`` (door
screen only) and ``web.admin_listen`` (admin app only), each ``HOST:PORT`` (``[::1]:8080`` for IPv6). Plain HTTP is
served only on loopback addresses; every other listener is TLS, with the configured certificate or a self-signed one
(``kiosk.web.tls``). There is no option for plain HTTP on the network: ``http://0.0.0.0:8080`` is a config error.
``https://127.0.0.1:8443`` asks for TLS on a loopback address too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import signal
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kiosk.config import Config
from kiosk.errors import ConfigError, ListenError

if TYPE_CHECKING:
    from kiosk.web.services import WebServices

log = logging.getLogger(__name__)

_LISTEN = re.compile(
    r"(?:(?P<scheme>https?)://)?(?:\[(?P<v6>[0-9A-Fa-f:.%\w]+)\]|(?P<host>[^:\[\]/\s]+)):(?P<port>\d{1,5})/?"
)
GRACE_S = 3  # open streams (events, door state) are cut after this at shutdown


@dataclass(frozen=True)
class Listener:
    host: str
    port: int
    tls: bool
    door: bool
    admin: bool
    key: str  # the config key it came from, for messages

    @property
    def what(self) -> str:
        if self.door and self.admin:
            return "the door screen and the admin app"
        return "the door screen" if self.door else "the admin app"

    def url(self, port: int | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{port or self.port}/"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_listen(text: str, key: str) -> tuple[str | None, str, int]:
    """``[scheme://]HOST:PORT`` → (scheme or None, host, port); ConfigError naming ``key`` otherwise."""
    m = _LISTEN.fullmatch(text.strip()) if isinstance(text, str) else None
    port = int(m.group("port")) if m else 0
    if m is None or not 0 <= port <= 65535:
        raise ConfigError(
            f"{key}: {text!r} is not HOST:PORT (examples: 127.0.0.1:8080, 0.0.0.0:8443, [::1]:8080; port 1-65535, "
            "or 0 for any free port)"
        )
    host = m.group("v6") or m.group("host")
    if m.group("v6"):
        try:
            ipaddress.IPv6Address(host.split("%")[0])
        except ValueError:
            raise ConfigError(f"{key}: {text!r}: {host!r} is not an IPv6 address") from None
    return m.group("scheme"), host, port


def plan(cfg: Config, listen: Sequence[str] | None = None) -> list[Listener]:
    """The listeners to open, checked: valid, no address twice, TLS wherever the address is not loopback."""
    web = cfg.web
    groups = [
        ("--listen" if listen else "web.listen", list(listen) if listen else list(web.listen), True, True),
        ("web.door_listen", list(web.door_listen), True, False),
        ("web.admin_listen", list(web.admin_listen), False, True),
    ]
    found: list[Listener] = []
    seen: dict[tuple[str, int], str] = {}
    for key, texts, door, admin in groups:
        for text in texts:
            scheme, host, port = parse_listen(text, key)
            loopback = is_loopback(host)
            if scheme == "http" and not loopback:
                raise ConfigError(
                    f"{key}: {text!r}: plain HTTP is served only on loopback addresses (127.0.0.1, ::1); "
                    f"drop 'http://' to serve {host}:{port} with TLS"
                )
            where = (host.lower(), port)
            if port and where in seen:
                raise ConfigError(f"{key}: {host}:{port} is already a listener (in {seen[where]})")
            seen[where] = key
            found.append(Listener(host, port, tls=scheme == "https" or not loopback, door=door, admin=admin, key=key))
    if not found:
        raise ConfigError("web.listen: no listener configured (web.listen, web.door_listen and web.admin_listen)")
    return found


def bind(listener: Listener) -> socket.socket:
    """A listening socket for ``listener``; ListenError with the reason when it cannot be opened."""
    try:
        infos = socket.getaddrinfo(listener.host, listener.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ListenError(f"{listener.key}: cannot resolve {listener.host!r}: {err.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        raise ListenError(
            f"{listener.key}: cannot listen on {listener.host}:{listener.port}: {err.strerror or err}"
        ) from None
    return sock


@contextlib.contextmanager
def _sockets(listeners: Sequence[Listener]) -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        for listener in listeners:
            opened.append(bind(listener))
        yield opened
    finally:
        for sock in opened:
            sock.close()


def serve(
    cfg: Config,
    listen: Sequence[str] | None = None,
    *,
    announce: Callable[[str], None] | None = None,
    services: WebServices | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit code. ``announce`` gets one line per URL served."""
    import uvicorn

    from kiosk.door.notify import Notifier
    from kiosk.web.app import create_app
    from kiosk.web.services import build_services
    from kiosk.web.tls import certificate_files, fingerprint

    listeners = plan(cfg, listen)
    cert: tuple[Path, Path] | None = None
    if any(lst.tls for lst in listeners):
        cert = certificate_files(cfg, [lst.host for lst in listeners])
    services = services or build_services(cfg)
    notifier = Notifier()

    class _Server(uvicorn.Server):
        # NOTE: several servers share one loop; the signals are handled once, below, for all of them.
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    async def main(sockets: list[socket.socket]) -> None:
        servers: list[_Server] = []
        for listener in listeners:
            config = uvicorn.Config(
                create_app(services, door=listener.door, admin=listener.admin),
                lifespan="off",  # the door link is started and stopped here, once for all listeners
                proxy_headers=False,  # the client address is the peer's: no X-Forwarded-For from anyone
                server_header=False,
                access_log=False,
                log_config=None,
                timeout_graceful_shutdown=GRACE_S,
                ssl_certfile=str(cert[0]) if listener.tls and cert else None,
                ssl_keyfile=str(cert[1]) if listener.tls and cert else None,
            )
            servers.append(_Server(config))
        loop = asyncio.get_running_loop()

        def stop(signum: int) -> None:
            log.info("received %s: stopping", signal.Signals(signum).name)
            notifier.stopping()
            for server in servers:
                server.should_exit = True

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop, signum)
        await services.link.start()
        try:
            tasks = [asyncio.create_task(s.serve(sockets=[sock])) for s, sock in zip(servers, sockets, strict=True)]
            while not all(s.started for s in servers) and not any(t.done() for t in tasks):
                await asyncio.sleep(0.05)
            if all(s.started for s in servers):
                for listener, sock in zip(listeners, sockets, strict=True):
                    line = f"serving {listener.what} on {listener.url(sock.getsockname()[1])}"
                    log.info(line)
                    if announce:
                        announce(line)
                if cert and announce:
                    announce(f"TLS certificate {cert[0]} (SHA-256 {fingerprint(cert[0])})")
                if announce and not services.accounts.list_accounts():
                    announce("no web accounts yet: make the first admin with `kiosk web user add NAME --role admin`")
                notifier.ready("serving")
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for server in servers:
                server.should_exit = True
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                raise failures[0]
        finally:
            await services.link.stop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    try:
        with _sockets(listeners) as sockets:
            asyncio.run(main(sockets))
    finally:
        services.close()
        notifier.close()
    return 0
