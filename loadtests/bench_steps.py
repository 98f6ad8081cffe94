"""The cost of one journaled step (ADR 0042), against an event append measured in the same run.

    python loadtests/bench_steps.py [--n 400] [--reps 3] [--steps 5]

Starts a nats-server and one agent host (``python -m agent_host``) serving ``Steps``, then
runs, one command at a time (durable ``request``, exactly-once), in random order each
repetition:

* ``append``: the bare append a step costs on the wire, from this process: a JetStream publish
  on one subject of ``AGT_EVT``-like stream with ``Nats-Expected-Last-Subject-Sequence`` and a
  ``Nats-Msg-Id`` (the fence and the dedup id every commit carries), awaited PubAck;
* ``plain``: an action that emits one event (one commit: the command's own append);
* ``stepped``: the same action with ``--steps`` steps before the event (each a trivial
  function whose result is journaled: one more fenced append each, then the closing commit).

A step's cost is ``(stepped - plain) / steps``: wall latency (the caller waits for it) and host
CPU (``/proc/<pid>/stat``, the host's idle CPU subtracted). Figures are medians of ``--reps``;
the ratios put a step against the bare append and against a whole plain command. No
assertion: a benchmark, not a test.
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
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from jetagents import Agent, Client, ClientSettings, Event, NatsServer, action, applies
from jetagents.testing.server import child_preexec

TICKS_S = os.sysconf("SC_CLK_TCK")


class StepsState(BaseModel):
    done: int = 0


class Done(Event):
    total: int


def _one(k: int) -> int:
    return k + 1


class Steps(Agent[StepsState]):
    type_name = "bsteps"
    state_type = StepsState

    @action
    async def plain(self) -> int:
        self.emit(Done(total=0))
        return self.state.done

    @action
    async def stepped(self, steps: int) -> int:
        total = 0
        for k in range(steps):
            total += await self.step(f"s{k}", _one, k)
        self.emit(Done(total=total))
        return self.state.done

    @applies
    def _done(self, state: StepsState, event: Done) -> None:
        state.done += 1


AGENTS: list[Any] = [Steps]


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_S


async def measure(url: str, host_pid: int, args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    client = await Client.connect(settings=ClientSettings(nats_url=url, request_timeout_s=30))
    ref = client.agent("bsteps", "warm")
    for _ in range(300):  # until the host serves
        try:
            await ref.request("plain", timeout=1)
            break
        except Exception:
            await asyncio.sleep(0.2)
    js = client.nc.jetstream()
    await js.add_stream(name="BENCH_APPEND", subjects=["bench.append.>"])
    last = {"seq": 0}
    counter = iter(range(10**9))

    async def append_once(subject: str) -> None:
        i = next(counter)
        hdrs = {"Nats-Msg-Id": f"bench:{i}", "Nats-Expected-Last-Subject-Sequence": str(last["seq"])}
        ack = await js.publish(subject, b'{"n":1,"cmd":"x","action":"a","events":[],"j":{"k":"step"}}', headers=hdrs)
        last["seq"] = ack.seq

    h0, t0 = proc_cpu_s(host_pid), time.perf_counter()
    await asyncio.sleep(3.0)
    idle = (proc_cpu_s(host_pid) - h0) / (time.perf_counter() - t0)
    cells = ["append", "plain", "stepped"]
    out: dict[str, list[tuple[float, float]]] = {c: [] for c in cells}
    for rep in range(args.reps + 1):  # the first repetition warms up
        random.shuffle(cells)
        for cell in cells:
            agent = client.agent("bsteps", f"{cell}{rep}")
            subject = f"bench.append.{rep}"
            last["seq"] = 0
            h0, t0 = proc_cpu_s(host_pid), time.perf_counter()
            for _ in range(args.n):
                if cell == "append":
                    await append_once(subject)
                elif cell == "plain":
                    await agent.request("plain")
                else:
                    await agent.request("stepped", {"steps": args.steps})
            h1, t1 = proc_cpu_s(host_pid), time.perf_counter()
            if rep:
                host_us = 0.0 if cell == "append" else (h1 - h0 - idle * (t1 - t0)) / args.n * 1e6
                out[cell].append(((t1 - t0) / args.n * 1e6, host_us))
    await client.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=400, help="commands (or appends) per cell and repetition")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-steps-"))
    server = NatsServer(data_dir=work / "nats", name="bench").start()
    here = str(Path(__file__).resolve().parent)
    env = dict(
        os.environ,
        JETAGENTS_NATS_URL=server.url,
        JETAGENTS_AGENTS='["bench_steps:AGENTS"]',
        JETAGENTS_HOST_ID="bench-host",
        JETAGENTS_LOG_LEVEL="WARNING",
        PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])),
    )
    with open(work / "host.log", "ab") as log:
        argv = [sys.executable, "-m", "agent_host"]
        host = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=child_preexec)
    try:
        results = asyncio.run(measure(server.url, host.pid, args))
    finally:
        host.terminate()
        host.wait(30)
        server.stop()
    med = {c: tuple(statistics.median(r[i] for r in reps) for i in range(2)) for c, reps in results.items()}
    k = args.steps
    step_lat = (med["stepped"][0] - med["plain"][0]) / k
    step_cpu = (med["stepped"][1] - med["plain"][1]) / k
    print(f"median of {args.reps} x {args.n}, one at a time, {k} steps per stepped command")
    print(f"{'cell':28s} {'latency us':>11s} {'host cpu us':>12s}")
    print(f"{'append (bare, fenced)':28s} {med['append'][0]:11.0f} {'-':>12s}")
    print(f"{'plain (1 event)':28s} {med['plain'][0]:11.0f} {med['plain'][1]:12.0f}")
    print(f"{f'stepped ({k} steps + 1 event)':28s} {med['stepped'][0]:11.0f} {med['stepped'][1]:12.0f}")
    print(f"{'one step (marginal)':28s} {step_lat:11.0f} {step_cpu:12.0f}")
    print(f"step latency / bare append:     {step_lat / med['append'][0]:.2f}")
    print(f"step latency / plain command:   {step_lat / med['plain'][0]:.2f}")
    print(f"step host CPU / plain command:  {step_cpu / med['plain'][1]:.2f}")


if __name__ == "__main__":
    main()
