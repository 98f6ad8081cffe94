"""Streamed output over ``AGT_OUT`` (ADR 0042 section 6): the host's publishing port and a
client's reader of one command's subject.

The host publishes with a PubAck (each message in order, each with its own ``Nats-TTL``) and
reads a subject's last message from the stream's leader when it resumes a run: a direct get
may be answered by a replica that lags, and a stale answer would make the host publish again
what is stored. Readers use direct gets (any replica; a lagging one answers less, never out
of order), woken by the subject's own messages, which a JetStream publish also delivers to
core subscribers.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from .._core.errors import Unavailable
from .._host.ports import Appended, Refused, StoredMessage
from .api import DirectReader, JSApiError, js_publish
from .inbox import Inbox
from .kv import message_headers, msg_get
from .log_reader import stored_message


class JetStreamOutStream:
    """The host's ``OutStream`` port: publish to ``AGT_OUT``, read a subject's last message."""

    def __init__(self, nc: NATS, inbox: Inbox, stream: str, timeout_s: float) -> None:
        self._nc = nc
        self._inbox = inbox
        self._stream = stream
        self._timeout_s = timeout_s

    async def publish(self, subject: str, body: bytes, headers: Mapping[str, str]) -> Appended:
        """Raises ``Refused`` (for good), ``PayloadTooLarge`` or ``Unavailable`` (try again)."""
        try:
            ack = await js_publish(self._nc, subject, body, dict(headers), self._timeout_s, self._inbox)
        except JSApiError as exc:
            raise Refused(str(exc)) from None
        return Appended(int(ack["seq"]), bool(ack.get("duplicate")))

    async def last(self, subject: str) -> StoredMessage | None:
        try:
            m = await msg_get(self._nc, self._stream, {"last_by_subj": subject}, self._timeout_s)
        except JSApiError as exc:
            raise Unavailable(f"reading {subject} failed: {exc.description}") from None
        if m is None:
            return None
        data = base64.b64decode(m.get("data") or "")
        return StoredMessage(int(m["seq"]), m["subject"], data, message_headers(m))


class Bell:
    """A core subscription to a stream's filter that only says "read again": a core message
    has no stream sequence, so readers take the messages themselves from direct gets in
    stream order and poll too (a reconnect loses rings). Used by ``OutReader`` and
    ``log_tail.LogTailReader``."""

    def __init__(self, nc: NATS, subject: str) -> None:
        self._nc = nc
        self._subject = subject
        self._rung = asyncio.Event()
        self._sub: Any = None

    async def start(self) -> None:
        if self._sub is not None:
            return

        async def ring(_: Msg) -> None:
            self._rung.set()

        self._sub = await self._nc.subscribe(self._subject, cb=ring)

    async def wait(self, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self._rung.wait()
        except TimeoutError:
            pass
        self._rung.clear()

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - the connection is gone already: nothing to undo
                pass


class BelledReader:
    """One subject (or filter) of one stream, read by direct gets, and the ``Bell`` its new
    messages ring: ``wait(timeout_s)`` returns at the next one (or when the timeout passes)."""

    def __init__(self, nc: NATS, inbox: Inbox, stream: str, subject: str, timeout_s: float) -> None:
        self._nc = nc
        self._reader = DirectReader(nc, inbox)
        self._stream = stream
        self._subject = subject
        self._timeout_s = timeout_s
        self._bell = Bell(nc, subject)

    async def wait(self, timeout_s: float) -> None:
        await self._bell.wait(timeout_s)

    async def close(self) -> None:
        await self._bell.close()


class OutReader(BelledReader):
    """One output subject read from a sequence on: ``read(after_seq)`` returns what is
    stored after it; ``wait(timeout_s)`` returns when the subject gets a new message (or the
    timeout passes: a reader polls too, since a message can reach a subscriber before a
    replica answers a direct get with it, and a reconnect misses messages)."""

    async def start(self) -> None:
        await self._reader.start()
        await self._bell.start()

    async def read(self, after_seq: int, batch: int = 256) -> list[StoredMessage]:
        msgs = await self._reader.read_subject(self._stream, self._subject, after_seq + 1, batch, self._timeout_s)
        return [stored_message(m, self._subject) for m in msgs]
