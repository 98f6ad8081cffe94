"""The wire contract: subjects, header names and JSON bodies (pure, no I/O).

This module is the single source of the names documented in ``docs/wire-contract.md``
and ``docs/asyncapi.yaml``; tests check the three agree.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, Final

import orjson
from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, ValidationError, model_serializer

from .errors import JetAgentsError, MalformedCommand, PayloadTooLarge

# -- headers -------------------------------------------------------------------------------
H_MSG_ID: Final = "Nats-Msg-Id"
H_EXPECTED_LAST_SUBJECT_SEQ: Final = "Nats-Expected-Last-Subject-Sequence"
H_REPLY_TO: Final = "Agt-Reply-To"
H_COMMAND_ID: Final = "Agt-Command-Id"
H_CORRELATION_ID: Final = "Agt-Correlation-Id"
H_DELIVERY: Final = "Agt-Delivery"
H_DEADLINE: Final = "Agt-Deadline"
H_PRIORITY: Final = "Agt-Priority"
H_DUPLICATE: Final = "Agt-Duplicate"
H_EVENT_SEQ: Final = "Agt-Event-Seq"
H_ERROR_CODE: Final = "Agt-Error"
H_HOST: Final = "Agt-Host"
H_REMINDER: Final = "Agt-Reminder"  # on a reminder's schedule, copied onto each firing (ADR 0042 §5)
H_REMINDER_EVERY: Final = "Agt-Reminder-Every"  # an @every reminder's interval (s), to count merged firings
H_CONTENT_TYPE: Final = "Content-Type"
# call chains (ADR 0042 section 7): the chain's root command id, the agents waiting on a call
H_CALL_CHAIN: Final = "Agt-Call-Chain"
H_CALL_PATH: Final = "Agt-Call-Path"
# streamed output (ADR 0042 section 6): the command opts in; what each AGT_OUT message is
H_STREAM: Final = "Agt-Stream"
H_STREAM_KIND: Final = "Agt-Stream-Kind"
H_CHUNK: Final = "Agt-Chunk"
H_STEP: Final = "Agt-Step"
H_TTL: Final = "Nats-TTL"
# payload compression (ADR 0043): the body's encoding, and the encodings a sender reads in its reply
H_ENCODING: Final = "Agt-Encoding"
H_ACCEPT_ENCODING: Final = "Agt-Accept-Encoding"
TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"

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

# the high-priority lane (ADR 0058): agt.cmd.<type>.<id>.high, stream <ROOT>_CMDH, stored as
# <root>.ph.<partition>.<type>.<id>, one more consumer per partition that the host drains first
HIGH_LANE_TOKEN: Final = "high"
HIGH_STORED_TOKEN: Final = "ph"


def is_high_lane(stored_subject: str) -> bool:
    """Whether a stored command subject (``<root>.ph.<p>.<type>.<id>``) is the high lane's.

    >>> is_high_lane("agt.ph.3.counter.c1"), is_high_lane("agt.p.3.counter.c1"), is_high_lane("x")
    (True, False, False)
    """
    parts = stored_subject.rsplit(".", 4)
    return len(parts) == 5 and parts[1] == HIGH_STORED_TOKEN


# -- subjects ------------------------------------------------------------------------------
class Subjects:
    """Subject names under a configurable root (default ``agt``)."""

    __slots__ = ("root",)

    def __init__(self, root: str = "agt") -> None:
        self.root = root

    # Streams and buckets are named after the root too, its "-" made "_": ``AGT_CMD``, ``agt_snap``.
    @property
    def stream_prefix(self) -> str:
        return self.root.upper().replace("-", "_")

    def stream(self, kind: str) -> str:
        return f"{self.stream_prefix}_{kind}"

    def bucket(self, kind: str) -> str:
        return f"{self.root}_{kind}".replace("-", "_")

    def cmd(self, agent_type: str, agent_id: str) -> str:
        return f"{self.root}.cmd.{agent_type}.{agent_id}"

    def call(self, agent_type: str, agent_id: str) -> str:
        return f"{self.root}.call.{agent_type}.{agent_id}"

    def evt(self, agent_type: str, agent_id: str) -> str:
        return f"{self.root}.evt.{agent_type}.{agent_id}"

    def dlq(self, agent_type: str, agent_id: str) -> str:
        return f"{self.root}.dlq.{agent_type}.{agent_id}"

    def out(self, agent_type: str, agent_id: str, ctoken: str) -> str:
        """A streaming command's output subject (``_core/outstream.ctoken``)."""
        return f"{self.root}.out.{agent_type}.{agent_id}.{ctoken}"

    def partition_filter(self, partition: int) -> str:
        return f"{self.root}.p.{partition}.>"

    def cmd_high(self, agent_type: str, agent_id: str) -> str:
        """A high-priority durable command's subject (ADR 0058)."""
        return f"{self.root}.cmd.{agent_type}.{agent_id}.{HIGH_LANE_TOKEN}"

    def high_partition_filter(self, partition: int) -> str:
        return f"{self.root}.{HIGH_STORED_TOKEN}.{partition}.>"

    @property
    def cmd_high_wildcard(self) -> str:
        return f"{self.root}.cmd.*.*.{HIGH_LANE_TOKEN}"

    def high_transform_dest(self, partitions: int) -> str:
        # the normal lane's transform with the lane's stored token: the same partition function
        normal = self.partition_transform_dest(partitions)
        return f"{self.root}.{HIGH_STORED_TOKEN}." + normal[len(self.root) + 3 :]

    def rem(self, agent_type: str, agent_id: str, name: str) -> str:
        """A schedule's subject (ADR 0042 section 5): one reminder or host timer of an agent."""
        return f"{self.root}.rem.{agent_type}.{agent_id}.{name}"

    def rem_of(self, agent_type: str, agent_id: str) -> str:
        """Every schedule of one agent (a filter)."""
        return f"{self.root}.rem.{agent_type}.{agent_id}.*"

    @property
    def cmd_wildcard(self) -> str:
        return f"{self.root}.cmd.*.*"

    @property
    def rem_wildcard(self) -> str:
        return f"{self.root}.rem.*.*.*"

    @property
    def call_wildcard(self) -> str:
        return f"{self.root}.call.*.*"

    @property
    def evt_wildcard(self) -> str:
        return f"{self.root}.evt.*.*"

    @property
    def out_wildcard(self) -> str:
        return f"{self.root}.out.*.*.*"

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


# ``CommandBody.model_validate_json`` without its Python wrapper (which only checks arguments
# this call never passes): every command's body, and the wrapper was 40 % of the parse
_validate_command_json: Callable[[bytes], CommandBody] = CommandBody.__pydantic_validator__.validate_json

_NAME = r"^[A-Za-z0-9_-]+$"
_CMD_ID = Field(min_length=1, max_length=256)


class SignalBody(BaseModel):
    """A signal to an agent (ADR 0042 §3): ``{"signal": "approve", "payload": {...},
    "to": "m1"}``; ``to`` (optional) names the waiting command, else the oldest waiter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    signal: str = Field(min_length=1, max_length=128, pattern=_NAME)
    payload: Any = None
    to: str | None = Field(default=None, min_length=1, max_length=256)


class TimerRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    for_: str = Field(alias="for", min_length=1, max_length=256)
    i: int = Field(ge=0)


class TimerBody(BaseModel):
    """A wait's timer firing (published by the host as a server schedule):
    ``{"timer": {"for": "m1", "i": 3}}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timer: TimerRef


class CancelBody(BaseModel):
    """Cancel a command (ADR 0042 §8): ``{"cancel": "m1"}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cancel: str = _CMD_ID


class ResultBody(BaseModel):
    """Ask for the outcome of a command (a call): ``{"result": "m1"}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    result: str = _CMD_ID


class ResumeBody(BaseModel):
    """Run a blocked journal again (ADR 0042 §2, ``jetagents resume``): ``{"resume": "m1"}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resume: str = _CMD_ID


class KickBody(BaseModel):
    """Run what an agent has runnable (ADR 0042 §3, the kick): ``{"kick": {}}``, fired by the
    host's server schedule when a host died while running it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kick: dict[str, Any] = Field(max_length=0)


# the other command bodies, by their one distinguishing key
CONTROL_BODIES: Final[dict[str, type[BaseModel]]] = {
    "signal": SignalBody,
    "timer": TimerBody,
    "cancel": CancelBody,
    "result": ResultBody,
    "kick": KickBody,
    "resume": ResumeBody,
}
Body = CommandBody | SignalBody | TimerBody | CancelBody | ResultBody | KickBody | ResumeBody

# Agt-Status on the reply of a command that did not finish: its action is suspended on a
# wait, or it was parked behind one (ADR 0042 §§3-4)
H_STATUS: Final = "Agt-Status"


class WireEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str
    data: dict[str, Any]
    v: int | None = None  # the event's schema version when it is not 1 (ADR 0052)

    @model_serializer(mode="wrap")
    def _without_v1(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # version 1 is written as no "v" at all, as the host writes it (wire_events)
        out: dict[str, Any] = handler(self)
        if out.get("v") is None:
            out.pop("v", None)
        return out


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
    # a journal entry of a durable action (ADR 0042); absent from every other commit
    j: dict[str, Any] | None = None
    # a reset commit (ADR 0053): the state as of ``reset["seq"]`` in the snapshot format; a
    # replay takes the state from it and skips unreadable messages before it
    reset: dict[str, Any] | None = None


def encode_commit(
    *,
    n: int,
    cmd: str,
    action: str,
    events: list[dict[str, Any]],
    result: Any,
    cseq: int,
    ts_ms: int,
    own: int,
    j: Any = None,
) -> bytes:
    """The JSON of ``Commit(...)``: the same fields in the same order as
    ``model_dump_json``, written by orjson (~5x cheaper, once per command on the host's
    hot path). ``events`` are ``{"type", "data"}`` dicts of JSON values. ``j``, a journal
    entry of a durable action (ADR 0042), is written only when given. Anything orjson
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
    if j is not None:
        body["j"] = j
    try:
        return orjson.dumps(body)
    except TypeError:
        return (
            Commit.model_validate(body).model_dump_json(exclude={"reset"} if j is not None else {"j", "reset"}).encode()
        )


def decode_command(data: bytes, max_bytes: int) -> Body:
    """Check the size first, then parse; raise a typed error on anything wrong. An action
    (the common body) is tried first; a signal, timer, cancel or result body only when the
    object has no ``action``."""
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"payload of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        return _validate_command_json(data)
    except ValidationError as exc:
        first = exc
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and "action" not in doc:
        for key, model in CONTROL_BODIES.items():
            if key in doc:
                try:
                    return model.model_validate(doc)  # type: ignore[return-value]
                except ValidationError as exc:
                    first = exc
                break
    raise MalformedCommand(
        "command body must be a JSON object {action, params} (or signal, timer, cancel, result, kick, resume)",
        details=validation_details(first),
    ) from None


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    """A validation error's first ten errors as the ``details`` of a typed error: where and
    what, never the input (it is the sender's)."""
    return [
        {"loc": [str(p) for p in err.get("loc", ())], "msg": err.get("msg", "")}
        for err in exc.errors(include_url=False, include_input=False)[:10]
    ]


def encode_ok(result: Any) -> bytes:
    return orjson.dumps({"ok": True, "result": result})


def encode_error(err: JetAgentsError) -> bytes:
    return orjson.dumps({"ok": False, "error": err.to_wire()})


def encode_status(status: str, command_id: str, extra: dict[str, Any]) -> bytes:
    """The body of a reply that is no result yet (sent with ``Agt-Status``, wire contract 4)."""
    return orjson.dumps({"ok": True, "status": status, "command_id": command_id, **extra})


DEAD_LETTER_MIN_BYTES = 16 * 1024
_DL_HEADERS = 64  # headers kept in a dead letter
_DL_NAME_CHARS = 256
_DL_VALUE_CHARS = 4096
_DL_SUBJECT_CHARS = 1024
_DL_ERROR_CHARS = 2048


def _dl_text(value: Any, limit: int) -> tuple[str, bool]:
    """``value`` as JSON-safe text of at most ``limit`` characters, and whether it was cut.
    A ``str`` subclass (nats-py's ``Header`` enum) counts as its plain value."""
    s = str.__str__(value) if isinstance(value, str) else str(value)
    cut = len(s) > limit
    if cut:
        s = s[:limit]
    try:
        s.encode()
    except UnicodeEncodeError:  # lone surrogates: orjson refuses them
        s = s.encode("utf-8", "backslashreplace").decode()
    return s, cut


def _dl_error(error: JetAgentsError) -> dict[str, Any]:
    wire = error.to_wire()
    try:
        if len(orjson.dumps(wire)) <= 4 * _DL_ERROR_CHARS:
            return wire
    except TypeError:
        pass
    short = {k: v for k, v in wire.items() if k != "details"}
    short["message"] = _dl_text(wire.get("message", ""), _DL_ERROR_CHARS)[0]
    if "reason" in short:
        short["reason"] = _dl_text(short["reason"], 128)[0]
    return short


def encode_dead_letter(
    *,
    error: JetAgentsError,
    subject: str,
    headers: Mapping[str, str] | None,
    payload: bytes,
    host: str,
    ts_ms: int,
    stream_seq: int | None = None,
    deliveries: int | None = None,
    max_bytes: int = 1024 * 1024,
    keep_bytes: int | None = None,
) -> bytes:
    """A dead letter of at most ``max_bytes`` bytes, whatever the input (wire contract §8).

    Subject, header names and values and the error are cut to fixed lengths; the payload
    is kept as UTF-8 text when that fits once JSON-escaped, else as base64 of as many
    leading bytes as fit (at most ``keep_bytes``). ``payload_bytes`` and ``payload_sha256``
    describe the whole original payload, ``truncated`` says whether anything was cut.
    """
    if max_bytes < DEAD_LETTER_MIN_BYTES:
        raise ValueError(f"max_bytes must be at least {DEAD_LETTER_MIN_BYTES}")
    truncated = False
    subj, cut = _dl_text(subject, _DL_SUBJECT_CHARS)
    truncated |= cut
    hdrs: dict[str, str] = {}
    for i, (k, v) in enumerate((headers or {}).items()):
        if i >= _DL_HEADERS:
            truncated = True
            break
        name, cut_k = _dl_text(k, _DL_NAME_CHARS)
        value, cut_v = _dl_text(v, _DL_VALUE_CHARS)
        truncated |= cut_k or cut_v
        hdrs[name] = value
    doc: dict[str, Any] = {
        "error": _dl_error(error),
        "subject": subj,
        "headers": hdrs,
        "payload": "",
        "payload_encoding": "base64",  # the longer of the two while measuring
        "stream_seq": stream_seq,
        "deliveries": deliveries,
        "host": _dl_text(host, 128)[0],
        "ts_ms": ts_ms,
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "truncated": True,
    }
    meta = len(orjson.dumps(doc))
    if meta > max_bytes // 4:  # escaped headers (up to 6 bytes a character): keep the rest
        doc["headers"] = {}
        truncated = True
        meta = len(orjson.dumps(doc))
    room = max_bytes - meta
    raw = payload if keep_bytes is None else payload[:keep_bytes]
    kept: str | None = None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        text = None
    if text is not None and len(orjson.dumps(text)) - 2 <= room:
        kept, encoding = text, "utf8"
    else:
        raw = raw[: (room // 4) * 3]
        kept, encoding = base64.b64encode(raw).decode(), "base64"
    truncated |= len(raw) < len(payload)
    doc["payload"], doc["payload_encoding"], doc["truncated"] = kept, encoding, truncated
    return orjson.dumps(doc)


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
