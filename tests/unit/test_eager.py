"""Eager start: a coroutine runs until its first wait in the caller's turn, the rest in a task.

Both implementations are tested: the hand-driven one (used on 3.11) and whichever
``start_eager`` picks on this interpreter.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys

import pytest

from jetagents._host.eager import _start_manual, start_eager

IMPLS = [pytest.param(_start_manual, id="manual"), pytest.param(start_eager, id="default")]
var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


@pytest.mark.parametrize("start", IMPLS)
async def test_finishes_in_the_callers_turn(start) -> None:
    ran: list[str] = []

    async def quick() -> None:
        ran.append("done")

    assert start(quick(), asyncio.get_running_loop()) is None
    assert ran == ["done"]  # no await between start and here


@pytest.mark.parametrize("start", IMPLS)
async def test_suspends_then_continues_in_a_task(start) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[int] = loop.create_future()
    steps: list[object] = []

    async def waits() -> int:
        steps.append("before")
        got = await fut
        steps.append(got)
        await asyncio.sleep(0)  # a bare yield to the loop
        steps.append("after")
        return got * 2

    task = start(waits(), loop)
    assert task is not None and steps == ["before"]
    fut.set_result(21)
    assert await task == 42
    assert steps == ["before", 21, "after"]


@pytest.mark.parametrize("start", IMPLS)
async def test_errors_before_and_after_the_first_wait(start) -> None:
    loop = asyncio.get_running_loop()

    async def fails_at_once() -> None:
        raise ValueError("early")

    with pytest.raises(ValueError, match="early"):
        start(fails_at_once(), loop)

    async def fails_later() -> None:
        await asyncio.sleep(0.001)
        raise KeyError("late")

    task = start(fails_later(), loop)
    assert task is not None
    with pytest.raises(KeyError, match="late"):
        await task


@pytest.mark.parametrize("start", IMPLS)
async def test_cancellation_reaches_the_coroutine(start) -> None:
    loop = asyncio.get_running_loop()
    seen: list[str] = []

    async def cleans_up() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            await asyncio.sleep(0)  # may still wait while cleaning up
            seen.append("cleaned")
            raise

    task = start(cleans_up(), loop)
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled", "cleaned"]
    assert task.cancelled()


@pytest.mark.parametrize("start", IMPLS)
async def test_context_variables_stay_in_one_context(start) -> None:
    """A variable set before the first wait is reset after it: both in the same context
    (a token reset in another context raises ValueError)."""
    loop = asyncio.get_running_loop()

    async def uses_var() -> str:
        token = var.set("inside")
        await asyncio.sleep(0.001)
        value = var.get()
        var.reset(token)
        return value

    var.set("caller")
    task = start(uses_var(), loop)
    assert var.get() == "caller"  # the caller's context is untouched
    assert task is not None
    assert await task == "inside"


async def test_default_is_native_on_312() -> None:
    from jetagents._host import eager as _eager

    expected = _eager._start_native if sys.version_info >= (3, 12) else _eager._start_manual
    assert start_eager is expected


@pytest.mark.parametrize("start", IMPLS)
async def test_the_first_stretch_runs_as_the_task_that_runs_the_rest(start) -> None:
    """``asyncio.timeout`` and anyio's cancel scopes ask for the current task when entered
    and act on it later: entered before the first wait, they must get the task that runs the
    rest, not the caller (before the fix, on 3.11, the timeout cancelled the caller's task)."""
    import anyio

    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    seen: list[object] = []

    async def timed() -> str:
        seen.append(asyncio.current_task())
        try:
            async with asyncio.timeout(0.05):
                await asyncio.sleep(5)
        except TimeoutError:
            return "timed out"
        return "finished"

    task = start(timed(), loop)
    assert task is not None and seen == [task]
    assert await task == "timed out"
    assert not me.cancelling()  # the caller was not the one cancelled

    async def scoped() -> str:
        with anyio.CancelScope():
            await asyncio.sleep(0.01)
        with anyio.move_on_after(0.05):
            await asyncio.sleep(5)
        return "left both scopes"

    task = start(scoped(), loop)
    assert task is not None
    assert await task == "left both scopes"


async def test_a_task_cancelled_before_its_first_step_cancels_the_coroutine() -> None:
    loop = asyncio.get_running_loop()
    cleaned: list[str] = []

    async def waits() -> None:
        try:
            await asyncio.sleep(5)
        finally:
            cleaned.append("finally ran")

    task = _start_manual(waits(), loop)
    assert task is not None
    task.cancel()  # before the loop ran the task's first step
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["finally ran"]


# The spare task (3.11's hand-driven start): one task stands for many first stretches.


async def test_quick_coroutines_share_one_spare_task_across_turns() -> None:
    loop = asyncio.get_running_loop()
    seen: set[int] = set()

    async def quick() -> None:
        seen.add(id(asyncio.current_task()))

    before = len(asyncio.all_tasks())
    for _ in range(3):
        for _ in range(50):
            assert _start_manual(quick(), loop) is None
        await asyncio.sleep(0)  # the spare's first step: idle, it waits, it does not end
        await asyncio.sleep(0)
    assert len(seen) == 1  # no task made per coroutine, nor per turn
    assert len(asyncio.all_tasks()) == before + 1


@pytest.mark.parametrize("touch", ["keeps", "cancels", "callback"])
async def test_a_stretch_that_touched_its_task_retires_it(touch: str) -> None:
    """A later command must never inherit what an earlier one did to its task: a kept
    reference (which could cancel it later), a pending cancellation, a done callback."""
    loop = asyncio.get_running_loop()
    kept: list[asyncio.Task[object]] = []

    async def toucher() -> None:
        task = asyncio.current_task()
        assert task is not None
        if touch == "keeps":
            kept.append(task)
        elif touch == "cancels":
            task.cancel()
        else:
            task.add_done_callback(lambda _: None)

    first_task: list[object] = []

    async def probe() -> None:
        first_task.append(asyncio.current_task())

    assert _start_manual(probe(), loop) is None
    assert _start_manual(toucher(), loop) is None
    got: list[object] = []

    async def later() -> None:
        task = asyncio.current_task()
        got.append(task)
        await asyncio.sleep(0.001)  # suspends: the task it runs in must be a clean one
        got.append(asyncio.current_task())

    task = _start_manual(later(), loop)
    assert task is not None and got[0] is task
    assert task is not first_task[0]  # a new spare, not the touched one
    await task  # not cancelled by the earlier command's cancel()
    assert got == [task, task]


async def test_a_coroutine_started_within_a_first_stretch_gets_its_own_task() -> None:
    loop = asyncio.get_running_loop()
    fut_inner: asyncio.Future[str] = loop.create_future()
    fut_outer: asyncio.Future[str] = loop.create_future()
    inner_task: list[asyncio.Task[object] | None] = []

    async def inner() -> str:
        return await fut_inner

    async def outer() -> str:
        inner_task.append(_start_manual(inner(), loop))  # suspends in its first stretch
        return await fut_outer + "+outer"

    async def quick() -> None:
        pass

    assert _start_manual(quick(), loop) is None  # a spare stands by: outer() is started in it
    outer_task = _start_manual(outer(), loop)
    assert outer_task is not None and inner_task[0] is not None
    assert inner_task[0] is not outer_task
    fut_inner.set_result("inner")
    fut_outer.set_result("outer")
    assert await inner_task[0] == "inner"
    assert await outer_task == "outer+outer"


async def test_each_command_starts_from_the_callers_context() -> None:
    """A first stretch that sets a variable and finishes leaves nothing for the next command,
    even though both ran as the same spare task."""
    loop = asyncio.get_running_loop()
    var.set("caller")
    seen: list[str] = []

    async def leaves_var_set() -> None:
        var.set("leaked?")

    async def reads_var() -> None:
        seen.append(var.get())
        await asyncio.sleep(0.001)
        seen.append(var.get())

    assert _start_manual(leaves_var_set(), loop) is None
    task = _start_manual(reads_var(), loop)
    assert task is not None
    await task
    assert seen == ["caller", "caller"]


async def test_an_idle_spare_runs_the_rest_of_the_next_coroutine_that_waits() -> None:
    loop = asyncio.get_running_loop()
    tasks: list[int] = []  # ids: a kept task would retire the spare
    var.set("caller")

    async def quick() -> None:
        tasks.append(id(asyncio.current_task()))

    async def waits() -> str:
        tasks.append(id(asyncio.current_task()))
        token = var.set("inside")
        await asyncio.sleep(0.001)
        tasks.append(id(asyncio.current_task()))
        value = var.get()
        var.reset(token)  # the same context as before the wait, or this raises
        return value

    assert _start_manual(quick(), loop) is None
    await asyncio.sleep(0)  # the spare goes idle, waiting on its gate
    await asyncio.sleep(0)
    task = _start_manual(waits(), loop)
    assert task is not None and tasks == [id(task), id(task)]  # the idle spare, now its task
    assert await task == "inside"
    assert tasks == [id(task)] * 3
    assert var.get() == "caller"
    quick2 = _start_manual(quick(), loop)  # the next command gets a new spare
    assert quick2 is None and tasks[-1] != id(task)


async def test_an_idle_spare_touched_by_a_stretch_ends() -> None:
    loop = asyncio.get_running_loop()
    kept: list[asyncio.Task[object]] = []

    async def quick() -> None:
        pass

    async def keeps() -> None:
        task = asyncio.current_task()
        assert task is not None
        kept.append(task)

    assert _start_manual(quick(), loop) is None
    await asyncio.sleep(0)  # idle on its gate
    assert _start_manual(keeps(), loop) is None
    await asyncio.sleep(0)  # retired: the gate opens and the task ends
    await asyncio.sleep(0)
    assert kept[0].done() and not kept[0].cancelled()


async def test_a_context_variable_naming_the_task_does_not_retire_the_spare() -> None:
    """The host marks each action's run with its task in a context variable (autostep's
    ``enter_run``): the stretch's context dies with the stretch, and so does that reference."""
    loop = asyncio.get_running_loop()
    marker: contextvars.ContextVar[object] = contextvars.ContextVar("marker", default=None)
    seen: set[int] = set()

    async def marks() -> None:
        task = asyncio.current_task()
        marker.set(task)
        seen.add(id(task))

    for _ in range(10):
        assert _start_manual(marks(), loop) is None
    assert len(seen) == 1


async def test_a_spare_made_within_a_stretch_does_not_linger() -> None:
    """A coroutine started inside a first stretch, finishing at once, leaves a spare of its
    own; when the outer stretch puts its spare back, the inner one ends (no idle task left)."""
    loop = asyncio.get_running_loop()

    async def inner() -> None:
        pass

    async def outer() -> None:
        assert _start_manual(inner(), loop) is None

    async def quick() -> None:
        pass

    assert _start_manual(quick(), loop) is None  # a spare stands by
    await asyncio.sleep(0)
    before = len(asyncio.all_tasks())
    assert _start_manual(outer(), loop) is None
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == before  # the inner spare ended; the outer one stands by
