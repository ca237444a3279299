"""systemd notification protocol (sd_notify) without a dependency: READY, WATCHDOG pings, STATUS, STOPPING.

Only active when ``NOTIFY_SOCKET`` is set (i.e. under a ``Type=notify`` unit). Watchdog pings are sent at most
every half ``WATCHDOG_USEC``, and only by the frame loop, so a stalled loop stops pinging and systemd restarts it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Notifier:
    def __init__(
        self,
        address: str | None = None,
        *,
        watchdog_usec: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        usec = watchdog_usec if watchdog_usec is not None else os.environ.get("WATCHDOG_USEC")
        self.watchdog_interval_s = int(usec) / 1e6 / 2 if usec and usec.isdigit() and int(usec) > 0 else None
        self._clock = clock
        self._last_ping = -float("inf")
        self._sock: socket.socket | None = None
        self._failed = False
        self._silenced = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, message: str) -> bool:
        """Send one datagram; never raises (a broken notify socket must not stop the door loop)."""
        if not self.address or self._failed or self._silenced:
            return False
        addr = self.address
        if addr.startswith("@"):  # abstract namespace socket
            addr = "\0" + addr[1:]
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode("utf-8"), addr)
            return True
        except OSError as exc:
            self._failed = True
            log.warning("sd_notify to %s failed (%s); notifications disabled", self.address, exc)
            return False

    def ready(self, status: str = "") -> None:
        self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> None:
        """Ping the watchdog if due (cheap to call every frame)."""
        if self.watchdog_interval_s is None:
            return
        now = self._clock()
        if now - self._last_ping >= self.watchdog_interval_s:
            self._last_ping = now
            self.send("WATCHDOG=1")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def silence(self) -> None:
        """Send nothing more, ever (the internal watchdog gave up on the loop: no ping may hide that)."""
        self._silenced = True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
