"""The scheduler: per-agent mailboxes, the ready heaps, the worker pools and the in-flight bounds.

Every agent sees its commands one at a time and in arrival order; different agents run
concurrently on at most ``workers`` worker tasks, which take ready agents by priority. Types
listed in a worker pool (``HostSettings.pools``, bulkheads) run on that pool's workers only, and
a pool whose workers are busy and whose queue is full refuses more of its types' commands at
once (calls: ``unavailable``, reason ``pool_saturated``; durable: handed back), so a hung or slow
type holds neither the shared workers nor the host's in-flight room. A full
mailbox (or an earlier hand-back still out) refuses a command: a call is answered busy, a
durable command is handed back to the stream with a growing delay (ADR 0036). The commands in
hand (queued or running) are counted, in number and bytes, so intake and the pullers stop
taking more when the host is full.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from .._core.agent import Registry
from .._core.clock import Clock
from .._core.command import ACKED, MIGRATE, Command
from .._core.errors import JetAgentsError, MalformedCommand, Unavailable, UnknownAgentType
from .._core.ids import AgentId, is_valid_token
from .._core.outcome import Result
from .._core.wire import H_CALL_CHAIN
from .._obs.propagation import carry_context
from .._settings import HostSettings
from .callchains import CallChains
from .catalog import Activation, Catalog
from .eager import start_eager
from .outcomes import Outcomes
from .supervisor import Supervisor

# a durable command handed back because its agent's mailbox was full keeps every later
# command of that agent waiting (handed back too) until it returns, or until this long
_HOLD_S = 60.0


def _queued(mailbox: deque[Command], high: bool) -> int:
    """The commands of a mailbox a new one of its lane queues behind (its bound): all of them
    for the normal lane, the high ones (always in front, ADR 0058) for the high lane."""
    if not high:
        return len(mailbox)
    n = 0
    for queued in mailbox:
        if not queued.high:
            break
        n += 1
    return n


def _held_before(held: dict[int, tuple[int, float]], cmd: Command) -> bool:
    """Whether a command of ``cmd``'s lane that came before it was handed back. Held commands
    are keyed by stream sequence, the high lane's negated (its stream numbers its own)."""
    seq = cmd.stream_seq
    if cmd.high:
        return any(k < 0 and -k < seq for k in held)
    return any(0 < k < seq for k in held)


def _start_task(coro: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop) -> asyncio.Task[None]:
    """A worker started the plain way (``eager_start`` off): in a task, at the loop's next turn."""
    return loop.create_task(coro)


class _Pool:
    """Workers and the agents ready for one of them: the shared pool, or a bulkhead."""

    __slots__ = ("in_hand", "limit", "name", "ready", "running", "workers")

    def __init__(self, name: str, workers: int, queue_max: int | None) -> None:
        self.name = name
        self.workers = workers
        self.running = 0
        # agents with commands waiting for a free worker, by (priority rank, arrival)
        self.ready: list[tuple[int, int, Activation]] = []
        # a bulkhead's commands in hand (running or queued) and how many it takes
        self.in_hand = 0
        self.limit = None if queue_max is None else workers + queue_max


class Scheduler:
    """Mailboxes, the ready heap, workers, bounds and hand-backs; the commands in hand."""

    def __init__(
        self,
        settings: HostSettings,
        registry: Registry,
        catalog: Catalog,
        outcomes: Outcomes,
        supervisor: Supervisor,
        clock: Clock,
        log: Any,
        *,
        process: Callable[[Activation, Command], Awaitable[None]],
        wake_pullers: Callable[[int | None], None],
        max_payload_bytes: int,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._catalog = catalog
        self._outcomes = outcomes
        self._supervisor = supervisor
        self._clock = clock
        self._log = log
        self._process = process
        self._wake_pullers = wake_pullers
        # past this many bytes in hand no puller asks for more (room for one more largest body)
        self._full_bytes = settings.max_inflight_bytes - max_payload_bytes - 4096
        # read for every command: bound once (settings never change while a host runs)
        self._room_again = settings.max_inflight - 1  # in hand after a full host's first one is done
        self._mailbox_max = settings.max_mailbox_per_agent
        self._start = start_eager if settings.eager_start else _start_task
        self._seq = itertools.count()
        # workers: per pool at most its ``workers`` tasks, each processing one agent's command
        # and then the next ready agent's of the same pool, until none is ready
        self._shared = _Pool("shared", settings.workers, None)
        self._pools: dict[str, _Pool] = {}  # agent type -> its bulkhead
        for name, cfg in settings.pools.items():
            pool = _Pool(name, cfg.workers, cfg.queue_max)
            for agent_type in cfg.types:
                self._pools[agent_type] = pool
        self._inflight: set[Command] = set()
        # read by intake for every call (plain attributes, not properties: no call each);
        # only this class writes them
        self.inflight_count = 0
        self.inflight_bytes = 0  # bodies held by the commands in hand (max_inflight_bytes)
        # set when the last command in hand is done; made only while someone waits for that
        # (the drain), not cleared and set again around every command
        self._idle: asyncio.Event | None = None
        self.health = catalog.health  # throttles at intake, restarts after a command (ADR 0059)
        for spec in map(registry.get, registry.types()):  # watched from the first command on
            if spec is not None:
                self.health.policy(spec.type_name, spec.cls)
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by the host's start()
        outcomes.blobs = catalog.blobs  # a recorded result by reference is read back for its reply
        # call chains (ADR 0042 section 7): a chained command for a busy agent may run at once or fail fast
        self.chains = CallChains(
            settings,
            log,
            outcomes=outcomes,
            supervisor=supervisor,
            refuse=self.reject_unrouted,
            untrack=self.untrack,
            process=process,
        )

    # -- what the others ask -----------------------------------------------------------------
    def in_hand(self) -> list[Command]:
        """The commands in hand (queued or running), a copy."""
        return list(self._inflight)

    def busy_with(self, partition: int) -> bool:
        """Whether a command of ``partition`` is still in hand."""
        return any(c.partition == partition and not c.done for c in self._inflight)

    async def wait_idle(self) -> None:
        """Until no command is in hand."""
        if self.inflight_count <= 0:
            return
        if self._idle is None:
            self._idle = asyncio.Event()
        await self._idle.wait()

    # -- intake -> mailboxes -------------------------------------------------------------------
    def dispatch(self, cmd: Command) -> None:
        """Queue ``cmd`` for its agent (or refuse it); start a worker if one is free."""
        self.track(cmd)
        agent_type, agent_id = cmd.agent_type, cmd.agent_id
        key = f"{agent_type}.{agent_id}"
        activations = self._catalog.activations
        act = activations.get(key)
        if act is not None:  # in memory: its type and id were checked as it was made (AgentId)
            spec = act.spec
        else:
            found = self._registry.get(agent_type)
            if found is None or not is_valid_token(agent_id):
                err: JetAgentsError = (
                    UnknownAgentType(
                        f"no agent type {agent_type!r} is registered", details={"types": self._registry.types()}
                    )
                    if found is None
                    else MalformedCommand(f"invalid agent id {agent_id!r}")
                )
                self._supervisor.spawn("side", self.reject_unrouted(cmd, err))
                return
            spec = found
        pool = self._pools.get(agent_type)
        saturated = pool is not None and pool.limit is not None and pool.in_hand >= pool.limit
        if self.health.watched and agent_type in self.health.watched and cmd.kind is not MIGRATE:
            throttled = self.health.admit(agent_type, act)  # over its CPU share (ADR 0059)
            if throttled is not None:
                if act is None:
                    act = activations[key] = Activation(AgentId(agent_type, agent_id), spec)
                self._over_bound(act, cmd, throttled=throttled)
                return
        if act is None:
            act = Activation(AgentId(agent_type, agent_id), spec)
            activations[key] = act
            if saturated and cmd.kind is not MIGRATE and self._over_bound(act, cmd, pool):
                return
        else:
            activations.move_to_end(key)
            mailbox = act.mailbox
            full = mailbox is not None and _queued(mailbox, cmd.high) >= self._mailbox_max
            if (
                (full or saturated or act.held is not None)
                and cmd.kind is not MIGRATE
                and self._over_bound(act, cmd, pool if saturated else None)
            ):
                return
        hdrs = cmd.headers
        if hdrs and H_CALL_CHAIN in hdrs and self.chains.admit(act, cmd):
            return
        if pool is not None:
            pool.in_hand += 1
            cmd.pooled = True
        else:
            pool = self._shared
        if act.scheduled:  # running or waiting for a worker: its commands run in order (per lane)
            if act.mailbox is None:
                act.mailbox = deque()
            if cmd.high:  # ahead of the normal lane's, behind the high ones (ADR 0058)
                act.mailbox.insert(_queued(act.mailbox, True), cmd)
            else:
                act.mailbox.append(cmd)
            return
        act.scheduled = True
        if pool.running < pool.workers:
            pool.running += 1
            coro = self._work(pool, act, cmd)
            # Run it here and now, up to its first wait, rather than one turn of the event
            # loop later in a new task (docs/adr/0031).
            task = self._start(coro, self.loop)
            if task is not None:
                self._supervisor.adopt("workers", task)
            return
        act.mailbox = deque((cmd,))
        heapq.heappush(pool.ready, (cmd.priority_rank, next(self._seq), act))

    def _over_bound(
        self, act: Activation, cmd: Command, saturated: _Pool | None = None, throttled: JetAgentsError | None = None
    ) -> bool:
        """Whether ``cmd`` must stay out of its agent's mailbox, and if so refuse it: the
        mailbox is full (``max_mailbox_per_agent``), its type's worker pool is ``saturated``,
        or, for a durable command, an earlier command of the agent was handed back and has not
        come back yet (this one would overtake it). A call is answered ``unavailable`` (agent
        busy or pool saturated, not applied); a durable command is handed back (``-NAK`` with a
        growing delay) and comes again (ADR 0036)."""
        mailbox = act.mailbox
        full = (
            saturated is not None
            or throttled is not None
            or (mailbox is not None and _queued(mailbox, cmd.high) >= self._mailbox_max)
        )
        seq = cmd.stream_seq
        if cmd.kind in ACKED and seq:
            key = -seq if cmd.high else seq
            now = self._clock.monotonic()
            if act.held is not None:
                self.prune_held(act, now)
            held = act.held
            earlier = held is not None and _held_before(held, cmd)
            if not (full or earlier):
                if held is not None and key in held:
                    cmd.busy_naks = held.pop(key)[0]
                    if not held:
                        act.held = None
                return False
            if held is None:
                held = act.held = {}
            times = held.get(key, (0, 0.0))[0] + 1
            held[key] = (times, now)
            self._refuse_busy(act, cmd, times, saturated, throttled)
            return True
        if not full:
            return False
        self._refuse_busy(act, cmd, 0, saturated, throttled)
        return True

    def prune_held(self, act: Activation, now: float) -> None:
        """Forget handed-back commands that did not come back (purged, moved elsewhere)."""
        held = act.held
        if held is None:
            return
        for seq in [s for s, (_, at) in held.items() if now - at > _HOLD_S]:
            del held[seq]
        if not held:
            act.held = None

    def _refuse_busy(
        self,
        act: Activation,
        cmd: Command,
        hand_backs: int,
        saturated: _Pool | None = None,
        throttled: JetAgentsError | None = None,
    ) -> None:
        """Row 12: hand a durable command back (``hand_backs`` times so far, 0: not tracked),
        refuse a call (agent busy, its pool ``saturated`` or ``throttled``, not applied)."""
        # out of the host's in-flight count at once: a burst of refusals must not fill it
        self.untrack(cmd)
        err = None
        if not cmd.durable:
            if throttled is not None:
                err = throttled
            elif saturated is not None:
                err = Unavailable(
                    f"worker pool {saturated.name!r} of {act.agent_id.type!r} is saturated"
                    f" ({saturated.in_hand} commands in hand); retry",
                    details={"applied": False, "reason": "pool_saturated", "pool": saturated.name},
                )
            else:
                err = Unavailable(
                    f"agent busy: {len(act.mailbox or ())} commands of {act.agent_id} are waiting; retry",
                    details={"applied": False, "reason": "agent_busy"},
                )
        outcomes = self._outcomes
        outcome = outcomes.decide(cmd, Result.BUSY, error=err, hand_backs=hand_backs)
        outcomes.count(cmd, outcome)  # at once: a burst of refusals shows as it happens
        self._supervisor.spawn("side", outcomes.execute(cmd, outcome, {}, counted=True))

    async def reject_unrouted(self, cmd: Command, err: JetAgentsError) -> None:
        """Refuse a command no agent's mailbox takes (unknown type, invalid id, too large)."""
        try:
            out = cmd.reply_headers()  # the same ids the pipeline would answer with (wire contract §4)
            carry_context(cmd.traceparent, cmd.tracestate, out)
            await self._outcomes.settle(cmd, Result.REFUSED, out, error=err)
        finally:
            self.untrack(cmd)

    # -- the commands in hand ------------------------------------------------------------------
    def track(self, cmd: Command) -> None:
        self._inflight.add(cmd)
        self.inflight_count += 1
        self.inflight_bytes += len(cmd.body)

    def untrack(self, cmd: Command) -> None:
        if cmd.done:
            return
        cmd.done = True
        if cmd.pooled:
            self._pools[cmd.agent_type].in_hand -= 1
        self._inflight.discard(cmd)
        n = self.inflight_count = self.inflight_count - 1
        was = self.inflight_bytes
        now = self.inflight_bytes = was - len(cmd.body)
        if self._idle is not None and n <= 0:  # someone waits (rare): is it the last?
            self._idle.set()
            self._idle = None
        full_bytes = self._full_bytes
        if n == self._room_again or (was > full_bytes and now <= full_bytes):
            # the host was full: any puller may have been waiting for room
            self._wake_pullers(None)
        else:
            self._wake_pullers(cmd.partition)

    # -- workers -------------------------------------------------------------------------------
    async def _work(self, pool: _Pool, act: Activation, cmd: Command) -> None:
        """A worker of ``pool``: process ``cmd``, then the next ready agent's command, and so
        on until no agent of the pool is waiting for a worker. Each command is processed in
        this loop, not in a coroutine of its own (one less per command)."""
        ready = pool.ready
        chains = self.chains
        try:
            while True:
                frame = chains.enter(act, cmd)  # what its action's calls name and wait on (ADR 0042 section 7)
                try:
                    await self._process(act, cmd)
                except asyncio.CancelledError:
                    await self._outcomes.settle_interrupted(cmd)
                    raise
                except Exception:  # noqa: BLE001 - a bug here must not kill the worker
                    self._log.exception("process_failed", agent=str(act.agent_id))
                    await self._outcomes.settle_crashed(cmd)
                finally:
                    chains.leave(act, frame)
                    self.untrack(cmd)
                    act.last_used = self._clock.monotonic()
                    if act.mailbox:  # its next command, behind the agents ready before it
                        heapq.heappush(ready, (act.mailbox[0].priority_rank, next(self._seq), act))
                    else:
                        act.mailbox = None
                        act.scheduled = False
                    health = act.health
                    if health is not None and health.due is not None:  # a restart or passivation (ADR 0059)
                        self.health.act_on(act)
                if not ready:
                    return
                # let the event loop breathe between commands that never waited
                await asyncio.sleep(0)
                if not ready:
                    return
                _, _, act = heapq.heappop(ready)
                assert act.mailbox is not None
                cmd = act.mailbox.popleft()
        finally:
            pool.running -= 1
