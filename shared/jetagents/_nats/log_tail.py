"""Reading the event stream from a sequence on, history then live (ADR 0057): batched direct
gets by sequence, so a reader never sees a message twice nor skips one, and a core
subscription to the same filter as a bell that says "read again" once the reader caught up.

The bell carries no position (a core message has no stream sequence), so it only wakes the
reader; the messages themselves always come from direct gets in stream order. A reader polls
too: a message can reach a subscriber before the replica answering direct gets stores it, and
a reconnect loses bells.
"""

from __future__ import annotations

from datetime import UTC, datetime

from .._host.ports import StoredMessage
from .api import stream_info
from .headers import H_NATS_SEQUENCE
from .log_reader import stored_message
from .out_stream import BelledReader

__all__ = ["LogTailReader"]


class LogTailReader(BelledReader):
    """One filter of one stream (``agt.evt.counter.*``): ``read(after_seq)`` returns up to
    ``batch`` messages stored after it, ``wait`` returns when the filter gets a new message
    (or the timeout passes)."""

    async def start(self) -> None:
        await self._reader.start()

    async def listen(self) -> None:
        """Start the bell (once caught up: while it catches up a reader needs none, and a
        busy stream would ring it for every commit)."""
        await self._bell.start()

    async def read(self, after_seq: int, batch: int) -> tuple[list[StoredMessage], bool]:
        """Up to ``batch`` messages after ``after_seq``, and whether more are stored."""
        stream, subject = self._stream, self._subject
        msgs, more, _ = await self._reader.read_batch(stream, subject, after_seq + 1, batch, self._timeout_s)
        return [stored_message(m) for m in msgs], more

    async def seq_before(self, since_ms: int) -> int:
        """The position just before the first message stored at or after ``since_ms`` (unix
        ms): a reader that starts "after" it reads from that message on."""
        when = datetime.fromtimestamp(since_ms / 1000, UTC).isoformat().replace("+00:00", "Z")
        msg = await self._reader.first_since(self._stream, self._subject, when, self._timeout_s)
        if msg is None:  # nothing since: everything stored from now on
            info = await stream_info(self._nc, self._stream, self._timeout_s)
            return int(info["state"]["last_seq"])
        return int((msg.headers or {}).get(H_NATS_SEQUENCE, 1)) - 1
