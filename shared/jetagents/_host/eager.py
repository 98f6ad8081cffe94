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
on 3.11 it is done here: a task is made current while the coroutine is driven by hand until it
suspends (what 3.12 does with ``_swap_current_task``), and that task then resumes the
suspended coroutine exactly as it would have. Code in the first stretch that asks for its
task (``asyncio.timeout``, anyio's cancel scopes in httpx, the mcp SDK, pydantic-ai) gets the
task that runs the rest: without it, an action's ``asyncio.timeout`` cancelled the *caller's*
task (the host's call intake) and an anyio scope entered there could not be left.

Most commands finish in their first stretch, and making a task for each cost about a quarter
of a host's CPU per command (ADR 0031, "Measured: the host side"). So on 3.11 the task is a
*spare*: made once, it stands as the current task for one first stretch after another (idle,
it waits on a future of its own, costing nothing per turn) until a coroutine suspends in it;
it then runs that coroutine's rest, and the next command makes a new spare. A first stretch
that did anything to the spare a later one could notice (kept a reference to it, cancelled it,
added a callback) retires it: the next command gets a new one. So a command that finishes
where it arrives makes no task, and one that waits costs what it did before: one task.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from asyncio import tasks as _tasks
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["start_eager"]


_NOTHING = object()  # no first stretch's wait to hand on


class _Rest(Coroutine[Any, Any, Any]):
    """The spare task's coroutine: it waits (on a gate) until a suspended coroutine is handed
    to it, then runs that coroutine's rest, each step in the context its first stretch ran in.

    A coroutine object of its own rather than ``async def``: a task cancelled before its
    first step throws into its coroutine before that has run a line, and an ``async def``
    would die there without telling the suspended coroutine (its ``finally`` would never
    run); this one hands the exception on."""

    __slots__ = ("coro", "ctx", "gate", "gone", "loop", "pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.coro: Coroutine[Any, Any, Any] | None = None
        self.ctx: contextvars.Context | None = None
        self.pending: Any = _NOTHING  # what the first stretch waits on, until the task takes it
        self.gate: asyncio.Future[None] | None = None  # what the idle spare waits on
        self.gone = False  # retired, or ended: never to be handed a coroutine

    def hand(self, coro: Coroutine[Any, Any, Any], ctx: contextvars.Context, pending: Any) -> None:
        """Give the task a coroutine suspended on ``pending`` after its first stretch."""
        self.coro, self.ctx, self.pending = coro, ctx, pending
        self._open()

    def retire(self) -> None:
        """End the task without a coroutine (at its next step)."""
        self.gone = True
        self._open()

    def _open(self) -> None:
        gate = self.gate
        if gate is not None and not gate.done():
            gate.set_result(None)

    def send(self, value: Any) -> Any:
        coro = self.coro
        if coro is None:
            if self.gone:
                raise StopIteration(None)
            # idle past its first step: wait, at no cost per turn, for a coroutine (or the end)
            gate = self.gate = self.loop.create_future()
            gate._asyncio_future_blocking = True
            return gate
        pending = self.pending
        if pending is not _NOTHING:
            self.pending = _NOTHING
            return pending  # the task waits on what the coroutine was waiting on
        return self.ctx.run(coro.send, value)  # type: ignore[union-attr]

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        coro = self.coro
        if coro is None:  # cancelled while idle (the loop is closing): it ends
            self.gone = True
            raise typ if val is None else val
        self.pending = _NOTHING
        if val is None and tb is None:
            return self.ctx.run(coro.throw, typ)  # type: ignore[union-attr]
        return self.ctx.run(coro.throw, typ, val, tb)  # type: ignore[union-attr]  # pragma: no cover - old signature

    def close(self) -> None:
        self.gone = True
        self.pending = _NOTHING
        if self.coro is not None:
            self.coro.close()

    def __await__(self) -> Generator[Any, None, Any]:  # pragma: no cover - only a task drives it
        raise TypeError("driven by its task only")


# The task standing by for the next first stretch on one loop, with its coroutine. A pair,
# not an object of its own: a command that waits takes the spare, so one is made per such
# command (the task does not hold the pair; a _Rest holding its task would be a cycle)
_spare: tuple[_Rest, asyncio.Task[Any]] | None = None


# private: 3.11 has no public way to make a task current (3.12's ``_swap_current_task``); its
# table of current tasks (the C one), written directly: this runs for every command
_current_tasks: dict[asyncio.AbstractEventLoop, asyncio.Task[Any]] = _tasks._current_tasks  # type: ignore[attr-defined]
_copy_context, _refcount = contextvars.copy_context, sys.getrefcount  # likewise


def _start_manual(coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop) -> asyncio.Task[Any] | None:
    global _spare
    spare = _spare
    if spare is not None and spare[0].loop is loop and not spare[0].gone:
        rest, task = spare
    else:
        rest = _Rest(loop)
        task = loop.create_task(rest)
    _spare = None  # taken: a coroutine started from within this stretch gets a spare of its own
    ctx = _copy_context()
    caller = _current_tasks.get(loop)
    refs = _refcount(task)
    _current_tasks[loop] = task
    try:
        pending = ctx.run(coro.send, None)
    except StopIteration:
        pending = _NOTHING  # finished in its first stretch
    except BaseException:  # whatever the stretch did to the task, the next one gets a new one
        rest.retire()
        coro.close()
        raise
    finally:
        if caller is None:
            del _current_tasks[loop]
        else:
            _current_tasks[loop] = caller
    if pending is _NOTHING:
        # the stretch's own context may name the task (the host's action marker does): with
        # the context gone so is that reference, unless something kept the context alive
        del ctx
        refs_after = _refcount(task)  # alone: as an argument next to task it counts one more
        # untouched: nothing kept a reference to the task (the counts are taken in this frame),
        # no cancellation is pending, no callback was added: the next stretch may use it
        if refs_after == refs and not task._must_cancel and task._callbacks is None and task.cancelling() == 0:  # type: ignore[attr-defined]
            if _spare is not None:  # a coroutine started within the stretch left its own spare
                _spare[0].retire()
            _spare = (rest, task)
        else:
            rest.retire()
        return None
    rest.hand(coro, ctx, pending)
    return task


def _start_native(coro: Coroutine[Any, Any, Any], loop: asyncio.AbstractEventLoop) -> asyncio.Task[Any] | None:
    task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg]
    if task.done():
        task.result()  # re-raise what the coroutine raised; nothing keeps the task
        return None
    return task


start_eager = _start_native if sys.version_info >= (3, 12) else _start_manual
