"""The client's outbound command: built once, from the caller's options, without I/O."""

from __future__ import annotations

import pytest

from jetagents import AgentId, Delivery, InvalidParams, PayloadTooLarge, Priority, Subjects
from jetagents._client.command import OutboundCommand, SendOptions, payload_limit

AID = AgentId("counter", "c1")


def build(options: SendOptions, params: dict[str, object] | None = None, limit: int = 1 << 20) -> OutboundCommand:
    return OutboundCommand.build(
        AID,
        "increment",
        params if params is not None else {"by": 2},
        options,
        subjects=Subjects("app"),
        timeout_s=10.0,
        limit_bytes=limit,
        new_id=lambda: "N1",
        wall_ms=1_000_000,
    )


def test_exactly_once_is_a_stream_command_deduplicated_by_its_id_without_a_deadline() -> None:
    cmd = build(SendOptions())
    assert cmd.subject == "app.cmd.counter.c1"
    assert cmd.body == b'{"action":"increment","params":{"by":2}}'
    assert dict(cmd.headers) == {"Agt-Command-Id": "N1", "Nats-Msg-Id": "N1"}
    assert (cmd.command_id, cmd.deadline_ms, cmd.is_call, cmd.want_reply) == ("N1", None, False, True)


def test_at_least_once_has_a_command_id_but_no_stream_dedup_id() -> None:
    cmd = build(SendOptions(delivery=Delivery.AT_LEAST_ONCE))
    assert cmd.subject == "app.cmd.counter.c1"
    assert dict(cmd.headers) == {"Agt-Command-Id": "N1"}


def test_a_call_awaiting_its_reply_has_no_command_id_and_expires_with_the_wait() -> None:
    cmd = build(SendOptions(delivery=Delivery.AT_MOST_ONCE))
    assert cmd.is_call and cmd.subject == "app.call.counter.c1"
    assert cmd.command_id == ""
    assert dict(cmd.headers) == {"Agt-Deadline": "1010000"}
    assert cmd.deadline_ms == 1_010_000


def test_a_call_without_a_reply_gets_a_command_id() -> None:
    cmd = build(SendOptions(delivery=Delivery.AT_MOST_ONCE, want_reply=False, deadline_s=2.0))
    assert dict(cmd.headers) == {"Agt-Command-Id": "N1", "Agt-Deadline": "1002000"}


def test_given_ids_priority_and_deadline_go_into_the_headers() -> None:
    cmd = build(SendOptions(command_id="mine", correlation_id="conv", priority=Priority.HIGH, deadline_s=1.5))
    assert dict(cmd.headers) == {
        "Agt-Command-Id": "mine",
        "Agt-Deadline": "1001500",
        "Agt-Correlation-Id": "conv",
        "Agt-Priority": "high",
        "Nats-Msg-Id": "mine",
    }
    assert (cmd.priority, cmd.correlation_id) == (Priority.HIGH, "conv")


def test_a_correlation_id_equal_to_the_command_id_is_not_sent_twice() -> None:
    assert "Agt-Correlation-Id" not in build(SendOptions(command_id="x", correlation_id="x")).headers


def test_bad_input_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(ValueError, match="256"):
        build(SendOptions(command_id="x" * 257))
    with pytest.raises(InvalidParams):
        build(SendOptions(), {"n": 1 << 70})
    with pytest.raises(PayloadTooLarge):
        build(SendOptions(), {"s": "x" * 100}, limit=64)


def test_the_payload_limit_leaves_room_for_headers_under_the_servers_max() -> None:
    assert payload_limit(256 * 1024, 0) == 256 * 1024  # before the server's INFO
    assert payload_limit(256 * 1024, 1024 * 1024) == 256 * 1024
    assert payload_limit(256 * 1024, 64 * 1024) == 60 * 1024
