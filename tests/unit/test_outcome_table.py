"""The ack table (ADR 0040 section 4), one test per row: what the sender hears, what the server
is told, and whether the command is dead-lettered, decided by the pure ``decide``."""

from __future__ import annotations

import pytest

from jetagents._core.command import Kind
from jetagents._core.errors import (
    ActionTimeout,
    AgentDeleted,
    DeadlineExceeded,
    DomainError,
    FencedError,
    InternalError,
    InvalidParams,
    JetAgentsError,
    MalformedCommand,
    PayloadTooLarge,
    Unavailable,
    UnknownAction,
    UnknownAgent,
    UnknownAgentType,
)
from jetagents._core.outcome import (
    ACK,
    NO_ACK,
    Ack,
    AckKind,
    DeadLetter,
    Limits,
    Outcome,
    Result,
    Situation,
    StatusReply,
    decide,
    exhausted,
)

LIMITS = Limits(max_deliver=5, max_redeliveries=50)
S, C, F = Kind.STREAM, Kind.CALL, Kind.FORWARDED


def _d(kind: Kind, result: Result, **facts: object) -> Outcome:
    return decide(Situation(kind, result, **facts), LIMITS)  # type: ignore[arg-type]


def _error(o: Outcome) -> JetAgentsError:
    assert o.reply is not None and o.reply.error is not None
    return o.reply.error


def test_row_1_success_is_answered_with_its_event_seq_and_acknowledged() -> None:
    o = _d(S, Result.OK, answer={"v": 1}, event_seq=42)
    assert o.ack == ACK and o.dead_letter is None and o.count == "processed" and o.label == "ok"
    assert o.reply is not None and o.reply.result == {"v": 1} and o.reply.event_seq == 42 and not o.reply.duplicate
    assert _d(C, Result.OK, answer=1).ack == NO_ACK


def test_row_2_a_duplicate_gets_its_recorded_answer_and_is_acknowledged() -> None:
    o = _d(F, Result.DUPLICATE, answer=7, event_seq=9)
    assert o.ack == ACK and o.reply is not None and o.reply.duplicate and o.reply.result == 7
    assert o.reply.event_seq == 9 and o.label == "duplicate" and o.count == "processed"
    refusal = DomainError("no")
    r = _d(S, Result.DUPLICATE, error=refusal)  # a recorded domain refusal is answered again
    assert r.ack == ACK and _error(r) is refusal and r.label == "error" and r.error == "domain"


def test_row_3_a_domain_refusal_is_answered_and_acknowledged() -> None:
    err = DomainError("insufficient funds")
    o = _d(S, Result.DOMAIN, error=err)
    assert o.ack == ACK and _error(o) is err and o.dead_letter is None and o.count == "processed"


def test_row_4_a_deadline_passed_before_it_ran_is_answered_and_acknowledged() -> None:
    err = DeadlineExceeded("late")
    o = _d(S, Result.DEADLINE, error=err)
    assert o.ack == ACK and _error(o) is err and o.dead_letter is None and o.label == "error"


def test_row_5_cancelled_at_its_deadline_is_answered_and_acknowledged() -> None:
    err = DeadlineExceeded("cancelled")
    o = _d(S, Result.OVERRAN, error=err, by_deadline=True)
    assert o.ack == ACK and _error(o) is err and o.dead_letter is None


def test_row_6_an_action_past_its_time_limit_is_dead_lettered_and_terminated() -> None:
    err = ActionTimeout("too slow")
    o = _d(S, Result.OVERRAN, error=err)
    assert o.dead_letter is err and o.ack == Ack(AckKind.TERM, code="action_timeout")
    assert _error(o) is err and o.reply is not None and o.reply.host
    call = _d(C, Result.OVERRAN, error=err)  # a call: the reply only
    assert call.ack == NO_ACK and call.dead_letter is None and _error(call) is err


@pytest.mark.parametrize(
    "err",
    [
        MalformedCommand("id too long"),
        UnknownAgentType("nope"),
        PayloadTooLarge("big"),
        InvalidParams("by must be an integer"),
        UnknownAction("fly"),
        UnknownAgent("never spawned"),
    ],
)
def test_row_7_bad_input_is_dead_lettered_answered_and_terminated(err: JetAgentsError) -> None:
    o = _d(S, Result.REFUSED, error=err)
    assert o.dead_letter is err and o.ack == Ack(AckKind.TERM, code=err.code) and _error(o) is err
    assert o.label == "dead_letter" and o.error == err.code
    silent = _d(S, Result.REFUSED, error=MalformedCommand("reply subject not allowed"), silent=True)
    assert silent.reply is None and silent.dead_letter is not None  # never answer a refused subject
    call = _d(C, Result.REFUSED, error=err)
    assert call.dead_letter is err and call.ack == NO_ACK and _error(call) is err


def test_row_7d_a_command_to_a_deleted_agent_is_answered_not_dead_lettered() -> None:
    """A tombstone's refusal is the agent's answer, not bad input (ADR 0052): dead-lettering
    every command sent to a deleted agent would fill the dead-letter stream with noise."""
    err = AgentDeleted("deleted by an operator")
    o = _d(S, Result.REFUSED, error=err)
    assert o.dead_letter is None and o.ack == ACK and _error(o) is err
    assert o.error == err.code == "agent_deleted"
    call = _d(C, Result.REFUSED, error=err)
    assert call.dead_letter is None and call.ack == NO_ACK and _error(call) is err


def test_row_8_a_stranded_command_is_refused_as_malformed() -> None:
    err = MalformedCommand("no consumer delivers this subject")
    o = _d(S, Result.REFUSED, error=err, deliveries=1)
    assert o.dead_letter is err and o.ack == Ack(AckKind.TERM, code="malformed")


def test_row_9_a_failing_handler_is_retried_in_place_with_the_retry_policy() -> None:
    err = InternalError("boom")
    delays = [_d(S, Result.FAILED, error=err, handler_fault=True, attempt=n).ack for n in (1, 2, 3, 4)]
    assert [a.kind for a in delays] == [AckKind.RETRY] * 4
    assert [a.delay_s for a in delays] == [0.1, 0.2, 0.4, 0.8]  # min(0.05 * 2**n, 2)
    assert _d(S, Result.FAILED, error=err, handler_fault=True, attempt=4).count == "retries"
    assert _d(S, Result.FAILED, error=err, handler_fault=True, attempt=4).reply is None


def test_row_10_a_handler_still_failing_at_max_deliver_is_dead_lettered() -> None:
    err = InternalError("boom")
    o = _d(S, Result.FAILED, error=err, handler_fault=True, attempt=LIMITS.max_deliver)
    assert o.dead_letter is err and o.ack == Ack(AckKind.TERM, code="internal") and _error(o) is err


def test_row_10c_a_failed_call_is_answered_never_retried() -> None:
    handler = InternalError("boom")
    o = _d(C, Result.FAILED, error=handler, handler_fault=True, attempt=1)
    assert o.ack == NO_ACK and _error(o) is handler and o.dead_letter is None and o.error == "internal"
    infra = JetAgentsError("the store said no")  # not retryable, not the handler's: unavailable
    u = _error(_d(C, Result.FAILED, error=infra, attempt=1))
    assert isinstance(u, Unavailable) and u.message == infra.message
    fenced = FencedError("another writer")  # retryable: passed on as it is
    assert _error(_d(C, Result.FAILED, error=fenced, attempt=1)) is fenced
    transient = Unavailable("append timed out")
    assert _error(_d(C, Result.FAILED, error=transient, attempt=1)) is transient


def test_row_11_an_infrastructure_failure_is_retried_in_place_without_limit() -> None:
    o = _d(S, Result.FAILED, error=Unavailable("append timed out"), attempt=1000)
    assert o.ack == Ack(AckKind.RETRY, 2.0) and o.dead_letter is None and o.reply is None


def test_row_11f_fenced_on_a_partition_no_longer_ours_is_handed_back_at_once() -> None:
    o = _d(S, Result.FAILED, error=FencedError("newer writer"), attempt=1, partition_lost=True)
    assert o.ack == Ack(AckKind.NAK, 0.0) and o.reply is None and o.dead_letter is None


def test_row_12_a_busy_agents_durable_command_is_handed_back_with_a_growing_delay() -> None:
    delays = [_d(S, Result.BUSY, hand_backs=n).ack for n in (1, 2, 3, 4, 5)]
    assert {a.kind for a in delays} == {AckKind.HAND_BACK}
    assert [a.delay_s for a in delays] == [0.5, 1.0, 2.0, 4.0, 5.0]  # min(0.25 * 2**n, 5)
    untracked = _d(F, Result.BUSY)  # no stream position to hold it by
    assert untracked.ack == Ack(AckKind.HAND_BACK, 1.0) and untracked.count == "agent_busy"


def test_row_12c_a_call_to_a_busy_agent_is_refused() -> None:
    err = Unavailable("agent busy", details={"applied": False, "reason": "agent_busy"})
    o = _d(C, Result.BUSY, error=err)
    assert o.ack == NO_ACK and _error(o) is err and o.count == "agent_busy"


def test_row_13_delivered_too_often_is_dead_lettered_hand_backs_excepted() -> None:
    assert exhausted(51, 0, LIMITS) and not exhausted(51, 1, LIMITS) and not exhausted(50, 0, LIMITS)
    o = _d(S, Result.EXHAUSTED, deliveries=51)
    assert o.dead_letter is not None and o.dead_letter.code == "internal"
    assert o.ack == Ack(AckKind.TERM, code="internal") and _error(o).code == "internal"


def test_row_14_a_dead_letter_not_stored_for_now_hands_the_command_back() -> None:
    err = MalformedCommand("bad")
    o = _d(S, Result.REFUSED, error=err, deliveries=3, dead_letter=DeadLetter.RETRY)
    assert o.ack == Ack(AckKind.NAK, 1.0) and o.reply is None and o.dead_letter is None


def test_row_15_a_dead_letter_lost_terminates_and_says_nothing_was_applied() -> None:
    err = MalformedCommand("bad")
    for o in (
        _d(S, Result.REFUSED, error=err, dead_letter=DeadLetter.LOST),
        _d(S, Result.REFUSED, error=err, deliveries=50, dead_letter=DeadLetter.RETRY),
        _d(C, Result.REFUSED, error=err, dead_letter=DeadLetter.RETRY),
    ):
        lost = _error(o)
        assert isinstance(lost, Unavailable) and lost.details == {"applied": False, "refused": "malformed"}
        assert o.count == "dead_letters_lost" and o.dead_letter is None and o.error == "malformed"
    assert _d(S, Result.REFUSED, error=err, dead_letter=DeadLetter.LOST).ack == Ack(AckKind.TERM, code="malformed")
    silent = _d(S, Result.REFUSED, error=err, dead_letter=DeadLetter.LOST, silent=True)
    assert silent.reply is None


def test_row_16_a_stopping_host_hands_the_command_back_at_once() -> None:
    assert _d(S, Result.STOPPING).ack == Ack(AckKind.NAK, 0.0)
    waiting = _d(S, Result.FAILED, error=Unavailable("down"), attempt=1, stopping=True)
    assert waiting.ack == Ack(AckKind.NAK, 0.0) and waiting.reply is None


def test_row_17_a_bug_hands_a_durable_command_back_and_answers_a_call() -> None:
    assert _d(S, Result.BUG).ack == Ack(AckKind.NAK, 1.0)
    call = _d(C, Result.BUG)
    assert call.ack == NO_ACK and _error(call).code == "internal" and _error(call).details == {"applied": False}


def test_row_18_a_partition_not_ours_at_intake_is_handed_back() -> None:
    assert _d(S, Result.NOT_OURS).ack == Ack(AckKind.NAK, 0.0)


def test_row_19_a_forward_left_unanswered_is_handed_back() -> None:
    o = _d(S, Result.FORWARD_LOST)
    assert o.ack == Ack(AckKind.NAK, 0.5) and o.reply is None


def test_row_20_forwarded_here_but_not_placed_here() -> None:
    assert _d(F, Result.NOT_PLACED_HERE).ack == Ack(AckKind.NAK, 0.5)
    call = _d(C, Result.NOT_PLACED_HERE)
    assert call.ack == NO_ACK and isinstance(_error(call), Unavailable) and "moving" in _error(call).message


def test_row_21_no_capable_host_queues_it_and_tells_the_caller_once() -> None:
    err = Unavailable("no host offers ['gpu']; the command is queued")
    first = _d(S, Result.NO_CAPABLE_HOST, error=err, deliveries=1)
    assert first.ack == Ack(AckKind.NAK, 2.0) and _error(first) is err
    assert _d(S, Result.NO_CAPABLE_HOST, error=err, deliveries=2).reply is None


def test_row_22_a_failed_placement_is_handed_back() -> None:
    o = _d(S, Result.PLACEMENT_FAILED)
    assert o.ack == Ack(AckKind.NAK, 1.0) and o.reply is None
    assert _d(C, Result.PLACEMENT_FAILED).ack == NO_ACK


def test_row_23_no_result_yet_is_answered_with_its_status_and_acknowledged() -> None:
    waiting = {"signal": "approve", "until_ms": None}
    o = _d(S, Result.STATUS, status="suspended", answer={"waiting": waiting})
    assert o.ack == ACK and o.dead_letter is None and o.label == "suspended"
    assert isinstance(o.reply, StatusReply) and o.reply.status == "suspended" and o.reply.is_status
    assert o.reply.result == {"waiting": waiting} and o.reply.error is None
    assert not o.reply.duplicate and not o.reply.event_seq and not o.reply.host
    assert o.count is None  # not processed: its result is still to come
    query = _d(C, Result.STATUS, status="unknown")  # a result query is a call
    assert query.ack == NO_ACK and query.reply is not None and query.reply.result == {} and query.label == "unknown"


def test_row_24_a_resolved_wait_is_answered_now_and_acknowledged_later() -> None:
    o = _d(S, Result.RESOLVED, answer={"delivered": "m1"}, event_seq=12)
    assert o.ack == Ack(AckKind.LATER) and o.dead_letter is None and o.label == "ok" and o.count == "processed"
    assert o.reply is not None and o.reply.result == {"delivered": "m1"} and o.reply.event_seq == 12
    assert not o.reply.is_status and o.reply.error is None
    assert _d(C, Result.RESOLVED, answer={"timeout": "m1"}, event_seq=3).ack == NO_ACK


def test_row_25_the_runs_a_command_drove_are_done_it_is_acknowledged_unanswered() -> None:
    o = _d(S, Result.DRIVEN)
    assert o.ack == ACK and o.reply is None and o.dead_letter is None and o.count is None and o.label is None
    assert _d(C, Result.DRIVEN) == Outcome(NO_ACK)


def test_row_26_a_run_it_drove_was_handed_back_so_is_it_at_once() -> None:
    o = _d(S, Result.REQUEUED)
    assert o.ack == Ack(AckKind.NAK, 0.0) and o.reply is None and o.dead_letter is None and o.label == "requeued"
    call = _d(C, Result.REQUEUED)
    assert call.ack == NO_ACK and call.reply is None and call.label == "requeued"


def test_every_result_has_a_row() -> None:
    err = InternalError("x")
    for result in Result:
        for kind in Kind:
            assert isinstance(_d(kind, result, error=err, attempt=1), Outcome)
