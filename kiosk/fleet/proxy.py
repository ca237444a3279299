"""An in-process TCP proxy in front of the broker, for cutting one door off the network on purpose.

``TcpProxy`` listens on a port of its own and copies bytes both ways to ``target``. ``partition()`` drops every
connection it carries (reset) and stops listening, so new ones are refused (ECONNREFUSED: a link that is down behind
a firewall that rejects); ``heal()`` listens again on the same port. The fleet tests and ``python -m tools fleet-sim``
put one in front of each door they cut off, so the door's own client sees a real network failure, not a mock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger(__name__)

CHUNK = 65536


class TcpProxy:
    """``127.0.0.1:<port>`` -> ``target``; ``start()`` binds (port 0: a free one), ``close()`` is safe twice."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.host, self.port = host, port
        self.partitioned = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def partition(self) -> None:
        """Drop every connection now and refuse new ones until ``heal``."""
        self.partitioned = True
        if self._server is not None:
            self._server.close()  # no more listening socket: connects are refused
            self._server = None
        for w in list(self._writers):
            _abort(w)
        self._writers.clear()

    async def heal(self) -> None:
        """Listen again, on the same port."""
        self.partitioned = False
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        """Safe to call twice."""
        self.partition()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.partitioned:  # accepted just before the partition
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:  # the broker is down: the client sees what it would see without the proxy
            _abort(writer)
            return
        if self.partitioned:  # partitioned while connecting
            _abort(writer)
            _abort(up_writer)
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                _abort(w)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError, RuntimeError):
        pass
    finally:
        _abort(writer)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close at once (RST, not a polite FIN after the buffer drains): what a dropped link looks like."""
    with contextlib.suppress(Exception):
        writer.transport.abort()
