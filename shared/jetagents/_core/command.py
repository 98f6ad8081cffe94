"""One received command, parsed once as it arrives (ADR 0040 section 3).

The host's pipeline reads these fields, never the message's raw headers: what a header means
(which id names the command, whether a reply subject may be answered, what a deadline is) is
decided here, once, and tested without a server.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .callchain import CallChain
from .ids import is_reply_subject
from .wire import (
    H_COMMAND_ID,
    H_CORRELATION_ID,
    H_DEADLINE,
    H_MSG_ID,
    H_PRIORITY,
    H_REPLY_TO,
    H_STREAM,
    PRIORITY_RANK,
    TRACEPARENT,
    TRACESTATE,
    parse_ack_subject,
)

# the longest command id a host accepts (a longer one is refused as malformed)
MAX_COMMAND_ID_LEN = 256
# unix ms has 13 digits; a longer value is no deadline anyone can mean (and past 308 digits
# its division overflows a float: the fuzzer's huge Agt-Deadline)
_MAX_DEADLINE_DIGITS = 16


class Kind(enum.IntEnum):
    STREAM = 0  # pulled from the partition's consumer: acknowledged to the stream
    CALL = 1  # a core request: at most once, never acknowledged
    FORWARDED = 2  # a durable command forwarded by its partition's owner to the host it is placed on
    MIGRATE = 3  # a migration request, queued in the agent's mailbox behind its earlier commands


# kinds acknowledged (to the stream, or to the forwarder): durable
ACKED = frozenset({Kind.STREAM, Kind.FORWARDED})
# the members as module constants, for the code every command runs: on 3.11 reading an enum
# class's member (``Kind.CALL``) costs ~70 ns, a module global ~5
STREAM, CALL, FORWARDED, MIGRATE = Kind.STREAM, Kind.CALL, Kind.FORWARDED, Kind.MIGRATE


@dataclass(slots=True, eq=False)
class Command:
    """One received command: what it says (parsed at intake) and what became of it.

    ``headers`` are kept as received only to pass them on untouched (the dead letter, a
    forwarded command, a span's parent); the pipeline reads the fields.
    """

    kind: Kind
    subject: str
    agent_type: str  # the tokens the subject names (not yet checked against the registry)
    agent_id: str
    partition: int
    body: bytes
    received: float  # clock.monotonic() at intake
    headers: Mapping[str, str]
    ack: str | None = None  # where +ACK/-NAK/+TERM/+WPI go (the server's, or the forwarder's); None: a call
    reply_to: str | None = None  # a subject this host may answer (checked against reply_prefixes)
    reply_refused: str | None = None  # the reply subject the sender named that this host never answers
    command_id: str = ""
    correlation_id: str = ""
    exactly_once: bool = False  # sent with a Nats-Msg-Id (deduplicated by the stream too)
    deadline_ms: int | None = None  # unix ms; None when absent or not a plausible deadline
    priority_rank: int = 1
    deliveries: int = 1
    stream_seq: int = 0  # 0 for calls
    busy_naks: int = 0  # deliveries this host caused by handing it back (agent busy), not by failures
    # the W3C trace context it carried, as received (two fields, not an object: one per command)
    traceparent: str | None = None
    tracestate: str | None = None
    # what became of it (telemetry and the drain)
    done: bool = False
    action: str = ""
    outcome: str = ""
    error: str = ""
    traced: bool = False  # in a process span (SDK tracing): append and reply get spans too
    chain: CallChain | None = None  # its Agt-Call-Chain/-Path, read by the scheduler when present (ADR 0042)
    streams: bool = False  # sent with Agt-Stream: 1: its output and end go to agt.out (ADR 0042)
    # a journal's re-run (ADR 0042): a suspended action resumed, or a parked command run, in
    # the turn of the command that freed it (never acknowledged itself: that command is)
    resume: bool = False
    pooled: bool = False  # counted in its type's worker pool (a bulkhead) while in hand
    # the high-priority lane (ADR 0058): a durable command from the high lane's stream, or a
    # call sent with Agt-Priority: high; it goes ahead of its agent's queued normal commands
    high: bool = False

    @property
    def durable(self) -> bool:
        return self.kind in ACKED

    @property
    def delivery_mode(self) -> str:
        if not self.durable:
            return "at-most-once"
        return "exactly-once" if self.exactly_once else "at-least-once"

    def reply_headers(self) -> dict[str, str]:
        """The ids every answer to this command carries (wire contract section 4)."""
        out: dict[str, str] = {}
        if self.command_id:
            out[H_COMMAND_ID] = self.command_id
        if self.correlation_id and self.correlation_id != self.command_id:
            out[H_CORRELATION_ID] = self.correlation_id
        return out


def parse_deadline(value: str | None) -> int | None:
    """An ``Agt-Deadline`` as unix ms, or ``None`` when it is none anyone can mean.

    >>> parse_deadline("1700000000000"), parse_deadline("9" * 400), parse_deadline("soon")
    (1700000000000, None, None)
    """
    if value and len(value) <= _MAX_DEADLINE_DIGITS and value.isascii() and value.isdigit():
        return int(value)
    return None


def parse_command(
    kind: Kind,
    subject: str,
    headers: Mapping[str, str] | None,
    data: bytes,
    reply: str | None,
    agent_type: str,
    agent_id: str,
    partition: int,
    received: float,
    cepoch: str,
    reply_prefixes: Iterable[str],
    deliveries: int | None = None,
    stream_seq: int | None = None,
) -> Command:
    """Parse a received message into a ``Command``.

    ``reply`` is the message's own reply subject: for a durable command the ack subject
    (``deliveries`` and ``stream_seq`` are read from it unless given, as a forwarded command
    gives them), for a call the caller's inbox. ``agent_type``, ``agent_id`` and
    ``partition`` are what the subject names. A durable command is answered on its
    ``Agt-Reply-To``; one without an id is named after its stream position (``cepoch`` names
    the stream's creation, so the name is never reused by a recreated stream). Positional
    parameters: every call's intake runs this.

    >>> c = parse_command(Kind.CALL, "agt.call.counter.c", {"Agt-Command-Id": "x"}, b"{}", "_INBOX.a.1",
    ...     "counter", "c", 3, 0.0, "00", ["_INBOX."])
    >>> c.command_id, c.correlation_id, c.reply_to, c.ack
    ('x', 'x', '_INBOX.a.1', None)
    """
    seq = stream_seq or 0
    count = deliveries or 1
    durable = kind in ACKED
    if durable:
        if kind is Kind.STREAM and reply and (deliveries is None or stream_seq is None):
            meta = parse_ack_subject(reply)
            if meta:
                count, seq = (deliveries or meta[0]), (stream_seq if stream_seq is not None else meta[1])
        named = headers.get(H_REPLY_TO) if headers else None
        ack = reply or None
    else:  # a call (or a migration): answered on the message's own reply subject, never acknowledged
        named = reply or None
        ack = None
    reply_to = refused = None
    if named:
        if is_reply_subject(named, reply_prefixes):
            reply_to = named
        else:
            refused = named
    if headers:
        get = headers.get
        cmd_id = get(H_COMMAND_ID) or get(H_MSG_ID) or ""
        if not cmd_id and durable:
            cmd_id = f"s{cepoch}-{seq}"
        correlation_id = get(H_CORRELATION_ID) or cmd_id
        prio = get(H_PRIORITY)
        rank = PRIORITY_RANK.get(prio, 1) if prio else 1  # type: ignore[call-overload]
        deadline = get(H_DEADLINE)
        deadline_ms = parse_deadline(deadline) if deadline else None
        tp = get(TRACEPARENT)
        ts = get(TRACESTATE) if tp is not None else None
        exactly_once = H_MSG_ID in headers
        streams = get(H_STREAM) == "1"
    else:  # no ids, deadline, priority or trace to read
        headers = {}
        cmd_id = correlation_id = f"s{cepoch}-{seq}" if durable else ""
        prio = tp = ts = None
        deadline_ms = None
        rank, exactly_once, streams = 1, False, False
    cmd = Command(
        kind,
        subject,
        agent_type,
        agent_id,
        partition,
        data,
        received,
        headers,
        ack,
        reply_to,
        refused,
        cmd_id,
        correlation_id,
        exactly_once,
        deadline_ms,
        rank,
        count,
        seq,
        0,
        tp,
        ts,
    )
    if streams:
        cmd.streams = True
    if prio == "high" and kind is Kind.CALL:  # a call's lane is its header (a durable one's: its stream)
        cmd.high = True
    return cmd
