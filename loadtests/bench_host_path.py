"""The host's own work per command, in process: Python opcodes (a count the noise of a shared
machine cannot change) and CPU microseconds, for one or two trees.

    python loadtests/bench_host_path.py --a /tmp/ja_old --b /tmp/ja_new [--reps 5]
    python loadtests/bench_host_path.py --mode durable --delivery exactly-once --a ... --b ...

Each tree (a directory holding ``shared/`` and ``services/``, as for ``bench_ab.py``) runs in
a process of its own: a nats-server and a host started in that process.

``--mode call`` (the default), at-most-once calls: ``--calls`` calls (``get`` on ``--agents``
counter agents, the headers a real client sends, captured from one) handed straight to the
host's call intake (the call subscription's callback) in a loop. What is measured is therefore the host's
path from a received call to its reply's publish: not nats-py's parsing of the message, nor
the event loop's turns, which ``bench_ab.py`` includes. Prints, per tree: the median of
``--reps`` CPU measurements (``time.process_time``), then Python opcodes per call
(``sys.settrace`` with opcode events over 4 rounds of the agents, counted only inside the
intake call, so the host's other tasks are left out), and B/A of both.

``--mode durable``, durable commands (``increment`` with ``--delivery`` exactly-once or
at-least-once): a client in a process of its own (the tree's ``Client``) publishes them to
JetStream, ``--per`` in sequence on each of ``--agents`` counter agents at once, and the host
pulls them, runs them, appends each event, keeps the dedup record, replies and acknowledges.
A round is that batch, from the host telling the client to go to the client saying every
reply arrived. That path spans the host's tasks and awaits JetStream, so what is counted is
everything the host's process runs on its event loop during ``--traced`` rounds (nats-py's
reading included: the same code in both trees) divided by the commands, except two shares
that move with the time a round takes, which the tracer makes seconds on a busy machine:
work the loop's timers set off (a puller's wait waking each second, an expiry sweep) is left
out, and the loop's own turns (``select``, its timer heap; fewer the more messages one socket
read brings) are printed apart. The host runs with member and lease TTLs, a pull expiry and
an ack wait of an hour, and its coordinator ticks stopped after start: no heartbeat, claim
scan, expired pull or pin TTL falls into a round. Prints the same as the call mode ("call"
meaning a command), plus each traced round's own count: their spread is the count's noise
(about 1 %).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _path_bench import OpcodeCounter, LoopCallbacks, compare, parser, quiet_logs  # isort: skip

HERE = os.path.abspath(__file__)


async def start_host(name: str, extra_env: dict[str, str] | None = None) -> tuple[Any, Any]:
    """A nats-server and a host (example agents) in this process, from the tree on the path."""
    from jetagents import NatsServer
    from jetagents._service import load_agents
    from jetagents._settings import HostSettings

    try:
        from jetagents._host.host import Host
    except ImportError:  # a tree from before the layout (ADR 0040)
        from jetagents._host import Host  # type: ignore[attr-defined,no-redef]

    work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    server = NatsServer(data_dir=work / "nats", name=name).start()
    # a member TTL far beyond the run: the tracer slows the loop enough to make heartbeats late,
    # and a host that lost touch with the cluster refuses calls early, which would count fewer opcodes
    os.environ.update(
        JETAGENTS_NATS_URL=server.url,
        JETAGENTS_HOST_ID=name,
        JETAGENTS_LOG_LEVEL="WARNING",
        JETAGENTS_MEMBER_TTL_S="3600",
        JETAGENTS_LEASE_TTL_S="3600",
        **(extra_env or {}),
    )
    host = Host(HostSettings(), load_agents(["jetagents.examples:EXAMPLE_AGENTS"]))
    await host.start()
    return server, host


async def measure(calls: int, agents: int, reps: int, top: int) -> dict[str, Any]:
    import nats
    from nats.aio.msg import Msg

    from jetagents import Client, ClientSettings

    server, host = await start_host("hostpath")
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
        on_call = host._call_sub._cb  # the call subscription's callback, whichever it is

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


async def measure_durable(delivery: str, agents: int, per: int, reps: int, traced: int, top: int) -> dict[str, Any]:
    """Durable commands from a client process, counted on this process's loop (module doc)."""
    # The pulls' expiry too (each expired pull is a status to read and a pull to send), and
    # the ack wait with it: it is the consumer's pin TTL (a pin not renewed by a pull within it
    # moves, and our pulls then get 423 and unpin), and under the tracer a command can take
    # longer than 10 s, which would redeliver it
    server, host = await start_host("hostdur", {"JETAGENTS_PULL_EXPIRES_S": "3600", "JETAGENTS_ACK_WAIT_S": "3600"})
    work = Path(tempfile.mkdtemp(prefix="bench-hostdur-client-"))
    args = ["--durable-client", server.url, "--delivery", delivery, "--agents", str(agents), "--per", str(per)]
    with open(work / "client.log", "wb") as log:
        client = await asyncio.create_subprocess_exec(
            sys.executable, HERE, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log
        )
    assert client.stdin is not None and client.stdout is not None
    stdin, stdout = client.stdin, client.stdout

    async def rounds(n: int) -> None:
        for _ in range(n):
            stdin.write(b"go\n")
            await stdin.drain()
            line = await stdout.readline()
            if line.strip() != b"done":
                raise RuntimeError(f"client: {line!r}, see {work / 'client.log'}")

    try:
        line = await asyncio.wait_for(stdout.readline(), 120)
        if line.strip() != b"ready":
            raise RuntimeError(f"client: {line!r}, see {work / 'client.log'}")
        # the coordinator's ticks (a scan of the claims and members every 0.25 s, a heartbeat
        # every 0.4 s) are time-driven: under the tracer a round takes seconds, and they would
        # add as many opcodes as the round lasts. With nothing to coordinate (one host, TTLs of an
        # hour), the next tick comes after the run (both trees read these before each sleep).
        cfg = host.coordinator.cfg
        cfg.tick_s = cfg.heartbeat_s = 3600.0
        await rounds(2)
        n = agents * per
        per_cmd_us = []
        for _ in range(reps):
            gc.collect()
            t0 = time.process_time()
            await rounds(1)
            per_cmd_us.append((time.process_time() - t0) / n * 1e6)
        callbacks = LoopCallbacks()
        counter = OpcodeCounter(skip=HERE, loop=callbacks)
        per_round = []
        gc.collect()
        callbacks.install()
        counter.start()
        for _ in range(traced):
            before = sum(counter.ops.values())
            await rounds(1)
            per_round.append((sum(counter.ops.values()) - before) / n)
        counter.stop()
        callbacks.uninstall()
        stdin.write(b"quit\n")
        await stdin.drain()
        await asyncio.wait_for(client.wait(), 30)
        return {
            **counter.result(traced * n, top),
            "us": statistics.median(per_cmd_us),
            "us_all": per_cmd_us,
            "opcodes_rounds": per_round,
            "loop_opcodes": sum(counter.loop_ops.values()) / (traced * n),
        }
    finally:
        if client.returncode is None:
            client.kill()
            await client.wait()
        await host.stop(drain=False)
        server.stop()


async def durable_client(url: str, delivery: str, agents: int, per: int) -> None:
    """The client process: a round of commands for each ``go`` on stdin, ``done`` when all
    are answered."""
    from jetagents import Client, ClientSettings

    client = await Client.connect(settings=ClientSettings(nats_url=url, request_timeout_s=120))
    refs = [client.agent("counter", f"a{i}") for i in range(agents)]
    for _ in range(600):  # until the host serves its partitions
        try:
            await refs[0].request("get", {}, delivery="at-most-once", timeout=1)
            break
        except Exception:  # not up yet
            await asyncio.sleep(0.2)
    params = {"by": 1}

    async def worker(ref: Any) -> None:
        for _ in range(per):
            await ref.request("increment", params, delivery=delivery)

    await asyncio.gather(*(ref.request("increment", params, delivery=delivery) for ref in refs))  # in memory
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    try:
        while (await reader.readline()).strip() == b"go":
            await asyncio.gather(*(worker(ref) for ref in refs))
            print("done", flush=True)
    finally:
        await client.close()


def main() -> None:
    if sys.argv[1:2] == ["--durable-client"]:  # the durable mode's client process
        quiet_logs()
        url, _, delivery, _, agents, _, per = sys.argv[2:9]
        asyncio.run(durable_client(url, delivery, int(agents), int(per)))
        return
    p = parser(__doc__)
    p.add_argument("--mode", choices=("call", "durable"), default="call")
    p.add_argument("--calls", type=int, default=12_800, help="call mode: calls per CPU measurement")
    p.add_argument("--agents", type=int, default=256)
    p.add_argument("--delivery", choices=("exactly-once", "at-least-once"), default="exactly-once")
    p.add_argument("--per", type=int, default=0, help="durable mode: commands per agent per round (1024/agents)")
    p.add_argument("--traced", type=int, default=4, help="durable mode: rounds counted")
    args = p.parse_args()
    per = args.per or max(1, 1024 // args.agents)
    if args.child:
        quiet_logs()
        if args.mode == "durable":
            result = measure_durable(args.delivery, args.agents, per, args.reps, args.traced, args.top)
        else:
            result = measure(args.calls, args.agents, args.reps, args.top)
        print(json.dumps(asyncio.run(result)))
        return
    child = ["--calls", str(args.calls), "--agents", str(args.agents), "--top", str(args.top), "--reps", str(args.reps)]
    if args.mode == "durable":
        child += ["--mode", "durable", "--delivery", args.delivery, "--per", str(per), "--traced", str(args.traced)]
    compare(__file__, [t for t in (args.a, args.b) if t], child)


if __name__ == "__main__":
    main()
