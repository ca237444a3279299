"""A door's event log as its outbox: every event published in order to the site's ``EVENTS`` stream.

Each event goes to ``fleet.events.<door>`` as the row exactly as stored (its hash-chain columns included, so the hub
can re-check the chain) with the message id ``<door>:<event id>``: JetStream drops a re-publication within its
duplicate window, and the hub records events by (door, id), so one published twice after a crash is recorded once.
The id of the newest event JetStream acknowledged (the watermark) is kept in a small file written atomically; it
moves only past acknowledged events, so an event is never skipped: with the broker down the events wait in the
gallery, where they were written anyway, and ``drain`` publishes them when it is back. Pruning the gallery below the
hub's acknowledged watermark is the hub's decision, not this module's.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Protocol

from kiosk.errors import KioskError
from kiosk.fleet.broker import check_door_id
from kiosk.fleet.protocol import events_subject

log = logging.getLogger(__name__)


class EventSource(Protocol):
    """What the outbox reads: ``kiosk.gallery.events.EventLog``."""

    def raw_events_after(self, after_id: int, limit: int) -> list[dict[str, Any]]: ...


class Publisher(Protocol):
    """What the outbox publishes with: a nats-py JetStream context."""

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float | None = None,
        stream: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> Any: ...


class Watermark:
    """The newest acknowledged event id, in ``path`` (JSON ``{"door": ..., "acked": N}``), replaced atomically."""

    def __init__(self, path: Path, door: str) -> None:
        self.path, self.door = path, door

    def load(self) -> int:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as err:
            raise KioskError(f"{self.path}: unreadable event watermark ({err}); fix or remove it to republish") from err
        if not isinstance(data, dict) or data.get("door") != self.door or not isinstance(data.get("acked"), int):
            raise KioskError(f"{self.path}: not this door's event watermark ({self.door})")
        return int(data["acked"])

    def save(self, acked: int) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps({"door": self.door, "acked": acked}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


class EventOutbox:
    """Publishes ``events`` of door ``door`` after the watermark in ``state``, oldest first, ``batch`` at a time."""

    def __init__(self, events: EventSource, door: str, state: Path, *, batch: int = 200) -> None:
        self.events = events
        self.door = check_door_id(door)
        self.subject = events_subject(self.door)
        self.watermark = Watermark(state, self.door)
        self.acked = self.watermark.load()
        self.batch = batch

    def message_id(self, event_id: int) -> str:
        return f"{self.door}:{event_id}"

    async def drain(self, js: Publisher, *, timeout_s: float = 5.0) -> int:
        """Publish every event after the watermark; each must be acknowledged before the watermark passes it. Returns
        how many were acknowledged. A broker error propagates with the watermark saved at the last acknowledgement."""
        sent = 0
        saved = self.acked
        try:
            while True:
                rows = self.events.raw_events_after(self.acked, self.batch)
                if not rows:
                    return sent
                for row in rows:
                    payload = json.dumps({"door": self.door, **row}, separators=(",", ":")).encode()
                    await js.publish(
                        self.subject, payload, timeout=timeout_s, headers={"Nats-Msg-Id": self.message_id(row["id"])}
                    )
                    self.acked = int(row["id"])
                    sent += 1
                self.watermark.save(self.acked)  # after each batch: a long drain keeps its progress
                saved = self.acked
        finally:
            if self.acked != saved:  # stopped mid-batch (a broker error): keep what was acknowledged
                self.watermark.save(self.acked)
            if sent:
                log.debug("fleet: %d events of %s acknowledged up to id %d", sent, self.door, self.acked)
