"""Odd bytes on the wire, sent over a plain TCP socket speaking the NATS protocol.

The server relays subjects, reply subjects and headers without checking their encoding.
A host must keep answering whatever arrives: each odd message gets a typed error reply
where its reply subject is usable, a durable one is dead-lettered once and terminated, and
good calls are answered at once before, between and after them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from jetagents import Client, Host, NatsServer, Registry
from jetagents.examples import EXAMPLE_AGENTS
from tests.conftest import host_settings
from tests.integration.helpers import consumer_info, dead_letters, eventually, stream_state


class RawConn:
    """A NATS client in 60 lines: CONNECT with headers, SUB, PUB/HPUB of any bytes, and the
    MSG/HMSG frames the server sends back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buf = b""
        self.msgs: list[tuple[bytes, bytes, bytes]] = []  # subject, header block, payload
        self.errors: list[bytes] = []

    @classmethod
    async def open(cls, server: NatsServer) -> RawConn:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        conn = cls(reader, writer)
        await reader.readuntil(b"\r\n")  # INFO
        writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1}\r\n')
        writer.write(b"SUB _INBOX.raw.> 1\r\nPING\r\n")
        await writer.drain()
        await conn.wait_for(lambda: conn._pong)
        return conn

    _pong = False

    def pub(self, subject: bytes, reply: bytes, payload: bytes, headers: bytes | None = None) -> None:
        rep = b" " + reply if reply else b""
        if headers is None:
            self.writer.write(b"PUB " + subject + rep + b" %d\r\n" % len(payload) + payload + b"\r\n")
        else:
            size = (len(headers), len(headers) + len(payload))
            self.writer.write(b"HPUB " + subject + rep + b" %d %d\r\n" % size + headers + payload + b"\r\n")

    async def _read_some(self) -> None:
        data = await self.reader.read(65536)
        if not data:
            raise ConnectionError("the server closed the raw connection")
        self.buf += data
        while True:
            if self.buf.startswith(b"PING\r\n"):
                self.writer.write(b"PONG\r\n")
                self.buf = self.buf[6:]
            elif self.buf.startswith(b"PONG\r\n"):
                self._pong = True
                self.buf = self.buf[6:]
            elif self.buf.startswith((b"+OK\r\n",)):
                self.buf = self.buf[5:]
            elif self.buf.startswith(b"INFO ") and b"\r\n" in self.buf:
                self.buf = self.buf.partition(b"\r\n")[2]
            elif self.buf.startswith(b"-ERR") and b"\r\n" in self.buf:
                line, _, self.buf = self.buf.partition(b"\r\n")
                self.errors.append(line)
            else:
                line, crlf, rest = self.buf.partition(b"\r\n")
                if not crlf or not line.startswith((b"MSG ", b"HMSG ")):
                    return
                args = line.split(b" ")  # MSG subject sid [reply] size / HMSG ... hsize size
                hsize = int(args[-2]) if args[0] == b"HMSG" else 0
                total = int(args[-1])
                if len(rest) < total + 2:
                    return
                body = rest[:total]
                self.msgs.append((args[1], body[:hsize], body[hsize:]))
                self.buf = rest[total + 2 :]

    async def wait_for(self, pred: Any, timeout_s: float = 20.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not pred():
                await self.writer.drain()
                await self._read_some()

    def replies(self, subject: bytes) -> list[dict[str, Any]]:
        return [orjson.loads(p) for s, _, p in self.msgs if s == subject]

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


GOOD = b'{"action":"get"}'
BAD_BODY = b"not json"

MAL, UNK = "malformed", "unknown_agent_type"
# (what, subject, header block or None, payload, error code): calls, each answered on _INBOX.raw.<i>
ODD_CALLS: list[tuple[str, bytes, bytes | None, bytes, str]] = [
    ("xff in id", b"agt.call.counter.\xff", None, GOOD, MAL),
    ("nul in id", b"agt.call.counter.a\x00b", None, GOOD, MAL),
    ("del in id", b"agt.call.counter.a\x7fb", None, GOOD, MAL),
    ("form feed in id", b"agt.call.counter.a\x0cb", None, GOOD, MAL),
    ("vertical tab in type", b"agt.call.coun\x0bter.a", None, GOOD, UNK),
    ("carriage return in id", b"agt.call.counter.a\rb", None, GOOD, MAL),
    ("carriage return alone as id", b"agt.call.counter.\r", None, GOOD, MAL),
    ("latin-1 in type", b"agt.call.compt\xe9ur.a", None, GOOD, UNK),
    ("xff in header name", b"agt.call.counter.h1", b"NATS/1.0\r\nA\xff: 1\r\n\r\n", BAD_BODY, MAL),
    ("xff and nul in header value", b"agt.call.counter.h2", b"NATS/1.0\r\nX-A: \xff\x00\x7f\r\n\r\n", BAD_BODY, MAL),
    ("status line with odd bytes", b"agt.call.counter.h3", b"NATS/1.0 503 \xff\x00\r\n\r\n", BAD_BODY, MAL),
    ("status line, bad body", b"agt.call.counter.h4", b"NATS/1.0 503\r\n\r\n", BAD_BODY, MAL),
    ("status line with description", b"agt.call.counter.h5", b"NATS/1.0 408 Request Timeout\r\n\r\n", BAD_BODY, MAL),
    ("odd status code", b"agt.call.counter.h6", b"NATS/1.0 \xff\xfe\xfd\r\nX: y\r\n\r\n", BAD_BODY, MAL),
    ("non-utf8 body", b"agt.call.counter.h7", None, b"\xff\xfe{", MAL),
]


async def _good_call(client: Client) -> None:
    # well under nats-py's ~35 s of silence before it noticed the stalled read loop
    assert await client.agent("counter", "good").request("get", delivery="at-most-once", timeout=5) == 0


async def test_odd_bytes_in_calls_get_typed_errors_and_the_host_keeps_answering(
    host: Host, client: Client, nats_server: NatsServer
) -> None:
    raw = await RawConn.open(nats_server)
    try:
        await _good_call(client)
        for i, (what, subject, headers, payload, code) in enumerate(ODD_CALLS):
            raw.pub(subject, b"_INBOX.raw.%d" % i, payload, headers)
            try:
                await raw.wait_for(lambda i=i: raw.replies(b"_INBOX.raw.%d" % i), 10)
            except TimeoutError:
                raise AssertionError(f"no reply to {what}: {raw.errors} {raw.msgs[-2:]}") from None
            [reply] = raw.replies(b"_INBOX.raw.%d" % i)
            assert reply["ok"] is False, what
            assert reply["error"]["code"] == code, (what, reply)
            await _good_call(client)
        # an unusable reply subject: nothing to answer, but still dead-lettered, still alive
        raw.pub(b"agt.call.counter.a", b"_INBOX.raw.\xff", BAD_BODY)
        await raw.writer.drain()
        await eventually(lambda: host.stats["dead_letters"] == len(ODD_CALLS) + 1, 10)
        await _good_call(client)
        assert host.nc.is_connected and host.nc.stats["reconnects"] == 0
        assert len(await dead_letters(client.nc)) == len(ODD_CALLS) + 1
    finally:
        await raw.close()


ODD_COMMANDS: list[tuple[str, bytes, bytes, str]] = [
    ("xff in id", b"agt.cmd.counter.\xff", b"", MAL),
    ("nul in id", b"agt.cmd.counter.a\x00b", b"", MAL),
    ("form feed in id", b"agt.cmd.counter.a\x0cb", b"", MAL),
    ("carriage return in id", b"agt.cmd.counter.a\rb", b"", MAL),
    ("latin-1 in type", b"agt.cmd.compt\xe9ur.a", b"", UNK),
    ("odd header bytes", b"agt.cmd.counter.h1", b"A\xff: 1\r\nX-B: \xff\x00\x7f\r\n", MAL),
]


@pytest.mark.parametrize(("what", "subject", "extra", "code"), ODD_COMMANDS, ids=[c[0] for c in ODD_COMMANDS])
async def test_odd_bytes_in_durable_commands_are_dead_lettered_once(
    host: Host, client: Client, nats_server: NatsServer, what: str, subject: bytes, extra: bytes, code: str
) -> None:
    raw = await RawConn.open(nats_server)
    try:
        await _good_call(client)
        headers = b"NATS/1.0\r\nAgt-Reply-To: _INBOX.raw.reply\r\nNats-Msg-Id: odd-1\r\n" + extra + b"\r\n"
        body = GOOD if extra == b"" else BAD_BODY
        raw.pub(subject, b"_INBOX.raw.ack", body, headers)
        await raw.wait_for(lambda: raw.replies(b"_INBOX.raw.ack"), 10)
        assert raw.replies(b"_INBOX.raw.ack")[0]["stream"] == "AGT_CMD"  # stored
        await raw.wait_for(lambda: raw.replies(b"_INBOX.raw.reply"), 10)
        [reply] = raw.replies(b"_INBOX.raw.reply")
        assert reply["ok"] is False and reply["error"]["code"] == code, reply
        reply_headers = next(h for s, h, _ in raw.msgs if s == b"_INBOX.raw.reply")
        assert b"Agt-Command-Id: odd-1\r\n" in reply_headers
        await _good_call(client)

        async def settled() -> bool:
            state = await stream_state(client.nc, "AGT_CMD")
            return state["messages"] == 0

        await eventually(settled, 10)  # terminated: gone from the work queue
        # not redelivered: one dead letter, and it stays one past an ack wait
        await asyncio.sleep(host.settings.ack_wait_s + 1)
        assert len(await dead_letters(client.nc)) == 1
        assert len(raw.replies(b"_INBOX.raw.reply")) == 1
        for p in range(8):
            info = await consumer_info(client.nc, "AGT_CMD", f"p{p}")
            assert info["num_redelivered"] == 0 and info["num_ack_pending"] == 0
        assert host.nc.stats["reconnects"] == 0
        await _good_call(client)
    finally:
        await raw.close()


STRANDED: list[tuple[str, bytes]] = [
    ("del in id", b"agt.cmd.counter.a\x7fb"),
    ("del in id, high lane", b"agt.cmd.counter.a\x7fb.high"),  # ADR 0058: its own stream, swept too
    ("del in type", b"agt.cmd.coun\x7fter.a"),
    ("star as id", b"agt.cmd.counter.*"),
    ("gt as type", b"agt.cmd.>.a"),
]


@pytest.mark.parametrize(("what", "subject"), STRANDED, ids=[c[0] for c in STRANDED])
async def test_commands_no_consumer_delivers_are_swept_answered_and_dead_lettered_once(
    nats_server: NatsServer, client: Client, what: str, subject: bytes
) -> None:
    # nats-server stores these (PubAck) but its subject index skips 0x7f and the partition
    # filter does not match a literal wildcard token: only the sweep ever sees them
    h = Host(host_settings(nats_server.url, stranded_sweep_s=0.3, stranded_grace_s=1.0), Registry(EXAMPLE_AGENTS))
    await h.start()
    raw = await RawConn.open(nats_server)
    try:
        headers = b"NATS/1.0\r\nAgt-Reply-To: _INBOX.raw.reply\r\nNats-Msg-Id: stranded-1\r\n\r\n"
        raw.pub(subject, b"_INBOX.raw.ack", GOOD, headers)
        await raw.wait_for(lambda: raw.replies(b"_INBOX.raw.ack"), 10)
        ack = raw.replies(b"_INBOX.raw.ack")[0]
        if "error" in ack:  # a server that refuses the subject outright: nothing can strand
            pytest.fail(f"the server refused {what}: {ack}")
        stream = "AGT_CMDH" if subject.endswith(b".high") else "AGT_CMD"
        assert ack["stream"] == stream
        await raw.wait_for(lambda: raw.replies(b"_INBOX.raw.reply"), 15)
        [reply] = raw.replies(b"_INBOX.raw.reply")
        assert reply["ok"] is False and reply["error"]["code"] == MAL, reply
        reply_headers = next(hd for s, hd, _ in raw.msgs if s == b"_INBOX.raw.reply")
        assert b"Agt-Command-Id: stranded-1\r\n" in reply_headers

        async def gone() -> bool:
            return (await stream_state(client.nc, stream))["messages"] == 0

        await eventually(gone, 10)
        await asyncio.sleep(1.0)  # a few more sweeps: nothing is dead-lettered twice
        assert len(await dead_letters(client.nc)) == 1
        assert h.stats["stranded_swept"] == 1
        assert await client.agent("counter", "good").request("get", delivery="at-most-once", timeout=5) == 0
    finally:
        await raw.close()
        await h.stop()
