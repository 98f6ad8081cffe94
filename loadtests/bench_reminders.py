"""Reminders fired per second (ADR 0042 section 5), against plain durable commands measured in
the same run.

    python loadtests/bench_reminders.py [--n 400] [--agents 40] [--reps 3]

Starts a nats-server and one agent host (``python -m agent_host``) serving
``tests/reminder_agents.py``, then, in random order each repetition:

* ``reminders``: ``--n`` one-shot schedules (``@at`` two seconds ahead, all the same second)
  spread over ``--agents`` agents, published straight to the command stream with the host's
  schedules adapter; the clock starts at their due second and stops when the last firing's
  commit is in the event log. The server turns each into a command; the host processes each
  once and writes its ``fire`` commit.
* ``commands``: the same number of durable commands (the same ``ring`` action on the same
  agents), published at once from this process without waiting for replies; the clock runs from
  the first publish to the last commit.

Figures are medians of ``--reps``: firings per second, commands per second, and their ratio.
No assertion: a benchmark, not a test.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import orjson  # noqa: E402

from jetagents import Client, ClientSettings, NatsServer  # noqa: E402
from jetagents._core.wire import Subjects  # noqa: E402
from jetagents._nats.api import js_api  # noqa: E402
from jetagents._nats.schedules import NatsSchedules  # noqa: E402
from jetagents.testing.server import child_preexec  # noqa: E402

AGENTS = '["jetagents.examples:EXAMPLE_AGENTS", "tests.reminder_agents:AGENTS"]'
SUBJECTS = Subjects("agt")


async def evt_messages(client: Client) -> int:
    info = await js_api(client.nc, "$JS.API.STREAM.INFO.AGT_EVT", None, 10)
    return int(info["state"]["messages"])


async def until_commits(client: Client, target: int, timeout_s: float = 300) -> float:
    """Monotonic time when AGT_EVT holds ``target`` messages."""
    deadline = time.monotonic() + timeout_s
    while await evt_messages(client) < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {await evt_messages(client)} of {target} commits")
        await asyncio.sleep(0.02)
    return time.monotonic()


async def reminders(client: Client, sch: NatsSchedules, n: int, agents: int, rep: int) -> float:
    base = await evt_messages(client)
    due_s = int(time.time()) + 3
    body = orjson.dumps({"action": "ring", "params": {}})
    for k in range(n):
        aid = f"b{k % agents}"
        await sch.schedule_at(
            SUBJECTS.rem("alarm", aid, f"r{rep}-{k}"),
            due_s * 1000,
            SUBJECTS.cmd("alarm", aid),
            body,
            headers={"Agt-Reminder": f"r{rep}-{k}"},
        )
    if time.time() > due_s:
        raise RuntimeError("publishing the schedules took past their due second: lower --n")
    start = time.monotonic() + (due_s - time.time())
    done = await until_commits(client, base + n)
    return n / (done - start)


async def commands(client: Client, n: int, agents: int) -> float:
    base = await evt_messages(client)
    js = client.nc.jetstream()
    body = orjson.dumps({"action": "ring", "params": {}})
    start = time.monotonic()
    acks = [js.publish(SUBJECTS.cmd("alarm", f"b{k % agents}"), body) for k in range(n)]
    await asyncio.gather(*acks)
    done = await until_commits(client, base + n)
    return n / (done - start)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--agents", type=int, default=40)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-rem-"))
    server = NatsServer(data_dir=work / "nats", name="bench")
    server.start()
    env = dict(
        os.environ,
        JETAGENTS_NATS_URL=server.url,
        JETAGENTS_PARTITIONS="8",
        JETAGENTS_AGENTS=AGENTS,
        JETAGENTS_LOG_LEVEL="WARNING",
        PYTHONPATH=str(REPO),
    )
    with open(work / "host.log", "ab") as out:
        host = subprocess.Popen(
            [sys.executable, "-m", "agent_host"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=child_preexec,
        )
    client = await Client.connect(settings=ClientSettings(nats_url=server.url, partitions=8, request_timeout_s=10))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                await client.agent("alarm", "probe").request("count", delivery="at-most-once", timeout=1)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        sch = NatsSchedules(client.nc, "AGT_CMD", 10)
        await commands(client, args.agents, args.agents)  # warm-up: every agent activated
        got: dict[str, list[float]] = {"reminders": [], "commands": []}
        for rep in range(args.reps):
            order = ["reminders", "commands"]
            random.shuffle(order)
            for what in order:
                if what == "reminders":
                    got[what].append(await reminders(client, sch, args.n, args.agents, rep))
                else:
                    got[what].append(await commands(client, args.n, args.agents))
        fired, plain = statistics.median(got["reminders"]), statistics.median(got["commands"])
        print(f"bench_reminders: n={args.n} over {args.agents} agents, {args.reps} reps, one host, one server")
        print(f"  reminder firings processed: {fired:8.0f} /s   (runs: {[round(x) for x in got['reminders']]})")
        print(f"  plain durable commands:     {plain:8.0f} /s   (runs: {[round(x) for x in got['commands']]})")
        print(f"  ratio firings / commands:   {fired / plain:8.2f}")
    finally:
        await client.close()
        host.terminate()
        host.wait(30)
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
