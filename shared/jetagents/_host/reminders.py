"""Reminders on the host (ADR 0042 section 5): ``Agent.remind`` and the client's ``_remind``.

A reminder is a schedule the server holds on ``<root>.rem.<type>.<id>.<name>`` whose firings
are commands to its agent (``{"action", "params"}`` with header ``Agt-Reminder: <name>``).
Everything a reminder says is checked here before anything is published (its name, the
pattern, the action it fires, that action's parameters, strictly), so bad input is one typed
error and nothing is scheduled. Inside an action, ``remind`` and ``cancel_reminder`` are
journaled steps (``remind:<name>``, ``unremind:<name>``) whose key is the schedule's
``Nats-Msg-Id``: a re-run neither repeats nor loses them.

Clients may not publish schedules (ops/nats/accounts.conf), so they ask the agent's host with
three reserved actions, answered like any action: ``_remind`` (``{"name", "action", "params",
"at" | "every" | "cron", "tz"}``), ``_unremind`` (``{"name"}``) and ``_reminders`` (``{}``,
read-only). A firing is processed once: its command id is the host's ``s<cepoch>-<seq>`` and
it always writes a commit (``j: {"k": "fire", ...}``), so a redelivery is answered from the
record (``fire_entry``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr

from .._core.agent import ActionSpec, Agent, AgentSpec
from .._core.command import Command
from .._core.errors import InvalidParams, MalformedCommand, Unavailable
from .._core.ids import is_valid_token
from .._core.journal import effect_key, end_entry
from .._core.schedules import (
    H_SCHEDULE,
    H_SCHEDULE_NEXT,
    H_SCHEDULER,
    Pattern,
    check_reminder_name,
    every_s_of,
    missed_between,
    pattern_of,
)
from .._core.wire import H_REMINDER, H_REMINDER_EVERY, Subjects
from .ports import Schedule, Schedules

FIRE: Final = "fire"
# the reserved actions a client sends (the reminder's own action names never start with "_")
REMIND, UNREMIND, LIST = "_remind", "_unremind", "_reminders"
BUILTINS: Final = frozenset({REMIND, UNREMIND, LIST})


@dataclass(frozen=True, slots=True)
class Reminder:
    """A checked reminder, ready to publish."""

    name: str
    pattern: Pattern
    action: str
    params: dict[str, Any]

    def body(self) -> bytes:
        return orjson.dumps({"action": self.action, "params": self.params})


@dataclass(frozen=True, slots=True)
class Firing:
    """What ``Agent.reminder`` shows the action a reminder fired: its name, the server's
    next scheduled time (RFC 3339, or ``purge`` for the last firing of an ``@at``)."""

    name: str
    next: str = ""
    missed: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)


def firing_of(cmd: Command, agent: Agent[Any]) -> Firing | None:
    """The reminder a durable command is a firing of, or None. A firing carries the
    schedule's ``Agt-Reminder`` and the server's ``Nats-Scheduler``; ``missed`` counts the
    scheduled times of an ``@every`` reminder merged into it since the agent's last firing
    of it (0 when unknown: the first, or the last one only in a snapshot)."""
    hdrs = cmd.headers
    if not cmd.durable or not hdrs:
        return None
    name = hdrs.get(H_REMINDER)
    if not name or H_SCHEDULER not in hdrs:
        return None
    nxt = (hdrs.get(H_SCHEDULE_NEXT) or "")[:64]
    last = getattr(agent, "_fired", {}).get(name[:64])
    return Firing(name[:64], nxt, missed_between(last, nxt, hdrs.get(H_REMINDER_EVERY)))


def fire_entry(firing: Firing, i: int) -> dict[str, Any]:
    """The ``j`` of the commit a firing always writes (it closes the firing's command)."""
    return {"i": i, "k": FIRE, "reminder": firing.name, "next": firing.next, "missed": firing.missed}


def closing_entry(firing: Firing | None, journaled: bool, i: int) -> dict[str, Any] | None:
    """The ``j`` of a command's closing commit: ``fire`` for a firing, ``end`` for a
    journaled action, none for any other."""
    if firing is not None:
        return fire_entry(firing, i)
    return end_entry(i) if journaled else None


def stray_schedule(cmd: Command, root: str) -> MalformedCommand | None:
    """Why a durable command pulled from the stream is a client's doing with the stream's
    schedules, or None (ADR 0042 section 5, "Schedules only from hosts"). ``AGT_CMD`` allows
    schedules on every subject (reminders need them; the server cannot be told which subjects,
    nor turn them off again), so whoever may send commands may store one:

    * the schedule itself (``Nats-Schedule`` on a command subject): refused as it arrives,
      and acknowledging the refusal deletes it, which stops it;
    * a firing of one (``Nats-Scheduler`` names no reminder subject of this agent,
      ``<root>.rem.<type>.<id>.<name>``, where only hosts publish): refused, never run, also
      those that piled up while no host ran.

    >>> from jetagents._core.command import Kind, parse_command
    >>> def cmd(h): return parse_command(Kind.STREAM, "agt.p.1.counter.c", h, b"{}", reply=None,
    ...     agent_type="counter", agent_id="c", partition=1, received=0.0, cepoch="0", reply_prefixes=[])
    >>> stray_schedule(cmd({"Nats-Scheduler": "agt.rem.counter.c.tick"}), "agt") is None
    True
    >>> stray_schedule(cmd({"Nats-Scheduler": "agt.p.3.counter.evil"}), "agt").code
    'malformed'
    """
    hdrs = cmd.headers
    if not cmd.durable or not hdrs:
        return None
    if H_SCHEDULE in hdrs:
        return MalformedCommand("a message schedule is not a command: only hosts schedule (reminders)")
    scheduler = hdrs.get(H_SCHEDULER)
    if scheduler is None:
        return None
    prefix = f"{root}.rem.{cmd.agent_type}.{cmd.agent_id}."
    if scheduler.startswith(prefix) and is_valid_token(scheduler[len(prefix) :]):
        return None
    return MalformedCommand(f"a firing of a schedule no host made ({scheduler[:200]!r})")


def unscheduled_body(cmd: Command) -> bytes:
    """The command's body, unless it is a schedule someone stored on a command subject (the
    stream's schedule flag covers every subject): refused then, and acknowledging the refusal
    removes it (wire contract 15)."""
    if cmd.durable and H_SCHEDULE in cmd.headers:
        raise MalformedCommand("a message schedule is not a command")
    return cmd.body


def check(
    spec: AgentSpec,
    name: object,
    action: object,
    params: object,
    *,
    at: dt.datetime | int | None = None,
    every: object = None,
    cron: object = None,
    tz: object = None,
) -> Reminder:
    """A reminder of an agent of ``spec``, or ``InvalidParams``/``UnknownAction``."""
    checked = check_reminder_name(name)
    if not isinstance(action, str):
        raise InvalidParams("a reminder's action must be the name of one of the agent's actions")
    target: ActionSpec = spec.action(action)
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InvalidParams("a reminder's params must be a JSON object")
    target.validate_params(params)  # strictly, as the firing will be: refused now, not at each firing
    return Reminder(checked, pattern_of(at=at, every=every, cron=cron, tz=tz), action, params)


class Reminders:
    """The host's reminders over its ``Schedules`` port."""

    __slots__ = ("_schedules", "_subjects")

    def __init__(self, subjects: Subjects, schedules: Schedules) -> None:
        self._subjects = subjects
        self._schedules = schedules

    async def publish(self, agent_type: str, agent_id: str, r: Reminder, msg_id: str | None) -> dict[str, Any]:
        await self._schedules.schedule(
            self._subjects.rem(agent_type, agent_id, r.name),
            r.pattern,
            self._subjects.cmd(agent_type, agent_id),
            r.body(),
            headers={H_REMINDER: r.name, **_every_header(r.pattern)},
            msg_id=msg_id,
        )
        return describe(r.name, r.pattern, r.action, r.params)

    async def cancel(self, agent_type: str, agent_id: str, name: str) -> None:
        await self._schedules.cancel(self._subjects.rem(agent_type, agent_id, check_reminder_name(name)))

    async def list(self, agent_type: str, agent_id: str) -> list[dict[str, Any]]:
        """The agent's reminders (its host timers, named ``_…``, are not listed)."""
        out = []
        for s in await self._schedules.list(self._subjects.rem_of(agent_type, agent_id)):
            name = s.subject.rpartition(".")[2]
            if not name.startswith("_"):
                out.append(_listed(name, s))
        return out


def _every_header(pattern: Pattern) -> dict[str, str]:
    every_s = every_s_of(pattern.schedule)
    return {} if every_s is None else {H_REMINDER_EVERY: str(every_s)}


def describe(name: str, pattern: Pattern, action: str, params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "schedule": pattern.schedule, "action": action, "params": params}
    if pattern.tz:
        out["tz"] = pattern.tz
    return out


def _listed(name: str, s: Schedule) -> dict[str, Any]:
    try:
        body = orjson.loads(s.body)
    except orjson.JSONDecodeError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    return describe(name, Pattern(s.pattern, s.tz), str(body.get("action", "")), body.get("params") or {})


class BoundReminders:
    """``Reminders`` for one agent (its ``ctx.reminders``)."""

    __slots__ = ("_agent_id", "_reminders", "_spec")

    def __init__(self, reminders: Reminders, spec: AgentSpec, agent_type: str, agent_id: str) -> None:
        self._reminders = reminders
        self._spec = spec
        self._agent_id = (agent_type, agent_id)

    def check(self, name: object, action: object, params: object, **pattern: Any) -> Reminder:
        return check(self._spec, name, action, params, **pattern)

    async def publish(self, r: Reminder) -> dict[str, Any]:
        """Inside a journaled step its key deduplicates the publish; else none is needed
        (a re-publish of the same reminder replaces it with itself)."""
        return await self._reminders.publish(*self._agent_id, r, effect_key())

    async def cancel(self, name: str) -> None:
        await self._reminders.cancel(*self._agent_id, name)

    async def list(self) -> list[dict[str, Any]]:
        return await self._reminders.list(*self._agent_id)


# -- the reserved actions a client sends ------------------------------------------------------
class _RemindParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: StrictStr
    action: StrictStr
    params: dict[str, Any] = {}
    at: StrictStr | StrictInt | None = None  # RFC 3339 with an offset, or unix ms
    every: StrictInt | None = None  # seconds
    cron: StrictStr | None = None
    tz: StrictStr | None = None


class _NameParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: StrictStr


class _NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _at(value: str | int | None) -> dt.datetime | int | None:
    if not isinstance(value, str):
        return value
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidParams(f"at {value[:64]!r} is not an RFC 3339 time") from None


def _bound(agent: Agent[Any]) -> BoundReminders:
    bound = agent.ctx.reminders
    if bound is None:
        raise Unavailable("reminders need a host")
    assert isinstance(bound, BoundReminders)
    return bound


async def _remind(agent: Agent[Any], reminder: Reminder) -> dict[str, Any]:
    ctx = agent.ctx
    key = f"{ctx.agent_id.key}:{ctx.command_id}" if ctx.command_id else None
    return await _bound(agent)._reminders.publish(ctx.agent_id.type, ctx.agent_id.id, reminder, key)


async def _unremind(agent: Agent[Any], name: str) -> dict[str, Any]:
    await _bound(agent).cancel(name)
    return {"name": name, "cancelled": True}


async def _list(agent: Agent[Any]) -> list[dict[str, Any]]:
    return await _bound(agent).list()


@dataclass(frozen=True, slots=True)
class _Builtin(ActionSpec):
    """A reserved action: its parameters are checked against the agent's own actions."""

    agent_spec: AgentSpec | None = None

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            model = self.params_model.model_validate(params)
        except ValueError as exc:
            raise InvalidParams(f"invalid parameters for {self.name!r}: {exc}") from None
        if self.name == UNREMIND:
            return {"name": check_reminder_name(model.name)}  # type: ignore[attr-defined]
        if self.name == LIST:
            return {}
        assert self.agent_spec is not None and isinstance(model, _RemindParams)
        reminder = check(
            self.agent_spec,
            model.name,
            model.action,
            model.params,
            at=_at(model.at),
            every=model.every,
            cron=model.cron,
            tz=model.tz,
        )
        return {"reminder": reminder}


_FNS: Final[dict[str, tuple[Callable[..., Awaitable[Any]], type[BaseModel], tuple[str, ...]]]] = {
    REMIND: (_remind, _RemindParams, ("reminder",)),
    UNREMIND: (_unremind, _NameParams, ("name",)),
}


def builtin_action(spec: AgentSpec, name: str) -> ActionSpec | None:
    """The reserved action ``name`` for agents of ``spec`` (None for any other name)."""
    if name not in BUILTINS:
        return None
    if name == LIST:
        return _Builtin(LIST, _list, _NoParams, (), None, read_only=True, agent_spec=spec)
    fn, model, names = _FNS[name]
    return _Builtin(name, fn, model, names, None, read_only=False, agent_spec=spec)
