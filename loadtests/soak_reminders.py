"""Reminders on a 3-node cluster for a minute while hosts are killed and partitions move
(issue 14, ADR 0042 section 5): the counts the issue asks for, printed, not asserted.

    python loadtests/soak_reminders.py [--seconds 60] [--partitions 16]

A 3-node JetStream cluster (R3 streams), three agent hosts (``python -m agent_host``) serving
``tests/reminder_agents.py``. ``alarm/soak`` gets an ``every`` 1 s reminder and ``alarm/cron``
a five-field cron ``* * * * *`` (sent as ``0 * * * * *``: at each minute). Meanwhile: at 25 %
of the run the host holding the reminder's partition is killed (SIGKILL) and a new host joins;
at 50 % one more host joins (the ring moves partitions to it); at 75 % the host then holding the
partition leaves (SIGTERM, drained: its partitions move). At the end both reminders are
cancelled, the stream drains, and the event log (read outside the hosts) gives:

* firings: ``fire`` commits; distinct command ids and distinct ``next`` times (a doubled
  firing would repeat one); lost: scheduled seconds between the first and the last firing
  with no commit (the server merges firings during a stream-leader change, ADR 0042);
* cron: each firing's ``next`` and its commit time's distance from the minute it was for.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "loadtests")]

from tests.integration.helpers import commits  # noqa: E402

import _cluster  # noqa: E402
from _cluster import SHORT_TTL, Ring  # noqa: E402
from jetagents import Client, ClientSettings  # noqa: E402
from jetagents._core.ids import partition_of  # noqa: E402
from jetagents._core.schedules import parse_rfc3339_ms  # noqa: E402
from jetagents.testing.server import NatsCluster  # noqa: E402

AGENTS = '["jetagents.examples:EXAMPLE_AGENTS", "tests.reminder_agents:AGENTS"]'


def summary(log: list[dict[str, Any]], name: str) -> dict[str, Any]:
    fired = [c for c in log if (c.get("j") or {}).get("k") == "fire" and c["j"]["reminder"] == name]
    nexts = sorted(parse_rfc3339_ms(c["j"]["next"]) or 0 for c in fired)
    cmds = [c["cmd"] for c in fired]
    span = (nexts[-1] - nexts[0]) // 1000 + 1 if nexts else 0
    return {
        "firings": len(fired),
        "distinct_command_ids": len(set(cmds)),
        "distinct_next": len(set(nexts)),
        "scheduled_seconds_spanned": span,
        "lost_or_merged": span - len(set(nexts)) if name == "tick" else None,
        "doubled": len(cmds) - len(set(cmds)) + len(nexts) - len(set(nexts)),
        "events": sum(len(c["events"]) for c in fired),
    }


async def owner_of(ring: Ring, partition: int) -> str:
    return (await ring.claims()).get(partition, "")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--partitions", type=int, default=16)
    args = ap.parse_args()
    _cluster.PARTITIONS = args.partitions
    work = Path(tempfile.mkdtemp(prefix="soak-rem-"))
    cluster = NatsCluster(data_dir=work / "cluster", size=3)
    cluster.start()
    env = {"JETAGENTS_AGENTS": AGENTS, "PYTHONPATH": str(REPO), **SHORT_TTL}
    client = await Client.connect(
        settings=ClientSettings(nats_url=cluster.url, partitions=args.partitions, request_timeout_s=15)
    )
    ring = Ring(client, cluster.url, work, "soak", env)
    try:
        for _ in range(3):  # one at a time: the first creates the streams and buckets
            ring.add()
            await ring.settled(timeout_s=180)
        tick, cron = client.agent("alarm", "soak"), client.agent("alarm", "cron")
        partition = partition_of("alarm", "soak", args.partitions)
        t0 = time.monotonic()
        await tick.remind("tick", every=1, action="ring")
        await cron.remind("minute", cron="* * * * *", action="ring")
        events: list[str] = []
        plan = [(0.25, "kill"), (0.5, "join"), (0.75, "leave")]
        for frac, what in plan:
            while time.monotonic() - t0 < frac * args.seconds:
                await asyncio.sleep(0.2)
            owner = await owner_of(ring, partition)
            if what == "kill" and owner in ring.hosts:
                ring.kill9(owner)
                ring.add()
            elif what == "join":
                ring.add()
            elif what == "leave" and owner in ring.hosts:
                await ring.leave(owner)
            events.append(f"{time.monotonic() - t0:5.1f}s {what} (partition {partition} owner was {owner})")
        while time.monotonic() - t0 < args.seconds:
            await asyncio.sleep(0.2)
        # the cron fires at each minute: wait for at least one (at most a minute more)
        deadline = time.monotonic() + 65
        while (
            time.monotonic() < deadline and not summary(await commits(client.nc, "alarm", "cron"), "minute")["firings"]
        ):
            await asyncio.sleep(0.5)
        elapsed = time.monotonic() - t0
        await tick.cancel_reminder("tick")
        await cron.cancel_reminder("minute")
        await ring.settled(timeout_s=120)
        await asyncio.sleep(3)  # the last firings in flight when cancelled are processed
        log = await commits(client.nc, "alarm", "soak")
        cron_log = await commits(client.nc, "alarm", "cron")
        print(f"soak: {elapsed:.0f} s, every 1 s reminder on alarm/soak (partition {partition}), 3-node R3 cluster")
        for line in events:
            print("  ", line)
        print("tick:", summary(log, "tick"))
        print("cron (* * * * *):", summary(cron_log, "minute"))
        for c in cron_log:
            if (c.get("j") or {}).get("k") == "fire":
                due = (parse_rfc3339_ms(c["j"]["next"]) or 0) - 60_000
                print(
                    f"   cron firing for {time.strftime('%H:%M:%S', time.gmtime(due / 1000))}Z committed "
                    f"{(c['ts_ms'] - due) / 1000:.2f} s after the minute"
                )
        print("trouble in host logs:", ring.trouble())
    finally:
        await client.close()
        ring.stop_all()
        cluster.stop()


if __name__ == "__main__":
    os.environ.setdefault("JETAGENTS_LOG_LEVEL", "WARNING")
    asyncio.run(main())
