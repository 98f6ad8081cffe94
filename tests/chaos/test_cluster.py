"""Real processes on a real 3-node nats-server cluster (R3 streams and KV): three hosts
share the agents; an exactly-once workload runs while a host is killed -9, drained,
added, a nats-server node is killed and restarted, or a host is paused past its lease.

Checker: every acknowledged command applied exactly once (counter values, gapless logs,
no command id twice); the writers of every agent's log never interleave (the writer's
claim only grows along the log, one claim belongs to one host); no command waited longer
than the failover budget.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter as Tally
from collections import defaultdict
from typing import Any

import orjson
import pytest

from jetagents import Client, ClientSettings, JetAgentsError
from jetagents._host.coordination import cluster_status
from jetagents._nats.kv import JetStreamStore
from jetagents.testing.server import NatsCluster
from tests.integration.helpers import read_all

pytestmark = pytest.mark.chaos

AGENTS = 24
# Kill -9 of a host: its member key expires (TTL 2 s here), the leader moves its
# partitions, the new owner claims and recreates the consumers. A paused host: the same
# plus its own self-fencing. A nats-server node: stream and consumer leaders re-elected.
# Budget for any single command, retries included, on this 2-core machine:
FAILOVER_BUDGET_S = 20.0


class Workload:
    """Exactly-once increments with unique command ids, each re-sent (same id) until
    acknowledged, as a careful caller does."""

    def __init__(self, client: Client, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.expected: Tally[str] = Tally()
        self.acked = 0
        self.latencies: list[float] = []
        self.stop = asyncio.Event()
        self.n = 0

    async def one(self, agent: str, cmd_id: str) -> None:
        t0 = time.monotonic()
        while True:
            try:
                await self.client.agent("counter", agent).request(
                    "increment", {"by": 1}, command_id=cmd_id, delivery="exactly-once", timeout=5
                )
                break
            except JetAgentsError as err:
                if not err.retryable or time.monotonic() - t0 > 90:
                    raise
                await asyncio.sleep(0.1)
        self.latencies.append(time.monotonic() - t0)
        self.expected[agent] += 1
        self.acked += 1

    async def worker(self, w: int) -> None:
        i = 0
        while not self.stop.is_set():
            agent = f"{self.prefix}{(w * 7 + i) % AGENTS}"
            await self.one(agent, f"{self.prefix}-{w}-{i}")
            i += 1

    def start(self, workers: int = 12) -> asyncio.Future[Any]:
        return asyncio.gather(*(self.worker(w) for w in range(workers)))


async def check(client: Client, wl: Workload) -> dict[str, Any]:
    """Exactly once, gapless, no interleaving; returns the per-agent writer history."""
    msgs = await read_all(client.nc, "AGT_EVT")
    logs: dict[str, list[tuple[int, dict[str, Any], str]]] = defaultdict(list)
    for seq, subject, hdrs, data in msgs:
        agent = subject.rsplit(".", 1)[1]
        if agent.startswith(wl.prefix):
            logs[agent].append((seq, orjson.loads(data), hdrs.get("Agt-Host", "")))
    history: dict[str, list[tuple[str, int, int]]] = {}
    for agent, count in wl.expected.items():
        log = logs[agent]
        assert [c["n"] for _, c, _ in log] == list(range(1, count + 1)), f"{agent}: gap, or not exactly once"
        cmds = [c["cmd"] for _, c, _ in log]
        assert len(set(cmds)) == len(cmds), f"{agent}: a command was applied twice"
        owns = [c["own"] for _, c, _ in log]
        assert owns == sorted(owns), f"{agent}: an older owner wrote after a newer one"
        by_own: dict[int, str] = {}
        runs: list[tuple[str, int, int]] = []  # (host, first seq, last seq)
        for seq, c, host in log:
            assert by_own.setdefault(c["own"], host) == host, f"{agent}: one claim, two writers"
            if runs and runs[-1][0] == host:
                runs[-1] = (host, runs[-1][1], seq)
            else:
                runs.append((host, seq, seq))
        history[agent] = runs
        value = await client.agent("counter", agent).request("get", timeout=30)
        assert value == count, f"{agent}: {value} != {count} acknowledged increments"
    return history


@pytest.fixture
async def cluster_env(nats_cluster: NatsCluster, host_process_factory: Any) -> Any:
    env = {"JETAGENTS_REPLICAS": "3", "JETAGENTS_DRAIN_GRACE_S": "15"}
    hosts = [host_process_factory(nats_cluster.url, JETAGENTS_HOST_ID=f"h{i}", **env).start() for i in range(3)]
    client = await Client.connect(
        settings=ClientSettings(nats_url=nats_cluster.url, partitions=8, request_timeout_s=10)
    )
    store = JetStreamStore(client.nc, "agt_cluster", replicas=3)

    async def status() -> dict[str, Any]:
        return await cluster_status(store)

    async def settled(n_hosts: int, timeout_s: float = 60) -> dict[str, Any]:
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    st = await status()
                except JetAgentsError:
                    await asyncio.sleep(0.3)
                    continue
                alive = [h for h in st["hosts"] if h["alive"] and not h["draining"]]
                if (
                    len(alive) == n_hosts
                    and st["unowned"] == 0
                    and st["partitions"] == 8
                    and all(h["partitions_assigned"] == h["partitions_held"] > 0 for h in alive)
                ):
                    return st
                await asyncio.sleep(0.3)

    await settled(3)
    try:
        yield nats_cluster, hosts, client, settled, host_process_factory, env
    finally:
        await client.close()


async def run_scenario(cluster_env: Any, disrupt: Any, prefix: str) -> tuple[Workload, dict[str, Any]]:
    cluster, hosts, client, settled, factory, env = cluster_env
    wl = Workload(client, prefix)
    load = wl.start()
    await asyncio.sleep(2.0)
    before = wl.acked
    await disrupt(cluster, hosts, client, settled, factory, env)
    after = wl.acked
    # the cluster serves again: the workload keeps making progress (bounded wait, so a
    # busy machine slows the test down instead of failing it)
    async with asyncio.timeout(60):
        while wl.acked < after + 50:
            await asyncio.sleep(0.1)
    # and every agent is served after the disruption, wherever it lives now
    await asyncio.gather(*(wl.one(f"{prefix}{a}", f"{prefix}-after-{a}") for a in range(AGENTS)))
    wl.stop.set()
    await load
    assert wl.acked > before + 50, "the workload made no progress after the disruption"
    history = await check(client, wl)
    worst = max(wl.latencies)
    print(f"\n{prefix}: {wl.acked} commands acked, worst command {worst:.2f}s, agents {len(history)}")
    assert worst < FAILOVER_BUDGET_S, f"a command waited {worst:.1f}s (budget {FAILOVER_BUDGET_S}s)"
    return wl, history


async def test_host_killed_minus_9(cluster_env: Any) -> None:
    async def disrupt(cluster: Any, hosts: Any, client: Any, settled: Any, *_: Any) -> None:
        hosts[1].kill()
        st = await settled(2)
        assert {h["host"] for h in st["hosts"] if h["alive"]} == {"h0", "h2"}

    _, history = await run_scenario(cluster_env, disrupt, "kill")
    # the killed host's agents were taken over by the others
    written_by_h1 = [a for a, runs in history.items() if any(r[0] == "h1" for r in runs)]
    assert written_by_h1, "the killed host never served an agent of the workload"
    assert all(history[a][-1][0] != "h1" for a in written_by_h1)


async def test_host_drained(cluster_env: Any) -> None:
    async def disrupt(cluster: Any, hosts: Any, client: Any, settled: Any, *_: Any) -> None:
        code = await asyncio.to_thread(hosts[1].terminate, 60)
        assert code == 0
        await settled(2)

    await run_scenario(cluster_env, disrupt, "drain")


async def test_host_added(cluster_env: Any) -> None:
    async def disrupt(cluster: Any, hosts: Any, client: Any, settled: Any, factory: Any, env: Any) -> None:
        hosts.append(factory(cluster.url, JETAGENTS_HOST_ID="h3", **env).start())
        st = await settled(4)
        assert next(h for h in st["hosts"] if h["host"] == "h3")["partitions_held"] >= 1

    await run_scenario(cluster_env, disrupt, "join")


async def test_nats_node_killed_and_restarted(cluster_env: Any) -> None:
    async def disrupt(cluster: Any, hosts: Any, client: Any, settled: Any, *_: Any) -> None:
        node = cluster.servers[1]
        node.kill()
        await asyncio.sleep(4.0)
        await asyncio.to_thread(node.start, 30)
        await settled(3)

    await run_scenario(cluster_env, disrupt, "node")


async def test_host_paused_past_its_lease(cluster_env: Any) -> None:
    async def disrupt(cluster: Any, hosts: Any, client: Any, settled: Any, *_: Any) -> None:
        hosts[2].signal(signal.SIGSTOP)
        await asyncio.sleep(5.0)  # member TTL is 2 s: the others take its partitions
        st = await settled(2)
        assert all(h["host"] != "h2" or not h["alive"] for h in st["hosts"])
        hosts[2].signal(signal.SIGCONT)  # it comes back, finds itself fenced, rejoins
        await settled(3)

    _, history = await run_scenario(cluster_env, disrupt, "pause")
    paused = [a for a, runs in history.items() if any(r[0] == "h2" for r in runs[:-1])]
    assert paused, "the paused host's agents were not taken over"
