"""A high-priority command overtakes its agent's backlog end to end (ADR 0058), against a
real nats-server.

A slow agent holds a backlog of 32 normal commands, past the host's in-flight bound (8): most
of them wait on the server, where the partition's consumer holds them.
A command sent with ``priority="high"`` goes to the high lane (its own stream and consumer
per partition, pulled into room the normal lane cannot take) and into the front of the
agent's mailbox: it is the next command the agent runs, and so is a high call after it. Every
command runs once, the normal ones in the order they were sent, and a high command re-sent
(on either lane) is answered from the record, not run again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel, Field

from jetagents import Agent, Client, ClientSettings, Event, Host, NatsServer, Registry, action, applies
from jetagents._nats.api import connect as raw_connect
from tests.conftest import host_settings
from tests.integration.helpers import commits, eventually

# the agents run in this process: what each run saw, in the order they started
STARTED: list[str] = []
GATE: dict[str, asyncio.Event] = {}


class Done(BaseModel):
    tags: list[str] = Field(default_factory=list)


class Worked(Event):
    tag: str


class Slow(Agent[Done]):
    type_name = "slow"
    state_type = Done

    @action
    async def work(self, tag: str) -> int:
        STARTED.append(tag)
        await GATE["open"].wait()  # the backlog builds up while the first one runs
        self.emit(Worked(tag=tag))
        return len(self.state.tags)

    @applies
    def _worked(self, state: Done, event: Worked) -> None:
        state.tags.append(event.tag)


@pytest.fixture
async def setup(nats_server: NatsServer) -> AsyncIterator[tuple[Host, Client]]:
    STARTED.clear()
    GATE["open"] = asyncio.Event()
    settings = host_settings(nats_server.url, max_inflight=8, max_mailbox_per_agent=16, high_lane_reserve=4)
    host = Host(settings, Registry([Slow]))
    await host.start()
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
    try:
        yield host, client
    finally:
        GATE["open"].set()
        await client.close()
        await host.stop()


def _queued_high(host: Host) -> list[str]:
    act = host.catalog.activations.get("slow.s1")
    return [c.command_id for c in (act.mailbox or ()) if c.high] if act is not None else []


async def test_a_high_command_overtakes_a_backlog_held_by_the_server(
    setup: tuple[Host, Client], nats_server: NatsServer
) -> None:
    host, client = setup
    ref = client.agent("slow", "s1")
    for i in range(32):
        await ref.send("work", {"tag": f"n{i}"}, command_id=f"n{i}", priority="low")
    await eventually(lambda: STARTED == ["n0"], timeout_s=20)
    assert host.scheduler.inflight_count <= 8  # the rest of the backlog is the server's

    high = asyncio.create_task(ref.request("work", {"tag": "h"}, command_id="h", priority="high", timeout=60))
    await eventually(lambda: _queued_high(host) == ["h"], timeout_s=20)
    call = asyncio.create_task(ref.request("work", {"tag": "c"}, delivery="at-most-once", priority="high", timeout=60))
    await eventually(lambda: len(_queued_high(host)) == 2, timeout_s=20)
    GATE["open"].set()

    assert await high == 2 and await call == 3  # ran right after the action in progress (n0)
    await eventually(lambda: len(STARTED) == 34, timeout_s=60)
    assert ["n0", "h", "c", *(f"n{i}" for i in range(1, 32))] == STARTED

    # exactly once: re-sent on its lane, or on the other one under the same id, it is answered
    # from the record and not run again
    assert await ref.request("work", {"tag": "h"}, command_id="h", priority="high", timeout=30) == 2
    assert await ref.request("work", {"tag": "h"}, command_id="h", timeout=30) == 2
    await asyncio.sleep(0)
    assert STARTED.count("h") == 1 and len(STARTED) == 34
    nc = await raw_connect(nats_server.url, name="lanes-test")
    try:
        log = await commits(nc, "slow", "s1")
    finally:
        await nc.close()
    ids = [c["cmd"] for c in log]  # (the call's is the host's)
    assert len(ids) == len(set(ids)) == 34  # every command once
