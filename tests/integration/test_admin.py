"""Inspection and repair from what is durable: agents, show, history, time travel (which
writes nothing), dead letters and their redrive under the original command id."""

from __future__ import annotations

import asyncio
import os
import queue
import random
import signal
import subprocess
import sys
import threading
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from jetagents import Agent, Client, ClientSettings, Host, NatsServer, Registry, action, applies
from jetagents._client.inspection import Inspector
from jetagents._core.agent import Event
from jetagents._core.errors import UnknownAgentType
from jetagents.examples import EXAMPLE_AGENTS, Counter

from ..conftest import host_settings
from .helpers import commits, dead_letters, eventually, started_hosts, stream_state

STREAMS = ("AGT_EVT", "AGT_CMD", "AGT_DLQ", "KV_agt_snap", "KV_agt_meta")


class OrderState(BaseModel):
    placed: int = 0


class Placed(Event):
    qty: int


class Order(Agent[OrderState]):
    type_name = "order"
    state_type = OrderState
    spawn_required = True

    @action
    async def place(self, qty: int) -> int:
        self.emit(Placed(qty=qty))
        return self.state.placed

    @applies
    def _placed(self, state: OrderState, event: Placed) -> None:
        state.placed += event.qty


async def _states(nc: Any) -> dict[str, dict[str, Any]]:
    return {s: await stream_state(nc, s) for s in STREAMS}


async def test_inspection_time_travel_and_redrive(nats_server: NatsServer) -> None:
    host = Host(host_settings(nats_server.url), Registry([*EXAMPLE_AGENTS, Order]))
    await host.start()
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
    try:
        rng = random.Random(18)
        steps = [rng.choice([-5, -1, 1, 2, 7, 30]) for _ in range(25)]
        for i, by in enumerate(steps):
            await client.agent("counter", "tt").request("increment", {"by": by}, command_id=f"tt-{i}")
        await client.agent("account", "a1").request("deposit", {"amount": 10})
        # a dead letter that a fix makes good: the type requires spawn, this id was not spawned
        with pytest.raises(Exception, match="never spawned"):
            await client.agent("order", "o1").request("place", {"qty": 3}, command_id="o-1", timeout=10)
        admin = Inspector(client, agents=[*EXAMPLE_AGENTS, Order])

        listed = {(a.type, a.id): a for a in await admin.agents()}
        assert listed[("counter", "tt")].commits == len(steps)
        assert listed[("counter", "tt")].host == "test-host" and listed[("counter", "tt")].active
        assert [a.id for a in await admin.agents("account")] == ["a1"]
        assert await admin.agents(host="nobody") == []

        detail = await admin.show("counter", "tt", last=3)
        assert detail.state == {"value": sum(steps)} and detail.state_source == "replay"
        assert detail.n == len(steps) and detail.host == "test-host" and detail.active
        assert [c.cmd for c in detail.last_commits] == [f"tt-{i}" for i in range(len(steps) - 3, len(steps))]

        log = await commits(client.nc, "counter", "tt")
        history = await admin.history("counter", "tt", from_seq=log[10]["_seq"], limit=5)
        assert [h.n for h in history] == [11, 12, 13, 14, 15]
        assert history[0].events == [{"type": "Incremented", "data": {"by": steps[10]}}]

        followed = []
        async for entry in admin.follow("counter", "tt", from_seq=log[-2]["_seq"]):
            followed.append(entry.n)
            if entry.n == len(steps) + 1:
                break
            if entry.n == len(steps):  # the follower sees a commit stored after it started
                await client.agent("counter", "tt").request("increment", {"by": 1})
        assert followed == [len(steps) - 1, len(steps), len(steps) + 1]

        # -- redrive: spawn the order, send its dead letter again under its command id --------
        (dl,) = await admin.dead_letters("order", code="unknown_agent")
        assert dl.command_id == "o-1" and dl.redrivable
        await client.spawn("order", "o1")
        (done,) = await admin.redrive_where(code="unknown_agent", wait_s=10)
        assert done.command_id == "o-1" and done.removed
        assert done.reply == {"ok": True, "result": 3}
        assert await admin.dead_letters("order") == []
        # exactly-once held: asking again under o-1 is answered from the record, not applied
        assert await client.agent("order", "o1").request("place", {"qty": 3}, command_id="o-1") == 3
        assert [c["cmd"] for c in await commits(client.nc, "order", "o1")] == ["o-1"]
        assert await dead_letters(client.nc) == []
    finally:
        await host.stop()

    # -- time travel with no host at all: equals replay to that sequence, writes nothing ----
    log = await commits(client.nc, "counter", "tt")
    before = await _states(client.nc)
    try:
        with pytest.raises(UnknownAgentType):
            await Inspector(client).state_at("counter", "tt", log[0]["_seq"])
        url = nats_server.url

        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.integers(min_value=0, max_value=len(log) - 1))
        def same_as_replay(i: int) -> None:
            seq = log[i]["_seq"]
            expected = sum(e["data"]["by"] for c in log[: i + 1] for e in c["events"])

            async def travel() -> Any:
                async with await Client.connect(settings=ClientSettings(nats_url=url)) as c:
                    return await Inspector(c, agents=[Counter]).state_at("counter", "tt", seq)

            rebuilt = asyncio.run(travel())
            assert (rebuilt.state.value, rebuilt.n, rebuilt.seq) == (expected, i + 1, seq)

        await asyncio.to_thread(same_as_replay)
        assert await _states(client.nc) == before
    finally:
        await client.close()


async def test_cli_inspection(nats_server: NatsServer) -> None:
    host = Host(host_settings(nats_server.url), Registry(EXAMPLE_AGENTS))
    await host.start()
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
    try:
        for by in (1, 2, 3):
            await client.agent("counter", "cli").request("increment", {"by": by})
        with pytest.raises(Exception, match="no action"):
            await client.agent("counter", "cli").request("nope", {})
        await eventually(lambda: dead_letters(client.nc))
        seq2 = (await commits(client.nc, "counter", "cli"))[1]["_seq"]
        env = dict(os.environ, JETAGENTS_NATS_URL=nats_server.url)

        def cli(*args: str) -> Any:
            r = subprocess.run(
                [sys.executable, "-m", "jetagents.cli", *args], capture_output=True, text=True, env=env, timeout=60
            )
            assert r.returncode == 0, r.stderr
            return [orjson.loads(line) for line in r.stdout.splitlines()]

        (ls,) = await asyncio.to_thread(cli, "agents", "ls", "--json", "--type", "counter")
        assert ls == [{"type": "counter", "id": "cli", "commits": 3, "host": "test-host", "active": True}]
        (st_,) = await asyncio.to_thread(cli, "agent", "state", "counter/cli", "--at", str(seq2))
        assert st_["state"] == {"value": 3} and st_["n"] == 2
        (dl,) = await asyncio.to_thread(cli, "dlq", "--code", "unknown_action", "--agent", "counter/*")
        assert dl["error"]["code"] == "unknown_action"
        (redriven,) = await asyncio.to_thread(cli, "dlq", "redrive", str(dl["_seq"]), "--wait", "10")
        # still no such action: refused again, dead-lettered again under the same command id
        assert redriven["reply"]["error"]["code"] == "unknown_action" and redriven["removed"]
        again = await dead_letters(client.nc)
        assert len(again) == 1 and again[0]["headers"]["Agt-Command-Id"] == dl["headers"]["Agt-Command-Id"]

        # with no host, commands wait in both lanes: `agent show` counts them as its queue
        await host.stop()
        for priority in ("normal", "normal", "high"):
            await client.agent("counter", "cli").send("increment", {"by": 10}, priority=priority)
        (shown,) = await asyncio.to_thread(cli, "agent", "show", "counter/cli", "--last", "2")
        assert shown["queued"] == 3 and shown["state"] == {"value": 6} and shown["n"] == 3
        assert [c["n"] for c in shown["last_commits"]] == [2, 3]
        assert [
            h["n"] for h in await asyncio.to_thread(cli, "agent", "history", "counter/cli", "--from", str(seq2))
        ] == [2, 3]
        (tomb,) = await asyncio.to_thread(
            cli, "agent", "delete", "counter/cli", "--yes", "--grace-s", "0", "--by", "op"
        )
        assert tomb["agent"] == "counter/cli" and tomb["by"] == "op" and tomb["purged_ms"] is None
        purged = [p for p in await asyncio.to_thread(cli, "agent", "purge") if p.get("purged_ms")]
        assert [p["agent"] for p in purged] == ["counter/cli"]
        assert await Inspector(client).queued("counter", "cli") == 0
        assert await commits(client.nc, "counter", "cli") == []
    finally:
        await client.close()
        await host.stop()


def _cli(url: str, *args: str) -> list[Any]:
    r = subprocess.run(
        [sys.executable, "-m", "jetagents.cli", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, JETAGENTS_NATS_URL=url),
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return [orjson.loads(line) for line in r.stdout.splitlines()]


def _sigint_as_a_terminal_sends_it() -> None:
    """In the follower, before it runs: SIGINT delivered and handled by default, as a user's
    shell sends Ctrl-C. A suite started as a background job (``cmd &`` in a script, ``nohup``)
    runs with SIGINT ignored, every child inherits SIG_IGN across exec, and Python then keeps it
    ignored: asyncio installs no Ctrl-C handler, and the follower rightly never ends (seen in
    two full runs started that way; a probe in every pytest worker showed SigIgn 0x1001007)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _signal_state(pid: int) -> str:
    """A process's signal masks (blocked, ignored, caught, pending) from /proc, for a failure."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return "".join(line for line in f if line.startswith(("SigBlk", "SigIgn", "SigCgt", "SigPnd", "ShdPnd")))
    except OSError as exc:
        return f"(no /proc status: {exc})"


async def test_cli_ls_by_host_follow_and_redrive_all_or_by_agent(nats_server: NatsServer) -> None:
    """`agents ls --host`, `agent history --follow` stopped by Ctrl-C, `dlq redrive --agent` and
    `--all`: a dead letter redriven twice (its removal lost) is applied once."""
    url = nats_server.url
    # started first, before the agent has a log: all it prints was committed after it started
    follower = subprocess.Popen(
        [sys.executable, "-m", "jetagents.cli", "agent", "history", "counter/c1", "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # faulthandler: SIGABRT dumps every thread's stack, should it ever not end (below)
        env=dict(os.environ, JETAGENTS_NATS_URL=url, PYTHONFAULTHANDLER="1"),
        preexec_fn=_sigint_as_a_terminal_sends_it,  # signal calls only, before exec
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in follower.stdout or ()], daemon=True).start()
    # its stderr read as it comes too: a full pipe nobody reads would block the follower itself
    errors: list[str] = []
    threading.Thread(target=lambda: [errors.append(x) for x in follower.stderr or ()], daemon=True).start()
    try:
        async with started_hosts(url, [*EXAMPLE_AGENTS, Order]) as make:
            hosts = [await make(host_id="h-a"), await make(host_id="h-b")]
            client = await Client.connect(settings=ClientSettings(nats_url=url, partitions=8, request_timeout_s=30))
            try:
                await _ls_follow_and_redrive(url, client, hosts, follower, lines, errors)
            finally:
                await client.close()
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


async def _ls_follow_and_redrive(
    url: str,
    client: Client,
    hosts: list[Host],
    follower: subprocess.Popen[str],
    lines: queue.Queue[str],
    errors: list[str],
) -> None:
    admin = Inspector(client)

    def both_serve() -> bool:  # the ring split and each host holds its share
        held = [h.coordinator.held for h in hosts if h.coordinator is not None]
        return len(held) == 2 and all(held) and sum(map(len, held)) == 8

    await eventually(both_serve, 60, 0.2)
    for i in range(10):
        await client.agent("counter", f"c{i}").request("increment", {"by": i + 1}, command_id=f"c-{i}")
    serving = {h.settings.host_id: set(h.catalog.activations) for h in hosts}
    assert all(serving.values()), serving  # each host serves some of them: the filter has work to do
    (listed,) = await asyncio.to_thread(_cli, url, "agents", "ls", "--json", "--host", "h-a")
    assert {f"{a['type']}.{a['id']}" for a in listed} == serving["h-a"]
    assert {a["host"] for a in listed} == {"h-a"}

    # -- history --follow: each commit as it comes, then Ctrl-C ends it cleanly ------------------
    first = orjson.loads(await asyncio.to_thread(lines.get, True, 120))
    assert (first["n"], first["cmd"]) == (1, "c-1")
    await client.agent("counter", "c1").request("increment", {"by": 5}, command_id="c-1b")
    second = orjson.loads(await asyncio.to_thread(lines.get, True, 120))
    assert (second["n"], second["cmd"]) == (2, "c-1b")
    follower.send_signal(signal.SIGINT)
    try:
        code = await asyncio.to_thread(follower.wait, 60)
    except subprocess.TimeoutExpired:  # say where it hangs: its signal masks, every thread's stack
        state = _signal_state(follower.pid)
        mine = sorted(signal.pthread_sigmask(signal.SIG_BLOCK, []))
        follower.send_signal(signal.SIGABRT)
        await asyncio.to_thread(follower.wait, 10)
        await asyncio.sleep(0.5)  # the reader thread takes the rest of stderr
        pytest.fail(
            f"history --follow did not end 60 s after SIGINT; its signals:\n{state}"
            f"this test's blocked signals: {mine}\nits stderr:\n" + "".join(errors)[-20_000:]
        )
    assert code == 0, "".join(errors)[-5_000:]
    await asyncio.sleep(0.2)  # the reader thread takes the rest of stderr
    assert "Traceback" not in "".join(errors)

    # -- redrive: two agents' dead letters, one by --agent, the rest by --all -------------------
    for oid in ("o1", "o2"):
        with pytest.raises(Exception, match="never spawned"):
            await client.agent("order", oid).request("place", {"qty": 3}, command_id=f"o-{oid}", timeout=30)
        await client.spawn("order", oid)
    letters = {dl.command_id: dl for dl in await admin.dead_letters("order")}
    assert set(letters) == {"o-o1", "o-o2"}
    lost = await client.nc.jetstream().get_msg("AGT_DLQ", letters["o-o1"].seq)

    (one,) = await asyncio.to_thread(_cli, url, "dlq", "redrive", "--agent", "order/o1", "--wait", "20")
    assert one["command_id"] == "o-o1" and one["reply"] == {"ok": True, "result": 3} and one["removed"]
    assert [dl.command_id for dl in await admin.dead_letters("order")] == ["o-o2"]
    # o1's dead letter back, as if its removal after the first redrive had been lost
    kept = {k: v for k, v in (lost.headers or {}).items() if k != "Nats-Msg-Id"}
    await client.nc.jetstream().publish(lost.subject, lost.data or b"", headers=kept)

    redriven = await asyncio.to_thread(_cli, url, "dlq", "redrive", "--all", "--wait", "20")
    assert sorted(r["command_id"] for r in redriven) == ["o-o1", "o-o2"]
    assert all(r["reply"] == {"ok": True, "result": 3} and r["removed"] for r in redriven)
    for oid in ("o1", "o2"):  # once each, under the original command id
        assert [c["cmd"] for c in await commits(client.nc, "order", oid)] == [f"o-{oid}"]
    assert await admin.dead_letters() == []
