"""Action deadlines (``_deadline.Deadline``), the event-loop watchdog and the time-limit options.

The deadline is driven by the real event loop with short limits; each test's assertion is
about the outcome (cancelled or not, what was kept), never about how long something took.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pydantic import BaseModel

from jetagents import Agent, HostSettings, action
from jetagents._host.deadline import Deadline, Overrun
from jetagents._host.eager import _start_manual
from jetagents._obs.watchdog import LoopWatchdog


def _in(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_in_time_returns_the_result() -> None:
    async def quick() -> int:
        await asyncio.sleep(0)
        return 7

    assert await Deadline(quick(), asyncio.get_running_loop(), _in(30)) == 7


async def test_an_action_that_never_waits_arms_no_timer() -> None:
    async def sync() -> int:
        return 1

    d = Deadline(sync(), asyncio.get_running_loop(), _in(-1))  # already past: still fine, it never waited
    assert await d == 1
    assert d._handle is None


async def test_a_first_stretch_run_by_the_caller_goes_on_where_it_stopped() -> None:
    """The host runs an action's first stretch itself (most finish there, with no Deadline);
    one that waits is handed on with what it waits on (``first``): it resumes there, once."""
    steps: list[str] = []

    async def two_waits() -> int:
        steps.append("first")
        await asyncio.sleep(0)
        steps.append("second")
        await asyncio.sleep(0)
        return 9

    loop = asyncio.get_running_loop()
    coro = two_waits()
    first = coro.send(None)
    assert steps == ["first"]
    d = Deadline(coro, loop, _in(30), first=first)
    assert await d == 9
    assert steps == ["first", "second"]
    assert d._handle is not None  # it waited: the timer was armed at that first wait


async def _hang(seen: list[str]) -> None:
    """An action that waits for ever, noting the cancellation it gets."""
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        seen.append("cancelled")
        raise


async def test_a_first_stretch_run_by_the_caller_is_still_cancelled_at_the_limit() -> None:
    seen: list[str] = []
    loop = asyncio.get_running_loop()
    coro = _hang(seen)
    first = coro.send(None)
    with pytest.raises(Overrun):
        await Deadline(coro, loop, _in(0.05), first=first)
    assert seen == ["cancelled"]


async def test_a_hanging_action_is_cancelled_at_its_wait() -> None:
    seen: list[str] = []
    with pytest.raises(Overrun):
        await Deadline(_hang(seen), asyncio.get_running_loop(), _in(0.05))
    assert seen == ["cancelled"]


async def test_swallowing_the_cancellation_still_overruns() -> None:
    async def stubborn() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return "I ignore cancellation"
        return "finished"

    with pytest.raises(Overrun):
        await Deadline(stubborn(), asyncio.get_running_loop(), _in(0.05))


async def test_an_exception_raised_because_of_the_cancel_is_an_overrun() -> None:
    async def wraps() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            raise RuntimeError("client closed") from None

    with pytest.raises(Overrun):
        await Deadline(wraps(), asyncio.get_running_loop(), _in(0.05))


async def test_a_cancel_from_outside_is_not_an_overrun() -> None:
    loop = asyncio.get_running_loop()
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    async def runner() -> Any:
        return await Deadline(hang(), loop, loop.time() + 30)

    task = asyncio.create_task(runner())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_late_callback_fires_for_an_action_that_keeps_running() -> None:
    loop = asyncio.get_running_loop()
    late = asyncio.Event()
    release = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await release.wait()  # swallows it and keeps the agent

    d = Deadline(stubborn(), loop, loop.time() + 0.05, late_s=0.05, on_late=late.set)
    task = asyncio.create_task(_await(d))
    await asyncio.wait_for(late.wait(), 30)
    release.set()
    with pytest.raises(Overrun):
        await task


async def _await(d: Deadline) -> Any:
    return await d


async def test_eager_started_on_another_task_cancels_the_action_not_that_task() -> None:
    """3.11's hand-driven eager start runs the first step inside the caller's task: the
    deadline must cancel the action, not the caller (what asyncio.timeout would do)."""
    loop = asyncio.get_running_loop()
    outcome: list[str] = []

    async def hang() -> None:
        await asyncio.Event().wait()

    async def worker() -> None:
        try:
            await Deadline(hang(), loop, loop.time() + 0.05)
        except Overrun:
            outcome.append("overrun")

    task = _start_manual(worker(), loop)
    assert task is not None
    await asyncio.wait_for(task, 30)
    await asyncio.sleep(0.1)  # this (the caller's) task was not cancelled
    assert outcome == ["overrun"]


def test_time_limit_options() -> None:
    class S(BaseModel):
        n: int = 0

    class Slow(Agent[S]):
        type_name = "slowtype"
        state_type = S
        action_timeout_s = 2.5

        @action(timeout_s=0.5)
        async def quick(self) -> None: ...

        @action
        async def default(self) -> None: ...

    spec = Slow.__jetagents_spec__
    assert spec.action_timeout_s == 2.5
    assert spec.actions["quick"].timeout_s == 0.5
    assert spec.actions["default"].timeout_s is None
    with pytest.raises(TypeError):
        action(timeout_s=0)
    with pytest.raises(TypeError):

        class Bad(Agent[S]):
            type_name = "badtype"
            state_type = S
            action_timeout_s = -1.0

    s = HostSettings()
    assert s.action_timeout_s > 0 and s.max_mailbox_per_agent < s.max_inflight and s.loop_block_threshold_s > 0


async def test_watchdog_counts_a_blocked_loop() -> None:
    blocks: list[str] = []
    lags: list[float] = []
    dog = LoopWatchdog(0.2, name="t", on_block=lambda: blocks.append("b"), on_unblock=lags.append)
    dog.start(asyncio.get_running_loop())
    try:
        time.sleep(0.8)  # blocks the loop: the point of the test
        for _ in range(500):  # the late beat comes within a few intervals
            if lags:
                break
            await asyncio.sleep(0.02)
        assert dog.blocked_total >= 1
        assert len(blocks) == dog.blocked_total
        assert dog.max_blocked_s >= 0.2 and lags and max(lags) >= 0.2
        assert not dog.blocked_now
        snap = dog.snapshot()
        assert snap["blocked_total"] == dog.blocked_total and snap["threshold_s"] == 0.2
    finally:
        dog.stop()


async def test_watchdog_is_quiet_on_a_free_loop() -> None:
    dog = LoopWatchdog(5.0, name="quiet")
    dog.start(asyncio.get_running_loop())
    try:
        for _ in range(10):
            await asyncio.sleep(0.01)
        assert dog.blocked_total == 0 and dog.snapshot()["blocked_now"] is False
    finally:
        dog.stop()


# -- the mailbox bound and the order of handed-back commands (no NATS needed: nothing is sent) --
def _stream_work(cseq: int) -> Any:
    from jetagents._core.command import Command, Kind

    return Command(Kind.STREAM, "agt.p.0.counter.c", "counter", "c", 0, b"{}", 0.0, {}, stream_seq=cseq)


async def test_a_handed_back_command_is_never_overtaken() -> None:
    from collections import deque

    from jetagents import Registry
    from jetagents._core.ids import AgentId
    from jetagents._host.host import Activation, Host
    from jetagents.examples import Counter

    host = Host(HostSettings(max_mailbox_per_agent=2), Registry([Counter]))
    host.scheduler.loop = asyncio.get_running_loop()
    act = Activation(AgentId("counter", "c"), Counter.__jetagents_spec__, scheduled=True)
    act.mailbox = deque([_stream_work(1), _stream_work(2)])
    host.activations["counter.c"] = act

    def dispatch(cseq: int) -> Any:
        work = _stream_work(cseq)
        host.scheduler.dispatch(work)
        return work

    dispatch(3)  # the mailbox is full: handed back
    assert [w.stream_seq for w in act.mailbox] == [1, 2] and act.held is not None and set(act.held) == {3}
    act.mailbox.popleft()  # room again, but 3 has not come back yet
    dispatch(4)  # would overtake 3: handed back too
    assert [w.stream_seq for w in act.mailbox] == [2] and set(act.held) == {3, 4}
    again = dispatch(3)  # 3 comes back: queued, and its hand-back is not a failed delivery
    assert again.busy_naks == 1
    dispatch(4)  # the mailbox [2, 3] is full again: handed back a second time
    assert act.held is not None and act.held[4][0] == 2
    act.mailbox.popleft()
    assert dispatch(4).busy_naks == 2
    assert [w.stream_seq for w in act.mailbox] == [3, 4] and act.held is None
    await asyncio.sleep(0)  # the hand-backs (-NAK) are sent by side tasks
    assert host.stats["agent_busy"] == 3 and host.stats["naks"] == 3
    assert host.scheduler.inflight_count == 2  # the refused ones left the in-flight count at once


async def test_a_call_to_a_busy_agent_is_refused_at_once() -> None:
    from collections import deque

    from jetagents import Registry
    from jetagents._core.command import Command, Kind
    from jetagents._core.ids import AgentId
    from jetagents._host.host import Activation, Host
    from jetagents.examples import Counter

    host = Host(HostSettings(max_mailbox_per_agent=1), Registry([Counter]))
    host.scheduler.loop = asyncio.get_running_loop()
    act = Activation(AgentId("counter", "c"), Counter.__jetagents_spec__, scheduled=True)
    act.mailbox = deque([_stream_work(1)])
    host.activations["counter.c"] = act
    call = Command(Kind.CALL, "agt.call.counter.c", "counter", "c", 0, b"{}", 0.0, {})
    host.scheduler.dispatch(call)
    assert len(act.mailbox) == 1 and call.done and host.stats["agent_busy"] == 1


async def test_a_measured_run_reports_its_wall_and_only_its_own_cpu() -> None:
    """ADR 0059: ``cpu_s`` counts the action's own slices, not what runs while it waits."""
    loop = asyncio.get_running_loop()
    seen: list[Deadline] = []

    def burn(seconds: float) -> None:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    async def other() -> None:
        burn(0.05)  # runs while the action sleeps: not the action's

    async def action() -> str:
        burn(0.02)
        await asyncio.sleep(0.1)
        return "ok"

    noise = asyncio.ensure_future(other())
    run = Deadline(action(), loop, loop.time() + 30, cpu=True, done=seen.append, tag="t")
    assert await run == "ok"
    await noise
    assert seen == [run] and run.tag == "t"
    assert 0.02 <= run.cpu_s < 0.05
    assert run.wall_s >= 0.1


async def test_wall_time_counts_from_the_given_start() -> None:
    loop = asyncio.get_running_loop()
    seen: list[Deadline] = []

    async def sync() -> int:
        return 1

    start = loop.time() - 10  # as if read ten seconds ago
    run = Deadline(sync(), loop, start + 30, done=seen.append, started=start)
    assert await run == 1
    assert seen == [run] and run.wall_s >= 10
