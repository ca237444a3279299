"""Starting the fleet from a config: ``serve_hub`` (``kiosk hub serve``), ``run_door_agent`` (``kiosk fleet run``,
a door's agent) and ``FleetState`` (what the door loop reads of it). Everything the fleet needs is built here."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import signal
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from kiosk.config import Config
from kiosk.errors import BrokerUnreachableError, ConfigError, DoorNoAnswerError, FleetError, KioskError
from kiosk.fleet import hubdb
from kiosk.fleet.broker import BrokerConfig, NatsServer
from kiosk.fleet.door import FleetDoor
from kiosk.fleet.hub import Hub
from kiosk.fleet.secrets import FleetSecrets, read_bundle
from kiosk.gallery import Gallery
from kiosk.gallery.keys import AesGcmCipher, key_source, read_key_file

if TYPE_CHECKING:
    from kiosk.fleet.homeassistant import HomeAssistantBridge

log = logging.getLogger(__name__)
DOORS_CHECK_S = 2.0
CONNECT_TIMEOUT_S = 5.0  # a live command's connection to the site broker


def hub_secrets(cfg: Config) -> FleetSecrets:
    return FleetSecrets(cfg.fleet_dir)


def _host_port(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    return parsed.hostname or "127.0.0.1", parsed.port or 4222


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def broker_tls(cfg: Config) -> tuple[Path, Path] | None:
    """The embedded broker's certificate and key (made on first use, self-signed), or None when TLS is off."""
    host, _ = _host_port(cfg.hub.server)
    wanted = (
        cfg.hub.tls == "on" or cfg.hub.server.startswith("tls://") or (cfg.hub.tls == "auto" and not _loopback(host))
    )
    if not wanted or cfg.hub.broker != "embedded":
        return None
    from kiosk.web.tls import CERT_NAME, KEY_NAME, generate_self_signed

    folder = cfg.fleet_dir / "tls"
    if (folder / CERT_NAME).exists() and (folder / KEY_NAME).exists():
        return folder / CERT_NAME, folder / KEY_NAME
    return generate_self_signed(folder, [host])


def hub_url(cfg: Config) -> str:
    host, port = _host_port(cfg.hub.server)
    return f"{'tls' if broker_tls(cfg) else urlparse(cfg.hub.server).scheme}://{host}:{port}"


def hub_ssl(cfg: Config) -> ssl.SSLContext | None:
    """The hub's own TLS client context: it trusts its broker's certificate alone."""
    pair = broker_tls(cfg)
    if pair is None:
        return None
    ctx = ssl.create_default_context(cadata=pair[0].read_text())
    ctx.check_hostname = False
    return ctx


def door_ca(cfg: Config) -> str | None:
    """What a door's credentials carry to pin the hub's broker: its certificate (None without TLS)."""
    pair = broker_tls(cfg)
    return pair[0].read_text() if pair else None


def broker_config(cfg: Config, secrets: FleetSecrets) -> BrokerConfig:
    host, port = _host_port(cfg.hub.server)
    pair = broker_tls(cfg)
    return BrokerConfig(
        store_dir=cfg.fleet_dir / "jetstream",
        hub_password=secrets.hub_password(),
        doors={d: s.password for d, s in secrets.doors().items()},
        host=host,
        port=port,
        tls_cert=pair[0] if pair else None,
        tls_key=pair[1] if pair else None,
    )


def site_key(cfg: Config) -> bytes:
    """The site key: the hub gallery's template key. A hub without encryption refuses to start."""
    if not cfg.gallery.encrypt:
        raise ConfigError(
            "gallery.encrypt: the hub needs encrypted templates (the site key goes to doors, wrapped for each): "
            "set gallery.encrypt: true and a key (`kiosk keys generate`), then `kiosk rekey`"
        )
    path, what = key_source(cfg)
    return read_key_file(path, check_permissions=cfg.gallery.check_permissions and what == "key file", what=what)


def make_hub(cfg: Config, open_gallery: Callable[[], Gallery], **kw: Any) -> Hub:
    secrets = hub_secrets(cfg)
    return Hub(open_gallery, site_key(cfg), secrets.doors, url=hub_url(cfg), password=secrets.hub_password(),
               tls=hub_ssl(cfg), **kw)  # fmt: skip


def serve_hub(cfg: Config, open_gallery: Callable[[], Gallery], *, ready: Callable[[Hub], None] | None = None) -> None:
    """Run the hub (and, with ``hub.broker: embedded``, its nats-server) until SIGTERM or SIGINT."""
    secrets = hub_secrets(cfg)
    hub = make_hub(cfg, open_gallery)
    with contextlib.ExitStack() as stack:
        server = None
        if cfg.hub.broker == "embedded":
            server = NatsServer(broker_config(cfg, secrets), cfg.fleet_dir / "broker")
            stack.enter_context(server)
            log.info("hub: broker listening on %s (store %s)", server.url, server.config.store_dir)
        asyncio.run(_serve(cfg, hub, secrets, server, ready))


async def _serve(
    cfg: Config, hub: Hub, secrets: FleetSecrets, server: NatsServer | None, ready: Callable[[Hub], None] | None
) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError, RuntimeError):  # not the main thread (tests)
            loop.add_signal_handler(sig, hub.stop)
    bridge = home_assistant(cfg, hub, loop) if cfg.hub.home_assistant.enabled else None
    task = asyncio.create_task(hub.run())
    watch = asyncio.create_task(_watch_doors(cfg, hub, secrets, server, bridge))
    try:
        await asyncio.wait([task, asyncio.create_task(hub.ready.wait())], return_when=asyncio.FIRST_COMPLETED)
        if hub.ready.is_set():
            for door in secrets.doors():
                await _ensure_consumer(hub, door)
            log.info("hub ready: %d door(s)", len(secrets.doors()))
            if ready is not None:
                ready(hub)
        await task
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        if bridge is not None:
            await asyncio.to_thread(bridge.stop)


async def _ensure_consumer(hub: Hub, door: str) -> None:
    from nats.js.errors import NotFoundError

    from kiosk.fleet.broker import PEOPLE_STREAM

    try:
        await hub.js.consumer_info(PEOPLE_STREAM, f"door-{door}")
    except NotFoundError:
        await hub.ensure_door_consumer(door, 1)


def home_assistant(cfg: Config, hub: Hub, loop: asyncio.AbstractEventLoop) -> HomeAssistantBridge:
    """The hub's Home Assistant bridge: every door event the hub records goes to it (as recorded: the hub's database
    is the audit log, the bridge only mirrors), heartbeats say which doors are online, and an UNLOCK from Home
    Assistant is a live command to the door, which pulses its relay and records it like any remote unlock."""
    from kiosk.fleet.homeassistant import HomeAssistantBridge

    ha = cfg.hub.home_assistant

    def unlock(door: str, actor: str) -> bool:
        call = hub.command(door, "unlock", actor=actor, reason="Home Assistant")
        try:
            return bool(asyncio.run_coroutine_threadsafe(call, loop).result(timeout=10).get("ok"))
        except Exception as err:  # the door did not answer: Home Assistant's lock stays locked
            log.warning("hub: Home Assistant's unlock of %s failed: %s", door, err)
            return False

    bridge = HomeAssistantBridge(ha, unlock=unlock)

    def on_event(door: str, row: dict[str, Any]) -> None:
        if row.get("kind") in ("access", "door"):
            detail = row.get("detail")
            with contextlib.suppress(ValueError, TypeError):
                detail = json.loads(detail) if isinstance(detail, str) else detail
            bridge.door_event(door, {**row, "detail": detail if isinstance(detail, dict) else {}})

    def on_heartbeat(door: str, beat: dict[str, Any]) -> None:
        if door not in hub.online:
            bridge.door_seen(door, True)
        hub.online[door] = time.monotonic()

    hub.on_event, hub.on_heartbeat = on_event, on_heartbeat
    bridge.start()
    return bridge


async def _watch_doors(
    cfg: Config,
    hub: Hub,
    secrets: FleetSecrets,
    server: NatsServer | None,
    bridge: HomeAssistantBridge | None = None,
) -> None:
    """Doors added or removed with ``kiosk hub add-door``/``remove-door`` while the hub runs: new broker users (a
    reload of the embedded server) and consumers; and doors gone quiet, offline for Home Assistant."""
    known = set(secrets.doors())
    while True:
        await asyncio.sleep(DOORS_CHECK_S)
        if bridge is not None:
            quiet = [d for d, t in hub.online.items() if time.monotonic() - t > cfg.hub.heartbeat_timeout_s]
            for door in quiet:
                del hub.online[door]
                bridge.door_seen(door, False)
        now = set(secrets.doors())
        if now == known:
            continue
        if server is not None:
            server.reload(broker_config(cfg, secrets))
        await hub.ready.wait()
        for door in sorted(now - known):
            await _ensure_consumer(hub, door)
        log.info("hub: doors now %s", ", ".join(sorted(now)) or "none")
        known = now


def status(cfg: Config, gallery: Gallery) -> list[dict[str, Any]]:
    """Every door's state from the hub's database (``kiosk fleet status``, the admin app)."""
    from kiosk.fleet.status import door_status

    hubdb.install(gallery)
    return door_status(gallery, cfg.hub.heartbeat_timeout_s)


def send_command(cfg: Config, door: str, name: str, *, timeout_s: float = 5.0, **kw: Any) -> dict[str, Any]:
    """Send a live command (``unlock``, ``resync``, ``ping``) to ``door`` as the hub and return its answer;
    BrokerUnreachableError when the broker cannot be reached, DoorNoAnswerError when the door does not answer,
    FleetError when it refuses (all KioskErrors). Nothing is queued: an unanswered command is never carried out
    later."""
    import nats

    from kiosk.fleet.broker import HUB_USER, check_door_id
    from kiosk.fleet.protocol import command_subject, decode, encode

    check_door_id(door)
    password = hub_secrets(cfg).hub_password()

    async def quiet(err: Exception) -> None:
        log.debug("fleet command: broker connection: %s", err)

    async def go() -> dict[str, Any]:
        try:
            # NOTE: nats-py retries the first connection max_reconnect_attempts times, even with allow_reconnect
            # off (60 x 2 s by default, forever with 0): one attempt, so a broker that is down is an error at once.
            nc = await asyncio.wait_for(
                nats.connect(hub_url(cfg), user=HUB_USER, password=password, tls=hub_ssl(cfg), allow_reconnect=False,
                             connect_timeout=3, max_reconnect_attempts=1, reconnect_time_wait=0.1, error_cb=quiet),
                timeout=CONNECT_TIMEOUT_S,
            )  # fmt: skip
        except Exception as err:
            raise BrokerUnreachableError(
                f"cannot reach the site broker at {cfg.hub.server}: {err or type(err).__name__}"
            ) from None
        try:
            msg = await nc.request(command_subject(door), encode({"cmd": name, **kw}), timeout=timeout_s)
        except Exception:
            raise DoorNoAnswerError(f"door {door} did not answer (offline, or not this site's)") from None
        finally:
            await nc.close()
        return decode(msg.data, f"door {door}'s answer")

    reply = asyncio.run(go())
    if not reply.get("ok"):
        raise FleetError(f"door {door} refused {name}: {reply.get('error')}")
    return reply


# -- the door side -------------------------------------------------------------------------------------------------


def door_site_cipher(cfg: Config) -> AesGcmCipher | None:
    """The site key this door received from the hub (wrapped for it alone), or None before its first contact."""
    from kiosk.fleet.door import WRAPPED_KEY_FILE
    from kiosk.fleet.protocol import unwrap_site_key

    wrapped = cfg.fleet_dir / WRAPPED_KEY_FILE
    if cfg.fleet.credentials_file is None or not wrapped.exists():
        return None
    secret = read_bundle(Path(cfg.fleet.credentials_file).expanduser())
    site = unwrap_site_key(AesGcmCipher(secret.door_key), secret.door, bytes.fromhex(wrapped.read_text().strip()))
    return AesGcmCipher(site)


class FleetState:
    """What the door loop knows of its fleet: when its replica was last confirmed up to date with the hub, as the
    fleet agent (``kiosk fleet run``, another process) records it in the gallery. Read only at a grant."""

    def __init__(self, cfg: Config, gallery: Gallery) -> None:
        self.cfg, self.gallery = cfg, gallery

    def stale_for(self, now: float | None = None) -> float | None:
        """Seconds since the replica was last confirmed up to date (None: never, or unreadable)."""
        rows = self.gallery._rows("SELECT value FROM replica_meta WHERE key = 'synced_at'")
        if not rows:
            return None
        return max(0.0, (time.time() if now is None else now) - float(rows[0]["value"]))

    def stale(self) -> bool:
        age = self.stale_for()
        return age is None or age > self.cfg.fleet.stale_after_s

    def ensure_site_key(self) -> None:
        """The replicated templates are under the site key, which the agent receives on its first contact with the
        hub: until then the gallery holds none; once it is there, the loop's connection takes it."""
        if self.gallery.cipher is None and (cipher := door_site_cipher(self.cfg)) is not None:
            self.gallery._cipher = cipher


def door_agent(cfg: Config, model: tuple[str, str] | None = None) -> FleetDoor:
    """The door's fleet agent (``kiosk fleet run``, systemd ``kiosk-fleet.service``): a process of its own beside
    the door loop, so the loop keeps its sandbox without a network. It writes the replica into the door's gallery
    (the loop sees the change by ``data_version``, and at once through a ``reload`` request on its control socket),
    publishes the loop's events from the same gallery, and carries out remote unlocks through that control socket —
    the loop pulses the relay and records the unlock itself, exactly as for the admin app."""
    from kiosk.errors import DoorUnavailableError
    from kiosk.screen.client import DoorLink

    if cfg.fleet.credentials_file is None:
        raise ConfigError("fleet.credentials_file: required with fleet.enabled (made by `kiosk hub add-door ID`)")
    secret = read_bundle(Path(cfg.fleet.credentials_file).expanduser())
    link = DoorLink(cfg.runtime_dir)
    path = cfg.gallery_path

    def reload(people: set[int], full: bool) -> None:  # best effort: the loop polls data_version anyway
        with contextlib.suppress(DoorUnavailableError):
            asyncio.run(link.request({"op": "reload"}, timeout_s=2.0))

    def unlock(actor: str, reason: str) -> dict[str, Any]:
        try:
            reply = asyncio.run(link.request({"op": "unlock", "actor": f"hub:{actor}", "reason": reason}))
        except DoorUnavailableError as err:
            raise KioskError(f"the door loop is not running: {err}") from None
        if not reply.get("ok"):
            raise KioskError(f"the door loop refused the unlock: {reply.get('error') or reply}")
        return {"pulse_s": reply.get("pulse_s")}

    return FleetDoor(
        secret,
        lambda: Gallery(path, busy_timeout_s=cfg.gallery.busy_timeout_s),
        url=cfg.fleet.server,
        state_dir=cfg.fleet_dir,
        model=model,
        heartbeat_s=cfg.fleet.heartbeat_s,
        keep_events_s=None if cfg.fleet.keep_events_days is None else cfg.fleet.keep_events_days * 86400.0,
        on_change=lambda people, full: threading.Thread(target=reload, args=(people, full), daemon=True).start(),
        on_unlock=unlock,
        health=lambda: _loop_health(link),
    )


def _loop_health(link: Any) -> dict[str, Any]:
    """The door loop's state as its screen socket last said it (fps, service state), for the heartbeat."""
    state = link.state
    return {"service": state.get("service"), "fps": state.get("fps")}


def run_door_agent(cfg: Config) -> None:
    """``kiosk fleet run``: the agent until SIGTERM or SIGINT."""
    if not cfg.fleet.enabled:
        raise ConfigError("fleet.enabled: false — this door is not part of a site (see docs/fleet.md)")
    agent = door_agent(cfg)

    async def main() -> None:
        from kiosk.screen.client import DoorLink

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError, RuntimeError):
                loop.add_signal_handler(sig, agent.stop)
        link = DoorLink(cfg.runtime_dir)
        await link.start()  # follows the loop's state socket, for the heartbeat's loop health
        agent.health = lambda: _loop_health(link)
        try:
            log.info("fleet agent of door %s: broker %s", agent.door, cfg.fleet.server)
            await agent.run()
        finally:
            await link.stop()

    asyncio.run(main())
