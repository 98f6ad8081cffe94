"""A stuck agent must not stall its host (issue 12, ADR 0036), against a real nats-server.

* an action that never returns is cancelled at its time limit; its caller gets
  ``action_timeout`` and nothing it emitted is appended;
* one agent flooded with commands cannot take the host's in-flight budget: calls over its
  mailbox bound get ``unavailable`` (agent busy) and other agents are answered at once;
* a durable command that overruns is dead-lettered and the agent's later commands, handed
  back while its mailbox was full, all run afterwards, in stream order;
* the command's own deadline (``Agt-Deadline``) cuts the limit short;
* an action that blocks the event loop is detected, counted and shown in health.

The agents are defined here, for these tests only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NATS
from pydantic import BaseModel, Field

from jetagents import (
    ActionTimeout,
    Agent,
    Client,
    ClientSettings,
    DeadlineExceeded,
    Event,
    NatsServer,
    action,
    applies,
)
from jetagents._nats.api import connect as raw_connect
from jetagents._obs.health import HealthMonitor, HealthServer
from jetagents.examples import Counter
from tests.integration.helpers import HostFactory, call_json, commits, dead_letters, eventually, started_hosts


class ListState(BaseModel):
    items: list[int] = Field(default_factory=list)


class Added(Event):
    item: int


class Stuck(Agent[ListState]):
    type_name = "stuck"
    state_type = ListState

    @action
    async def hang(self) -> None:
        self.emit(Added(item=-1))  # never kept: the action does not finish
        await asyncio.Event().wait()

    @action
    async def add(self, item: int) -> list[int]:
        self.emit(Added(item=item))
        return self.state.items

    @action
    async def slow(self, seconds: float) -> str:
        self.emit(Added(item=-3))
        await asyncio.sleep(seconds)
        return "done"

    @action
    async def stubborn(self) -> str:
        self.emit(Added(item=-2))
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            return "ignored the cancellation"  # returns anyway: still too late, nothing kept
        return "finished"

    @action
    async def block(self, seconds: float) -> str:
        time.sleep(seconds)  # blocks the event loop on purpose
        return "blocked"

    @action(timeout_s=0.3)
    async def hang_briefly(self) -> None:
        await asyncio.Event().wait()

    @applies
    def _added(self, state: ListState, event: Added) -> None:
        state.items.append(event.item)


class Impatient(Agent[ListState]):
    """A type with its own time limit, shorter than the host's."""

    type_name = "impatient"
    state_type = ListState
    action_timeout_s = 0.4

    @action
    async def hang(self) -> None:
        await asyncio.Event().wait()


AGENTS: list[type[Agent[Any]]] = [Stuck, Impatient, Counter]


@pytest.fixture
async def make_host(nats_server: NatsServer) -> AsyncIterator[HostFactory]:
    async with started_hosts(nats_server.url, AGENTS) as make:
        yield make


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    conn = await raw_connect(nats_server.url, name="stuck-test")
    try:
        yield conn
    finally:
        await conn.close()


_call = call_json


async def test_a_call_that_never_returns_gets_action_timeout(make_host: HostFactory, nc: NATS) -> None:
    host = await make_host(action_timeout_s=0.5)
    reply = await _call(nc, "agt.call.stuck.never", {"action": "hang"})
    assert reply["ok"] is False
    assert reply["error"]["code"] == "action_timeout"
    assert reply["error"]["retryable"] is False
    assert reply["error"]["details"] == {"applied": False, "timeout_s": 0.5}
    assert await commits(nc, "stuck", "never") == []  # the event it emitted was dropped
    # the agent is free again: its next command runs
    ok = await _call(nc, "agt.call.stuck.never", {"action": "add", "params": {"item": 1}})
    assert ok == {"ok": True, "result": [1]}
    assert host.stats["action_timeouts"] == 1


async def test_a_flooded_stuck_agent_does_not_starve_the_others(make_host: HostFactory, nc: NATS) -> None:
    """600 calls to one stuck agent, on a host with room for 64 commands in flight: the
    others are answered at once, never 'host overloaded' (before: every slot was taken)."""
    # static membership: a loop busy with 600 calls on a loaded machine must not cost the host
    # its ring membership (a host that lost touch with the cluster answers no call), which is
    # not what is tested
    host = await make_host(action_timeout_s=1.0, max_inflight=64, max_mailbox_per_agent=4, membership="static")
    flood = [asyncio.ensure_future(_call(nc, "agt.call.stuck.hog", {"action": "hang"})) for _ in range(600)]
    await nc.flush()
    # all but the few it can hold are answered at once (before the fix: 'host overloaded')
    await eventually(lambda: sum(f.done() for f in flood) >= 500, timeout_s=60)
    for i in range(20):
        reply = await _call(nc, f"agt.call.counter.other-{i}", {"action": "increment"}, timeout=30)
        assert reply == {"ok": True, "result": 1}, reply  # never "host overloaded"
    replies = await asyncio.gather(*flood)
    codes = [r["error"]["code"] for r in replies]
    busy = [r for r in replies if r["error"]["code"] == "unavailable"]
    assert all(r["error"]["details"] == {"applied": False, "reason": "agent_busy"} for r in busy)
    assert all(r["error"]["retryable"] for r in busy)
    # the running one and the queued ones time out; everything else was refused at once
    assert codes.count("action_timeout") + len(busy) == 600
    assert 1 <= codes.count("action_timeout") <= 600 - 500
    assert host.scheduler.inflight_count == 0
    assert host.stats["agent_busy"] == len(busy)


async def test_a_durable_command_that_overruns_is_dead_lettered_and_later_ones_run_in_order(
    make_host: HostFactory, nc: NATS, client: Client
) -> None:
    host = await make_host(action_timeout_s=1.0, max_mailbox_per_agent=3)
    ref = client.agent("stuck", "dur")
    hung = asyncio.ensure_future(ref.request("hang", timeout=60))
    await eventually(lambda: "stuck.dur" in host.activations and host.activations["stuck.dur"].scheduled, timeout_s=30)
    # 20 more, stored in this order while the agent is stuck: most must wait outside
    for i in range(20):
        await ref.send("add", {"item": i})
    with pytest.raises(ActionTimeout):
        await hung

    async def all_applied() -> bool:
        return len(await commits(nc, "stuck", "dur")) == 20

    await eventually(all_applied, timeout_s=90)
    log = await commits(nc, "stuck", "dur")
    assert [c["events"][0]["data"]["item"] for c in log] == list(range(20))  # stream order, nothing lost
    assert [c["n"] for c in log] == list(range(1, 21))
    assert host.stats["agent_busy"] > 0  # the bound was hit: commands were handed back and came again
    letters = [d for d in await dead_letters(nc) if d["subject"].endswith("stuck.dur")]
    assert len(letters) == 1 and letters[0]["error"]["code"] == "action_timeout"
    assert host.stats["dead_letters"] == 1


async def test_the_commands_deadline_cuts_the_limit_short(make_host: HostFactory, nc: NATS, client: Client) -> None:
    host = await make_host(action_timeout_s=120.0)
    ref = client.agent("stuck", "dl")
    with pytest.raises(DeadlineExceeded) as info:
        await ref.request("slow", {"seconds": 60}, delivery="at-most-once", deadline=0.5, timeout=30)
    assert info.value.details == {"applied": False}
    # durable: answered deadline_exceeded and acknowledged, not dead-lettered
    with pytest.raises(DeadlineExceeded):
        await ref.request("slow", {"seconds": 60}, deadline=0.5, timeout=30)
    assert await commits(nc, "stuck", "dl") == []
    assert not [d for d in await dead_letters(nc) if d["subject"].endswith("stuck.dl")]
    assert host.stats["action_timeouts"] == 2


async def test_type_and_action_limits_win_over_the_hosts(make_host: HostFactory, nc: NATS) -> None:
    await make_host(action_timeout_s=120.0)
    reply = await _call(nc, "agt.call.impatient.t", {"action": "hang"}, timeout=30)
    assert reply["error"]["code"] == "action_timeout" and reply["error"]["details"]["timeout_s"] == 0.4
    reply = await _call(nc, "agt.call.stuck.a", {"action": "hang_briefly"}, timeout=30)
    assert reply["error"]["code"] == "action_timeout" and reply["error"]["details"]["timeout_s"] == 0.3


async def test_an_action_that_swallows_the_cancellation_keeps_nothing(make_host: HostFactory, nc: NATS) -> None:
    await make_host(action_timeout_s=0.5)
    reply = await _call(nc, "agt.call.stuck.sw", {"action": "stubborn"})
    assert reply["error"]["code"] == "action_timeout"
    assert await commits(nc, "stuck", "sw") == []


async def _http_get(port: int, path: str) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    body: dict[str, Any] = orjson.loads(raw.split(b"\r\n\r\n", 1)[1])
    return body


async def test_a_blocked_event_loop_is_counted_and_shown_in_health(make_host: HostFactory, nc: NATS) -> None:
    host = await make_host(loop_block_threshold_s=0.3)
    monitor = HealthMonitor(host.settings.host_id)
    monitor.host = host
    server = await HealthServer(monitor, "127.0.0.1", 0).start()
    try:
        # a loaded machine may stall the loop on its own: count from here
        before = monitor.status()["loop"]["blocked_total"]
        beats = host.watchdog._beats if host.watchdog is not None else 0
        reply = await _call(nc, "agt.call.stuck.blk", {"action": "block", "params": {"seconds": 1.0}})
        assert reply == {"ok": True, "result": "blocked"}
        await eventually(lambda: host.watchdog is not None and host.watchdog._beats > beats + 2, timeout_s=30)
        assert host.stats["loop_blocked"] >= before + 1
        loop = monitor.status()["loop"]
        assert loop["blocked_total"] >= before + 1 and loop["max_blocked_s"] >= 0.3
        body = await _http_get(server.port, "/readyz")
        assert body["loop"]["blocked_total"] >= before + 1
    finally:
        await server.stop()


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[Client]:
    c = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8, request_timeout_s=30))
    try:
        yield c
    finally:
        await c.close()
