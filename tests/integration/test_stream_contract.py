"""One suite, two event streams: the in-memory ``MemoryEventStream`` the simulation runs the
host over, and the host's JetStream adapter (``JetStreamEventStream``) on a real nats-server
(and the same for buckets: ``MemoryBucket`` and the host's ``KvBucket``).
Every assertion runs against both, so the memory model answers as the server does
(faststream runs its broker suite the same way).

What the suite pins (nats-server 2.15): the expected last subject sequence is checked before
the duplicate window, so a stale duplicate is refused rather than answered ``duplicate``; a
duplicate id is recognised across subjects; a refused append records no id.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from jetagents import NatsServer, PayloadTooLarge
from jetagents._host.ports import Appended, Bucket, EventStream, WrongLastSequence
from jetagents._nats.api import DirectReader
from jetagents._nats.buckets import KvBucket
from jetagents._nats.event_stream import JetStreamEventStream
from jetagents._nats.inbox import Inbox
from jetagents.testing import ManualClock, MemoryBucket, MemoryEventStream

STREAM = "EVT"
WINDOW_S = 1.0
MAX_MSG_BYTES = 64 * 1024


class Clocked:
    """A stream under test and how to let its duplicate window pass."""

    def __init__(self, stream: EventStream, clock: ManualClock | None) -> None:
        self.stream, self.clock = stream, clock

    async def let_window_pass(self) -> None:
        if self.clock is not None:
            self.clock.advance(WINDOW_S + 0.1)
        else:
            await asyncio.sleep(WINDOW_S + 1.0)  # the server prunes ids on a timer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    s = NatsServer(data_dir=tmp_path / "nats", name="contract")
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(params=["memory", "jetstream"])
async def subject_of(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Clocked]:
    if request.param == "memory":
        clock = ManualClock()
        yield Clocked(
            MemoryEventStream(clock, name=STREAM, duplicate_window_s=WINDOW_S, max_msg_bytes=MAX_MSG_BYTES), clock
        )
        return
    server: NatsServer = request.getfixturevalue("server")
    nc = await nats.connect(server.url)
    try:
        await nc.jetstream().add_stream(
            name=STREAM,
            subjects=["evt.>"],
            duplicate_window=WINDOW_S,
            allow_direct=True,
            max_msg_size=MAX_MSG_BYTES,
        )
        direct = DirectReader(nc)
        await direct.start()
        inbox = Inbox(nc)
        await inbox.start()
        yield Clocked(JetStreamEventStream(nc, inbox, direct, STREAM, 5.0), None)
        await inbox.close()
        await direct.stop()
    finally:
        await nc.close()


def _id(msg_id: str) -> dict[str, str]:
    return {"Nats-Msg-Id": msg_id}


async def test_sequences_are_stream_wide_and_the_expectation_is_per_subject(subject_of: Clocked) -> None:
    s = subject_of.stream
    assert await s.append("evt.a", b"a1", {}, expected_last_subject_seq=0) == Appended(1, False)
    assert await s.append("evt.b", b"b1", {}, expected_last_subject_seq=0) == Appended(2, False)
    assert await s.append("evt.a", b"a2", {}, expected_last_subject_seq=1) == Appended(3, False)
    with pytest.raises(WrongLastSequence):  # a subject that has messages is not empty
        await s.append("evt.b", b"b2", {}, expected_last_subject_seq=0)
    with pytest.raises(WrongLastSequence):  # an empty subject's last sequence is 0
        await s.append("evt.c", b"c1", {}, expected_last_subject_seq=3)
    with pytest.raises(WrongLastSequence):  # another subject's sequence does not count
        await s.append("evt.a", b"a3", {}, expected_last_subject_seq=2)
    assert await s.append("evt.b", b"b2", {}, expected_last_subject_seq=2) == Appended(4, False)


async def test_a_duplicate_id_with_the_expectation_met_answers_the_original_sequence(subject_of: Clocked) -> None:
    s = subject_of.stream
    assert await s.append("evt.a", b"x", _id("m1"), expected_last_subject_seq=0) == Appended(1, False)
    assert await s.append("evt.a", b"x", _id("m1"), expected_last_subject_seq=1) == Appended(1, True)
    assert await s.append("evt.a", b"y", _id("m2"), expected_last_subject_seq=1) == Appended(2, False)
    # the lost-ack case: the first append landed, a retry expects what the writer knew since
    assert await s.append("evt.a", b"x", _id("m1"), expected_last_subject_seq=2) == Appended(1, True)
    # the window is stream-wide: the id is known on another subject too
    assert await s.append("evt.z", b"x", _id("m1"), expected_last_subject_seq=0) == Appended(1, True)
    assert [m.data for m in await s.read_subject("evt.a", 1, 10)] == [b"x", b"y"]
    assert await s.last("evt.z") is None


async def test_the_expectation_is_checked_before_the_duplicate_window(subject_of: Clocked) -> None:
    """A writer whose view is stale (it expects an older last sequence) is refused even
    when its message id is a duplicate: it learns about the fence, not about its duplicate."""
    s = subject_of.stream
    await s.append("evt.a", b"x", _id("m1"), expected_last_subject_seq=0)
    await s.append("evt.a", b"y", _id("m2"), expected_last_subject_seq=1)
    with pytest.raises(WrongLastSequence):
        await s.append("evt.a", b"x", _id("m1"), expected_last_subject_seq=0)


async def test_a_refused_append_records_no_id(subject_of: Clocked) -> None:
    s = subject_of.stream
    await s.append("evt.a", b"x", {}, expected_last_subject_seq=0)
    with pytest.raises(WrongLastSequence):
        await s.append("evt.a", b"y", _id("m9"), expected_last_subject_seq=0)
    assert await s.append("evt.a", b"y", _id("m9"), expected_last_subject_seq=1) == Appended(2, False)


async def test_an_id_older_than_the_window_is_written_again(subject_of: Clocked) -> None:
    s = subject_of.stream
    await s.append("evt.a", b"x", _id("m1"), expected_last_subject_seq=0)
    await subject_of.let_window_pass()
    assert await s.append("evt.a", b"x", _id("m1"), expected_last_subject_seq=1) == Appended(2, False)


async def test_reads_by_subject_last_and_sequence(subject_of: Clocked) -> None:
    s = subject_of.stream
    for i in range(5):
        subject = "evt.a" if i % 2 == 0 else "evt.b"
        last = await s.last(subject)
        await s.append(subject, f"m{i}".encode(), {"K": str(i)}, expected_last_subject_seq=last.seq if last else 0)
    a = await s.read_subject("evt.a", 1, 100)
    assert [(m.seq, m.subject, m.data) for m in a] == [(1, "evt.a", b"m0"), (3, "evt.a", b"m2"), (5, "evt.a", b"m4")]
    assert [m.seq for m in await s.read_subject("evt.a", 2, 100)] == [3, 5]
    assert [m.seq for m in await s.read_subject("evt.a", 1, 2)] == [1, 3, 5]  # paged, all of it
    assert await s.read_subject("evt.a", 6, 100) == []
    assert await s.read_subject("evt.none", 1, 100) == []
    last_b = await s.last("evt.b")
    assert last_b is not None and (last_b.seq, last_b.data) == (4, b"m3")
    at = await s.at(2)
    assert at is not None and (at.seq, at.subject, at.data) == (2, "evt.b", b"m1")
    assert await s.at(99) is None
    # read back with the headers it was stored with, and the server's own
    assert at.headers["K"] == "1"
    assert at.headers["Nats-Sequence"] == "2" and at.headers["Nats-Subject"] == "evt.b"
    assert at.headers["Nats-Stream"] == STREAM and at.headers["Nats-Time-Stamp"]


async def test_a_message_over_the_streams_limit_is_refused(subject_of: Clocked) -> None:
    s = subject_of.stream
    with pytest.raises(PayloadTooLarge):
        await s.append("evt.a", b"x" * (MAX_MSG_BYTES + 1), {}, expected_last_subject_seq=0)
    assert await s.append("evt.a", b"x", {}, expected_last_subject_seq=0) == Appended(1, False)


# -- buckets: the same suite for MemoryBucket and the host's KvBucket -------------------------
@pytest.fixture(params=["memory", "jetstream"])
async def bucket(request: pytest.FixtureRequest) -> AsyncIterator[Bucket]:
    if request.param == "memory":
        yield MemoryBucket()
        return
    server: NatsServer = request.getfixturevalue("server")
    nc = await nats.connect(server.url)
    try:
        await nc.jetstream().create_key_value(bucket="snap")
        yield await KvBucket.open(nc, "snap", 5.0)
    finally:
        await nc.close()


async def test_a_bucket_answers_absent_keys_and_counts_revisions_bucket_wide(bucket: Bucket) -> None:
    assert await bucket.get("a") is None
    first = await bucket.put("a", b"1")
    second = await bucket.put("b", b"2")
    third = await bucket.put("a", b"3")
    assert first < second < third and third - first == 2  # one revision per put, across keys
    assert await bucket.get("a") == b"3" and await bucket.get("b") == b"2"
    await bucket.put("e", b"")
    assert await bucket.get("e") == b""  # empty, not absent
