"""Reading the command stream by sequence, for the stranded-command sweep (ADR 0039):
``STREAM.MSG.GET`` with the filter ``>`` (which does not go through the server's subject
tree), the stored message rebuilt as the host's reject path takes it, and its delete.

What counts as stranded, how far a round goes and how old a command must be are the
sweep's policy (``_host/sweeper.py``)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from .api import js_api, stream_info
from .kv import message_headers, msg_get


@dataclass(frozen=True, slots=True)
class StoredCommand:
    """One message of the command stream as ``STREAM.MSG.GET`` returns it."""

    seq: int
    subject: str
    time: str  # RFC 3339, nanoseconds
    raw: dict[str, Any]


class CommandStreamScan:
    """The command stream, message by message in sequence order."""

    def __init__(self, nc: NATS, stream: str, timeout_s: float) -> None:
        self._nc = nc
        self._stream = stream
        self._timeout_s = timeout_s

    async def first_seq(self) -> int:
        info = await stream_info(self._nc, self._stream, self._timeout_s)
        return int(info["state"].get("first_seq", 1)) or 1

    async def next_from(self, seq: int) -> StoredCommand | None:
        """The first message at or after ``seq``; None past the last one."""
        found = await msg_get(self._nc, self._stream, {"seq": seq, "next_by_subj": ">"}, self._timeout_s)
        if found is None:
            return None
        return StoredCommand(int(found["seq"]), str(found["subject"]), str(found.get("time", "")), found)

    def message(self, found: StoredCommand) -> Msg:
        """The stored command as a received message (no reply subject: nothing to ack)."""
        data = base64.b64decode(found.raw.get("data") or b"")
        headers = message_headers(found.raw) or None
        return Msg(_client=self._nc, subject=found.subject, reply="", data=data, headers=headers)

    async def delete(self, seq: int) -> None:
        await js_api(self._nc, f"$JS.API.STREAM.MSG.DELETE.{self._stream}", {"seq": seq}, self._timeout_s)
