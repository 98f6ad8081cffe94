"""CPU per command of the client and of one host, by event loop (asyncio or uvloop).

    python loadtests/bench_cpu.py [--n 3000] [--reps 3] [--client-loop asyncio|uvloop]
                                  [--host-loop asyncio|uvloop] [--inflight 1 256]

Starts a nats-server and one agent host (``python -m agent_host``, its loop chosen with
``JETAGENTS_EVENT_LOOP``), then, in this process (the client, on ``--client-loop``), runs
``--n`` commands per cell and reads the CPU time the client process and the host process
spent on them (``time.process_time`` here, ``/proc/<pid>/stat`` for the host). Cells:

* ``call``: ``request("get", delivery="at-most-once")`` (core request/reply);
* ``durable``: ``request("increment")`` (exactly-once: publish, PubAck, reply);
* ``send``: ``send("increment")`` (exactly-once: publish and PubAck; the client only);

at 1 in flight (one agent) and at 256 in flight (256 agents, one command each in flight).
Each figure is the median of ``--reps`` repetitions, the cells interleaved in a new random
order every repetition. CPU time, not wall time: the figures hold on a shared machine. The
host's figure leaves out its idle CPU (heartbeats, pulls, timers: measured for 3 s before).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from jetagents import Client, ClientSettings, NatsServer
from jetagents.testing.server import child_preexec

TICKS_S = os.sysconf("SC_CLK_TCK")
HOST_CELLS = ("call", "durable")  # "send" returns before the host runs the command


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_S  # utime + stime


def operation(client: Client, cell: str, agent: str) -> Callable[[], Awaitable[Any]]:
    ref = client.agent("counter", agent)
    if cell == "call":
        return lambda: ref.request("get", delivery="at-most-once")
    if cell == "durable":
        return lambda: ref.request("increment")
    return lambda: ref.send("increment")


async def run_cell(client: Client, cell: str, inflight: int, n: int, tag: str) -> None:
    per_worker = max(1, n // inflight)

    async def worker(w: int) -> None:
        op = operation(client, cell, f"{tag}{w}")
        for _ in range(per_worker):
            await op()

    await asyncio.gather(*(worker(w) for w in range(inflight)))


async def measure(url: str, host_pid: int, args: argparse.Namespace) -> dict[tuple[str, int], list[tuple[float, ...]]]:
    client = await Client.connect(settings=ClientSettings(nats_url=url, request_timeout_s=30))
    ref = client.agent("counter", "warm")
    for _ in range(300):  # until the host serves
        try:
            await ref.request("get", delivery="at-most-once", timeout=1)
            break
        except Exception:  # not up yet
            await asyncio.sleep(0.2)
    cells = [(c, k) for c in args.cells for k in args.inflight]
    h0, t0 = proc_cpu_s(host_pid), time.perf_counter()
    await asyncio.sleep(3.0)  # the host's own work with no commands (heartbeats, pulls, timers)
    idle_host_s_per_s = (proc_cpu_s(host_pid) - h0) / (time.perf_counter() - t0)
    for cell, inflight in cells:  # warm up (activations, JIT-free but caches and pools)
        await run_cell(client, cell, inflight, min(args.n, 512), "w")
    out: dict[tuple[str, int], list[tuple[float, ...]]] = {c: [] for c in cells}
    for rep in range(args.reps):
        random.shuffle(cells)
        for cell, inflight in cells:
            n = max(1, args.n // inflight) * inflight
            c0, h0, t0 = time.process_time(), proc_cpu_s(host_pid), time.perf_counter()
            await run_cell(client, cell, inflight, n, f"r{rep}")
            c1, h1, t1 = time.process_time(), proc_cpu_s(host_pid), time.perf_counter()
            host_s = h1 - h0 - idle_host_s_per_s * (t1 - t0)
            out[(cell, inflight)].append(((c1 - c0) / n * 1e6, host_s / n * 1e6, n / (t1 - t0)))
            if cell == "send":  # outside the window: the agents' next request waits for the sends
                await asyncio.gather(
                    *(client.agent("counter", f"r{rep}{w}").request("get", timeout=300) for w in range(inflight))
                )
    await client.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=3000, help="commands per cell and repetition")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--client-loop", choices=["asyncio", "uvloop"], default="asyncio")
    p.add_argument("--host-loop", choices=["asyncio", "uvloop"], default="asyncio")
    p.add_argument("--inflight", type=int, nargs="+", default=[1, 256])
    p.add_argument("--cells", nargs="+", choices=["call", "durable", "send"], default=["call", "durable", "send"])
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-cpu-"))
    server = NatsServer(data_dir=work / "nats", name="bench").start()
    env = dict(
        os.environ,
        JETAGENTS_NATS_URL=server.url,
        JETAGENTS_AGENTS='["jetagents.examples:EXAMPLE_AGENTS"]',
        JETAGENTS_HOST_ID="bench-host",
        JETAGENTS_LOG_LEVEL="WARNING",
        JETAGENTS_EVENT_LOOP=args.host_loop,
        JETAGENTS_LOOP=args.host_loop,  # the name before ADR 0041
    )
    with open(work / "host.log", "ab") as log:
        argv = [sys.executable, "-m", "agent_host"]
        host = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=child_preexec)
    try:
        if args.client_loop == "uvloop":
            import uvloop

            results = uvloop.run(measure(server.url, host.pid, args))
        else:
            results = asyncio.run(measure(server.url, host.pid, args))
    finally:
        host.terminate()
        host.wait(30)
        server.stop()
    print(f"client loop {args.client_loop}, host loop {args.host_loop}, median of {args.reps} x {args.n} commands")
    print(f"{'cell':10s} {'in flight':>9s} {'client us/cmd':>14s} {'host us/cmd':>12s} {'cmds/s':>8s}")
    for (cell, inflight), reps in sorted(results.items()):
        client_us, host_us, rate = (statistics.median(r[i] for r in reps) for i in range(3))
        host_txt = f"{host_us:12.0f}" if cell in HOST_CELLS else f"{'-':>12s}"
        print(f"{cell:10s} {inflight:9d} {client_us:14.1f} {host_txt} {rate:8.0f}")


if __name__ == "__main__":
    main()
