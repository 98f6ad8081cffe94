"""Event-log tails and projections against a real nats-server (ADR 0057): history then live
with no gap and no duplicate while commits keep coming; a projection process killed -9 in
the middle resumes from its stored position with every event applied once; a rebuild gives
the same read model."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any

import nats
import orjson
import pytest
from typer.testing import CliRunner

from jetagents import Client, Host, NatsServer
from jetagents._core.errors import Unavailable
from jetagents._core.kv import CasConflict
from jetagents._core.projection import Position
from jetagents._nats.projection_store import ProjectionStore
from jetagents.cli import app
from jetagents.examples.counter import Counter, Incremented
from jetagents.testing.server import child_preexec
from tests.conftest import REPO
from tests.integration.helpers import eventually, stream_state
from tests.projection_agents import Totals, commit_body


async def test_catch_up_then_live_tail_has_no_gap_and_no_duplicate(host: Host, client: Client) -> None:
    agents = [client.agent("counter", f"tail-{i}") for i in range(3)]
    before = [(a, 1 + i % 5) for i in range(30) for a in agents[i % 3 : i % 3 + 1]]
    for ref, by in before:
        await ref.send("increment", {"by": by})
    await eventually(lambda: host.stats["processed"] >= len(before), 60, 0.05)
    since_ms = int(time.time() * 1000) + 1  # every commit so far was stored before this
    await eventually(lambda: time.time() * 1000 > since_ms, 5, 0.001)

    seen: list[Any] = []
    during = 30
    total = len(before) + during

    async def keep_committing() -> None:
        for i in range(during):
            if i == 10:  # the rest only once the tail handed out all so far: it tails live
                await eventually(lambda: len(seen) >= len(before) + 10, 60, 0.01)
            await agents[i % 3].send("increment", {"by": 1})

    async with client.events("counter", decode=[Counter]) as tail:
        writer = asyncio.create_task(keep_committing())
        async with asyncio.timeout(90):
            async for commit in tail:
                if commit.agent.id.startswith("tail-"):
                    seen.append(commit)
                if len(seen) == total:
                    break
        await writer
        # nothing more than what was written comes (no duplicate after the switch to live)
        extra, _ = await tail.next_batch(wait_s=0.3)
        assert [c for c in extra if c.agent.id.startswith("tail-")] == []

    seqs = [c.seq for c in seen]
    assert seqs == sorted(set(seqs)), "each commit once, in stream order"
    per_agent: dict[str, list[int]] = defaultdict(list)
    for c in seen:
        per_agent[c.agent.id].append(c.n)
        assert all(isinstance(e.data, Incremented) for e in c.events), "decoded with the agent's class"
    for ns in per_agent.values():
        assert ns == list(range(1, len(ns) + 1)), "every commit of every agent, no gap"
    assert sum(len(ns) for ns in per_agent.values()) == total
    # a tail from a time: the first commit stored since (the first of those written live)
    async with client.events("counter", since_ms=since_ms) as timed:
        assert (await anext(aiter(timed))).seq == seen[len(before)].seq
    # one agent's tail, resumed after an offset: exactly what follows it
    one = client.events("counter", "tail-1", after=seen[5].seq)
    async with one:
        first = await anext(aiter(one))
    expected = next(c for c in seen[6:] if c.agent.id == "tail-1")
    assert (first.seq, first.agent, first.n) == (expected.seq, expected.agent, expected.n)


async def _publish_commits(
    nc: Any, per_agent: dict[str, int], agents: list[str], count: int, pause_s: float = 0.0
) -> None:
    """``count`` commits spread over ``agents`` written straight to the log, as hosts write them."""
    js = nc.jetstream()
    for i in range(count):
        if pause_s:
            await asyncio.sleep(pause_s)
        aid = agents[i % len(agents)]
        per_agent[aid] += 1
        n = per_agent[aid]
        await js.publish(f"agt.evt.counter.{aid}", commit_body(n, by=n % 7 + 1), headers={"Nats-Msg-Id": f"{aid}:m{n}"})


def _expected(per_agent: dict[str, int]) -> dict[str, dict[str, int]]:
    out = {aid: {"total": sum(k % 7 + 1 for k in range(1, n + 1)), "events": n, "n": n} for aid, n in per_agent.items()}
    out["all"] = {"total": sum(r["total"] for r in out.values()), "events": sum(per_agent.values())}
    return out


async def test_a_projection_killed_mid_stream_resumes_once_and_a_rebuild_matches(
    nats_server: NatsServer, client: Client
) -> None:
    await client.ensure_topology()
    nc = await nats.connect(nats_server.url)
    agents = [f"k{i}" for i in range(5)]
    per_agent: dict[str, int] = dict.fromkeys(agents, 0)
    await _publish_commits(nc, per_agent, agents, 200)
    reader = client.projections.reader("totals")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cli = [sys.executable, "-m", "jetagents.cli", "projection"]
    proc = subprocess.Popen(
        [*cli, "run", "tests.projection_agents:Totals", "--nats-url", nats_server.url, "--lease-ttl-s", "2"],
        cwd=REPO,
        env=env,
        preexec_fn=child_preexec,
    )
    try:
        # it stores a first position, then commits keep coming while it applies them
        async def started() -> bool:
            try:
                pos = await reader.position()
            except Unavailable:  # no projection ran yet: its bucket is not there
                return False
            return pos is not None and pos.seq > 0

        await eventually(started, 60, 0.05)
        writer = asyncio.create_task(_publish_commits(nc, per_agent, agents, 400, pause_s=0.005))

        async def following() -> bool:  # it applies commits written after it started
            pos = await reader.position()
            return writer.done() or (pos is not None and pos.seq > 200)

        await eventually(following, 60, 0.02)
        assert not writer.done(), "killed while commits still come"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        await writer
        killed_at = await reader.position()
        assert killed_at is not None
        last = int((await stream_state(nc, "AGT_EVT"))["last_seq"])

        stop = asyncio.Event()
        runner = client.projections.runner(Totals(), lease_ttl_s=2, batch_events=50, flush_s=0.05)
        task = asyncio.create_task(runner.run(stop=stop))

        async def caught_up(gen: int) -> bool:
            pos = await reader.position()
            return pos is not None and pos.gen == gen and pos.seq == last

        await eventually(lambda: caught_up(1), 60, 0.05)
        want = _expected(per_agent)
        got = {key: await reader.get(key) for key in want}
        assert got == want, f"each event applied once (killed at {killed_at})"

        new = await client.projections.rebuild("totals")
        assert new == Position(seq=0, gen=2, events=0, ts_ms=new.ts_ms)
        await eventually(lambda: caught_up(2), 60, 0.05)
        assert {key: await reader.get(key) for key in want} == want
        pos = await reader.position()
        assert pos is not None and pos.events == sum(per_agent.values())
        stop.set()
        await asyncio.wait_for(task, 30)
        # the fence: rows written against a position that moved on are refused, all of them
        store = ProjectionStore(client.nc, client.subjects)
        found = await store.position("totals")
        assert found is not None
        with pytest.raises(CasConflict):
            await store.commit("totals", found[0], found[1] - 1, 2, {"k0": {"total": -1}, "k1": None})
        assert {key: await reader.get(key) for key in want} == want
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        await nc.close()


def test_the_cli_shows_and_rebuilds_a_projection(nats_server: NatsServer) -> None:
    cli = CliRunner()
    url = ["--nats-url", nats_server.url]
    rebuilt = cli.invoke(app, ["projection", "rebuild", "cli-proj", *url])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert orjson.loads(rebuilt.stdout)["result"]["gen"] == 2  # from generation 1, never run
    shown = cli.invoke(app, ["projection", "status", "cli-proj", *url])
    assert shown.exit_code == 0, shown.output
    assert {k: v for k, v in orjson.loads(shown.stdout)["result"].items() if k != "ts_ms"} == {
        "seq": 0,
        "gen": 2,
        "events": 0,
    }
    assert cli.invoke(app, ["projection", "status", "bad name", *url]).exit_code != 0
