"""Pub-sub fan-out against a plain command send, in the same run (ADR 0049).

    python loadtests/bench_patterns.py [--subscribers 1 100 10000] [--deliveries 2000]
                                       [--budget-s 60] [--smoke]

Starts a nats-server and one agent host process (``python -m agent_host``) serving
``Tally`` agents (each handled message is one commit). For each subscriber count K it
subscribes K agents to a pattern of its own (``client.subscribe_agent``; the agents are
not in memory: the first message activates each), publishes M = deliveries / K messages
(at least 2) and waits until the host has processed the K x M commands the fan-out made.
The baseline, measured right after in the same run, sends the same number of commands to
the same agents with ``send`` (exactly-once, 16 per agent in flight, at most 256) and waits the same way.
Registration of the K subscriptions stops at ``--budget-s``: the largest cell is as many
subscribers as fit in that time. Printed: deliveries per second, the ratio fan-out/baseline,
and the host's RSS after each cell. Then work-queue throughput: ``--jobs`` no-op jobs drained by
1, 4 and 16 workers (one connection each), against the same number of plain command sends
(64 agents, 256 in flight) measured right after. Last, ``send_many`` of 2 x ``--jobs`` commands
against ``send`` at 256 in flight, to the last PubAck. Then compression (ADR 0043): ``--docs``
requests of a ~100 KiB JSON document (rows of ids, names, cities and a random hex token),
which the agent returns, exactly-once, 8 in flight, plain and then zstd (``compress=True``),
alternating twice: bytes the client's connection wrote and read per command, and commands per
second. ``--parts`` picks what runs (default: all). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from jetagents import Client, ClientSettings, NatsServer
from jetagents.testing.server import child_preexec


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def processed(client: Client) -> int:
    msg = await client.nc.request("$SRV.STATS.jetagents-host", b"", timeout=5)
    return int(orjson.loads(msg.data)["endpoints"][0]["data"]["stats"]["processed"])


async def wait_processed(client: Client, target: int, timeout_s: float) -> None:
    deadline = time.perf_counter() + timeout_s
    while await processed(client) < target:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"the host processed {await processed(client)} of {target}")
        await asyncio.sleep(0.05)


async def bounded(n: int, limit: int, fn: Any) -> None:
    sem = asyncio.Semaphore(limit)

    async def one(i: int) -> None:
        async with sem:
            await fn(i)

    await asyncio.gather(*(one(i) for i in range(n)))


async def pub_consumers(client: Client) -> int:
    return int((await client.nc.jetstream().stream_info("AGT_PUB")).state.consumer_count)


async def cell(client: Client, host_pid: int, k: int, deliveries: int, budget_s: float) -> dict[str, Any]:
    pattern = f"bench.k{k}.*"
    ids = [f"k{k}-{i}" for i in range(k)]
    registered = 0
    consumers_before = await pub_consumers(client)
    t0 = time.perf_counter()

    async def sub(i: int) -> None:
        nonlocal registered
        if time.perf_counter() - t0 > budget_s:
            return
        await client.subscribe_agent("tally", ids[i], pattern, action="on_message")
        registered += 1

    await bounded(k, 64, sub)
    reg_s = time.perf_counter() - t0
    ids = ids[:registered] if registered < k else ids
    k = len(ids)
    m = max(2, deliveries // k)
    total = k * m
    await asyncio.sleep(2.5)  # the leader finds the new pattern (it looks every second)
    before = await processed(client)
    t1 = time.perf_counter()
    for n in range(m):
        await client.publish(pattern.replace("*", "m"), {"n": n})
    await wait_processed(client, before + total, 600)
    fan_s = time.perf_counter() - t1
    fan_rss = rss_mb(host_pid)
    # k subscribers of one pattern: the fan-out must have added one consumer, not k
    consumers = await pub_consumers(client) - consumers_before
    # the baseline: the same number of commands, sent one by one to the same agents
    before = await processed(client)
    t2 = time.perf_counter()

    async def send(i: int) -> None:
        await client.agent("tally", ids[i % k]).send("bump", {"n": i})

    # as many in flight as the fan-out keeps queued per agent at most (a mailbox's worth):
    # more to one agent only measures the host's mailbox bound handing commands back
    await bounded(total, min(256, 16 * k), send)
    await wait_processed(client, before + total, 600)
    base_s = time.perf_counter() - t2
    return {
        "subscribers": k,
        "messages": m,
        "deliveries": total,
        "register_s": reg_s,
        "fanout_per_s": total / fan_s,
        "baseline_per_s": total / base_s,
        "rss_mb": fan_rss,
        "consumers": consumers,
        "rss_after_baseline_mb": rss_mb(host_pid),
    }


async def work_cell(url: str, client: Client, workers: int, jobs: int) -> dict[str, Any]:
    """``jobs`` no-op jobs through a queue drained by ``workers`` workers (a connection each),
    against ``jobs`` plain command sends to 64 agents, 256 in flight, in the same run."""
    queue = f"bench{workers}"
    q = client.work_queue(queue, visibility_s=30)
    for n in range(jobs):
        await q.put({"n": n})
    conns = [await Client.connect(settings=ClientSettings(nats_url=url, request_timeout_s=30)) for _ in range(workers)]
    done = 0
    finished = asyncio.Event()
    stop = asyncio.Event()

    def handle(data: Any) -> None:
        nonlocal done
        done += 1
        if done >= jobs:
            finished.set()

    t0 = time.perf_counter()
    runs = [asyncio.create_task(c.work_queue(queue, visibility_s=30).process(handle, stop=stop)) for c in conns]
    await asyncio.wait_for(finished.wait(), 600)
    work_s = time.perf_counter() - t0
    stop.set()
    await asyncio.gather(*runs)
    for c in conns:
        await c.close()
    before = await processed(client)
    t1 = time.perf_counter()

    async def send(i: int) -> None:
        await client.agent("tally", f"wq{i % 64}").send("bump", {"n": i})

    await bounded(jobs, 256, send)
    await wait_processed(client, before + jobs, 600)
    return {
        "workers": workers,
        "jobs": jobs,
        "jobs_per_s": jobs / work_s,
        "baseline_per_s": jobs / (time.perf_counter() - t1),
    }


async def send_many_cell(client: Client, n: int) -> dict[str, Any]:
    """``n`` exactly-once commands to 64 agents stored by ``send_many`` against ``send`` at 256
    in flight, measured to the last PubAck (the host runs them afterwards, not timed)."""
    batch = [("tally", f"sm{i % 64}", "bump", {"n": i}) for i in range(n)]
    t0 = time.perf_counter()
    await client.send_many(batch, timeout_s=120)
    many_s = time.perf_counter() - t0
    t1 = time.perf_counter()

    async def send(i: int) -> None:
        await client.agent("tally", f"sm{i % 64}").send("bump", {"n": i})

    await bounded(n, 256, send)
    return {"n": n, "send_many_per_s": n / many_s, "send_per_s": n / (time.perf_counter() - t1)}


def document(kib: int = 100, seed: int = 7) -> dict[str, Any]:
    """~``kib`` KiB of JSON like an application's: repeated keys, varied values, one random
    token per row (so the ratio is not that of a repeated string)."""
    rng = random.Random(seed)
    cities = ["Oslo", "Lyon", "Porto", "Turin", "Ghent", "Cork", "Brno", "Graz"]
    rows: list[dict[str, Any]] = []
    size = 2
    while size < kib * 1024:
        i = len(rows)
        row = {
            "id": i,
            "name": f"customer-{rng.randrange(10**6)}",
            "city": rng.choice(cities),
            "score": round(rng.random() * 100, 2),
            "token": f"{rng.getrandbits(64):016x}",
            "active": rng.random() < 0.8,
        }
        rows.append(row)
        size += len(orjson.dumps(row)) + 1
    return {"rows": rows}


async def compression_cell(client: Client, n: int) -> dict[str, Any]:
    """``n`` requests of a 100 KiB document (returned by the agent), plain then zstd, twice
    alternating: bytes per command on the client's connection (out: command; in: PubAck and
    reply) and commands per second."""
    doc = document()
    plain_bytes = len(orjson.dumps({"action": "ingest", "params": {"doc": doc}}))
    stats = client.nc.stats
    totals: dict[bool, list[float]] = {False: [0.0, 0.0, 0.0], True: [0.0, 0.0, 0.0]}  # out, in, seconds
    for _ in range(2):
        for compress in (False, True):
            out0, in0 = stats["out_bytes"], stats["in_bytes"]
            t0 = time.perf_counter()

            async def one(i: int, compress: bool = compress) -> None:
                got = await client.agent("tally", f"z{i % 8}").request("ingest", {"doc": doc}, compress=compress)
                assert len(got["rows"]) == len(doc["rows"])

            await bounded(n, 8, one)
            cell_ = totals[compress]
            cell_[0] += stats["out_bytes"] - out0
            cell_[1] += stats["in_bytes"] - in0
            cell_[2] += time.perf_counter() - t0
    row: dict[str, Any] = {"n": 2 * n, "json_bytes": plain_bytes}
    for compress, (out_b, in_b, secs) in totals.items():
        key = "zstd" if compress else "plain"
        row[f"{key}_out_per_cmd"] = out_b / (2 * n)
        row[f"{key}_in_per_cmd"] = in_b / (2 * n)
        row[f"{key}_per_s"] = 2 * n / secs
    return row


async def measure(url: str, host_pid: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    client = await Client.connect(settings=ClientSettings(nats_url=url, request_timeout_s=30))
    try:
        for _ in range(300):
            try:
                await client.agent("tally", "warm").request("count", delivery="at-most-once", timeout=1)
                break
            except Exception:  # not up yet
                await asyncio.sleep(0.2)
        out: list[dict[str, Any]] = []
        if "compression" in args.parts:
            z = await compression_cell(client, args.docs)
            z["plain_wire"] = z["plain_out_per_cmd"] + z["plain_in_per_cmd"]
            z["zstd_wire"] = z["zstd_out_per_cmd"] + z["zstd_in_per_cmd"]
            print(
                f"compression, {z['n']} requests of a {z['json_bytes'] / 1024:.0f} KiB JSON body (echoed): "
                f"plain out {z['plain_out_per_cmd']:8.0f} B/cmd in {z['plain_in_per_cmd']:8.0f} B/cmd "
                f"{z['plain_per_s']:6.1f} cmd/s; zstd out {z['zstd_out_per_cmd']:8.0f} B/cmd "
                f"in {z['zstd_in_per_cmd']:8.0f} B/cmd {z['zstd_per_s']:6.1f} cmd/s; bytes ratio "
                f"{z['plain_wire'] / z['zstd_wire']:5.1f}"
                f", throughput ratio zstd/plain {z['zstd_per_s'] / z['plain_per_s']:5.2f}",
                flush=True,
            )
        if "send_many" in args.parts:
            row = await send_many_cell(client, args.jobs * 2)
            print(
                f"send_many: {row['send_many_per_s']:8.0f} commands stored/s, send x256 in flight "
                f"{row['send_per_s']:8.0f}/s, ratio {row['send_many_per_s'] / row['send_per_s']:5.2f}",
                flush=True,
            )
        if "fanout" not in args.parts:
            return out
        for k in args.subscribers:
            row = await cell(client, host_pid, k, args.deliveries, args.budget_s)
            out.append(row)
            print(
                f"K={row['subscribers']:6d} M={row['messages']:5d} deliveries={row['deliveries']:6d} "
                f"fan-out {row['fanout_per_s']:8.0f}/s baseline {row['baseline_per_s']:8.0f}/s "
                f"ratio {row['fanout_per_s'] / row['baseline_per_s']:5.2f} register {row['register_s']:6.1f}s "
                f"host RSS {row['rss_mb']:6.0f} MiB, AGT_PUB consumers added {row['consumers']}",
                flush=True,
            )
        for w in args.workers if "workqueue" in args.parts else ():
            row = await work_cell(url, client, w, args.jobs)
            print(
                f"work queue, {w:2d} workers: {row['jobs_per_s']:8.0f} jobs/s, plain sends "
                f"{row['baseline_per_s']:8.0f} commands/s, ratio {row['jobs_per_s'] / row['baseline_per_s']:5.2f}",
                flush=True,
            )
        return out
    finally:
        await client.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subscribers", type=int, nargs="+", default=[1, 100, 10000])
    p.add_argument("--deliveries", type=int, default=2000, help="deliveries per cell (K x M)")
    p.add_argument("--budget-s", type=float, default=60.0, help="time to register the subscriptions of a cell")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16], help="work-queue cells")
    p.add_argument("--jobs", type=int, default=2000, help="jobs per work-queue cell")
    p.add_argument("--docs", type=int, default=100, help="requests per compression cell (x2 each way)")
    p.add_argument(
        "--parts",
        nargs="+",
        default=["compression", "send_many", "fanout", "workqueue"],
        choices=["compression", "send_many", "fanout", "workqueue"],
    )
    p.add_argument("--smoke", action="store_true", help="tiny cells (1, 10, 50 subscribers, 200 deliveries)")
    args = p.parse_args()
    if args.smoke:
        args.subscribers, args.deliveries, args.jobs = [1, 10, 50], 200, 200
    work = Path(tempfile.mkdtemp(prefix="bench-patterns-"))
    server = NatsServer(data_dir=work / "nats", name="bench").start()
    env = dict(
        os.environ,
        JETAGENTS_NATS_URL=server.url,
        JETAGENTS_AGENTS='["loadtests._patterns_agents:AGENTS"]',
        JETAGENTS_HOST_ID="bench-host",
        JETAGENTS_LOG_LEVEL="WARNING",
    )
    repo = Path(__file__).resolve().parents[1]
    with open(work / "host.log", "ab") as log:
        host = subprocess.Popen(
            [sys.executable, "-m", "agent_host"],
            env=env,
            cwd=repo,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=child_preexec,
        )
    try:
        rows = asyncio.run(measure(server.url, host.pid, args))
    finally:
        host.terminate()
        host.wait(30)
        server.stop()
    print("subscribers  deliveries/s(fan-out)  deliveries/s(send)  ratio  host RSS MiB  AGT_PUB consumers added")
    for r in rows:
        ratio = r["fanout_per_s"] / r["baseline_per_s"]
        print(
            f"{r['subscribers']:11d}  {r['fanout_per_s']:21.0f}  {r['baseline_per_s']:18.0f}  "
            f"{ratio:5.2f}  {r['rss_mb']:12.0f}  {r['consumers']:23d}"
        )


if __name__ == "__main__":
    main()
