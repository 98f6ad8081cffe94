"""Projection catch-up and live-tail latency (ADR 0057), against baselines in the same run.

    python loadtests/bench_projection.py [--events 1000000] [--agents 1000] [--samples 200] [--smoke]

Starts a nats-server, writes ``--events`` commits (one ``Incremented`` event each, over
``--agents`` counters) straight into ``AGT_EVT`` in the format hosts write, then reads all of
them three ways, one after the other:

* baseline: a raw nats-py ordered consumer on ``agt.evt.counter.*`` counting messages (no
  parsing): what the server and the client library deliver at best;
* ``client.events("counter")``: the tail alone (batched direct gets, each message parsed into
  a ``LogCommit``), no projection;
* a ``Projection`` (per-counter sum and count, plus a grand total) run by
  ``ProjectionRunner`` from position 0 until its stored position is the stream's last
  sequence: rows and position written together in atomic batches.

Printed: events/s of each and the ratio to the baseline, this process's RSS (where the
projection runs) and the server's. Then live-tail latency: ``--samples`` commits published one
at a time (20 ms apart, so the reader is idle, waiting for its bell), the time from the
publish to a core subscription's delivery (baseline), to the tail yielding it, and to the
projection's handler running; p50 and p99. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import orjson

from jetagents import (
    Client,
    ClientSettings,
    LogCommit,
    LogEvent,
    NatsServer,
    Projection,
    ProjectionView,
    Unavailable,
    on,
)


class ReadBenchServer(NatsServer):
    """The fixture's server without ``sync_interval: always``: filling a million commits with
    an fsync each would take most of an hour on a shared disk, and reading fsyncs nothing
    (the projection's own writes are one atomic batch per 4,096 events)."""

    def config_text(self) -> str:
        return super().config_text().replace("  sync_interval: always\n", "")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def commit(n: int, by: int) -> bytes:
    event: dict[str, Any] = {"type": "Incremented", "data": {"by": by}}
    return orjson.dumps({"n": n, "cmd": f"m{n}", "action": "increment", "events": [event], "result": n, "ts_ms": 0})


class Totals(Projection):
    name = "bench-totals"
    seen: dict[int, float] = {}  # live samples: commit n of agent "lat" -> when the handler ran

    @on("counter", "Incremented")
    async def incremented(self, view: ProjectionView, c: LogCommit, event: LogEvent) -> None:
        if c.agent.id == "lat":
            self.seen[c.n] = time.perf_counter()
        row = await view.get(c.agent.id, {"total": 0, "events": 0})
        view.put(c.agent.id, {"total": row["total"] + event.data["by"], "events": row["events"] + 1})
        grand = await view.get("all", {"total": 0, "events": 0})
        view.put("all", {"total": grand["total"] + event.data["by"], "events": grand["events"] + 1})


async def fill(nc: Any, events: int, agents: int) -> int:
    """``events`` commits written with core publishes in windows (the stream stores them
    without PubAcks), then waited for; the stream's last sequence."""
    per = [0] * agents
    window = 5000
    t0 = time.perf_counter()
    for start in range(0, events, window):
        for i in range(start, min(events, start + window)):
            a = i % agents
            per[a] += 1
            await nc.publish(f"agt.evt.counter.a{a}", commit(per[a], i % 7 + 1))
        await nc.flush()
        while True:  # keep the server's backlog bounded
            info = orjson.loads((await nc.request("$JS.API.STREAM.INFO.AGT_EVT", b"", timeout=10)).data)
            if info["state"]["messages"] >= min(events, start + window) - window:
                break
            await asyncio.sleep(0.01)
    while True:
        info = orjson.loads((await nc.request("$JS.API.STREAM.INFO.AGT_EVT", b"", timeout=10)).data)
        if info["state"]["messages"] >= events:
            break
        await asyncio.sleep(0.05)
    print(f"filled {events:,} commits in {time.perf_counter() - t0:.1f} s", flush=True)
    return int(info["state"]["last_seq"])


async def ordered_read(nc: Any, events: int) -> float:
    js = nc.jetstream()
    done = asyncio.Event()
    count = 0

    async def cb(_: Any) -> None:
        nonlocal count
        count += 1
        if count >= events:
            done.set()

    t0 = time.perf_counter()
    sub = await js.subscribe("agt.evt.counter.*", ordered_consumer=True, cb=cb, pending_msgs_limit=-1)
    await done.wait()
    elapsed = time.perf_counter() - t0
    await sub.unsubscribe()
    return elapsed


async def tail_read(client: Client, events: int) -> float:
    count = 0
    t0 = time.perf_counter()
    async with client.events("counter") as tail:
        async for _ in tail:
            count += 1
            if count >= events:
                break
    return time.perf_counter() - t0


async def projection_catch_up(client: Client, last: int) -> tuple[float, Any, asyncio.Event, asyncio.Task[None]]:
    reader = client.projections.reader(Totals.name)
    runner = client.projections.runner(Totals(), lease_ttl_s=5)
    stop = asyncio.Event()
    t0 = time.perf_counter()
    task = asyncio.create_task(runner.run(stop=stop))
    while True:
        pos = None
        try:
            pos = await reader.position()
        except Unavailable:  # the bucket is created in the runner's first moments
            pass
        if pos is not None and pos.seq >= last:
            break
        await asyncio.sleep(0.05)
    return time.perf_counter() - t0, await reader.get("all"), stop, task


async def live(client: Client, nc: Any, samples: int) -> dict[str, list[float]]:
    js = nc.jetstream()
    got_core: dict[int, float] = {}
    got_tail: dict[int, float] = {}

    async def on_core(msg: Any) -> None:
        got_core[orjson.loads(msg.data)["n"]] = time.perf_counter()

    sub = await nc.subscribe("agt.evt.counter.lat", cb=on_core)
    tail = client.events("counter", "lat", since_ms=int(time.time() * 1000))

    async def follow() -> None:
        async for c in tail:
            got_tail[c.n] = time.perf_counter()

    follower = asyncio.create_task(follow())
    await asyncio.sleep(1.0)  # the tail is caught up and listening
    sent: dict[int, float] = {}
    for n in range(1, samples + 1):
        sent[n] = time.perf_counter()
        await js.publish("agt.evt.counter.lat", commit(n, 1))
        deadline = time.perf_counter() + 10
        while (n not in got_tail or n not in Totals.seen) and time.perf_counter() < deadline:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.02)
    follower.cancel()
    await tail.aclose()
    await sub.unsubscribe()
    out: dict[str, list[float]] = {"core subscription": [], "client.events": [], "projection handler": []}
    for n, t in sent.items():
        for name, got in zip(out, (got_core, got_tail, Totals.seen), strict=True):
            if n in got:
                out[name].append((got[n] - t) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) >= 2 else (values or [0.0])[0]


async def measure(server: NatsServer, args: argparse.Namespace) -> None:
    client = await Client.connect(settings=ClientSettings(nats_url=server.url, request_timeout_s=10))
    await client.ensure_topology()
    nc = await nats.connect(server.url)
    last = await fill(nc, args.events, args.agents)
    rss0 = rss_mb(os.getpid())
    base_s = await ordered_read(nc, args.events)
    tail_s = await tail_read(client, args.events)
    proj_s, grand, stop, task = await projection_catch_up(client, last)
    rss1 = rss_mb(os.getpid())
    n = args.events
    print(f"\n{'reader':<34}{'events/s':>12}{'ratio':>8}")
    print(f"{'ordered consumer (baseline)':<34}{n / base_s:>12,.0f}{1.0:>8.2f}")
    print(f"{'client.events (direct gets)':<34}{n / tail_s:>12,.0f}{base_s / tail_s:>8.2f}")
    print(f"{'projection catch-up':<34}{n / proj_s:>12,.0f}{base_s / proj_s:>8.2f}")
    print(f"projection read model: {grand}")
    print(f"RSS of this process (the projection runs here): {rss0:.0f} MiB before the reads, {rss1:.0f} MiB after")
    print(f"RSS of nats-server: {rss_mb(server.proc.pid):.0f} MiB" if server.proc else "")
    lat = await live(client, nc, args.samples)
    print(f"\nlive tail, {args.samples} commits 20 ms apart: ms from publish to")
    for name, values in lat.items():
        print(f"  {name:<22} p50 {pct(values, 50):7.2f}  p99 {pct(values, 99):7.2f}  ({len(values)} seen)")
    stop.set()
    await task
    await nc.close()
    await client.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--samples", type=int, default=200, help="live-tail latency samples")
    p.add_argument("--smoke", action="store_true", help="20,000 events, 20 samples")
    args = p.parse_args()
    if args.smoke:
        args.events, args.samples = 20_000, 20
    with tempfile.TemporaryDirectory() as tmp:
        server = ReadBenchServer(data_dir=Path(tmp) / "nats", name="bench-proj").start()
        try:
            asyncio.run(measure(server, args))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
