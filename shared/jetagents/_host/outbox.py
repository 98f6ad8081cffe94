"""Streamed output on the host (ADR 0042 section 6): ``Agent.stream`` lands here.

A command sent with ``Agt-Stream: 1`` gets an ``Outbox`` for each run of its action. The
action's chunks are numbered by a cursor that is the same on every run (chunks outside steps
are deterministic; a journaled step's entry records the cursor after it, ``j.c``, so a re-run
that skips the step skips its chunks too). One flusher task per outbox gathers them for
``out_flush_ms`` and publishes one message at a time, waiting for each PubAck: order is kept,
a lost PubAck is retried under the same ``Nats-Msg-Id``, and chunks pile up into the next
message while one is on its way (the faster the action streams, the larger the messages).

Every run first learns what the stream holds (its last message, read from the leader, once
per command and host: a redelivery after a crash may come with a delivery count of 1):
chunks below that index are not published again; a step that runs its function again after
it streamed is preceded by a ``reset`` naming the first void chunk. A step's journal entry
is appended only once its chunks are stored, so a journaled step never needs a reset. The
command's outcome publishes the ``end`` (the reply body) after every chunk
(``OutStreams.finish``, called by ``Outcomes``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

import orjson
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from .._core.clock import Clock
from .._core.command import Command
from .._core.errors import JetAgentsError, PayloadTooLarge, Unavailable
from .._core.ids import is_valid_token
from .._core.journal import current_step_key
from .._core.outstream import (
    CHUNK,
    END,
    RESET,
    chunk_msg_id,
    ctoken,
    encode_chunks,
    encode_reset,
    end_msg_id,
    reset_msg_id,
    stored_after,
)
from .._core.retry import RetryPolicy
from .._core.wire import (
    H_CHUNK,
    H_COMMAND_ID,
    H_EVENT_SEQ,
    H_MSG_ID,
    H_STEP,
    H_STREAM_KIND,
    H_TTL,
    Subjects,
)
from .._settings import HostSettings
from .catalog import Activation
from .ports import OutStream, Refused
from .supervisor import Supervisor

_MARK: Final = -1  # an event that is no chunk: a step runs its function (not replayed)
_PUBLISH_RETRY = RetryPolicy(base_s=0.05, max_s=1.0)
_BACKLOG_MESSAGES = 4  # an action that streams faster than this many messages ahead waits


class OutStreams:
    """The outboxes of the streaming commands in hand: one per host."""

    def __init__(
        self, settings: HostSettings, clock: Clock, log: Any, subjects: Subjects, supervisor: Supervisor
    ) -> None:
        self.clock = clock
        self.log = log
        self.subjects = subjects
        self.supervisor = supervisor
        self.port: OutStream | None = None  # bound by the host's start()
        self.flush_s = settings.out_flush_ms / 1000
        self.max_bytes = min(settings.out_max_message_bytes, settings.max_payload_bytes)
        self.chunk_ttl = f"{settings.out_chunk_ttl_s}s"
        self.end_ttl = f"{settings.out_result_ttl_s}s"
        self.give_up_s = max(4 * settings.op_timeout_s, 5.0)
        self._boxes: dict[tuple[str, str], Outbox] = {}

    def bind(self, port: OutStream) -> None:
        self.port = port

    async def open(self, act: Activation, cmd: Command) -> Outbox | None:
        """The outbox of this run of ``cmd``'s action; None when it does not stream."""
        if self.port is None or not cmd.streams or not cmd.command_id:
            return None
        aid = act.agent_id
        key = (aid.key, cmd.command_id)
        box = self._boxes.get(key)
        if box is not None:  # a retry in place
            await box.rerun()
            return box
        subject = self.subjects.out(aid.type, aid.id, ctoken(cmd.command_id))
        box = self._boxes[key] = Outbox(self, aid.key, cmd.command_id, subject)
        return box

    async def finish(self, cmd: Command, body: bytes | None, event_seq: int = 0) -> None:
        """``cmd``'s outcome: publish its ``end`` after its chunks (``body``: the reply), or,
        handed back (``body`` None), let its chunks land for the run that comes next."""
        port = self.port
        if port is None or not cmd.streams or not cmd.command_id:
            return
        if not (is_valid_token(cmd.agent_type) and is_valid_token(cmd.agent_id)):
            return  # a subject from the message: never published to unless it is two tokens
        key = (f"{cmd.agent_type}.{cmd.agent_id}", cmd.command_id)
        box = self._boxes.pop(key, None)
        if box is not None:
            try:
                await box.drain()
            except JetAgentsError as exc:  # the end goes out all the same: a reader must not wait forever
                self.log.warning("stream_chunks_lost", command=cmd.command_id, error=str(exc))
        if body is not None:
            await self.end(cmd.agent_type, cmd.agent_id, cmd.command_id, body, event_seq)

    async def end(self, agent_type: str, agent_id: str, command_id: str, body: bytes, event_seq: int = 0) -> None:
        """Publish a command's ``end`` (its reply body); also for a journal closed while no
        run of it was in hand (a suspended action cancelled)."""
        if self.port is None:
            return
        subject = self.subjects.out(agent_type, agent_id, ctoken(command_id))
        headers = {
            H_STREAM_KIND: END,
            H_COMMAND_ID: command_id,
            H_MSG_ID: end_msg_id(f"{agent_type}.{agent_id}", command_id),
            H_TTL: self.end_ttl,
        }
        if event_seq:
            headers[H_EVENT_SEQ] = str(event_seq)
        try:
            await self.publish(subject, body, headers)
        except JetAgentsError as exc:
            self.log.error("stream_end_lost", command=command_id, error=str(exc))

    async def publish(self, subject: str, body: bytes, headers: dict[str, str]) -> int:
        """Publish with retries (same message id) until stored or ``give_up_s``; the sequence."""
        port = self.port
        assert port is not None
        deadline = self.clock.monotonic() + self.give_up_s
        attempt = 0
        while True:
            try:
                return (await port.publish(subject, body, headers)).seq
            except Refused as exc:
                raise Unavailable(f"AGT_OUT refused a message: {exc}") from None
            except PayloadTooLarge:
                raise
            except Exception as exc:  # noqa: BLE001 - timeout, no responders, connection: again
                if self.clock.monotonic() + _PUBLISH_RETRY.cap(attempt) > deadline:
                    raise Unavailable(f"AGT_OUT did not store a message in {self.give_up_s:g} s: {exc}") from None
            await self.clock.sleep(_PUBLISH_RETRY.delay(attempt))
            attempt += 1


def _encode(value: Any) -> bytes:
    if isinstance(value, BaseModel):
        return value.model_dump_json().encode()
    try:
        return orjson.dumps(value, default=to_jsonable_python)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"a streamed chunk must be JSON (or a pydantic model): {exc}") from None


def _running_step() -> int | None:
    """The position of the step whose function runs now (its key ends in ``#<i>``)."""
    key = current_step_key()
    if key is None:
        return None
    tail = key.rpartition("#")[2]
    return int(tail) if tail.isdigit() else None


class Outbox:
    """The output of one streaming command: the action's chunks, in order, to ``AGT_OUT``."""

    def __init__(self, streams: OutStreams, agent_key: str, command_id: str, subject: str) -> None:
        self._s = streams
        self._agent_key = agent_key
        self.command_id = command_id
        self.subject = subject
        self.next_index = 0  # the index the action's next chunk gets (the same on every run)
        # (index, step, json) per chunk; (_MARK, step, index) when a step runs its function
        self._events: list[tuple[int, int | None, Any]] = []
        self._bytes = 0
        self._first_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._error: JetAgentsError | None = None
        self._hurry = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        # What the stream holds, read before the first publish: an earlier run (on a host
        # that died) may have streamed, and nothing here says so reliably: a rewound
        # consumer delivers a command again with a delivery count of 1.
        self._known = False
        self._stored_end = 0  # one past the last stored chunk's index
        self._gen = 0  # message ids carry the last reset's sequence (its void chunks had the same)
        self._last_seq = 0
        self._ended = False  # the end is stored: an earlier run finished (nothing more to publish)

    # -- the action's side -------------------------------------------------------------------
    async def put(self, value: Any) -> None:
        """One chunk of the action's output (``Agent.stream``)."""
        if self._error is not None:
            raise self._error
        data = _encode(value)
        if len(data) + 2 > self._s.max_bytes:
            raise PayloadTooLarge(f"a streamed chunk of {len(data)} bytes exceeds {self._s.max_bytes}")
        self._add((self.next_index, _running_step(), data), len(data) + 1)
        self.next_index += 1
        if self._bytes >= _BACKLOG_MESSAGES * self._s.max_bytes:
            self._room.clear()
            await self._room.wait()  # the flusher is that far behind: stream no faster than it stores
        elif self._hurry.is_set() and self._bytes >= self._s.max_bytes:
            # a message is full: let the flusher send it now, or an action that streams in a
            # loop without awaiting anything else holds the loop (and its first chunk) longer
            await asyncio.sleep(0)

    def step_runs(self, i: int) -> None:
        """Step ``i`` runs its function (it is not journaled): what it streamed in an earlier
        run, if anything, is void."""
        self._add((_MARK, i, self.next_index), 0)

    def step_replayed(self, j: dict[str, Any]) -> None:
        """Step ``j.i`` returned its journaled result: its chunks are stored already."""
        c = j.get("c")
        if isinstance(c, int) and c >= self.next_index:
            self.next_index = c

    async def seal(self, j: dict[str, Any]) -> None:
        """Before a step's entry is journaled: wait until its chunks are stored, and record
        the cursor after them in the entry (``j.c``)."""
        await self.drain()
        j["c"] = self.next_index

    async def drain(self) -> None:
        """Wait until every chunk put so far is stored; raises when that failed."""
        self._hurry.set()
        while self._task is not None:
            await asyncio.shield(self._task)  # an action cancelled at its limit leaves the flusher be
        if self._error is not None:
            raise self._error

    async def rerun(self) -> None:
        """The action runs again in place: its cursor starts over."""
        with contextlib.suppress(JetAgentsError):
            await self.drain()
        if self._error is not None:  # what landed is not known: read it back first
            self._error, self._known = None, False
        self._events, self._bytes = [], 0
        self.next_index = 0

    # -- the flusher ---------------------------------------------------------------------------
    def _add(self, event: tuple[int, int | None, Any], size: int) -> None:
        if not self._events:
            self._first_at = self._s.clock.monotonic()
        self._events.append(event)
        self._bytes += size
        if self._bytes >= self._s.max_bytes:
            self._hurry.set()
        if self._task is None:
            self._task = self._s.supervisor.spawn("side", self._run())

    async def _run(self) -> None:
        s = self._s
        try:
            if not self._known:
                await self._read_back()
            while self._events:
                wait_s = self._first_at + s.flush_s - s.clock.monotonic()
                if wait_s > 0 and not self._hurry.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait_s):
                            await self._hurry.wait()
                self._hurry.clear()
                events, self._events, self._bytes = self._events, [], 0
                self._room.set()
                await self._publish_events(events)
        except JetAgentsError as exc:
            self._error = exc
            self._events, self._bytes = [], 0
            s.log.warning("stream_publish_failed", command=self.command_id, error=str(exc))
        finally:
            self._task = None
            self._room.set()

    async def _read_back(self) -> None:
        port = self._s.port
        assert port is not None
        msg = await port.last(self.subject)
        if msg is not None:
            h = msg.headers
            st = stored_after(h.get(H_STREAM_KIND), h.get(H_CHUNK), msg.data, h.get(H_MSG_ID), msg.seq)
            self._stored_end, self._gen, self._ended, self._last_seq = st.end_index, st.gen, st.ended, msg.seq
        self._known = True

    async def _publish_events(self, events: list[tuple[int, int | None, Any]]) -> None:
        if self._ended:
            return
        limit = self._s.max_bytes
        parts: list[bytes] = []
        first, step, size = 0, None, 2
        for index, in_step, data in events:
            if index == _MARK:
                await self._cut(parts, first, step)
                parts = []
                if self._stored_end > data:  # that step streamed in a run that did not journal it
                    await self._reset(in_step, data)
                continue
            if index < self._stored_end:  # stored by an earlier run of the same (deterministic) code
                continue
            if parts and (in_step != step or size + len(data) + 1 > limit):
                await self._cut(parts, first, step)
                parts = []
            if not parts:
                first, step, size = index, in_step, 2
            parts.append(data)
            size += len(data) + 1
        await self._cut(parts, first, step)

    def _headers(self, kind: str, chunk: int, msg_id: str, step: int | None) -> dict[str, str]:
        """A chunk's or a reset's headers (``chunk``: its first index, or where it resets to)."""
        headers = {
            H_STREAM_KIND: kind,
            H_COMMAND_ID: self.command_id,
            H_CHUNK: str(chunk),
            H_MSG_ID: msg_id,
            H_TTL: self._s.chunk_ttl,
        }
        if step is not None:
            headers[H_STEP] = str(step)
        return headers

    async def _cut(self, parts: list[bytes], first: int, step: int | None) -> None:
        if not parts:
            return
        msg_id = chunk_msg_id(self._agent_key, self.command_id, first, self._gen)
        headers = self._headers(CHUNK, first, msg_id, step)
        self._last_seq = await self._s.publish(self.subject, encode_chunks(parts), headers)
        self._stored_end = first + len(parts)

    async def _reset(self, step: int | None, from_chunk: int) -> None:
        msg_id = reset_msg_id(self._agent_key, self.command_id, from_chunk, self._last_seq)
        headers = self._headers(RESET, from_chunk, msg_id, step)
        self._last_seq = self._gen = await self._s.publish(self.subject, encode_reset(step, from_chunk), headers)
        self._stored_end = from_chunk
