"""The NATS node that leads both the cluster bucket (``KV_agt_cluster``) and the command
stream (``AGT_CMD``) is paused (SIGSTOP for 7 s, then SIGCONT) or killed (-9, then
restarted), on a real 3-node cluster (R3) with three hosts running and commands flowing.

Checked: every partition is served again (calls to an agent of each partition answer, and
keep answering for 5 s) within ``RECOVERY_BUDGET_S`` of the node coming back (pause), of the
kill (the other two nodes keep a quorum) and of the killed node's restart; the exactly-once
workload that ran through the fault applied every acknowledged command once.

Before the fix a host that fenced itself during the fault kept the claims of partitions the
ring then gave to others, and those waited out the 45 s handoff timeout (about one round in
four). After a kill, a partition whose consumer had lost its raft leader with the node
stayed unserved for 40 s and more in about one run of fifteen under load: each start timed
out during the consumer's leader election, and the next start deleted it (ADR 0037, session
7). Measured recovery, and the reason for the budget: docs/adr/0037 and docs/architecture.md
("Recovery after NATS node faults").
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from jetagents import Client, ClientSettings, JetAgentsError
from jetagents._core.ids import partition_of
from jetagents._host.coordination import cluster_status
from jetagents._nats.api import js_api
from jetagents._nats.kv import JetStreamStore
from jetagents.testing.server import NatsCluster, NatsServer
from tests.chaos.test_cluster import Workload, check

pytestmark = pytest.mark.chaos

PARTITIONS = 8
PAUSE_S = 7.0  # past the member TTL (2 s) and a stream leader election
# Measured on the loaded 2-core test machine (ADR 0037), to the last failed call: pause
# median 4.9 s, worst 5.7 s after SIGCONT (21 runs); kill median 10.5 s, worst 19.9 s after
# the kill, nothing after the restart (17 runs). A claim left behind costs the 45 s handoff
# timeout: the budget leaves room for a loaded machine and stays well below that.
RECOVERY_BUDGET_S = 35.0
KV_STREAM = "KV_agt_cluster"
CMD_STREAM = "AGT_CMD"


def probes() -> dict[int, str]:
    """One agent id per partition."""
    out: dict[int, str] = {}
    i = 0
    while len(out) < PARTITIONS:
        out.setdefault(partition_of("counter", f"probe{i}", PARTITIONS), f"probe{i}")
        i += 1
    return out


async def all_served(client: Client, budget_s: float) -> float:
    """Seconds until a call to an agent of every partition has answered; fails the test
    past ``budget_s``, naming the partitions still unserved."""
    t0 = time.monotonic()
    served: dict[int, float] = {}

    async def probe(p: int, agent: str) -> None:
        while True:
            try:
                await client.agent("counter", agent).request("get", delivery="at-most-once", timeout=1.0)
                served[p] = time.monotonic() - t0
                return
            except JetAgentsError:
                await asyncio.sleep(0.1)

    try:
        async with asyncio.timeout(budget_s):
            await asyncio.gather(*(probe(p, a) for p, a in probes().items()))
    except TimeoutError:
        missing = sorted(set(range(PARTITIONS)) - set(served))
        pytest.fail(f"partitions {missing} not served {budget_s}s after the fault")
    return max(served.values())


class Prober:
    """Calls an agent of every partition over and over, and remembers when each call last
    failed: a partition is served again from its last failure on. (Right after a fault the
    hosts still answer from memory until they notice, within a member TTL, that they lost
    the store, so the first answer after a fault proves nothing; the last failure does.)"""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.last_failure: dict[int, float] = {}
        self.last_success: dict[int, float] = {}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._probe(p, a)) for p, a in probes().items()]

    async def _probe(self, p: int, agent: str) -> None:
        while not self._stop.is_set():
            try:
                await self.client.agent("counter", agent).request("get", delivery="at-most-once", timeout=1.0)
                self.last_success[p] = time.monotonic()
                await asyncio.sleep(0.05)
            except JetAgentsError:
                self.last_failure[p] = time.monotonic()
                await asyncio.sleep(0.05)

    async def served_since(
        self, since: float, budget_s: float, stable_s: float = 5.0, logs: Path | None = None
    ) -> float:
        """Seconds from ``since`` to the last failure, once every partition has answered
        without a failure for ``stable_s`` (more than a member TTL: the time hosts take to
        notice they lost the store); fails the test past ``since + budget_s``, saying which
        partitions were not served and what the hosts logged (the host logs in ``logs``)."""
        try:
            return await self._served_since(since, budget_s, stable_s)
        except TimeoutError:
            now = time.monotonic()
            late = {
                p: f"last failure {self.last_failure.get(p, since) - since:.1f}s, "
                f"last success {self.last_success.get(p, since) - since:.1f}s after the fault"
                for p in range(PARTITIONS)
                if self.last_success.get(p, 0.0) <= self.last_failure.get(p, 0.0)
                or now - self.last_failure.get(p, 0.0) < stable_s
            }
            where = await _whereabouts(self.client, sorted(late))
            pytest.fail(
                f"not served stably {now - since:.1f}s after the fault: {late}\n{where}\n{_host_warnings(logs)}"
            )

    async def _served_since(self, since: float, budget_s: float, stable_s: float) -> float:
        async with asyncio.timeout(max(1.0, since + budget_s + stable_s - time.monotonic())):
            while True:
                now = time.monotonic()
                last_fail = max([since, *self.last_failure.values()])
                fresh = all(self.last_success.get(p, 0.0) > self.last_failure.get(p, 0.0) for p in range(PARTITIONS))
                if fresh and now - last_fail >= stable_s:
                    recovery = max(0.0, last_fail - since)
                    assert recovery <= budget_s, f"a partition was unserved {recovery:.1f}s after the fault"
                    return recovery
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _whereabouts(client: Client, partitions: list[int]) -> str:
    """For a failure message: who the ring gives each late partition, who holds its claim,
    and whether its two consumers (normal and high lane) have a leader."""
    store = JetStreamStore(client.nc, "agt_cluster", replicas=3, timeout_s=2.0)
    try:
        ring, claims = await store.get("ring"), await store.scan("claim.")
    except JetAgentsError as exc:
        return f"cluster bucket unreadable: {exc}"
    owners = list(ring.value.get("owners", [])) if ring else []
    lines = []
    for p in partitions:
        claim = claims.get(f"claim.{p}")
        consumers = []
        for stream, name in ((CMD_STREAM, f"p{p}"), (f"{CMD_STREAM}H", f"h{p}")):
            try:
                info = await js_api(client.nc, f"$JS.API.CONSUMER.INFO.{stream}.{name}", None, 2.0)
                consumers.append(f"{name} leader {(info.get('cluster') or {}).get('leader')}")
            except JetAgentsError as exc:
                consumers.append(f"{name} {exc}")
        owner = owners[p] if p < len(owners) else "?"
        lines.append(f"partition {p}: ring gives it to {owner!r}, claim {claim.value if claim else None}; {consumers}")
    return "\n".join(lines)


def _host_warnings(logs: Path | None) -> str:
    """The hosts' warnings and errors (fencing, hand-off timeouts, partitions that failed to
    start), for a failure message: what a recovery past its budget waited on."""
    if logs is None:
        return ""
    lines = []
    for f in sorted(logs.glob("host-*.log")):
        for line in f.read_text(errors="replace").splitlines():
            if '"level": "warning"' in line or '"level": "error"' in line:
                lines.append(f"{f.name}: {line[:300]}")
    return "\n".join(lines[-60:])


async def stream_leader(client: Client, stream: str) -> str:
    async with asyncio.timeout(30):
        while True:
            try:
                info = await js_api(client.nc, f"$JS.API.STREAM.INFO.{stream}", None, 5)
                leader = (info.get("cluster") or {}).get("leader")
                if leader:
                    return str(leader)
            except JetAgentsError:
                pass
            await asyncio.sleep(0.2)


async def lead_both(client: Client, cluster: NatsCluster) -> NatsServer:
    """The node leading the cluster bucket, after moving the command stream's leader there."""
    target = await stream_leader(client, KV_STREAM)
    async with asyncio.timeout(60):
        while await stream_leader(client, CMD_STREAM) != target:
            try:
                await js_api(
                    client.nc,
                    f"$JS.API.STREAM.LEADER.STEPDOWN.{CMD_STREAM}",
                    {"placement": {"preferred": target}},
                    5,
                )
            except JetAgentsError:
                pass
            await asyncio.sleep(0.5)
            target = await stream_leader(client, KV_STREAM)
    return next(s for s in cluster.servers if s.name == target)


async def all_three_hosts_serve(client: Client) -> None:
    """Every host started (a host process takes seconds to start on a loaded machine) and
    holding its share: the fault must hit a cluster of three, not one still forming."""
    store = JetStreamStore(client.nc, "agt_cluster", replicas=3)
    async with asyncio.timeout(120):
        while True:
            try:
                st = await cluster_status(store)
            except JetAgentsError:
                st = {"hosts": [], "unowned": 1}
            alive = [h for h in st["hosts"] if h["alive"]]
            if (
                len(alive) == 3
                and st["unowned"] == 0
                and all(h["partitions_assigned"] == h["partitions_held"] > 0 for h in alive)
            ):
                return
            await asyncio.sleep(0.3)


@pytest.fixture
async def env(nats_cluster: NatsCluster, host_process_factory: Any) -> AsyncIterator[tuple[NatsCluster, Client]]:
    extra = {"JETAGENTS_REPLICAS": "3", "JETAGENTS_PARTITIONS": str(PARTITIONS)}
    for i in range(3):
        host_process_factory(nats_cluster.url, JETAGENTS_HOST_ID=f"h{i}", **extra).start()
    client = await Client.connect(
        settings=ClientSettings(nats_url=nats_cluster.url, partitions=PARTITIONS, request_timeout_s=10)
    )
    try:
        await all_three_hosts_serve(client)
        await all_served(client, 60)
        yield nats_cluster, client
    finally:
        await client.close()


async def _probe_client(cluster: NatsCluster, victim: NatsServer) -> Client:
    """A client on the other nodes: what is measured is the cluster's recovery, not this
    client's reconnect."""
    url = ",".join(s.url for s in cluster.servers if s is not victim)
    # no circuit breaker: it would hold the probes back for seconds after the failures
    # the fault causes, and the measure would be the breaker's, not the cluster's
    settings = ClientSettings(nats_url=url, partitions=PARTITIONS, breaker_failures=1_000_000)
    return await Client.connect(settings=settings)


async def _run(env: tuple[NatsCluster, Client], fault: str, logs: Path) -> list[float]:
    cluster, client = env
    wl = Workload(client, fault)
    load = wl.start(workers=6)
    recoveries: list[float] = []
    try:
        await asyncio.sleep(1.0)
        victim = await lead_both(client, cluster)
        assert victim.proc is not None
        probe_client = await _probe_client(cluster, victim)
        prober = Prober(probe_client)
        prober.start()
        try:
            before = wl.acked
            if fault == "pause":
                victim.proc.send_signal(signal.SIGSTOP)
                try:
                    await asyncio.sleep(PAUSE_S)
                finally:
                    victim.proc.send_signal(signal.SIGCONT)
                recoveries.append(await prober.served_since(time.monotonic(), RECOVERY_BUDGET_S, logs=logs))
            else:
                killed_at = time.monotonic()
                victim.kill()  # the two other nodes keep the quorum: served again without it
                recoveries.append(await prober.served_since(killed_at, RECOVERY_BUDGET_S, logs=logs))
                await asyncio.to_thread(victim.start, 30)
                recoveries.append(await prober.served_since(time.monotonic(), RECOVERY_BUDGET_S, logs=logs))
        finally:
            await prober.stop()
            await probe_client.close()
        async with asyncio.timeout(60):  # commands flow again
            while wl.acked < before + 30:
                await asyncio.sleep(0.1)
    finally:
        wl.stop.set()
        await load
    await check(client, wl)  # exactly once, gapless, writers never interleave
    took = ", ".join(f"{r:.2f}s" for r in recoveries)
    print(f"\n{fault}: every partition served again {took} after; {wl.acked} acked")
    return recoveries


async def test_cluster_bucket_leader_paused(env: tuple[NatsCluster, Client], tmp_path: Path) -> None:
    await _run(env, "pause", tmp_path)  # tmp_path: where host_process_factory keeps the host logs


async def test_cluster_bucket_leader_killed_and_restarted(env: tuple[NatsCluster, Client], tmp_path: Path) -> None:
    await _run(env, "kill", tmp_path)
