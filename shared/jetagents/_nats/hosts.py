"""Host-to-host messages (``<root>.sys.host.<host>.<what>``) as the host's placement part uses
them: requests another host answers (adopt, release), commands forwarded to the host an agent
is placed on, and the acknowledgements that host sends back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import SlowConsumerError

from .._core.errors import Unavailable
from .inbox import shared_inbox


class HostLink:
    """One connection's view of the other hosts."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc

    async def request(self, subject: str, body: bytes, timeout_s: float) -> bytes:
        """The answer's body, received on the connection's shared inbox; raises
        ``Unavailable`` (nobody listens), ``TimeoutError`` or nats-py's connection errors."""
        inbox = await shared_inbox(self._nc)
        msg = await inbox.request(subject, body, None, timeout_s)
        if (msg.headers or {}).get("Status") == "503":
            raise Unavailable(f"no responders on {subject}")
        return msg.data

    async def publish(
        self, subject: str, body: bytes, *, headers: dict[str, str] | None = None, reply: str = ""
    ) -> None:
        await self._nc.publish(subject, body, reply=reply, headers=headers)

    @contextlib.asynccontextmanager
    async def answers(self) -> AsyncIterator[tuple[str, asyncio.Queue[bytes]]]:
        """A fresh reply subject (on the connection's shared inbox) and the queue its messages
        arrive on, for as long as the block runs. A status message (503: nobody listens at the
        other end any more) arrives as ``b""``."""
        shared = await shared_inbox(self._nc)
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        def on_answer(m: Msg) -> None:
            queue.put_nowait(b"" if m.headers and m.headers.get("Status") else m.data)

        inbox = shared.listen(on_answer)
        try:
            yield inbox, queue
        finally:
            shared.forget(inbox)


def dropped_subject(exc: Exception) -> str | None:
    """The subject of a message the connection dropped because its subscription's pending
    limit was full (nats-py's slow consumer error), else ``None``."""
    return exc.subject if isinstance(exc, SlowConsumerError) else None


def dropped_reply(exc: Exception, sub: object) -> str | None:
    """The reply subject of a request the connection dropped from ``sub`` (its pending limit
    full), if it had one: the caller can be told at once instead of waiting out its timeout."""
    if isinstance(exc, SlowConsumerError) and exc.sub is sub and exc.reply:
        return exc.reply
    return None
