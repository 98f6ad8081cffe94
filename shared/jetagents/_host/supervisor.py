"""The host's background tasks, in named groups, under one owner (ADR 0040 section 5).

Every task the host starts belongs to a group ("coordinator", "pullers", "workers", ...), so
``Host.stop`` can end them group by group in the order it needs: cancel the coordinator first,
then the loops and workers together, and give the short side tasks (snapshots, refusals,
acknowledgements) a bounded time to finish rather than cutting them off. A task that crashes
is logged once, with its group; a cancelled task is not a crash, and cancellation is never
caught here (the waits below let a cancelled ``stop`` be cancelled).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Hashable, Iterable
from typing import Any

import structlog

log = structlog.get_logger("jetagents.host")


class _Group:
    """The live tasks of one group; a finished task leaves it at once."""

    __slots__ = ("_log", "keyed", "name", "tasks")

    def __init__(self, name: str, logger: Any) -> None:
        self.name = name
        self.tasks: set[asyncio.Task[Any]] = set()
        self.keyed: dict[Hashable, asyncio.Task[Any]] = {}
        self._log = logger

    def done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()  # retrieved here, so asyncio does not report it again at exit
        if exc is not None:
            self._log.error("task_crashed", group=self.name, error=repr(exc), exc_info=exc)


class Supervisor:
    """Starts, tracks and stops the host's tasks. ``stopping``/``started`` are the host's
    lifecycle flags: the loops it supervises read them to know when to end."""

    def __init__(self, logger: Any = None) -> None:
        self._log = logger if logger is not None else log
        self._groups: dict[str, _Group] = {}
        self.started = False
        self.stopping = False

    def _group(self, name: str) -> _Group:
        group = self._groups.get(name)
        if group is None:
            group = self._groups[name] = _Group(name, self._log)
        return group

    def spawn(self, group: str, coro: Coroutine[Any, Any, Any], *, key: Hashable = None) -> asyncio.Task[Any]:
        """Run ``coro`` as a task of ``group``; with a ``key``, the one task of that key
        (``cancel_key`` ends it)."""
        return self.adopt(group, asyncio.create_task(coro), key=key)

    def adopt(self, group: str, task: asyncio.Task[Any], *, key: Hashable = None) -> asyncio.Task[Any]:
        """Supervise a task started elsewhere (an eagerly started worker)."""
        g = self._groups.get(group) or self._group(group)  # the lookup inline: once per worker task
        g.tasks.add(task)
        task.add_done_callback(g.done)
        if key is not None:
            g.keyed[key] = task

            def forget(t: asyncio.Task[Any]) -> None:
                if g.keyed.get(key) is t:
                    del g.keyed[key]

            task.add_done_callback(forget)
        return task

    def tasks(self, *groups: str) -> list[asyncio.Task[Any]]:
        return [t for name in groups if (g := self._groups.get(name)) is not None for t in g.tasks]

    async def cancel_key(self, group: str, key: Hashable) -> None:
        """Cancel the task of ``key`` in ``group`` (if any) and wait until it has ended."""
        g = self._groups.get(group)
        task = g.keyed.pop(key, None) if g is not None else None
        if task is not None:
            await _cancel_and_wait([task])

    async def cancel(self, *groups: str) -> None:
        """Cancel every task of ``groups`` and wait until all have ended."""
        await _cancel_and_wait(self.tasks(*groups))

    async def drain(self, group: str, timeout_s: float) -> None:
        """Let the tasks of ``group`` finish, for at most ``timeout_s``; those still running
        then are cancelled (the timeout cancels the wait, and the wait its tasks)."""
        pending = self.tasks(group)
        if not pending:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*pending, return_exceptions=True)
        except TimeoutError:
            self._log.debug("drain_timed_out", group=group, left=sum(not t.done() for t in pending))


async def _cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    if tasks:
        # asyncio.wait, not gather: it raises nothing the tasks raised, and a cancellation of
        # the waiter itself propagates (it is never mistaken for one of theirs)
        await asyncio.wait(tasks)
