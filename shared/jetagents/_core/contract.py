"""The JSON Schemas of ``docs/asyncapi.yaml`` (``components.schemas``), built from models.

The bodies the host parses or writes through a model (``CommandBody``, ``Commit``) come
from ``_wire``; the ones it writes as plain dicts (replies, dead letters, snapshots) are
described by the models below, and a test checks real messages of a running host against
the published schemas, so a field added on one side and not the other fails a test.

``ops/scripts/asyncapi-schemas`` writes :func:`schemas` into the document; a test fails
when the committed document differs from it.

Bodies a host *sends* are open (no ``additionalProperties: false``): a reader ignores a
property it does not know, so a newer host does not break an older client. The command
body a host *receives* is closed, as the host refuses unknown properties.

>>> sorted(schemas())[:3]
['CommandBody', 'CommandId', 'Commit']
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from .errors import JetAgentsError
from .pubsub import Message, Subscription
from .wire import (
    CancelBody,
    CommandBody,
    Commit,
    KickBody,
    Priority,
    ResultBody,
    ResumeBody,
    SignalBody,
    TimerBody,
    WireEvent,
)

REF_TEMPLATE = "#/components/schemas/{model}"


def _error_codes() -> list[str]:
    out: set[str] = set()
    todo: list[type[JetAgentsError]] = JetAgentsError.__subclasses__()
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        out.add(cls.code)
    return sorted(out - {"jetstream"})  # library-internal, never on the wire


class Error(BaseModel):
    """Why a command was refused (JetAgentsError.to_wire())."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(description="Clients should treat an unknown code as internal.", examples=_error_codes())
    message: str
    retryable: bool
    details: Any = Field(default=None, description="Structured detail; validation errors give a list of {loc, msg}.")
    reason: str | None = Field(default=None, description='Only with code "domain"; the agent\'s name for the refusal.')


class OkReply(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ok: Literal[True]
    result: Any = Field(description="The action's result (any JSON value).")


class StatusReply(BaseModel):
    """The reply of a command that has no result yet (header Agt-Status; ADR 0042)."""

    model_config = ConfigDict(extra="forbid")

    ok: Literal[True]
    status: Literal["suspended", "queued", "running", "blocked", "unknown"] = Field(
        description="suspended: its action waits (signal, timer); queued: parked behind a suspended action;"
        " running, blocked, unknown: answers to a result query."
    )
    command_id: str
    waiting: Any = Field(default=None, description='suspended: {"signal": name | "sleep": true, "until_ms": ms|null}.')
    behind: str | None = Field(default=None, description="queued: the suspended command it waits behind.")


class ErrorReply(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ok: Literal[False]
    error: Error


class DeadLetter(BaseModel):
    """A command refused for good: a message of stream AGT_DLQ (_wire.encode_dead_letter)."""

    model_config = ConfigDict(extra="forbid")

    error: Error
    subject: str = Field(description="Subject as received (agt.p.<partition>.<type>.<id> or agt.call.<type>.<id>).")
    headers: dict[str, str]
    payload: str = Field(description="Command body cut to the payload limit, as text or base64.")
    payload_encoding: Literal["utf8", "base64"]
    payload_bytes: int = Field(description="Length of the command body as received, in bytes.")
    payload_sha256: str = Field(description="SHA-256 (hex) of the whole body as received.")
    truncated: bool = Field(description="True when payload holds only a prefix of the body.")
    stream_seq: int | None
    deliveries: int | None
    host: str
    ts_ms: int


class Snapshot(BaseModel):
    """Value of key <type>.<id> in KV bucket agt_snap (not a channel; for reference)."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1, 2]
    state: dict[str, Any]
    seq: int = Field(description="AGT_EVT sequence of the last commit the state includes.")
    n: int = Field(description="Commit number of that commit.")
    own: int = Field(default=0, description="The writer's claim revision (Commit.own).")
    records: list[list[Any]] = Field(
        description="[command id, commit sequence, result] of recent commands; a fourth element false:"
        " the result is the error a journal closed with."
    )
    journals: dict[str, Any] | None = Field(
        default=None, description="v 2: the open journals of durable steps, by command id (wire contract 9)."
    )
    sv: int | None = Field(default=None, description="The state's schema version when it is not 1 (ADR 0052).")
    inbox: list[dict[str, Any]] | None = Field(
        default=None, description="v 2: signals buffered with nobody waiting (their inbox entries, with cmd)."
    )


class AgentQuarantinedEvent(BaseModel):
    """Core NATS message on agt.sys.agent.quarantined (wire contract 9.1, ADR 0053): a host
    quarantined an agent that kept failing activation. Not stored: watch it live."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["agent.quarantined"]
    host: str = Field(description="The host that quarantined it (and wrote its record).")
    ts_ms: int = Field(description="When, unix milliseconds (the record's ts_ms).")
    agent: str = Field(description="<type>/<id>.")
    reason: str = Field(description="Why its last activation failed (at most 1,000 characters).")
    code: str = Field(description="The error code of that failure (internal: its log or snapshot).")
    failures: int = Field(description="Failed activations in a row that led to it (quarantine_after).")


class AgentReleasedEvent(BaseModel):
    """Core NATS message on agt.sys.agent.released: an operator released a quarantined agent
    (deleted its record through jetagents); its next command activates it again."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["agent.released"]
    host: str = Field(description="The host that had quarantined it (from the record; empty if unknown).")
    ts_ms: int = Field(description="When it was released, unix milliseconds (the releaser's clock).")
    agent: str = Field(description="<type>/<id>.")
    by: str = Field(description="Who released it, as the operator said (empty: not said).")
    reason: str = Field(description="The record's reason: why it had been quarantined.")
    quarantined_ms: int = Field(description="When it had been quarantined (the record's ts_ms; 0 if unknown).")


_RECEIVED: tuple[type[BaseModel], ...] = (
    CommandBody,
    SignalBody,
    TimerBody,
    CancelBody,
    ResultBody,
    KickBody,
    ResumeBody,
)
_SENT: tuple[type[BaseModel], ...] = (
    WireEvent,
    Commit,
    Error,
    OkReply,
    StatusReply,
    ErrorReply,
    DeadLetter,
    Snapshot,
    Message,  # params.msg of the command a topic message becomes (wire contract 13)
    Subscription,  # a value of KV agt_subs (not a channel; for reference)
    AgentQuarantinedEvent,  # lifecycle events (wire contract 9.1)
    AgentReleasedEvent,
)

# descriptions of fields whose models live in _wire (kept free of documentation there)
_DESCRIBE: dict[str, dict[str, str]] = {
    "CommandBody": {"params": "The action's named arguments, validated by the agent type."},
    "Commit": {
        "n": "Commit number of this agent, 1, 2, 3 ... without gaps.",
        "cmd": "Command id (the exactly-once record).",
        "result": "The reply's result, returned again to a re-sent command.",
        "cseq": "The command's sequence in AGT_CMD (0 for a call).",
        "ts_ms": "Host wall clock at commit, unix milliseconds.",
        "own": "The writer's claim on the agent's partition (its KV revision; 0 without a cluster).",
        "j": "A journal entry of an action with durable steps (k: step, wait, signal, timeout, inbox, park,"
        " blocked or end; wire contract 7.1), or a reminder's firing (k: fire; wire contract 15); absent"
        " from other commits.",
    },
    "SignalBody": {
        "signal": "The signal's name: resumes the oldest action waiting for it, else buffered.",
        "payload": "Any JSON value: what wait_for returns.",
        "to": "The waiting command's id (default: the oldest waiter of that name).",
    },
    "CancelBody": {"cancel": "The id of the command to cancel."},
    "KickBody": {"kick": "An empty object."},
    "ResumeBody": {"resume": "The id of the command whose blocked journal to run again."},
    "ResultBody": {"result": "The id of the command whose outcome is asked (a call)."},
}

# schemas of headers and channel parameters (strings, not models)
_SCALARS: dict[str, dict[str, Any]] = {
    "Token": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"},
    "CommandId": {
        "type": "string",
        "maxLength": 256,
        "description": "The key of the host's exactly-once record. Defaults to Nats-Msg-Id.",
    },
    "DeadlineMs": {
        "type": "string",
        "pattern": "^[0-9]+$",
        "description": "Unix time in milliseconds after which the command must not start.",
    },
    "Priority": {"type": "string", "enum": [p.value for p in Priority], "default": Priority.NORMAL.value},
    "Traceparent": {"type": "string", "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"},
}


def _draft07(node: Any) -> Any:
    """AsyncAPI 3.0 schemas are JSON Schema draft 07: tuples as ``items: [...]``, no
    ``prefixItems``; property titles dropped (pydantic repeats the field name)."""
    if isinstance(node, list):
        return [_draft07(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _draft07(v) for k, v in node.items()}
    if "prefixItems" in out:
        out["items"] = out.pop("prefixItems")
        out["additionalItems"] = False
    if isinstance(out.get("properties"), dict):
        out["properties"] = {
            name: {k: v for k, v in prop.items() if k != "title"} for name, prop in out["properties"].items()
        }
    return out


def schemas() -> dict[str, Any]:
    """``components.schemas`` of ``docs/asyncapi.yaml``, sorted by name."""
    models = [(m, "validation") for m in (*_RECEIVED, *_SENT)]
    _, top = models_json_schema(models, ref_template=REF_TEMPLATE)  # type: ignore[arg-type]
    out: dict[str, Any] = copy.deepcopy(_SCALARS)
    sent = {m.__name__ for m in _SENT}
    for name, schema in top["$defs"].items():
        schema = _draft07(schema)
        schema.pop("title", None)
        for field, text in _DESCRIBE.get(name, {}).items():
            schema["properties"][field]["description"] = text
        if name in sent:
            schema.pop("additionalProperties", None)
        out[name] = schema
    return dict(sorted(out.items()))
