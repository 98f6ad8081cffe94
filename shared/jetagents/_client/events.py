"""Agents' event logs as one feed, history then live (ADR 0057): ``EventTail``.

>>> async with client.events("counter", after=0, decode=[Counter]) as tail:  # doctest: +SKIP
...     async for commit in tail:
...         for event in commit.events:
...             print(commit.seq, commit.agent.id, event.type, event.data)

Every commit of the chosen agents stored after ``after`` (an event-stream sequence; 0: from
the start) comes once, in stream order, the stored ones first and then the new ones as they
are stored, with no gap between the two: both come from the same reads by sequence. Resume
after a stop with ``after=tail.offset``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from .._core.errors import JetAgentsError
from .._core.logtail import Decoders, LogCommit, log_filter, parse_commit
from .._core.retry import QUIET_POLL

if TYPE_CHECKING:
    from .._core.agent import Agent
    from .._nats.log_tail import LogTailReader
    from .client import Client

__all__ = ["EventTail", "open_events"]


class EventTail:
    """Commits of one filter of the event stream (see the module docstring). ``offset`` is
    the stream sequence of the last message the tail has handed out or passed over (commits
    without events, messages that are not commits): resume after it. ``skipped`` counts the
    messages that were not commits."""

    def __init__(
        self,
        open_reader: Callable[[], Awaitable[LogTailReader]],
        decoders: Decoders,
        events_subject: str,
        *,
        after: int = 0,
        since_ms: int | None = None,
        batch: int = 512,
        with_empty: bool = False,
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.offset = max(0, after)
        self.skipped = 0
        self._open_reader = open_reader
        self._decoders = decoders
        self._events_subject = events_subject
        self._since_ms = since_ms
        self._batch = batch
        self._with_empty = with_empty
        self._reader: LogTailReader | None = None
        self._read_to = self.offset
        self._items: deque[LogCommit] = deque()
        self._listening = False
        self._polls = 0  # reads in a row that found nothing

    def __aiter__(self) -> EventTail:
        return self

    async def __anext__(self) -> LogCommit:
        while not self._items:
            commits, read_to = await self.next_batch(wait_s=QUIET_POLL.max_s)
            self._items.extend(commits)
            if not commits:
                self.offset = read_to
        item = self._items.popleft()
        self.offset = item.seq
        return item

    async def __aenter__(self) -> EventTail:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.close()

    async def next_batch(self, *, wait_s: float) -> tuple[list[LogCommit], int]:
        """The commits stored after what was read so far (up to ``batch`` messages), waiting
        up to ``wait_s`` when none is stored yet; and the sequence read up to (commits with
        nothing to hand out move it too). What it returns is handed out: the caller owns
        the position (the projection runner does)."""
        reader = await self._ensure_reader()
        start = self._read_to
        try:
            msgs, _ = await reader.read(start, self._batch)
        except JetAgentsError:  # a server or connection away for a moment: ask again
            msgs = []
        if not msgs:
            if not self._listening:  # caught up: listen, then read once more (nothing slips by)
                await reader.listen()
                self._listening = True
                return [], start
            await reader.wait(min(QUIET_POLL.delay(self._polls), wait_s))
            self._polls += 1
            return [], start
        self._polls = 0
        out: list[LogCommit] = []
        for m in msgs:
            commit = parse_commit(m.seq, m.subject, m.data, self._decoders, self._events_subject)
            if commit is None:
                self.skipped += 1
            elif commit.events or self._with_empty:
                out.append(commit)
        self._read_to = msgs[-1].seq
        return out, self._read_to

    async def _ensure_reader(self) -> LogTailReader:
        if self._reader is None:
            self._reader = await self._open_reader()
            self._read_to = self.offset
            if self._since_ms is not None:
                self._read_to = self.offset = await self._reader.seq_before(self._since_ms)
        return self._reader


def open_events(
    client: Client,
    agent_type: str | None = None,
    agent_id: str | None = None,
    *,
    after: int = 0,
    since_ms: int | None = None,
    decode: Iterable[type[Agent[Any]]] = (),
    batch: int = 512,
    with_empty: bool = False,
) -> EventTail:
    """``Client.events``: a tail of every agent's log, one type's (``agt.evt.counter.*``) or
    one agent's, from ``after`` (a sequence) or ``since_ms``; ``with_empty`` hands out the
    commits that carry no event too (journal entries, reset commits)."""
    from .._nats.api import Topology

    root = f"{client.subjects.root}.evt"
    subject = log_filter(root, agent_type, agent_id)
    stream = Topology(client.subjects).evt_stream
    timeout_s = client.settings.request_timeout_s

    async def open_reader() -> LogTailReader:
        return await client._transport.log_reader(stream, subject, timeout_s)

    return EventTail(
        open_reader, Decoders(decode), root, after=after, since_ms=since_ms, batch=batch, with_empty=with_empty
    )
