"""What the gallery stores and hands back (people, templates, the matrix), the key protocol, and the checks
applied to names, ids, time windows and embeddings before they are stored."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from kiosk.errors import InputError
from kiosk.gallery import utc_iso

MAX_NAME_LEN = 200
# NOTE: 20 digits hold any 64-bit number: every common card format (26, 34, 35, 37, 48 bits) and door.osdp.bits.
MAX_CREDENTIAL_DIGITS = 20


class TemplateCipher(Protocol):
    """Encrypts templates at rest (kiosk.keys.AesGcmCipher); defined here so the gallery needs no crypto import."""

    @property
    def key_id(self) -> str:
        """A short public id of the key: it says which key a template needs, never the key itself."""
        ...

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        """nonce || ciphertext || tag."""
        ...

    def decrypt(self, blob: bytes, aad: bytes) -> bytes:
        """The plaintext; TemplateKeyError when the blob does not authenticate (wrong key, altered, moved)."""
        ...


@dataclass(frozen=True)
class Person:
    id: int
    name: str
    created: datetime
    enabled: bool
    valid_from: datetime | None
    valid_until: datetime | None
    templates: int  # all templates, whichever model made them
    note: str | None = None
    credential: str | None = None  # card number for an access panel (door.driver osdp); None = none


@dataclass(frozen=True)
class TemplateIn:
    """One embedding to store, with the model that produced it and where the face came from."""

    embedding: npt.NDArray[Any]
    model_id: str
    model_sha256: str
    quality: float
    source: str


@dataclass(frozen=True)
class GalleryMatrix:
    """Comparable templates stacked for brute-force matching; row i belongs to ``names[i]``."""

    template_ids: npt.NDArray[np.int64]
    person_ids: npt.NDArray[np.int64]
    names: list[str]
    embeddings: npt.NDArray[np.float32]  # (N, D)

    def __len__(self) -> int:
        return len(self.names)


def _opt_iso(dt: datetime | None) -> str | None:
    return None if dt is None else utc_iso(dt)


def _opt_dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def clean_name(name: str) -> str:
    """Strip and NFC-normalise a name; InputError if empty, over 200 characters or with control characters."""
    if not isinstance(name, str):
        raise InputError(f"person name must be text, got {type(name).__name__}")
    cleaned = unicodedata.normalize("NFC", name.strip())
    if not cleaned:
        raise InputError("person name is empty")
    if len(cleaned) > MAX_NAME_LEN:
        raise InputError(f"person name is {len(cleaned)} characters long; the limit is {MAX_NAME_LEN}")
    if any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") or c in _BIDI_CONTROLS for c in cleaned):
        # Cs: a lone surrogate (a non-UTF-8 byte in argv); bidi overrides can disguise a name in the audit log.
        raise InputError(f"person name {cleaned!r} contains control, line-break or text-direction characters")
    return cleaned


def clean_credential(credential: str) -> str:
    """A card number: ASCII digits only, at most 20 of them, leading zeros dropped ("00123" is card 123).
    InputError otherwise; the message never repeats the number (it is a credential)."""
    if not isinstance(credential, str):
        raise InputError(f"a credential must be text, got {type(credential).__name__}")
    text = credential.strip()
    if not text or not (text.isascii() and text.isdecimal()):
        raise InputError("a credential must be a card number: digits 0-9 only")
    if len(text) > MAX_CREDENTIAL_DIGITS:
        raise InputError(f"a credential has at most {MAX_CREDENTIAL_DIGITS} digits, got {len(text)}")
    return str(int(text))


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


def _as_id(ref: str | int) -> int | None:
    """A person id from an int or a short decimal string; None if it cannot be one (no int() of "²", 5000 digits)."""
    if isinstance(ref, int):
        return ref if 1 <= ref < 2**63 else None
    text = ref.strip()
    if text.isascii() and text.isdecimal() and len(text) <= 18:
        return int(text)
    return None


def _embedding_blob(embedding: Any) -> tuple[bytes, int]:
    """Check an embedding is a non-empty finite 1-D vector; return its little-endian float32 bytes and dim."""
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf: rejected below
            arr = np.asarray(embedding, dtype="<f4")
    except (TypeError, ValueError) as err:
        raise InputError(f"embedding is not numeric: {err}") from None
    if arr.ndim != 1 or arr.size == 0:
        raise InputError(f"embedding must be a non-empty 1-D vector, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError("embedding contains NaN or infinite values (after conversion to float32)")
    return arr.tobytes(), int(arr.size)


def _template_aad(person_id: int, model_id: str, model_sha256: str, dim: int) -> bytes:
    """Binds an encrypted template to its row: moved to another person or model, it no longer authenticates."""
    return f"{person_id}|{model_id}|{model_sha256}|{dim}".encode()


def _check_window(valid_from: datetime | None, valid_until: datetime | None) -> None:
    if valid_from is not None and valid_until is not None and utc_iso(valid_until) <= utc_iso(valid_from):
        raise InputError(f"valid_until ({utc_iso(valid_until)}) must be after valid_from ({utc_iso(valid_from)})")
