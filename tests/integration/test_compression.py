"""Payload compression negotiated by a header (ADR 0043), against a real nats-server.

* the Python client compresses a 100 KiB JSON command (durable and call) when asked, the
  host decodes it, and compresses the large reply because the client accepts it;
* a bare nats-py client following the wire contract does the same by hand (zstd frame,
  ``Agt-Encoding``/``Agt-Accept-Encoding``) and reads the compressed reply;
* a zip bomb (a few KiB that decode to 64 MiB) and an unknown encoding are refused with a
  typed error, dead-lettered once as they came, and nothing loops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import zstandard
from pydantic import BaseModel

from jetagents import (
    Agent,
    Client,
    ClientSettings,
    Event,
    Host,
    NatsServer,
    PayloadTooLarge,
    Registry,
    UnsupportedEncoding,
    action,
    applies,
)
from jetagents._core.errors import error_from_wire
from jetagents._core.ids import partition_of
from jetagents._nats.api import connect as raw_connect
from tests.conftest import host_settings
from tests.integration.helpers import dead_letters, eventually


class Rows(BaseModel):
    rows: int = 0


class Counted(Event):
    rows: int


class Docs(Agent[Rows]):
    type_name = "docs"
    state_type = Rows

    @action(read_only=True)
    async def echo(self, doc: dict[str, Any]) -> dict[str, Any]:
        return doc

    @action
    async def count(self, doc: dict[str, Any]) -> int:
        self.emit(Counted(rows=len(doc["rows"])))
        return self.state.rows

    @action(read_only=True)
    async def rows(self) -> int:
        return self.state.rows

    @applies
    def _counted(self, state: Rows, event: Counted) -> None:
        state.rows += event.rows


def _doc(kib: int = 100) -> dict[str, Any]:
    """~``kib`` KiB of JSON that compresses as real documents do (repeated keys, varied values)."""
    rows: list[dict[str, Any]] = []
    while len(orjson.dumps(rows)) < kib * 1024:
        i = len(rows)
        rows.append({"id": i, "name": f"customer-{i}", "city": ["Oslo", "Lyon", "Porto"][i % 3], "score": i * 7 % 101})
    return {"rows": rows}


@pytest.fixture
async def setup(nats_server: NatsServer) -> AsyncIterator[tuple[Host, Client]]:
    host = Host(host_settings(nats_server.url), Registry([Docs]))
    await host.start()
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
    try:
        yield host, client
    finally:
        await client.close()
        await host.stop()


async def test_a_100_kib_json_command_and_its_reply_travel_compressed(setup: tuple[Host, Client]) -> None:
    _, client = setup
    doc = _doc()
    ref = client.agent("docs", "d1")
    for delivery in ("exactly-once", "at-most-once"):
        reply = await ref.request_reply("echo", {"doc": doc}, delivery=delivery, compress=True)
        assert reply.result == doc and reply.headers.get("Agt-Encoding") == "zstd", delivery
    plain = await ref.request_reply("echo", {"doc": doc})  # the client's setting: off
    assert plain.result == doc and "Agt-Encoding" not in plain.headers
    # send_many compresses too: three documents stored at once, each counted once
    await client.send_many([("docs", "d9", "count", {"doc": doc})] * 3, compress=True)
    want = 3 * len(doc["rows"])

    async def counted() -> bool:
        return bool(await client.agent("docs", "d9").request("rows", delivery="at-most-once") == want)

    await eventually(counted, timeout_s=20)


async def test_a_host_with_compress_min_bytes_0_never_compresses_a_reply(nats_server: NatsServer) -> None:
    host = Host(host_settings(nats_server.url, compress_min_bytes=0), Registry([Docs]))
    await host.start()
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
    try:
        doc = _doc()
        for delivery in ("exactly-once", "at-most-once"):  # the sender accepts zstd: still plain
            reply = await client.agent("docs", "d2").request_reply(
                "echo", {"doc": doc}, delivery=delivery, compress=True
            )
            assert reply.result == doc and "Agt-Encoding" not in reply.headers, delivery
    finally:
        await client.close()
        await host.stop()


async def test_a_bare_client_compresses_by_the_wire_contract(
    setup: tuple[Host, Client], nats_server: NatsServer
) -> None:
    _, _ = setup
    body = orjson.dumps({"action": "echo", "params": {"doc": _doc()}})
    packed = zstandard.ZstdCompressor().compress(body)
    assert len(packed) * 5 < len(body)
    nc = await raw_connect(nats_server.url, name="bare-zstd")
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        hdrs = {"Agt-Encoding": "zstd", "Agt-Accept-Encoding": "zstd", "Agt-Reply-To": inbox, "Nats-Msg-Id": "z1"}
        ack = await nc.request("agt.cmd.docs.d2", packed, 5, headers=hdrs)
        assert orjson.loads(ack.data)["stream"] == "AGT_CMD"
        reply = await sub.next_msg(timeout=20)
        assert (reply.headers or {}).get("Agt-Encoding") == "zstd" and len(reply.data) * 5 < len(body)
        assert orjson.loads(zstandard.ZstdDecompressor().decompress(reply.data)) == {
            "ok": True,
            "result": {"rows": _doc()["rows"]},
        }
    finally:
        await nc.close()


async def test_a_zip_bomb_and_an_unknown_encoding_are_refused_and_dead_lettered_once(
    setup: tuple[Host, Client], nats_server: NatsServer
) -> None:
    host, client = setup
    bomb = zstandard.ZstdCompressor(level=19).compress(b'{"action":"echo","params":{"doc":{"x":"' + b"0" * (64 << 20))
    assert len(bomb) < 16 * 1024  # a few KiB on the wire, 64 MiB decoded
    cases = [("bomb", bomb, "zstd", PayloadTooLarge), ("br", b"\x0b\x02\x80{}", "br", UnsupportedEncoding)]
    nc = await raw_connect(nats_server.url, name="bare-bomb")
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        for cmd_id, data, encoding, error in cases:
            hdrs = {"Agt-Encoding": encoding, "Agt-Reply-To": inbox, "Nats-Msg-Id": cmd_id}
            await nc.request("agt.cmd.docs.d3", data, 5, headers=hdrs)
            reply = orjson.loads((await sub.next_msg(timeout=20)).data)
            assert reply["ok"] is False and isinstance(error_from_wire(reply["error"]), error), reply
            # a call: the same typed error
            answer = await nc.request("agt.call.docs.d3", data, 20, headers={"Agt-Encoding": encoding})
            assert isinstance(error_from_wire(orjson.loads(answer.data)["error"]), error)
        assert reply["error"]["details"]["supported"] == ["zstd"]

        def letters_of(ids: set[str]) -> Any:
            async def found() -> list[dict[str, Any]]:
                return [d for d in await dead_letters(nc) if d["headers"].get("Nats-Msg-Id") in ids]

            return found

        await eventually(lambda: _has(letters_of({"bomb", "br"}), 2), timeout_s=20)
        # nothing loops: another command runs, the consumer holds nothing, still one letter each
        assert await client.agent("docs", "d3").request("echo", {"doc": {"ok": 1}}) == {"ok": 1}
        info = await js_info(nc, "$JS.API.CONSUMER.INFO.AGT_CMD.p" + str(_partition("docs", "d3")))
        assert info["num_ack_pending"] == 0 and info["num_pending"] == 0
        letters = await letters_of({"bomb", "br"})()
        assert sorted(d["headers"]["Nats-Msg-Id"] for d in letters) == ["bomb", "br"]
        by_id = {d["headers"]["Nats-Msg-Id"]: d for d in letters}
        assert by_id["bomb"]["payload_bytes"] == len(bomb)  # kept as it came, not decoded
        assert by_id["bomb"]["error"]["code"] == "payload_too_large"
    finally:
        await nc.close()
    assert host.stats["dead_letters"] >= 2


async def _has(found: Any, n: int) -> bool:
    return len(await found()) >= n


def _partition(agent_type: str, agent_id: str) -> int:
    return partition_of(agent_type, agent_id, 8)


async def js_info(nc: Any, subject: str) -> dict[str, Any]:
    return orjson.loads((await nc.request(subject, b"", 5)).data)  # type: ignore[no-any-return]
