"""Starting the fleet from a config: ``serve_hub`` (``kiosk hub serve``) and ``DoorFleet`` (the door service's
fleet thread, when ``fleet.enabled``). Everything the fleet needs is built here, from one place."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kiosk.config import Config
from kiosk.errors import BrokerUnreachableError, ConfigError, DoorNoAnswerError, FleetError
from kiosk.fleet import hubdb
from kiosk.fleet.broker import BrokerConfig, NatsServer
from kiosk.fleet.door import FleetDoor
from kiosk.fleet.hub import Hub
from kiosk.fleet.secrets import FleetSecrets, read_bundle
from kiosk.gallery import Gallery
from kiosk.gallery.keys import AesGcmCipher, key_source, read_key_file

log = logging.getLogger(__name__)
DOORS_CHECK_S = 2.0
CONNECT_TIMEOUT_S = 5.0  # a live command's connection to the site broker


def hub_secrets(cfg: Config) -> FleetSecrets:
    return FleetSecrets(cfg.fleet_dir)


def _host_port(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    return parsed.hostname or "127.0.0.1", parsed.port or 4222


def broker_config(cfg: Config, secrets: FleetSecrets) -> BrokerConfig:
    host, port = _host_port(cfg.hub.server)
    return BrokerConfig(
        store_dir=cfg.fleet_dir / "jetstream",
        hub_password=secrets.hub_password(),
        doors={d: s.password for d, s in secrets.doors().items()},
        host=host,
        port=port,
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
    return Hub(open_gallery, site_key(cfg), secrets.doors, url=cfg.hub.server, password=secrets.hub_password(), **kw)


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
    task = asyncio.create_task(hub.run())
    watch = asyncio.create_task(_watch_doors(cfg, hub, secrets, server))
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


async def _ensure_consumer(hub: Hub, door: str) -> None:
    from nats.js.errors import NotFoundError

    from kiosk.fleet.broker import PEOPLE_STREAM

    try:
        await hub.js.consumer_info(PEOPLE_STREAM, f"door-{door}")
    except NotFoundError:
        await hub.ensure_door_consumer(door, 1)


async def _watch_doors(cfg: Config, hub: Hub, secrets: FleetSecrets, server: NatsServer | None) -> None:
    """Doors added or removed with ``kiosk hub add-door``/``remove-door`` while the hub runs: new broker users (a
    reload of the embedded server) and consumers."""
    known = set(secrets.doors())
    while True:
        await asyncio.sleep(DOORS_CHECK_S)
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
                nats.connect(cfg.hub.server, user=HUB_USER, password=password, allow_reconnect=False,
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


class DoorFleet:
    """The door's fleet service in its own thread with its own event loop; the frame loop never waits for it."""

    def __init__(self, cfg: Config, model: tuple[str, str] | None, **callbacks: Any) -> None:
        if cfg.fleet.credentials_file is None:
            raise ConfigError("fleet.credentials_file: required with fleet.enabled")
        secret = read_bundle(Path(cfg.fleet.credentials_file).expanduser())
        path = cfg.gallery_path
        self.fleet = FleetDoor(
            secret,
            lambda: Gallery(path, busy_timeout_s=cfg.gallery.busy_timeout_s),
            url=cfg.fleet.server,
            state_dir=cfg.fleet_dir,
            model=model,
            heartbeat_s=cfg.fleet.heartbeat_s,
            **callbacks,
        )
        self.cfg = cfg
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="fleet", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:  # the door keeps deciding locally; the error is reported in its status
            self.error = err
            log.error("fleet: stopped: %s", err)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.fleet.run()

    def start(self) -> DoorFleet:
        self._thread.start()
        return self

    def poke(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.fleet.poke)

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.fleet.stop)
        self._thread.join(timeout_s)

    def stale(self) -> bool:
        """True when the replica has not been confirmed up to date within ``fleet.stale_after_s`` (or never)."""
        age = self.fleet.stale_for()
        return age is None or age > self.cfg.fleet.stale_after_s

    @contextlib.contextmanager
    def running(self) -> Iterator[DoorFleet]:
        self.start()
        try:
            yield self
        finally:
            self.stop()
