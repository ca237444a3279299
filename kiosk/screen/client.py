"""``DoorLink``: the web process's side of the door loop's sockets (docs/screen-protocol.md), on asyncio.

One connection per socket, however many browsers watch: ``state.sock`` always (reconnecting every second), and
``preview.sock`` only while at least one preview subscriber exists. Subscribers get the latest item, older ones are
dropped for a slow one, so no browser can make another wait. When the loop is unreachable, or silent for ``stale_s``,
the state says ``service: "down"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from kiosk.errors import DoorUnavailableError
from kiosk.screen.protocol import CONTROL_SOCK, PREVIEW_SOCK, STATE_SOCK, VERSION

log = logging.getLogger("kiosk.screen.client")

T = TypeVar("T")

RECONNECT_S = 1.0
STOP_WAIT_S = 2.0  # stop() waits this long for its tasks to end
MAX_STATE_LINE = 1024 * 1024
MAX_PREVIEW_BYTES = 16 * 1024 * 1024
MAX_REPLY = 64 * 1024 * 1024  # a capture result holds its embeddings


def down_state() -> dict[str, Any]:
    """The state while the loop cannot be reached."""
    return {
        "v": VERSION,
        "seq": 0,
        "t": round(time.time(), 3),
        "service": "down",
        "faces": [],
        "prompt": None,
        "result": None,
        "capture": None,
        "fps": None,
    }


class Subscription(Generic[T]):
    """An async iterator over the items a ``DoorLink`` publishes; keeps at most ``keep`` unread items (the newest).
    ``close()`` ends it (the iteration stops)."""

    def __init__(self, keep: int, on_close: Any = None) -> None:
        self._items: deque[T] = deque(maxlen=keep)
        self._event = asyncio.Event()
        self._closed = False
        self._on_close = on_close
        self.dropped = 0

    def put(self, item: T) -> None:
        if self._closed:
            return
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append(item)
        self._event.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._event.set()
        if self._on_close is not None:
            self._on_close(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._event.clear()
            await self._event.wait()
        return self._items.popleft()

    async def __aenter__(self) -> Subscription[T]:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.close()


async def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is None:
        return
    writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()


def _content(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k not in ("t", "seq")}


class DoorLink:
    """The loop's sockets in ``runtime_dir`` for an asyncio process (``kiosk web``)."""

    def __init__(self, runtime_dir: Path, *, stale_s: float = 3.0) -> None:
        self.runtime_dir = Path(runtime_dir)
        self.stale_s = stale_s
        self._state: dict[str, Any] = down_state()
        self._state_subs: set[Subscription[dict[str, Any]]] = set()
        self._preview_subs: set[Subscription[bytes]] = set()
        self._state_task: asyncio.Task[None] | None = None
        self._preview_task: asyncio.Task[None] | None = None
        self._stopped = False
        self.connects = 0  # successful state.sock connections (tests watch reconnects)

    @property
    def state(self) -> dict[str, Any]:
        return self._state

    @property
    def up(self) -> bool:
        return self._state.get("service") != "down"

    async def start(self) -> None:
        self._stopped = False
        if self._state_task is None:
            self._state_task = asyncio.create_task(self._follow_state(), name="doorlink-state")
        if self._preview_subs:
            self._ensure_preview()

    async def stop(self) -> None:
        self._stopped = True
        tasks = [t for t in (self._state_task, self._preview_task) if t is not None]
        self._state_task = self._preview_task = None
        for t in tasks:
            t.cancel()
        if tasks:
            # Bounded: a task that outlived its cancellation must not hold up the web process's shutdown.
            await asyncio.wait(tasks, timeout=STOP_WAIT_S)
        for sub in list(self._state_subs) + list(self._preview_subs):
            sub.close()

    # -- state -----------------------------------------------------------------------------------------------

    def subscribe_state(self) -> Subscription[dict[str, Any]]:
        """The current state at once, then every change (going down and coming back included)."""
        sub: Subscription[dict[str, Any]] = Subscription(64, self._state_subs.discard)
        sub.put(self._state)
        self._state_subs.add(sub)
        return sub

    def _set_state(self, state: dict[str, Any]) -> None:
        changed = _content(state) != _content(self._state)
        self._state = state
        if changed:
            for sub in list(self._state_subs):
                sub.put(state)

    def _set_down(self) -> None:
        if self._state.get("service") != "down":
            log.warning("door loop unreachable: %s", self.runtime_dir / STATE_SOCK)
            self._set_state(down_state())

    async def _follow_state(self) -> None:
        path = str(self.runtime_dir / STATE_SOCK)
        while not self._stopped:
            writer = None
            try:
                reader, writer = await asyncio.open_unix_connection(path, limit=MAX_STATE_LINE)
                self.connects += 1
                while not self._stopped:
                    # NOTE: asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
                    # arrives as the read completes, and this task then read state lines for ever (stop() hung).
                    async with asyncio.timeout(self.stale_s):
                        line = await reader.readline()
                    if not line:
                        break  # the loop closed the socket
                    state = json.loads(line)
                    if not isinstance(state, dict):
                        raise ValueError("state line is not a JSON object")
                    self._set_state(state)
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                log.debug("state.sock: %s: %s", type(exc).__name__, exc)
            finally:
                await _close(writer)
            self._set_down()
            await asyncio.sleep(RECONNECT_S)

    # -- preview ---------------------------------------------------------------------------------------------

    def subscribe_preview(self) -> Subscription[bytes]:
        """JPEG frames, newest only for a slow subscriber; the link watches preview.sock while anyone subscribes."""
        sub: Subscription[bytes] = Subscription(1, self._preview_closed)
        self._preview_subs.add(sub)
        if self._state_task is not None:
            self._ensure_preview()
        return sub

    def _preview_closed(self, sub: Subscription[bytes]) -> None:
        self._preview_subs.discard(sub)
        if not self._preview_subs and self._preview_task is not None:
            self._preview_task.cancel()  # nobody watches: the loop stops encoding
            self._preview_task = None

    def _ensure_preview(self) -> None:
        if self._preview_task is None or self._preview_task.done():
            self._preview_task = asyncio.create_task(self._follow_preview(), name="doorlink-preview")

    async def _follow_preview(self) -> None:
        path = str(self.runtime_dir / PREVIEW_SOCK)
        while not self._stopped and self._preview_subs:
            writer = None
            try:
                reader, writer = await asyncio.open_unix_connection(path)
                while self._preview_subs and not self._stopped:
                    async with asyncio.timeout(self.stale_s + 1.0):
                        head = await reader.readexactly(4)
                    (n,) = struct.unpack(">I", head)
                    if n > MAX_PREVIEW_BYTES:
                        raise ValueError(f"preview frame of {n} bytes")
                    async with asyncio.timeout(self.stale_s + 1.0):
                        jpeg = await reader.readexactly(n)
                    for sub in list(self._preview_subs):
                        sub.put(jpeg)
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
                log.debug("preview.sock: %s: %s", type(exc).__name__, exc)
            finally:
                await _close(writer)
            if self._preview_subs:
                await asyncio.sleep(RECONNECT_S)

    # -- control ---------------------------------------------------------------------------------------------

    async def request(self, request: dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
        """One control.sock exchange; DoorUnavailableError when the loop cannot be reached or does not answer."""
        path = self.runtime_dir / CONTROL_SOCK
        line = (json.dumps(request, ensure_ascii=False) + "\n").encode()
        writer = None
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_REPLY)
                writer.write(line)
                await writer.drain()
                raw = await reader.readline()
        except TimeoutError:
            raise DoorUnavailableError(f"the door loop did not answer within {timeout_s:g} s ({path})") from None
        except OSError as exc:
            raise DoorUnavailableError(f"cannot reach the door loop at {path}: {exc.strerror or exc}") from None
        except (ValueError, asyncio.LimitOverrunError) as exc:
            raise DoorUnavailableError(f"the door loop's reply is too long ({path}): {exc}") from None
        finally:
            await _close(writer)
        try:
            reply = json.loads(raw)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise DoorUnavailableError(f"the door loop gave no valid reply ({path})")
        return reply
