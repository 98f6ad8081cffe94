"""The client's own work per at-most-once call, in process: Python opcodes (a count the noise
of a shared machine barely moves) and CPU microseconds, for one or two trees.

    python loadtests/bench_client_path.py --a /tmp/ja_old --b /tmp/ja_new [--reps 5] [--top 30]

Each tree (a directory holding ``shared/`` and ``services/``, as for ``bench_host_path.py``)
runs in a process of its own: a nats-server, a host in a subprocess (``python -m agent_host``,
the tree's own code, example agents), and in that process a client that keeps ``--inflight``
at-most-once ``get`` calls in flight on each of ``--agents`` counter agents
(``client.agent("counter", id).request("get", {}, delivery="at-most-once")``). What is
measured is the client process's whole work per call: building and sending the call, nats-py
reading and parsing the reply, the event loop's turns, decoding the reply. The host's work is
in its own process and not counted. Prints, per tree: the median of ``--reps`` CPU
measurements (``time.process_time`` of the client process per call), then Python opcodes per
call (``sys.settrace`` with opcode events over ``--traced`` rounds; the loop that drives the
calls, in this file, is left out), and B/A of both.

The opcode count of calls in flight together moves a little with how many replies one socket
read brings (nats-py parses per read): a few opcodes per call between runs, where a change to
the call path moves it by tens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _path_bench import OpcodeCounter, compare, parser, quiet_logs  # isort: skip

HERE = os.path.abspath(__file__)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    from jetagents import Client, ClientSettings, NatsServer

    work = Path(tempfile.mkdtemp(prefix="bench-client-path-"))
    server = NatsServer(data_dir=work / "nats", name="clientpath").start()
    env = dict(
        os.environ,
        JETAGENTS_NATS_URL=server.url,
        JETAGENTS_AGENTS='["jetagents.examples:EXAMPLE_AGENTS"]',
        JETAGENTS_HOST_ID="clientpath",
        JETAGENTS_LOG_LEVEL="WARNING",
    )
    with open(work / "host.log", "ab") as log:
        host = subprocess.Popen([sys.executable, "-m", "agent_host"], env=env, stdout=log, stderr=subprocess.STDOUT)
    client = await Client.connect(settings=ClientSettings(nats_url=server.url, request_timeout_s=60))
    try:
        refs = [client.agent("counter", f"a{i}") for i in range(args.agents)]
        for _ in range(600):  # until the host serves its partitions
            try:
                await refs[0].request("get", {}, delivery="at-most-once", timeout=1)
                break
            except Exception:  # not up yet
                if host.poll() is not None:
                    raise RuntimeError(f"host exited with {host.returncode}: see {work / 'host.log'}") from None
                await asyncio.sleep(0.2)
        for ref in refs:  # each agent in memory
            await ref.request("get", {}, delivery="at-most-once")

        async def worker(ref: Any, n: int) -> None:
            for _ in range(n):
                await ref.request("get", {}, delivery="at-most-once")

        async def rounds(n: int) -> int:
            await asyncio.gather(*(worker(ref, n) for ref in refs for _ in range(args.inflight)))
            return n * len(refs) * args.inflight

        await rounds(2)
        per_call_us = []
        for _ in range(args.reps):
            gc.collect()
            t0 = time.process_time()
            done = await rounds(args.rounds)
            per_call_us.append((time.process_time() - t0) / done * 1e6)

        counter = OpcodeCounter(skip=HERE)  # the driving loop is not the client's work
        gc.collect()
        counter.start()
        done = await rounds(args.traced)
        counter.stop()
        return {
            **counter.result(done, args.top),
            "us": statistics.median(per_call_us),
            "us_all": per_call_us,
        }
    finally:
        await client.close()
        host.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            host.wait(15)
        if host.poll() is None:
            host.kill()
            host.wait()
        server.stop()


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--agents", type=int, default=64)
    p.add_argument("--inflight", type=int, default=8, help="calls in flight on each agent")
    p.add_argument("--rounds", type=int, default=20, help="calls per in-flight slot in one CPU measurement")
    p.add_argument("--traced", type=int, default=4, help="calls per in-flight slot while counting opcodes")
    args = p.parse_args()
    if args.child:
        quiet_logs()
        print(json.dumps(asyncio.run(measure(args))))
        return
    child = [f"--{name}={getattr(args, name)}" for name in ("agents", "inflight", "rounds", "traced", "reps", "top")]
    compare(HERE, [t for t in (args.a, args.b) if t], child)


if __name__ == "__main__":
    main()
