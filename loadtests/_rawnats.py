"""A minimal NATS protocol client over a raw TCP socket, for the fuzzer.

nats-py checks subjects and headers before it sends them, so bytes a hostile or buggy
client could put on the wire (``\\xff`` or ``\\x00`` in a subject, a header block that
starts with a status line, a non-ASCII header name) cannot be sent with it. This speaks
the text protocol directly: ``CONNECT {"headers": true}``, ``PUB``/``HPUB`` with any bytes,
``SUB`` and ``PING``; it reads ``MSG``/``HMSG`` for the subjects it subscribed to (PubAcks,
replies) and notices when the server closes the connection (``-ERR`` then EOF).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from urllib.parse import urlparse

import orjson

# subject, reply, header block (b"" if none), payload
OnMsg = Callable[[bytes, bytes, bytes, bytes], None]


class RawClosed(Exception):
    """The server closed the connection (its last ``-ERR`` line, if any, is the message)."""


class RawNats:
    def __init__(self, url: str, on_msg: OnMsg | None = None, name: str = "fuzz-raw") -> None:
        u = urlparse(url)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 4222
        self.name = name
        self.on_msg = on_msg
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.info: dict[str, object] = {}
        self.closed = False
        self.last_err = ""
        self._pongs: deque[asyncio.Future[None]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._subs: list[bytes] = []

    @property
    def max_payload(self) -> int:
        return int(self.info.get("max_payload", 1024 * 1024))  # type: ignore[call-overload]

    async def connect(self, timeout_s: float = 5.0) -> RawNats:
        async with asyncio.timeout(timeout_s):
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=16 * 1024 * 1024)
            line = await self.reader.readline()
            if not line.startswith(b"INFO "):
                raise RawClosed(f"no INFO from server: {line[:200]!r}")
            self.info = orjson.loads(line[5:])
            opts = {"verbose": False, "pedantic": False, "headers": True, "no_responders": False}
            opts |= {"protocol": 1, "lang": "raw", "version": "0", "name": self.name}
            self.writer.write(b"CONNECT " + orjson.dumps(opts) + b"\r\n")
            self._task = asyncio.create_task(self._read_loop())
            await self.ping(timeout_s)
        return self

    def sub(self, subject: bytes, sid: int) -> None:
        line = b"SUB " + subject + b" " + str(sid).encode() + b"\r\n"
        self._subs.append(line)
        self.write(line)

    @staticmethod
    def encode_pub(subject: bytes, reply: bytes | None, body: bytes, header_block: bytes | None) -> bytes:
        """The protocol bytes of one publish; ``header_block`` is sent verbatim (HPUB)."""
        rep = b" " + reply if reply else b""
        if header_block is None:
            return b"PUB " + subject + rep + b" %d\r\n" % len(body) + body + b"\r\n"
        hl = len(header_block)
        return b"HPUB " + subject + rep + b" %d %d\r\n" % (hl, hl + len(body)) + header_block + body + b"\r\n"

    def write(self, data: bytes) -> None:
        if self.closed or self.writer is None:
            raise RawClosed(self.last_err or "connection closed")
        self.writer.write(data)

    async def ping(self, timeout_s: float = 10.0) -> None:
        """Round trip: every byte written before was read (and routed) by the server."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pongs.append(fut)
        self.write(b"PING\r\n")
        assert self.writer is not None
        try:
            async with asyncio.timeout(timeout_s):
                await self.writer.drain()
                await fut
        finally:
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: the caller sees it raised here
            elif not fut.done():
                fut.cancel()

    async def _read_loop(self) -> None:
        assert self.reader is not None and self.writer is not None
        r = self.reader
        try:
            while True:
                line = await r.readline()
                if not line:
                    break
                if line.startswith(b"MSG ") or line.startswith(b"HMSG "):
                    parts = line.split()
                    if parts[0] == b"MSG":
                        size, hsize = int(parts[-1]), 0
                    else:
                        size, hsize = int(parts[-1]), int(parts[-2])
                    nargs = 5 if parts[0] == b"MSG" else 6
                    reply = parts[3] if len(parts) == nargs else b""
                    data = await r.readexactly(size + 2)
                    if self.on_msg is not None:
                        self.on_msg(parts[1], reply, data[:hsize], data[hsize:size])
                elif line.startswith(b"PING"):
                    self.writer.write(b"PONG\r\n")
                elif line.startswith(b"PONG"):
                    if self._pongs:
                        fut = self._pongs.popleft()
                        if not fut.done():
                            fut.set_result(None)
                elif line.startswith(b"-ERR"):
                    self.last_err = line[4:].strip().decode(errors="replace")
                # +OK and INFO updates need nothing
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed = True
            err = RawClosed(self.last_err or "connection closed")
            while self._pongs:
                fut = self._pongs.popleft()
                if not fut.done():
                    fut.set_exception(err)

    async def close(self) -> None:
        self.closed = True
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
                await self.writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
