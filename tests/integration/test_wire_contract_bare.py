"""The wire contract, exercised the way a non-Python client would: bare nats-py only.

Everything below follows ``docs/wire-contract.md``: subjects, headers, bodies, the partition
function (written again here, from the document), the event-log and dead-letter formats. No
jetagents code is used to talk to the agents; only the ``nats_server`` and ``host`` fixtures
from ``tests/conftest.py`` start a real server and a real host (8 partitions, the example
agents). The last test checks the documents against the header names in the code.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
import yaml
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

DOCS = Path(__file__).resolve().parents[2] / "docs"
PARTITIONS = 8  # tests/conftest.py: host_settings(partitions=8)
COMMIT_KEYS = {"n", "cmd", "action", "events", "result", "cseq", "ts_ms", "own"}
DEAD_LETTER_KEYS = {
    "error",
    "subject",
    "headers",
    "payload",
    "payload_encoding",
    "stream_seq",
    "deliveries",
    "host",
    "ts_ms",
    "payload_bytes",
    "payload_sha256",
    "truncated",
}


# -- the partition function, from the document ---------------------------------------------
def fnv1a_32(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def partition(agent_type: str, agent_id: str, partitions: int) -> int:
    return fnv1a_32((agent_type + agent_id).encode("ascii")) % partitions


@pytest.mark.parametrize(("agent_id", "expected"), [("c1", 3), ("c2", 6), ("c3", 1), ("a1", 5)])
def test_partition_function_matches_documented_vectors(agent_id: str, expected: int) -> None:
    assert partition("counter", agent_id, 8) == expected


def test_fnv1a_reference_values() -> None:
    # published FNV-1a 32-bit test values
    assert fnv1a_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"a") == 0xE40C292C
    assert fnv1a_32(b"foobar") == 0xBF9CF968


# -- helpers -------------------------------------------------------------------------------
@pytest.fixture
async def nc(nats_server: Any, host: Any) -> AsyncIterator[NATS]:
    """A plain connection; ``host`` is requested so a host is serving the agents."""
    conn = await nats.connect(nats_server.url)
    try:
        yield conn
    finally:
        await conn.close()


async def call(nc: NATS, agent_type: str, agent_id: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    msg = await nc.request(f"agt.call.{agent_type}.{agent_id}", orjson.dumps(body), timeout=5, headers=headers)
    return msg


async def js_api(nc: NATS, subject: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    msg = await nc.request(subject, orjson.dumps(payload) if payload is not None else b"", timeout=5)
    resp: dict[str, Any] = orjson.loads(msg.data)
    assert "error" not in resp, resp
    return resp


async def wait_for(pred: Any, timeout_s: float = 10.0) -> Any:
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                result = await pred()
            except NotFoundError:
                result = None
            if result:
                return result
            await asyncio.sleep(0.05)


# -- (a) at-most-once call -----------------------------------------------------------------
async def test_call_increment_returns_result(nc: NATS) -> None:
    msg = await call(nc, "counter", "bare-a", {"action": "increment", "params": {"by": 3}})
    assert orjson.loads(msg.data) == {"ok": True, "result": 3}
    # a state change: the reply names the commit it wrote
    assert msg.headers is not None and msg.headers["Agt-Event-Seq"].isdigit()
    assert "Agt-Duplicate" not in msg.headers

    msg = await call(nc, "counter", "bare-a", {"action": "get"})
    assert orjson.loads(msg.data) == {"ok": True, "result": 3}
    assert "Agt-Event-Seq" not in (msg.headers or {})  # read-only: nothing written

    # a call with a command id is answered from the record the second time
    hdrs = {"Agt-Command-Id": "bare-a-inc-2"}
    first = await call(nc, "counter", "bare-a", {"action": "increment", "params": {"by": 2}}, hdrs)
    again = await call(nc, "counter", "bare-a", {"action": "increment", "params": {"by": 2}}, hdrs)
    assert orjson.loads(first.data) == orjson.loads(again.data) == {"ok": True, "result": 5}
    assert again.headers is not None and first.headers is not None
    assert again.headers["Agt-Duplicate"] == "true"
    assert again.headers["Agt-Event-Seq"] == first.headers["Agt-Event-Seq"]
    # a call's reply comes back on the caller's own reply subject: no command id echoed
    assert "Agt-Command-Id" not in again.headers
    assert orjson.loads((await call(nc, "counter", "bare-a", {"action": "get"})).data)["result"] == 5


async def test_call_domain_refusal_and_deadline(nc: NATS) -> None:
    msg = await call(nc, "counter", "bare-a2", {"action": "increment", "params": {"by": 0}})
    body = orjson.loads(msg.data)
    assert body["ok"] is False
    assert body["error"]["code"] == "domain"
    assert body["error"]["reason"] == "zero_increment"
    assert body["error"]["retryable"] is False

    past = str(int(time.time() * 1000) - 1000)
    msg = await call(nc, "counter", "bare-a2", {"action": "increment"}, {"Agt-Deadline": past})
    assert orjson.loads(msg.data)["error"]["code"] == "deadline_exceeded"
    assert orjson.loads((await call(nc, "counter", "bare-a2", {"action": "get"})).data) == {"ok": True, "result": 0}


# -- (b) exactly-once durable command ------------------------------------------------------
async def test_durable_exactly_once_with_reply_and_duplicate(nc: NATS) -> None:
    js = nc.jetstream()
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    body = orjson.dumps({"action": "increment", "params": {"by": 1}})
    hdrs = {"Nats-Msg-Id": "bare-b-cmd-1", "Agt-Reply-To": inbox}

    ack = await js.publish("agt.cmd.counter.bare-b", body, headers=hdrs)
    assert ack.stream == "AGT_CMD"
    assert not ack.duplicate
    reply = await sub.next_msg(timeout=10)
    assert orjson.loads(reply.data) == {"ok": True, "result": 1}
    assert reply.headers is not None
    # without Agt-Command-Id the host takes Nats-Msg-Id as the command id
    assert reply.headers["Agt-Command-Id"] == "bare-b-cmd-1"
    event_seq = reply.headers["Agt-Event-Seq"]

    # the same Nats-Msg-Id again: stored once, no second run, no second reply
    ack2 = await js.publish("agt.cmd.counter.bare-b", body, headers=hdrs)
    assert ack2.duplicate is True
    assert ack2.seq == ack.seq
    with pytest.raises(nats.errors.TimeoutError):
        await sub.next_msg(timeout=1.0)
    msg = await call(nc, "counter", "bare-b", {"action": "get"})
    assert orjson.loads(msg.data) == {"ok": True, "result": 1}

    # asking again for the answer: same command id, new stream id -> answered from the record
    hdrs3 = {"Nats-Msg-Id": "bare-b-cmd-1.retry", "Agt-Command-Id": "bare-b-cmd-1", "Agt-Reply-To": inbox}
    ack3 = await js.publish("agt.cmd.counter.bare-b", body, headers=hdrs3)
    assert not ack3.duplicate
    reply3 = await sub.next_msg(timeout=10)
    assert orjson.loads(reply3.data) == {"ok": True, "result": 1}
    assert reply3.headers is not None
    assert reply3.headers["Agt-Duplicate"] == "true"
    assert reply3.headers["Agt-Event-Seq"] == event_seq
    msg = await call(nc, "counter", "bare-b", {"action": "get"})
    assert orjson.loads(msg.data) == {"ok": True, "result": 1}

    # the event log holds exactly one commit for the agent
    last = await js.get_last_msg("AGT_EVT", "agt.evt.counter.bare-b")
    assert str(last.seq) == event_seq
    assert orjson.loads(last.data)["n"] == 1
    await sub.unsubscribe()


# -- (c) bad input: error reply and dead letter --------------------------------------------
async def test_unknown_action_is_answered_and_dead_lettered(nc: NATS) -> None:
    js = nc.jetstream()
    # as a call
    msg = await call(nc, "counter", "bare-c", {"action": "nope"})
    body = orjson.loads(msg.data)
    assert body["ok"] is False
    err = body["error"]
    assert err["code"] == "unknown_action"
    assert err["retryable"] is False
    assert isinstance(err["message"], str) and err["message"]
    assert err["details"] == {"actions": ["get", "increment"]}
    assert msg.headers is not None and msg.headers.get("Agt-Host")

    async def dead_letter_of_call() -> Any:
        m = await js.get_last_msg("AGT_DLQ", "agt.dlq.counter.bare-c")
        return m

    dl_msg = await wait_for(dead_letter_of_call)
    dl = orjson.loads(dl_msg.data)
    assert set(dl) == DEAD_LETTER_KEYS
    assert dl["error"] == err
    assert dl["subject"] == "agt.call.counter.bare-c"
    assert orjson.loads(dl["payload"]) == {"action": "nope"}
    assert dl["payload_encoding"] == "utf8"
    assert dl["stream_seq"] is None and dl["deliveries"] is None

    # as a durable command: the dead letter also records where it was stored
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    ack = await js.publish(
        "agt.cmd.counter.bare-c2",
        b'{"action":"nope","params":{}}',
        headers={"Nats-Msg-Id": "bare-c2-1", "Agt-Reply-To": inbox},
    )
    reply = await sub.next_msg(timeout=10)
    assert orjson.loads(reply.data)["error"]["code"] == "unknown_action"

    async def dead_letter_of_command() -> Any:
        return await js.get_last_msg("AGT_DLQ", "agt.dlq.counter.bare-c2")

    dl = orjson.loads((await wait_for(dead_letter_of_command)).data)
    assert dl["subject"] == f"agt.p.{partition('counter', 'bare-c2', PARTITIONS)}.counter.bare-c2"
    assert dl["stream_seq"] == ack.seq
    assert dl["deliveries"] == 1
    assert dl["headers"]["Nats-Msg-Id"] == "bare-c2-1"

    # terminated, not redelivered: the work-queue stream drops it
    async def cmd_stream_empty() -> bool:
        info = await js.stream_info("AGT_CMD")
        return info.state.messages == 0

    await wait_for(cmd_stream_empty)
    await sub.unsubscribe()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", "malformed"),
        (b'{"action":"get","extra":1}', "malformed"),
        (b'{"action":"increment","params":{"by":"x"}}', "invalid_params"),
        (b'{"action":"increment","params":{"step":1}}', "invalid_params"),
    ],
)
async def test_bad_bodies_get_documented_codes(nc: NATS, body: bytes, code: str) -> None:
    msg = await nc.request("agt.call.counter.bare-bad", body, timeout=5)
    reply = orjson.loads(msg.data)
    assert reply["ok"] is False
    assert reply["error"]["code"] == code
    assert reply["error"]["retryable"] is False


async def test_payload_limit_checked_before_parsing(nc: NATS) -> None:
    # 256 KiB + 1 byte of something that is not even JSON: the size is refused, not the syntax
    msg = await nc.request("agt.call.counter.bare-big", b"x" * (256 * 1024 + 1), timeout=5)
    assert orjson.loads(msg.data)["error"]["code"] == "payload_too_large"


async def test_unknown_type_is_refused(nc: NATS) -> None:
    msg = await call(nc, "no-such-type", "x1", {"action": "get"})
    err = orjson.loads(msg.data)["error"]
    assert err["code"] == "unknown_agent_type"
    assert set(err["details"]["types"]) >= {"counter", "account"}


# -- (d) partitions and the event log ------------------------------------------------------
async def test_stored_subject_is_partitioned_and_commit_format(nc: NATS) -> None:
    js = nc.jetstream()
    ids = ["c1", "c2", "c3", "a1", "bare-d-x", "bare-d-y", "bare-d-z"]
    expected = {i: partition("counter", i, PARTITIONS) for i in ids}
    assert [expected[i] for i in ("c1", "c2", "c3", "a1")] == [3, 6, 1, 5]
    assert len(set(expected.values())) >= 4

    # hold every partition consumer so the commands stay in the (work-queue) stream
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)).isoformat().replace("+00:00", "Z")
    for p in range(PARTITIONS):
        resp = await js_api(nc, f"$JS.API.CONSUMER.PAUSE.AGT_CMD.p{p}", {"pause_until": until})
        assert resp["paused"] is True
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox + ".*")
    acks = {}
    try:
        for i in ids:
            acks[i] = await js.publish(
                f"agt.cmd.counter.{i}",
                orjson.dumps({"action": "increment", "params": {"by": 5}}),
                headers={"Nats-Msg-Id": f"d-{i}", "Agt-Reply-To": f"{inbox}.{i}"},
            )
        for i in ids:
            stored = await js.get_last_msg("AGT_CMD", f"agt.p.{expected[i]}.counter.{i}")
            assert stored.seq == acks[i].seq
            assert stored.subject == f"agt.p.{expected[i]}.counter.{i}"
            assert orjson.loads(stored.data) == {"action": "increment", "params": {"by": 5}}
            assert stored.headers is not None and stored.headers["Nats-Msg-Id"] == f"d-{i}"
            # and under no other partition
            wrong = (expected[i] + 1) % PARTITIONS
            with pytest.raises(NotFoundError):
                await js.get_last_msg("AGT_CMD", f"agt.p.{wrong}.counter.{i}")
    finally:
        for p in range(PARTITIONS):
            await js_api(nc, f"$JS.API.CONSUMER.PAUSE.AGT_CMD.p{p}", {})

    replies = {}
    async with asyncio.timeout(20):
        while len(replies) < len(ids):
            m = await sub.next_msg(timeout=20)
            replies[m.subject.rpartition(".")[2]] = m
    assert all(orjson.loads(m.data) == {"ok": True, "result": 5} for m in replies.values())

    # the event log: one commit per state-changing command, in the documented format
    for i in ids:
        last = await js.get_last_msg("AGT_EVT", f"agt.evt.counter.{i}")
        commit = orjson.loads(last.data)
        assert set(commit) == COMMIT_KEYS
        assert commit["n"] == 1
        assert commit["cmd"] == f"d-{i}"
        assert commit["action"] == "increment"
        assert commit["events"] == [{"type": "Incremented", "data": {"by": 5}}]
        assert commit["result"] == 5
        assert commit["cseq"] == acks[i].seq
        assert abs(commit["ts_ms"] - time.time() * 1000) < 120_000
        assert last.headers is not None
        assert last.headers["Nats-Msg-Id"] == f"counter.{i}:d-{i}"
        assert last.headers["Nats-Expected-Last-Subject-Sequence"] == "0"
        assert last.headers["Agt-Command-Id"] == f"d-{i}"
        assert last.headers["Agt-Host"]
        assert replies[i].headers is not None and replies[i].headers["Agt-Event-Seq"] == str(last.seq)

    # a second commit numbers on and is fenced on the first one's sequence
    first = await js.get_last_msg("AGT_EVT", "agt.evt.counter.c1")
    msg = await call(
        nc,
        "counter",
        "c1",
        {"action": "increment", "params": {"by": -2}},
        {"Agt-Command-Id": "d-c1-2", "Agt-Correlation-Id": "corr-d", "traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"},
    )
    assert orjson.loads(msg.data) == {"ok": True, "result": 3}
    assert msg.headers is not None
    assert msg.headers["Agt-Correlation-Id"] == "corr-d"
    # a call's reply does not echo what the caller sent: its id and an unchanged trace context
    assert "Agt-Command-Id" not in msg.headers and "traceparent" not in msg.headers
    second = await js.get_last_msg("AGT_EVT", "agt.evt.counter.c1")
    commit = orjson.loads(second.data)
    assert commit["n"] == 2
    assert commit["cmd"] == "d-c1-2"
    assert commit["cseq"] == 0  # a call is not in the command stream
    assert second.headers is not None
    assert second.headers["Nats-Expected-Last-Subject-Sequence"] == str(first.seq)
    assert second.headers["Agt-Correlation-Id"] == "corr-d"
    assert second.headers["traceparent"].split("-")[1] == "ab" * 16

    # acknowledged commands leave the work-queue stream
    # (the reply goes out before the acknowledgement: wait for it, do not race it)
    t0 = time.monotonic()
    info = await js.stream_info("AGT_CMD")
    while info.state.messages and time.monotonic() - t0 < 10:
        await asyncio.sleep(0.01)
        info = await js.stream_info("AGT_CMD")
    assert info.state.messages == 0
    await sub.unsubscribe()


# -- (e) documents agree with the code -----------------------------------------------------
def test_documents_name_every_header() -> None:
    from jetagents._core import wire as _wire  # the only jetagents import in this module

    contract = (DOCS / "wire-contract.md").read_text()
    spec = yaml.safe_load((DOCS / "asyncapi.yaml").read_text())
    assert str(spec["asyncapi"]).startswith("3.0")

    headers = {
        value
        for name, value in vars(_wire).items()
        if (name.startswith("H_") or name in ("TRACEPARENT", "TRACESTATE")) and isinstance(value, str)
    }
    assert len(headers) >= 15
    missing = sorted(h for h in headers if f"`{h}`" not in contract)
    assert not missing, f"headers not documented in wire-contract.md: {missing}"

    # every header appears as a property of some message's headers schema in the AsyncAPI doc
    in_spec: set[str] = set()

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            hdrs = node.get("headers")
            if isinstance(hdrs, dict) and isinstance(hdrs.get("properties"), dict):
                in_spec.update(hdrs["properties"])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(spec)
    assert not sorted(headers - in_spec), f"headers missing from asyncapi.yaml: {sorted(headers - in_spec)}"

    # the channels are the documented subjects
    addresses = {ch["address"] for ch in spec["channels"].values() if ch.get("address")}
    assert {
        "agt.cmd.{agentType}.{agentId}",
        "agt.call.{agentType}.{agentId}",
        "agt.evt.{agentType}.{agentId}",
        "agt.dlq.{agentType}.{agentId}",
    } <= addresses

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        if ref is None:
            return node
        out: Any = spec
        for part in ref.removeprefix("#/").split("/"):
            out = out[part]
        return dict(out)

    for ch in spec["channels"].values():
        for name, param in (ch.get("parameters") or {}).items():
            if name in ("agentType", "agentId"):
                assert "[A-Za-z0-9_-]" in resolve(param)["description"]
    token = re.compile(r"^\^?\[A-Za-z0-9_-\]\{1,128\}\$?$")
    assert token.match(spec["components"]["schemas"]["Token"]["pattern"])

    # every error code the library defines is in the contract's table
    def subclasses(cls: type) -> set[type]:
        out = set(cls.__subclasses__())
        for sub in list(out):
            out |= subclasses(sub)
        return out

    codes = {cls.code for cls in subclasses(_wire.JetAgentsError)} - {"jetstream"}  # library-internal
    assert {"unknown_action", "malformed", "domain", "internal", "fenced"} <= codes
    undocumented = sorted(c for c in codes if f"| `{c}` |" not in contract)
    assert not undocumented, f"error codes missing from the table in wire-contract.md: {undocumented}"
