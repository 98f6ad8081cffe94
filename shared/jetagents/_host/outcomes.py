"""The one executor of outcomes (ADR 0040 section 3): dead letter, then reply, then acknowledgement.

What to do is decided by the pure table (``_core/outcome.py``); this carries it out through
the ``Publisher`` port. It is also the only place a reply is published, so the rule that only
subjects under the configured reply prefixes are answered lives in one place.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import orjson

from .._core.agent import Registry
from .._core.blobref import is_ref
from .._core.clock import Clock
from .._core.command import ACKED, CALL, Command
from .._core.encoding import ZSTD, compress
from .._core.errors import JetAgentsError, PayloadTooLarge
from .._core.ids import is_reply_subject, is_valid_token
from .._core.outcome import (
    AckKind,
    DeadLetter,
    Limits,
    Outcome,
    Result,
    Situation,
    StatusReply,
    applied,
    decide,
)
from .._core.retry import RetryPolicy
from .._core.wire import (
    H_ACCEPT_ENCODING,
    H_COMMAND_ID,
    H_DUPLICATE,
    H_ENCODING,
    H_EVENT_SEQ,
    H_HOST,
    H_MSG_ID,
    H_STATUS,
    TRACEPARENT,
    TRACESTATE,
    Subjects,
    encode_dead_letter,
    encode_error,
    encode_ok,
    encode_status,
)
from .._obs.metrics import Metrics
from .._obs.telemetry import (
    AGENT_TYPE,
    MESSAGING_DESTINATION_TEMPORARY,
    MESSAGING_OPERATION_NAME,
    REQUEUED,
    HostTelemetry,
    fail_span,
)
from .._settings import HostSettings
from .ports import Publisher, Refused

if TYPE_CHECKING:
    from .blobs import Blobs
    from .outbox import OutStreams

NS = 1_000_000_000
_DEAD_LETTER_ATTEMPTS = 3  # in place, before the table decides (rows 14-15)
_DEAD_LETTER_RETRY = RetryPolicy(base_s=0.1, max_s=1.0, jitter=False)  # 0.1 s, 0.2 s between them
# read for every command: module constants (an enum class's member costs ~70 ns to read on 3.11)
_NONE, _ACK, _TERM, _NAK, _HAND_BACK = AckKind.NONE, AckKind.ACK, AckKind.TERM, AckKind.NAK, AckKind.HAND_BACK


def _accepts_zstd(cmd: Command) -> bool:
    """The sender reads a zstd reply (``Agt-Accept-Encoding: zstd``, ADR 0043)."""
    hdrs = cmd.headers
    accept = hdrs.get(H_ACCEPT_ENCODING) if hdrs else None
    return accept is not None and ZSTD in accept.split(",")


def _call_reply_headers(out: dict[str, str], cmd: Command) -> dict[str, str]:
    """The headers of a reply to a call, without what the caller already knows.

    A call's reply subject is the caller's own (core request/reply), so the command id
    adds nothing, and a trace context that went through unchanged is the caller's own.
    Headers are a large share of a small call's cost (wire contract section 4).
    """
    tp = cmd.traceparent
    keep: dict[str, str] = {}
    for k, v in out.items():
        if k == H_COMMAND_ID:
            continue
        if tp is not None and ((k == TRACEPARENT and tp == v) or (k == TRACESTATE and cmd.tracestate == v)):
            continue
        keep[k] = v
    return keep


class Outcomes:
    """Carries out ``Outcome``s: the dead letter, the reply, the acknowledgement, in that order."""

    def __init__(
        self,
        publisher: Publisher,
        settings: HostSettings,
        *,
        subjects: Subjects,
        registry: Registry,
        clock: Clock,
        metrics: Metrics,
        tel: HostTelemetry,
        log: Any,
        dead_letter_max_bytes: Callable[[], int],
    ) -> None:
        self._pub = publisher
        self._host_id = settings.host_id
        self._reply_prefixes = settings.reply_prefixes
        self._keep_bytes = settings.max_payload_bytes
        # replies this large are compressed (ADR 0043); 0 (never) as a size no body reaches:
        # one comparison per reply
        self._compress_from = settings.compress_min_bytes or sys.maxsize
        self._subjects = subjects
        self._registry = registry
        self._clock = clock
        self._metrics = metrics
        self._tel = tel
        self._log = log
        self._dl_max_bytes = dead_letter_max_bytes
        self.limits = Limits(max_deliver=settings.max_deliver, max_redeliveries=settings.max_redeliveries)
        self.out: OutStreams | None = None  # streamed output (the pipeline's), for the end message
        self.blobs: Blobs | None = None  # payloads by reference (ADR 0042 section 9), the catalog's

    def decide(self, cmd: Command, result: Result, **facts: Any) -> Outcome:
        """The table's outcome for ``cmd`` in the given situation."""
        situation = Situation(cmd.kind, result, deliveries=cmd.deliveries, busy_naks=cmd.busy_naks, **facts)
        return decide(situation, self.limits)

    # settle and settle_ok hand back execute's coroutine rather than awaiting it in one of
    # their own: one coroutine less per command (they are on every command's path)
    def settle(self, cmd: Command, result: Result, out: dict[str, str], **facts: Any) -> Coroutine[Any, Any, None]:
        """Decide and carry out at once (every row but the retries in place); await it."""
        return self.execute(cmd, self.decide(cmd, result, **facts), out)

    def settle_ok(self, cmd: Command, out: dict[str, str], answer: Any, event_seq: int) -> Coroutine[Any, Any, None]:
        """``settle(cmd, Result.OK, out, answer=answer, event_seq=event_seq)``, the common
        row, without building a ``Situation`` for it; await it."""
        return self.execute(cmd, applied(cmd.kind in ACKED, answer, event_seq), out)

    async def settle_interrupted(self, cmd: Command) -> None:
        """Processing of ``cmd`` was cancelled (the host stopping): a durable command not yet
        settled is handed back, to run again wherever its partition goes; never raises."""
        if cmd.durable and not cmd.done:
            with contextlib.suppress(Exception):
                await self.settle(cmd, Result.STOPPING, {})

    async def settle_crashed(self, cmd: Command) -> None:
        """Processing of ``cmd`` raised (a bug in the host): settled as one unless it was
        already; a call is never retried, so its caller hears of it now, not at its timeout."""
        if (cmd.durable and not cmd.done) or (cmd.kind is CALL and not cmd.outcome):
            await self.settle(cmd, Result.BUG, {})

    def count(self, cmd: Command, outcome: Outcome) -> None:
        """Add the outcome to the host's counters (``execute`` does, unless told it is done)."""
        name = outcome.count
        if name == "processed":  # nearly every command
            self._metrics.processed(self._clock.monotonic() - cmd.received)
        elif name == "agent_busy":  # the one of these counters with attributes
            self._metrics.inc(name, agent_type=cmd.agent_type, delivery=cmd.delivery_mode)
        elif name is not None:
            self._metrics.inc(name)

    async def execute(self, cmd: Command, outcome: Outcome, out: dict[str, str], *, counted: bool = False) -> None:
        """Dead letter, reply, acknowledgement; ``out`` are the reply's headers so far.
        ``counted``: ``count`` was called already."""
        if outcome.label is not None:
            cmd.outcome = outcome.label
        if outcome.error is not None:
            cmd.error = outcome.error
        # locals only where a branch is taken: each costs two opcodes on every command
        if outcome.dead_letter is not None:
            refusal = outcome.dead_letter
            stored = await self._dead_letter(cmd, refusal)
            if stored is not DeadLetter.STORED:  # rows 14-15: the table again
                facts = Situation(
                    cmd.kind,
                    Result.REFUSED,
                    refusal,
                    deliveries=cmd.deliveries,
                    silent=outcome.reply is None,
                    dead_letter=stored,
                )
                outcome = decide(facts, self.limits)
                counted = False
        if not counted:
            if outcome.count == "processed":  # nearly every command: ``count``'s first case
                self._metrics.processed(self._clock.monotonic() - cmd.received)
            else:
                self.count(cmd, outcome)
        reply = outcome.reply
        if cmd.streams and self.out is not None:
            await self._end(cmd, outcome)
        if reply is not None:
            if reply.duplicate:
                out[H_DUPLICATE] = "true"
            if reply.event_seq:
                out[H_EVENT_SEQ] = str(reply.event_seq)
            if cmd.reply_to or cmd.reply_refused:
                if reply.host and cmd.reply_to:
                    out[H_HOST] = self._host_id
                if reply.error is not None:
                    body = encode_error(reply.error)
                elif reply.is_status:  # no result yet (row 23)
                    assert isinstance(reply, StatusReply)
                    out[H_STATUS] = reply.status
                    body = encode_status(reply.status, cmd.command_id, reply.result)
                else:
                    body = encode_ok(reply.result)
                    blobs = self.blobs  # a recorded reference is read back; too large for a message: an error
                    if blobs is not None and (len(body) > blobs.message_max_bytes or is_ref(reply.result)):
                        body = await blobs.reply_body(reply.result, f"{cmd.agent_type}.{cmd.agent_id}")
                await self.reply(cmd.reply_to, body, out, cmd)
        kind = outcome.ack.kind
        if kind is _NONE:  # a call's
            return
        if kind is _ACK:
            await self.ack(cmd, b"+ACK")
        elif kind is _TERM:
            await self.ack(cmd, b"+TERM " + outcome.ack.code.encode())
        elif kind is _NAK or kind is _HAND_BACK:
            await self.nak(cmd, outcome.ack.delay_s)
        # LATER: a later outcome of the same command acknowledges it (rows 24-26)

    async def _end(self, cmd: Command, outcome: Outcome) -> None:
        """A streaming command's ``end`` on its ``agt.out`` subject (the reply's body), before
        the reply and the acknowledgement; none when it is handed back to run again, nor for
        a status (the run that finishes the command ends its stream)."""
        assert self.out is not None
        reply, kind = outcome.reply, outcome.ack.kind
        if reply is None or reply.is_status or kind is AckKind.NAK or kind is AckKind.HAND_BACK:
            await self.out.finish(cmd, None)
            return
        body = encode_error(reply.error) if reply.error is not None else encode_ok(reply.result)
        await self.out.finish(cmd, body, reply.event_seq)

    async def reply(self, reply_to: str | None, body: bytes, hdrs: dict[str, str], cmd: Command | None) -> None:
        """Publish a reply. Every reply of this host goes through here: the sender names the
        subject, and the host's permissions reach its event log, buckets and the JetStream
        API, so only inboxes under the configured reply prefixes are answered (wire contract
        4). A command's reply subject was checked as it arrived (None: refused, or none)."""
        span = None
        if cmd is None:
            if not reply_to:
                return
            if not is_reply_subject(reply_to, self._reply_prefixes):
                self._refused(reply_to)
                return
        else:  # a command's reply: its headers trimmed, maybe compressed, maybe traced
            if reply_to is None:
                if cmd.reply_refused:
                    self._refused(cmd.reply_refused)
                return
            if hdrs and cmd.kind is CALL:
                hdrs = _call_reply_headers(hdrs, cmd)
            if len(body) >= self._compress_from and _accepts_zstd(cmd):
                body = compress(body)
                hdrs = {**hdrs, H_ENCODING: ZSTD}
            if cmd.traced:
                agent_type = cmd.subject.split(".")[-2]
                span, hdrs = self._tel.start_producer(
                    f"reply {agent_type}",
                    reply_to,
                    hdrs,
                    {MESSAGING_OPERATION_NAME: "reply", MESSAGING_DESTINATION_TEMPORARY: True, AGENT_TYPE: agent_type},
                )
        try:
            await self._pub.publish(reply_to, body, hdrs or None)
        except Exception as exc:  # noqa: BLE001 - a lost reply is recoverable: the record answers a retry
            self._log.debug("reply_failed", error=str(exc))
            if span is not None:
                fail_span(span, exc)
        finally:
            if span is not None:
                span.end()

    def _refused(self, reply_to: str) -> None:
        self._metrics.inc("replies_refused")
        self._log.warning("reply_refused", reply_to=reply_to[:300].encode("unicode_escape").decode("ascii"))

    async def ack(self, cmd: Command, what: bytes) -> None:
        """Answer the server (or the forwarder): ``+ACK``, ``+TERM``, ``-NAK``, ``+WPI``."""
        if cmd.ack:
            try:
                await self._pub.publish(cmd.ack, what)
            except Exception as exc:  # noqa: BLE001 - unacked means redelivered; the record dedups it
                self._log.debug("ack_failed", error=str(exc))

    async def nak(self, cmd: Command, delay_s: float) -> None:
        self._metrics.inc("naks")
        cmd.outcome = REQUEUED
        payload = b"-NAK" if delay_s <= 0 else b"-NAK " + orjson.dumps({"delay": int(delay_s * NS)})
        await self.ack(cmd, payload)

    async def _dead_letter(self, cmd: Command, err: JetAgentsError) -> DeadLetter:
        """Store the dead letter of ``cmd``: a few attempts in place; ``LOST`` when the server
        refused it (an error that a later attempt would get again)."""
        valid = is_valid_token(cmd.agent_type) and is_valid_token(cmd.agent_id)
        type_tok = cmd.agent_type if valid else "_invalid"
        id_tok = cmd.agent_id if valid else "_invalid"
        body = encode_dead_letter(
            error=err,
            subject=cmd.subject,
            headers=cmd.headers,
            payload=cmd.body,
            host=self._host_id,
            ts_ms=self._clock.wall_ms(),
            stream_seq=cmd.stream_seq or None,
            deliveries=cmd.deliveries if cmd.durable else None,
            max_bytes=self._dl_max_bytes(),
            keep_bytes=self._keep_bytes,
        )
        subject = self._subjects.dlq(type_tok, id_tok)
        # a stored command's dead letter has a message id of its own: a second one (a persist
        # retried after its PubAck was lost, a redelivery after a lost +TERM) is dropped by
        # the stream within its duplicate window, so the command is dead-lettered once
        seq = cmd.stream_seq
        headers = {H_MSG_ID: f"dl:{'h' if cmd.high else 'p'}:{seq}"} if seq else None
        for attempt in range(_DEAD_LETTER_ATTEMPTS):
            try:
                await self._pub.persist(subject, body, headers)
                break
            except (Refused, PayloadTooLarge) as exc:
                self._log.warning("dead_letter_failed", error=str(exc))
                self._log.error("dead_letter_lost", subject=cmd.subject, code=err.code, reason=err.message)
                return DeadLetter.LOST
            except Exception as exc:  # noqa: BLE001 - timeout, no responders, connection
                self._log.warning("dead_letter_failed", error=str(exc), attempt=attempt + 1)
            if attempt < _DEAD_LETTER_ATTEMPTS - 1:
                await self._clock.sleep(_DEAD_LETTER_RETRY.cap(attempt))
        else:
            if not cmd.durable or cmd.deliveries >= self.limits.max_redeliveries:
                self._log.error("dead_letter_lost", subject=cmd.subject, code=err.code, reason=err.message)
            return DeadLetter.RETRY
        # a type no agent class declares is the sender's text: not a metric attribute
        known = type_tok if type_tok in self._registry else "_unknown"
        self._metrics.inc("dead_letters", agent_type=known, error=err.code)
        self._log.info("dead_lettered", subject=cmd.subject, code=err.code, reason=err.message)
        return DeadLetter.STORED
