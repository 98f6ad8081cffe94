"""jetagents.testing.ManualClock: sleepers on a heap, advance, autojump, seeded ties."""

from __future__ import annotations

import asyncio
import doctest

import pytest

import jetagents
import jetagents.testing.clock as clock_module
from jetagents.testing import ManualClock, wait_all_blocked


def test_it_is_the_public_manual_clock_and_keeps_the_old_interface() -> None:
    assert jetagents.ManualClock is ManualClock
    clock = ManualClock(start=5.0, wall_ms=1_000)
    assert clock.monotonic() == 5.0 and clock.wall_ms() == 1_000
    assert clock.advance(1.5) == 0  # nobody was asleep
    assert clock.monotonic() == 6.5 and clock.wall_ms() == 2_500
    with pytest.raises(ValueError):
        clock.advance(-1.0)


def test_the_module_example_runs() -> None:
    assert doctest.testmod(clock_module).failed == 0


async def test_advance_wakes_the_sleepers_it_passed_earliest_first() -> None:
    clock = ManualClock()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, s: float) -> None:
        await clock.sleep(s)
        woke.append((name, clock.monotonic()))

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("c", 3.0), ("a", 1.0), ("b", 2.0))]
    await wait_all_blocked()
    assert clock.sleepers == 3 and clock.next_deadline() == 1001.0
    assert clock.advance(0.5) == 0
    assert clock.advance(2.0) == 2  # 1 s and 2 s are due
    await wait_all_blocked()
    assert woke == [("a", 1002.5), ("b", 1002.5)]
    assert clock.advance(10.0) == 1
    await asyncio.gather(*tasks)
    assert [n for n, _ in woke] == ["a", "b", "c"]
    assert clock.sleepers == 0 and clock.next_deadline() is None


async def test_sleep_zero_only_yields() -> None:
    clock = ManualClock()
    await clock.sleep(0)
    await clock.sleep(-3)
    assert clock.monotonic() == 1000.0 and clock.sleepers == 0


async def test_a_cancelled_sleeper_is_dropped_and_not_woken() -> None:
    clock = ManualClock()
    task = asyncio.create_task(clock.sleep(1.0))
    other = asyncio.create_task(clock.sleep(2.0))
    await wait_all_blocked()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.sleepers == 1 and clock.next_deadline() == 1002.0
    assert clock.advance(5.0) == 1
    await other


async def test_autojump_runs_a_long_timeout_at_once_and_in_order() -> None:
    clock = ManualClock()
    order: list[tuple[str, float]] = []

    async def ticker(name: str, every_s: float, times: int) -> None:
        for _ in range(times):
            await clock.sleep(every_s)
            order.append((name, clock.monotonic() - 1000.0))

    async with clock.autojump():
        await asyncio.gather(ticker("slow", 45.0, 2), ticker("fast", 20.0, 4))
    assert clock.monotonic() == 1090.0
    assert order == [
        ("fast", 20.0),
        ("fast", 40.0),
        ("slow", 45.0),
        ("fast", 60.0),
        ("fast", 80.0),
        ("slow", 90.0),
    ]


async def test_autojump_waits_for_a_sleeper_that_comes_later() -> None:
    """Nobody sleeps at first (the task waits on an event): no jump until someone does."""
    clock = ManualClock()
    go = asyncio.Event()

    async def late() -> float:
        await go.wait()
        await clock.sleep(7.0)
        return clock.monotonic()

    async with clock.autojump():
        task = asyncio.create_task(late())
        await wait_for_turns(5)
        assert clock.monotonic() == 1000.0
        go.set()
        assert await task == 1007.0


async def wait_for_turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_autojump_does_not_jump_while_a_task_can_still_run() -> None:
    """A task that computes for many turns of the loop before it sleeps sees no time pass."""
    clock = ManualClock()
    seen: list[float] = []

    async def busy() -> None:
        for _ in range(200):
            seen.append(clock.monotonic())
            await asyncio.sleep(0)

    async with clock.autojump():
        sleeper = asyncio.create_task(clock.sleep(1.0))
        await busy()
        await sleeper
    assert set(seen) == {1000.0}
    assert clock.monotonic() == 1001.0


async def _wake_order(seed: int | None) -> list[int]:
    clock = ManualClock(seed=seed)
    order: list[int] = []

    async def one(i: int) -> None:
        await clock.sleep(1.0)
        order.append(i)

    tasks = [asyncio.create_task(one(i)) for i in range(12)]
    await clock.run_until_idle()
    await asyncio.gather(*tasks)
    return order


async def test_ties_wake_first_come_without_a_seed_and_in_a_seeded_order_with_one() -> None:
    assert await _wake_order(None) == list(range(12))
    seeded = await _wake_order(7)
    assert sorted(seeded) == list(range(12)) and seeded != list(range(12))
    assert await _wake_order(7) == seeded  # the same seed, the same order
    assert await _wake_order(8) != seeded


async def test_run_until_idle_wakes_one_sleeper_per_jump() -> None:
    clock = ManualClock()
    seen: list[float] = []

    async def chain() -> None:
        for s in (1.0, 0.5, 2.0):
            await clock.sleep(s)
            seen.append(clock.monotonic())

    task = asyncio.create_task(chain())
    await clock.run_until_idle()
    assert task.done() and seen == [1001.0, 1001.5, 1003.5]
    assert clock.wake_next() is False


async def test_wait_all_blocked_is_bounded() -> None:
    stop = False

    async def spin() -> None:
        while not stop:
            await asyncio.sleep(0)

    task = asyncio.create_task(spin())
    with pytest.raises(RuntimeError, match="never blocks"):
        await wait_all_blocked(max_yields=50)
    stop = True
    await task


async def test_wait_returns_when_the_event_is_set_or_the_clock_passed_its_timeout() -> None:
    """``Clock.wait`` (a puller's wait for credit): the event wins if it comes first; else the
    clock's own time, not the loop's, ends the wait, and nothing is left sleeping."""
    clock = ManualClock()
    event = asyncio.Event()
    waiter = asyncio.create_task(clock.wait(event, 1.0))
    await wait_all_blocked()
    event.set()
    assert await waiter is True
    assert clock.sleepers == 0

    event.clear()
    waiter = asyncio.create_task(clock.wait(event, 1.0))
    await wait_all_blocked()
    clock.advance(0.5)
    await wait_all_blocked()
    assert not waiter.done()
    clock.advance(0.5)
    assert await waiter is False
    assert clock.monotonic() == 1001.0

    event.set()
    assert await clock.wait(event, 0.0) is True  # already set: no sleeper at all
    assert clock.sleepers == 0


async def test_the_system_clock_waits_on_the_loop() -> None:
    event = asyncio.Event()
    assert await jetagents.SystemClock().wait(event, 0.01) is False
    asyncio.get_running_loop().call_soon(event.set)
    assert await jetagents.SystemClock().wait(event, 5.0) is True
