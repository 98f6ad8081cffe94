"""Real processes, real nats-server: the host is killed (SIGKILL) at random points of an
exactly-once workload, or drained (SIGTERM); afterwards every counter equals the number
of distinct acknowledged increments, every event log is gapless, nothing ran twice."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections import Counter as Tally
from pathlib import Path
from typing import Any

import pytest

from jetagents import Client, ClientSettings, JetAgentsError, NatsServer
from tests.integration.helpers import commits

pytestmark = pytest.mark.chaos

AGENTS = 30


async def _send_until_acked(client: Client, agent: str, cmd_id: str, deadline: float) -> Any:
    """What a careful caller does: re-send with the SAME command id until answered."""
    while True:
        try:
            return await client.agent("counter", agent).request_reply(
                "increment", {"by": 1}, command_id=cmd_id, timeout=4
            )
        except JetAgentsError as err:
            if not err.retryable or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _check_logs(client: Client, expected: Tally[str]) -> None:
    for agent, count in expected.items():
        log = await commits(client.nc, "counter", agent)
        assert [c["n"] for c in log] == list(range(1, count + 1)), f"{agent}: gap or extra commit"
        cmds = [c["cmd"] for c in log]
        assert len(set(cmds)) == len(cmds), f"{agent}: a command was applied twice"
        value = await client.agent("counter", agent).request("get", timeout=10)
        assert value == count, f"{agent}: {value} != {count} acknowledged increments"


async def test_sigkill_during_exactly_once_workload(nats_server: NatsServer, host_process_factory: Any) -> None:
    rng = random.Random(20261123)
    hp = host_process_factory(nats_server.url).start()
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
    try:
        await hp.wait_ready(client)
        total = 4000
        plan = [(f"k{rng.randrange(AGENTS)}", f"cmd-{i}") for i in range(total)]
        expected: Tally[str] = Tally(agent for agent, _ in plan)
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        for item in plan:
            queue.put_nowait(item)
        deadline = time.monotonic() + 150
        acked: list[str] = []
        duplicate_answers = 0

        async def worker() -> None:
            nonlocal duplicate_answers
            while True:
                try:
                    agent, cmd_id = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                reply = await _send_until_acked(client, agent, cmd_id, deadline)
                acked.append(cmd_id)
                if rng.random() < 0.1:  # a duplicate send of an acknowledged command
                    again = await _send_until_acked(client, agent, cmd_id, deadline)
                    assert again.duplicate and again.result == reply.result
                    duplicate_answers += 1

        kills = 0

        async def killer() -> None:
            nonlocal kills
            while len(acked) < total and kills < 6:
                await asyncio.sleep(rng.uniform(0.3, 1.2))
                hp.kill()
                kills += 1
                await asyncio.sleep(rng.uniform(0.0, 0.5))
                hp.start()

        workers = [asyncio.create_task(worker()) for _ in range(48)]
        kill_task = asyncio.create_task(killer())
        await asyncio.gather(*workers)
        kill_task.cancel()
        await asyncio.gather(kill_task, return_exceptions=True)
        if hp.proc is None or hp.proc.poll() is not None:
            hp.start()
        assert kills >= 3, "the workload ended before the host was killed enough times"
        assert len(acked) == total and len(set(acked)) == total
        assert duplicate_answers > 100
        await hp.wait_ready(client)
        await _check_logs(client, expected)
    finally:
        await client.close()


def _final_stats(log_path: Path) -> list[dict[str, Any]]:
    out = []
    for line in log_path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "host_stopped":
            out.append(rec)
    return out


async def test_sigterm_drain_loses_and_repeats_nothing(nats_server: NatsServer, host_process_factory: Any) -> None:
    hp = host_process_factory(nats_server.url, JETAGENTS_DRAIN_GRACE_S="20").start()
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
    try:
        await hp.wait_ready(client)
        total = 800
        expected: Tally[str] = Tally()
        sem = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            agent = f"d{i % AGENTS}"
            expected[agent] += 1
            async with sem:
                # long timeout: the caller never re-sends, so any repeat would be the host's
                await client.agent("counter", agent).request("increment", {"by": 1}, command_id=f"d-{i}", timeout=60)

        load = asyncio.gather(*[one(i) for i in range(total)])
        await asyncio.sleep(1.0)
        hp.signal(signal.SIGTERM)
        assert await asyncio.to_thread(hp.proc.wait, 30) == 0  # type: ignore[union-attr]
        hp.start()
        await load
        await _check_logs(client, expected)
        hp.terminate()
        stops = _final_stats(hp.log_path)
        assert len(stops) == 2
        # the second host never met a command the first had already applied
        assert stops[1]["duplicates"] == 0
        assert stops[0]["processed"] > 0 and stops[1]["processed"] > 0
    finally:
        await client.close()
