"""Start a coroutine at once, in the caller's turn of the event loop.

A command for an idle agent on an idle host would otherwise wait one extra turn of the
event loop: queued for a worker task, which wakes up later to run it. Most commands for an
agent already in memory finish without ever waiting on I/O (a read) or wait only on the
event append; running them until their first real wait right where they arrive saves that
turn, which is a good part of a core request/reply's latency (see docs/adr/0031).

``start_eager(coro, loop)`` runs ``coro`` until it first suspends. If it finishes, nothing
else happens and ``None`` is returned. If it suspends, the rest runs in a task, which is
returned. The coroutine runs in its own copy of the context from the start, as it would in
a task (context variables set before the first suspension are reset in the same context).

On Python 3.12+ this is the event loop's own eager start (``Task(..., eager_start=True)``);
on 3.11 it is done here by driving the coroutine by hand until it suspends and then handing
the suspended coroutine to a task, which resumes it exactly as the task would have.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["start_eager"]


class _Suspended:
    """Awaitable that continues a coroutine which already yielded ``pending`` to the loop."""

    __slots__ = ("coro", "pending")

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self.coro = coro
        self.pending = pending

    def __await__(self) -> Generator[Any, None, Any]:
        coro, pending = self.coro, self.pending
        self.pending = None
        while True:
            try:
                yield pending  # the task waits on what the coroutine was waiting on
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - cancellation and errors go to the coroutine
                try:
                    pending = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
                continue
            try:
                pending = coro.send(None)
            except StopIteration as stop:
                return stop.value


async def _resume(coro: Coroutine[Any, Any, Any], pending: Any) -> Any:
    return await _Suspended(coro, pending)


def _start_manual(coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop) -> asyncio.Task[Any] | None:
    ctx = contextvars.copy_context()
    try:
        pending = ctx.run(coro.send, None)
    except StopIteration:
        return None
    except BaseException:
        coro.close()
        raise
    return loop.create_task(_resume(coro, pending), context=ctx)


def _start_native(coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop) -> asyncio.Task[Any] | None:
    task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg]
    if task.done():
        task.result()  # re-raise what the coroutine raised; nothing keeps the task
        return None
    return task


start_eager = _start_native if sys.version_info >= (3, 12) else _start_manual
