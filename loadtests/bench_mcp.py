"""Tool-call latency through ``jetagents mcp`` (streamable HTTP) against a direct client call,
measured in the same run (ADR 0048).

    python loadtests/bench_mcp.py [--n 300] [--reps 3]

Starts a nats-server, one agent host (``python -m agent_host``, the examples) and
``jetagents mcp --types counter --transport http --port 0``, then, one call at a time, in random
order each repetition:

* ``direct write``: ``client.agent("counter", id).request("increment", {"by": 1})``
  (exactly-once, what the gateway sends for a write);
* ``mcp write``: the SDK's ``mcp.Client`` calling the tool ``counter_increment``;
* ``direct read``: ``request("get", delivery="at-most-once")`` (a call, what the gateway sends
  for a read-only action);
* ``mcp read``: the tool ``counter_get``;
* ``mcp legacy write``: ``counter_increment`` from a client on the handshake protocol
  (``mode="legacy"``: one HTTP session, command ids from the request ids);
* ``mcp floor``: a tool that returns its argument, on the SDK's own ``MCPServer`` in another
  process, over the same transport: what any MCP tool call costs here, jetagents or not.

The MCP client uses the 2026-07-28 protocol unless said otherwise (``mode="auto"``). Figures
are median latencies of ``--reps`` repetitions (the first repetition warms up and is dropped);
the ratios put each MCP cell against its direct call, and what the gateway adds on top of the
floor. The gateway's CPU per call comes from
``/proc/<pid>/stat`` (the floor server's for the floor). No assertion: a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mcp import Client as McpClient

from jetagents import Client, ClientSettings, NatsServer
from jetagents.testing.server import child_preexec

TICKS_S = os.sysconf("SC_CLK_TCK")
CELLS = ["direct write", "mcp write", "direct read", "mcp read", "mcp legacy write", "mcp floor"]
FLOOR = """
import asyncio, socket, sys, uvicorn
from mcp.server.mcpserver import MCPServer
server = MCPServer("floor")
@server.tool()
def echo(value: int) -> int:
    return value
sock = socket.socket(); sock.bind(("127.0.0.1", 0))
print(f"mcp listening on http://127.0.0.1:{sock.getsockname()[1]}/mcp", file=sys.stderr, flush=True)
app = server.streamable_http_app(host="127.0.0.1")
asyncio.run(uvicorn.Server(uvicorn.Config(app, log_level="warning")).serve(sockets=[sock]))
"""


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_S


async def wait_listening(proc: asyncio.subprocess.Process) -> str:
    assert proc.stderr is not None
    async with asyncio.timeout(60):
        while True:
            line = (await proc.stderr.readline()).decode()
            if not line:
                raise RuntimeError("jetagents mcp exited before listening")
            found = re.search(r"mcp listening on (http://\S+)", line)
            if found:
                return found.group(1)


async def one_call(cell: str, ref: Any, agent: str, modern: Any, legacy: Any, bare: Any) -> Any:
    if cell == "direct write":
        return await ref.request("increment", {"by": 1})
    if cell == "direct read":
        return await ref.request("get", delivery="at-most-once")
    if cell == "mcp floor":
        return await bare.call_tool("echo", {"value": 1})
    if cell == "mcp read":
        return await modern.call_tool("counter_get", {"agent_id": agent})
    mcp = legacy if "legacy" in cell else modern
    return await mcp.call_tool("counter_increment", {"agent_id": agent})


async def measure(nats_url: str, args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    env = dict(os.environ, JETAGENTS_AGENTS='["jetagents.examples:EXAMPLE_AGENTS"]')
    argv = ["-m", "jetagents.cli", "mcp", "--types", "counter", "--nats", nats_url, "--transport", "http"]
    gateway = await asyncio.create_subprocess_exec(sys.executable, *argv, env=env, stderr=asyncio.subprocess.PIPE)
    floor = await asyncio.create_subprocess_exec(sys.executable, "-c", FLOOR, stderr=asyncio.subprocess.PIPE)
    client = await Client.connect(settings=ClientSettings(nats_url=nats_url, request_timeout_s=30))
    try:
        url = await wait_listening(gateway)
        floor_url = await wait_listening(floor)
        for _ in range(300):  # until the host serves
            try:
                await client.agent("counter", "warm").request("get", delivery="at-most-once", timeout=1)
                break
            except Exception:
                await asyncio.sleep(0.2)
        latency: dict[str, list[float]] = {c: [] for c in CELLS}
        gateway_cpu: dict[str, list[float]] = {c: [] for c in CELLS}
        async with McpClient(url) as modern, McpClient(url, mode="legacy") as legacy, McpClient(floor_url) as bare:
            cells = list(CELLS)
            for rep in range(args.reps + 1):  # the first repetition warms up
                random.shuffle(cells)
                for cell in cells:
                    agent = f"b{rep}-{cell.replace(' ', '-')}"
                    ref = client.agent("counter", agent)
                    pid = floor.pid if cell == "mcp floor" else gateway.pid
                    c0, t0 = proc_cpu_s(pid), time.perf_counter()
                    for _ in range(args.n):
                        result = await one_call(cell, ref, agent, modern, legacy, bare)
                        if getattr(result, "is_error", False):
                            raise RuntimeError(f"{cell}: {result}")
                    c1, t1 = proc_cpu_s(pid), time.perf_counter()
                    if rep:
                        latency[cell].append((t1 - t0) / args.n * 1e6)
                        gateway_cpu[cell].append((c1 - c0) / args.n * 1e6)
        return latency, gateway_cpu
    finally:
        await client.close()
        for proc in (gateway, floor):
            proc.terminate()
            await proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=300, help="calls per cell and repetition")
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-mcp-"))
    server = NatsServer(data_dir=work / "nats", name="bench").start()
    env = dict(
        os.environ,
        JETAGENTS_NATS_URL=server.url,
        JETAGENTS_AGENTS='["jetagents.examples:EXAMPLE_AGENTS"]',
        JETAGENTS_HOST_ID="bench-host",
        JETAGENTS_LOG_LEVEL="WARNING",
    )
    with open(work / "host.log", "ab") as log:
        argv = [sys.executable, "-m", "agent_host"]
        host = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=child_preexec)
    try:
        latency, cpu = asyncio.run(measure(server.url, args))
    finally:
        host.terminate()
        host.wait(30)
        server.stop()
    med = {c: statistics.median(v) for c, v in latency.items()}
    med_cpu = {c: statistics.median(v) for c, v in cpu.items()}
    print(f"median of {args.reps} x {args.n} calls, one at a time")
    print(f"{'cell':20s} {'latency us':>11s} {'server cpu us':>14s}")
    for cell in CELLS:
        print(f"{cell:20s} {med[cell]:11.0f} {med_cpu[cell]:14.0f}")
    print(f"mcp write / direct write:         {med['mcp write'] / med['direct write']:.2f}")
    print(f"mcp read / direct read:           {med['mcp read'] / med['direct read']:.2f}")
    print(f"mcp legacy write / direct write:  {med['mcp legacy write'] / med['direct write']:.2f}")
    print(f"mcp write / mcp floor:            {med['mcp write'] / med['mcp floor']:.2f}")
    print(f"mcp floor / direct write:         {med['mcp floor'] / med['direct write']:.2f}")


if __name__ == "__main__":
    main()
