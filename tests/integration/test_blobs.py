"""Payloads by reference with a real nats-server (ADR 0042 section 9): a 5 MiB step result
and a 5 MiB event are stored in ``agt_blobs`` and referenced from the log; they survive a
retry's replay, another host taking the partition, and a snapshot; equal content is written
once; a result too large for a reply is answered ``payload_too_large`` (applied, with its
reference); a missing or corrupted blob is a clear error, never a silently different state."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import ClassVar

import orjson
import pytest
from pydantic import BaseModel

from jetagents import (
    Agent,
    AgentQuarantined,
    Client,
    ClientSettings,
    Event,
    Host,
    InternalError,
    NatsServer,
    PayloadTooLarge,
    Registry,
    action,
    applies,
)
from tests.conftest import host_settings
from tests.integration.helpers import commits

MIB = 1024 * 1024


class BlobState(BaseModel):
    texts: list[str] = []


class Stored(Event):
    text: str


class Blob(Agent[BlobState]):
    type_name = "blob"
    state_type = BlobState
    MADE: ClassVar[int] = 0  # how often the step's function ran, counted outside the journal
    FAIL_ONCE: ClassVar[bool] = False

    @action
    async def build(self, size: int, fill: str) -> int:
        text = await self.step("make", self._make, size, fill)  # a 5 MiB step result
        if type(self).FAIL_ONCE:  # fails after the step: the retry replays it from the journal
            type(self).FAIL_ONCE = False
            raise RuntimeError("fails once after the step (the test says so)")
        self.emit(Stored(text=text))  # a 5 MiB event
        return len(text)

    def _make(self, size: int, fill: str) -> str:
        type(self).MADE += 1
        return fill * size

    @action
    async def big_result(self, size: int) -> str:
        return "y" * size

    @action(read_only=True)
    async def digests(self) -> list[str]:
        return [hashlib.sha256(t.encode()).hexdigest() for t in self.state.texts]

    @applies
    def _stored(self, state: BlobState, event: Stored) -> None:
        state.texts.append(event.text)


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[Client]:
    c = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
    try:
        yield c
    finally:
        await c.close()


def _host(url: str, name: str) -> Host:
    return Host(host_settings(url, host_id=name, snapshot_every=1), Registry([Blob]))


async def _blob_names(client: Client) -> set[str]:
    store = await client.nc.jetstream().object_store("agt_blobs")
    return {info.name for info in await store.list()}


async def test_large_values_go_by_reference_and_survive_replay_takeover_and_snapshot(
    nats_server: NatsServer, client: Client
) -> None:
    a_sha = hashlib.sha256(b"a" * 5 * MIB).hexdigest()
    Blob.MADE, Blob.FAIL_ONCE = 0, True
    host1 = _host(nats_server.url, "blob-h1")
    async with host1:
        assert await client.agent("blob", "x").request("build", {"size": 5 * MIB, "fill": "a"}, command_id="b1") == (
            5 * MIB
        )
        assert Blob.MADE == 1  # the retry took the step's 5 MiB value from its blob, not from running it
        log = await commits(client.nc, "blob", "x")
        step, closing = log[0], log[-1]
        value_ref = step["j"]["value"]
        data_ref = closing["events"][0]["data"]
        assert set(value_ref) == {"$ref", "bytes"} and value_ref["bytes"] == 5 * MIB + 2  # a JSON string
        assert data_ref["$ref"] == "blob.x/sha256:" + hashlib.sha256(orjson.dumps({"text": "a" * 5 * MIB})).hexdigest()
        assert all(len(orjson.dumps(c)) < 4096 for c in log)  # the log itself stays small
        names = await _blob_names(client)
        assert {value_ref["$ref"], data_ref["$ref"]} <= names
        # a second agent with the same values has blobs of its own (ADR 0052: its purge
        # removes them, never another agent's); equal content within an agent is written once
        # (tests/unit/test_blobref.py)
        await client.agent("blob", "y").request("build", {"size": 5 * MIB, "fill": "a"}, command_id="b2")
        y_log = await commits(client.nc, "blob", "y")
        y_refs = {y_log[0]["j"]["value"]["$ref"], y_log[-1]["events"][0]["data"]["$ref"]}
        assert {r.replace("blob.y/", "blob.x/") for r in y_refs} == {value_ref["$ref"], data_ref["$ref"]}
        assert y_refs <= await _blob_names(client)
        assert Blob.MADE == 2

    snap = await (await client.nc.jetstream().key_value("agt_snap")).get("blob.x")
    state_ref = orjson.loads(snap.value)["state"]
    assert state_ref["$ref"] in await _blob_names(client)  # the snapshot's 5 MiB state is a reference too

    # another host takes the partitions: agent x from its snapshot, agent y from its log
    await (await client.nc.jetstream().key_value("agt_snap")).purge("blob.y")
    async with _host(nats_server.url, "blob-h2"):
        assert await client.agent("blob", "x").request("digests") == [a_sha]
        assert await client.agent("blob", "y").request("digests") == [a_sha]
        # a re-sent command id is answered from the record rebuilt from the log
        again = await client.agent("blob", "x").request_reply("build", {"size": 5 * MIB, "fill": "a"}, command_id="b1")
        assert again.duplicate and again.result == 5 * MIB
    assert Blob.MADE == 2


async def test_a_result_too_large_for_a_reply_is_refused_applied_with_its_reference(
    nats_server: NatsServer, client: Client
) -> None:
    async with _host(nats_server.url, "blob-h3"):
        ref = client.agent("blob", "r")
        for _ in range(2):  # the first answer, then the record's (same command id)
            with pytest.raises(PayloadTooLarge) as info:
                await ref.request("big_result", {"size": 5 * MIB}, command_id="big-1", timeout=20)
            details = info.value.details
            assert details["applied"] is True and details["bytes"] == 5 * MIB + 2
        store = await client.nc.jetstream().object_store("agt_blobs")
        blob = (await store.get(details["$ref"])).data
        assert orjson.loads(blob) == "y" * 5 * MIB  # where a client allowed to read agt_blobs finds it


async def test_a_missing_or_corrupted_blob_is_a_clear_error(nats_server: NatsServer, client: Client) -> None:
    async with _host(nats_server.url, "blob-h4"):
        await client.agent("blob", "m").request("build", {"size": 200_000, "fill": "m"}, command_id="m1")
        await client.agent("blob", "c").request("build", {"size": 200_000, "fill": "c"}, command_id="c1")
    store = await client.nc.jetstream().object_store("agt_blobs")
    kv = await client.nc.jetstream().key_value("agt_snap")
    refs: dict[str, str] = {}
    for agent in ("m", "c"):
        await kv.purge(f"blob.{agent}")  # no snapshot: the next host replays the log
        refs[agent] = (await commits(client.nc, "blob", agent))[-1]["events"][0]["data"]["$ref"]
    await store.delete(refs["m"])
    await store.put(refs["c"], orjson.dumps({"text": "not what was written"}))
    async with _host(nats_server.url, "blob-h5"):
        # the activation fails on the missing blob; past its attempts the agent is quarantined
        # (ADR 0053), and either error names the blob and the commit
        missing = r"blob blob\.m/sha256:[0-9a-f]{64} \(named by commit 2 of blob/m\) is missing from agt_blobs"
        with pytest.raises((InternalError, AgentQuarantined), match=missing):
            await client.agent("blob", "m").request("digests", delivery="at-most-once", timeout=8)
        corrupt = r"\(named by commit 2 of blob/c\) does not match its digest"
        with pytest.raises((InternalError, AgentQuarantined), match=corrupt):
            await client.agent("blob", "c").request("digests", timeout=8)
