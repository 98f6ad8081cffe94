"""Message schedules (ADR-51) on a replicated stream while its leader moves (ADR 0042 §5).

On a real 3-node cluster, ``@every 1s`` schedules in an R3 stream keep firing while the
stream leader steps down three times and is then killed (-9) and restarted. Checked: no
firing is produced twice (two stored firings of one schedule never name the same next time),
no more firings than seconds elapsed, and firings carry on after the faults.

Measured with this test's setup (5 schedules, 2-core loaded machine): clean step-downs lose
nothing (32 firings in 32 s with 10 step-downs); each kill of the leader leaves a gap of about
5 s, whose firings are merged into one by the new leader ("skip ahead and only fire once",
``parseMsgSchedule``). Only the absence of doubles is asserted: the gap depends on the
election and is what the host's catch-up count (ADR 0042 §5) reports to the action.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import defaultdict
from typing import Any

import nats
import orjson
import pytest
from nats.aio.client import Client as NATS

from jetagents.testing.server import NatsCluster

pytestmark = pytest.mark.chaos

SCHEDULES = 5


async def api(nc: NATS, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JetStream API request, asked again while the cluster is electing (no answer)."""
    for _ in range(60):
        try:
            msg = await nc.request(subject, orjson.dumps(body) if body is not None else b"", timeout=2)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            await asyncio.sleep(0.5)
            continue
        out: dict[str, Any] = orjson.loads(msg.data)
        if out.get("error", {}).get("code") == 503:
            await asyncio.sleep(0.5)
            continue
        return out
    raise AssertionError(f"{subject}: no answer from the cluster")


async def leader(nc: NATS) -> str:
    while True:
        info = await api(nc, "$JS.API.STREAM.INFO.S")
        name = info.get("cluster", {}).get("leader")
        if name:
            return str(name)
        await asyncio.sleep(0.3)


async def firings(nc: NATS) -> dict[str, list[str]]:
    """``Nats-Schedule-Next`` of every stored firing, per target subject."""
    out: dict[str, list[str]] = defaultdict(list)
    last = (await api(nc, "$JS.API.STREAM.INFO.S"))["state"]["last_seq"]
    for seq in range(1, last + 1):
        got = await api(nc, "$JS.API.STREAM.MSG.GET.S", {"seq": seq})
        m = got.get("message")
        if m is None or not m["subject"].startswith("t."):
            continue
        hdrs = base64.b64decode(m.get("hdrs", "")).decode().split("\r\n")
        nxt = next(h.partition(":")[2].strip() for h in hdrs if h.startswith("Nats-Schedule-Next:"))
        out[m["subject"]].append(nxt)
    return out


async def test_every_schedule_never_fires_twice_while_the_stream_leader_moves(nats_cluster: NatsCluster) -> None:
    nc = await nats.connect(servers=nats_cluster.urls)
    try:
        cfg = {"name": "S", "subjects": ["t.>", "s.>"], "num_replicas": 3, "allow_msg_schedules": True}
        assert (await api(nc, "$JS.API.STREAM.CREATE.S", cfg)).get("error") is None
        for i in range(SCHEDULES):
            hdrs = {"Nats-Schedule": "@every 1s", "Nats-Schedule-Target": f"t.{i}"}
            await nc.request(f"s.{i}", b"", timeout=5, headers=hdrs)
        started = time.monotonic()
        for _ in range(3):
            await asyncio.sleep(2.5)
            await api(nc, "$JS.API.STREAM.LEADER.STEPDOWN.S")
        await asyncio.sleep(2.5)
        name = await leader(nc)
        node = next(s for s in nats_cluster.servers if s.name == name)
        node.kill()
        await asyncio.sleep(3)
        node.spawn()
        node.wait_ready(30)
        before = await firings(nc)
        await asyncio.sleep(4)
        elapsed = time.monotonic() - started
        after = await firings(nc)
    finally:
        await nc.close()

    assert len(after) == SCHEDULES
    for subject, nexts in after.items():
        assert len(nexts) == len(set(nexts)), f"{subject} fired twice for one time: {sorted(nexts)}"
        assert len(nexts) <= elapsed + 2, (subject, len(nexts), elapsed)
        assert len(nexts) >= len(before[subject]) + 2, f"{subject} stopped firing after the faults"
