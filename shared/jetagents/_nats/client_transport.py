"""The client's NATS calls, in one place: the client package itself never imports ``nats``.

One ``Inbox`` carries every reply the client waits for (calls, the PubAcks of durable
commands, their replies, migrations): one subscription, no random inbox per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.nuid import NUID

from .._core.errors import JetAgentsError
from .api import connect, js_publish
from .batch import Outgoing, publish_all
from .inbox import Inbox
from .kv import kv_subject
from .log_tail import LogTailReader
from .out_stream import OutReader

NatsConnection: TypeAlias = NATS  # what ``Client(nc, ...)`` takes: a connected nats-py client


class ClientTransport:
    """Publish, request/reply and durable publish over one connection and one inbox."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._inbox = Inbox(nc)
        self._nuid = NUID()
        # request(subject, body, headers, timeout_s): the reply (a ``Status: 503`` one when
        # nobody listens), ``TimeoutError`` if none came. The inbox's own method, not a
        # wrapper: one coroutine less on every call's path
        self.request: Callable[[str, bytes, dict[str, str] | None, float], Awaitable[Msg]] = self._inbox.request

    @staticmethod
    async def connect(url: str, *, name: str, connect_timeout_s: float, inbox_prefix: str) -> NATS:
        return await connect(url, name=name, connect_timeout_s=connect_timeout_s, inbox_prefix=inbox_prefix)

    async def start(self) -> None:
        await self._inbox.start()

    async def close(self, *, owns_connection: bool) -> None:
        await self._inbox.close()
        if owns_connection:
            try:
                await self.nc.drain()
            except Exception:  # noqa: BLE001 - closing anyway
                await self.nc.close()

    def new_id(self) -> str:
        """A unique id (NUID: 22 characters, no system call per id)."""
        return self._nuid.next().decode()

    @property
    def max_payload(self) -> int:
        """The server's ``max_payload`` (0 before the first INFO)."""
        return int(getattr(self.nc, "max_payload", 0) or 0)

    async def publish(self, subject: str, body: bytes, headers: dict[str, str]) -> None:
        await self.nc.publish(subject, body, headers=headers)

    async def publish_durable(
        self, subject: str, body: bytes, headers: dict[str, str], timeout_s: float
    ) -> dict[str, Any]:
        """Publish to a stream and return its PubAck (see :func:`js_publish`), received on
        the inbox: no random inbox and no ``wait_for`` per publish, as the host's appends."""
        return await js_publish(self.nc, subject, body, headers, timeout_s, self._inbox)

    async def publish_many(self, items: list[Outgoing], timeout_s: float) -> list[JetAgentsError | None]:
        """Publish to streams in one go and wait for every PubAck (see :func:`publish_all`)."""
        return await publish_all(self.nc, self._inbox, items, timeout_s)

    def expect(self) -> tuple[str, asyncio.Future[Msg]]:
        """A reply subject and the future its reply completes; :meth:`forget` it when done."""
        return self._inbox.expect()

    def forget(self, reply_subject: str) -> None:
        self._inbox.forget(reply_subject)

    async def out_reader(self, stream: str, subject: str, timeout_s: float) -> OutReader:
        """A started reader of one streaming command's output subject (on the client's inbox)."""
        reader = OutReader(self.nc, self._inbox, stream, subject, timeout_s)
        await reader.start()
        return reader

    async def log_reader(self, stream: str, subject: str, timeout_s: float) -> LogTailReader:
        """A started reader of the event stream from a position on (ADR 0057), on the client's inbox."""
        reader = LogTailReader(self.nc, self._inbox, stream, subject, timeout_s)
        await reader.start()
        return reader

    async def kv_put(self, bucket: str, key: str, value: bytes, timeout_s: float = 5.0) -> None:
        """Put ``key`` in a KV bucket: one publish and its PubAck, on the inbox."""
        await js_publish(self.nc, kv_subject(bucket, key), value, {}, timeout_s, self._inbox)
