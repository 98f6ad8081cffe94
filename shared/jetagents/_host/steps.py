"""Durable steps on the host (ADR 0042): run a step once, journal its result, replay it.

``Agent.step`` lands here. A step already in the command's open journal returns its recorded
result without running; a new one runs, then its entry is appended to the agent's log like a
commit (the fence, the writer token, the next ``n``) before the action goes on. The command
stays unacknowledged meanwhile (the housekeeping's +WPI), so after a crash its redelivery
re-runs the action here, from the journal. The rules themselves are ``_core/journal.py``.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from typing import Any, NamedTuple

from pydantic import BaseModel, TypeAdapter
from pydantic_core import to_jsonable_python

from .._core.agent import Agent
from .._core.clock import Clock
from .._core.errors import (
    ActionCancelled,
    DomainError,
    FencedError,
    JetAgentsError,
    JournalTooLong,
    NonDeterministic,
    Unavailable,
    error_from_wire,
)
from .._core.ids import partition_of
from .._core.journal import (
    SIGNAL,
    SLEEP,
    TIMEOUT,
    WAIT,
    Suspend,
    blocked_entry,
    enter_step,
    entry_tag,
    fold,
    key_of,
    leave_step,
    recorded,
    resolution_entry,
    step_entry,
    take_inbox,
    timer_body,
    timer_name,
    wait_entry,
)
from .._core.wire import H_CORRELATION_ID, encode_commit
from .._settings import HostSettings
from .catalog import Activation, Catalog
from .coordination import Coordinator
from .eventlog import EventLog, NewCommit
from .placement import Placement


def _revive(value: Any, fn: Callable[..., Any]) -> Any:
    """A journaled value as ``fn`` returned it: its pydantic model when it declares one."""
    try:
        ann = typing.get_type_hints(fn).get("return")
    except Exception:  # noqa: BLE001 - a builtin, a partial, an unresolvable hint: plain JSON
        return value
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann.model_validate(value)
    if isinstance(ann, type) and dataclasses.is_dataclass(ann):  # a shared-state WriteResult
        return TypeAdapter(ann).validate_python(value)
    return value


KICK = "_kick"  # the kick's schedule name: agt.rem.<type>.<id>._kick (ADR 0042 §3)
KICK_BODY = b'{"kick":{}}'


class AlreadyInLog(Unavailable):
    """A journal entry whose message id the log already holds (at ``seq``): its command was
    processed before and the record, which is bounded, forgot it (or our memory is stale:
    the agent is evicted, and a retry rebuilds it)."""

    def __init__(self, message: str, seq: int) -> None:
        super().__init__(message)
        self.seq = seq


class Running(NamedTuple):
    """What the first journal entry of a run keeps of its command (``AgentContext.command``)."""

    params: Any
    reply_to: str | None
    streams: bool = False  # Agt-Stream: the resumed run streams too (j.out on the first entry)


class Steps:
    """The journal side of the pipeline: one per host."""

    def __init__(
        self,
        settings: HostSettings,
        clock: Clock,
        log: Any,
        *,
        catalog: Catalog,
        eventlog: EventLog,
        placement: Placement,
        coordinator: Callable[[], Coordinator | None],
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._log = log
        self._catalog = catalog
        self._eventlog = eventlog
        self._placement = placement
        self._coordinator = coordinator

    async def commit_at(self, seq: int) -> Any:
        """The commit at ``seq`` (None when gone)."""
        return await self._eventlog.commit_at(seq)

    async def arm_timer(self, act: Activation, cmd: str, i: int, until_ms: int) -> None:
        """Publish the server schedule that ends the wait at ``i`` of ``cmd`` at ``until_ms``
        (``@at``; at once if past). The same subject and message id every time: arming it
        again (a re-run that reached the wait again) changes nothing."""
        schedules = self._catalog.schedules
        if schedules is None:
            raise Unavailable("this host has no server schedules: a wait with a timeout cannot be armed")
        aid = act.agent_id
        subjects = self._catalog.subjects
        await schedules.schedule_at(
            subjects.rem(aid.type, aid.id, timer_name(cmd, i)),
            until_ms,
            subjects.cmd(aid.type, aid.id),
            timer_body(cmd, i),
            msg_id=f"{aid.key}:{cmd}#{i}@timer",
        )

    async def purge_timer(self, act: Activation, cmd: str, i: int) -> None:
        """Remove the timer of a wait that a signal (or a cancel) ended; a firing that is
        already in the stream finds the wait resolved and is ignored."""
        schedules = self._catalog.schedules
        if schedules is not None:
            aid = act.agent_id
            await schedules.cancel(self._catalog.subjects.rem(aid.type, aid.id, timer_name(cmd, i)))

    async def arm_kick(self, act: Activation) -> bool:
        """Schedule ``{"kick": {}}`` for ``act``'s agent ``kick_after_s`` from now (replacing
        an earlier one): if this host dies while it resumes or runs parked work, the next one
        is told to run the rest. Best effort (False when not armed: no schedules here)."""
        schedules = self._catalog.schedules
        if schedules is None:
            return False
        aid = act.agent_id
        subjects = self._catalog.subjects
        at_ms = self._clock.wall_ms() + int(self._settings.kick_after_s * 1000)
        try:
            await schedules.schedule_at(
                subjects.rem(aid.type, aid.id, KICK), at_ms, subjects.cmd(aid.type, aid.id), KICK_BODY
            )
        except JetAgentsError as exc:
            self._log.warning("kick_not_armed", agent=str(aid), error=repr(exc))
            return False
        return True

    async def drop_kick(self, act: Activation) -> None:
        """Nothing runnable is left: the kick is not needed (a late one finds nothing to do)."""
        schedules = self._catalog.schedules
        if schedules is not None:
            aid = act.agent_id
            try:
                await schedules.cancel(self._catalog.subjects.rem(aid.type, aid.id, KICK))
            except JetAgentsError as exc:
                self._log.debug("kick_not_dropped", agent=str(aid), error=repr(exc))

    def bind(self, act: Activation) -> BoundSteps:
        """What ``AgentContext.steps`` of ``act``'s agent holds."""
        return BoundSteps(self, act)

    async def run(
        self,
        act: Activation,
        agent: Agent[Any],
        i: int,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        ctx = agent.ctx
        cmd = ctx.command_id
        self.check_cancelled(act, cmd)
        journals = act.journals
        entry = recorded(journals.get(cmd) if journals else None, i, name, ctx.action)
        out = ctx.out  # the command's streamed output (_host/outbox.py), if its caller streams it
        if entry is not None:  # journaled by an earlier run: never run again
            if out is not None:
                out.step_replayed(entry)
            if not entry.get("ok", True):
                raise error_from_wire(entry.get("error"))
            return _revive(await self._catalog.blobs.resolve(entry.get("value"), f"step {i} of {cmd}"), fn)
        self._check_length(i, name)
        if out is not None:
            out.step_runs(i)
        tokens = enter_step(key_of(act.agent_id.key, cmd, i))
        try:
            try:
                value = fn(*args, **kwargs)
                if inspect.isawaitable(value):
                    value = await value
            finally:
                leave_step(tokens)
        except DomainError as err:  # a refusal is a result too: journaled, raised again on a re-run
            j = step_entry(i, name, error=err.to_wire())
            if out is not None:
                await out.seal(j)  # its chunks stored first: a journaled step is never re-run
            await self.append(act, agent, j)
            raise
        dumped = value.model_dump(mode="json") if isinstance(value, BaseModel) else to_jsonable_python(value)
        j = step_entry(i, name, dumped)
        if out is not None:
            await out.seal(j)
        await self.append(act, agent, j)
        return value

    def _check_length(self, i: int, name: str) -> None:
        """A new entry at position ``i``: refused past ``journal_entries_max`` (blocked)."""
        limit = self._settings.journal_entries_max
        if i >= limit:
            raise JournalTooLong(
                f"step {i} {name!r} would pass journal_entries_max {limit} for one command",
                details={"step": name, "position": i, "max": limit},
            )

    @staticmethod
    def check_cancelled(act: Activation, cmd: str) -> None:
        """A step boundary: raise ``ActionCancelled`` when ``cancel`` named this command."""
        if act.cancelling and cmd in act.cancelling:
            raise ActionCancelled(f"command {cmd} was cancelled", details={"command_id": cmd})

    async def wait(self, act: Activation, agent: Agent[Any], i: int, name: str, timeout_s: float | None) -> Any:
        """``Agent.wait_for``/``sleep`` at cursor ``i``: the resolved wait's value, a
        buffered signal's, or ``Suspend`` (after journaling the wait and arming its timer)."""
        ctx = agent.ctx
        cmd = ctx.command_id
        self.check_cancelled(act, cmd)
        journals = act.journals
        journal = journals.get(cmd) if journals else None
        entry = recorded(journal, i, name, ctx.action, WAIT)
        if entry is None:
            self._check_length(i, name)
            until_ms = None if timeout_s is None else self._clock.wall_ms() + int(timeout_s * 1000)
            await self.append(act, agent, wait_entry(i, name, until_ms))
            entry = wait_entry(i, name, until_ms)
            if until_ms is not None:
                await self.arm_timer(act, cmd, i, until_ms)
        else:
            assert journal is not None
            res = journal.resolved.get(i)
            if res is None and entry.get("until_ms") is not None:
                # a re-run of a command whose host died between the wait's entry and its timer
                await self.arm_timer(act, cmd, i, int(entry["until_ms"]))
            if res is not None:
                if res.get("k") == TIMEOUT:
                    if name == SLEEP:
                        return None
                    raise DomainError(
                        "wait_timeout", f"no signal {name!r} came within the wait's timeout", details={"position": i}
                    )
                return res.get("value")
        if name != SLEEP:
            buffered = take_inbox(act.inbox, name, cmd)
            if buffered is not None:  # a signal sent before the wait: taken at once
                value = buffered.get("value")
                await self.append(act, agent, resolution_entry(SIGNAL, cmd, i, name, value, str(buffered["cmd"])))
                return value
        waiting: dict[str, Any] = {"until_ms": entry.get("until_ms")}
        if name == SLEEP:
            waiting["sleep"] = True
        else:
            waiting["signal"] = name
        raise Suspend(waiting)

    async def block(self, act: Activation, agent: Agent[Any], err: NonDeterministic) -> None:
        """Record that a re-run could not go on; the journal stays open (best effort: the
        command is dead-lettered either way, and a re-send checks the journal again)."""
        details = err.details if isinstance(err.details, dict) else {}
        try:
            await self.append(act, agent, blocked_entry(int(details.get("position", 0)), err.to_wire()))
        except JetAgentsError as exc:
            self._log.warning("journal_block_not_recorded", agent=str(act.agent_id), error=repr(exc))

    async def append(self, act: Activation, agent: Agent[Any], j: dict[str, Any]) -> None:
        """Append one journal entry of the running command after the agent's last commit.
        The first entry of a journal also holds the command's parameters and reply subject:
        once it suspends, its message is acknowledged and the journal is the only copy."""
        ctx = agent.ctx
        cmd = ctx.command_id
        journals = act.journals
        journal = journals.get(cmd) if journals else None
        running = ctx.command
        if (journal is None or journal.params is None) and running is not None:
            j = {**j, "params": running.params, "reply_to": running.reply_to}
            if running.streams:
                j["out"] = 1
        await self.append_for(act, cmd, ctx.action, j, ctx.correlation_id)

    async def append_for(
        self,
        act: Activation,
        cmd: str,
        action: str,
        j: dict[str, Any],
        corr: str = "",
        *,
        closing: bool = False,
        result: Any = None,
    ) -> int:
        """Append one journal entry of command ``cmd`` (a signal, a timer, a parked command:
        not necessarily the running one); ``closing``: it closes ``cmd`` (the record answers
        it from now on, under its plain message id); ``result``: the commit's result (what the
        record answers when the entry closes its command). Returns its sequence."""
        aid = act.agent_id
        own = self._placement.token_of(aid, partition_of(aid.type, aid.id, self._settings.partitions))
        if self._coordinator() is not None and own < max(act.own, 1):
            self._catalog.evict(act)  # as the pipeline's commit: never write without a claim
            raise FencedError(f"{aid}: writer token {own} is older than the log's {act.own}")
        n = act.n + 1
        body = encode_commit(
            n=n, cmd=cmd, action=action, events=[], result=result, cseq=0, ts_ms=self._clock.wall_ms(), own=own, j=j
        )
        hdrs = {H_CORRELATION_ID: corr} if corr and corr != cmd else {}
        tag = "" if closing else entry_tag(j, n)
        try:
            seq, duplicate = await self._eventlog.append(aid, act.last_seq, NewCommit(n, cmd, own, body, tag), hdrs)
        except JetAgentsError:
            self._catalog.evict(act)  # landed or not, fenced or not: the log says, on the re-run
            raise
        if duplicate:  # already in the log, unknown to our memory: rebuild from the log
            self._catalog.evict(act)
            # processed before and forgotten by the bounded record, or our memory is stale
            raise AlreadyInLog(f"{aid}: journal entry {tag or cmd} of {cmd} is already in the log", seq)
        act.last_seq, act.n, act.own = seq, n, max(act.own, own)
        act.since_snapshot += 1
        if act.journals is None:
            act.journals = {}
        if act.inbox is None:
            act.inbox = []
        fold(act.journals, cmd, j, action, act.inbox)
        if not act.inbox:
            act.inbox = None
        if not act.journals:
            act.journals = None
        return seq


class BoundSteps:
    """``Steps`` for one activation (the agent's ``ctx.steps``)."""

    __slots__ = ("_act", "_steps")

    def __init__(self, steps: Steps, act: Activation) -> None:
        self._steps = steps
        self._act = act

    async def step(
        self,
        agent: Agent[Any],
        i: int,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        return await self._steps.run(self._act, agent, i, name, fn, args, kwargs)

    async def wait(self, agent: Agent[Any], i: int, name: str, timeout_s: float | None) -> Any:
        return await self._steps.wait(self._act, agent, i, name, timeout_s)
