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
on 3.11 it is done here: the task is made first, made the loop's *current task* while the
coroutine is driven by hand until it suspends (what 3.12 does with ``_swap_current_task``),
and then resumes the suspended coroutine exactly as it would have. Code in the first stretch
that asks for its task (``asyncio.timeout``, anyio's cancel scopes in httpx, the mcp SDK,
pydantic-ai) gets the task that runs the rest: without the swap, an action's
``asyncio.timeout`` cancelled the *caller's* task (the host's call intake) and an anyio
scope entered there could not be left.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from asyncio import tasks as _tasks
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["start_eager"]


_NOT_STARTED = object()


class _Rest(Coroutine[Any, Any, Any]):
    """What the task runs after the first stretch: the suspended coroutine, resumed.

    A coroutine object of its own rather than ``async def``: a task cancelled before its
    first step throws into its coroutine before that has run a line, and an ``async def``
    would die there without telling the suspended coroutine (its ``finally`` would never
    run); this one hands the exception on."""

    __slots__ = ("coro", "pending")

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.coro = coro
        self.pending: Any = _NOT_STARTED  # what the first stretch yielded; None once handed over

    def send(self, value: Any) -> Any:
        pending = self.pending
        if pending is not None:
            self.pending = None
            if pending is _NOT_STARTED:  # the first stretch finished (or raised): nothing left
                raise StopIteration(None)
            return pending  # the task waits on what the coroutine was waiting on
        return self.coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        if self.pending is _NOT_STARTED:
            self.pending = None
            raise typ if val is None else val
        self.pending = None
        if val is None and tb is None:
            return self.coro.throw(typ)
        return self.coro.throw(typ, val, tb)  # pragma: no cover - the old signature

    def close(self) -> None:
        self.pending = None
        self.coro.close()

    def __await__(self) -> Generator[Any, None, Any]:  # pragma: no cover - only a task drives it
        raise TypeError("driven by its task only")


def _start_manual(coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop) -> asyncio.Task[Any] | None:
    ctx = contextvars.copy_context()
    rest = _Rest(coro)
    task: asyncio.Task[Any] = loop.create_task(rest, context=ctx)
    caller = asyncio.current_task(loop)
    enter, leave = _tasks._enter_task, _tasks._leave_task  # private: 3.11 has no public way
    if caller is not None:
        leave(loop, caller)
    enter(loop, task)
    try:
        rest.pending = ctx.run(coro.send, None)
    except StopIteration:
        return None  # the task finishes at its first step without running anything
    except BaseException:
        coro.close()
        raise
    finally:
        leave(loop, task)
        if caller is not None:
            enter(loop, caller)
    return task


def _start_native(coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop) -> asyncio.Task[Any] | None:
    task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg]
    if task.done():
        task.result()  # re-raise what the coroutine raised; nothing keeps the task
        return None
    return task


start_eager = _start_native if sys.version_info >= (3, 12) else _start_manual
