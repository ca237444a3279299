"""``ScreenServer``: one thread (``selectors``) serving ``state.sock``, ``preview.sock`` and ``control.sock``.

The loop only calls cheap, non-blocking methods: ``update(state)`` stores a reference, ``offer_frame(image)`` stores
a reference while a preview client is connected (and does nothing otherwise). Everything that costs — JSON, JPEG
encoding, socket writes — happens in this thread. A client that does not read never holds the loop: a state client
whose backlog grows past ``STATE_BACKLOG`` is dropped; a preview client has one frame in flight and one waiting, a
newer frame replaces the waiting one (counted in ``dropped``). An error in this thread is logged (rate-limited) and
the thread goes on: ``kiosk run`` stops the door loop when any thread dies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import socket
import stat
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiosk.config import ScreenConfig
from kiosk.errors import ScreenError
from kiosk.screen.control import (
    Authorizer,
    ControlRequest,
    Peer,
    RequestError,
    error,
    parse_request,
    peer_credentials,
)
from kiosk.screen.protocol import CONTROL_SOCK, MAX_REQUEST_BYTES, PREVIEW_SOCK, SOCKETS, STATE_SOCK
from kiosk.screen.state import content
from kiosk.types import Image

log = logging.getLogger("kiosk.screen")

DIR_MODE, SOCK_MODE = 0o750, 0o660
MAX_STATE_RATE = 20.0  # state lines a second at most
KEEPALIVE_S = 1.0
STATE_BACKLOG = 256 * 1024  # bytes of unread state lines before a client is dropped
READ_TIMEOUT_S = 2.0  # a control client must send its request within this
REPLY_TIMEOUT_S = 5.0  # the loop must answer within this, else "unavailable"
ERROR_LOG_INTERVAL_S = 30.0
MAX_CLIENTS = 16  # per socket; the web process holds one each
SUN_PATH_MAX = 107
FORBIDDEN = error("forbidden", "not the loop's user, root or a member of admin.group")


@dataclass
class _Client:
    kind: str
    sock: socket.socket
    out: bytearray = field(default_factory=bytearray)  # state / control: bytes not yet sent
    inflight: memoryview | None = None  # preview: the message being sent
    waiting: bytes | None = None  # preview: the newest message not yet started
    inbuf: bytearray = field(default_factory=bytearray)  # control: the request so far
    deadline: float = 0.0  # control: read, then reply deadline
    peer: Peer | None = None  # control: the authorised peer
    request: ControlRequest | None = None  # control: the request handed to the loop
    closing: bool = False  # control: close once ``out`` is sent
    forbidden: bool = False  # control: the peer may not ask; whatever it sends is answered "forbidden"


class ScreenServer:
    """The loop's three sockets in ``runtime_dir`` and the thread behind them."""

    def __init__(
        self,
        runtime_dir: Path,
        cfg: ScreenConfig,
        *,
        on_request: Callable[[ControlRequest], None] | None = None,
        authorize: Callable[[Peer], bool] | None = None,
        credentials: Callable[[socket.socket], Peer] = peer_credentials,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``on_request`` receives each authorised, well-formed control request (the loop answers it); without
        it every request is answered ``unavailable``. ``authorize(peer)`` (default: the loop's own uid or root)
        and ``credentials(sock)`` (default ``SO_PEERCRED``) are injected so a test can play another user."""
        self.runtime_dir = Path(runtime_dir)
        self.cfg = cfg
        self.on_request = on_request
        self.authorize = authorize or Authorizer(None)
        self.credentials = credentials
        self.clock = clock
        self._state: dict[str, Any] | None = None
        self._state_version = 0
        self._frame: Image | None = None
        self._frame_no = 0
        self.watchers = 0  # preview clients now: the loop hands frames only while this is above 0
        # Counters (read them for measurements and tests).
        self.offered = 0  # frames the loop handed over while watched
        self.encoded = 0  # JPEGs made
        self.sent = 0  # JPEG messages fully written, over all clients
        self.dropped = 0  # JPEG messages replaced before they were sent
        self.state_lines = 0  # state lines queued, over all clients
        self.clients_dropped = 0  # state clients dropped for not reading
        self.errors = 0
        self.encode_ms: deque[float] = deque(maxlen=1000)  # the latest encodes (resize + mirror + JPEG), for bench
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[socket.socket] = []
        self._bound: list[Path] = []
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._error_logged = -float("inf")

    @property
    def paths(self) -> dict[str, Path]:
        return {name: self.runtime_dir / name for name in SOCKETS}

    # -- the loop's side: cheap, never blocking --------------------------------------------------------------

    def update(self, state: dict[str, Any]) -> None:
        """The loop's latest state (a fresh dict each time: the thread reads it, nobody changes it)."""
        previous = self._state
        self._state = state
        if previous is None or content(previous) != content(state):
            self._state_version += 1
            self._wake()

    def offer_frame(self, image: Image) -> None:
        """The loop's latest frame, by reference; ignored while nobody watches the preview."""
        if self.watchers <= 0:
            return
        self._frame = image
        self._frame_no += 1
        self.offered += 1

    def _wake(self) -> None:
        w = self._wake_w
        if w is not None:
            with contextlib.suppress(OSError):  # full (a wake-up is already pending) or closed: either is fine
                w.send(b"\0")

    # -- start and stop --------------------------------------------------------------------------------------

    def start(self) -> None:
        """Make the folder (0750), remove stale sockets of a crashed run, bind (0660), start the thread."""
        self._prepare_dir()
        try:
            for name in SOCKETS:
                self._listeners.append(self._bind(self.runtime_dir / name))
            self._wake_r, self._wake_w = socket.socketpair()
            for s in (self._wake_r, self._wake_w):
                s.setblocking(False)
        except BaseException:
            self._close_sockets()
            raise
        self._thread = threading.Thread(target=self._run, name="kiosk-screen", daemon=True)
        self._thread.start()
        log.info("screen: serving %s", ", ".join(str(p) for p in self._bound))

    def stop(self, timeout_s: float = 2.0) -> None:
        """Send what is pending (best effort), stop the thread, close and remove the sockets. Safe twice."""
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("screen: publisher thread did not stop within %.1f s", timeout_s)
            self._thread = None
        self._close_sockets()

    close = stop

    def __enter__(self) -> ScreenServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _prepare_dir(self) -> None:
        d = self.runtime_dir
        try:
            # NOTE: missing parents (the default <data_dir>/run may come before the data folder) are made private
            # (0700), as the gallery's permission check wants the data folder.
            for parent in reversed([p for p in d.parents if not p.exists()]):
                parent.mkdir(mode=0o700, exist_ok=True)
            d.mkdir(exist_ok=True, mode=DIR_MODE)
            if stat.S_IMODE(d.stat().st_mode) != DIR_MODE:
                os.chmod(d, DIR_MODE)
        except OSError as exc:
            raise ScreenError(
                f"screen.runtime_dir {d}: cannot make it a private folder (0750): {exc.strerror}"
            ) from exc

    def _bind(self, path: Path) -> socket.socket:
        if len(os.fsencode(path)) > SUN_PATH_MAX:
            raise ScreenError(
                f"screen.runtime_dir: socket path {path} is too long for a Unix socket; use a shorter one"
            )
        self._remove_stale(path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.bind(str(path))
            self._bound.append(path)
            os.chmod(path, SOCK_MODE)
            s.listen(MAX_CLIENTS)
            s.setblocking(False)
        except OSError as exc:
            s.close()
            raise ScreenError(f"screen: cannot serve {path}: {exc.strerror or exc}") from exc
        return s

    @staticmethod
    def _remove_stale(path: Path) -> None:
        """A socket left by a crashed run is removed; one that still answers belongs to a running loop: refuse."""
        try:
            st = path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ScreenError(f"screen: {path} exists and is not a socket; remove it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(0.5)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink(missing_ok=True)
            log.info("screen: removed stale socket %s", path)
            return
        finally:
            probe.close()
        raise ScreenError(f"screen: {path} is served by another running door loop; stop it first")

    def _close_sockets(self) -> None:
        for s in self._listeners:
            s.close()
        self._listeners = []
        for w in (self._wake_r, self._wake_w):
            if w is not None:
                w.close()
        self._wake_r = self._wake_w = None
        for path in self._bound:
            path.unlink(missing_ok=True)
        self._bound = []

    # -- the thread ------------------------------------------------------------------------------------------

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        clients: dict[int, _Client] = {}
        assert self._wake_r is not None
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        for name, listener in zip(SOCKETS, self._listeners, strict=True):
            sel.register(listener, selectors.EVENT_READ, ("listen", name))
        sent_version, last_line, due_change = -1, -float("inf"), False
        last_encode, encoded_no = -float("inf"), 0
        try:
            while not self._stop.is_set():
                try:
                    for key, mask in sel.select(timeout=0.05):
                        self._event(sel, clients, key, mask)
                    now = self.clock()
                    state = self._state
                    # State lines: on change (at most MAX_STATE_RATE a second), and a keep-alive every second.
                    if state is not None:
                        due_change = due_change or self._state_version != sent_version
                        if (due_change and now - last_line >= 1.0 / MAX_STATE_RATE) or now - last_line >= KEEPALIVE_S:
                            sent_version, due_change = self._state_version, False
                            last_line = now
                            self._broadcast_state(sel, clients, state)
                    # Preview: encode only while watched, at most preview_fps.
                    frame, no = self._frame, self._frame_no
                    if (
                        self.watchers > 0
                        and frame is not None
                        and no != encoded_no
                        and now - last_encode >= 1.0 / self.cfg.preview_fps
                    ):
                        encoded_no, last_encode = no, now
                        self._broadcast_preview(sel, clients, self._encode(frame))
                    self._control_deadlines(sel, clients, now)
                except Exception as exc:  # NOTE: never let this thread die: kiosk run would stop the door loop
                    self._failed(exc)
                    time.sleep(0.05)
            try:
                self._flush_on_stop(clients)
            except Exception as exc:  # best effort: the sockets close below anyway
                self._failed(exc)
        finally:
            for c in list(clients.values()):
                with contextlib.suppress(OSError):
                    c.sock.close()
            self.watchers = 0
            self._frame = None
            sel.close()

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        now = time.monotonic()
        if now - self._error_logged >= ERROR_LOG_INTERVAL_S:
            self._error_logged = now
            log.error("screen: publisher error (%d so far), going on: %s: %s", self.errors, type(exc).__name__, exc)

    def _event(self, sel: selectors.BaseSelector, clients: dict[int, _Client], key: Any, mask: int) -> None:
        data = key.data
        if data == "wake":
            with contextlib.suppress(OSError):
                while key.fileobj.recv(4096):
                    pass
            return
        if isinstance(data, tuple):
            self._accept(sel, clients, key.fileobj, data[1])
            return
        c: _Client = data
        try:
            if mask & selectors.EVENT_READ:
                self._readable(sel, clients, c)
            if mask & selectors.EVENT_WRITE and c.sock.fileno() in clients:
                self._writable(sel, clients, c)
        except OSError:
            self._drop(sel, clients, c)

    def _accept(self, sel: selectors.BaseSelector, clients: dict[int, _Client], listener: Any, name: str) -> None:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        kind = {STATE_SOCK: "state", PREVIEW_SOCK: "preview", CONTROL_SOCK: "control"}[name]
        if sum(1 for c in clients.values() if c.kind == kind) >= MAX_CLIENTS:
            sock.close()
            return
        c = _Client(kind, sock)
        clients[sock.fileno()] = c
        sel.register(sock, selectors.EVENT_READ, c)
        if kind == "state":
            state = self._state
            if state is not None:  # the current state at once
                self._queue_state(sel, clients, c, self._line(state))
        elif kind == "preview":
            self.watchers += 1
        else:
            c.deadline = self.clock() + READ_TIMEOUT_S
            try:
                peer = self.credentials(sock)
                allowed = self.authorize(peer)
            except Exception as exc:  # no credentials, a broken user database: refuse, never crash
                log.warning("screen: control peer refused: %s: %s", type(exc).__name__, exc)
                peer, allowed = None, False
            if not allowed or peer is None:
                # NOTE: refused once its request line is in (or at the read timeout), not now: closing before the
                # client wrote would give it a broken pipe instead of the answer.
                log.warning("screen: control request refused for %s", peer or "an unknown peer")
                c.forbidden = True
            else:
                c.peer = peer

    def _readable(self, sel: selectors.BaseSelector, clients: dict[int, _Client], c: _Client) -> None:
        data = c.sock.recv(65536)
        if c.kind != "control":
            if not data:
                self._drop(sel, clients, c)
            return  # state/preview clients have nothing to say
        if c.closing or c.request is not None:
            if not data and not c.out:
                self._drop(sel, clients, c)
            return
        c.inbuf += data
        line: bytes | None = None
        if b"\n" in c.inbuf:
            line = bytes(c.inbuf[: c.inbuf.index(b"\n")])
        elif not data:
            line = bytes(c.inbuf)  # the client shut its side without a newline
        if line is None and len(c.inbuf) <= MAX_REQUEST_BYTES:
            return
        if c.forbidden:
            self._reply(sel, c, FORBIDDEN)
            return
        if line is None or not line.strip():
            detail = "empty request" if line is not None else f"request longer than {MAX_REQUEST_BYTES} bytes"
            self._reply(sel, c, error("bad-request", detail))
            return
        try:
            request = parse_request(line)
        except RequestError as exc:
            self._reply(sel, c, error(exc.code, exc.detail))
            return
        assert c.peer is not None
        pending = ControlRequest(request, c.peer, self._wake)
        c.request = pending
        c.deadline = self.clock() + REPLY_TIMEOUT_S
        if self.on_request is None:
            pending.answer(error("unavailable", "the door loop takes no requests"))
        else:
            self.on_request(pending)

    def _writable(self, sel: selectors.BaseSelector, clients: dict[int, _Client], c: _Client) -> None:
        if c.kind == "preview":
            while c.inflight is not None:
                try:
                    n = c.sock.send(c.inflight)
                except (BlockingIOError, InterruptedError):
                    n = 0  # the client's buffer is full: the rest goes when it reads
                c.inflight = c.inflight[n:]
                if len(c.inflight):
                    return
                self.sent += 1
                c.inflight, c.waiting = (memoryview(c.waiting), None) if c.waiting is not None else (None, None)
            sel.modify(c.sock, selectors.EVENT_READ, c)
            return
        if c.out:
            try:
                n = c.sock.send(c.out)
            except (BlockingIOError, InterruptedError):
                n = 0
            del c.out[:n]
        if not c.out:
            if c.closing:
                self._drop(sel, clients, c)
            else:
                sel.modify(c.sock, selectors.EVENT_READ, c)

    def _drop(self, sel: selectors.BaseSelector, clients: dict[int, _Client], c: _Client) -> None:
        fd = c.sock.fileno()
        if fd in clients:
            del clients[fd]
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(c.sock)
            if c.kind == "preview":
                self.watchers -= 1
                if self.watchers <= 0:
                    self._frame = None  # hold no frame while nobody watches
        c.sock.close()

    # -- state -----------------------------------------------------------------------------------------------

    def _line(self, state: dict[str, Any]) -> bytes:
        self.state_lines += 1
        seq = self.state_lines
        return (json.dumps({**state, "seq": seq}, ensure_ascii=False, separators=(",", ":")) + "\n").encode()

    def _queue_state(self, sel: selectors.BaseSelector, clients: dict[int, _Client], c: _Client, line: bytes) -> None:
        if len(c.out) + len(line) > STATE_BACKLOG:
            self.clients_dropped += 1
            log.warning("screen: state client dropped: it read nothing for %d bytes", len(c.out))
            self._drop(sel, clients, c)
            return
        c.out += line
        try:
            self._writable(sel, clients, c)
        except OSError:
            self._drop(sel, clients, c)
            return
        if c.out and c.sock.fileno() in clients:
            sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)

    def _broadcast_state(self, sel: selectors.BaseSelector, clients: dict[int, _Client], state: dict[str, Any]) -> None:
        watchers = [c for c in clients.values() if c.kind == "state"]
        if not watchers:
            return
        line = self._line(state)
        for c in watchers:
            self._queue_state(sel, clients, c, line)

    # -- preview ---------------------------------------------------------------------------------------------

    def _encode(self, image: Image) -> bytes:
        import cv2

        started = time.perf_counter()
        h, w = image.shape[:2]
        width = min(self.cfg.preview_width, w)
        small = (
            image
            if width == w
            else cv2.resize(image, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
        )
        if self.cfg.mirror:
            small = cv2.flip(small, 1)
        ok, jpeg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, self.cfg.preview_quality])
        if not ok:
            raise ScreenError("screen: JPEG encoding failed")
        self.encoded += 1
        out = jpeg.tobytes()
        self.encode_ms.append((time.perf_counter() - started) * 1000.0)
        return out

    def _broadcast_preview(self, sel: selectors.BaseSelector, clients: dict[int, _Client], jpeg: bytes) -> None:
        message = struct.pack(">I", len(jpeg)) + jpeg
        for c in [c for c in clients.values() if c.kind == "preview"]:
            if c.inflight is None:
                c.inflight = memoryview(message)
                try:
                    self._writable(sel, clients, c)
                except OSError:
                    self._drop(sel, clients, c)
                    continue
                if c.inflight is not None:
                    sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
            else:
                if c.waiting is not None:
                    self.dropped += 1
                c.waiting = message

    # -- control ---------------------------------------------------------------------------------------------

    def _reply(self, sel: selectors.BaseSelector, c: _Client, reply: dict[str, Any]) -> None:
        c.out += (json.dumps(reply, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        c.closing = True
        with contextlib.suppress(KeyError, ValueError):
            sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)

    def _control_deadlines(self, sel: selectors.BaseSelector, clients: dict[int, _Client], now: float) -> None:
        for c in [c for c in clients.values() if c.kind == "control" and not c.closing]:
            pending = c.request
            if pending is not None:
                if pending.reply is None and now >= c.deadline:
                    pending.answer(error("unavailable", "the door loop did not answer in time"))
                if pending.reply is not None:
                    self._reply(sel, c, pending.reply)
            elif now >= c.deadline:
                late = error("bad-request", f"no request line within {READ_TIMEOUT_S:g} s")
                self._reply(sel, c, FORBIDDEN if c.forbidden else late)

    def _flush_on_stop(self, clients: dict[int, _Client]) -> None:
        """At stop: the latest state to each state client and an answer to each waiting request, without waiting."""
        state = self._state
        for c in clients.values():
            data = b""
            if c.kind == "state" and state is not None:
                data = bytes(c.out) + self._line(state)
            elif c.kind == "control" and not c.closing:
                reply = error("unavailable", "the door loop is stopping")
                if c.request is not None:
                    c.request.answer(reply)  # the first answer wins: the loop's, when it came in time
                    reply = c.request.reply or reply
                data = (json.dumps(reply, ensure_ascii=False) + "\n").encode()
            elif c.kind == "control":
                data = bytes(c.out)
            if data:
                with contextlib.suppress(OSError):
                    c.sock.send(data)
