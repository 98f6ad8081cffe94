"""Signals, timers, cancels and result queries (ADR 0042 sections 3 and 8): the commands
whose body is not an action, on the host. They resolve waits, close suspended commands and
answer a command's outcome; resuming and parking are ``_host/suspension.py``'s.

* a **signal** (``{"signal", "payload", "to"}``) appends a ``signal`` entry that resolves the
  oldest matching wait (or an ``inbox`` entry when nobody waits) and closes the signal's own
  command, then the waiting action runs on from its journal in the signal's turn; the signal
  is acknowledged only after that run (its redelivery resumes what a crash cut short);
* a **timer** (``{"timer": {"for", "i"}}``, fired by the server's schedule) appends a
  ``timeout`` entry the same way; one whose wait is already resolved is ignored;
* a **cancel** (``{"cancel": cmd}``) closes a suspended, blocked or parked command with
  ``cancelled``, or flags a running one (``note_cancel``, at intake), which stops at its next
  step boundary;
* a **result** query (``{"result": cmd}``, a call) answers a command's outcome or status.
"""

from __future__ import annotations

from typing import Any

from .._core.command import Command
from .._core.errors import (
    ActionCancelled,
    AgentDeleted,
    JetAgentsError,
    MalformedCommand,
    SignalBufferFull,
    UnknownAgent,
    UnknownAgentType,
    error_from_wire,
)
from .._core.journal import SIGNAL, TIMEOUT, inbox_entry, resolution_entry
from .._core.outcome import AckKind, Result
from .._core.wire import CancelBody, KickBody, ResultBody, ResumeBody, SignalBody, TimerBody
from .._obs.telemetry import REQUEUED
from .catalog import Activation
from .steps import AlreadyInLog
from .suspension import Suspension, _waiting


class Signals:
    """The bodies that are no action: one per host, over the host's ``Suspension``."""

    def __init__(self, suspension: Suspension) -> None:
        self._susp = suspension
        self._settings = suspension._settings
        self._clock = suspension._clock
        self._log = suspension._log
        self._steps = suspension._steps
        self._outcomes = suspension._outcomes
        self._catalog = suspension._catalog

    # -- signals, timers, cancels, result queries ----------------------------------------------
    async def process(self, act: Activation, cmd: Command, body: Any, out: dict[str, str], supervisor: Any) -> None:
        """A signal, timer, cancel or result query, retried in place like an action when the
        infrastructure fails (the table's rows 9, 11)."""
        attempt = 0
        while True:
            try:
                if act.agent is None:
                    await self._catalog.activate(act)
                await self.control(act, cmd, body, out)
                return
            except (MalformedCommand, UnknownAgentType, UnknownAgent, AgentDeleted) as err:
                await self._outcomes.settle(cmd, Result.REFUSED, out, error=err)
                return
            except JetAgentsError as err:
                failed = err
            attempt += 1
            outcome = self._outcomes.decide(
                cmd, Result.FAILED, error=failed, attempt=attempt, stopping=supervisor.stopping
            )
            if outcome.ack.kind is not AckKind.RETRY:
                await self._outcomes.execute(cmd, outcome, out)
                return
            self._outcomes.count(cmd, outcome)
            await self._clock.sleep(outcome.ack.delay_s)

    async def control(self, act: Activation, cmd: Command, body: Any, out: dict[str, str]) -> None:
        """A command whose body is not an action. The agent is active."""
        if isinstance(body, ResultBody):
            await self._result(act, cmd, body.result, out)
            return
        if isinstance(body, CancelBody):
            await self._susp.catch_up(act, cmd)
            await self._cancel(act, cmd, body.cancel, out)
            return
        if isinstance(body, ResumeBody):
            await self._susp.catch_up(act, cmd)
            await self._resume(act, cmd, body.resume, out)
            return
        if isinstance(body, KickBody):  # a host died while running what is runnable: run it
            await self._susp.catch_up(act, cmd)
            if cmd.outcome == REQUEUED:
                await self._outcomes.settle(cmd, Result.REQUEUED, out)
            else:
                await self._outcomes.settle_ok(cmd, out, {"kicked": True}, 0)
            return
        cmd_id = cmd.command_id
        if not cmd_id:
            err = MalformedCommand("a signal or timer needs a command id (Agt-Command-Id)")
            await self._outcomes.settle(cmd, Result.REFUSED, out, error=err)
            return
        records = act.records
        record = records.get(cmd_id) if records is not None else None
        if record is not None:  # a redelivery: what it resolved may not have run yet
            await self._susp.catch_up(act, cmd)
            answer = record.payload if record.ok else None
            error = None if record.ok else error_from_wire(record.payload)
            await self._outcomes.settle(cmd, Result.DUPLICATE, out, answer=answer, error=error, event_seq=record.seq)
            return
        await self._susp.catch_up(act, cmd)
        try:
            if isinstance(body, SignalBody):
                await self._signal(act, cmd, body, out)
            elif isinstance(body, TimerBody):
                await self._timer(act, cmd, body, out)
        except AlreadyInLog as dup:  # processed before, and the bounded record forgot it
            first = await self._steps.commit_at(dup.seq)
            await self._catalog.activate(act)
            await self._susp.catch_up(act, cmd)
            answer = first.result if first is not None else None
            await self._outcomes.settle(cmd, Result.DUPLICATE, out, answer=answer, event_seq=dup.seq)

    async def _signal(self, act: Activation, cmd: Command, body: SignalBody, out: dict[str, str]) -> None:
        name = body.signal
        target: tuple[str, int] | None = None
        for cmd_id, journal in (act.journals or {}).items():
            waiting = journal.waiting()
            if waiting is None or waiting.get("name") != name or (body.to is not None and body.to != cmd_id):
                continue
            target = cmd_id, int(waiting["i"])
            break
        if target is None:
            if len(act.inbox or ()) >= self._settings.signal_buffer_per_agent:
                err = SignalBufferFull(
                    f"{act.agent_id} already buffers {len(act.inbox or ())} signals nobody waits for",
                    details={"signal": name},
                )
                await self._outcomes.settle(cmd, Result.DOMAIN, out, error=err)
                return
            result = {"buffered": True}
            seq = await self._steps.append_for(
                act, cmd.command_id, "_signal", inbox_entry(name, body.payload, body.to), cmd.correlation_id,
                closing=True, result=result,
            )  # fmt: skip
            self._record(act, cmd.command_id, seq, result)
            await self._outcomes.settle_ok(cmd, out, result, seq)
            return
        waiter, i = target
        j = resolution_entry(SIGNAL, waiter, i, name, body.payload)
        await self._resolved(act, cmd, waiter, i, j, {"delivered": waiter}, out)

    async def _timer(self, act: Activation, cmd: Command, body: TimerBody, out: dict[str, str]) -> None:
        waiter, i = body.timer.for_, body.timer.i
        journal = act.journals.get(waiter) if act.journals else None
        waiting = journal.waiting() if journal is not None else None
        if waiting is None or int(waiting["i"]) != i:  # resolved already (or gone): harmless
            cmd.outcome = "ignored"
            await self._outcomes.settle_ok(cmd, out, {"ignored": True}, 0)
            return
        j = resolution_entry(TIMEOUT, waiter, i, str(waiting.get("name", "")))
        await self._resolved(act, cmd, waiter, i, j, {"timeout": waiter}, out)

    async def _resolved(
        self, act: Activation, cmd: Command, waiter: str, i: int, j: dict[str, Any], result: Any, out: dict[str, str]
    ) -> None:
        """Append the resolution (closing ``cmd``), answer ``cmd``'s sender, resume the
        waiter and what it freed, and only then acknowledge ``cmd``."""
        action = "_signal" if j["k"] == SIGNAL else "_timer"
        seq = await self._steps.append_for(
            act, cmd.command_id, action, j, cmd.correlation_id, closing=True, result=result
        )
        self._record(act, cmd.command_id, seq, result)
        journal = act.journals.get(waiter) if act.journals else None
        timed = journal is not None and i < len(journal.steps) and journal.steps[i].get("until_ms") is not None
        if timed and j["k"] == SIGNAL and self._susp.purge_timer is not None:
            try:
                await self._susp.purge_timer(act, waiter, i)
            except Exception as exc:  # noqa: BLE001 - best effort: the firing is ignored
                self._log.debug("timer_purge_failed", error=repr(exc))
        # settled twice (the table's rows 24-26): the acknowledgement waits for the resumed
        # run, so a crash before it redelivers this command, whose catch-up resumes the run
        await self._outcomes.settle(cmd, Result.RESOLVED, out, answer=result, event_seq=seq)
        await self._susp.catch_up(act, cmd)
        await self._outcomes.settle(cmd, Result.REQUEUED if cmd.outcome == REQUEUED else Result.DRIVEN, {})

    async def _cancel(self, act: Activation, cmd: Command, target: str, out: dict[str, str]) -> None:
        if act.cancelling:
            act.cancelling.discard(target)
            if not act.cancelling:
                act.cancelling = None
        journal = act.journals.get(target) if act.journals else None
        if journal is not None:  # suspended, blocked, parked, or cut short by a crash
            await self._susp.close(act, target, journal, ActionCancelled(f"command {target} was cancelled"))
            await self._susp.catch_up(act, cmd)
            await self._outcomes.settle_ok(cmd, out, {"cancelled": True}, 0)
            return
        records = act.records
        record = records.get(target) if records is not None else None
        if record is not None:
            was = not record.ok and isinstance(record.payload, dict) and record.payload.get("code") == "cancelled"
            answer: dict[str, Any] = {"cancelled": True} if was else {"cancelled": False, "state": "finished"}
        else:
            answer = {"cancelled": False, "state": "unknown"}
        await self._outcomes.settle_ok(cmd, out, answer, 0)

    async def _resume(self, act: Activation, cmd: Command, target: str, out: dict[str, str]) -> None:
        """Run ``target``'s blocked journal again (after the code was fixed, or the limit
        raised), as a re-send of it would: completed steps answer from the journal, its
        caller is answered on its journal's reply subject."""
        journal = act.journals.get(target) if act.journals else None
        if journal is None or journal.blocked is None or journal.params is None:
            records = act.records
            if journal is None:
                state = "finished" if records is not None and records.get(target) is not None else "unknown"
            elif journal.blocked is None:
                state = "suspended" if journal.waiting() else "running"
            else:  # a journal from before its first entry kept the parameters: re-send the command
                state = "blocked"
            await self._outcomes.settle_ok(cmd, out, {"resumed": False, "state": state}, 0)
            return
        first = journal.steps[0] if journal.steps else {}
        rcmd = self._susp._rebuild(act, cmd, target, journal.action, journal.params, journal.reply_to, first.get("out"))
        await self._susp._run(act, rcmd, rcmd.reply_headers())
        if rcmd.outcome == REQUEUED:
            await self._outcomes.settle(cmd, Result.REQUEUED, out)
            return
        now = act.journals.get(target) if act.journals else None
        state = "finished" if now is None else ("blocked" if now.blocked is not None else "suspended")
        await self._outcomes.settle_ok(cmd, out, {"resumed": True, "state": state}, 0)

    async def _result(self, act: Activation, cmd: Command, target: str, out: dict[str, str]) -> None:
        records = act.records
        record = records.get(target) if records is not None else None
        if record is not None:
            answer = record.payload if record.ok else None
            error = None if record.ok else error_from_wire(record.payload)
            await self._outcomes.settle(cmd, Result.DUPLICATE, out, answer=answer, error=error, event_seq=record.seq)
            return
        journal = act.journals.get(target) if act.journals else None
        if journal is None:
            await self._susp.answer_status(cmd, out, "unknown")
        elif (waiting := journal.waiting()) is not None:
            await self._susp.answer_status(cmd, out, "suspended", waiting=_waiting(waiting))
        elif journal.parked is not None and not journal.waited:
            await self._susp.answer_status(cmd, out, "queued")
        else:
            await self._susp.answer_status(cmd, out, "blocked" if journal.blocked is not None else "running")

    # -- at intake --------------------------------------------------------------------------------
    def note_cancel(self, act: Activation | None, data: bytes) -> None:
        """A cancel seen as it arrives (before the mailbox): flag its target, which stops at
        its next step boundary if it is running now."""
        if act is None:
            return
        try:
            body = CancelBody.model_validate_json(data)
        except ValueError:
            return
        if act.cancelling is None:
            act.cancelling = set()
        if len(act.cancelling) < 1024:
            act.cancelling.add(body.cancel)

    def _record(self, act: Activation, cmd_id: str, seq: int, result: Any) -> None:
        self._susp._records(act).applied(cmd_id, seq, result)
