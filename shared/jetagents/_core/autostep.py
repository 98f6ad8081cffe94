"""Implicit steps (ADR 0042 §12): inside a running action, a plain client call to another agent
(``request``, ``send``, ``signal``, ``cancel``), a topic publish and a shared-state write are
journaled steps, as if the action had wrapped them in ``self.step``.

``Agent._begin`` marks the run in a context variable: the agent, the run's own list of pending
events (a new list per run, so a mark left behind by an earlier run, or seen by a task that
outlived it, no longer matches) and the task the action runs in. A call made in that task,
outside any step, goes through ``agent.step`` under a name that says what it did
(``call:<type>/<id>.<action>``, ``state.strong:<key>``, ...). Everything else runs plainly:

* code outside an action, or inside a step's function (the step is the unit: a call there is
  part of it, and ``current_step_key()`` is its idempotency key);
* tasks the action spawns (``asyncio.gather``, ``create_task``): steps are numbered in the
  order they start, and concurrent tasks start in an order a re-run need not repeat; their
  entries would also race for the log. Such calls are what they were before: wrap them in
  ``self.step`` to journal them, one at a time;
* a command without a command id, or an agent outside a host (``Agent.step`` runs plainly).

Pure: the context variable and a decision; the host's journal does the rest.

>>> import asyncio
>>> async def plain() -> int:
...     return 3
>>> asyncio.run(auto_step("call:x/y.z", plain))  # no action runs here: just called
3
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from .journal import callee_command_id, current_step_key, effect_key

if TYPE_CHECKING:
    from .stepping import Stepping

T = TypeVar("T")

# (agent, the run's pending-event list, the action's task) of the action running in this
# context. The task by weak reference: the mark lives in the task's own context, and a strong
# one made every journaled command a reference cycle (task -> context -> mark -> task) that
# only the garbage collector could free, with the run's events in it
_RUN: ContextVar[tuple[Any, Any, weakref.ref[asyncio.Task[Any]] | None] | None] = ContextVar(
    "jetagents_action_run", default=None
)


def enter_run(agent: Stepping, pending: list[Any]) -> None:
    """Mark the action ``agent`` starts now (its pending list is this run's) as running in
    the current task. Not reset: the next run replaces it, and a stale mark never matches.

    A run that cannot journal (no command id, as a call without one; no host journal) is
    not marked: ``running_agent`` would say None for it anyway, and a mark left by an
    earlier run names another pending list. Most calls are such runs, and the mark (the
    current task, a context variable) is a good part of what starting an action costs."""
    ctx = agent.ctx
    if ctx.steps is None or not ctx.command_id:
        return
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop: an action driven by hand in a test
        task = None
    _RUN.set((agent, pending, None if task is None else weakref.ref(task)))


def running_agent() -> Stepping | None:
    """The agent whose action runs in this task, outside any step; None otherwise."""
    run = _RUN.get()
    if run is None or current_step_key() is not None:
        return None
    agent, pending, task_ref = run
    if agent._pending is not pending or pending is None:
        return None  # the run is over (or parked behind a re-entrant call)
    ctx = agent.ctx
    if ctx.steps is None or not ctx.command_id:
        return None  # nothing could re-run it from a journal: ``step`` would run it plainly
    try:
        if asyncio.current_task() is not (None if task_ref is None else task_ref()):
            return None  # a task the action spawned
    except RuntimeError:
        return None
    return agent  # type: ignore[no-any-return]


async def auto_step(name: str, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
    """``await fn(*args, **kwargs)``, as the running action's step ``name`` when there is one."""
    agent = running_agent()
    if agent is None:
        return await fn(*args, **kwargs)
    result: T = await agent.step(name, fn, *args, **kwargs)
    return result


def step_command_id(given: str | None) -> str | None:
    """The command id of a call made inside a step: ``given``, else one derived from the
    step's key (a re-run's call is then answered from the callee's record); None outside."""
    if given:
        return given
    key = effect_key()
    return None if key is None else callee_command_id(key)
