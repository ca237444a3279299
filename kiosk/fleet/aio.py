"""The asyncio steps the hub and a door's fleet agent share: connecting while a stop may come, and winding down."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterable
from typing import Any


async def unless_stopped(work: Coroutine[Any, Any, Any], stop: asyncio.Event) -> bool:
    """Run ``work`` until it ends (True; its error raised) or ``stop`` is set first (False; ``work`` cancelled).
    nats-py retries an unreachable broker for ever (``max_reconnect_attempts=-1``): a stop must not wait for it."""
    task = asyncio.create_task(work)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return False
    task.result()
    return True


async def wind_down(tasks: Iterable[asyncio.Task[Any]], subs: Iterable[Any], nc: Any) -> None:
    """Cancel ``tasks`` and wait for each (bounded), unsubscribe ``subs``, close the connection ``nc``.

    The loops also end by themselves once their stop flag is set: on Python 3.11 ``asyncio.wait_for`` (inside
    nats-py's fetch and request) can swallow a cancel that lands as its message arrives, and a loop that swallowed
    its one cancel ran for ever (seen in fleet-sim with 100 doors a process)."""
    tasks = list(tasks)
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(t, 10)
    for sub in subs:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sub.unsubscribe(), 2)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.close(), 5)
