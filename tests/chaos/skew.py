"""The skewed workload on real processes (ADR 0044), shared by the short test
(``test_load_balance.py``) and the long benchmark (``loadtests/bench_rebalance.py``).

Three host processes on a 3-node cluster; 80 % of the commands go to 10 % of the partitions,
the busy ones chosen on one host, as a ring by counts easily leaves them. Measured from the
outside: each host process's CPU time (``/proc/<pid>/stat``) over a window before and after
the leader moved the busy partitions apart, how long that took, and whether the ring moved
again afterwards (flapping)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from typing import Any

from jetagents import Client, JetAgentsError
from jetagents._core.ids import partition_of
from jetagents._host.coordination import cluster_status
from jetagents._nats.kv import JetStreamStore

TICKS = os.sysconf("SC_CLK_TCK")
# faster than the defaults (interval 5 s, persist 2, load window 5 s): ``bench_rebalance.py --fast``
BALANCE_ENV = {
    "JETAGENTS_REBALANCE_INTERVAL_S": "1",
    "JETAGENTS_REBALANCE_PERSIST": "2",
    "JETAGENTS_REBALANCE_MIN_GAP": "0.005",
    "JETAGENTS_LOAD_WINDOW_S": "2",
    "JETAGENTS_LOG_LEVEL": "INFO",
}


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def agents_by_partition(partitions: int, per: int, agent_type: str = "counter") -> dict[int, list[str]]:
    out: dict[int, list[str]] = {p: [] for p in range(partitions)}
    i = 0
    while any(len(v) < per for v in out.values()):
        aid = f"s{i}"
        p = partition_of(agent_type, aid, partitions)
        if len(out[p]) < per:
            out[p].append(aid)
        i += 1
    return out


async def ring(store: JetStreamStore) -> tuple[int, list[str]]:
    entry = await store.get("ring")
    assert entry is not None
    return int(entry.value["epoch"]), list(entry.value["owners"])


async def settled(store: JetStreamStore, n_hosts: int, timeout_s: float = 90.0) -> None:
    """Every partition claimed by the live host the ring names, ``n_hosts`` of them."""
    async with asyncio.timeout(timeout_s):
        while True:
            with contextlib.suppress(JetAgentsError):
                st = await cluster_status(store)
                alive = [h for h in st["hosts"] if h["alive"] and not h["draining"]]
                if (
                    len(alive) == n_hosts
                    and st["unowned"] == 0
                    and all(h["partitions_assigned"] == h["partitions_held"] > 0 for h in alive)
                ):
                    return
            await asyncio.sleep(0.3)


async def cpu_shares(pids: dict[str, int], window_s: float) -> dict[str, float]:
    """Each host's CPU seconds per second over ``window_s``."""
    before = {h: cpu_s(p) for h, p in pids.items()}
    await asyncio.sleep(window_s)
    return {h: round((cpu_s(p) - before[h]) / window_s, 3) for h, p in pids.items()}


def imbalance(shares: dict[str, float]) -> float:
    mean = sum(shares.values()) / len(shares)
    return round(max(shares.values()) / mean, 3) if mean > 0 else 1.0


async def run_skew(
    client: Client,
    pids: dict[str, int],
    partitions: int,
    *,
    workers: int = 12,
    window_s: float = 4.0,
    steady_s: float = 8.0,
    deadline_s: float = 120.0,
    burn_ms: int = 0,
) -> dict[str, Any]:
    """``burn_ms``: the commands are ``burner.work`` (``burner.py``: that much CPU each),
    not ``counter.increment``."""
    agent_type, act, params = ("burner", "work", {"ms": burn_ms}) if burn_ms else ("counter", "increment", {"by": 1})
    store = JetStreamStore(client.nc, "agt_cluster", replicas=3)
    while True:  # settled, and the leader done with its boot steps (the ring still for 2 s)
        await settled(store, len(pids))
        epoch0, owners = await ring(store)
        await asyncio.sleep(2.0)
        if (await ring(store))[0] == epoch0:
            break
    busiest = max(set(owners), key=lambda h: (owners.count(h), h))
    hot = [p for p, o in enumerate(owners) if o == busiest][: max(1, partitions // 10)]
    agents = agents_by_partition(partitions, 5, agent_type)
    # the fifth agent of each hot partition takes exactly-once increments only: its count
    # at the end says whether a move lost or repeated one
    tally = {agents[p].pop(): [0, 0] for p in hot}  # agent -> [acknowledged, failed]
    hot_agents = [a for p in hot for a in agents[p]]
    cold_agents = [a for p in range(partitions) if p not in hot for a in agents[p]]
    stop = asyncio.Event()
    sent = [0]
    failed: dict[str, int] = {}  # calls that got no result, by error code (a move must not cause any)

    async def worker(w: int) -> None:
        rnd = random.Random(w)
        while not stop.is_set():
            aid = rnd.choice(hot_agents if rnd.random() < 0.8 else cold_agents)
            try:
                await client.agent(agent_type, aid).request(act, params, delivery="at-most-once", timeout=5)
                sent[0] += 1
            except JetAgentsError as exc:
                failed[exc.code] = failed.get(exc.code, 0) + 1

    async def counted(aid: str) -> None:
        while not stop.is_set():
            try:
                await client.agent(agent_type, aid).request(act, params, timeout=10)
                tally[aid][0] += 1
            except JetAgentsError:
                tally[aid][1] += 1

    tasks = [asyncio.create_task(worker(w)) for w in range(workers)]
    tasks += [asyncio.create_task(counted(a)) for a in tally]
    t0 = time.monotonic()
    try:

        async def watch() -> float | None:
            # from the start of the hot spot, while the CPU before is measured
            while time.monotonic() - t0 < deadline_s:
                _, now_owners = await ring(store)
                if len({now_owners[p] for p in hot}) > 1:
                    return time.monotonic() - t0
                await asyncio.sleep(0.25)
            return None

        watching = asyncio.create_task(watch())
        before = await cpu_shares(pids, window_s)
        moved_at = await watching
        if moved_at is None:
            members = {k: (e.value.get("load"), e.value.get("rates")) for k, e in (await store.scan("member.")).items()}
            return {"rebalanced": False, "before": before, "hot": hot, "busiest": busiest, "members": members}
        await asyncio.sleep(window_s)  # the handoff, and the load windows catching up
        epoch1, owners1 = await ring(store)
        after = await cpu_shares(pids, steady_s)
        epoch2, owners2 = await ring(store)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    exactly_once = {}
    for aid, (ok, lost) in tally.items():
        exactly_once[aid] = {"ok": ok, "failed": lost, "count": await client.agent(agent_type, aid).request("get")}
    return {
        "rebalanced": True,
        "time_to_rebalance_s": round(moved_at, 2),
        "hot": hot,
        "busiest": busiest,
        "before": before,
        "after": after,
        "imbalance_before": imbalance(before),
        "imbalance_after": imbalance(after),
        "epochs": [epoch0, epoch1, epoch2],
        "moved_while_steady": sum(a != b for a, b in zip(owners1, owners2, strict=True)),
        "moved_to_balance": sum(a != b for a, b in zip(owners, owners1, strict=True)),
        "failed_calls": failed,
        # each agent's count: at least its acknowledged increments, at most those and the failed ones
        "exactly_once": exactly_once,
        "exactly_once_kept": all(v["ok"] <= v["count"] <= v["ok"] + v["failed"] for v in exactly_once.values()),
        "commands": sent[0],
        "commands_per_s": round(sent[0] / (time.monotonic() - t0), 1),
    }
