"""Run an action with a time limit, cancelling it the way ``Task.cancel`` would.

``asyncio.timeout`` cancels the *task* that entered it. A host runs a command eagerly, in
the turn of the event loop it arrives in (docs/adr/0031): on Python 3.11 the first steps of
an action run before any task of its own exists, inside whichever task received the
message, so ``asyncio.timeout`` entered there would later cancel the wrong task.
:class:`Deadline` instead drives the action's coroutine itself and, when the time is up,
cancels the future the action is waiting on, which is what ``Task.cancel`` does, so the
action sees ``CancelledError`` at its current ``await`` whichever task runs it.

The timer is armed only when the action first waits, and the caller may run the action's
first stretch itself (``first``): an action that finishes without waiting (most of them)
needs no ``Deadline`` at all.

What the caller sees (docs/adr/0036):

* the action returns in time: its result;
* it is still running at the deadline: ``CancelledError`` is delivered once, at its current
  ``await``; whatever it does then (lets it propagate, turns it into another exception, or
  swallows it and returns a result), :class:`Overrun` is raised in place of its outcome, so
  the host keeps none of its events;
* it swallows the cancellation and keeps waiting: it cannot be stopped (cancellation in
  asyncio is cooperative); ``on_late`` is called once, ``late_s`` after the deadline, so the
  host can log it, and its agent stays busy until it returns.

A cancellation from outside (the host stopping) is never mistaken for an overrun: it
propagates as ``CancelledError``.

Measuring it (ADR 0059): ``wall_s`` is the time from its first step to its outcome; with
``cpu=True``, ``cpu_s`` adds the thread CPU clock around each slice it runs between two
awaits (its own code only, not what other tasks run while it waits); ``done(self)`` is called
once it has ended, whatever the outcome.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from .._core.clock import Cancellable, Timers

__all__ = ["NOT_RUN", "Deadline", "Overrun"]


NOT_RUN: Any = object()  # no first stretch run by the caller (``None`` is a yield's value)


class Overrun(Exception):
    """The action was still running at its deadline; raised instead of its outcome."""


class Deadline:
    """``await Deadline(coro, loop, when)``: ``coro``'s outcome, or :class:`Overrun`
    if it had not finished by ``when`` (``loop.time()`` seconds). ``loop`` is the event loop,
    or any other ``Timers`` (the simulation's ``ManualClock``)."""

    __slots__ = (
        "_coro",
        "_cpu",
        "_done",
        "_first",
        "_handle",
        "_late",
        "_loop",
        "_on_late",
        "_started",
        "_thrown",
        "_waiting",
        "_when",
        "cpu_s",
        "expired",
        "late_s",
        "tag",
        "wall_s",
    )

    def __init__(
        self,
        coro: Coroutine[Any, Any, Any],
        loop: Timers,
        when: float,
        *,
        late_s: float = 5.0,
        on_late: Callable[[], None] | None = None,
        cpu: bool = False,
        done: Callable[[Deadline], None] | None = None,
        tag: Any = None,
        started: float | None = None,
        first: Any = NOT_RUN,
    ) -> None:
        """``started``: the ``loop.time()`` its wall time counts from, when the caller read
        it just now (to compute ``when``); else read as it starts. ``first``: what ``coro``
        yielded when the caller ran its first stretch itself (its CPU is then not counted)."""
        self._coro = coro
        self._loop = loop
        self._when = when
        self._handle: Cancellable | None = None
        self._late: Cancellable | None = None
        self._waiting: Any = None
        self._thrown = False
        self._on_late = on_late
        self.late_s = late_s
        self.expired = False
        self._cpu = cpu
        self._done = done
        self.tag = tag  # the caller's, for ``done``
        self.wall_s = 0.0
        self.cpu_s = 0.0
        self._started = started
        self._first = first

    def _expire(self) -> None:
        self.expired = True
        waiting = self._waiting
        cancel = getattr(waiting, "cancel", None)
        if cancel is not None:
            cancel()  # the task wakes up and throws CancelledError into the action
        if self._on_late is not None:
            self._late = self._loop.call_later(self.late_s, self._on_late)

    def _disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self._late is not None:
            self._late.cancel()

    def __await__(self) -> Generator[Any, None, Any]:
        coro = self._coro
        error: BaseException | None = None
        cpu = self._cpu
        started = self._started
        if started is None:
            started = self._loop.time()
        t0 = 0.0
        pending = self._first  # NOT_RUN, or where the caller's own first stretch stopped
        self._first = NOT_RUN
        try:
            while True:
                if pending is NOT_RUN:
                    if self.expired and not self._thrown:
                        self._thrown = True
                        if error is None:  # the future could not be cancelled (already done)
                            error = asyncio.CancelledError("the action's deadline passed")
                    if cpu:
                        t0 = time.thread_time()
                    try:
                        pending = coro.send(None) if error is None else coro.throw(error)
                    except StopIteration as stop:
                        result = stop.value
                        break
                    except BaseException as exc:
                        if self.expired and not _cancelled_from_outside():
                            raise Overrun() from exc
                        raise
                    finally:
                        if cpu:
                            self.cpu_s += time.thread_time() - t0
                    error = None
                if self._handle is None:
                    self._handle = self._loop.call_at(self._when, self._expire)
                self._waiting = pending
                try:
                    yield pending
                except GeneratorExit:
                    coro.close()
                    raise
                except BaseException as exc:  # noqa: BLE001 - delivered to the action, as a task would
                    error = exc
                finally:
                    self._waiting = None
                pending = NOT_RUN
        finally:
            self._disarm()
            if self._done is not None:
                self.wall_s = self._loop.time() - started
                self._done(self)
        if self.expired:  # it swallowed the cancellation and returned: too late all the same
            raise Overrun()
        return result


def _cancelled_from_outside() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
