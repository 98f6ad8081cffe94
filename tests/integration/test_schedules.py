"""The schedules adapter (``_nats/schedules.py``) and the command stream's upgrade for it,
against a real nats-server: a schedule fires onto its agent's partition, a cancel stops it,
a re-publish replaces it, the list shows what is held; an ``AGT_CMD`` made before reminders
(holding a command) gets the schedule subjects and flags, and no partition consumer ever
takes a schedule."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import nats
import orjson
import pytest
from nats.aio.client import Client as NATS

from jetagents import Client, Host, NatsServer, Registry
from jetagents._core.errors import InvalidParams, Unavailable
from jetagents._core.ids import partition_of
from jetagents._core.schedules import pattern_of
from jetagents._core.wire import Subjects
from jetagents._nats.api import Topology, ensure_topology, js_api
from jetagents._nats.schedules import NatsSchedules
from jetagents.examples import EXAMPLE_AGENTS
from tests.conftest import host_settings
from tests.integration.helpers import eventually

PARTITIONS = 8
SUBJECTS = Subjects("agt")
TOPO = Topology(SUBJECTS, partitions=PARTITIONS)


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    conn = await nats.connect(nats_server.url)
    try:
        yield conn
    finally:
        await conn.close()


async def subject_counts(nc: NATS) -> dict[str, int]:
    info = await js_api(nc, "$JS.API.STREAM.INFO.AGT_CMD", {"subjects_filter": ">"}, 5)
    out: dict[str, int] = info["state"].get("subjects") or {}
    return out


async def wait_for(nc: NATS, cond: Any, timeout_s: float = 20) -> dict[str, int]:
    """Poll the stream's subject counts until ``cond(counts)``; the last counts."""
    end = time.monotonic() + timeout_s
    got = await subject_counts(nc)
    while not cond(got) and time.monotonic() < end:
        await asyncio.sleep(0.1)
        got = await subject_counts(nc)
    return got


def fired_on(agent_type: str, agent_id: str) -> str:
    return f"agt.p.{partition_of(agent_type, agent_id, PARTITIONS)}.{agent_type}.{agent_id}"


async def test_an_old_command_stream_is_upgraded_in_place_keeping_its_commands(nc: NATS) -> None:
    old = {k: v for k, v in TOPO.stream_configs()[0].items() if k not in ("allow_msg_schedules", "allow_msg_ttl")}
    old["subjects"] = ["agt.cmd.*.*"]
    old["allow_rollup_hdrs"] = False
    created = await js_api(nc, "$JS.API.STREAM.CREATE.AGT_CMD", old, 5)
    assert not created["config"].get("allow_msg_schedules")
    await nc.request("agt.cmd.counter.waiting", b'{"action":"increment"}', timeout=5)
    schedules = NatsSchedules(nc, "AGT_CMD", 5)
    with pytest.raises(Unavailable):  # no stream takes agt.rem yet
        await schedules.schedule_at("agt.rem.t.a.x", 0, "agt.cmd.t.a", b"{}")

    await ensure_topology(nc, TOPO, 5)
    info = await js_api(nc, "$JS.API.STREAM.INFO.AGT_CMD", None, 5)
    cfg = info["config"]
    assert cfg["subjects"] == ["agt.cmd.*.*", "agt.rem.*.*.*"]
    assert cfg["allow_msg_schedules"] and cfg["allow_msg_ttl"] and cfg["allow_rollup_hdrs"]
    assert cfg["subject_transform"] == old["subject_transform"] and cfg["retention"] == "workqueue"
    assert await subject_counts(nc) == {fired_on("counter", "waiting"): 1}
    assert created["created"] == info["created"]  # the same stream: command ids stay its own
    await ensure_topology(nc, TOPO, 5)  # nothing more to do the second time
    ack = await schedules.schedule_at("agt.rem.t.a.x", 0, "agt.cmd.t.a", b"{}")
    assert ack.seq > 1
    assert (await wait_for(nc, lambda c: fired_on("t", "a") in c)).get(fired_on("t", "a")) == 1


async def test_schedule_fire_replace_list_and_cancel(nc: NATS) -> None:
    await ensure_topology(nc, TOPO, 5)
    sch = NatsSchedules(nc, "AGT_CMD", 5)
    target = SUBJECTS.cmd("t", "b")
    tick = SUBJECTS.rem("t", "b", "tick")
    body = orjson.dumps({"action": "increment", "params": {}})
    first = await sch.schedule(tick, pattern_of(every=1), target, body, headers={"Agt-Reminder": "tick"}, msg_id="m#1")
    again = await sch.schedule(tick, pattern_of(every=1), target, body, headers={"Agt-Reminder": "tick"}, msg_id="m#1")
    assert again.duplicate and again.seq == first.seq
    later = SUBJECTS.rem("t", "b", "later")
    await sch.schedule(later, pattern_of(cron="0 0 9 * *", tz="Europe/Paris"), target, b"{}")

    listed = {s.subject: s for s in await sch.list(SUBJECTS.rem_of("t", "b"))}
    assert set(listed) == {tick, later}
    assert listed[tick].pattern == "@every 1s" and listed[tick].target == target and listed[tick].body == body
    assert listed[tick].headers == {"Agt-Reminder": "tick"} and listed[tick].tz is None
    assert listed[later].pattern == "0 0 0 9 * *" and listed[later].tz == "Europe/Paris"

    fired = fired_on("t", "b")
    assert (await wait_for(nc, lambda c: c.get(fired, 0) >= 2)).get(fired, 0) >= 2
    await sch.cancel(tick)
    assert await sch.get(tick) is None
    n = (await subject_counts(nc)).get(fired, 0)
    await asyncio.sleep(2.5)  # a cancelled @every 1s would fire twice in this time
    assert (await subject_counts(nc)).get(fired, 0) == n
    # the cancel's tombstone expires: only the cron schedule is left
    assert (await wait_for(nc, lambda c: tick not in c)).get(tick) is None
    await sch.cancel(SUBJECTS.rem("t", "b", "never-made"))  # idempotent

    # replace: the second @at on the subject is the only one that fires
    at = SUBJECTS.rem("t", "b", "once")
    soon_ms = int(time.time() * 1000) + 1500
    await sch.schedule_at(at, soon_ms, target, b"v1")
    await sch.schedule_at(at, soon_ms, target, b"v2")
    got = await wait_for(nc, lambda c: c.get(fired, 0) > n)
    await asyncio.sleep(1.0)
    assert (await subject_counts(nc)).get(fired, 0) == got[fired] == n + 1

    with pytest.raises(InvalidParams):
        await sch.schedule(at, pattern_of(every=1), "elsewhere.x", b"")  # target outside the stream
    with pytest.raises(InvalidParams):
        await sch.schedule(at, pattern_of(every=1), target, b"", headers={"Agt-Command-Id": "all"})


async def test_no_partition_consumer_takes_a_schedule(nats_server: NatsServer, client: Client) -> None:
    async with Host(host_settings(nats_server.url, partitions=PARTITIONS), Registry(EXAMPLE_AGENTS)) as host:
        sch = host.schedules
        far = int(time.time() * 1000) + 3_600_000
        subject = SUBJECTS.rem("counter", "c1", "later")
        await sch.schedule_at(subject, far, SUBJECTS.cmd("counter", "c1"), b'{"action":"increment"}')
        for _ in range(3):
            await client.agent("counter", "c1").send("increment", {})
        ref = client.agent("counter", "c1")

        async def applied() -> bool:  # a call is not queued behind durable commands: poll
            return bool(await ref.request("get", delivery="at-most-once") == 3)

        await eventually(applied, timeout_s=20)
        held = await sch.get(subject)
        assert held is not None and held.pattern.startswith("@at ")
        nc = host.nc
        # the third increment's +ACK goes after its reply: the stream may hold it a moment
        counts = await wait_for(nc, lambda c: c == {subject: 1})
        assert counts == {subject: 1}
