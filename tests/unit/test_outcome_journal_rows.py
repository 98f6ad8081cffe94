"""What the one executor (``Outcomes``) puts on the wire for the ack table's rows 23-26, the
commands that drive journals (ADR 0042): exactly the messages the suspension and signal code
sent by hand before these rows existed, in the same order (headers, body, acknowledgement).

A real ``Host`` (not started) whose ``Publisher`` port is the in-memory one of
``jetagents.testing``; the streamed output's port records what it is given.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from jetagents import HostSettings, Registry
from jetagents._core.command import Command, Kind
from jetagents._core.outcome import Result
from jetagents._host.host import Host
from jetagents._host.ports import Appended, StoredMessage
from jetagents.examples import Counter
from jetagents.testing.streams import MemoryPublisher, PublishedMessage

ACK_SUBJECT = "$JS.ACK.AGT_CMD.host.1.7.7.1700000000000000000.0"
INBOX = "_INBOX.caller.1"


class RecordingOutStream:
    """The ``OutStream`` port: every publish kept, each stored at the next sequence."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, dict[str, str]]] = []

    async def publish(self, subject: str, body: bytes, headers: Mapping[str, str]) -> Appended:
        self.published.append((subject, body, dict(headers)))
        return Appended(len(self.published), False)

    async def last(self, subject: str) -> StoredMessage | None:
        return None


def _host() -> tuple[Host, MemoryPublisher, RecordingOutStream]:
    pub, out = MemoryPublisher(), RecordingOutStream()
    host = Host(HostSettings(), Registry([Counter]), publisher=pub)
    host.pipeline.out.port = out
    return host, pub, out


def _command(kind: Kind = Kind.STREAM, *, streams: bool = False) -> Command:
    durable = kind is not Kind.CALL
    cmd = Command(
        kind,
        "agt.p.0.counter.c1" if durable else "agt.call.counter.c1",
        "counter",
        "c1",
        0,
        b'{"action": "increment"}',
        0.0,
        {},
        ACK_SUBJECT if durable else None,
        INBOX,
    )
    cmd.command_id = cmd.correlation_id = "m1"
    cmd.streams = streams
    return cmd


async def test_row_23_a_status_reply_then_its_ack_and_no_end_of_its_stream() -> None:
    host, pub, out = _host()
    cmd = _command(streams=True)
    waiting = {"signal": "approve", "until_ms": None}
    await host.pipeline.suspension.answer_status(cmd, cmd.reply_headers(), "suspended", waiting=waiting)
    body = b'{"ok":true,"status":"suspended","command_id":"m1","waiting":{"signal":"approve","until_ms":null}}'
    assert pub.published == [
        PublishedMessage(INBOX, body, {"Agt-Command-Id": "m1", "Agt-Status": "suspended"}),
        PublishedMessage(ACK_SUBJECT, b"+ACK", {}),
    ]
    assert out.published == []  # a status is no end: the run that finishes the command ends it
    assert cmd.outcome == "suspended" and host.stats["processed"] == 0


async def test_row_23_a_result_query_is_a_call_answered_without_its_id_and_unacknowledged() -> None:
    host, pub, _ = _host()
    cmd = _command(Kind.CALL)
    await host.pipeline.suspension.answer_status(cmd, cmd.reply_headers(), "queued", behind="m0")
    body = b'{"ok":true,"status":"queued","command_id":"m1","behind":"m0"}'
    assert pub.published == [PublishedMessage(INBOX, body, {"Agt-Status": "queued"})]  # the caller knows the id


async def test_rows_24_25_a_resolved_wait_is_answered_at_once_and_acknowledged_only_after_its_runs() -> None:
    host, pub, out = _host()
    cmd = _command()
    outcomes = host.outcomes
    await outcomes.settle(cmd, Result.RESOLVED, cmd.reply_headers(), answer={"delivered": "m0"}, event_seq=7)
    reply = PublishedMessage(
        INBOX, orjson.dumps({"ok": True, "result": {"delivered": "m0"}}), {"Agt-Command-Id": "m1", "Agt-Event-Seq": "7"}
    )
    assert pub.published == [reply]  # not acknowledged yet: the resumed run comes first
    assert cmd.outcome == "ok" and host.stats["processed"] == 1
    await outcomes.settle(cmd, Result.DRIVEN, {})
    assert pub.published == [reply, PublishedMessage(ACK_SUBJECT, b"+ACK", {})]
    assert host.stats["processed"] == 1 and host.stats["naks"] == 0 and out.published == []


async def test_row_26_a_command_whose_run_was_handed_back_is_handed_back_unanswered() -> None:
    host, pub, _ = _host()
    cmd = _command()
    await host.outcomes.settle(cmd, Result.REQUEUED, cmd.reply_headers())
    assert pub.published == [PublishedMessage(ACK_SUBJECT, b"-NAK", {})]
    assert cmd.outcome == "requeued" and host.stats["naks"] == 1 and host.stats["processed"] == 0


async def test_row_24_a_streaming_signals_answer_is_also_its_end() -> None:
    """A signal sent with ``Agt-Stream: 1`` (no client does) gets the ``end`` every other
    streaming command gets with its answer; row 25 publishes no second one."""
    host, _, out = _host()
    cmd = _command(streams=True)
    await host.outcomes.settle(cmd, Result.RESOLVED, cmd.reply_headers(), answer={"timeout": "m0"}, event_seq=9)
    await host.outcomes.settle(cmd, Result.DRIVEN, {})
    assert [(s, b, h.get("Agt-Event-Seq")) for s, b, h in out.published] == [
        ("agt.out.counter.c1.m1", b'{"ok":true,"result":{"timeout":"m0"}}', "9")
    ]


async def test_a_stored_command_is_dead_lettered_once_however_often_it_is_refused() -> None:
    """A dead letter of a stored command carries a message id of its own (its lane and stream
    sequence), so the dead-letter stream drops a second one within its duplicate window: a
    persist retried after a lost PubAck, or a redelivery after a lost ``+TERM``."""
    from jetagents._core.errors import InvalidParams
    from jetagents.testing.streams import MemoryEventStream

    host, pub, _ = _host()
    dlq = MemoryEventStream(host.clock, name="AGT_DLQ")
    pub.bind("agt.dlq.>", dlq)
    for deliveries in (1, 2):
        cmd = _command()
        cmd.stream_seq, cmd.deliveries = 7, deliveries
        await host.outcomes.settle(cmd, Result.REFUSED, {}, error=InvalidParams("no"))
    other = _command()
    other.stream_seq = 8
    await host.outcomes.settle(other, Result.REFUSED, {}, error=InvalidParams("no"))
    stored = dlq.messages
    assert [m.headers.get("Nats-Msg-Id") for m in stored] == ["dl:p:7", "dl:p:8"]
    assert [orjson.loads(m.data)["stream_seq"] for m in stored] == [7, 8]
