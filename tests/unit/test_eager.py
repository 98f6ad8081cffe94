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
