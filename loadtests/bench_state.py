"""Shared-state benchmark: ops/s, latency p50/p99 and conflict retries per consistency level
at 1, 8 and 64 concurrent writers, all hitting ONE key (the worst case for contention).

Each writer is an asyncio task with its own SharedState (its own replica and connection), so
writers really race each other. Median of ``--reps`` repetitions per cell.

    python loadtests/bench_state.py                 # full: 1/8/64 writers, 3 reps, 2 s per cell
    python loadtests/bench_state.py --cluster       # on a 3-node cluster with an R3 bucket
    python loadtests/bench_state.py --smoke         # seconds; keeps the harness from rotting

Levels: ``strong`` (CAS increment), ``eventual`` (local write; "ops" are local writes, the
flush time after the run is reported), ``session`` (synchronous write + read-your-write),
``crdt-incr`` (server counter, Nats-Incr), ``crdt-orset`` (state-based OR-set add).
On request (``--levels strong-read,strong-linread``): plain leader reads and linearizable
reads (leader read + read barrier) of one key; there "writers" are readers.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from jetagents import SharedState, StateOptions
from jetagents._core.errors import Unavailable
from jetagents._nats.api import connect
from jetagents.testing.server import NatsCluster, NatsServer

LEVELS = ("strong", "eventual", "session", "crdt-incr", "crdt-orset")
# read-only levels, on request (--levels): a plain leader read vs a linearizable read (leader
# read + read barrier through the bucket's Raft group, ADR 0013), "writers" are readers here
READ_LEVELS = ("strong-read", "strong-linread")


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


async def _start(st: SharedState, timeout_s: float = 90.0) -> None:
    """Create the bucket, retrying while a fresh cluster elects its leaders (on a loaded
    machine STREAM.INFO can time out for a while after the meta leader is up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await st.start()
            return
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1.0)


async def one_cell(url: str, level: str, writers: int, seconds: float, replicas: int, rep: int) -> dict[str, float]:
    states = []
    for _ in range(writers):
        nc = await connect(url, name="bench-state")
        states.append(SharedState(nc, StateOptions(replicas=replicas, op_timeout_s=10.0), owns_connection=True))
    await _start(states[0])
    key = f"bench.{level.replace('-', '_')}.w{writers}.r{rep}.t{time.monotonic_ns()}"
    if level in ("eventual", "session"):
        await asyncio.gather(*(s.cache() for s in states))
    if level in READ_LEVELS:
        await states[0].strong.put(key, 1)
    lat: list[float] = []
    ops = 0
    stop_at = time.perf_counter() + seconds

    def op_for(st: SharedState, i: int) -> Callable[[], Awaitable[Any]]:
        session = st.session()
        n = 0

        async def run() -> Any:
            nonlocal n
            n += 1
            if level == "strong":
                return await st.strong.increment(key)
            if level == "eventual":
                return await st.eventual.increment(key)
            if level == "session":
                await session.update(key, lambda v: int(v or 0) + 1)
                return await session.get(key)
            if level == "crdt-incr":
                return await st.crdt.increment(key)
            if level in READ_LEVELS:
                return await st.strong.get(key, linearizable=level == "strong-linread")
            return await st.crdt.add(key, f"{i}-{n}")

        return run

    async def writer(st: SharedState, i: int) -> None:
        nonlocal ops
        run = op_for(st, i)
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            await run()
            lat.append(time.perf_counter() - t)
            ops += 1
            if level == "eventual":
                await asyncio.sleep(0)  # local writes never yield on their own

    t0 = time.perf_counter()
    await asyncio.gather(*(writer(st, i) for i, st in enumerate(states)))
    elapsed = time.perf_counter() - t0
    flush_s = 0.0
    if level == "eventual":
        f0 = time.perf_counter()
        await asyncio.gather(*(s.eventual.flush(60) for s in states))
        flush_s = time.perf_counter() - f0
    conflicts = sum(s.stats.conflicts for s in states)
    lost = sum(s.stats.lost_writes for s in states)
    for s in states:
        await s.close()
    return {
        "ops_s": ops / elapsed,
        "p50_ms": pct(lat, 0.5) * 1000,
        "p99_ms": pct(lat, 0.99) * 1000,
        "retry_per_op": conflicts / max(ops, 1),
        "lost_writes": float(lost),
        "flush_s": flush_s,
    }


async def bench(url: str, writers_list: list[int], levels: list[str], reps: int, seconds: float, replicas: int) -> None:
    print(f"{'level':<14} {'writers':>7} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'retry/op':>9} {'lost':>6}  note")
    for level in levels:
        for w in writers_list:
            cells = [await one_cell(url, level, w, seconds, replicas, r) for r in range(reps)]

            def med(k: str, cells: list[dict[str, float]] = cells) -> float:
                return statistics.median(c[k] for c in cells)

            note = f"flush {med('flush_s'):.2f}s" if level == "eventual" else ""
            print(
                f"{level:<14} {w:>7} {med('ops_s'):>9.0f} {med('p50_ms'):>8.2f} {med('p99_ms'):>8.2f} "
                f"{med('retry_per_op'):>9.2f} {med('lost_writes'):>6.0f}  {note}",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny run (a few seconds)")
    ap.add_argument("--cluster", action="store_true", help="3-node cluster, R3 bucket")
    ap.add_argument("--url", help="use a running server instead of starting one (R1 bucket)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0, help="per cell")
    ap.add_argument("--writers", default="1,8,64")
    ap.add_argument("--levels", default=",".join(LEVELS), help=f"of {LEVELS + READ_LEVELS}")
    args = ap.parse_args()
    writers = [int(x) for x in args.writers.split(",")]
    levels = args.levels.split(",")
    reps, seconds = args.reps, args.seconds
    if args.smoke:
        writers, reps, seconds = [1, 8], 1, 0.25
    replicas = 3 if args.cluster else 1
    with tempfile.TemporaryDirectory() as d:
        server: NatsServer | NatsCluster | None = None
        if args.url:
            url = args.url
        elif args.cluster:
            server = NatsCluster(data_dir=Path(d), size=3).start()
            url = server.url
        else:
            server = NatsServer(data_dir=Path(d), name="bench").start()
            url = server.url
        try:
            topo = "3-node cluster, R3" if args.cluster else "single nats-server, R1"
            print(f"# {topo}; {reps} rep(s) x {seconds}s per cell, one key per cell, median reported")
            asyncio.run(bench(url, writers, levels, reps, seconds, replicas))
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
