"""The host's task supervisor: groups, keyed tasks, crash logging, cancellation, bounded drain."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jetagents._host.supervisor import Supervisor


class _Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def error(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    def debug(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))


async def test_a_crashed_task_is_logged_with_its_group_and_leaves_it() -> None:
    log = _Log()
    sup = Supervisor(log)

    async def boom() -> None:
        raise ValueError("bad")

    task = sup.spawn("side", boom())
    await asyncio.wait([task])
    await asyncio.sleep(0)
    assert [e for e, _ in log.events] == ["task_crashed"]
    assert log.events[0][1]["group"] == "side"
    assert sup.tasks("side") == []


async def test_cancel_ends_the_named_groups_only_and_is_not_a_crash() -> None:
    log = _Log()
    sup = Supervisor(log)
    forever = asyncio.Event()
    a = sup.spawn("workers", forever.wait())
    b = sup.spawn("pullers", forever.wait(), key=3)
    c = sup.spawn("side", forever.wait())
    await sup.cancel("workers", "pullers")
    assert a.cancelled() and b.cancelled() and not c.done()
    assert log.events == []
    await sup.cancel("side")
    assert c.cancelled()


async def test_cancel_key_ends_one_task() -> None:
    sup = Supervisor(_Log())
    forever = asyncio.Event()
    one = sup.spawn("pullers", forever.wait(), key=1)
    two = sup.spawn("pullers", forever.wait(), key=2)
    await sup.cancel_key("pullers", 1)
    await sup.cancel_key("pullers", 7)  # none: nothing to do
    assert one.cancelled() and not two.done()
    await sup.cancel("pullers")


async def test_drain_waits_for_the_group_then_cancels_what_is_left() -> None:
    sup = Supervisor(_Log())
    quick = sup.spawn("side", asyncio.sleep(0.01))
    slow = sup.spawn("side", asyncio.sleep(60))
    await sup.drain("side", 0.2)
    assert quick.done() and not quick.cancelled()
    assert slow.cancelled()
    await sup.drain("nothing", 0.2)


async def test_a_cancelled_waiter_is_cancelled_not_swallowed() -> None:
    sup = Supervisor(_Log())

    async def stubborn() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(60)  # takes its time to end
            raise

    sup.spawn("workers", stubborn())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(sup.cancel("workers"))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    for task in sup.tasks("workers"):
        task.cancel()
    await asyncio.wait(sup.tasks("workers"))
