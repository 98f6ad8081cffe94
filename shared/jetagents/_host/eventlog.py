"""The event log as the pipeline writes it: one commit per command, appended with the fence.

An append names the sequence it expects to follow (the agent's last commit): the fence that
keeps two hosts from writing one agent. When the server says the subject moved on, either our
own earlier attempt landed (its message id is the last one: the append is done) or another
writer did (``FencedError``). The stream itself is the ``EventStream`` port: JetStream in
production (``_nats/event_stream.py``), memory in the simulation.
"""

from __future__ import annotations

from typing import NamedTuple

from .._core.errors import FencedError
from .._core.ids import AgentId
from .._core.wire import H_COMMAND_ID, H_CORRELATION_ID, H_HOST, H_MSG_ID, TRACEPARENT, TRACESTATE, Commit, Subjects
from .._obs.telemetry import (
    AGENT_ID,
    AGENT_TYPE,
    MESSAGING_MESSAGE_ID,
    MESSAGING_OPERATION_NAME,
    HostTelemetry,
    fail_span,
)
from .blobs import Blobs
from .ports import EventStream, WrongLastSequence

# what an append carries over from the reply's headers (the command's correlation and trace)
_CARRIED = (H_CORRELATION_ID, TRACEPARENT, TRACESTATE)


class NewCommit(NamedTuple):
    """A commit about to be appended: its JSON (a ``Commit``) and what the host keeps of it.
    A tuple: one is made per commit, and a frozen dataclass costs a setattr per field."""

    n: int
    cmd: str
    own: int
    body: bytes
    # after the command id in the message id: "#<i>" for a journal entry that does not
    # close its command (ADR 0042), so the closing commit keeps "<type>.<id>:<cmd>"
    tag: str = ""


class EventLog:
    """Appends commits (with the fence) and reads one back."""

    __slots__ = ("_blobs", "_host_id", "_stream", "_subjects", "_tel")

    def __init__(self, subjects: Subjects, host_id: str, tel: HostTelemetry) -> None:
        self._stream: EventStream = None  # type: ignore[assignment]  # bound when the host connects
        self._blobs: Blobs | None = None
        self._subjects = subjects
        self._host_id = host_id
        self._tel = tel

    def bind(self, stream: EventStream, blobs: Blobs | None = None) -> None:
        self._stream = stream
        self._blobs = blobs

    async def commit_at(self, seq: int) -> Commit | None:
        msg = await self._stream.at(seq)
        return Commit.model_validate_json(msg.data) if msg is not None else None

    async def append_span(
        self, aid: AgentId, last_seq: int, commit: NewCommit, out_hdrs: dict[str, str]
    ) -> tuple[int, bool]:
        """``append`` in a PRODUCER span; the commit carries the span's context."""
        span, hdrs = self._tel.start_producer(
            f"append {aid.type}",
            self._subjects.evt(aid.type, aid.id),
            out_hdrs,
            {
                MESSAGING_OPERATION_NAME: "append",
                MESSAGING_MESSAGE_ID: commit.cmd,
                AGENT_TYPE: aid.type,
                AGENT_ID: aid.id,
            },
        )
        try:
            seq, duplicate = await self.append(aid, last_seq, commit, hdrs)
            span.set_attribute("jetagents.event.seq", seq)
            if duplicate:
                span.set_attribute("jetagents.duplicate", True)
            return seq, duplicate
        except BaseException as exc:
            fail_span(span, exc)
            raise
        finally:
            span.end()

    async def append(
        self, aid: AgentId, last_seq: int, commit: NewCommit, out_hdrs: dict[str, str]
    ) -> tuple[int, bool]:
        """Append one commit after ``last_seq``; ``(seq, duplicate)``, duplicate when it was
        already there. Raises ``FencedError`` when another writer appended first."""
        blobs = self._blobs
        if blobs is not None and len(commit.body) > blobs.threshold:  # large values by reference (ADR 0042)
            commit = commit._replace(body=await blobs.offload_commit(commit.body, aid.key))
        msg_id = f"{aid.key}:{commit.cmd}{commit.tag}"
        hdrs = {H_MSG_ID: msg_id, H_COMMAND_ID: commit.cmd, H_HOST: self._host_id}
        for k in _CARRIED:
            if k in out_hdrs:
                hdrs[k] = out_hdrs[k]
        subject = self._subjects.evt(aid.type, aid.id)
        try:
            ack = await self._stream.append(subject, commit.body, hdrs, expected_last_subject_seq=last_seq)
        except WrongLastSequence:
            # Either our own earlier attempt landed (same msg id), or another writer did.
            # The same msg id is not enough: another host may have committed this very
            # command (redelivered to it while we were paused) after other commits, with
            # another n and state. Only the very bytes we sent are ours (the simulation
            # found a host adopting such a commit as its own, then snapshotting a state and
            # n that did not match the sequence it named).
            last = await self._stream.last(subject)
            if last is not None and last.headers.get(H_MSG_ID) == msg_id and last.data == commit.body:
                return last.seq, False
            raise FencedError(f"another writer appended to {aid} (expected last sequence {last_seq})") from None
        if ack.duplicate:
            return ack.seq, last_seq != 0 and ack.seq <= last_seq
        return ack.seq, False
