"""What the hub and its doors say to each other over NATS: subjects, the sealed gallery records, the digest.

The gallery goes out as *records* in the ``PEOPLE`` stream, one subject per key, keeping only the newest message per
subject (a key-value bucket in all but name, read through durable pull consumers, which can resume where they
stopped — nats-py's KV ``watch`` cannot):

- ``fleet.people.p.<person id>``: everything a door needs about one person (name, state, validity, credential,
  groups, templates), or a tombstone once they are removed;
- ``fleet.people.access``: the site's groups, schedules and access rules, all together (they are small);
- ``fleet.people.digest``: after each batch, the hub's revision and the digest of every record it has published.

Every record is *sealed*: JSON encrypted with the site key (AES-256-GCM, the gallery's own cipher) with its subject as
associated data, so the broker stores only ciphertext — no name, no template, nothing to replay under another
subject. Templates inside keep their own per-row encryption too, so a door stores them exactly as the hub does.

Each record carries its *revision*: the hub's outbox sequence of the change that produced it. The digest is a sha256
over the sorted ``key:revision`` lines of every live record; a door that has applied everything up to a digest message
must compute the same digest from its replica, or it resynchronises.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from kiosk.errors import KioskError
from kiosk.fleet.broker import check_door_id
from kiosk.gallery.records import TemplateCipher

PEOPLE_PREFIX = "fleet.people."
PERSON_PREFIX = "fleet.people.p."
ACCESS_SUBJECT = "fleet.people.access"
DIGEST_SUBJECT = "fleet.people.digest"
ACCESS_KEY = "access"
SEAL_VERSION = 1
WRAP_CONTEXT = "face-kiosk site key for door "


class ProtocolError(KioskError):
    """A message that is not what the protocol says (not sealed for us, altered, not JSON, wrong shape)."""


def person_subject(person_id: int) -> str:
    return f"{PERSON_PREFIX}{int(person_id)}"


def key_of(subject: str) -> str:
    """The record key of a ``PEOPLE`` subject: ``p<id>``, ``access`` or ``digest``."""
    if subject.startswith(PERSON_PREFIX):
        tail = subject[len(PERSON_PREFIX) :]
        if tail.isdecimal():
            return f"p{int(tail)}"
    elif subject == ACCESS_SUBJECT:
        return ACCESS_KEY
    elif subject == DIGEST_SUBJECT:
        return "digest"
    raise ProtocolError(f"not a gallery subject: {subject!r}")


def events_subject(door: str) -> str:
    return f"fleet.events.{check_door_id(door)}"


def heartbeat_subject(door: str) -> str:
    return f"fleet.hb.{check_door_id(door)}"


def command_subject(door: str) -> str:
    return f"fleet.cmd.{check_door_id(door)}"


def hub_request_subject(door: str, what: str) -> str:
    """Requests from a door to the hub (``consumer``: (re)create my consumer from a sequence; ``key``: my wrapped
    site key)."""
    return f"fleet.hub.{check_door_id(door)}.{what}"


def door_of(subject: str, prefix: str) -> str:
    """The door id in ``<prefix><door>[.more]``; ProtocolError when it is not a valid id."""
    if not subject.startswith(prefix):
        raise ProtocolError(f"unexpected subject {subject!r}")
    door = subject[len(prefix) :].split(".", 1)[0]
    try:
        return check_door_id(door)
    except KioskError:
        raise ProtocolError(f"unexpected subject {subject!r}") from None


def digest(revisions: Iterable[tuple[str, int]]) -> str:
    """sha256 over sorted ``key:revision`` lines: the same set of records at the same revisions, the same digest."""
    h = hashlib.sha256(b"face-kiosk gallery digest v1\n")
    for key, rev in sorted(revisions):
        h.update(f"{key}:{int(rev)}\n".encode())
    return h.hexdigest()


def _json(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def seal(cipher: TemplateCipher, subject: str, record: Mapping[str, Any]) -> bytes:
    """The record as ``{"v", "key_id", "box"}``: its JSON encrypted under the site key, bound to ``subject``."""
    box = cipher.encrypt(_json(record), subject.encode())
    return _json({"v": SEAL_VERSION, "key_id": cipher.key_id, "box": base64.b64encode(box).decode()})


def unseal(cipher: TemplateCipher, subject: str, payload: bytes) -> dict[str, Any]:
    """The record sealed by ``seal`` for ``subject``; ProtocolError for anything else (wrong key, moved, altered)."""
    try:
        outer = json.loads(payload)
        if not isinstance(outer, dict) or outer.get("v") != SEAL_VERSION:
            raise ValueError("not a sealed record")
        if outer.get("key_id") != cipher.key_id:
            raise ProtocolError(
                f"{subject}: sealed with key {outer.get('key_id')!r}, this door holds {cipher.key_id!r}"
            )
        record = json.loads(cipher.decrypt(base64.b64decode(outer["box"], validate=True), subject.encode()))
    except ProtocolError:
        raise
    except (ValueError, KeyError, TypeError) as err:
        raise ProtocolError(f"{subject}: not a sealed gallery record ({err})") from None
    except KioskError as err:  # TemplateKeyError: it does not authenticate
        raise ProtocolError(f"{subject}: {err}") from None
    if not isinstance(record, dict):
        raise ProtocolError(f"{subject}: a sealed record must be a JSON object")
    return record


def wrap_site_key(door_cipher: TemplateCipher, door: str, site_key: bytes) -> bytes:
    """The site key encrypted for one door alone, under that door's own key."""
    return door_cipher.encrypt(site_key, (WRAP_CONTEXT + check_door_id(door)).encode())


def unwrap_site_key(door_cipher: TemplateCipher, door: str, wrapped: bytes) -> bytes:
    try:
        return door_cipher.decrypt(wrapped, (WRAP_CONTEXT + check_door_id(door)).encode())
    except KioskError as err:
        raise ProtocolError(f"the site key sent to door {door} does not open with its door key: {err}") from None


def encode(data: Mapping[str, Any]) -> bytes:
    """A plain (unsealed) JSON message: heartbeats, commands and their replies."""
    return _json(data)


def decode(payload: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(payload)
    except ValueError as err:
        raise ProtocolError(f"{what}: not JSON ({err})") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"{what}: a JSON object expected")
    return data
