"""Suspended actions on the host (ADR 0042 sections 3, 4 and 8): parked commands, resuming
a journal, catching up, closing a journal with an error.

A wait nobody resolved yet ends its run with ``Suspend``: the pipeline answers ``suspended``
and acknowledges the command; from then on the journal (its first entry holds the parameters
and the reply subject) is the only copy of the action. The signal or timer that resolves the
wait (``_host/signals.py``) re-runs it from its journal here, in its own turn, as a rebuilt
command (``Command.resume``). A **write** while an action is suspended follows the suspended
action's ``while_suspended`` (``enqueue``: a ``park`` entry, answered ``queued``, run after
it; ``reject``; ``interrupt``); reads run.

The command that resolved a wait (a signal, a timer) is acknowledged only after the resumed
run and the parked commands it freed are done: if the host dies meanwhile, its redelivery (a
duplicate by the record) resumes what is runnable (``catch_up``), which every command of the
agent does first. That is this host's kick: no timer of its own (ADR 0042, "Built").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from .._core.command import Command, Kind
from .._core.dedup import DedupRecord
from .._core.errors import (
    ActionCancelled,
    AgentSuspended,
    JetAgentsError,
    error_from_wire,
)
from .._core.ids import is_reply_subject
from .._core.journal import (
    PARK,
    Journal,
    blocked_entry,
    closes_command,
    end_entry,
    park_entry,
    take_inbox,
)
from .._core.outcome import Result
from .._core.wire import H_COMMAND_ID, encode_error
from .._obs.telemetry import DEAD_LETTER, REQUEUED
from .._settings import HostSettings
from .catalog import Activation, Catalog
from .outcomes import Outcomes
from .steps import AlreadyInLog, Steps

Run = Callable[[Activation, Command, dict[str, str]], Awaitable[None]]


def holder(act: Activation) -> tuple[str, Journal] | None:
    """The journal holding the agent's writes: the oldest action that suspended and has
    not ended (suspended now, or resolved and about to resume), unless blocked."""
    for cmd, journal in (act.journals or {}).items():
        if journal.waited and journal.blocked is None:
            return cmd, journal
    return None


def stuck(act: Activation, cmd: str, journal: Journal) -> dict[str, Any] | None:
    """The wait ``journal`` is suspended on, unless a buffered signal can resolve it (a run
    whose host died between its wait's entry and taking the signal from the buffer)."""
    waiting = journal.waiting()
    name = str(waiting.get("name")) if waiting is not None else "@sleep"
    if name != "@sleep" and take_inbox(act.inbox, name, cmd) is not None:
        return None
    return waiting


class Suspension:
    """Signals, timers, cancels, result queries, parking and resuming: one per host."""

    def __init__(
        self,
        settings: HostSettings,
        clock: Any,
        log: Any,
        *,
        steps: Steps,
        outcomes: Outcomes,
        run: Run,
        catalog: Catalog,
    ) -> None:
        self._catalog = catalog
        self._settings = settings
        self._clock = clock
        self._log = log
        self._steps = steps
        self._outcomes = outcomes
        self._run = run  # the pipeline's processing of one command (a resumed or parked run)
        self.purge_timer: Callable[[Activation, str, int], Awaitable[None]] | None = steps.purge_timer

    # -- replies that are no result -----------------------------------------------------------
    async def answer_status(self, cmd: Command, out: dict[str, str], status: str, **extra: Any) -> None:
        """Reply ``Agt-Status: <status>`` (no result yet) and acknowledge (the table's row 23)."""
        await self._outcomes.settle(cmd, Result.STATUS, out, status=status, answer=extra)

    async def suspended(self, act: Activation, cmd: Command, waiting: dict[str, Any], out: dict[str, str]) -> None:
        """The run of ``cmd`` suspended: answer so (a resumed run's caller knows it already).
        A streaming command's chunks land either way; the resumed run ends its stream."""
        if cmd.resume:
            if cmd.streams and self._outcomes.out is not None:
                await self._outcomes.out.finish(cmd, None)
            cmd.outcome = "suspended"
            return
        await self.answer_status(cmd, out, "suspended", waiting=waiting)

    # -- while an action is suspended (section 4) ---------------------------------------------
    async def admit(
        self, act: Activation, cmd: Command, action: str, params: Any, read_only: bool, out: dict[str, str]
    ) -> bool:
        """Whether ``cmd`` may run now; when not, it was answered (queued, refused, or its own
        journal's status). Read-only actions always run; a resumed or parked run runs."""
        if cmd.resume:
            return True
        cmd_id = cmd.command_id
        own = act.journals.get(cmd_id) if act.journals and cmd_id else None
        if own is not None:
            waiting = stuck(act, cmd_id, own)
            if waiting is not None:  # a re-send while it waits: the same answer as the first
                if waiting.get("until_ms") is not None:
                    # its host may have died between the wait's entry and its timer: arm it
                    # (again: the same subject and message id change nothing)
                    await self._steps.arm_timer(act, cmd_id, int(waiting["i"]), int(waiting["until_ms"]))
                await self.answer_status(cmd, out, "suspended", waiting=_waiting(waiting))
                return False
            if own.parked is not None and not own.waited:
                await self.answer_status(cmd, out, "queued")
                return False
            return True  # resolved (or steps only): this very command runs it on
        if read_only:
            return True
        held = holder(act)
        if held is None:
            return True
        by, journal = held
        policy = act.spec.while_suspended_of(journal.action)
        waiting = journal.waiting()
        if policy == "interrupt":
            await self.close(act, by, journal, ActionCancelled(f"command {by} was interrupted by {cmd_id or 'a call'}"))
            await self.catch_up(act, cmd)
            return True
        if policy == "reject" or not cmd_id:  # a command without an id cannot be parked
            err = AgentSuspended(
                f"{act.agent_id} has a suspended action ({by}); retry later",
                details={"command_id": by, "waiting": _waiting(waiting) if waiting else None},
            )
            await self._outcomes.settle(cmd, Result.DOMAIN, out, error=err)
            return False
        park = park_entry(action, params, cmd.reply_to)
        if cmd.streams:
            park["out"] = 1  # its run streams when it comes (wire contract 17)
        try:
            await self._steps.append_for(act, cmd_id, action, park, cmd.correlation_id)
        except AlreadyInLog as dup:  # parked before: answered from the log if it ran since
            if await self.answered_before(act, cmd, dup.seq, out):
                return False
            raise
        await self.answer_status(cmd, out, "queued", behind=by)
        return False

    async def close_dup(self, act: Activation, cmd_id: str, action: str, first: Any, first_seq: int) -> None:
        """Close the park of a command whose first run closed at ``first_seq`` (``first``, its
        commit): a re-send the bounded record no longer knew, parked behind a suspended action.
        An end of its own message id (the first one's is taken); it applies nothing."""
        error = (first.j or {}).get("error") if first is not None else None
        end = {**end_entry(0, error), "dup": first_seq}
        await self._steps.append_for(act, cmd_id, action, end, result=first.result if first is not None else None)

    async def answered_before(self, act: Activation, cmd: Command, seq: int, out: dict[str, str]) -> bool:
        """A journal entry of ``cmd`` was already in the log at ``seq``: when its command was
        closed after it, answer ``cmd`` from that closing commit (the record forgot it) and
        say so; else (a journal still open: our memory was stale) let it be retried. A park
        of the same command after its closing commit (a re-send the bounded record no longer
        knew, parked behind a suspended action) is closed too, so it never runs again."""
        cmd_id = cmd.command_id
        first: Any = None
        parked_again = False
        first_seq = 0
        for at, commit in await self._catalog.read_log(act.agent_id, seq):
            if commit.cmd != cmd_id:
                continue
            if first is None and closes_command(cmd_id, commit.j):
                first, first_seq = commit, at
            elif first is not None and commit.j is not None:
                parked_again = commit.j.get("k") == PARK or (parked_again and not closes_command(cmd_id, commit.j))
        if first is None:
            return False
        error = (first.j or {}).get("error")
        if parked_again:
            if act.agent is None:
                await self._catalog.activate(act)
            if act.journals and cmd_id in act.journals:
                await self.close_dup(act, cmd_id, first.action, first, first_seq)
        answer, err = (None, error_from_wire(error)) if error is not None else (first.result, None)
        await self._outcomes.settle(cmd, Result.DUPLICATE, out, answer=answer, error=err)
        return True

    # -- resuming ------------------------------------------------------------------------------
    def _rebuild(
        self, act: Activation, driver: Command, cmd_id: str, action: str, params: Any, reply_to: Any, streams: Any
    ) -> Command:
        """The command a journal (or a park entry) re-runs as: never acknowledged itself
        (its driver is), answered on the reply subject its first run named."""
        body = orjson.dumps({"action": action, "params": params or {}})
        aid = act.agent_id
        reply = reply_to if is_reply_subject(reply_to, self._settings.reply_prefixes) else None
        rcmd = Command(
            Kind.STREAM,
            driver.subject,
            aid.type,
            aid.id,
            driver.partition,
            body,
            self._clock.monotonic(),
            {H_COMMAND_ID: cmd_id},  # named in its dead letter, if it comes to one: re-sending that runs it again
            None,
            reply,
        )
        rcmd.command_id = rcmd.correlation_id = cmd_id
        rcmd.resume = True
        rcmd.streams = bool(streams)
        return rcmd

    async def resume(self, act: Activation, cmd_id: str, driver: Command) -> None:
        """Re-run the journal of ``cmd_id`` (resolved) in ``driver``'s turn."""
        journals = act.journals
        journal = journals.get(cmd_id) if journals else None
        if journal is None or stuck(act, cmd_id, journal) is not None or journal.blocked is not None:
            return
        first = journal.steps[0] if journal.steps else {}
        rcmd = self._rebuild(act, driver, cmd_id, journal.action, journal.params, journal.reply_to, first.get("out"))
        await self._run(act, rcmd, rcmd.reply_headers())
        await self._after_run(act, rcmd, journal, driver)

    async def _after_run(self, act: Activation, rcmd: Command, journal: Journal, driver: Command) -> None:
        if rcmd.outcome == REQUEUED:  # stopping, or the partition is gone: the driver comes again
            driver.outcome = REQUEUED
        elif rcmd.outcome == DEAD_LETTER and act.journals and rcmd.command_id in act.journals:
            # failed for good: blocked, so it no longer holds the agent nor is resumed by
            # every command; re-sending its dead letter (same command id) runs it again
            err = {"code": rcmd.error or "internal", "message": "the resumed run failed for good", "retryable": False}
            try:
                await self._steps.append_for(
                    act, rcmd.command_id, journal.action, blocked_entry(len(journal.steps), err), rcmd.command_id
                )
            except JetAgentsError as exc:
                self._log.warning("journal_block_not_recorded", agent=str(act.agent_id), error=repr(exc))

    async def catch_up(self, act: Activation, driver: Command) -> None:
        """Run what is runnable before ``driver``: a resolved journal whose resumed run a
        crash cut short, then the parked commands, oldest first, while no action holds the
        agent. Every command of the agent starts here, so none overtakes them. Before the
        first of them a kick is armed (``Steps.arm_kick``), dropped once nothing runnable is
        left: a host dying in between leaves the kick to the next one, whether or not
        ``driver`` comes again (it may be acknowledged already, or a call)."""
        armed: list[bool] = []
        if await self._catch_up(act, driver, armed) and armed and armed[0] and driver.outcome != REQUEUED:
            await self._steps.drop_kick(act)

    async def _catch_up(self, act: Activation, driver: Command, armed: list[bool]) -> bool:
        """``catch_up``'s loop; True when nothing runnable is left."""
        guard = 0
        while act.journals and guard < 10_000 and driver.outcome != REQUEUED:
            guard += 1
            held = holder(act)
            if held is not None:
                cmd_id, journal = held
                if stuck(act, cmd_id, journal) is not None:
                    return True  # still suspended: parked commands wait behind it
                if not armed:
                    armed.append(await self._steps.arm_kick(act))
                before = act.n
                await self.resume(act, cmd_id, driver)
                if act.n == before and act.journals and cmd_id in act.journals:
                    return False  # nothing moved (its run was handed back): not now
                continue
            parked = next(((c, j) for c, j in act.journals.items() if j.parked is not None and not j.waited), None)
            if parked is None:
                return True
            if not armed:
                armed.append(await self._steps.arm_kick(act))
            cmd_id, journal = parked
            park = journal.parked or {}
            rcmd = self._rebuild(
                act,
                driver,
                cmd_id,
                str(park.get("action", "")),
                park.get("params"),
                park.get("reply_to"),
                park.get("out"),
            )
            before = act.n
            await self._run(act, rcmd, rcmd.reply_headers())
            if rcmd.outcome == REQUEUED:
                driver.outcome = REQUEUED
                return False
            now = act.journals.get(cmd_id) if act.journals else None
            if now is not None and now.parked is not None:
                if act.n == before and rcmd.outcome != DEAD_LETTER:  # not run (handed back)
                    return False
                if now.waited:  # it suspended: it holds the agent now
                    return True
                # answered without a closing commit (refused, no events, or dead-lettered: it
                # overran its time limit, say; run again by every driver, it would dead-letter
                # again and hold the agent's later parked commands for ever): close its park
                await self._close_park(act, cmd_id, journal, rcmd)
        return not act.journals

    async def _close_park(self, act: Activation, cmd_id: str, journal: Journal, rcmd: Command) -> None:
        error = None if not rcmd.error else {"code": rcmd.error, "message": rcmd.error, "retryable": False}
        await self._steps.append_for(
            act,
            cmd_id,
            journal.action or str((journal.parked or {}).get("action", "")),
            end_entry(0, error),
            closing=True,
        )

    # -- closing ---------------------------------------------------------------------------------
    async def keep_refusal(self, act: Activation, cmd_id: str, err: JetAgentsError, *, waited: bool) -> None:
        """``cmd_id`` was refused (or overran its time limit): if its command was acknowledged
        (parked; or ``waited``: it suspended) or it is being cancelled, its journal ends here;
        else its id is remembered (in memory), so a redelivery gets the same answer."""
        journal = act.journals.get(cmd_id) if act.journals and cmd_id else None
        cancelled = isinstance(err, ActionCancelled)
        parked = journal is not None and journal.parked is not None and (waited or not journal.waited)
        if journal is not None and (parked or (waited and journal.waited) or cancelled):
            await self.close(act, cmd_id, journal, err, tell=False)
        elif cmd_id and (journal is None or waited):
            self._records(act).refused(cmd_id, err.to_wire())

    async def close(
        self, act: Activation, cmd_id: str, journal: Journal, err: JetAgentsError, *, tell: bool = True
    ) -> None:
        """End the journal of ``cmd_id`` with ``err`` (cancelled): its closing commit, the
        record, its timer purged, its caller told (``tell``; else whoever runs it answers)."""
        wire = err.to_wire()
        action = journal.action or str((journal.parked or {}).get("action", ""))
        seq = await self._steps.append_for(act, cmd_id, action, end_entry(len(journal.steps), wire), closing=True)
        self._records(act).refused(cmd_id, wire, seq)
        await self._purge(act, cmd_id, journal)
        reply_to = journal.reply_to if journal.parked is None else (journal.parked or {}).get("reply_to")
        if reply_to and tell:
            await self._outcomes.reply(str(reply_to), encode_error(err), {"Agt-Command-Id": cmd_id}, None)
        first = journal.parked or (journal.steps[0] if journal.steps else {})
        if first.get("out") and self._outcomes.out is not None:  # a stream's reader waits for its end
            await self._outcomes.out.end(act.agent_id.type, act.agent_id.id, cmd_id, encode_error(err))

    async def _purge(self, act: Activation, cmd_id: str, journal: Journal) -> None:
        if self.purge_timer is None:
            return
        for entry in journal.steps:
            if entry.get("until_ms") is not None and int(entry["i"]) not in journal.resolved:
                try:
                    await self.purge_timer(act, cmd_id, int(entry["i"]))
                except Exception as exc:  # noqa: BLE001 - best effort: a late timer is ignored
                    self._log.debug("timer_purge_failed", error=repr(exc))

    def _records(self, act: Activation) -> DedupRecord:
        return act.dedup(self._settings.dedup_records_per_agent)


def _waiting(entry: dict[str, Any]) -> dict[str, Any]:
    """A wait entry as a status reply names it."""
    name = entry.get("name")
    out: dict[str, Any] = {"until_ms": entry.get("until_ms")}
    if name == "@sleep":
        out["sleep"] = True
    else:
        out["signal"] = name
    return out
