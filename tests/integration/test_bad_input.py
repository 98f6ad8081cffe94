"""Bad input: a clear error, a dead letter, no redelivery loop, the agent untouched."""

from __future__ import annotations

import asyncio
from typing import Any

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
    UnknownAction,
    UnknownAgent,
    UnknownAgentType,
    action,
    applies,
    partition_of,
)
from jetagents._client import _decode_reply
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
        _decode_reply(reply)
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
        _decode_reply(reply)
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
                _decode_reply(reply)
            dls = await dead_letters(client.nc)
            assert [d["error"]["code"] for d in dls] == ["payload_too_large"]
            assert await client.agent("counter", "big").request("get") == 0
    finally:
        await client.close()


async def test_bad_headers(host: Host, client: Client) -> None:
    reply = await _publish_raw(client, "agt.cmd.counter.hdr", b'{"action": "increment"}', {"Agt-Command-Id": "x" * 300})
    with pytest.raises(MalformedCommand):
        _decode_reply(reply)
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
    async def put(self, size: int) -> int:
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
            with pytest.raises(PayloadTooLarge):
                await ref.request("put", {"size": 3 * 1024 * 1024}, timeout=15)
            assert [d["error"]["code"] for d in await dead_letters(client.nc)] == ["payload_too_large"]
            assert await ref.request("put", {"size": 10}) == 10  # the agent is not blocked
    finally:
        await client.close()
