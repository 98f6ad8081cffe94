"""Reading agents' event logs as one ordered feed (ADR 0057): which subjects a reader asks
for, and a stored commit as a ``LogCommit`` whose events are decoded with the agent class's
event types and upcasters (ADR 0052) when the reader knows the class, raw otherwise.

Pure: the adapter (``jetagents._nats.log_tail``) reads the messages, this decides what they mean.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from .agent import Agent, AgentSpec, spec_of
from .errors import InvalidParams
from .ids import AgentId, validate_token
from .upcast import read_event
from .wire import Commit, WireEvent

__all__ = ["Decoders", "LogCommit", "LogEvent", "log_filter", "parse_commit"]


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One event of a commit: ``data`` is the event class's instance when the reader knows
    the agent class, else the raw JSON dict (``raw`` is always the stored ``{"type", "data"}``)."""

    type: str
    data: Any
    raw: WireEvent


@dataclass(frozen=True, slots=True)
class LogCommit:
    """One commit of one agent's log: ``seq`` is its sequence in the event stream (the
    position a reader resumes after), ``n`` its number in the agent's log."""

    seq: int
    agent: AgentId
    n: int
    cmd: str
    action: str
    ts_ms: int
    events: tuple[LogEvent, ...]
    commit: Commit


def log_filter(events_subject: str, agent_type: str | None, agent_id: str | None) -> str:
    """The subject a reader asks the stream for: every agent (``agt.evt.*.*``), one type
    (``agt.evt.counter.*``) or one agent (``agt.evt.counter.c1``)."""
    if agent_id is not None and agent_type is None:
        raise InvalidParams("an agent id needs its agent type")
    t = "*" if agent_type is None else validate_token(agent_type, "agent type")
    i = "*" if agent_id is None else validate_token(agent_id, "agent id")
    return f"{events_subject}.{t}.{i}"


class Decoders:
    """Agent classes a reader knows, by type name: their events come out as models."""

    def __init__(self, classes: Iterable[type[Agent[Any]]] = ()) -> None:
        self._specs: dict[str, AgentSpec] = {}
        for cls in classes:
            spec = spec_of(cls)
            self._specs[spec.type_name] = spec

    def event(self, agent: AgentId, wire: WireEvent) -> LogEvent:
        spec = self._specs.get(agent.type)
        applier = spec.appliers.get(wire.type) if spec is not None else None
        if spec is None or applier is None:
            return LogEvent(wire.type, wire.data, wire)
        return LogEvent(wire.type, read_event(applier.event_cls, wire, spec.upcasters, agent), wire)


def parse_commit(seq: int, subject: str, body: bytes, decoders: Decoders, events_subject: str) -> LogCommit | None:
    """The commit stored at ``seq`` on ``subject``; None when the message is not a commit
    (not JSON, not the commit format, not an event subject): readers skip those, as a replay
    skips unreadable messages (wire contract section 7)."""
    prefix = events_subject + "."
    if not subject.startswith(prefix):
        return None
    agent_type, _, agent_id = subject[len(prefix) :].partition(".")
    if not agent_type or not agent_id or "." in agent_id:
        return None
    try:
        commit = Commit.model_validate(_json(body))
    except (ValidationError, orjson.JSONDecodeError):
        return None
    aid = AgentId(agent_type, agent_id)
    events = tuple(decoders.event(aid, e) for e in commit.events)
    return LogCommit(seq, aid, commit.n, commit.cmd, commit.action, commit.ts_ms, events, commit)


def _json(body: bytes) -> Mapping[str, Any]:
    doc = orjson.loads(body)
    if not isinstance(doc, dict):
        raise orjson.JSONDecodeError("not an object", "", 0)
    return doc
