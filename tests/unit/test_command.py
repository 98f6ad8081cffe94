"""A received command is parsed once, at intake (ADR 0040 section 3): what each header means."""

from __future__ import annotations

from collections.abc import Mapping

from jetagents._core.command import Command, Kind, parse_command, parse_deadline

PREFIXES = ["_INBOX."]
ACK = "$JS.ACK.AGT_CMD.agt_p3.4.17.9.1700000000000000000.0"  # 4th delivery of stream seq 17


def _parse(kind: Kind, headers: Mapping[str, str] | None, reply: str | None, **kw: int) -> Command:
    return parse_command(
        kind,
        "agt.p.3.counter.c",
        headers,
        b"{}",
        reply=reply,
        agent_type="counter",
        agent_id="c",
        partition=3,
        received=5.0,
        cepoch="abcd0123",
        reply_prefixes=PREFIXES,
        **kw,
    )


def test_a_durable_command_reads_its_delivery_from_the_ack_subject_and_answers_its_reply_to_header() -> None:
    cmd = _parse(Kind.STREAM, {"Agt-Reply-To": "_INBOX.x.1", "Nats-Msg-Id": "m1"}, ACK)
    assert cmd.deliveries == 4 and cmd.stream_seq == 17 and cmd.ack == ACK
    assert cmd.reply_to == "_INBOX.x.1" and cmd.reply_refused is None
    assert cmd.command_id == "m1" and cmd.correlation_id == "m1" and cmd.exactly_once
    assert cmd.durable and cmd.delivery_mode == "exactly-once"


def test_a_durable_command_without_an_id_is_named_after_its_stream_position() -> None:
    for headers in (None, {"Agt-Priority": "low"}):
        cmd = _parse(Kind.STREAM, headers, ACK)
        assert cmd.command_id == "sabcd0123-17" == cmd.correlation_id
        assert cmd.delivery_mode == "at-least-once" and cmd.reply_to is None


def test_the_command_id_wins_over_the_message_id_and_the_correlation_id_defaults_to_it() -> None:
    cmd = _parse(Kind.STREAM, {"Agt-Command-Id": "c1", "Nats-Msg-Id": "m1", "Agt-Correlation-Id": "k"}, ACK)
    assert (cmd.command_id, cmd.correlation_id) == ("c1", "k")
    assert cmd.reply_headers() == {"Agt-Command-Id": "c1", "Agt-Correlation-Id": "k"}
    same = _parse(Kind.STREAM, {"Agt-Command-Id": "c1", "Agt-Correlation-Id": "c1"}, ACK)
    assert same.reply_headers() == {"Agt-Command-Id": "c1"}


def test_a_call_is_answered_on_its_own_reply_subject_and_has_no_ack_nor_generated_id() -> None:
    cmd = _parse(Kind.CALL, {"Agt-Reply-To": "_INBOX.other.1"}, "_INBOX.caller.7")
    assert cmd.reply_to == "_INBOX.caller.7" and cmd.ack is None
    assert cmd.command_id == "" and cmd.stream_seq == 0 and not cmd.durable
    assert cmd.delivery_mode == "at-most-once"


def test_a_reply_subject_outside_the_prefixes_is_kept_apart_never_answered() -> None:
    cmd = _parse(Kind.STREAM, {"Agt-Reply-To": "$JS.API.STREAM.DELETE.AGT_EVT"}, ACK)
    assert cmd.reply_to is None and cmd.reply_refused == "$JS.API.STREAM.DELETE.AGT_EVT"
    call = _parse(Kind.CALL, None, "elsewhere.1")
    assert call.reply_to is None and call.reply_refused == "elsewhere.1"


def test_a_forwarded_command_takes_its_delivery_from_the_forwarder() -> None:
    cmd = _parse(Kind.FORWARDED, {"Agt-Reply-To": "_INBOX.x.1"}, "_INBOX.host.9", deliveries=3, stream_seq=40)
    assert (cmd.deliveries, cmd.stream_seq, cmd.ack) == (3, 40, "_INBOX.host.9")
    assert cmd.command_id == "sabcd0123-40" and cmd.reply_to == "_INBOX.x.1"


def test_priority_deadline_and_trace_context() -> None:
    tp = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    headers = {"Agt-Priority": "high", "Agt-Deadline": "1700000000000", "traceparent": tp, "tracestate": "a=b"}
    cmd = _parse(Kind.CALL, headers, "_INBOX.c.1")
    assert cmd.priority_rank == 0 and cmd.deadline_ms == 1_700_000_000_000
    assert (cmd.traceparent, cmd.tracestate) == (tp, "a=b")
    assert _parse(Kind.CALL, {"Agt-Priority": "urgent"}, None).priority_rank == 1
    assert _parse(Kind.CALL, {}, None).traceparent is None


def test_a_deadline_no_one_can_mean_is_no_deadline() -> None:
    assert parse_deadline(None) is None and parse_deadline("") is None
    assert parse_deadline("9" * 17) is None and parse_deadline("-5") is None
    assert parse_deadline("\uff11\uff12\uff13") is None  # digits, but not ASCII ones
    assert parse_deadline("9" * 16) == int("9" * 16)
