"""The host's own work per at-most-once call, in process: Python opcodes (a count the noise of
a shared machine cannot change) and CPU microseconds, for one or two trees.

    python loadtests/bench_host_path.py --a /tmp/ja_old --b /tmp/ja_new [--reps 5]

Each tree (a directory holding ``shared/`` and ``services/``, as for ``bench_ab.py``) runs in
a process of its own: a nats-server, a host started in that process, and ``--calls`` calls
(``get`` on ``--agents`` counter agents, the headers a real client sends, captured from one)
handed straight to the host's call intake (``Host._on_call``) in a loop. What is measured is
therefore the host's path from a received call to its reply's publish: not nats-py's parsing
of the message, nor the event loop's turns, which ``bench_ab.py`` includes. Prints, per tree:
the median of ``--reps`` CPU measurements (``time.process_time``), then Python opcodes per
call (``sys.settrace`` with opcode events over 4 rounds of the agents, counted only inside
the intake call, so the host's other tasks are left out), and B/A of both.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _path_bench import OpcodeCounter, compare, parser, quiet_logs  # isort: skip


async def measure(calls: int, agents: int, reps: int, top: int) -> dict[str, Any]:
    import nats
    from nats.aio.msg import Msg

    from jetagents import Client, ClientSettings, NatsServer
    from jetagents._service import load_agents
    from jetagents._settings import HostSettings

    try:
        from jetagents._host.host import Host
    except ImportError:  # a tree from before the layout (ADR 0040)
        from jetagents._host import Host  # type: ignore[attr-defined,no-redef]

    work = Path(tempfile.mkdtemp(prefix="bench-host-path-"))
    server = NatsServer(data_dir=work / "nats", name="hostpath").start()
    # a member TTL far beyond the run: the tracer slows the loop enough to make heartbeats late,
    # and a host that lost touch with the cluster refuses calls early, which would count fewer opcodes
    os.environ.update(
        JETAGENTS_NATS_URL=server.url,
        JETAGENTS_HOST_ID="hostpath",
        JETAGENTS_LOG_LEVEL="WARNING",
        JETAGENTS_MEMBER_TTL_S="3600",
        JETAGENTS_LEASE_TTL_S="3600",
    )
    host = Host(HostSettings(), load_agents(["jetagents.examples:EXAMPLE_AGENTS"]))
    await host.start()
    client = await Client.connect(settings=ClientSettings(nats_url=server.url, request_timeout_s=30))
    spy = await nats.connect(server.url)
    seen: list[Any] = []

    async def keep(msg: Any) -> None:
        seen.append(msg)

    await spy.subscribe("agt.call.>", cb=keep)
    await spy.flush()
    try:
        for _ in range(300):  # until the host serves its partitions
            try:
                await client.agent("counter", "a0").request("get", {}, delivery="at-most-once", timeout=1)
                break
            except Exception:  # not up yet
                await asyncio.sleep(0.2)
        for i in range(agents):  # each agent in memory
            await client.agent("counter", f"a{i}").request("get", {}, delivery="at-most-once")
        sent = seen[-1]
        msgs = [
            Msg(
                _client=spy,
                subject=f"agt.call.counter.a{i}",
                reply=f"_INBOX.hostpath.{i}",
                data=sent.data,
                headers=dict(sent.headers or {}),
            )
            for i in range(agents)
        ]
        on_call = host._on_call

        inside = [False]  # counting: only what runs inside a call's intake, not the host's other tasks

        async def rounds(n: int) -> None:
            for _ in range(n):
                for m in msgs:
                    inside[0] = True
                    await on_call(m)
                    inside[0] = False
                await asyncio.sleep(0)

        await rounds(2)
        per_call_us = []
        for _ in range(reps):
            gc.collect()
            t0 = time.process_time()
            await rounds(max(1, calls // agents))
            per_call_us.append((time.process_time() - t0) / (max(1, calls // agents) * agents) * 1e6)
        counter = OpcodeCounter(counting=lambda: inside[0])
        counter.start()
        await rounds(4)
        counter.stop()
        return {
            **counter.result(4 * agents, top),
            "us": statistics.median(per_call_us),
            "us_all": per_call_us,
            "headers": sorted(sent.headers or {}),
        }
    finally:
        await client.close()
        await spy.close()
        await host.stop(drain=False)
        server.stop()


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--calls", type=int, default=12_800)
    p.add_argument("--agents", type=int, default=256)
    args = p.parse_args()
    if args.child:
        quiet_logs()
        print(json.dumps(asyncio.run(measure(args.calls, args.agents, args.reps, args.top))))
        return
    child = ["--calls", str(args.calls), "--agents", str(args.agents), "--top", str(args.top), "--reps", str(args.reps)]
    compare(__file__, [t for t in (args.a, args.b) if t], child)


if __name__ == "__main__":
    main()
