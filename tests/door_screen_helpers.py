"""Shared by the door screen's tests: a scripted door app, preview JPEGs, and layout checks run in the page."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiosk.config import CameraConfig, Config, parse_config
from kiosk.door.camera import FrameSource
from kiosk.door.loop import DoorLoop
from kiosk.testing import ScriptedSource
from kiosk.web.scripted import ScriptedLink, ScriptedServices, door_app

# The contract's policy: enforced in every browser test even where the app under test does not set it yet.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)


class EnforceCsp:
    """Pure ASGI (streams pass through untouched): adds the CSP header when the app did not."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_csp(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if "content-security-policy" not in headers:
                    headers["Content-Security-Policy"] = CSP
            await send(message)

        await self.app(scope, receive, send_with_csp)


def scripted_app(link: ScriptedLink, **screen: Any) -> tuple[FastAPI, ScriptedServices]:
    cfg = parse_config({"screen": screen})
    services = ScriptedServices(cfg, link)
    app = door_app(services)
    app.add_middleware(EnforceCsp)
    return app, services


def preview_jpeg(width: int = 480, height: int = 360, shade: int = 90) -> bytes:
    """A corridor-grey frame with a face-sized ellipse, as JPEG bytes."""
    img = np.full((height, width, 3), shade, np.uint8)
    cv2.ellipse(img, (width // 2, height // 2), (width // 8, height // 5), 0, 0, 360, (150, 170, 200), -1)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return bytes(buf)


# Run in the page: what does not fit the viewport. Visible text and icons must lie inside it and not overflow
# their boxes; the document must not scroll.
LAYOUT_PROBLEMS = """() => {
  const problems = [];
  const de = document.documentElement;
  if (de.scrollWidth > innerWidth || de.scrollHeight > innerHeight) {
    problems.push(`document scrolls: ${de.scrollWidth}x${de.scrollHeight} in ${innerWidth}x${innerHeight}`);
  }
  const sel = ".prompt, .countdown, .bar-icon, .overlay-icon, .overlay-title, .overlay-detail, .frame, .face-label";
  for (const el of document.querySelectorAll(sel)) {
    if (!el.checkVisibility()) continue;
    const r = el.getBoundingClientRect();
    const name = `${el.className}${el.id ? "#" + el.id : ""}`;
    if (el.closest(".faces") === null && (r.left < -0.5 || r.top < -0.5 || r.right > innerWidth + 0.5
        || r.bottom > innerHeight + 0.5)) {
      problems.push(`${name} outside the viewport: ${JSON.stringify(r)}`);
    }
    if (el.scrollWidth > el.clientWidth + 1 || el.scrollHeight > el.clientHeight + 1) {
      const inner = `${el.scrollWidth}x${el.scrollHeight} in ${el.clientWidth}x${el.clientHeight}`;
      problems.push(`${name} overflows its box: ${inner}`);
    }
  }
  return problems;
}"""


class LoopThread:
    """``kiosk.door.service.run_kiosk`` (the door loop of ``kiosk run``) in a thread, on scripted camera frames played
    in a loop as a live camera. ``stop()`` ends it and re-raises what it raised."""

    def __init__(self, cfg: Config, frames: list[np.ndarray], frame_s: float = 0.05) -> None:
        self.cfg, self.frames, self.frame_s = cfg, frames, frame_s
        self.loop: DoorLoop | None = None
        self.started = threading.Event()
        self.error: BaseException | None = None
        self.decisions: list[tuple[str, str | None]] = []
        self.thread = threading.Thread(target=self._run, name="test-door-loop", daemon=True)

    def _open(self, _spec: str, _cam: CameraConfig) -> FrameSource:
        return ScriptedSource(itertools.cycle(self.frames), live=True, read_delay_s=self.frame_s)

    def _started(self, loop: DoorLoop) -> None:
        self.loop = loop
        self.started.set()

    def _run(self) -> None:
        from kiosk.door.service import run_kiosk

        try:
            run_kiosk(
                self.cfg,
                open_source=self._open,
                started=self._started,
                on_decision=lambda d, _door: self.decisions.append((d.outcome, d.name)),
            )
        except BaseException as exc:
            self.error = exc
        finally:
            self.started.set()

    def start(self) -> LoopThread:
        self.thread.start()
        assert self.started.wait(120), "the door loop did not start"
        if self.error is not None:
            raise self.error
        return self

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "run_kiosk did not end"
        if self.error is not None:
            raise self.error


def astronaut_door(root: Path, runtime_dir: Path, **screen: Any) -> tuple[Config, list[np.ndarray]]:
    """A door that knows the astronaut (enrolled from one crop, as ``kiosk demo`` does), with a blink challenge, and
    frames of the astronaut at the door blinking once (``kiosk.lab.demo``'s clip builder)."""
    from kiosk.context import Context
    from kiosk.enroll import enroll
    from kiosk.lab.demo import _astronaut_frames, skimage_image

    cfg = parse_config(
        {
            "data_dir": str(root),
            "gallery": {"path": str(root / "gallery.db"), "encrypt": False},
            "door": {"driver": "simulated", "pulse_s": 0.2},
            "liveness": {"mode": "active", "active": {"timeout_s": 4.0, "challenges": ["blink"]}},
            "screen": {"runtime_dir": str(runtime_dir), **screen},
        }
    )
    photo = skimage_image("astronaut")[20:260, 120:360]
    cv2.imwrite(str(root / "astronaut.png"), photo)
    with Context(cfg) as ctx:
        enroll(ctx.pipeline, ctx.gallery, "Eileen Collins", [root / "astronaut.png"])
        _held, blinking = _astronaut_frames(ctx, photo)
    return cfg, blinking
