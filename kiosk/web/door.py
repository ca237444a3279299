"""The door screen (``/door``): what the person at the door sees. No login; served on loopback by default.

The page (``templates/door.html`` + ``static/door.js``) follows the loop's state through Server-Sent Events
(``/door/state``) and shows the mirrored preview as MJPEG (``/door/preview.mjpg``), both fanned out from the one
``DoorLink`` of the web process. The screen is never trusted for the door: the relay is the loop's alone, and a
dead screen or a dead web process changes nothing at the door.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, Protocol, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.templating import Jinja2Templates

from kiosk.config import Config
from kiosk.web.i18n import I18n

router = APIRouter()

T = TypeVar("T", covariant=True)

SSE_RETRY_MS = 1000  # the browser reconnects this soon after the stream breaks (web process restarted)
SSE_HEARTBEAT_S = 15.0  # a comment line when nothing changed, so a dead TCP connection is noticed
BOUNDARY = "kiosk-frame"
NO_STORE = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


class Subscription(Protocol[T]):
    def __aiter__(self) -> AsyncIterator[T]: ...
    def close(self) -> None: ...


class Link(Protocol):
    """What the door screen needs of ``kiosk.screen.client.DoorLink``."""

    @property
    def state(self) -> dict[str, Any]: ...
    def subscribe_state(self) -> Subscription[dict[str, Any]]: ...
    def subscribe_preview(self) -> Subscription[bytes]: ...


class DoorServices(Protocol):
    """What the door screen needs of ``WebServices``."""

    @property
    def cfg(self) -> Config: ...
    @property
    def link(self) -> Link: ...
    @property
    def i18n(self) -> I18n: ...
    @property
    def templates(self) -> Jinja2Templates: ...


def _services(request: Request) -> DoorServices:
    services: DoorServices = request.app.state.services
    return services


def door_config(services: DoorServices) -> dict[str, Any]:
    """Everything the page's script needs: settings from ``screen:`` and the door strings in the screen's language."""
    screen = services.cfg.screen
    return {
        "v": 1,
        "lang": screen.language,
        "result_s": screen.result_s,
        "sound": screen.sound,
        "show_name": screen.show_name,
        "state_url": "/door/state",
        "preview_url": "/door/preview.mjpg",
        "strings": services.i18n.strings(screen.language, "door."),
    }


@router.get("/door", response_class=HTMLResponse, include_in_schema=False)
def door_page(request: Request) -> HTMLResponse:
    services = _services(request)
    return services.templates.TemplateResponse(
        request,
        "door.html",
        {"lang": services.cfg.screen.language, "config": door_config(services)},
        headers={"Cache-Control": "no-store"},
    )


@router.get("/door/config.json", include_in_schema=False)
def door_config_json(request: Request) -> JSONResponse:
    return JSONResponse(door_config(_services(request)), headers={"Cache-Control": "no-store"})


async def _with_heartbeat(source: AsyncIterator[T], every_s: float) -> AsyncIterator[T | None]:
    """Items of ``source``, and None after ``every_s`` without one. The pending read is never cancelled while the
    stream lives (cancelling an async generator's ``__anext__`` would end it)."""
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait({pending}, timeout=every_s)
            if not done:
                yield None
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield item
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending


def sse_event(state: dict[str, Any]) -> str:
    """One SSE message; ``seq`` as the event id. JSON has no raw newlines, so one ``data:`` line holds it."""
    seq = state.get("seq")
    head = f"id: {seq}\n" if isinstance(seq, int) else ""
    return f"{head}data: {json.dumps(state, separators=(',', ':'), ensure_ascii=False)}\n\n"


async def state_stream(link: Link, heartbeat_s: float = SSE_HEARTBEAT_S) -> AsyncIterator[str]:
    """The SSE body: the retry hint, the current state at once, then every change (going down and back included)."""
    subscription = link.subscribe_state()
    try:
        yield f"retry: {SSE_RETRY_MS}\n\n"
        async for state in _with_heartbeat(aiter(subscription), heartbeat_s):
            yield ": keep-alive\n\n" if state is None else sse_event(state)
    finally:
        subscription.close()


@router.get("/door/state", include_in_schema=False)
def door_state(request: Request) -> StreamingResponse:
    return StreamingResponse(state_stream(_services(request).link), media_type="text/event-stream", headers=NO_STORE)


PART_HEAD = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n\r\n".encode("ascii")


def mjpeg_part(jpeg: bytes) -> bytes:
    """One frame followed by the next part's boundary and headers: Chromium shows a part only once it has read the
    headers of the part after it, so each frame goes out closed and the browser shows it at once."""
    return jpeg + b"\r\n" + PART_HEAD


async def preview_stream(link: Link) -> AsyncIterator[bytes]:
    """The first part's headers, then one frame each. While the browser is slow this generator waits in the send
    and the subscription keeps only the newest frame: the browser gets that one, the loop never waits. The stream
    ends when the loop goes down; the page reopens it when the loop is back."""
    subscription = link.subscribe_preview()
    try:
        yield PART_HEAD
        async for jpeg in subscription:
            yield mjpeg_part(jpeg)
    finally:
        subscription.close()


@router.get("/door/preview.mjpg", include_in_schema=False)
def door_preview(request: Request) -> StreamingResponse:
    return StreamingResponse(
        preview_stream(_services(request).link),
        media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
        headers=NO_STORE,
    )
