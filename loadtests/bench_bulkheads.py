"""The latency of a well-behaved type while a misbehaving type runs beside it (issue 17):
with and without bulkheads (ADR 0054) and with and without CPU throttling (ADR 0059).

    python loadtests/bench_bulkheads.py [--calls 300] [--misbehaving 32] [--burn-ms 20]

One nats-server, and for each scenario, in turn, a fresh host in this process serving three
types: ``counter`` (well-behaved: ``--concurrency`` callers in closed loops make ``--calls``
calls of ``increment``), ``sleepy`` (hung-ish: its action waits ``--hang-s`` without using
CPU) and ``hungry`` (its action burns ``--burn-ms`` of CPU without awaiting: asyncio cannot
preempt it). The misbehaving type is called by ``--misbehaving`` callers in closed loops for
the whole scenario; the client retries a refused call (``unavailable`` pool_saturated,
``throttled``: not applied) itself until its timeout, and a call that fails anyway is sent
again after 10 ms, so the pressure stays on. Scenarios:

* ``baseline``: the counter alone;
* ``hung``: sleepy with ``--workers`` shared workers and no pool;
* ``hung+pool``: sleepy in a pool of 4 workers and a queue of 4;
* ``cpu``: hungry, no policy;
* ``cpu+pool``: hungry in a pool of 2 workers and a queue of 2 (a pool bounds concurrency,
  not CPU);
* ``cpu+throttle``: hungry with ``type_cpu_share`` ``--share`` over ``--window-s``
  (HostSettings.health);
* ``cpu+pool+throttle``: both (the pool bounds how many burns are admitted at once, the
  throttle how much CPU they take over time).

Prints, per scenario, the counter's p50 and p99 latency (ms), its calls/s, the misbehaving
type's completed and refused calls, and the ratio of its p99 to the baseline's p99 measured in
the same run ("bad failed": misbehaving calls that failed after the client's own retries).
The client runs in the host's process (one event loop): a CPU burn delays both,
as it would delay a host's intake. No assertion: a benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "shared"))

from pydantic import BaseModel  # noqa: E402

from jetagents import (  # noqa: E402
    Agent,
    Client,
    ClientSettings,
    Delivery,
    HealthPolicy,
    Host,
    HostSettings,
    JetAgentsError,
    NatsServer,
    Registry,
    action,
)
from jetagents.examples import Counter  # noqa: E402


class _Empty(BaseModel):
    pass


class Sleepy(Agent[_Empty]):
    type_name = "sleepy"
    state_type = _Empty

    @action
    async def slow(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Hungry(Agent[_Empty]):
    type_name = "hungry"
    state_type = _Empty

    @action
    async def burn(self, seconds: float) -> None:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass


SCENARIOS = ("baseline", "hung", "hung+pool", "cpu", "cpu+pool", "cpu+throttle", "cpu+pool+throttle")


def _settings(url: str, scenario: str, args: argparse.Namespace) -> HostSettings:
    extra: dict[str, Any] = {}
    if scenario == "hung+pool":
        extra["pools"] = {"slow": {"types": ["sleepy"], "workers": 4, "queue_max": 4}}
    if scenario.startswith("cpu+pool"):
        extra["pools"] = {"cpu": {"types": ["hungry"], "workers": 2, "queue_max": 2}}
    if scenario.endswith("throttle"):
        extra["health"] = {"hungry": HealthPolicy(type_cpu_share=args.share, window_s=args.window_s)}
    return HostSettings(
        nats_url=url,
        partitions=8,
        host_id=f"bb-{scenario.replace('+', '-')}",
        workers=args.workers,
        # one host at a time, without the ring: a loop held by burns must not cost the next
        # scenario's host its partitions (a self-fenced leader, a lease to wait out)
        membership="static",
        op_timeout_s=10,
        loop_block_threshold_s=0,
        **extra,
    )


async def scenario(url: str, name: str, args: argparse.Namespace) -> dict[str, Any]:
    async with Host(_settings(url, name, args), Registry([Counter, Sleepy, Hungry])):
        # no retries in the client: a refusal is counted, and the caller retries after 10 ms
        client = await Client.connect(
            settings=ClientSettings(nats_url=url, partitions=8, request_timeout_s=60, retry_attempts=1)
        )
        try:
            stop = asyncio.Event()
            done = failed = 0

            async def misbehave(i: int) -> None:
                nonlocal done, failed
                agent_type, act, params = (
                    ("sleepy", "slow", {"seconds": args.hang_s})
                    if name.startswith("hung")
                    else ("hungry", "burn", {"seconds": args.burn_ms / 1000})
                )
                ref = client.agent(agent_type, f"m{i}")
                while not stop.is_set():
                    try:
                        await ref.request(act, params, delivery=Delivery.AT_MOST_ONCE)
                        done += 1
                    except JetAgentsError:
                        failed += 1
                        await asyncio.sleep(0.01)

            latencies: list[float] = []
            calls = iter(range(args.calls))

            async def behave(w: int) -> None:
                ref = client.agent("counter", f"ok{w}")
                for _ in calls:
                    t0 = time.perf_counter()
                    await ref.request("increment", delivery=Delivery.AT_MOST_ONCE)
                    latencies.append(time.perf_counter() - t0)

            await client.agent("counter", "warm").request("increment", delivery=Delivery.AT_MOST_ONCE)
            bad = [] if name == "baseline" else [asyncio.ensure_future(misbehave(i)) for i in range(args.misbehaving)]
            await asyncio.sleep(0.5 if bad else 0)  # the misbehaving type takes hold first
            started = time.perf_counter()
            await asyncio.gather(*(behave(w) for w in range(args.concurrency)))
            elapsed = time.perf_counter() - started
            stop.set()
            await asyncio.gather(*bad)
        finally:
            await client.close()
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000,
        "calls_s": len(latencies) / elapsed,
        "bad_done": done,
        "bad_failed": failed,
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300, help="well-behaved calls per scenario")
    ap.add_argument("--concurrency", type=int, default=4, help="well-behaved callers")
    ap.add_argument("--misbehaving", type=int, default=16, help="misbehaving callers")
    ap.add_argument("--workers", type=int, default=16, help="the host's shared workers")
    ap.add_argument("--hang-s", type=float, default=2.0)
    ap.add_argument("--burn-ms", type=float, default=20.0)
    ap.add_argument("--share", type=float, default=0.25, help="type_cpu_share of the throttled scenarios")
    ap.add_argument("--window-s", type=float, default=1.0, help="their window_s")
    ap.add_argument("--only", nargs="*", default=None, choices=SCENARIOS)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(data_dir=Path(tmp) / "nats", name="bulkheads").start()
        try:
            results = {}
            for name in args.only or SCENARIOS:
                results[name] = await scenario(server.url, name, args)
                print(f"{name} done", file=sys.stderr, flush=True)
        finally:
            server.stop()
    base = results.get("baseline")
    print(
        f"counter: {args.calls} calls, {args.concurrency} callers; misbehaving: {args.misbehaving} callers,"
        f" hang {args.hang_s:g} s, burn {args.burn_ms:g} ms; {args.workers} shared workers\n"
    )
    head = ("scenario", "p50 ms", "p99 ms", "calls/s", "bad ok", "bad failed", "p99/base")
    print(f"{head[0]:<14} {head[1]:>8} {head[2]:>9} {head[3]:>8} {head[4]:>7} {head[5]:>12} {head[6]:>9}")
    for name, r in results.items():
        ratio = f"{r['p99_ms'] / base['p99_ms']:9.1f}" if base else f"{'-':>9}"
        print(
            f"{name:<14} {r['p50_ms']:8.1f} {r['p99_ms']:9.1f} {r['calls_s']:8.0f} {r['bad_done']:7d}"
            f" {r['bad_failed']:12d} {ratio}"
        )


if __name__ == "__main__":
    asyncio.run(main())
