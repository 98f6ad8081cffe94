"""The in-memory bucket and publisher of jetagents.testing (the event stream's behaviour is
pinned against a real server by tests/integration/test_stream_contract.py)."""

from __future__ import annotations

import pytest

from jetagents import Unavailable
from jetagents._core.wire import parse_ack_subject
from jetagents._host.ports import Appended, Bucket, EventStream, Publisher
from jetagents.testing import ManualClock, MemoryBucket, MemoryEventStream, MemoryPublisher
from jetagents.testing.streams import MemoryWorkQueue, PublishedMessage, subject_matches


def test_they_implement_the_ports() -> None:
    stream: EventStream = MemoryEventStream(ManualClock())
    bucket: Bucket = MemoryBucket()
    publisher: Publisher = MemoryPublisher()
    assert stream and bucket and publisher


@pytest.mark.parametrize(
    ("pattern", "subject", "match"),
    [
        ("a.b", "a.b", True),
        ("a.*", "a.b", True),
        ("a.*", "a.b.c", False),
        ("a.>", "a.b.c", True),
        ("a.>", "a", False),
        ("*.b", "x.b", True),
        ("a.b", "a.c", False),
        ("a.b.c", "a.b", False),
    ],
)
def test_subject_matching(pattern: str, subject: str, match: bool) -> None:
    assert subject_matches(pattern, subject) is match


async def test_bucket_revisions_increase_across_keys() -> None:
    b = MemoryBucket()
    assert await b.get("k") is None
    assert await b.put("k", b"1") == 1
    assert await b.put("j", b"2") == 2
    assert await b.put("k", b"3") == 3
    assert await b.get("k") == b"3" and b.revision("k") == 3 and b.keys() == ["j", "k"]
    await b.delete("k")
    assert await b.get("k") is None


async def test_publisher_keeps_order_feeds_subscribers_and_persists_to_the_bound_stream() -> None:
    clock = ManualClock()
    dlq = MemoryEventStream(clock, name="DLQ")
    pub = MemoryPublisher()
    pub.bind("dlq.>", dlq)
    seen: list[PublishedMessage] = []

    async def on(msg: PublishedMessage) -> None:
        seen.append(msg)

    pub.subscribe("reply.*", on)
    await pub.publish("reply.1", b"a", {"H": "1"})
    await pub.publish("other", b"b")
    assert [m.subject for m in pub.published] == ["reply.1", "other"]
    assert seen == [PublishedMessage("reply.1", b"a", {"H": "1"})]
    assert await pub.persist("dlq.x", b"dead", {"Nats-Msg-Id": "d1"}) == Appended(1, False)
    assert await pub.persist("dlq.x", b"dead", {"Nats-Msg-Id": "d1"}) == Appended(1, True)
    assert [m.data for m in dlq.messages] == [b"dead"]
    with pytest.raises(Unavailable):
        await pub.persist("nowhere", b"x")


async def test_the_duplicate_window_follows_the_streams_clock() -> None:
    clock = ManualClock()
    s = MemoryEventStream(clock, duplicate_window_s=10.0)
    assert await s.append("e.a", b"x", {"Nats-Msg-Id": "m"}, expected_last_subject_seq=0) == Appended(1, False)
    clock.advance(9.9)
    assert await s.append("e.a", b"x", {"Nats-Msg-Id": "m"}, expected_last_subject_seq=1) == Appended(1, True)
    clock.advance(0.2)
    assert await s.append("e.a", b"x", {"Nats-Msg-Id": "m"}, expected_last_subject_seq=1) == Appended(2, False)
    assert [m.seq for m in s.of_subject("e.a")] == [1, 2] and s.subjects() == ["e.a"]


def test_the_work_queue_redelivers_what_is_not_acknowledged_in_time() -> None:
    clock = ManualClock()
    q = MemoryWorkQueue(clock, name="CMD", ack_wait_s=2.0)
    s1 = q.publish("agt.p.1.counter.a", b"1", {"Agt-Command-Id": "k1"}, 1)
    s2 = q.publish("agt.p.1.counter.b", b"2", {}, 1)
    assert [c.seq for c in q.ready()] == [s1, s2]
    ack1 = q.deliver(q.ready()[0])
    assert parse_ack_subject(ack1) == (1, s1)  # what the host reads from the subject
    assert [c.seq for c in q.ready()] == [s2]  # in flight until answered or ack_wait
    clock.advance(2.0)
    assert [c.seq for c in q.ready()] == [s1, s2]
    ack2 = q.deliver(q.ready()[0])
    assert parse_ack_subject(ack2) == (2, s1)
    assert q.answer(ack2, b"+WPI") == "progress"
    clock.advance(1.5)
    assert q.answer(ack2, b'-NAK {"delay": 1000000000}') == "nak"
    clock.advance(0.5)
    assert [c.seq for c in q.ready()] == [s2]
    clock.advance(0.5)
    assert [c.seq for c in q.ready()] == [s1, s2]
    assert q.answer(ack1, b"+ACK") == "ack"  # an answer to an earlier delivery still counts
    assert q.answer(ack2, b"+ACK") == "gone"
    ack3 = q.deliver(q.ready()[0])
    assert q.answer(ack3, b"+TERM malformed") == "term"
    assert q.pending() == []
