"""What the host does with a command once its fate is known: the ack table (ADR 0040 section 4).

``decide(situation, limits)`` is pure: it says which reply the sender gets, whether the command
is dead-lettered, and how the server (or the forwarder) is answered: acknowledged, terminated,
handed back (``-NAK``) or retried in place. The host's one executor (``_host/outcomes.py``)
carries it out, always in the same order: dead letter, reply, acknowledgement. A command that
drives other runs (a signal resolving a wait: rows 24-26) is settled twice: answered first, then
acknowledged (or handed back) once those runs are done, never before. Each row of the table in
the ADR is one unit test (``tests/unit/test_outcome_table.py``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from .command import ACKED, Kind
from .errors import AgentDeleted, InternalError, JetAgentsError, Unavailable
from .retry import RetryPolicy


class Result(enum.Enum):
    """What happened to the command (the situation's first word)."""

    OK = "ok"  # row 1: applied (or read) and answered
    DUPLICATE = "duplicate"  # row 2: its first answer is on record (memory or the log)
    DOMAIN = "domain"  # row 3: the agent refused it (DomainError)
    DEADLINE = "deadline"  # row 4: its deadline passed before it ran
    OVERRAN = "overran"  # rows 5, 6: cancelled at its deadline or its action's time limit
    REFUSED = "refused"  # rows 7, 8: bad input (dead-lettered, terminated)
    EXHAUSTED = "exhausted"  # row 13: delivered too often (not counting hand-backs)
    FAILED = "failed"  # rows 9-11f, 16: the handler or the infrastructure failed this attempt
    BUSY = "busy"  # rows 12, 12c: the agent's mailbox is full (or an earlier hand-back is out)
    STOPPING = "stopping"  # row 16: the host is stopping; the next owner takes it
    BUG = "bug"  # row 17: processing itself raised
    NOT_OURS = "not_ours"  # row 18: its partition is not served here (any more)
    FORWARD_LOST = "forward_lost"  # row 19: forwarded, and the target did not answer properly
    NOT_PLACED_HERE = "not_placed_here"  # row 20: forwarded here, but the agent is not placed here
    NO_CAPABLE_HOST = "no_capable_host"  # row 21: no live host offers the tags its type requires
    PLACEMENT_FAILED = "placement_failed"  # row 22: placing it on a capable host failed
    # the commands that drive journals' runs (ADR 0042): a status, a resolved wait, its runs' end
    STATUS = "status"  # row 23: no result yet: answered with its status (Agt-Status)
    RESOLVED = "resolved"  # row 24: a signal or timer resolved a wait: answered, acknowledged later
    DRIVEN = "driven"  # row 25: the runs it drove (catch-up, resume) are done
    REQUEUED = "requeued"  # row 26: a run it drove was handed back: so is it


class DeadLetter(enum.Enum):
    """Whether the dead letter an outcome asked for was stored (the executor asks again if not)."""

    STORED = "stored"
    RETRY = "retry"  # not stored, for a reason that may pass (timeout, no responders)
    LOST = "lost"  # refused for good (the server said no, or it is too large)


class AckKind(enum.Enum):
    NONE = "none"  # a call: nothing to acknowledge
    ACK = "+ACK"
    TERM = "+TERM"  # never delivered again
    NAK = "-NAK"  # delivered again after delay_s (counts against max_redeliveries)
    HAND_BACK = "hand_back"  # a -NAK for a busy agent: does not count as a failed delivery (ADR 0036)
    RETRY = "retry"  # not answered: the pipeline tries again in place after delay_s
    LATER = "later"  # answered now; a later outcome (rows 25, 26) acknowledges it


@dataclass(slots=True)
class Ack:
    kind: AckKind
    delay_s: float = 0.0
    code: str = ""  # +TERM's reason


NO_ACK = Ack(AckKind.NONE)
ACK = Ack(AckKind.ACK)


@dataclass(slots=True)
class Reply:
    """The answer to the sender: ``result`` (ok) unless ``error`` is set."""

    result: Any = None
    error: JetAgentsError | None = None
    duplicate: bool = False  # Agt-Duplicate: answered from the record, not applied again
    event_seq: int = 0  # Agt-Event-Seq of the commit (0: none)
    host: bool = False  # Agt-Host: a refusal names the host that refused
    # a class attribute, not a field: the common reply sets nothing more, and the executor's
    # test of it is one attribute read
    is_status: ClassVar[bool] = False


@dataclass(slots=True)
class StatusReply(Reply):
    """No result yet (row 23): answered with ``Agt-Status: <status>``; ``result`` holds the
    body's other fields (``waiting``, ``behind``)."""

    status: str = ""
    is_status: ClassVar[bool] = True


@dataclass(slots=True)
class Outcome:
    ack: Ack
    reply: Reply | None = None
    dead_letter: JetAgentsError | None = None  # stored before anyone hears of the refusal
    label: str | None = None  # the command's outcome for telemetry (None: unchanged)
    error: str | None = None  # the error code for telemetry (None: unchanged)
    count: str | None = None  # the host counter this outcome adds one to


@dataclass(slots=True)
class Situation:
    kind: Kind
    result: Result
    error: JetAgentsError | None = None  # the refusal, failure or answer error
    answer: Any = None  # the result (OK, DUPLICATE)
    event_seq: int = 0
    by_deadline: bool = False  # OVERRAN: at the command's deadline, not the action's limit
    handler_fault: bool = False  # FAILED: the handler raised (counts towards max_deliver)
    partition_lost: bool = False  # FAILED: fenced, and the store says the partition is not ours
    silent: bool = False  # REFUSED: the reply subject itself is refused: answer nobody
    attempt: int = 0  # FAILED: attempts made so far
    deliveries: int = 1
    busy_naks: int = 0
    hand_backs: int = 0  # BUSY: times this command was handed back (0: not tracked)
    stopping: bool = False
    dead_letter: DeadLetter | None = None  # REFUSED: what became of the dead letter
    status: str = ""  # STATUS: suspended, queued, running, blocked or unknown


# rows 9, 11: retried in place, min(0.05 * 2**n, 2) s before attempt n + 1
IN_PLACE = RetryPolicy(base_s=0.05, max_s=2.0)
# row 12: a busy agent's command handed back the n-th time comes again in min(0.25 * 2**n, 5) s
HAND_BACK = RetryPolicy(base_s=0.25, max_s=5.0)


@dataclass(slots=True)
class Limits:
    max_deliver: int = 5  # attempts of a failing handler before it is dead-lettered
    max_redeliveries: int = 50  # deliveries (not counting hand-backs) before giving up
    retry: RetryPolicy = IN_PLACE
    hand_back: RetryPolicy = HAND_BACK


# delays of the rows that hand a command back to the stream
BUSY_UNTRACKED_DELAY_S = 1.0  # row 12 without a stream position to track
DEAD_LETTER_RETRY_DELAY_S = 1.0  # row 14
BUG_DELAY_S = 1.0  # row 17
FORWARD_LOST_DELAY_S = 0.5  # rows 19, 20
NO_CAPABLE_HOST_DELAY_S = 2.0  # row 21
PLACEMENT_FAILED_DELAY_S = 1.0  # row 22

OK, DUPLICATE, ERROR, DEAD_LETTER, REQUEUED = "ok", "duplicate", "error", "dead_letter", "requeued"


def exhausted(deliveries: int, busy_naks: int, limits: Limits) -> bool:
    """Row 13: delivered too often; hand-backs for a busy agent are not failures."""
    return deliveries - busy_naks > limits.max_redeliveries


def applied(durable: bool, answer: Any, event_seq: int) -> Outcome:
    """Row 1, the common one: applied (or read) and answered. ``decide`` says the same for
    ``Result.OK``; the executor asks here directly, without building a ``Situation``."""
    return Outcome(ACK if durable else NO_ACK, Reply(answer, None, False, event_seq), None, OK, None, "processed")


def decide(s: Situation, limits: Limits) -> Outcome:
    """The outcome of a command in situation ``s`` (ADR 0040 section 4, rows 1-26)."""
    durable = s.kind in ACKED
    r = s.result
    if r is Result.OK:
        return applied(durable, s.answer, s.event_seq)
    if r is Result.DUPLICATE:
        reply = Reply(s.answer, s.error, duplicate=True, event_seq=s.event_seq)
        label = ERROR if s.error is not None else DUPLICATE
        return Outcome(ACK if durable else NO_ACK, reply, label=label, error=_code(s.error), count="processed")
    if r in (Result.DOMAIN, Result.DEADLINE) or (r is Result.OVERRAN and (s.by_deadline or not durable)):
        return _answered(s.error, durable)
    if r is Result.REFUSED and isinstance(s.error, AgentDeleted):  # row 7d: answered, no dead letter (ADR 0052)
        return _answered(s.error, durable)
    if r in (Result.REFUSED, Result.OVERRAN):
        return _refused(s, s.error, durable, limits)
    if r is Result.EXHAUSTED:
        return _refused(s, s.error or InternalError("redelivered too often; giving up"), durable, limits)
    if r is Result.FAILED:
        return _failed(s, durable, limits)
    if r is Result.BUSY:
        if not durable:
            return Outcome(NO_ACK, Reply(error=s.error), count="agent_busy")
        delay = limits.hand_back.cap(s.hand_backs) if s.hand_backs else BUSY_UNTRACKED_DELAY_S
        return Outcome(Ack(AckKind.HAND_BACK, delay), count="agent_busy")
    if r in (Result.STOPPING, Result.NOT_OURS):
        return Outcome(Ack(AckKind.NAK) if durable else NO_ACK)
    if r is Result.BUG:
        if durable:
            return Outcome(Ack(AckKind.NAK, BUG_DELAY_S))
        err = s.error or InternalError("the host failed to process the command", details={"applied": False})
        return Outcome(NO_ACK, Reply(error=err))
    if r is Result.FORWARD_LOST:
        return Outcome(Ack(AckKind.NAK, FORWARD_LOST_DELAY_S) if durable else NO_ACK)
    if r is Result.NOT_PLACED_HERE:
        if durable:
            return Outcome(Ack(AckKind.NAK, FORWARD_LOST_DELAY_S))
        return Outcome(NO_ACK, Reply(error=Unavailable("the agent is moving; retry", details={"applied": False})))
    if r is Result.NO_CAPABLE_HOST:
        told = Reply(error=s.error) if s.deliveries == 1 else None  # once, not at every redelivery
        return Outcome(Ack(AckKind.NAK, NO_CAPABLE_HOST_DELAY_S) if durable else NO_ACK, told)
    if r is Result.PLACEMENT_FAILED:
        return Outcome(Ack(AckKind.NAK, PLACEMENT_FAILED_DELAY_S) if durable else NO_ACK)
    if r is Result.STATUS:  # not counted as processed: its result is still to come
        return Outcome(ACK if durable else NO_ACK, StatusReply(s.answer or {}, status=s.status), label=s.status)
    if r is Result.RESOLVED:
        # answered now, so the sender does not wait for the resumed run; acknowledged only
        # after it (row 25), so a crash in between redelivers the command and the run resumes
        reply = Reply(s.answer, event_seq=s.event_seq)
        return Outcome(Ack(AckKind.LATER) if durable else NO_ACK, reply, label=OK, count="processed")
    if r is Result.DRIVEN:
        return Outcome(ACK if durable else NO_ACK)
    if r is Result.REQUEUED:  # at once: the run it drove comes again with it
        return Outcome(Ack(AckKind.NAK) if durable else NO_ACK, label=REQUEUED)
    raise AssertionError(f"no row for {r}")  # pragma: no cover - every Result has a row


def _code(err: JetAgentsError | None) -> str | None:
    return err.code if err is not None else None


def _answered(err: JetAgentsError | None, durable: bool) -> Outcome:
    """A legitimate answer (a domain refusal, a deadline): replied to, acknowledged."""
    return Outcome(ACK if durable else NO_ACK, Reply(error=err), label=ERROR, error=_code(err), count="processed")


def _refused(s: Situation, err: JetAgentsError | None, durable: bool, limits: Limits) -> Outcome:
    """Dead-letter, then answer with the error, then terminate: never redelivered (rows 6-8,
    10, 13); rows 14-15 when the dead letter could not be stored."""
    assert err is not None
    term = Ack(AckKind.TERM, code=err.code) if durable else NO_ACK
    dl = s.dead_letter
    if dl is None or dl is DeadLetter.STORED:
        reply = None if s.silent else Reply(error=err, host=True)
        return Outcome(term, reply, dead_letter=err if dl is None else None, label=DEAD_LETTER, error=err.code)
    if dl is DeadLetter.RETRY and durable and s.deliveries < limits.max_redeliveries:
        return Outcome(Ack(AckKind.NAK, DEAD_LETTER_RETRY_DELAY_S), label=DEAD_LETTER, error=err.code)  # row 14
    # row 15: given up, terminated (a loop would block its agent for good); the caller hears
    # that nothing was applied, not the bad-input error whose dead letter it could not find
    lost = Unavailable(
        f"the command was refused ({err.code}: {err.message}) but its dead letter could not be stored",
        details={"applied": False, "refused": err.code},
    )
    reply = None if s.silent else Reply(error=lost, host=True)
    return Outcome(term, reply, label=DEAD_LETTER, error=err.code, count="dead_letters_lost")


def _failed(s: Situation, durable: bool, limits: Limits) -> Outcome:
    err = s.error
    assert err is not None
    if not durable:  # row 10c: at most once, never retried by the host
        answer = err if err.retryable or s.handler_fault else Unavailable(err.message)
        return Outcome(NO_ACK, Reply(error=answer), label=ERROR, error=err.code)
    if s.handler_fault and s.attempt >= limits.max_deliver:  # row 10
        return _refused(replace(s, result=Result.REFUSED), err, durable, limits)
    if s.partition_lost or s.stopping:  # rows 11f, 16
        return Outcome(Ack(AckKind.NAK))
    return Outcome(Ack(AckKind.RETRY, limits.retry.cap(s.attempt)), count="retries")  # rows 9, 11
