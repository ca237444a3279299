"""Keys for encrypting face templates at rest: AES-256-GCM, the key from a file or a systemd credential.

A key is 32 random bytes, stored either raw or as 64 hex characters (optionally followed by a newline), so
``kiosk keys generate FILE``, ``openssl rand -hex 32`` and ``systemd-creds encrypt`` all produce usable keys. A key
is known in logs, events and messages only by its *key id*: 16 hex characters of a hash of the key, which says
which key a template needs without revealing anything about it. Key material is never logged or printed.

``cryptography`` is an optional dependency (``pip install 'face-kiosk[secure]'``): it is imported only when a key
is used.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiosk.errors import InputError, InsecureStorageError, KioskError, TemplateKeyError

if TYPE_CHECKING:
    from kiosk.config import Config

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
ENV_CREDENTIALS = "CREDENTIALS_DIRECTORY"
_KEY_ID_CONTEXT = b"face-kiosk key id"
_MAX_KEY_FILE = 4096  # anything longer is not a key: refuse without reading it all


def key_id(key: bytes) -> str:
    """The public name of a key: 16 hex characters of sha256("face-kiosk key id" + key)."""
    return hashlib.sha256(_KEY_ID_CONTEXT + key).hexdigest()[:16]


def _aesgcm(key: bytes) -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        raise TemplateKeyError(
            "template encryption needs the cryptography package: pip install 'face-kiosk[secure]'"
        ) from None
    return AESGCM(key)


class AesGcmCipher:
    """AES-256-GCM with a random 96-bit nonce per template: ``nonce(12) || ciphertext || tag(16)``.

    The associated data binds a ciphertext to its row (person, model, dimension), so a template copied onto
    another person or model fails to authenticate instead of matching as someone else.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise TemplateKeyError(f"an encryption key must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = _aesgcm(bytes(key))
        self.key_id = key_id(bytes(key))

    def __repr__(self) -> str:  # never the key itself
        return f"AesGcmCipher(key_id={self.key_id!r})"

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + bytes(self._aead.encrypt(nonce, bytes(plaintext), bytes(aad)))

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        blob = bytes(blob)
        if len(blob) < NONCE_BYTES + TAG_BYTES:
            raise TemplateKeyError(f"an encrypted template is truncated ({len(blob)} bytes; key {self.key_id})")
        try:
            return bytes(self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], bytes(aad)))
        except InvalidTag:
            raise TemplateKeyError(
                f"a template does not authenticate with key {self.key_id}: wrong key, or the row was altered"
            ) from None


def parse_key(data: bytes, source: str) -> bytes:
    """32 raw bytes, or 64 hex characters with an optional trailing newline; anything else is refused."""
    if len(data) == KEY_BYTES:
        return data
    text = data[:-1] if data.endswith(b"\n") else data
    text = text[:-1] if text.endswith(b"\r") else text
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise TemplateKeyError(
        f"{source}: not a key: it must hold {KEY_BYTES} raw bytes or {2 * KEY_BYTES} hex characters, "
        f"it holds {len(data)} bytes (make one with `kiosk keys generate FILE`)"
    )


def read_secret_file(
    path: Path,
    *,
    what: str,
    error: type[KioskError] = TemplateKeyError,
    check_permissions: bool = True,
    follow_symlinks: bool = True,
    hint: str = "make one with `kiosk keys generate FILE`",
) -> bytes:
    """The bytes of a small secret file (a key): a regular file, at most 4 KiB, and (``check_permissions``) readable
    by its owner only (InsecureStorageError). Any other problem is one ``error`` naming ``what`` and ``path``; the
    content is never shown. The template key and an OSDP reader's Secure Channel key both come through here."""
    flags = os.O_RDONLY | (0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0))
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist ({hint})") from None
    except OSError as err:
        raise error(f"{what} {path} cannot be read: {err.strerror or err}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if check_permissions and mode & 0o077:
            raise InsecureStorageError(
                f"{what} {path} is readable by group or others (mode {mode:04o}): chmod 600 {path}"
            )
        if st.st_size > _MAX_KEY_FILE:
            raise error(f"{what} {path}: not a key ({st.st_size} bytes)")
        return os.read(fd, _MAX_KEY_FILE + 1)
    except OSError as err:
        raise error(f"{what} {path} cannot be read: {err.strerror or err}") from None
    finally:
        os.close(fd)


def read_key_file(path: Path, *, check_permissions: bool = True, what: str = "key file") -> bytes:
    """Read and parse a key file; InsecureStorageError when group or others may read it."""
    data = read_secret_file(path, what=what, check_permissions=check_permissions)
    return parse_key(data, f"{what} {path}")


def key_source(cfg: Config) -> tuple[Path, str]:
    """Where the configured key comes from: (path, description); TemplateKeyError when there is none."""
    g = cfg.gallery
    if g.key_file is not None:
        return g.key_file, "key file"
    creds = os.environ.get(ENV_CREDENTIALS)
    if not creds:
        raise TemplateKeyError(
            f"gallery.encrypt is on but there is no key: set gallery.key_file, or give the service the credential "
            f"{g.key_credential!r} (LoadCredential={g.key_credential}:/etc/face-kiosk/gallery.key; "
            f"outside systemd set {ENV_CREDENTIALS} to the folder holding it)"
        )
    return Path(creds) / g.key_credential, "credential"


def load_cipher(cfg: Config) -> AesGcmCipher:
    """The configured key: ``gallery.key_file``, else ``$CREDENTIALS_DIRECTORY/<gallery.key_credential>``.

    A key file readable by group or others is refused (InsecureStorageError); systemd credentials are checked
    only for their content, since systemd owns their folder and modes.
    """
    path, what = key_source(cfg)
    check = cfg.gallery.check_permissions and what == "key file"
    return AesGcmCipher(read_key_file(path, check_permissions=check, what=what))


def generate_key_file(path: Path) -> str:
    """Write a new random key as 64 hex characters to a new file (0600, never overwriting); returns its key id."""
    key = os.urandom(KEY_BYTES)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InputError(f"{path} already exists: refusing to overwrite a key (it may be the only copy)") from None
    except OSError as err:
        raise InputError(f"cannot create {path}: {err.strerror or err}") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key.hex().encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return key_id(key)
