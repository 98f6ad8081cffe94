"""A stream read with nats-py alone, from the wire contract (docs/wire-contract.md, "Streams"):
no jetagents import on the reading (or sending) side. The host is jetagents, in process."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from jetagents import Host, NatsServer, Registry
from tests.conftest import host_settings
from tests.stream_agents import AGENTS


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    async with Host(host_settings(nats_server.url), Registry(AGENTS)):
        conn = await nats.connect(nats_server.url)
        try:
            yield conn
        finally:
            await conn.close()


# -- the reader: only what the wire contract says ----------------------------------------------
Stored = list[tuple[int, str, Any]]


async def read_stream(conn: NATS, subject: str, after_seq: int = 0, timeout_s: float = 15) -> Stored:
    """Every message of ``subject`` after ``after_seq`` up to its end: (sequence, kind, body).

    Direct get ``{"seq": s, "next_by_subj": subject}`` on ``$JS.API.DIRECT.GET.AGT_OUT``;
    ``Status: 404`` means nothing yet: ask again (the contract: poll, or wake on the subject)."""
    out: Stored = []
    seq = after_seq + 1
    async with asyncio.timeout(timeout_s):
        while True:
            req = json.dumps({"seq": seq, "next_by_subj": subject}).encode()
            msg = await conn.request("$JS.API.DIRECT.GET.AGT_OUT", req, timeout=5)
            headers = msg.headers or {}
            if headers.get("Status") == "404":
                await asyncio.sleep(0.05)
                continue
            stored = int(headers["Nats-Sequence"])
            kind = headers["Agt-Stream-Kind"]
            out.append((stored, kind, json.loads(msg.data)))
            if kind == "end":
                return out
            seq = stored + 1


def output(messages: Stored) -> list[Any]:
    """The chunks as they stand: a reset drops those from its ``from_chunk`` on."""
    chunks: list[Any] = []
    for _, kind, body in messages:
        if kind == "chunk":
            chunks.extend(body)
        elif kind == "reset":
            del chunks[body["from_chunk"] :]
    return chunks


async def test_a_bare_reader_reads_a_stream_and_its_end(nc: NATS) -> None:
    subject = "agt.out.writer.bare1.m-1"
    reading = asyncio.create_task(read_stream(nc, subject))  # reading may start before the command
    ack = await nc.request(
        "agt.cmd.writer.bare1",
        json.dumps({"action": "tell", "params": {"intro": 4, "outro": 2}}).encode(),
        timeout=5,
        headers={"Agt-Command-Id": "m-1", "Nats-Msg-Id": "m-1", "Agt-Stream": "1"},
    )
    assert json.loads(ack.data)["stream"] == "AGT_CMD"
    messages = await reading
    assert output(messages) == ["intro 0", "intro 1", "intro 2", "intro 3", {"outro": 0}, {"outro": 1}]
    assert messages[-1][1:] == ("end", {"ok": True, "result": 6})
    # resuming after any message gives the rest, in order, and nothing before it
    for i, (seq, _, _) in enumerate(messages[:-1]):
        assert await read_stream(nc, subject, after_seq=seq) == messages[i + 1 :]
    # a command id that is no plain token names its subject by hash: h + sha256[:32]
    odd = "order.42/retry"
    token = "h" + hashlib.sha256(odd.encode()).hexdigest()[:32]
    await nc.request(
        "agt.cmd.writer.bare2",
        json.dumps({"action": "tell", "params": {"intro": 1}}).encode(),
        timeout=5,
        headers={"Agt-Command-Id": odd, "Agt-Stream": "1"},
    )
    assert output(await read_stream(nc, f"agt.out.writer.bare2.{token}")) == ["intro 0"]
