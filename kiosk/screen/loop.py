"""``LoopScreen``: what ``DoorLoop`` calls (its ``screen=``), joining the state model, the socket server and the
control requests. Every method here runs in the loop's thread and returns at once; the server's thread does the rest.
"""

from __future__ import annotations

import logging
import queue
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiosk.config import Config
from kiosk.screen.control import (
    CAPTURE_KEEP_S,
    Authorizer,
    CaptureSession,
    ControlRequest,
    Peer,
    door_status,
    error,
    peer_credentials,
)
from kiosk.screen.publish import ScreenServer
from kiosk.screen.state import ScreenModel
from kiosk.types import QualityReport

if TYPE_CHECKING:
    from kiosk.door.camera import Frame
    from kiosk.door.decide import Decision
    from kiosk.door.loop import DoorLoop
    from kiosk.door.track import Track

log = logging.getLogger("kiosk.screen")

CAMERA_DOWN_STATES = ("reconnecting", "closed", "ended")


class LoopScreen:
    """The door loop's screen: ``start()`` it, pass it to ``DoorLoop(screen=...)``, ``close()`` it."""

    def __init__(
        self,
        cfg: Config,
        *,
        runtime_dir: Path | None = None,
        authorize: Callable[[Peer], bool] | None = None,
        credentials: Callable[[socket.socket], Peer] = peer_credentials,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.model = ScreenModel(cfg, wall=wall)
        self.requests: queue.SimpleQueue[ControlRequest] = queue.SimpleQueue()
        self.server = ScreenServer(
            runtime_dir or cfg.runtime_dir,
            cfg.screen,
            on_request=self.requests.put,
            authorize=authorize or Authorizer(cfg.admin.group),
            credentials=credentials,
        )
        self.capture: CaptureSession | None = None
        self.stopping = False

    def start(self) -> LoopScreen:
        self.server.update(self.model.snapshot())
        self.server.start()
        return self

    def close(self) -> None:
        self.set_service("stopping")
        self.server.stop()

    def set_service(self, service: str) -> None:
        """``starting`` | ``ok`` | ``camera-down`` | ``stopping`` (``stopping`` sticks)."""
        if self.stopping:
            return
        self.stopping = service == "stopping"
        if service != self.model.service:
            self.model.service = service
            self.server.update(self.model.snapshot())

    # -- DoorLoop's hooks ------------------------------------------------------------------------------------

    def capturing(self) -> bool:
        return self.capture is not None and self.capture.running

    def capture_frame(self, loop: DoorLoop, frame: Frame) -> None:
        c = self.capture
        if c is None:
            return
        try:
            c.step(loop, frame)
        except Exception as exc:
            c.finish("failed", frame.t, f"{type(exc).__name__}: {exc}")
        self.model.capture = c.as_state()
        self.model.idle(frame.t)
        self.server.offer_frame(frame.image)

    def frame(
        self,
        loop: DoorLoop,
        frame: Frame,
        tracks: Sequence[Track],
        quality: dict[int, QualityReport],
        decisions: Sequence[Decision],
    ) -> None:
        if self.model.service in ("starting", "camera-down"):
            self.model.service = "ok"  # a frame came: the camera works (tick() follows the camera from here)
        self.model.frame(tracks, quality, decisions, frame.image.shape, frame.t)
        self.model.fps = loop.stats.fps
        self.server.offer_frame(frame.image)
        self.server.update(self.model.snapshot(frame.t))

    def prompt(self, track_id: int, prompt: str, t: float) -> None:
        self.model.challenge(track_id, prompt, t)

    def tick(self, loop: DoorLoop, now: float) -> None:
        """Once per loop iteration, frame or not: answer control requests, follow the camera, publish."""
        while True:
            try:
                req = self.requests.get_nowait()
            except queue.Empty:
                break
            try:
                reply = self.handle(loop, req, now)
            except Exception as exc:
                # NOTE: the asker hears at once; a relay fault (FATAL_ERRORS) still stops the loop via DoorLoop.
                req.answer(error("unavailable", f"the door loop could not do it: {type(exc).__name__}: {exc}"))
                raise
            self._follow_capture(now)
            self.server.update(self.model.snapshot(now))  # NOTE: the state is current before the asker hears back
            req.answer(reply)
        state = loop.camera.status().get("state")
        down = state in CAMERA_DOWN_STATES
        if down:
            self.model.idle(now)  # no camera: no faces, no prompt (a frame it gave just before is stale now)
        self.set_service("camera-down" if down else "starting" if state == "starting" else "ok")
        self._follow_capture(now)
        self.model.fps = loop.stats.fps
        self.server.update(self.model.snapshot(now))

    def _follow_capture(self, now: float) -> None:
        c = self.capture
        if c is None:
            return
        c.expire(now)
        if not c.running and c.ended is not None and now - c.ended > CAPTURE_KEEP_S:
            self.capture = None  # nobody fetched it: forget the embeddings
        recent = c.ended is not None and now - c.ended < self.cfg.screen.result_s
        self.model.capture = c.as_state() if c.running or recent else None

    # -- control requests (loop thread) ----------------------------------------------------------------------

    def handle(self, loop: DoorLoop, req: ControlRequest, now: float) -> dict[str, Any]:
        r, op = req.request, req.request["op"]
        if op == "status":
            return door_status(loop, self.model.service)
        if op == "reload":
            loop.reload()
            return {"ok": True}
        if op == "unlock":
            pulse_s = loop.manual_unlock(str(r["actor"]), str(r["reason"]), req.peer.uid, req.peer.pid)
            return {"ok": True, "pulse_s": round(pulse_s, 2)}
        if op == "capture":
            if self.capturing():
                return error("busy", "a capture is already running")
            new = CaptureSession(target=r["target"], started=now, timeout_s=r["timeout_s"])
            self.capture = new
            who = r.get("actor") or "?"
            log.info("capture %s started (target %d, %.0f s) for %s", new.id, new.target, new.timeout_s, who)
            self.model.capture = new.as_state()
            return {"ok": True, "id": new.id}
        c = self.capture
        if c is None or c.id != r["id"]:
            return error("bad-request", "no capture with that id")
        if op == "capture-cancel":
            if c.running:
                c.finish("cancelled", now)
            return {"ok": True}
        spec = loop.pipeline.embedder.spec
        return c.result(spec.id, spec.sha256)
