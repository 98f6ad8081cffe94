"""The read side of the agents' event log (``EventStream.read_subject``/``last``/``at``) over
the direct-get ``DirectReader``, as ``jetagents._host.ports`` describes it."""

from __future__ import annotations

from nats.aio.msg import Msg

from .._host.ports import StoredMessage
from .api import DirectReader
from .headers import H_NATS_SEQUENCE, H_NATS_SUBJECT


def stored_message(msg: Msg, subject: str = "") -> StoredMessage:
    """A direct get's answer as the message it read (``subject``: when the server names none)."""
    headers = msg.headers or {}
    return StoredMessage(int(headers.get(H_NATS_SEQUENCE, 0)), headers.get(H_NATS_SUBJECT, subject), msg.data, headers)


class DirectLogReader:
    """Reads one stream with direct gets (any replica answers; no consumer)."""

    def __init__(self, reader: DirectReader, stream: str, timeout_s: float) -> None:
        self._reader = reader
        self._stream = stream
        self._timeout_s = timeout_s

    async def read_subject(self, subject: str, start_seq: int, batch: int) -> list[StoredMessage]:
        msgs = await self._reader.read_subject(self._stream, subject, start_seq, batch, self._timeout_s)
        return [stored_message(m, subject) for m in msgs]

    async def last(self, subject: str) -> StoredMessage | None:
        msg = await self._reader.last(self._stream, subject, self._timeout_s)
        return stored_message(msg, subject) if msg is not None else None

    async def at(self, seq: int) -> StoredMessage | None:
        msg = await self._reader.at(self._stream, seq, self._timeout_s)
        return stored_message(msg) if msg is not None else None
