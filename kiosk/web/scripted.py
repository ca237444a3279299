"""``ScriptedLink``: the one stand-in for ``kiosk.screen.client.DoorLink``, showing and answering whatever it is told.

For the web tests, the screenshots (``python -m tools screenshots``) and the latency tool: the caller publishes
protocol states (``docs/screen-protocol.md``) and preview JPEGs from any thread; browsers connected through
``/door/state`` and ``/door/preview.mjpg`` see them as they would see the loop's. Control requests are recorded and
answered from ``replies`` by op; ``go_down()`` makes them fail as ``DoorLink``'s do when no loop runs. Nothing here
talks to a loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from fastapi import FastAPI
from fastapi.templating import Jinja2Templates

from kiosk.config import Config
from kiosk.errors import DoorUnavailableError
from kiosk.web.i18n import I18n
from kiosk.web.templating import make_templates

T = TypeVar("T")


def door_state(
    service: str = "ok",
    *,
    faces: list[dict[str, Any]] | None = None,
    prompt: dict[str, Any] | None = None,
    result: dict[str, Any] | None = None,
    capture: dict[str, Any] | None = None,
    seq: int = 0,
    fps: float | None = None,
) -> dict[str, Any]:
    """One state line as the loop publishes it."""
    return {
        "v": 1,
        "seq": seq,
        "t": time.time(),
        "service": service,
        "faces": list(faces or []),
        "prompt": prompt,
        "result": result,
        "capture": capture,
        "fps": fps,
    }


def default_replies() -> dict[str, dict[str, Any]]:
    """What a ``ScriptedLink`` answers unless told otherwise: a running loop's ``status`` and a granted ``unlock``."""
    return {
        "status": {
            "ok": True,
            "loop": {"fps": 9.5, "frames": 1200, "granted": 3, "denied": 1, "frame_ms_median": 41.0},
            "door": {"relay": "locked", "contact": "closed"},
            "camera": {},
            "service": "ok",
        },
        "unlock": {"ok": True, "pulse_s": 3.0},
    }


class ScriptedSubscription(Generic[T]):
    """An async iterator fed from any thread: every item (state), or the newest only (preview frames)."""

    def __init__(self, owner: ScriptedLink, *, newest_only: bool) -> None:
        self._owner = owner
        self._loop = asyncio.get_running_loop()
        self._items: collections.deque[T] = collections.deque(maxlen=1 if newest_only else None)
        self._wake = asyncio.Event()
        self._ended = False
        self.closed = False

    def offer(self, item: T) -> None:
        with contextlib.suppress(RuntimeError):  # its event loop is closed: nobody reads it any more
            self._loop.call_soon_threadsafe(self._put, item)

    def end(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._finish)

    def _put(self, item: T) -> None:
        self._items.append(item)
        self._wake.set()

    def _finish(self) -> None:
        self._ended = True
        self._wake.set()

    def __aiter__(self) -> ScriptedSubscription[T]:
        return self

    async def __anext__(self) -> T:
        while not self._items:
            if self._ended or self.closed:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()
        return self._items.popleft()

    def close(self) -> None:
        self.closed = True
        self._owner._forget(self)
        self._wake.set()


class ScriptedLink:
    """``DoorLink``'s interface (state, subscribe_state, subscribe_preview, request, start, stop), scripted.

    ``state`` (down unless given) may be assigned from any thread: that publishes it, like ``publish``.
    ``calls`` records start and stop; ``requests`` every control request; ``request`` answers a copy of
    ``replies[op]`` (``default_replies()`` unless given), or ``bad-request`` for an op it has no reply for.
    ``go_down()`` publishes a down state and makes ``request`` raise ``DoorUnavailableError`` (unrecorded), as
    ``DoorLink`` does while no loop runs, until ``come_back()`` or a state that is not down."""

    def __init__(
        self, state: dict[str, Any] | None = None, *, replies: dict[str, dict[str, Any]] | None = None
    ) -> None:
        self._lock = threading.Lock()
        self._state = state or door_state("down")
        self._frame: bytes | None = None
        self._states: list[ScriptedSubscription[dict[str, Any]]] = []
        self._previews: list[ScriptedSubscription[bytes]] = []
        self.calls: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.replies: dict[str, dict[str, Any]] = default_replies() if replies is None else dict(replies)
        self.down = False

    async def start(self) -> None:
        self.calls.append("start")

    async def stop(self) -> None:
        self.calls.append("stop")
        with self._lock:
            subs: list[ScriptedSubscription[Any]] = [*self._states, *self._previews]
            self._states.clear()
            self._previews.clear()
        for sub in subs:
            sub.end()

    @property
    def state(self) -> dict[str, Any]:
        return self._state

    @state.setter
    def state(self, state: dict[str, Any]) -> None:
        self.publish(state)

    @property
    def preview_subscribers(self) -> int:
        with self._lock:
            return len(self._previews)

    @property
    def state_subscribers(self) -> int:
        with self._lock:
            return len(self._states)

    def subscribe_state(self) -> ScriptedSubscription[dict[str, Any]]:
        sub: ScriptedSubscription[dict[str, Any]] = ScriptedSubscription(self, newest_only=False)
        with self._lock:
            self._states.append(sub)
            sub.offer(self._state)
        return sub

    def subscribe_preview(self) -> ScriptedSubscription[bytes]:
        sub: ScriptedSubscription[bytes] = ScriptedSubscription(self, newest_only=True)
        with self._lock:
            if self._state.get("service") == "down":
                sub.end()  # like DoorLink: the preview ends quietly while the loop is down
            else:
                self._previews.append(sub)
                if self._frame is not None:
                    sub.offer(self._frame)
        return sub

    def publish(self, state: dict[str, Any]) -> None:
        """A new state for every subscriber; going down ends the preview streams (the page reopens them), a state
        that is not down ends ``go_down()``."""
        with self._lock:
            self._state = state
            if state.get("service") != "down":
                self.down = False
            for sub in self._states:
                sub.offer(state)
            ending = list(self._previews) if state.get("service") == "down" else []
            if ending:
                self._previews.clear()
        for preview in ending:
            preview.end()

    def publish_frame(self, jpeg: bytes) -> None:
        with self._lock:
            self._frame = jpeg
            for sub in self._previews:
                sub.offer(jpeg)

    def go_down(self) -> None:
        """The loop stops: the state goes down and control requests fail until ``come_back()``."""
        self.publish(door_state("down"))
        self.down = True

    def come_back(self, state: dict[str, Any] | None = None) -> None:
        """The loop runs again: ``state`` (an "ok" one unless given) is published and requests are answered."""
        self.down = False
        self.publish(state or door_state("ok"))

    async def request(self, request: dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
        if self.down:
            raise DoorUnavailableError("cannot reach the door loop at control.sock: no such file (scripted)")
        self.requests.append(dict(request))
        op = str(request.get("op"))
        reply = self.replies.get(op)
        if reply is None:
            return {"ok": False, "error": "bad-request", "detail": f"a scripted link has no reply for op {op!r}"}
        return dict(reply)

    def _forget(self, sub: ScriptedSubscription[Any]) -> None:
        with self._lock:
            for subs in (self._states, self._previews):
                if sub in subs:
                    subs.remove(sub)


@dataclass
class ScriptedServices:
    """The part of ``WebServices`` the door screen uses (no accounts, no gallery), around a ``ScriptedLink`` or a
    real ``DoorLink``."""

    cfg: Config
    link: Any
    i18n: I18n = field(default_factory=I18n)
    templates: Jinja2Templates = field(init=False)

    def __post_init__(self) -> None:
        self.templates = make_templates(self)

    def close(self) -> None:
        pass


def door_app(services: ScriptedServices) -> FastAPI:
    """The real app (``create_app``) serving only the door screen over these services (its lifespan starts and
    stops the link)."""
    from kiosk.web.app import create_app

    app: FastAPI = create_app(cast(Any, services), door=True, admin=False)
    return app
