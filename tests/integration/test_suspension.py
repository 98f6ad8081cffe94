"""Suspended actions with a real nats-server and an in-process host (ADR 0042 §§3, 4, 8):
``wait_for`` suspends (the command is answered ``suspended`` and acknowledged, nothing is held
in memory but the journal), a signal resumes it from its journal, a signal sent first is
buffered, other writes follow the suspended action's ``while_suspended``, and ``cancel``
closes a suspended or running action with ``cancelled``."""

from __future__ import annotations

import asyncio
from collections import Counter as Tally
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import StreamConfig

from jetagents import ActionCancelled, AgentSuspended, Client, ClientSettings, Host, NatsServer, Registry
from jetagents._core.journal import timer_name
from tests.conftest import host_settings
from tests.durable_agents import AGENTS, FX_STREAM, FX_SUBJECTS
from tests.integration.helpers import commits, dead_letters, eventually, read_all


@pytest.fixture
async def flow_client(nats_server: NatsServer) -> AsyncIterator[tuple[Client, Host]]:
    async with Host(host_settings(nats_server.url), Registry(AGENTS)) as host:
        client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
        await client.nc.jetstream().add_stream(StreamConfig(name=FX_STREAM, subjects=[FX_SUBJECTS]))
        try:
            yield client, host
        finally:
            await client.close()


async def effects(client: Client, run: str) -> Tally[str]:
    msgs = await read_all(client.nc, FX_STREAM)
    return Tally(subj.split(".", 2)[2] for _, subj, _, _ in msgs if subj.startswith(f"stepfx.{run}."))


async def kinds(client: Client, agent_id: str) -> list[str]:
    return [c["j"]["k"] if c.get("j") else "-" for c in await commits(client.nc, "flow", agent_id)]


async def test_a_wait_suspends_and_a_signal_resumes_it_from_its_journal(flow_client: tuple[Client, Host]) -> None:
    client, host = flow_client
    ref = client.agent("flow", "f1")
    first = await ref.request_reply("approve_flow", {"run": "a1"}, command_id="a1", timeout=10)
    assert first.status == "suspended" and first.result is None
    assert first.waiting == {"signal": "approve", "until_ms": None}
    assert first.headers["Agt-Status"] == "suspended"
    assert await kinds(client, "f1") == ["step", "wait"]
    wait = (await commits(client.nc, "flow", "f1"))[0]["j"]
    assert wait["params"] == {"run": "a1"} and wait["reply_to"]  # the journal is the copy now
    again = await ref.request_reply("approve_flow", {"run": "a1"}, command_id="a1", timeout=10)
    assert again.status == "suspended"  # a re-send while it waits: the same answer
    assert not host.scheduler.in_hand()  # nothing held: the command was acknowledged

    assert await ref.signal("approve", {"by": "ann"}) == {"delivered": "a1"}
    assert await ref.result("a1", timeout=10) == {"run": "a1", "payload": {"by": "ann"}}
    fx = await effects(client, "a1")
    assert fx["prepare.done"] == 1 and fx["finish.done"] == 1  # the step before the wait ran once
    assert await kinds(client, "f1") == ["step", "wait", "signal", "step", "end"]
    log = await commits(client.nc, "flow", "f1")
    assert log[2]["j"]["for"] == "a1" and log[2]["cmd"] != "a1"  # the signal's own commit
    assert log[-1]["events"] == [{"type": "Approved", "data": {"run": "a1", "by": {"by": "ann"}}}]
    done = await ref.request_reply("approve_flow", {"run": "a1"}, command_id="a1", timeout=10)
    assert done.duplicate and done.result == {"run": "a1", "payload": {"by": "ann"}}


async def test_request_waits_through_the_suspension_and_a_signal_sent_first_is_buffered(
    flow_client: tuple[Client, Host],
) -> None:
    client, _ = flow_client
    ref = client.agent("flow", "f2")
    waiting = ref.request_async("approve_flow", {"run": "b1"}, command_id="b1", timeout=20)
    await eventually(lambda: _suspended(client, "f2"), 10)
    assert await ref.signal("approve", "yes") == {"delivered": "b1"}
    assert await waiting == {"run": "b1", "payload": "yes"}

    assert await ref.signal("approve", "early") == {"buffered": True}  # nobody waits: kept
    assert await ref.request("approve_flow", {"run": "b2"}, command_id="b2", timeout=10) == {
        "run": "b2",
        "payload": "early",
    }  # taken at the wait, no suspension
    tail = await kinds(client, "f2")
    assert tail[tail.index("inbox") :] == ["inbox", "step", "wait", "signal", "step", "end"]


async def _suspended(client: Client, agent_id: str) -> bool:
    return (await kinds(client, agent_id))[-1:] == ["wait"]


async def test_writes_are_parked_while_suspended_and_run_after_it_reads_run_alongside(
    flow_client: tuple[Client, Host],
) -> None:
    client, _ = flow_client
    ref = client.agent("flow", "f3")
    assert (await ref.request_reply("approve_flow", {"run": "c1"}, command_id="c1")).status == "suspended"
    queued = await ref.request_reply("bump", {"by": 5}, command_id="p1")
    assert queued.status == "queued" and queued.headers["Agt-Status"] == "queued"
    assert (await ref.request_reply("bump", {"by": 1}, command_id="p2")).status == "queued"
    assert await ref.request("count") == {"approved": [], "bumps": 0}  # a read runs alongside
    await ref.signal("approve", "ok")
    assert await ref.result("p1", timeout=10) == 5  # ran after the suspended action, in order
    assert await ref.result("p2", timeout=10) == 6
    assert await ref.request("count") == {"approved": ["c1"], "bumps": 6}
    log = await commits(client.nc, "flow", "f3")
    closing = [c["cmd"] for c in log if c.get("j", {}).get("k") == "end"]
    assert closing == ["c1", "p1", "p2"]


async def test_reject_and_interrupt_policies(flow_client: tuple[Client, Host]) -> None:
    client, _ = flow_client
    ref = client.agent("flow", "f4")
    assert (await ref.request_reply("guarded", {"run": "g"}, command_id="g1")).status == "suspended"
    with pytest.raises(AgentSuspended) as info:
        await ref.request("bump", {"by": 1}, command_id="r1")
    assert info.value.retryable and info.value.details["command_id"] == "g1"
    await ref.signal("approve", 1)
    assert await ref.result("g1") == 1
    assert await ref.request("bump", {"by": 1}, command_id="r1") == 1  # refused, not recorded

    assert (await ref.request_reply("urgent", {"run": "u"}, command_id="u1")).status == "suspended"
    assert await ref.request("bump", {"by": 2}, command_id="r2") == 3  # ran at once
    with pytest.raises(ActionCancelled):
        await ref.result("u1")  # the suspended action was cancelled by the write
    assert await ref.signal("approve", 2) == {"buffered": True}  # nobody waits any more


async def test_cancel_suspended_running_finished_and_unknown(flow_client: tuple[Client, Host], tmp_path: Path) -> None:
    client, host = flow_client
    ref = client.agent("flow", "f5")
    assert (await ref.request_reply("approve_flow", {"run": "x1"}, command_id="x1")).status == "suspended"
    assert await ref.cancel("x1") == {"cancelled": True}
    with pytest.raises(ActionCancelled):
        await ref.result("x1")
    assert (await kinds(client, "f5"))[-1] == "end"
    assert (await commits(client.nc, "flow", "f5"))[-1]["j"]["error"]["code"] == "cancelled"
    assert await ref.cancel("x1") == {"cancelled": True}  # said again, changes nothing
    assert await ref.signal("approve", 1) == {"buffered": True}

    assert await ref.request("bump", {"by": 1}, command_id="x2") == 1
    assert await ref.cancel("x2") == {"cancelled": False, "state": "finished"}
    assert await ref.cancel("nope") == {"cancelled": False, "state": "unknown"}

    (tmp_path / "pre-prepare").touch()  # the running action holds inside its first step
    running = ref.request_async("approve_flow", {"run": "x3", "gates": str(tmp_path)}, command_id="x3", timeout=20)
    await eventually(lambda: _entered(client, "x3"), 10)
    answer = ref.request_async("count")  # a call queued behind the running action
    cancel = asyncio.ensure_future(ref.cancel("x3", timeout=20))
    # seen at intake, not behind the running action in its mailbox
    await eventually(lambda: "x3" in (host.activations["flow.f5"].cancelling or ()), 10)
    (tmp_path / "pre-prepare").unlink()
    with pytest.raises(ActionCancelled):
        await running  # the step in progress finished; the wait after it raised
    assert await cancel == {"cancelled": True}
    assert (await answer)["approved"] == []
    fx = await effects(client, "x3")
    assert fx["prepare.done"] == 1 and fx["finish.done"] == 0
    assert (await commits(client.nc, "flow", "f5"))[-1]["j"]["error"]["code"] == "cancelled"


async def _entered(client: Client, run: str) -> bool:
    return (await effects(client, run))["prepare.enter"] >= 1


async def test_a_wait_times_out_on_the_servers_timer_and_a_signal_purges_the_timer(
    flow_client: tuple[Client, Host],
) -> None:
    client, host = flow_client
    ref = client.agent("flow", "f6")
    first = await ref.request_reply("approve_flow", {"run": "t1", "timeout_s": 1}, command_id="t1")
    assert first.status == "suspended" and first.waiting["until_ms"] is not None
    timers = await read_all(client.nc, "AGT_CMD")
    assert [s for _, s, _, _ in timers if s.startswith("agt.rem.flow.f6._w")]  # held by the server
    assert await ref.result("t1", timeout=15) == {"run": "t1", "payload": "timed out"}
    log = await commits(client.nc, "flow", "f6")
    assert [c["j"]["k"] for c in log] == ["step", "wait", "timeout", "step", "end"]
    assert log[2]["cmd"].startswith("s")  # the firing's own id (stream position), closed by it
    assert log[2]["j"]["for"] == "t1"
    assert await ref.request("nap", {"seconds": 1}, command_id="n1", timeout=15) == "rested"

    # a signal within the timeout wins, and its timer is gone (a late firing would be ignored)
    assert (await ref.request_reply("approve_flow", {"run": "t2", "timeout_s": 30}, command_id="t2")).status
    timer = f"agt.rem.flow.f6.{timer_name('t2', 1)}"
    assert await host.schedules.get(timer) is not None
    assert await ref.signal("approve", "fast") == {"delivered": "t2"}
    assert await ref.result("t2", timeout=10) == {"run": "t2", "payload": "fast"}
    assert await host.schedules.get(timer) is None


async def test_a_streamed_action_streams_on_after_its_wait(flow_client: tuple[Client, Host]) -> None:
    client, _ = flow_client
    ref = client.agent("flow", "f7")
    stream = ref.stream("chatty", {"run": "s1"}, command_id="s1", timeout=20)
    chunks: list[Any] = []

    async def read() -> None:
        async for chunk in stream:
            chunks.append(chunk)

    reader = asyncio.ensure_future(read())
    await eventually(lambda: _suspended(client, "f7"), 10)
    await ref.signal("approve", "yes")
    await asyncio.wait_for(reader, 20)
    assert chunks == ["s1: asked", "s1: got yes"] and stream.result == "s1 done"


async def test_a_parked_command_past_its_time_limit_is_dead_lettered_once_and_closed(nats_server: NatsServer) -> None:
    """A command parked behind a suspended action runs after it; when it overruns its time
    limit it is dead-lettered and its park closed with ``action_timeout``, once: the commands
    parked behind it run. (Found by the simulation: the overrun left its park open, so every
    later command of the agent ran it again, dead-lettered it again, and waited behind it.)"""
    async with Host(host_settings(nats_server.url), Registry(AGENTS)):  # hang's limit: 0.5 s
        client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
        try:
            await client.nc.jetstream().add_stream(StreamConfig(name=FX_STREAM, subjects=[FX_SUBJECTS]))
            ref = client.agent("flow", "f9")
            assert (await ref.request_reply("approve_flow", {"run": "d1"}, command_id="d1")).status == "suspended"
            assert (await ref.request_reply("hang", {}, command_id="h1")).status == "queued"
            assert (await ref.request_reply("bump", {"by": 2}, command_id="p9")).status == "queued"
            await ref.signal("approve", "ok")
            assert await ref.result("p9", timeout=15) == 2  # ran after the overrun, in order
            assert await ref.request("bump", {"by": 3}, command_id="p10", timeout=15) == 5
            log = await commits(client.nc, "flow", "f9")
            ends = [c for c in log if c.get("j", {}).get("k") == "end"]
            closing = [(c["cmd"], (c["j"].get("error") or {}).get("code")) for c in ends]
            assert closing == [("d1", None), ("h1", "action_timeout"), ("p9", None)]
            assert all(e["data"]["by"] != 1_000 for c in log for e in c.get("events") or [])  # nothing it emitted kept
            dls = [d for d in await dead_letters(client.nc) if (d.get("headers") or {}).get("Agt-Command-Id") == "h1"]
            assert [d["error"]["code"] for d in dls] == ["action_timeout"]
        finally:
            await client.close()
