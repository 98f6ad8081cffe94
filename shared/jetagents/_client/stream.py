"""Reading a command's streamed output (ADR 0042 section 6): ``AgentStream``.

>>> stream = client.agent("chat", "c1").stream("reply", {"prompt": "hi"})  # doctest: +SKIP
>>> async for chunk in stream:  # doctest: +SKIP
...     print(chunk, end="")
>>> stream.result  # doctest: +SKIP

The iterator yields the chunks themselves, and the result is an attribute read after the loop,
not a last item: the chunks and the result have different types, and a loop body that has
to tell them apart at every item is the common mistake this avoids. An error reply raises its
typed error from the loop (as ``request`` raises it). A ``StreamReset`` item says chunks
already yielded became void: a step that streamed them ran again after a crash.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._core.errors import AgentTimeout, JetAgentsError
from .._core.outstream import CHUNK, StreamFold, StreamReset
from .._core.retry import QUIET_POLL
from .._core.wire import H_CHUNK, H_STREAM_KIND
from .reply import Reply, decode_reply

if TYPE_CHECKING:
    from .._nats.out_stream import OutReader

_SKIP = object()  # a message that yields nothing (an end, a reset of chunks not yielded)


@dataclass(frozen=True, slots=True)
class _End:
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


class AgentStream:
    """One command's output, in order: ``async for chunk in stream``, then ``stream.result``.

    Yields each chunk the action streamed (``self.stream(...)``: JSON values), and a
    ``StreamReset`` when chunks it already yielded became void (drop those from
    ``reset.from_chunk`` on; ``chunks`` has them dropped). The loop ends with the command:
    ``result`` is then the action's result and ``reply`` the whole reply; an error reply
    raises its typed error from the loop. ``offset`` is the stream sequence of the last
    message all of whose chunks were yielded and ``next_chunk`` the index of the next chunk:
    after losing its connection a caller resumes with ``ref.read_stream(stream.command_id,
    after=stream.offset, next_chunk=stream.next_chunk)`` and gets every chunk it has not
    seen, once, in order. ``idle_timeout`` bounds the wait for the next message (AgentTimeout).
    """

    def __init__(
        self,
        command_id: str,
        open_reader: Callable[[], Awaitable[OutReader]],
        *,
        send: Callable[[], Awaitable[Any]] | None,
        after: int,
        next_chunk: int | None,
        idle_timeout_s: float,
    ) -> None:
        self.command_id = command_id
        self.offset = after
        self.next_chunk = next_chunk or 0
        self._open_reader = open_reader
        self._send = send
        self._idle_timeout_s = idle_timeout_s
        self._reader: OutReader | None = None
        self._fold = StreamFold(next_chunk)
        self._read_seq = after  # the last message read (its chunks may not all be yielded yet)
        # (item, its chunk index or None, the offset once it is yielded: its message's
        # sequence for the last item of a message, else 0); _SKIP items are not yielded
        self._items: deque[tuple[Any, int | None, int]] = deque()
        self._reply: Reply | None = None
        self._error: JetAgentsError | None = None
        self._closed = False

    @property
    def chunks(self) -> list[Any]:
        """The chunks read so far, resets applied (from the first this reader saw)."""
        return self._fold.chunks

    @property
    def done(self) -> bool:
        return self._fold.end is not None

    @property
    def reply(self) -> Reply:
        """The command's reply (after the loop); raises its error if it failed."""
        if self._error is not None:
            raise self._error
        if self._reply is None:
            raise RuntimeError("the stream has not ended yet: iterate it to its end first")
        return self._reply

    @property
    def result(self) -> Any:
        """The action's result (after the loop)."""
        return self.reply.result

    def __aiter__(self) -> AgentStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            while not self._items:
                if self._fold.end is not None or self._closed:
                    await self.aclose()
                    if self._error is not None:
                        raise self._error
                    raise StopAsyncIteration
                await self._fill()
            item, index, seq = self._items.popleft()
            if seq:
                self.offset = seq
            if index is not None:
                self.next_chunk = index + 1
            elif isinstance(item, StreamReset):
                self.next_chunk = item.from_chunk
            if item is not _SKIP:
                return item

    async def __aenter__(self) -> AgentStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop reading (the command runs on; its output stays readable for a while)."""
        self._closed = True
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.close()

    async def _fill(self) -> None:
        """Read until there is something to yield or the end came."""
        loop = asyncio.get_running_loop()
        if self._reader is None:
            self._reader = await self._open_reader()  # listening before the command goes out
            if self._send is not None:
                send, self._send = self._send, None
                await send()
        reader = self._reader
        quiet_since = loop.time()
        polls = 0  # reads in a row that found nothing
        while self._fold.end is None:
            try:
                msgs = await reader.read(self._read_seq)
            except JetAgentsError:  # a server or connection away for a moment: ask again
                msgs = []
            for m in msgs:
                self._read_seq = m.seq
                h = m.headers
                kind = h.get(H_STREAM_KIND)
                first = self._fold.next_index
                got = self._fold.add(kind, h.get(H_CHUNK), m.data)
                items = self._items
                if kind == CHUNK:
                    items.extend((v, first + k, 0) for k, v in enumerate(got))
                else:
                    items.extend((v, None, 0) for v in got)
                if got:
                    v, index, _ = items[-1]
                    items[-1] = (v, index, m.seq)
                else:
                    items.append((_SKIP, None, m.seq))
                if self._fold.end is not None:
                    self._ended(_End(m.data, dict(h)))
                    break
            if msgs:
                quiet_since, polls = loop.time(), 0
                if any(item is not _SKIP for item, _, _ in self._items):
                    return
                continue
            if loop.time() - quiet_since > self._idle_timeout_s:
                raise AgentTimeout(
                    f"no output from command {self.command_id} for {self._idle_timeout_s:g} s; "
                    f"resume with read_stream({self.command_id!r}, after={self.offset})"
                )
            await reader.wait(QUIET_POLL.delay(polls))
            polls += 1

    def _ended(self, end: _End) -> None:
        try:
            self._reply = decode_reply(end)
        except JetAgentsError as err:
            self._error = err
