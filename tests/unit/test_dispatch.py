"""Which checks ``Scheduler.dispatch`` makes per command: an agent in memory was checked
(type registered, id a token) when its activation was made; anything else is checked here."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from jetagents import HostSettings, Registry
from jetagents._core.command import Command, Kind
from jetagents._core.ids import AgentId
from jetagents._host.host import Activation, Host
from jetagents.examples import Counter


class _Asked:
    """The host's registry, counting the lookups."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.asked: list[str] = []

    def get(self, type_name: str) -> Any:
        self.asked.append(type_name)
        return self.registry.get(type_name)

    def types(self) -> list[str]:
        return self.registry.types()


def _call(agent_type: str, agent_id: str) -> Command:
    return Command(Kind.CALL, f"agt.call.{agent_type}.{agent_id}", agent_type, agent_id, 0, b"{}", 0.0, {})


async def _host() -> tuple[Host, _Asked]:
    host = Host(HostSettings(), Registry([Counter]))
    host.scheduler.loop = asyncio.get_running_loop()
    asked = _Asked(host.scheduler._registry)
    host.scheduler._registry = asked  # type: ignore[assignment]
    return host, asked


async def test_a_command_for_an_agent_in_memory_asks_no_registry() -> None:
    host, asked = await _host()
    act = Activation(AgentId("counter", "c"), Counter.__jetagents_spec__, scheduled=True)
    act.mailbox = deque()
    host.activations["counter.c"] = act
    call = _call("counter", "c")
    host.scheduler.dispatch(call)
    assert list(act.mailbox) == [call] and asked.asked == []


async def test_a_command_for_an_agent_not_in_memory_is_checked() -> None:
    host, asked = await _host()
    for agent_type, agent_id in [("nosuch", "c"), ("counter", "bad id"), ("counter", "a.b")]:
        call = _call(agent_type, agent_id)
        host.scheduler.dispatch(call)
        await asyncio.sleep(0)  # the refusal is a side task
        assert f"{agent_type}.{agent_id}" not in host.activations
    assert asked.asked == ["nosuch", "counter", "counter"]
    await host.scheduler.wait_idle()  # every refusal settled and untracked


async def test_wait_idle_waits_for_the_last_command_in_hand_and_only_then() -> None:
    host, _ = await _host()
    scheduler = host.scheduler
    await asyncio.wait_for(scheduler.wait_idle(), 30)  # nothing in hand: at once
    for _ in range(2):  # idle, busy, idle and busy again
        first, last = _call("counter", "a"), _call("counter", "b")
        scheduler.track(first)
        scheduler.track(last)
        waiting = asyncio.ensure_future(scheduler.wait_idle())
        await asyncio.sleep(0)
        scheduler.untrack(first)
        await asyncio.sleep(0)
        assert not waiting.done()  # one is still in hand
        scheduler.untrack(last)
        await asyncio.wait_for(waiting, 30)
        await asyncio.wait_for(scheduler.wait_idle(), 30)


async def test_a_worker_starts_where_it_is_dispatched_unless_eager_start_is_off() -> None:
    ran: list[bool] = []

    async def work() -> None:
        ran.append(True)

    loop = asyncio.get_running_loop()
    eager = Host(HostSettings(), Registry([Counter])).scheduler
    assert eager._start(work(), loop) is None and ran == [True]  # finished in its first stretch
    plain = Host(HostSettings(eager_start=False), Registry([Counter])).scheduler
    task = plain._start(work(), loop)
    assert task is not None and ran == [True]  # at the loop's next turn, in a task
    await asyncio.wait_for(task, 30)
    assert ran == [True, True]
