"""Stopping the shared state's background tasks for good."""

from __future__ import annotations

import asyncio
from typing import Any


async def stop_tasks(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until they are really done.

    One ``cancel()`` is not enough on Python 3.11: a task cancelled while inside
    ``asyncio.wait_for`` (every ``nc.request`` of nats-py) loses the cancellation if the
    awaited reply arrives in the same loop iteration, and a ``while True`` loop then goes on
    for ever (a test hung in ``close()`` that way). So cancel again until it ends."""
    while pending := [t for t in tasks if not t.done()]:
        for t in pending:
            t.cancel()
        await asyncio.wait(pending, timeout=0.2)
    for t in tasks:
        if not t.cancelled():
            t.exception()  # retrieved: never "exception was never retrieved" at shutdown
