"""The wire contract: subjects, header names and JSON bodies (pure, no I/O).

This module is the single source of the names documented in ``docs/wire-contract.md``
and ``docs/asyncapi.yaml``; tests check the three agree.
"""

from __future__ import annotations

import base64
from enum import StrEnum
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._errors import JetAgentsError, MalformedCommand, PayloadTooLarge

# -- headers -------------------------------------------------------------------------------
H_MSG_ID = "Nats-Msg-Id"
H_EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
H_REPLY_TO = "Agt-Reply-To"
H_COMMAND_ID = "Agt-Command-Id"
H_CORRELATION_ID = "Agt-Correlation-Id"
H_DELIVERY = "Agt-Delivery"
H_DEADLINE = "Agt-Deadline"
H_PRIORITY = "Agt-Priority"
H_DUPLICATE = "Agt-Duplicate"
H_EVENT_SEQ = "Agt-Event-Seq"
H_ERROR_CODE = "Agt-Error"
H_HOST = "Agt-Host"
H_CONTENT_TYPE = "Content-Type"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

CONTENT_TYPE_JSON = "application/json"


class Delivery(StrEnum):
    AT_MOST_ONCE = "at-most-once"
    AT_LEAST_ONCE = "at-least-once"
    EXACTLY_ONCE = "exactly-once"


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"


PRIORITY_RANK = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}


# -- subjects ------------------------------------------------------------------------------
class Subjects:
    """Subject names under a configurable root (default ``agt``)."""

    __slots__ = ("root",)

    def __init__(self, root: str = "agt") -> None:
        self.root = root

    def cmd(self, agent_type: str, agent_id: str) -> str:
        return f"{self.root}.cmd.{agent_type}.{agent_id}"

    def call(self, agent_type: str, agent_id: str) -> str:
        return f"{self.root}.call.{agent_type}.{agent_id}"

    def evt(self, agent_type: str, agent_id: str) -> str:
        return f"{self.root}.evt.{agent_type}.{agent_id}"

    def dlq(self, agent_type: str, agent_id: str) -> str:
        return f"{self.root}.dlq.{agent_type}.{agent_id}"

    def partition_filter(self, partition: int) -> str:
        return f"{self.root}.p.{partition}.>"

    @property
    def cmd_wildcard(self) -> str:
        return f"{self.root}.cmd.*.*"

    @property
    def call_wildcard(self) -> str:
        return f"{self.root}.call.*.*"

    @property
    def evt_wildcard(self) -> str:
        return f"{self.root}.evt.*.*"

    @property
    def dlq_wildcard(self) -> str:
        return f"{self.root}.dlq.>"

    def partition_transform_dest(self, partitions: int) -> str:
        return f"{self.root}.p.{{{{partition({partitions},1,2)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}"

    def sys(self, *tokens: str) -> str:
        return ".".join((self.root, "sys", *tokens))


# -- bodies --------------------------------------------------------------------------------
class CommandBody(BaseModel):
    """What a client publishes: ``{"action": "increment", "params": {"by": 2}}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    params: dict[str, Any] = Field(default_factory=dict)


class WireEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str
    data: dict[str, Any]


class Commit(BaseModel):
    """One message of an agent's event log: all events of one command, or none.

    ``n`` counts commits of this agent from 1 with no gap; ``cmd`` is the command id
    (the exactly-once record); ``cseq`` the command's sequence in the command stream (0
    for a call), for audit; ``result`` answers a re-sent command; ``own`` the writer's
    claim on the agent's partition (the claim's KV revision, increasing with every new
    owner; 0 without a cluster): a host that reads a larger ``own`` than its own claim
    in an agent's log knows another host owns the partition now and must not write.
    """

    model_config = ConfigDict(extra="forbid")

    n: int
    cmd: str
    action: str
    events: list[WireEvent]
    result: Any = None
    cseq: int = 0
    ts_ms: int = 0
    own: int = 0


def encode_commit(
    *, n: int, cmd: str, action: str, events: list[dict[str, Any]], result: Any, cseq: int, ts_ms: int, own: int
) -> bytes:
    """The JSON of ``Commit(...)``: the same fields in the same order as
    ``model_dump_json``, written by orjson (~5x cheaper, once per command on the host's
    hot path). ``events`` are ``{"type", "data"}`` dicts of JSON values. Anything orjson
    cannot write (an int beyond 64 bits, a non-string key) goes through the model."""
    body = {
        "n": n,
        "cmd": cmd,
        "action": action,
        "events": events,
        "result": result,
        "cseq": cseq,
        "ts_ms": ts_ms,
        "own": own,
    }
    try:
        return orjson.dumps(body)
    except TypeError:
        return Commit.model_validate(body).model_dump_json().encode()


def decode_command(data: bytes, max_bytes: int) -> CommandBody:
    """Check the size first, then parse; raise a typed error on anything wrong."""
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"payload of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        return CommandBody.model_validate_json(data)
    except ValidationError as exc:
        raise MalformedCommand(
            "command body must be a JSON object {action, params}",
            details=_short_errors(exc),
        ) from None


def _short_errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": [str(p) for p in err.get("loc", ())], "msg": err.get("msg", "")}
        for err in exc.errors(include_url=False, include_input=False)[:10]
    ]


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    return _short_errors(exc)


def encode_ok(result: Any) -> bytes:
    return orjson.dumps({"ok": True, "result": result})


def encode_error(err: JetAgentsError) -> bytes:
    return orjson.dumps({"ok": False, "error": err.to_wire()})


def encode_dead_letter(
    *,
    error: JetAgentsError,
    subject: str,
    headers: dict[str, str] | None,
    payload: bytes,
    host: str,
    ts_ms: int,
    stream_seq: int | None = None,
    deliveries: int | None = None,
) -> bytes:
    try:
        text: str | None = payload.decode()
    except UnicodeDecodeError:
        text = None
    return orjson.dumps(
        {
            "error": error.to_wire(),
            "subject": subject,
            "headers": headers or {},
            "payload": text if text is not None else base64.b64encode(payload).decode(),
            "payload_encoding": "utf8" if text is not None else "base64",
            "stream_seq": stream_seq,
            "deliveries": deliveries,
            "host": host,
            "ts_ms": ts_ms,
        }
    )


def parse_ack_subject(reply: str) -> tuple[int, int] | None:
    """``(deliveries, stream_seq)`` from a JetStream ack subject, both v1 and v2 forms."""
    tokens = reply.split(".")
    try:
        if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>
            return int(tokens[4]), int(tokens[5])
        if len(tokens) >= 12:  # $JS.ACK.<domain>.<acchash>.<stream>.<consumer>.<delivered>.<sseq>...
            return int(tokens[6]), int(tokens[7])
    except ValueError:
        return None
    return None
