"""Partition strategies for shared state on a real 3-node cluster: two of the three
nats-servers are killed, so the R3 state bucket has no quorum; the client stays connected
to the survivor. Then the nodes come back and (``continue``) the queued writes reconcile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from jetagents import ORSet, PartitionError, SharedState, StateOptions
from jetagents._core.errors import JetAgentsError
from jetagents._nats.api import JSApiError, connect
from jetagents.testing.server import NatsCluster

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    c = NatsCluster(data_dir=Path(tmp_path_factory.mktemp("state-partition")), size=3)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def survivor_first(cluster: NatsCluster) -> str:
    """The client lists node 0 (which survives) first, so it stays connected to it."""
    return ",".join(cluster.urls)


async def make_state(cluster: NatsCluster, strategy: str, *, linearizable: bool = False) -> SharedState:
    nc = await connect(survivor_first(cluster), name=f"partition-{strategy}", dont_randomize=True)
    opts = StateOptions(
        replicas=3, partition=strategy, op_timeout_s=1.0, probe_interval_s=0.2, linearizable_reads=linearizable
    )
    st = SharedState(nc, opts, owns_connection=True)
    # a fresh or just-healed cluster needs a moment (placement peers, the bucket's leader
    # election) before the bucket answers; wait for that here, not in the test's own clock
    async with asyncio.timeout(60):
        while True:
            try:
                await st.start()
                await st.strong.get("ready")
                break
            except (JetAgentsError, JSApiError):
                await asyncio.sleep(0.5)
    st.stats = type(st.stats)()  # count only what the test does
    return st


@pytest.fixture
async def partitioned(cluster: NatsCluster) -> AsyncIterator[NatsCluster]:
    """Yields with nodes 1 and 2 killed; brings them back afterwards."""
    yield cluster
    for s in cluster.servers[1:]:
        if s.proc is None or s.proc.poll() is not None:
            s.start()
    cluster.wait_meta_leader()


def cut(cluster: NatsCluster) -> None:
    for s in cluster.servers[1:]:
        s.kill()


def heal(cluster: NatsCluster) -> None:
    for s in cluster.servers[1:]:
        s.spawn()
    for s in cluster.servers[1:]:
        s.wait_ready()
    cluster.wait_meta_leader()


async def test_pause_refuses_reads_and_writes_with_a_typed_error(partitioned: NatsCluster) -> None:
    st = await make_state(partitioned, "pause", linearizable=True)
    try:
        await st.strong.put("pz.v", 1)
        await st.crdt.add("pz.set", "a")
        cut(partitioned)
        t0 = time.monotonic()
        with pytest.raises(PartitionError) as err:
            await st.strong.increment("pz.v")
        assert err.value.retryable and err.value.details["applied"] == "unknown"
        # linearizable reads need a quorum like writes, so they are refused at once (a plain
        # leader read may still be served for seconds: see the linearizable test below)
        with pytest.raises(PartitionError):
            await st.strong.get("pz.v")
        with pytest.raises(PartitionError):
            await st.crdt.add("pz.set", "b")
        with pytest.raises(PartitionError):
            await st.eventual.put("pz.e", 1)
        # each refusal costs at most a couple of op timeouts (the old leader may still answer the
        # healer's STREAM.INFO probe, which clears the partitioned flag, so the next operation
        # waits out its own timeout again, and a strong write retries a few times first);
        # measured 2-20 s on a loaded 2-core machine. The bound only tells "refused" from "hung".
        assert time.monotonic() - t0 < 60, "refusals come within op timeouts, not after hanging"
        assert st.partitioned and st.stats.partition_refusals >= 4
    finally:
        await st.close()


async def test_degraded_serves_cached_reads_and_refuses_writes(partitioned: NatsCluster) -> None:
    st = await make_state(partitioned, "degraded", linearizable=True)
    try:
        await st.strong.put("dg.v", {"price": 5})
        await st.crdt.add("dg.set", "a")
        assert (await st.crdt.value("dg.set", ORSet)) == ["a"]
        cut(partitioned)
        read = await st.strong.get("dg.v")  # the barrier cannot commit: memory, marked stale
        assert read.value == {"price": 5} and read.stale and read.source == "local"
        assert await st.crdt.value("dg.set", ORSet) == ["a"]
        with pytest.raises(PartitionError):
            await st.strong.put("dg.v", {"price": 6})
        with pytest.raises(PartitionError):
            await st.crdt.add("dg.set", "b")
        heal(partitioned)
        await asyncio.wait_for(_until_healthy(st), 30)
        assert (await st.strong.get("dg.v")).value == {"price": 5}, "the refused write did not sneak in"
    finally:
        await st.close()


async def _until_healthy(st: SharedState) -> None:
    while True:
        try:
            await st.strong.get("probe")
            return
        except PartitionError:
            await asyncio.sleep(0.2)


async def test_continue_accepts_crdt_writes_and_reconciles_after_healing(partitioned: NatsCluster) -> None:
    st = await make_state(partitioned, "continue")
    try:
        await st.crdt.add("ct.set", "before")
        await st.crdt.increment("ct.ctr", 5)
        cut(partitioned)
        queued = await st.crdt.add("ct.set", "during-1")
        assert queued.queued and sorted(queued.value) == ["before", "during-1"]
        await st.crdt.add("ct.set", "during-2")
        await st.crdt.remove("ct.set", "before")
        inc = await st.crdt.increment("ct.ctr", 3)
        assert inc.queued and inc.value == 8
        await st.crdt.increment("ct.ctr", -1)
        with pytest.raises(PartitionError):
            await st.strong.put("ct.v", 1)  # strong writes never continue without quorum
        assert st.pending() >= 2
        heal(partitioned)
        await st.wait_reconciled(45)
        # a different replica, after the heal, sees every write made during the partition once
        other = await make_state(partitioned, "pause")
        try:
            await asyncio.wait_for(_until_healthy(other), 30)
            assert sorted(await other.crdt.value("ct.set", ORSet)) == ["during-1", "during-2"]
            assert (await other.crdt.counter("ct.ctr")).value == 7
            await other.crdt.add("ct.set", "after")
            assert sorted(await st.crdt.value("ct.set", ORSet)) == ["after", "during-1", "during-2"]
        finally:
            await other.close()
        assert st.stats.reconciled >= 2
    finally:
        await st.close()


async def _lead_from_node0(st: SharedState, cluster: NatsCluster) -> None:
    """Move the bucket's stream leader to node 0 (the survivor the client is connected to),
    so that after the cut the client talks to the deposed-to-be leader itself."""
    want = cluster.servers[0].name
    for _ in range(30):
        info = await st.nc.jetstream().stream_info(st.stream)
        if info.cluster is not None and info.cluster.leader == want:
            return
        with contextlib.suppress(Exception):
            await st.nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{st.stream}", b"", timeout=2)
        await asyncio.sleep(0.5)
    raise AssertionError(f"{want} never became the leader of {st.stream}")


async def test_linearizable_read_refuses_at_once_where_a_leader_read_is_stale(partitioned: NatsCluster) -> None:
    """The strong-read gap: node 0 leads the R3 bucket and loses both peers. Until Raft
    deposes it, it still answers leader reads, so on the other side of a real split (where a
    new majority could accept writes) such a read may be stale. A linearizable read needs its
    read barrier committed by a quorum, so it is refused within the op timeout instead."""
    st = await make_state(partitioned, "pause")
    try:
        await st.strong.put("lz.v", 1)
        read = await st.strong.get("lz.v", linearizable=True)
        assert read.value == 1 and read.source == "server"
        await _lead_from_node0(st, partitioned)
        cut(partitioned)
        t0 = time.monotonic()
        plain = await st.strong.get("lz.v")  # the deposed-to-be leader still answers
        t_plain = time.monotonic() - t0
        t1 = time.monotonic()
        with pytest.raises(PartitionError) as err:
            await st.strong.get("lz.v", linearizable=True)
        t_lin = time.monotonic() - t1
        # how long the old leader keeps serving plain reads: the window the barrier closes
        t2 = time.monotonic()
        served = 0
        with contextlib.suppress(PartitionError, TimeoutError):
            async with asyncio.timeout(2):  # observed: over 20 s on nats-server 2.15
                while True:
                    await st.strong.get("lz.v")
                    served += 1
                    await asyncio.sleep(0.1)
        print(
            f"after the cut: plain leader read served in {t_plain * 1000:.0f} ms (value {plain.value}), "
            f"linearizable read refused in {t_lin:.2f} s; {served} more plain reads served in the "
            f"{time.monotonic() - t2:.1f} s after that"
        )
        assert plain.value == 1 and plain.source == "server" and not plain.stale, "the gap exists"
        assert t_lin < 2 * st.options.op_timeout_s + 1.0, t_lin  # refused, within about one op timeout
        assert err.value.details["strategy"] == "pause"
    finally:
        await st.close()
