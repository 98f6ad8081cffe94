"""Streamed output with a real nats-server and an in-process host (ADR 0042 section 6): chunks in
order then the result, an error end, a step re-run in place preceded by a ``reset``, a reader
that loses its connection and resumes exactly once, the TTLs. The bare reader (nats-py only)
and the host kill are ``test_streaming_bare.py`` and ``tests/chaos/test_stream_kill.py``."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest

from jetagents import Client, ClientSettings, DomainError, Host, InvalidParams, NatsServer, Registry, StreamReset
from jetagents._nats.api import js_api
from jetagents.testing.server import NatsCluster
from tests.conftest import host_settings
from tests.integration.helpers import commits, eventually, read_all
from tests.integration.test_asyncapi import _check_message as check_message
from tests.stream_agents import AGENTS, Writer


def expected(intro: int, words: int, outro: int, pid: int) -> list[Any]:
    return (
        [f"intro {k}" for k in range(intro)]
        + [{"n": k, "pid": pid} for k in range(words)]
        + [{"outro": k} for k in range(outro)]
    )


@pytest.fixture(autouse=True)
def _code() -> Iterator[None]:
    yield
    Writer.FAIL_AT = None


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[Client]:
    async with Host(host_settings(nats_server.url), Registry(AGENTS)):
        c = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
        try:
            yield c
        finally:
            await c.close()


async def test_chunks_arrive_in_order_then_the_result(client: Client) -> None:
    stream = client.agent("writer", "w1").stream("tell", {"intro": 3, "words": 4, "outro": 2}, command_id="t1")
    items = [item async for item in stream]
    assert items == expected(3, 4, 2, os.getpid()) == stream.chunks
    assert stream.result == 9 and stream.done and stream.next_chunk == 9
    stored = await read_all(client.nc, "AGT_OUT", "agt.out.writer.w1.t1")
    kinds = [(h["Agt-Stream-Kind"], h.get("Agt-Chunk"), h.get("Agt-Step"), h["Nats-TTL"]) for _, _, h, _ in stored]
    # outside the step, inside it (Agt-Step 0: a message never mixes them), outside again, the end
    assert kinds == [
        ("chunk", "0", None, "600s"),
        ("chunk", "3", "0", "600s"),
        ("chunk", "7", None, "600s"),
        ("end", None, None, "604800s"),
    ]
    assert [h["Nats-Msg-Id"] for _, _, h, _ in stored] == [f"writer.w1:t1@{i}" for i in (0, 3, 7)] + [
        "writer.w1:t1@end"
    ]
    assert orjson.loads(stored[-1][3]) == {"ok": True, "result": 9} and stream.offset == stored[-1][0]
    for _, _, headers, data in stored:  # as docs/asyncapi.yaml describes them, closed
        check_message("StreamMessage", headers, orjson.loads(data))
    # the step's journal entry records the cursor after its chunks
    assert [c["j"].get("c") for c in await commits(client.nc, "writer", "w1")] == [7, None]
    # read again from the start: the same chunks and result
    again = client.agent("writer", "w1").read_stream("t1")
    assert [item async for item in again] == items and again.result == 9


async def test_an_error_ends_the_stream_with_the_typed_error(client: Client) -> None:
    stream = client.agent("writer", "w2").stream("tell", {"intro": 2, "fail": True})
    got: list[Any] = []
    with pytest.raises(DomainError, match="refuses"):
        async for item in stream:
            got.append(item)
    assert got == ["intro 0", "intro 1"]
    with pytest.raises(DomainError):
        _ = stream.result


async def test_a_command_without_stream_header_streams_nothing(client: Client) -> None:
    assert await client.agent("writer", "w3").request("tell", {"intro": 2}, command_id="plain") == 2
    assert await read_all(client.nc, "AGT_OUT", "agt.out.writer.w3.plain") == []


async def test_a_step_run_again_is_preceded_by_a_reset(client: Client) -> None:
    """The step streams two words and fails; the retry in place runs it again: the reader gets
    the two words, a reset to chunk 3 (where the step began), then the step's words again."""
    Writer.FAIL_AT = 2
    stream = client.agent("writer", "w4").stream("tell", {"intro": 3, "words": 4, "outro": 1}, command_id="t4")
    items = [item async for item in stream]
    first_try = expected(3, 2, 0, os.getpid())
    reset_at = items.index(StreamReset(from_chunk=3, step=0))
    assert items[:reset_at] == first_try
    assert items[reset_at + 1 :] == expected(3, 4, 1, os.getpid())[3:]
    assert stream.chunks == expected(3, 4, 1, os.getpid()) and stream.result == 8
    stored = await read_all(client.nc, "AGT_OUT", "agt.out.writer.w4.t4")
    kinds = [h["Agt-Stream-Kind"] for _, _, h, _ in stored]
    assert kinds.count("reset") == 1 and kinds[-1] == "end"
    for _, _, headers, data in stored:
        check_message("StreamMessage", headers, orjson.loads(data))
    # the intro was stored once: the retry did not publish it again
    intro = [orjson.loads(d) for _, _, h, d in stored if h["Agt-Stream-Kind"] == "chunk" and h["Agt-Chunk"] == "0"]
    assert intro == [["intro 0", "intro 1", "intro 2"]]
    # after the reset the message ids carry its sequence (the void ones had the same indices)
    reset_seq = next(seq for seq, _, h, _ in stored if h["Agt-Stream-Kind"] == "reset")
    after = [h["Nats-Msg-Id"] for seq, _, h, _ in stored if seq > reset_seq and h["Agt-Stream-Kind"] == "chunk"]
    assert after and all(m.endswith(f"~{reset_seq}") for m in after)


async def test_a_suspended_action_streams_on_when_it_resumes(client: Client) -> None:
    """The run that suspends on a signal lets its chunks land and sends no end; the run the
    signal resumes (from the journal, ``j.out`` on its first entry) streams on, then ends."""
    ref = client.agent("writer", "w7")
    stream = ref.stream("converse", command_id="t7", timeout=30)
    assert await stream.__anext__() == "before"

    async def suspended() -> bool:
        return any(c.get("j", {}).get("k") == "wait" for c in await commits(client.nc, "writer", "w7"))

    await eventually(suspended, 15, 0.05)
    await ref.signal("go", "yes")
    assert [item async for item in stream] == ["after yes"] and stream.result == "done"
    assert stream.chunks == ["before", "after yes"]
    kinds = [h["Agt-Stream-Kind"] for _, _, h, _ in await read_all(client.nc, "AGT_OUT", "agt.out.writer.w7.t7")]
    assert kinds == ["chunk", "chunk", "end"]  # the re-run did not publish "before" again


async def test_a_reader_that_loses_its_connection_resumes_exactly_once(nats_server: NatsServer) -> None:
    url = nats_server.url
    async with Host(host_settings(url, out_flush_ms=5), Registry(AGENTS)):
        first = await Client.connect(settings=ClientSettings(nats_url=url, partitions=8))
        stream = first.agent("writer", "w5").stream("tell", {"intro": 150, "words": 0, "pace_s": 0.004})
        got: list[Any] = []
        async for item in stream:
            got.append(item)
            if len(got) == 40:
                break
        await first.nc.close()  # the connection is gone, mid-stream, mid-message perhaps
        assert not stream.done
        second = await Client.connect(settings=ClientSettings(nats_url=url, partitions=8))
        try:
            rest = second.agent("writer", "w5").read_stream(
                stream.command_id, after=stream.offset, next_chunk=stream.next_chunk
            )
            got += [item async for item in rest]
            assert got == expected(150, 0, 0, 0) and rest.result == 150
            stored = await read_all(second.nc, "AGT_OUT", f"agt.out.writer.w5.{stream.command_id}")
            assert len(stored) > 3  # many messages: the resume point fell inside the stream
        finally:
            await second.close()


async def test_the_ttls_are_honoured(nats_server: NatsServer) -> None:
    """Chunks live ``out_chunk_ttl_s``, the end ``out_result_ttl_s``, which is also the
    stream's ``max_age`` when a host creates it."""
    url = nats_server.url
    async with Host(host_settings(url, out_chunk_ttl_s=1, out_result_ttl_s=4), Registry(AGENTS)):
        client = await Client.connect(settings=ClientSettings(nats_url=url, partitions=8))
        try:
            info = await js_api(client.nc, "$JS.API.STREAM.INFO.AGT_OUT", None, 5)
            assert info["config"]["max_age"] == 4 * 10**9 and info["config"]["allow_msg_ttl"]
            stream = client.agent("writer", "w6").stream("tell", {"intro": 3}, command_id="t6")
            assert [item async for item in stream] == expected(3, 0, 0, 0)
            subject = "agt.out.writer.w6.t6"

            async def kinds() -> list[str]:
                return [h["Agt-Stream-Kind"] for _, _, h, _ in await read_all(client.nc, "AGT_OUT", subject)]

            async def chunks_gone() -> bool:
                return await kinds() == ["end"]

            await eventually(chunks_gone, 15, 0.1)
            late = client.agent("writer", "w6").read_stream("t6")  # a late reader still gets the result
            assert [item async for item in late] == [] and late.result == 3

            async def all_gone() -> bool:
                return await kinds() == []

            await eventually(all_gone, 20, 0.2)
        finally:
            await client.close()


async def test_a_refused_command_ends_its_stream_with_the_error(client: Client) -> None:
    """Refused before its action ran (bad parameters): the reader still gets an end."""
    stream = client.agent("writer", "w8").stream("tell", {"intro": "three"})
    with pytest.raises(InvalidParams):
        [item async for item in stream]


async def test_a_stream_on_a_three_node_cluster(nats_cluster: NatsCluster) -> None:
    """R3 ``AGT_OUT``: direct gets are answered by any replica, a follower may lag behind the
    message a subscriber saw; the reader polls on and gets every chunk once, in order."""
    async with Host(host_settings(nats_cluster.url, replicas=3, out_flush_ms=2), Registry(AGENTS)):
        # the reader on another node than the host's first
        reader = await Client.connect(settings=ClientSettings(nats_url=nats_cluster.urls[2], partitions=8))
        try:
            info = await js_api(reader.nc, "$JS.API.STREAM.INFO.AGT_OUT", None, 5)
            assert info["config"]["num_replicas"] == 3
            stream = reader.agent("writer", "r3").stream("tell", {"intro": 60, "pace_s": 0.003}, timeout=30)
            assert [item async for item in stream] == expected(60, 0, 0, 0) and stream.result == 60
        finally:
            await reader.close()
