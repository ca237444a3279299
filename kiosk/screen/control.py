"""``control.sock``: who may ask (``SO_PEERCRED``), what a request may say, and the answers the loop gives.

The publisher's thread reads and checks a request (``parse_request``: one JSON line of at most 64 KiB) and hands a
``ControlRequest`` to the loop; ``handle`` runs in the loop's thread, so the relay is pulsed, and the unlock recorded,
by the loop itself. A guided capture (``CaptureSession``) runs on the loop's own frames: while it runs the loop makes
no door decisions. Replies carry codes, never tracebacks.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kiosk.authz import caller_of, is_admin
from kiosk.enroll import assess_frame
from kiosk.guided import GuidedCollector
from kiosk.screen.protocol import MAX_REQUEST_BYTES
from kiosk.screen.state import capture_hint

if TYPE_CHECKING:
    from kiosk.door.camera import Frame
    from kiosk.door.loop import DoorLoop

log = logging.getLogger("kiosk.screen.control")

OPS = ("status", "reload", "unlock", "capture", "capture-result", "capture-cancel")
ERRORS = ("forbidden", "bad-request", "busy", "unavailable")
MAX_TEXT = 500  # actor and reason
CAPTURE_TARGET = (1, 20)
CAPTURE_TIMEOUT_S = (1.0, 600.0)
CAPTURE_KEEP_S = 600.0  # a finished capture's frames are kept this long for capture-result, then forgotten


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> Peer:
    """The connecting process's pid, uid and gid as the kernel saw them at connect (``SO_PEERCRED``)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


class Authorizer:
    """The loop's own uid, root, or a member of ``admin.group`` (primary or supplementary group of the peer's uid)."""

    def __init__(self, admin_group: str | None, own_uid: int | None = None) -> None:
        self.admin_group = admin_group
        self.own_uid = os.geteuid() if own_uid is None else own_uid

    def __call__(self, peer: Peer) -> bool:
        if peer.uid in (self.own_uid, 0):
            return True
        return self.admin_group is not None and is_admin(caller_of(peer.uid), self.admin_group)


class RequestError(Exception):
    """A request refused before it reaches the loop; ``code`` is one of ``ERRORS``."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def error(code: str, detail: str) -> dict[str, Any]:
    return {"ok": False, "error": code, "detail": " ".join(detail.split())[:300]}


def _text(req: dict[str, Any], key: str, *, required: bool) -> str | None:
    value = req.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise RequestError("bad-request", f"{key!r} must be a non-empty string")
    if len(value) > MAX_TEXT:
        raise RequestError("bad-request", f"{key!r} is longer than {MAX_TEXT} characters")
    return " ".join(value.split())


def _number(req: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = req.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise RequestError("bad-request", f"{key!r} must be a number within {lo:g}..{hi:g}")
    return float(value)


def parse_request(line: bytes) -> dict[str, Any]:
    """One request line → a checked request dict (op and its fields); RequestError("bad-request") otherwise."""
    if len(line) > MAX_REQUEST_BYTES:
        raise RequestError("bad-request", f"request longer than {MAX_REQUEST_BYTES} bytes")
    try:
        req = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise RequestError("bad-request", "the request is not one line of JSON") from None
    if not isinstance(req, dict):
        raise RequestError("bad-request", "the request must be a JSON object")
    op = req.get("op")
    if op not in OPS:
        raise RequestError("bad-request", f"'op' must be one of {', '.join(OPS)}")
    out: dict[str, Any] = {"op": op, "actor": _text(req, "actor", required=op == "unlock")}
    if op == "unlock":
        out["reason"] = _text(req, "reason", required=True)
    elif op == "capture":
        target = _number(req, "target", 5, *CAPTURE_TARGET)
        if target != int(target):
            raise RequestError("bad-request", "'target' must be a whole number")
        out["target"] = int(target)
        out["timeout_s"] = _number(req, "timeout_s", 60.0, *CAPTURE_TIMEOUT_S)
    elif op in ("capture-result", "capture-cancel"):
        out["id"] = _text(req, "id", required=True)
    return out


class ControlRequest:
    """A checked request waiting for the loop's answer; ``answer`` is called once, from the loop's thread."""

    def __init__(self, request: dict[str, Any], peer: Peer, wake: Callable[[], None] = lambda: None) -> None:
        self.request = request
        self.peer = peer
        self.reply: dict[str, Any] | None = None
        self._wake = wake
        self._lock = threading.Lock()

    def answer(self, reply: dict[str, Any]) -> bool:
        """Set the reply (the first answer wins: the publisher may have answered ``unavailable`` on a timeout)."""
        with self._lock:
            if self.reply is not None:
                return False
            self.reply = reply
        self._wake()
        return True


# -- guided capture ----------------------------------------------------------------------------------------------


@dataclass
class CaptureSession:
    """One guided capture on the loop's frames (kiosk.guided's rule); its progress is the state's ``capture``."""

    target: int
    started: float
    timeout_s: float
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    state: str = "running"  # running | done | failed | cancelled
    ended: float | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        self.collector = GuidedCollector(self.target)

    @property
    def running(self) -> bool:
        return self.state == "running"

    def step(self, loop: DoorLoop, frame: Frame) -> None:
        """Judge one frame of the loop (in the loop's thread)."""
        if not self.running:
            return
        v = assess_frame(loop.pipeline, frame.image, f"camera frame {frame.index}")
        self.collector.offer(v, frame.t)
        if self.collector.done:
            self.finish("done", frame.t)

    def expire(self, now: float) -> None:
        """The time limit: what was collected by then is the result (``failed`` when nothing was)."""
        if self.running and now - self.started >= self.timeout_s:
            if self.collector.good:
                self.finish("done", now, f"time limit: {len(self.collector.good)} of {self.target} frames")
            else:
                self.finish("failed", now, "time limit: no usable frame")

    def finish(self, state: str, now: float, detail: str = "") -> None:
        self.state, self.ended, self.detail = state, now, detail
        log.info("capture %s: %s (%d of %d frames) %s", self.id, state, len(self.collector.good), self.target, detail)

    def as_state(self) -> dict[str, Any]:
        best = max((v.quality.get("score", 0.0) for v in self.collector.good), default=None)
        return {
            "id": self.id,
            "done": len(self.collector.good),
            "target": self.target,
            "hint": capture_hint(self.collector.hint),
            "quality": None if best is None else round(float(best), 3),
            "state": self.state,
        }

    def result(self, model_id: str, model_sha256: str) -> dict[str, Any]:
        reply: dict[str, Any] = {"ok": True, "id": self.id, "state": self.state}
        if self.detail:
            reply["detail"] = self.detail
        if self.state == "done":
            reply["model"] = {"id": model_id, "sha256": model_sha256}
            reply["frames"] = [
                {
                    "embedding": base64.b64encode(np.asarray(v.embedding, "<f4").tobytes()).decode("ascii"),
                    "quality": {k: round(float(x), 4) for k, x in v.quality.items()},
                }
                for v in self.collector.good
                if v.embedding is not None
            ]
        return reply


def door_status(loop: DoorLoop, service: str) -> dict[str, Any]:
    """The ``status`` reply: loop counters, relay and contact, camera, service."""
    from kiosk.door.relay import door_state

    loop_stats = {**loop.stats.as_dict(), "events_dropped": loop.events_dropped}
    return {
        "ok": True,
        "loop": loop_stats,
        "door": door_state(loop.door),
        "camera": loop.camera.status(),
        "service": service,
    }
