"""The pipeline: one command of one agent, from its fields to its outcome.

Processing one command::

    validate (id, reply subject, action, params) -> activate (snapshot + replay)
    -> dedup record? answer from it -> deadline? -> run the action under its time limit
    -> append ONE commit (the fence: expected last subject sequence; the message id makes a
       repeat harmless) -> the outcome (``_core/outcome.py``), carried out by ``Outcomes``

Bad input is answered, dead-lettered and terminated (never redelivered); a failing handler is
retried in place with backoff and dead-lettered after ``max_deliver`` attempts; infrastructure
failures are retried in place until the infrastructure is back. The pipeline keeps no state of
its own: the agent's is the catalog's (``Activation``), the log's is the event log's.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from .._core.clock import Clock, Timers
from .._core.command import FORWARDED, MAX_COMMAND_ID_LEN, MIGRATE, Command
from .._core.dedup import DedupRecord
from .._core.errors import (
    ActionCancelled,
    ActionTimeout,
    AgentDeleted,
    AgentQuarantined,
    CallCycle,
    CallTooDeep,
    DeadlineExceeded,
    Deadlock,
    DomainError,
    FencedError,
    InternalError,
    InvalidParams,
    JetAgentsError,
    MalformedCommand,
    NonDeterministic,
    PayloadTooLarge,
    Unavailable,
    UnknownAction,
    UnknownAgent,
    UnknownAgentType,
    error_from_wire,
)
from .._core.journal import Suspend
from .._core.outcome import AckKind, Result, exhausted
from .._core.upcast import wire_events
from .._core.wire import CommandBody, decode_command, encode_commit
from .._obs.metrics import Metrics
from .._obs.propagation import carry_context, carry_received
from .._obs.telemetry import (
    AGENT_ID,
    AGENT_TYPE,
    DELIVERY,
    DELIVERY_COUNT,
    FAILED,
    HOST_ID,
    MESSAGING_BODY_SIZE,
    MESSAGING_CONSUMER_GROUP,
    MESSAGING_CONVERSATION_ID,
    MESSAGING_DESTINATION,
    MESSAGING_MESSAGE_ID,
    MESSAGING_OPERATION_NAME,
    MESSAGING_OPERATION_TYPE,
    MESSAGING_PARTITION,
    MESSAGING_SYSTEM,
    HostTelemetry,
    exit_command,
    finish_process_span,
    set_command,
)
from .._settings import HostSettings
from .catalog import Activation, Catalog
from .coordination import Coordinator
from .deadline import Overrun
from .eventlog import EventLog, NewCommit
from .health import Health
from .outbox import OutStreams
from .outcomes import Outcomes
from .placement import Placement
from .reminders import BUILTINS, builtin_action, closing_entry, firing_of, unscheduled_body
from .signals import Signals
from .steps import AlreadyInLog, Running, Steps
from .supervisor import Supervisor
from .suspension import Suspension

# refusals of the activation itself: bad input, never worth another try
_NON_RETRYABLE_INPUT = (MalformedCommand, UnknownAgentType, UnknownAgent, AgentQuarantined, AgentDeleted)


def overrun_error(action: str, limit_s: float, by_deadline: bool) -> JetAgentsError:
    """Past the command's own deadline: ``deadline_exceeded``, acknowledged. Past the
    action's time limit: ``action_timeout``, at once (never retried in place), dead-lettered
    when durable (ADR 0036)."""
    if by_deadline:
        return DeadlineExceeded(
            "the command's deadline passed while its action ran: cancelled, nothing applied",
            details={"applied": False},
        )
    return ActionTimeout(
        f"action {action!r} ran longer than {limit_s:g} s: cancelled, nothing applied",
        details={"applied": False, "timeout_s": limit_s},
    )


def unnamed_prefix(host_id: str, boot_ms: int) -> str:
    """How the commits of commands without an id are named: ``c-<host>-<boot>-<n>``. The boot
    (the process's start, ms in hex) keeps a host restarted under the same id from naming a
    commit as before: within the event stream's duplicate window that append would be dropped
    as a duplicate and its call answered ok, unapplied (found by the simulation's calls).

    >>> unnamed_prefix("h1", 1_700_000_000_000)
    'c-h1-18bcfe56800-'
    """
    return f"c-{host_id}-{boot_ms:x}-"


class Pipeline:
    """Validate, dedup, deadline, run the action under its limit, commit, produce the outcome."""

    def __init__(
        self,
        settings: HostSettings,
        clock: Clock,
        tel: HostTelemetry,
        metrics: Metrics,
        log: Any,
        *,
        catalog: Catalog,
        eventlog: EventLog,
        outcomes: Outcomes,
        placement: Placement,
        supervisor: Supervisor,
        coordinator: Callable[[], Coordinator | None],
        consumer_name: Callable[[int], str],
    ) -> None:
        self._settings = settings
        self._host_id = settings.host_id  # read once per command: bound, not looked up in the settings
        self._clock = clock
        self._tel = tel
        self._metrics = metrics
        self._log = log
        self._catalog = catalog
        self.eventlog = eventlog
        self._outcomes = outcomes
        self._placement = placement
        self._supervisor = supervisor
        self._coordinator = coordinator
        self._consumer_name = consumer_name
        self._unnamed = unnamed_prefix(settings.host_id, clock.wall_ms())
        self._seq = itertools.count()
        self._steps = catalog.steps = Steps(
            settings, clock, log, catalog=catalog, eventlog=eventlog, placement=placement, coordinator=coordinator
        )
        # streamed output (ADR 0042 section 6); its port is bound by the host's start()
        self.out = outcomes.out = OutStreams(settings, clock, log, catalog.subjects, supervisor)
        self.suspension = Suspension(
            settings, clock, log, steps=self._steps, outcomes=outcomes, run=self._process_traced, catalog=catalog
        )
        self.signals = Signals(self.suspension)  # signal, timer, cancel and result bodies
        self.health = catalog.health = Health(settings, catalog, tel, metrics, log)  # ADR 0059
        self.loop: Timers = None  # type: ignore[assignment]  # set by the host's start()

    async def process(self, act: Activation, cmd: Command) -> None:
        """Process one command of ``act`` to its outcome (answered, acknowledged, handed back)."""
        if cmd.kind is MIGRATE:
            await self._placement.migrate(act, cmd)
            return
        if (
            cmd.kind is not FORWARDED
            and self._placement.may_route(act)
            and await self._placement.route_elsewhere(act, cmd)
        ):
            return
        out = cmd.reply_headers()
        tel = self._tel
        aid = act.agent_id
        tp = cmd.traceparent
        log_token = set_command((self._host_id, aid, cmd.correlation_id, tp))
        try:
            if not tel.tracing:  # no SDK configured: carry the trace context, skip the spans
                if tp is not None:  # without an SDK no span records: only a received context is carried
                    carry_received(tp, cmd.tracestate, out)
                await self._process_traced(act, cmd, out)
            else:
                await self._process_span(act, cmd, out)
        finally:
            exit_command(log_token)
            if tel.metering:
                elapsed = self._clock.monotonic() - cmd.received
                outcome = cmd.outcome or FAILED
                tel.command_done(aid.type, cmd.action, cmd.delivery_mode, outcome, cmd.error, cmd.deliveries, elapsed)

    async def _process_span(self, act: Activation, cmd: Command, out: dict[str, str]) -> None:
        """``_process_traced`` inside a CONSUMER span, child of the sender's span."""
        aid = act.agent_id
        attrs: dict[str, Any] = {
            MESSAGING_SYSTEM: "nats",
            MESSAGING_OPERATION_TYPE: "process",
            MESSAGING_OPERATION_NAME: "process",
            MESSAGING_DESTINATION: cmd.subject,
            MESSAGING_MESSAGE_ID: cmd.command_id,
            MESSAGING_CONVERSATION_ID: cmd.correlation_id,
            MESSAGING_BODY_SIZE: len(cmd.body),
            AGENT_TYPE: aid.type,
            AGENT_ID: aid.id,
            DELIVERY: cmd.delivery_mode,
            HOST_ID: self._settings.host_id,
        }
        if cmd.durable:
            attrs[MESSAGING_PARTITION] = str(cmd.partition)
            attrs[MESSAGING_CONSUMER_GROUP] = self._consumer_name(cmd.partition)
            attrs[DELIVERY_COUNT] = cmd.deliveries
        # the sender's span is the parent (any propagator's headers, as received)
        parent = propagate.extract(cmd.headers) if cmd.headers else None
        token = otel_context.attach(parent) if parent is not None else None
        try:
            with self._tel.tracer.start_as_current_span(
                f"process {aid.type}", kind=trace.SpanKind.CONSUMER, attributes=attrs
            ) as span:
                cmd.traced = True
                carry_context(cmd.traceparent, cmd.tracestate, out)
                await self._process_traced(act, cmd, out)
                finish_process_span(span, cmd.action, cmd.outcome or FAILED, cmd.error, out)
        finally:
            if token is not None:
                otel_context.detach(token)

    async def _process_traced(self, act: Activation, cmd: Command, out: dict[str, str]) -> None:
        s = self._settings
        outcomes = self._outcomes
        durable = cmd.durable  # a property: read once
        # hand-backs for a busy agent (ADR 0036) are not failures: they do not count here
        if durable and exhausted(cmd.deliveries, cmd.busy_naks, outcomes.limits):
            await outcomes.settle(cmd, Result.EXHAUSTED, out)
            return
        try:
            if len(cmd.command_id) > MAX_COMMAND_ID_LEN:
                raise MalformedCommand("command id longer than 256 characters")
            if cmd.reply_refused:
                # never answer there, not even with this refusal
                err = MalformedCommand("the reply subject is not under a reply prefix this host accepts")
                await outcomes.settle(cmd, Result.REFUSED, out, error=err, silent=True)
                return
            body = decode_command(unscheduled_body(cmd) if durable else cmd.body, s.max_payload_bytes)
            if not isinstance(body, CommandBody):  # a signal, timer, cancel or result query
                cmd.action = "_" + type(body).__name__.removesuffix("Body").lower()
                await self.signals.process(act, cmd, body, out, self._supervisor)
                return
            name, spec = body.action, act.spec
            # a reserved action (_remind, ...) first, else the type's own; one lookup each
            action = builtin_action(spec, name) if name in BUILTINS else spec.actions.get(name)
            cmd.action = name if action is not None else "_unknown"
            if action is None:
                action = spec.action(name)  # raises UnknownAction
            params = action.validate_params(body.params)
        except JetAgentsError as err:
            await outcomes.settle(cmd, Result.REFUSED, out, error=err)
            return
        # Failures are retried here, in place, so the agent's later commands wait behind
        # this one (per-agent FIFO holds); the housekeeping sends +WPI meanwhile.
        attempt = 0
        while True:
            failure = await self._attempt(act, cmd, action, params, body.params, out)
            if failure is None:
                return
            failed, handler_fault = failure
            attempt += 1
            lost = False
            coord = self._coordinator()
            if cmd.durable and isinstance(failed, FencedError) and coord is not None:
                # Another host wrote this agent. Retry only if the store (not our memory,
                # which may be stale after a pause) says the partition is still ours.
                try:
                    lost = not await coord.still_holds(cmd.partition)
                except JetAgentsError:
                    lost = True
                if lost:
                    self._log.warning("partition_lost", partition=cmd.partition, agent=str(act.agent_id))
            outcome = outcomes.decide(
                cmd,
                Result.FAILED,
                error=failed,
                handler_fault=handler_fault,
                attempt=attempt,
                partition_lost=lost,
                stopping=self._supervisor.stopping,
            )
            if outcome.ack.kind is not AckKind.RETRY:
                await outcomes.execute(cmd, outcome, out)
                return
            outcomes.count(cmd, outcome)
            await self._clock.sleep(outcome.ack.delay_s)

    async def _attempt(
        self,
        act: Activation,
        cmd: Command,
        action: Any,
        params: dict[str, Any],
        raw: dict[str, Any],
        out: dict[str, str],
    ) -> tuple[JetAgentsError, bool] | None:
        """Run the command once. ``None`` when finished (answered, acknowledged or
        dead-lettered), else ``(error, handler_fault)`` to retry."""
        s = self._settings
        if act.agent is None:
            try:
                await self._catalog.activate(act)
            except _NON_RETRYABLE_INPUT as err:
                await self._outcomes.settle(cmd, Result.REFUSED, out, error=err)
                return None
            except JetAgentsError as err:
                return err, isinstance(err, InternalError)
        agent = act.agent
        assert agent is not None
        if act.journals and not cmd.resume:  # what a crash left runnable goes first
            try:
                await self.suspension.catch_up(act, cmd)
            except JetAgentsError as err:
                return err, False
            if act.agent is None:
                return Unavailable(f"{act.agent_id} was rebuilt while catching up"), False

        cmd_id = cmd.command_id
        if cmd_id:
            records = act.records
            record = records.get(cmd_id) if records is not None else None
            if record is not None:
                self._metrics.inc("duplicates", agent_type=act.agent_id.type, source="record")
                if record.ok:
                    await self._outcomes.settle(cmd, Result.DUPLICATE, out, answer=record.payload, event_seq=record.seq)
                else:
                    refusal = error_from_wire(record.payload)
                    await self._outcomes.settle(cmd, Result.DUPLICATE, out, error=refusal, event_seq=record.seq)
                return None

        if act.journals:
            try:
                if not await self.suspension.admit(act, cmd, action.name, raw, action.read_only, out):
                    return None  # another action is suspended (ADR 0042 §4), or this one is
            except AlreadyInLog as dup:  # parked before, and closed since: answered from the log
                return None if await self.suspension.answered_before(act, cmd, dup.seq, out) else (dup, False)
            except JetAgentsError as err:  # parking it, or interrupting the suspended one, failed
                return err, False

        # the action's time limit: its own, its type's or the host's, cut to the command's
        # deadline when that comes first (ADR 0036)
        limit_s: float = action.timeout_s or act.spec.action_timeout_s or s.action_timeout_s
        by_deadline = False
        if cmd.deadline_ms is not None:
            left_s = (cmd.deadline_ms - self._clock.wall_ms()) / 1000
            if left_s < 0:
                late = DeadlineExceeded("the command's deadline passed before it ran")
                await self._outcomes.settle(cmd, Result.DEADLINE, out, error=late)
                return None
            if left_s < limit_s:
                limit_s, by_deadline = left_s, True

        ctx = agent.ctx
        ctx.command_id = cmd_id
        ctx.correlation_id = cmd.correlation_id
        ctx.action = action.name
        ctx.out = await self.out.open(act, cmd) if cmd.streams else None
        # read only by a journal append, which a run without a command id never makes
        ctx.command = Running(raw, cmd.reply_to, cmd.streams) if cmd_id else None
        agent._firing = firing_of(cmd, agent) if cmd.durable else None  # only a durable command is a firing
        agent._begin()
        health = self.health
        loop = self.loop
        try:
            # measured for its health (ADR 0059); most actions finish in their first stretch,
            # run here: only one that waits needs a Deadline
            coro = action.fn(agent, **params)
            done, result, started = health.start(act, coro, loop)
            if not done:
                result = await health.deadline(
                    act,
                    coro,
                    loop,
                    limit_s,
                    lambda: self._log.warning(
                        "action_ignores_cancel", agent=str(act.agent_id), action=action.name, limit_s=limit_s
                    ),
                    started=started,
                    first=result,
                )
            events, draft = agent._finish()
            if events and action.read_only:
                raise InternalError(f"read-only action {action.name!r} emitted events")
            result_json = action.dump_result(result)
        except Suspend as sus:  # the action waits: only its journal is kept (ADR 0042 §3)
            agent._finish()
            await self.suspension.suspended(act, cmd, sus.waiting, out)
            return None
        except (DomainError, ActionCancelled, InvalidParams, UnknownAction) as err:  # refusals
            agent._finish()
            try:
                await self.suspension.keep_refusal(act, cmd_id, err, waited=True)
            except JetAgentsError as exc:
                return exc, False
            await self._outcomes.settle(cmd, Result.DOMAIN, out, error=err)
            return None
        except AlreadyInLog as dup:  # run before, closed, and forgotten by the bounded record
            agent._finish()
            if await self.suspension.answered_before(act, cmd, dup.seq, out):
                return None
            return dup, False
        except (NonDeterministic, Deadlock, CallCycle, CallTooDeep) as err:  # final: not retried (ADR 0042)
            agent._finish()
            if isinstance(err, NonDeterministic):  # its journal stays open and blocked
                await self._steps.block(act, agent, err)
            await self._outcomes.settle(cmd, Result.REFUSED, out, error=err)
            return None
        except (FencedError, Unavailable) as err:  # a journal append (a step, a wait) failed: infrastructure
            agent._finish()
            return err, False
        except Overrun:
            agent._finish()  # whatever it emitted is dropped
            await self._overran(act, cmd, action.name, limit_s, by_deadline, out)
            return None
        except Exception as exc:  # noqa: BLE001 - the handler failed: retry, then dead-letter
            agent._finish()
            self._log.warning("action_failed", agent=str(act.agent_id), error=repr(exc), deliveries=cmd.deliveries)
            return (
                exc if isinstance(exc, InternalError) else InternalError(f"action {action.name!r} failed: {exc!r}")
            ), True

        journals = act.journals
        journal = journals.get(cmd_id) if journals else None  # a journaled action always closes it
        if events or journal is not None or agent._firing is not None:  # a firing always commits
            n, own = act.n + 1, self._placement.token_of(act.agent_id, cmd.partition)
            # the token first: it nearly always stands, and then the coordinator is not asked for
            if own < max(act.own, 1) and self._coordinator() is not None:
                # No claim (nor placement) any more, or one older than the log's newest
                # writer: never write. A command still in hand when its partition was dropped
                # (retrying in place, or its agent no longer in the catalog, so nothing made
                # it rebuild) would otherwise commit without a claim; the simulation found both.
                self._metrics.inc("fenced")
                self._catalog.evict(act)  # rebuilt from the log, where the activation fence applies
                return FencedError(f"{act.agent_id}: writer token {own} is older than the log's {act.own}"), False
            name = cmd_id or f"{self._unnamed}{next(self._seq)}"
            body = encode_commit(
                n=n,
                cmd=name,
                action=action.name,
                events=wire_events(events),
                result=result_json,
                cseq=cmd.stream_seq,
                ts_ms=self._clock.wall_ms(),
                own=own,
                j=closing_entry(agent._firing, journal is not None, agent._cursor),
            )
            commit = NewCommit(n, name, own, body)
            try:
                if cmd.traced:
                    seq, duplicate = await self.eventlog.append_span(act.agent_id, act.last_seq, commit, out)
                else:
                    seq, duplicate = await self.eventlog.append(act.agent_id, act.last_seq, commit, out)
            except PayloadTooLarge as err:  # the commit itself is too big: never retryable
                await self._outcomes.settle(cmd, Result.REFUSED, out, error=err)
                return None
            except FencedError as err:
                self._metrics.inc("fenced")
                self._log.warning("append_fenced", agent=str(act.agent_id), cmd=cmd_id)
                self._catalog.evict(act)  # rebuild from the log (with the other writer's commits)
                return err, False
            except JetAgentsError as err:
                self._catalog.evict(act)  # the append may or may not have landed: rebuild from the log
                return err, False
            if journal is not None:
                del journals[cmd_id]  # type: ignore[union-attr]  # closed
                if not journals:
                    act.journals = None
            if duplicate:
                # This command's commit is already in the log (its record had been
                # evicted): do not apply it again; answer with what it answered then.
                self._metrics.inc("duplicates", agent_type=act.agent_id.type, source="log")
                first = await self.eventlog.commit_at(seq)
                answer = first.result if first else None
                if journal is not None and journal.parked is not None:  # a re-park: closed in the log too
                    await self.suspension.close_dup(act, cmd_id, action.name, first, seq)
                await self._outcomes.settle(cmd, Result.DUPLICATE, out, answer=answer, event_seq=seq)
                return None
            agent._commit(draft)
            agent._fired_commit()  # a firing's next: counts the firings merged before the next one
            act.last_seq = seq
            act.n = commit.n
            act.own = max(act.own, commit.own)
            act.since_snapshot += 1
            self._records(act).applied(commit.cmd, seq, result_json)
            if act.since_snapshot >= s.snapshot_every and not act.snapshotting:
                self._supervisor.spawn("side", self._catalog.snapshot(act))
        else:
            seq = 0
        await self._outcomes.settle_ok(cmd, out, result_json, seq)
        return None

    async def _overran(
        self, act: Activation, cmd: Command, action: str, limit_s: float, by_deadline: bool, out: dict[str, str]
    ) -> None:
        """The action was cancelled at its limit (ADR 0036): ``overrun_error``, settled and kept
        as a refusal is (a park ends with it; a redelivery gets it, not run nor dead-lettered again)."""
        err = overrun_error(action, limit_s, by_deadline)
        self._metrics.inc("action_timeouts", agent_type=act.agent_id.type, action=action, error=err.code)
        self._log.warning("action_timed_out", agent=str(act.agent_id), action=action, limit_s=limit_s, code=err.code)
        try:  # a resumed run's journal is blocked instead (Suspension._after_run)
            await self.suspension.keep_refusal(act, cmd.command_id, err, waited=False)
        except JetAgentsError as exc:  # its park stays: run (and refused) again later
            self._log.warning("overrun_not_recorded", agent=str(act.agent_id), error=repr(exc))
        await self._outcomes.settle(cmd, Result.OVERRAN, out, error=err, by_deadline=by_deadline)

    def _records(self, act: Activation) -> DedupRecord:
        return act.dedup(self._settings.dedup_records_per_agent)
