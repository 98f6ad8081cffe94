"""The event log's fence over the in-memory stream (the stream's answers are pinned against a
real server by tests/integration/test_stream_contract.py).

The case the simulation found: one command redelivered to a second host while the first was
paused between computing its commit and appending it. The second host commits the command
after other commits; the first wakes, is refused (wrong last sequence) and sees the command's
own message id as the last one. That is not its append: it must be fenced, not adopt a
sequence whose commit has another ``n`` and state than the one it computed.
"""

from __future__ import annotations

import pytest

from jetagents._core.errors import FencedError, Unavailable
from jetagents._core.ids import AgentId
from jetagents._core.wire import Subjects, encode_commit
from jetagents._host.eventlog import EventLog, NewCommit
from jetagents._host.ports import Appended, StoredMessage
from jetagents._obs.telemetry import HostTelemetry
from jetagents.testing import ManualClock, MemoryEventStream

AID = AgentId("counter", "a1")


def _commit(n: int, cmd: str, own: int) -> NewCommit:
    body = encode_commit(n=n, cmd=cmd, action="increment", events=[], result=n, cseq=0, ts_ms=0, own=own)
    return NewCommit(n, cmd, own, body)


class _NoHost:
    """What the telemetry's gauge reads of a host (none here)."""


def _log(stream: object, host: str) -> EventLog:
    log = EventLog(Subjects(), host, HostTelemetry(_NoHost(), f"eventlog-test-{host}"))
    log.bind(stream)  # type: ignore[arg-type]
    return log


async def test_a_command_committed_by_another_host_after_ours_went_stale_is_a_fence() -> None:
    stream = MemoryEventStream(ManualClock())
    paused, other = _log(stream, "h1"), _log(stream, "h0")
    assert await other.append(AID, 0, _commit(1, "k1", own=5), {}) == (1, False)
    # h1 computed k2 as commit 2 after seq 1, then paused; h0 got k2 redelivered later
    assert await other.append(AID, 1, _commit(2, "k9", own=7), {}) == (2, False)
    assert await other.append(AID, 2, _commit(3, "k2", own=7), {}) == (3, False)
    with pytest.raises(FencedError):
        await paused.append(AID, 1, _commit(2, "k2", own=5), {})


class _LostAck:
    """The stream stores the append but its answer is lost once."""

    def __init__(self, inner: MemoryEventStream) -> None:
        self.inner, self.lose = inner, True

    async def append(
        self, subject: str, body: bytes, headers: dict[str, str], *, expected_last_subject_seq: int
    ) -> Appended:
        done = await self.inner.append(subject, body, headers, expected_last_subject_seq=expected_last_subject_seq)
        if self.lose:
            self.lose = False
            raise Unavailable("PubAck lost")
        return done

    async def last(self, subject: str) -> StoredMessage | None:
        return await self.inner.last(subject)


async def test_our_own_append_whose_answer_was_lost_is_ours() -> None:
    stream = MemoryEventStream(ManualClock())
    log = _log(_LostAck(stream), "h1")
    mine = _commit(1, "k1", own=5)
    with pytest.raises(Unavailable):
        await log.append(AID, 0, mine, {})
    # the retry expects the same position; the stream has moved on by our own commit
    assert await log.append(AID, 0, mine, {}) == (1, False)
