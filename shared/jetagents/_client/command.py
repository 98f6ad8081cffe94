"""One outbound command, built once from the caller's options (pure: no I/O, no clock read).

>>> from jetagents._core.wire import Subjects
>>> cmd = OutboundCommand.build(
...     AgentId("counter", "c1"), "increment", {"by": 2}, SendOptions(),
...     subjects=Subjects(), timeout_s=10.0, limit_bytes=1024, new_id=lambda: "id1", wall_ms=0,
... )
>>> cmd.subject, cmd.command_id, cmd.headers
('agt.cmd.counter.c1', 'id1', {'Agt-Command-Id': 'id1', 'Nats-Msg-Id': 'id1'})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic_core import to_jsonable_python

from .._core.encoding import ZSTD, compress
from .._core.errors import InvalidParams, PayloadTooLarge
from .._core.ids import AgentId
from .._core.wire import (
    H_ACCEPT_ENCODING,
    H_COMMAND_ID,
    H_CORRELATION_ID,
    H_DEADLINE,
    H_ENCODING,
    H_MSG_ID,
    H_PRIORITY,
    H_STREAM,
    Delivery,
    Priority,
    Subjects,
)

MAX_COMMAND_ID_CHARS = 256
# bound once: read on every send
_AT_MOST_ONCE = Delivery.AT_MOST_ONCE
_EXACTLY_ONCE = Delivery.EXACTLY_ONCE
_NORMAL = Priority.NORMAL
# room left for the headers under the server's max_payload
HEADER_ROOM_BYTES = 4096


# Neither class is frozen: a frozen dataclass's __init__ sets each field through
# ``object.__setattr__``, a C call per field on every send (two thirds of the client's
# added cost per call when measured, ADR 0031). Nobody changes them after they are built.


@dataclass(slots=True)
class SendOptions:
    """What the caller asked for, as given to ``AgentRef.send``/``request``."""

    delivery: Delivery = Delivery.EXACTLY_ONCE
    timeout_s: float | None = None
    command_id: str | None = None
    correlation_id: str | None = None
    priority: Priority = Priority.NORMAL
    deadline_s: float | None = None
    want_reply: bool = True
    stream: bool = False  # Agt-Stream: 1, the host publishes the output and the end to agt.out
    compress: bool | None = None  # zstd above the client's threshold (ADR 0043); None: the client's setting


@dataclass(slots=True, eq=False)
class OutboundCommand:
    """Everything one send needs, decided before anything goes on the wire.

    ``headers`` are made for one send, which adds the trace context and its reply subject
    to them (a command is sent once: build another to send again). ``command_id`` is empty
    for a call that awaits its reply and was given none (it is never re-sent once it may
    have run, so never deduplicated).
    """

    agent: AgentId
    action: str
    subject: str
    body: bytes
    headers: dict[str, str]
    command_id: str
    correlation_id: str | None
    delivery: Delivery
    priority: Priority
    deadline_ms: int | None  # wall clock (ms since the epoch) after which the host does not start it
    timeout_s: float  # how long the caller waits
    want_reply: bool

    @property
    def is_call(self) -> bool:
        return self.delivery is Delivery.AT_MOST_ONCE

    @classmethod
    def build(
        cls,
        agent: AgentId,
        action: str,
        params: Mapping[str, Any] | None,
        options: SendOptions,
        *,
        subjects: Subjects,
        timeout_s: float,
        limit_bytes: int,
        new_id: Callable[[], str],
        wall_ms: int,
        chain: Mapping[str, str] | None = None,
        body: bytes | None = None,
        compress_min_bytes: int = 0,
    ) -> OutboundCommand:
        """``timeout_s``: the caller's wait (the options' or the client's default);
        ``limit_bytes``: the largest body the client and the server take; ``chain``: the
        call-chain headers of a call made inside an action (ADR 0042 section 7); ``body``: one
        that is no action (a signal, a cancel, a result query; ``action`` names it);
        ``compress_min_bytes``: compress a body at least this large and accept a compressed
        reply (ADR 0043); 0: neither."""
        if body is None:
            body = encode_body(action, params)
        if len(body) > limit_bytes:
            raise PayloadTooLarge(f"command of {len(body)} bytes exceeds the limit of {limit_bytes}")
        delivery = options.delivery
        # Few headers on purpose: they cost more than the rest of a small message (ADR 0031).
        # The delivery mode is implied by the subject and Nats-Msg-Id, the correlation id
        # defaults to the command id and JSON is the only content type. A call awaiting
        # its reply gets no command id unless the caller gives one: it is never re-sent
        # once it may have run (so never deduplicated), its reply comes back on its own
        # inbox, and the trace context ties its log lines together.
        headers: dict[str, str] = {}
        if options.command_id:
            if len(options.command_id) > MAX_COMMAND_ID_CHARS:
                raise ValueError(f"command_id longer than {MAX_COMMAND_ID_CHARS} characters")
            cmd_id = headers[H_COMMAND_ID] = options.command_id
        elif delivery is _AT_MOST_ONCE and options.want_reply:
            cmd_id = ""
        else:
            cmd_id = headers[H_COMMAND_ID] = new_id()
        # A durable command outlives the caller's wait unless the caller sets a deadline;
        # a call (at-most-once) nobody waits for any more is pointless, so it gets one.
        deadline_s = options.deadline_s
        if deadline_s is None and delivery is _AT_MOST_ONCE:
            deadline_s = timeout_s
        deadline_ms = None
        if deadline_s is not None:
            deadline_ms = wall_ms + int(deadline_s * 1000)
            headers[H_DEADLINE] = str(deadline_ms)
        correlation_id = options.correlation_id
        if correlation_id and correlation_id != cmd_id:
            headers[H_CORRELATION_ID] = correlation_id
        priority = options.priority
        if priority is not _NORMAL:
            headers[H_PRIORITY] = priority.value
        if options.stream:
            headers[H_STREAM] = "1"
        if delivery is _EXACTLY_ONCE:  # the stream drops a second copy within its window
            headers[H_MSG_ID] = cmd_id
        if chain:
            headers.update(chain)
        if compress_min_bytes:
            if len(body) >= compress_min_bytes:
                body = compress(body)
                headers[H_ENCODING] = ZSTD
            if options.want_reply:
                headers[H_ACCEPT_ENCODING] = ZSTD
        if delivery is _AT_MOST_ONCE:
            subject = subjects.call(agent.type, agent.id)
        elif priority is Priority.HIGH:  # the high lane overtakes a backlog (ADR 0058)
            subject = subjects.cmd_high(agent.type, agent.id)
        else:
            subject = subjects.cmd(agent.type, agent.id)
        return cls(
            agent=agent,
            action=action,
            subject=subject,
            body=body,
            headers=headers,
            command_id=cmd_id,
            correlation_id=correlation_id,
            delivery=delivery,
            priority=priority,
            deadline_ms=deadline_ms,
            timeout_s=timeout_s,
            want_reply=options.want_reply,
        )


def encode_body(action: str, params: Mapping[str, Any] | None) -> bytes:
    """The command's JSON body; ``InvalidParams`` when the parameters are not JSON."""
    # orjson writes plain JSON values itself; pydantic turns anything else (models,
    # sets, ...) into JSON values
    try:
        return orjson.dumps(
            {"action": action, "params": params or {}}, default=to_jsonable_python, option=orjson.OPT_NON_STR_KEYS
        )
    except (TypeError, ValueError) as exc:  # orjson.JSONEncodeError: e.g. an int past 64 bits
        raise InvalidParams(f"parameters of {action!r} cannot be written as JSON: {exc}") from None


def payload_limit(configured_bytes: int, server_max_payload: int) -> int:
    """The smaller of the configured limit and what the server takes (its max_payload,
    less room for the headers): nats-py's own MaxPayloadError is not a JetAgentsError.

    >>> payload_limit(256 * 1024, 1024 * 1024), payload_limit(256 * 1024, 64 * 1024)
    (262144, 61440)
    """
    if server_max_payload > HEADER_ROOM_BYTES:
        return min(configured_bytes, server_max_payload - HEADER_ROOM_BYTES)
    return configured_bytes
