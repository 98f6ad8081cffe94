"""Resuming suspended actions (ADR 0042 step 4), against plain commands measured in the same run.

    python loadtests/bench_resume.py [--n 200] [--kills 5]

Starts a nats-server and one agent host (``python -m agent_host``) serving ``Waiter``, then:

* **signal-to-resume**, ``--n`` times, one at a time: an action suspended on
  ``wait_for("go")`` (``request_reply`` answered ``suspended``); the clock starts when the
  signal is sent and stops when the action's closing commit (``j.k == "end"``) is seen on its
  event-log subject (a core subscription: the stream's own delivery, no polling). Baseline:
  a plain one-event command's round trip (durable ``request``), interleaved with the signals.
* **resume after a host kill**, ``--kills`` times: one action suspended, the host killed
  (SIGKILL) and a new one started; the clock starts at the new host's spawn, the signal is
  sent at once (stored by the stream until a host serves it) and the clock stops at the
  action's closing commit. Baseline: the same kill and restart with a plain command sent at
  the spawn instead, until its reply.

Figures: median and p90 in milliseconds, and the ratios to the baselines. No assertion: a
benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel

from jetagents import Agent, Client, ClientSettings, Event, NatsServer, action, applies
from jetagents.testing.server import child_preexec


class WaitState(BaseModel):
    done: int = 0


class Done(Event):
    by: Any = None


class Waiter(Agent[WaitState]):
    type_name = "bwait"
    state_type = WaitState

    @action
    async def wait(self) -> Any:
        got = await self.wait_for("go")
        self.emit(Done(by=got))
        return got

    @action
    async def plain(self) -> int:
        self.emit(Done())
        return self.state.done

    @applies
    def _done(self, state: WaitState, event: Done) -> None:
        state.done += 1


AGENTS: list[Any] = [Waiter]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Bench:
    def __init__(self, url: str, work: Path) -> None:
        self.url = url
        self.work = work
        self.host: subprocess.Popen[bytes] | None = None
        here = str(Path(__file__).resolve().parent)
        self.env = dict(
            os.environ,
            JETAGENTS_NATS_URL=url,
            JETAGENTS_AGENTS='["bench_resume:AGENTS"]',
            JETAGENTS_LOG_LEVEL="WARNING",
            # a killed host leaves the cluster fast (as the chaos tests configure it)
            JETAGENTS_MEMBER_TTL_S="2",
            JETAGENTS_LEASE_TTL_S="2",
            JETAGENTS_HEARTBEAT_S="0.4",
            JETAGENTS_ACK_WAIT_S="2",
            PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])),
        )
        self.hosts = 0

    def spawn(self) -> float:
        self.hosts += 1
        env = dict(self.env, JETAGENTS_HOST_ID=f"bench-{self.hosts}")
        with open(self.work / "host.log", "ab") as log:
            self.host = subprocess.Popen(
                [sys.executable, "-m", "agent_host"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=child_preexec,
            )
        return time.perf_counter()

    def kill(self) -> None:
        if self.host is not None:
            self.host.kill()
            self.host.wait()


async def until_end(client: Client, agent_id: str) -> asyncio.Future[float]:
    """A future resolved with the time the agent's next closing commit is seen."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[float] = loop.create_future()

    async def on(msg: Any) -> None:
        j = orjson.loads(msg.data).get("j") or {}
        if j.get("k") == "end" and not fut.done():
            fut.set_result(time.perf_counter())

    sub = await client.nc.subscribe(f"agt.evt.bwait.{agent_id}", cb=on)
    await client.nc.flush()
    fut.add_done_callback(lambda _: asyncio.ensure_future(sub.unsubscribe()))
    return fut


async def measure(b: Bench, args: argparse.Namespace) -> dict[str, list[float]]:
    client = await Client.connect(settings=ClientSettings(nats_url=b.url, request_timeout_s=60))
    b.spawn()
    warm = client.agent("bwait", "warm")
    for _ in range(300):
        try:
            await warm.request("plain", timeout=1)
            break
        except Exception:  # not served yet
            await asyncio.sleep(0.2)
    out: dict[str, list[float]] = {"signal": [], "plain": [], "kill_resume": [], "kill_plain": []}
    for k in range(args.n + 10):  # the first 10 warm up
        ref = client.agent("bwait", f"s{k}")
        reply = await ref.request_reply("wait", command_id=f"w{k}")
        assert reply.status == "suspended"
        ended = await until_end(client, f"s{k}")
        t0 = time.perf_counter()
        await ref.signal("go", k)
        t1 = await ended
        p0 = time.perf_counter()
        await client.agent("bwait", "plain").request("plain")  # one warm agent, as the waiters are
        p1 = time.perf_counter()
        if k >= 10:
            out["signal"].append((t1 - t0) * 1e3)
            out["plain"].append((p1 - p0) * 1e3)
    for k in range(args.kills):
        ref = client.agent("bwait", f"k{k}")
        assert (await ref.request_reply("wait", command_id=f"kw{k}")).status == "suspended"
        ended = await until_end(client, f"k{k}")
        b.kill()
        t0 = b.spawn()
        await ref.signal("go", k, timeout=60)
        out["kill_resume"].append((await ended - t0) * 1e3)
        b.kill()
        t0 = b.spawn()
        await client.agent("bwait", f"kp{k}").request("plain", timeout=60)
        out["kill_plain"].append((time.perf_counter() - t0) * 1e3)
    await client.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200, help="signal-to-resume measurements")
    p.add_argument("--kills", type=int, default=5, help="host kills (each measured against a plain command's)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    server = NatsServer(data_dir=work / "nats", name="bench").start()
    b = Bench(server.url, work)
    try:
        r = asyncio.run(measure(b, args))
    finally:
        if b.host is not None:
            b.host.terminate()
            b.host.wait(30)
        server.stop()
    print(f"{'cell':44s} {'median ms':>10s} {'p90 ms':>8s} {'n':>5s}")
    rows = [
        ("signal -> resumed action's closing commit", "signal"),
        ("plain command round trip (baseline)", "plain"),
        ("host kill: spawn -> resumed action closed", "kill_resume"),
        ("host kill: spawn -> plain command's reply", "kill_plain"),
    ]
    for label, key in rows:
        print(f"{label:44s} {statistics.median(r[key]):10.1f} {pct(r[key], 0.9):8.1f} {len(r[key]):5d}")
    ratio = statistics.median(r["signal"]) / statistics.median(r["plain"])
    print(f"signal-to-resume / plain round trip (median): {ratio:.2f}")
    print(
        "resume after kill / plain after kill (median): "
        f"{statistics.median(r['kill_resume']) / statistics.median(r['kill_plain']):.2f}"
    )


if __name__ == "__main__":
    main()
