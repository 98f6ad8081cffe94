"""Bad input: a clear error, a dead letter, no redelivery loop, the agent untouched."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
from typing import Any, Literal

import orjson
import pytest
from pydantic import BaseModel

from jetagents import (
    Agent,
    Client,
    ClientSettings,
    Event,
    Host,
    InternalError,
    InvalidParams,
    MalformedCommand,
    NatsServer,
    PayloadTooLarge,
    Registry,
    Unavailable,
    UnknownAction,
    UnknownAgent,
    UnknownAgentType,
    action,
    applies,
    partition_of,
)
from jetagents._client.reply import decode_reply
from jetagents._nats.api import js_api
from jetagents.examples import EXAMPLE_AGENTS
from tests.conftest import host_settings
from tests.integration.helpers import commits, consumer_info, dead_letters, eventually, stream_state


async def _publish_raw(client: Client, subject: str, data: bytes, headers: dict[str, str] | None = None) -> Any:
    inbox = client.nc.new_inbox()
    sub = await client.nc.subscribe(inbox)
    hdrs = {"Agt-Reply-To": inbox, **(headers or {})}
    await client.nc.jetstream().publish(subject, data, headers=hdrs)
    reply = await sub.next_msg(timeout=10)
    await sub.unsubscribe()
    return reply


async def _no_pending(client: Client) -> None:
    """Every partition consumer is fully acknowledged: nothing waits for redelivery."""

    async def settled() -> bool:
        for p in range(8):
            info = await consumer_info(client.nc, "AGT_CMD", f"p{p}")
            if info["num_ack_pending"] or info["num_redelivered"] or info["num_pending"]:
                return False
        return True

    await eventually(settled, 10)
    assert (await stream_state(client.nc, "AGT_CMD"))["messages"] == 0


@pytest.mark.parametrize(
    ("body", "error", "code"),
    [
        (b"not json at all", MalformedCommand, "malformed"),
        (b"[1, 2, 3]", MalformedCommand, "malformed"),
        (b'{"params": {}}', MalformedCommand, "malformed"),
        (b'{"action": "increment", "params": {}, "extra": 1}', MalformedCommand, "malformed"),
        (b'{"action": "explode"}', UnknownAction, "unknown_action"),
        (b'{"action": "increment", "params": {"by": "ten"}}', InvalidParams, "invalid_params"),
        (b'{"action": "increment", "params": {"by": 1, "extra": true}}', InvalidParams, "invalid_params"),
    ],
)
async def test_bad_durable_command(host: Host, client: Client, body: bytes, error: type, code: str) -> None:
    ref = client.agent("counter", "bad")
    assert await ref.request("increment", {"by": 1}) == 1
    reply = await _publish_raw(client, "agt.cmd.counter.bad", body, {"Agt-Command-Id": "bad-1"})
    with pytest.raises(error):
        decode_reply(reply)
    dls = await dead_letters(client.nc)
    assert len(dls) == 1
    assert dls[0]["error"]["code"] == code
    assert dls[0]["subject"] == f"agt.p.{partition_of('counter', 'bad', 8)}.counter.bad"
    assert dls[0]["payload"] == body.decode()
    assert await ref.request("get") == 1  # untouched
    assert len(await commits(client.nc, "counter", "bad")) == 1
    await _no_pending(client)


async def test_unknown_agent_type(host: Host, client: Client) -> None:
    reply = await _publish_raw(client, "agt.cmd.nosuch.x1", b'{"action": "get"}')
    with pytest.raises(UnknownAgentType):
        decode_reply(reply)
    with pytest.raises(UnknownAgentType):
        await client.agent("nosuch", "x2").request("get", delivery="at-most-once")
    dls = await dead_letters(client.nc)
    assert {d["error"]["code"] for d in dls} == {"unknown_agent_type"}
    assert len(dls) == 2
    await _no_pending(client)


async def test_oversized_payload(nats_server: NatsServer) -> None:
    settings = host_settings(nats_server.url, max_payload_bytes=4096)
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, max_payload_bytes=4096))
    try:
        async with Host(settings, Registry(EXAMPLE_AGENTS)):
            big = {"by": 1, "pad": "x" * 5000}
            with pytest.raises(PayloadTooLarge):  # the client refuses before sending
                await client.agent("counter", "big").request("increment", big)
            # a foreign client that ignores the limit: the stream refuses it (max_msg_size)
            # on publish, and a core call gets an error reply and a dead letter
            body = orjson.dumps({"action": "increment", "params": big}) * 2
            with pytest.raises(Exception, match=r"(?i)size|maximum"):
                await client.nc.jetstream().publish("agt.cmd.counter.big", body)
            reply = await client.nc.request("agt.call.counter.big", body, timeout=5)
            with pytest.raises(PayloadTooLarge):
                decode_reply(reply)
            dls = await dead_letters(client.nc)
            assert [d["error"]["code"] for d in dls] == ["payload_too_large"]
            assert await client.agent("counter", "big").request("get") == 0
    finally:
        await client.close()


async def test_bad_headers(host: Host, client: Client) -> None:
    reply = await _publish_raw(client, "agt.cmd.counter.hdr", b'{"action": "increment"}', {"Agt-Command-Id": "x" * 300})
    with pytest.raises(MalformedCommand):
        decode_reply(reply)
    assert await client.agent("counter", "hdr").request("get") == 0
    await _no_pending(client)


class FlakyState(BaseModel):
    calls: int = 0


class Bumped(Event):
    pass


class Flaky(Agent[FlakyState]):
    """An agent whose ``boom`` action always raises: a bug, not a domain refusal."""

    type_name = "flaky"
    state_type = FlakyState
    attempts: dict[str, int] = {}

    @action
    async def boom(self) -> None:
        Flaky.attempts[self.id.id] = Flaky.attempts.get(self.id.id, 0) + 1
        raise RuntimeError("handler bug")

    @action
    async def bump(self) -> int:
        self.emit(Bumped())
        return self.state.calls

    @applies
    def _bumped(self, state: FlakyState, event: Bumped) -> None:
        state.calls += 1


class Members(Agent[FlakyState]):
    type_name = "member"
    state_type = FlakyState
    spawn_required = True

    @action(read_only=True)
    async def get(self) -> dict[str, Any]:
        return {"calls": self.state.calls, "metadata": self.ctx.metadata}


async def test_failing_handler_retried_then_dead_lettered(nats_server: NatsServer) -> None:
    settings = host_settings(nats_server.url, max_deliver=3)
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url))
    try:
        async with Host(settings, Registry([*EXAMPLE_AGENTS, Flaky])):
            Flaky.attempts.clear()
            with pytest.raises(InternalError, match="handler bug"):
                await client.agent("flaky", "f1").request("boom", timeout=20)
            assert Flaky.attempts["f1"] == 3  # bounded: max_deliver attempts, then dead letter
            dls = await dead_letters(client.nc)
            assert [d["error"]["code"] for d in dls] == ["internal"]
            assert dls[0]["deliveries"] == 1  # retried in place, not redelivered
            # the agent still works and its state is intact
            assert await client.agent("flaky", "f1").request("bump") == 1
            await asyncio.sleep(0.5)
            assert Flaky.attempts["f1"] == 3
            # at-most-once: no retry at all, the error comes back at once
            with pytest.raises(InternalError):
                await client.agent("flaky", "f2").request("boom", delivery="at-most-once")
            assert Flaky.attempts["f2"] == 1
    finally:
        await client.close()


async def test_spawn_required_type(nats_server: NatsServer) -> None:
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url))
    try:
        async with Host(host_settings(nats_server.url), Registry([Members])):
            with pytest.raises(UnknownAgent):
                await client.agent("member", "m1").request("get")
            await client.spawn("member", "m2", {"team": "blue"})
            assert await client.agent("member", "m2").request("get") == {"calls": 0, "metadata": {"team": "blue"}}
            dls = await dead_letters(client.nc)
            assert [d["error"]["code"] for d in dls] == ["unknown_agent"]
    finally:
        await client.close()


class BlobState(BaseModel):
    size: int = 0


class Blobbed(Event):
    data: str


class Blob(Agent[BlobState]):
    type_name = "blob"
    state_type = BlobState

    @action
    async def put(self, size: int, pieces: int = 1) -> int:
        for _ in range(pieces):
            self.emit(Blobbed(data="x" * size))
        return self.state.size

    @applies
    def _blobbed(self, state: BlobState, event: Blobbed) -> None:
        state.size = len(event.data)


async def test_commit_too_large_is_refused_not_retried_forever(nats_server: NatsServer) -> None:
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url))
    try:
        async with Host(host_settings(nats_server.url), Registry([Blob])):
            ref = client.agent("blob", "b1")
            # each event under payload_ref_threshold_bytes stays in the commit (a single large
            # one would go to agt_blobs by reference, ADR 0042): together they pass the limit
            with pytest.raises(PayloadTooLarge):
                await ref.request("put", {"size": 60_000, "pieces": 60}, timeout=15)
            assert [d["error"]["code"] for d in await dead_letters(client.nc)] == ["payload_too_large"]
            assert await ref.request("put", {"size": 10}) == 10  # the agent is not blocked
    finally:
        await client.close()


async def test_dead_letter_of_a_body_that_escapes_large_fits_and_is_not_redelivered(host: Host, client: Client) -> None:
    # 200,000 bytes of \x01: valid UTF-8, but six bytes each once JSON-escaped (1.2 MB),
    # more than AGT_DLQ takes; it used to be redelivered forever with no reply
    body = b"\x01" * 200_000
    reply = await _publish_raw(client, "agt.cmd.counter.esc", body, {"Nats-Msg-Id": "esc-1"})
    with pytest.raises(MalformedCommand):
        decode_reply(reply)
    assert reply.headers["Agt-Command-Id"] == "esc-1"
    [dl] = await dead_letters(client.nc)
    assert dl["payload_bytes"] == len(body) and dl["truncated"] is False
    assert dl["payload_sha256"] == hashlib.sha256(body).hexdigest()
    assert dl["payload_encoding"] == "base64" and base64.b64decode(dl["payload"]) == body  # kept whole
    await _no_pending(client)
    assert host.stats["dead_letters"] == 1 and host.stats["naks"] == 0


async def test_refusals_of_unroutable_commands_carry_the_command_id(host: Host, client: Client) -> None:
    # only Nats-Msg-Id set: the reply names the command all the same (wire contract §4)
    reply = await _publish_raw(client, "agt.cmd.nosuch.x1", b'{"action": "get"}', {"Nats-Msg-Id": "m-1"})
    with pytest.raises(UnknownAgentType):
        decode_reply(reply)
    assert reply.headers["Agt-Command-Id"] == "m-1"
    # no id at all: the id the host names it by (as for any durable command)
    reply = await _publish_raw(client, "agt.cmd.nosuch.x2", b'{"action": "get"}')
    assert reply.headers["Agt-Command-Id"].startswith("s")
    await _no_pending(client)


async def test_unreadable_snapshot_is_ignored_and_the_log_replayed(host: Host, client: Client) -> None:
    ref = client.agent("counter", "snap")
    assert await ref.request("increment", {"by": 2}) == 2
    assert await ref.request("increment", {"by": 3}) == 5
    kv = await client.nc.jetstream().key_value("agt_snap")
    await kv.put("counter.snap", b"\x00 this is not JSON {")
    host.catalog.evict(host.activations["counter.snap"])  # the next command activates it again
    assert await ref.request("get", timeout=10) == 5
    assert await ref.request("increment", {"by": 1}) == 6
    await _no_pending(client)


async def test_params_are_strict_on_the_wire(host: Host, client: Client) -> None:
    ref = client.agent("counter", "strict")
    for params in ({"by": "3"}, {"by": True}, {"by": 2.0}, {"by": [1]}):
        with pytest.raises(InvalidParams):
            await ref.request("increment", params)
    assert await ref.request("increment", {"by": 3}) == 3  # the Python client sends JSON ints
    assert await ref.request("get") == 3
    assert len(await dead_letters(client.nc)) == 4


async def test_a_huge_integer_is_refused_on_both_paths(host: Host, client: Client) -> None:
    # the fuzzer's finding: a call with a 30-digit int got no reply at all (the re-encode of
    # the params raised past the handler), a durable one was retried as an internal error
    body = b'{"action": "increment", "params": {"by": -' + b"9" * 30 + b"}}"
    reply = await client.nc.request("agt.call.counter.huge", body, timeout=5)
    assert orjson.loads(reply.data)["error"]["code"] == "invalid_params"
    with pytest.raises(InvalidParams):
        await client.agent("counter", "huge").request("increment", {"by": 10**25})
    assert await client.agent("counter", "huge").request("get") == 0


async def test_an_absurd_deadline_is_no_deadline(host: Host, client: Client) -> None:
    # the fuzzer's finding: a 400-digit Agt-Deadline overflowed a float in the host (every
    # delivery failed until "redelivered too often")
    for deadline in ("9" * 400, "1" * 17):
        reply = await client.nc.request(
            "agt.call.counter.late", b'{"action": "get"}', timeout=5, headers={"Agt-Deadline": deadline}
        )
        assert orjson.loads(reply.data) == {"ok": True, "result": 0}
    assert host.stats["retries"] == 0


class When(BaseModel):
    at: datetime.datetime
    tag: Literal["a", "b"]


class Lenient(Agent[FlakyState]):
    """Strict by default, yet JSON's own forms validate: ISO datetimes, arrays as tuples,
    literal strings; ``add_loose`` opts out of strict mode."""

    type_name = "lenient"
    state_type = FlakyState

    @action(read_only=True)
    async def echo(self, when: When, pair: tuple[int, int], day: datetime.date) -> list[Any]:
        return [when.at.isoformat(), when.tag, list(pair), day.isoformat()]

    @action(read_only=True, strict=False)
    async def add_loose(self, a: int, b: int) -> int:
        return a + b


async def test_strict_params_accept_json_forms_and_can_be_opted_out(nats_server: NatsServer) -> None:
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
    try:
        async with Host(host_settings(nats_server.url), Registry([Lenient])):
            ref = client.agent("lenient", "l1")
            params = {"when": {"at": "2026-01-02T03:04:05+00:00", "tag": "a"}, "pair": [1, 2], "day": "2026-01-02"}
            assert await ref.request("echo", params) == ["2026-01-02T03:04:05+00:00", "a", [1, 2], "2026-01-02"]
            with pytest.raises(InvalidParams):
                await ref.request("echo", {**params, "pair": ["1", 2]})
            assert await ref.request("add_loose", {"a": "2", "b": True}) == 3
    finally:
        await client.close()


async def test_dead_letter_is_stored_before_the_answer(host: Host, client: Client) -> None:
    """Without AGT_DLQ the host cannot store a dead letter: a bad call is not answered with
    its bad-input error (the caller could not find its dead letter), and a bad durable
    command is kept until the dead letter can be stored, then answered once."""
    dlq = host.topology.stream_configs()[2]
    await js_api(client.nc, f"$JS.API.STREAM.DELETE.{dlq['name']}", None, 5)
    reply = await client.nc.request("agt.call.counter.d1", b"not json", timeout=10)
    with pytest.raises(Unavailable) as exc:
        decode_reply(reply)
    assert exc.value.details == {"applied": False, "refused": "malformed"}

    inbox = client.nc.new_inbox()
    sub = await client.nc.subscribe(inbox)
    await client.nc.jetstream().publish("agt.cmd.counter.d2", b"not json", headers={"Agt-Reply-To": inbox})
    await eventually(lambda: host.stats["naks"] >= 1, 15)
    assert sub.pending_msgs == 0  # not answered while its dead letter is not stored
    await js_api(client.nc, f"$JS.API.STREAM.CREATE.{dlq['name']}", dlq, 5)
    reply = await sub.next_msg(timeout=15)
    with pytest.raises(MalformedCommand):
        decode_reply(reply)
    assert [d["subject"] for d in await dead_letters(client.nc)] == [
        f"agt.p.{partition_of('counter', 'd2', 8)}.counter.d2"
    ]
    await _no_pending(client)


async def test_malformed_migrate_request_is_a_typed_refusal(host: Host, client: Client) -> None:
    subject = f"agt.sys.host.{host.settings.host_id}.migrate"
    for body in (
        b"not json",
        b"[1]",
        b'{"type": "counter", "id": "c1"}',
        b'{"type": "counter", "id": "c1", "target": 5}',
    ):
        reply = await client.nc.request(subject, body, timeout=10)
        with pytest.raises(MalformedCommand) as exc:
            decode_reply(reply)
        assert "Error(" not in exc.value.message and "'" not in exc.value.message
