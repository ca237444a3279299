"""The site's fleet secrets, kept by the hub in ``<data_dir>/fleet/`` (a private folder, every file 0600):

- ``hub.secret``: the hub's broker password;
- ``doors/<door>.json``: each door's broker password and its *door key* (32 random bytes), the key the site key is
  wrapped with for that door alone. The same two values go to the door (``kiosk hub add-door`` writes them into a
  bundle for the installer); nothing else of the site's secrets ever leaves the hub.

Secrets are never logged or printed, except the bundle written on purpose for the installer.
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path

from kiosk.errors import ConfigError, InsecureStorageError
from kiosk.fleet.broker import check_door_id
from kiosk.gallery.keys import KEY_BYTES


@dataclass(frozen=True)
class DoorSecret:
    door: str
    password: str
    door_key: bytes
    ca_pem: str | None = None  # the hub broker's own certificate: the only one the door trusts (TLS)

    def bundle(self) -> dict[str, str]:
        """What the installer copies to the door (its ``fleet.credentials_file``)."""
        out = {"door": self.door, "password": self.password, "door_key": self.door_key.hex()}
        return out | ({"ca_pem": self.ca_pem} if self.ca_pem else {})

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS trusting the hub's certificate alone (pinned; its name is not checked), or None without one."""
        if not self.ca_pem:
            return None
        ctx = ssl.create_default_context(cadata=self.ca_pem)
        ctx.check_hostname = False  # the pinned certificate is the identity: a door may reach the hub by any address
        return ctx


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_private(path: Path) -> str:
    st = path.stat()
    if st.st_mode & 0o077:
        raise InsecureStorageError(f"{path} is readable by others (mode {st.st_mode & 0o777:o}); chmod 600 {path}")
    return path.read_text(encoding="utf-8")


class FleetSecrets:
    """The secrets folder of one hub."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser()

    def hub_password(self) -> str:
        """The hub's broker password, created on first use."""
        path = self.root / "hub.secret"
        if not path.exists():
            _write_private(path, secrets.token_urlsafe(32) + "\n")
        return _read_private(path).strip()

    def add_door(self, door: str) -> DoorSecret:
        """New credentials for ``door`` (ConfigError when it already has some: remove it first)."""
        path = self._door_path(door)
        if path.exists():
            raise ConfigError(f"door {door!r} already has credentials; `kiosk hub remove-door {door}` first")
        secret = DoorSecret(door, secrets.token_urlsafe(32), secrets.token_bytes(KEY_BYTES))
        _write_private(path, json.dumps(secret.bundle()) + "\n")
        return secret

    def remove_door(self, door: str) -> bool:
        path = self._door_path(door)
        if not path.exists():
            return False
        path.unlink()
        return True

    def doors(self) -> dict[str, DoorSecret]:
        folder = self.root / "doors"
        if not folder.is_dir():
            return {}
        return {p.stem: read_bundle(p) for p in sorted(folder.glob("*.json"))}

    def _door_path(self, door: str) -> Path:
        return self.root / "doors" / f"{check_door_id(door)}.json"


def read_bundle(path: Path) -> DoorSecret:
    """A door's credentials file (the bundle ``kiosk hub add-door`` wrote); ConfigError naming the problem."""
    try:
        data = json.loads(_read_private(path))
        ca = data.get("ca_pem")
        secret = DoorSecret(
            check_door_id(data["door"]), str(data["password"]), bytes.fromhex(data["door_key"]),
            str(ca) if ca else None,
        )  # fmt: skip
    except FileNotFoundError:
        raise ConfigError(f"fleet.credentials_file: {path} not found (copy it from `kiosk hub add-door`)") from None
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"fleet.credentials_file: {path} is not a door credentials file ({err})") from None
    if len(secret.door_key) != KEY_BYTES:
        raise ConfigError(f"fleet.credentials_file: {path}: door_key must be {KEY_BYTES} bytes")
    return secret


def write_bundle(path: Path, secret: DoorSecret) -> None:
    _write_private(path, json.dumps(secret.bundle(), indent=1) + "\n")
