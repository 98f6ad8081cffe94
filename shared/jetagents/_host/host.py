"""The agent host: pulls commands of its partitions, runs agents, appends their events.

One host process owns a set of partitions (all of them when it runs alone). For each
partition it pulls from a durable consumer with a credit loop (pinned-client priority
group, so the server feeds one host at a time); messages go to per-agent mailboxes; a
bounded pool of workers takes ready agents by priority and processes one command at a
time per agent, so every agent sees its commands in stream order while different agents
run concurrently.

Processing one command::

    decode (size first) -> validate action/params -> activate (snapshot + replay)
    -> dedup record? answer from it -> run the action -> append ONE commit message
       (Nats-Expected-Last-Subject-Sequence = fence, Nats-Msg-Id = idempotency)
    -> reply -> ack

Bad input is answered, dead-lettered and terminated (never redelivered); a failing
handler is retried with backoff and dead-lettered after ``max_deliver`` attempts;
infrastructure failures are retried until the infrastructure is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import os
from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace

from .._core.agent import Registry, wire_events
from .._core.clock import Clock, SystemClock
from .._core.command import ACKED, MAX_COMMAND_ID_LEN, Command, Kind
from .._core.dedup import DedupRecord
from .._core.errors import (
    ActionTimeout,
    DeadlineExceeded,
    DomainError,
    FencedError,
    InternalError,
    JetAgentsError,
    MalformedCommand,
    PayloadTooLarge,
    Unavailable,
    UnknownAgent,
    UnknownAgentType,
    error_from_wire,
)
from .._core.ids import AgentId, fnv1a_32, is_valid_token
from .._core.outcome import AckKind, Result, exhausted
from .._core.wire import (
    DEAD_LETTER_MIN_BYTES,
    Subjects,
    decode_command,
    encode_commit,
)
from .._nats.api import (
    DirectReader,
    Topology,
    connect,
    ensure_topology,
)
from .._nats.buckets import KvBucket
from .._nats.consumers import PartitionConsumers
from .._nats.event_stream import JetStreamEventStream
from .._nats.hosts import HostLink, dropped_subject
from .._nats.inbox import Inbox
from .._nats.kv import JetStreamStore, NatsClient
from .._nats.ports import NatsPublisher
from .._obs.metrics import Metrics
from .._obs.propagation import carry_context
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
    REQUEUED,
    HostTelemetry,
    enter_command,
    exit_command,
    finish_process_span,
)
from .._obs.watchdog import LoopWatchdog
from .._settings import HostSettings
from .catalog import Activation, Catalog
from .coordination import ClusterConfig, Coordinator
from .deadline import Deadline, Overrun
from .eager import start_eager
from .eventlog import EventLog, NewCommit
from .intake import Intake
from .outcomes import Outcomes
from .partitions import Partitions
from .placement import PipelineHooks, Placement
from .supervisor import Supervisor
from .sweeper import StrandedSweeper

if TYPE_CHECKING:
    from nats.aio.msg import Msg

log = structlog.get_logger("jetagents.host")

STREAM, CALL, FWD, MIGRATE = Kind.STREAM, Kind.CALL, Kind.FORWARDED, Kind.MIGRATE
_ACKED = ACKED  # kinds that are acknowledged (to the stream, or to the forwarder)
_NON_RETRYABLE_INPUT = (MalformedCommand, UnknownAgentType, UnknownAgent)
# a durable command handed back because its agent's mailbox was full keeps every later
# command of that agent waiting (handed back too) until it returns, or until this long
_HOLD_S = 60.0


def _rss_mb() -> float:
    """Resident memory of this process in MiB (Linux; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _trace_of(cmd: Command) -> tuple[str | None, str | None]:
    """The received trace context: (traceparent, tracestate)."""
    t = cmd.trace
    return (t.traceparent, t.tracestate) if t is not None else (None, None)


class Host:
    """Runs agents. Use as ``async with Host(settings, registry) as host: ...``.

    >>> host = Host(HostSettings(nats_url="nats://127.0.0.1:4222"), Registry([]))  # doctest: +SKIP
    """

    def __init__(
        self,
        settings: HostSettings,
        registry: Registry,
        *,
        clock: Clock | None = None,
        partitions: list[int] | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.clock = clock or SystemClock()
        self.subjects = Subjects(settings.subject_root)
        self.topology = Topology(
            subjects=self.subjects,
            partitions=settings.partitions,
            replicas=settings.replicas,
            duplicate_window_s=settings.duplicate_window_s,
            max_payload_bytes=settings.max_payload_bytes,
        )
        # ring membership: partitions come and go as the cluster's ring assigns them;
        # static: a fixed set (given, or p % host_count == host_index)
        self.static = partitions is not None or settings.membership == "static"
        if partitions is None and self.static:
            partitions = [p for p in range(settings.partitions) if p % settings.host_count == settings.host_index]
        self._static_partitions = sorted(partitions or [])
        self.coordinator: Coordinator | None = None
        self.nc: NatsClient = None  # type: ignore[assignment]
        self.cepoch = ""
        # agents with commands waiting for a free worker, by (priority rank, arrival)
        self._ready: list[tuple[int, int, Activation]] = []
        self._seq = itertools.count()
        self._inflight: set[Command] = set()
        self._inflight_count = 0
        self._inflight_bytes = 0  # bodies held by the commands in _inflight (max_inflight_bytes)
        self._idle = asyncio.Event()
        self._idle.set()
        self._sweeper: StrandedSweeper | None = None
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by start()
        self._intake = Intake(self)
        # workers: at most settings.workers tasks, each processing one agent's command and
        # then the next ready agent's, until none is ready
        self._running = 0
        self._pull_prefix = ""
        self._pull_sub: Any = None
        self._call_sub: Any = None
        self._host_sub: Any = None
        self._reader: DirectReader | None = None
        self._inbox: Inbox | None = None  # PubAcks of event appends
        self.eventlog: EventLog = None  # type: ignore[assignment]  # set by start()
        self._client: Any = None
        self._log = log.bind(host=settings.host_id)
        # every task the host starts, by group; and the lifecycle flags its loops read
        self.supervisor = Supervisor(self._log)
        # OpenTelemetry: the given providers, else the global ones (no SDK: no spans, no metrics)
        self._providers = (tracer_provider, meter_provider)
        self._tel = HostTelemetry(self, settings.host_id, tracer_provider, meter_provider)
        self.metrics = Metrics(self._tel)
        self.partitions = Partitions(
            settings,
            self.topology,
            self.clock,
            self.supervisor,
            self.metrics,
            self._log,
            self._pull_room,
            claims=not self.static,
        )
        self.catalog = Catalog(
            settings,
            self.subjects,
            self.clock,
            self.supervisor,
            self.metrics,
            self._tel,
            self._log,
            lambda aid, partition: self.placement.fence_token(aid, partition),
        )
        self._publisher = NatsPublisher(self.nc, settings.op_timeout_s)  # connected by start()
        self.outcomes = Outcomes(
            self._publisher,
            settings,
            subjects=self.subjects,
            registry=registry,
            clock=self.clock,
            metrics=self.metrics,
            tel=self._tel,
            log=self._log,
            dead_letter_max_bytes=self._dead_letter_max_bytes,
        )
        outcomes = self.outcomes
        hooks = PipelineHooks(self._intake.parse, self._dispatch, outcomes.reply, outcomes.ack, outcomes.nak)
        self.placement = Placement(
            settings,
            registry,
            self.subjects,
            self.clock,
            self._log,
            self.catalog,
            hooks,
            coordinator=lambda: self.coordinator,
            owns=lambda partition: partition in self.partitions.owned_set,
            event=self.event,
        )
        self.watchdog: LoopWatchdog | None = None  # started with the host (loop_block_threshold_s)

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def stats(self) -> Mapping[str, int]:
        """The host's counters (read-only; the health endpoint and ``jetagents status`` show them)."""
        return self.metrics.stats

    @property
    def owned(self) -> list[int]:
        """The partitions this host serves, in order."""
        return self.partitions.owned

    @property
    def activations(self) -> OrderedDict[str, Activation]:
        """The agents in memory (the catalog's), least recently used first."""
        return self.catalog.activations

    async def __aenter__(self) -> Host:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def ready(self) -> bool:
        return all(self.readiness().values())

    def readiness(self) -> dict[str, bool]:
        """What ``/readyz`` reports: connected, JetStream reachable, ring joined, partitions started."""
        connected = self.nc is not None and self.nc.is_connected
        coord = self.coordinator
        if self.static:
            joined = self.supervisor.started
            started = self.supervisor.started and set(self._static_partitions) <= self.partitions.owned_set
        else:
            joined = coord is not None and coord.ring is not None and not coord.stopped
            started = joined and coord is not None and coord.assigned() <= coord.held
        return {
            "connected": connected,
            "jetstream": self.supervisor.started and connected,
            "ring_joined": joined and not self.supervisor.stopping,
            "partitions_started": started and not self.supervisor.stopping,
        }

    async def start(self) -> None:
        s = self.settings
        self._loop = asyncio.get_running_loop()
        if s.loop_block_threshold_s > 0 and self.watchdog is None:
            self.watchdog = LoopWatchdog(
                s.loop_block_threshold_s,
                name=s.host_id,
                on_block=self._on_loop_blocked,
                on_unblock=self._tel.loop_unblocked,
            )
            self.watchdog.start(self._loop)
        self.nc = await connect(
            s.nats_url,
            name=f"jetagents-host-{s.host_id}",
            connect_timeout_s=s.connect_timeout_s,
            inbox_prefix=s.inbox_prefix,
            reconnected_cb=self._on_reconnected,
            disconnected_cb=self._on_disconnected,
            error_cb=self._on_error,
        )
        self._publisher.nc = self.nc
        created = await ensure_topology(self.nc, self.topology, s.op_timeout_s)
        self.cepoch = f"{fnv1a_32(created.encode()):08x}"  # names commands that carry no id
        snapshots = await KvBucket.open(self.nc, self.topology.snap_bucket, s.op_timeout_s)
        meta = await KvBucket.open(self.nc, self.topology.meta_bucket, s.op_timeout_s)
        self._reader = DirectReader(self.nc)
        await self._reader.start()
        self._inbox = Inbox(self.nc)
        await self._inbox.start()
        from .._client.client import Client  # local import: the client is optional for hosts
        from .._settings import ClientSettings, CommonSettings

        tp, mp = self._providers
        # the agents' client addresses the host's deployment (subject root, partitions, ...)
        common = s.model_dump(include=set(CommonSettings.model_fields))
        self._client = Client(
            self.nc, ClientSettings(**common), owns_connection=False, tracer_provider=tp, meter_provider=mp
        )
        await self._client._start()
        events = JetStreamEventStream(self.nc, self._inbox, self._reader, self.topology.evt_stream, s.op_timeout_s)
        self.eventlog = EventLog(events, self.subjects, s.host_id, self._tel)
        self.catalog.bind(events, snapshots, meta, self._client)

        self._pull_prefix = self.nc.new_inbox()
        self.partitions.bind(PartitionConsumers(self.nc, self.topology, s.op_timeout_s), self._pull_prefix)
        self.placement.bind(HostLink(self.nc))
        self._pull_sub = await self.nc.subscribe(
            f"{self._pull_prefix}.>", cb=self._on_pull_msg, pending_msgs_limit=1_000_000, pending_bytes_limit=-1
        )
        # Every host sees every call and answers only for the partitions it owns, so an
        # agent is never in memory on two hosts at once.
        # Calls not yet taken by _on_call are bounded in bytes too: past the limit nats-py
        # drops them (the callers time out) rather than the host growing without bound.
        self._call_sub = await self.nc.subscribe(
            self.subjects.call_wildcard,
            cb=self._on_call,
            pending_msgs_limit=1_000_000,
            pending_bytes_limit=s.max_inflight_bytes,
        )
        self._host_sub = await self.nc.subscribe(
            self.subjects.sys("host", s.host_id, "*"), cb=self.placement.on_host_msg, pending_msgs_limit=1_000_000
        )
        self.supervisor.spawn("background", self._housekeeping())
        if s.stranded_sweep_s > 0:
            self._sweeper = StrandedSweeper(
                self.nc,
                self.topology.cmd_stream,
                self._reject_stranded,
                now_ms=self.clock.wall_ms,
                grace_s=s.stranded_grace_s,
                timeout_s=s.op_timeout_s,
            )
            sweep = self._sweeper.run(s.stranded_sweep_s, self.clock.sleep, self._leads, self.metrics, self._log)
            self.supervisor.spawn("background", sweep)
        self.supervisor.started = True
        if self.static:
            for p in self._static_partitions:
                await self.start_partition(p)
        else:
            store = JetStreamStore(self.nc, self.topology.cluster_bucket, replicas=s.replicas, timeout_s=s.op_timeout_s)
            await store.ensure()
            cfg = ClusterConfig(
                partitions=s.partitions,
                heartbeat_s=s.heartbeat_s,
                member_ttl_s=s.member_ttl_s,
                lease_ttl_s=s.lease_ttl_s,
                tick_s=s.cluster_tick_s,
                load_factor=s.load_factor,
                max_moves=s.rebalance_max_moves,
                handoff_timeout_s=s.handoff_timeout_s,
                capacity=s.capacity,
                tags=list(s.tags),
            )
            self.coordinator = Coordinator(s.host_id, store, self.clock, cfg, self)
            self.supervisor.spawn("coordinator", self.coordinator.run())
            # ready when the ring is known and our share of it is started (or give up
            # waiting: the partitions may belong to others that have not let go yet)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(s.ready_timeout_s):
                    while not self.readiness()["partitions_started"]:
                        await asyncio.sleep(0.02)
        self._log.info("host_started", partitions=len(self.owned), types=self.registry.types())

    # -- partitions (the coordinator's hooks) -----------------------------------------------
    def _pull_room(self) -> int:
        """How many more commands the host takes in now: 0 while the bodies in flight fill
        its byte budget."""
        s = self.settings
        if self._inflight_bytes + self.topology.max_payload_bytes + 4096 > s.max_inflight_bytes:
            return 0
        return s.max_inflight - self._inflight_count

    async def start_partition(self, partition: int, *, rewind: bool = False) -> None:
        """Start serving ``partition``: recreate its consumer, then pull."""
        await self.partitions.start(partition, rewind=rewind)
        self._tel.handoff(started=True)

    async def stop_partition(self, partition: int, *, graceful: bool) -> None:
        """Stop serving ``partition``. Graceful: finish the commands in hand (bounded by
        ``drain_grace_s``) and snapshot its agents, so the next owner starts warm."""
        self._tel.handoff(started=False, graceful=graceful)
        await self.partitions.stop(partition)
        if graceful:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.drain_grace_s):
                    while any(w.partition == partition and not w.done for w in self._inflight):
                        await asyncio.sleep(0.01)
        await self.catalog.forget_partition(partition, graceful=graceful)

    def load(self) -> dict[str, Any]:
        """What this host advertises in its heartbeat."""
        t = os.times()
        return {
            "active_agents": len(self.activations),
            "inflight": self._inflight_count,
            "processed": self.stats["processed"],
            "cpu_s": round(t.user + t.system, 2),  # CPU time used so far (rate = load)
            "rss_mb": _rss_mb(),
        }

    async def event(self, kind: str, data: dict[str, Any]) -> None:
        """A lifecycle event on ``<root>.sys.<kind>`` (core NATS, for watchers and tools)."""
        body = {"kind": kind, "host": self.settings.host_id, "ts_ms": self.clock.wall_ms(), **data}
        with contextlib.suppress(Exception):
            await self.nc.publish(self.subjects.sys(*kind.split(".")), orjson.dumps(body))

    # -- placement: agents placed on a host other than their partition's owner ---------------
    async def stop(self, *, drain: bool = True) -> None:
        """Stop taking commands, finish those in hand (bounded by ``drain_grace_s``),
        snapshot active agents and disconnect. Nothing acknowledged is lost: whatever is
        not finished is left unacknowledged and is redelivered to the next owner."""
        if self.supervisor.stopping or self.nc is None:
            return
        coord = self.coordinator
        if coord is not None:
            if drain and self.nc.is_connected:
                # hand our partitions over one by one (the leader moves them away); they
                # keep being served until each is released
                self._log.info("host_leaving_cluster", partitions=len(coord.held))
                await coord.drain(self.settings.drain_grace_s + self.settings.op_timeout_s)
            coord.stopped = True
            await self.supervisor.cancel("coordinator")
            if drain and self.nc.is_connected:
                await coord.leave()
        self.supervisor.stopping = True
        self._log.info("host_draining", inflight=self._inflight_count)
        for sub in (self._pull_sub, self._call_sub, self._host_sub):
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        self.partitions.wake_all()
        if drain and self.settings.drain_grace_s > 0 and self.nc.is_connected:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.drain_grace_s):
                    await self._idle.wait()
        await self.supervisor.cancel("background", "workers", "pullers")
        # what is left in mailboxes was never started: hand it back at once
        for work in list(self._inflight):
            if work.kind in _ACKED and not work.done:
                await self.outcomes.settle(work, Result.STOPPING, {})
        if drain and self.nc.is_connected:
            await self.catalog.snapshot_all(max(1.0, self.settings.op_timeout_s))
        await self.supervisor.drain("side", self.settings.op_timeout_s)
        if self._reader is not None:
            await self._reader.stop()
        if self._inbox is not None:
            await self._inbox.close()
        with contextlib.suppress(Exception):
            await self.nc.flush(timeout=2)
        with contextlib.suppress(Exception):
            await self.nc.close()
        if self.watchdog is not None:
            self.watchdog.stop()
        self._log.info("host_stopped", **self.stats)

    def _on_loop_blocked(self) -> None:
        """The watchdog saw the event loop blocked (called from its thread)."""
        self.metrics.inc("loop_blocked")

    async def _on_reconnected(self) -> None:
        self._log.info("nats_reconnected")
        self.partitions.reconnected()

    async def _on_disconnected(self) -> None:
        self._log.warning("nats_disconnected")

    async def _on_error(self, exc: Exception) -> None:
        dropped = dropped_subject(exc)
        if dropped is not None:
            self.metrics.inc("calls_dropped")
            self._log.warning("call_dropped_host_full", subject=dropped)
            return
        self._log.debug("nats_error", error=str(exc))

    # -- intake (``intake.py``) -----------------------------------------------------------
    async def _on_pull_msg(self, msg: Msg) -> None:
        await self._intake.on_pull_msg(msg.subject, msg.headers, msg.data, msg.reply)

    async def _on_call(self, msg: Msg) -> None:
        await self._intake.on_call(msg.subject, msg.headers, msg.data, msg.reply)

    def _pull_status(self, subject: str, headers: Mapping[str, str] | None) -> None:
        """A status about one of our pull requests, sent to its inbox."""
        tokens = subject.rsplit(".", 2)
        puller = self.partitions.get(int(tokens[1])) if tokens[1].isdigit() else None
        if puller is not None:
            self.partitions.on_status(puller, tokens[2], (headers or {}).get("Status", ""))

    def _dispatch(self, work: Command) -> None:
        self._track(work)
        agent_type, agent_id = work.agent_type, work.agent_id
        spec = self.registry.get(agent_type)
        if spec is None or not is_valid_token(agent_id):
            err: JetAgentsError = (
                UnknownAgentType(
                    f"no agent type {agent_type!r} is registered", details={"types": self.registry.types()}
                )
                if spec is None
                else MalformedCommand(f"invalid agent id {agent_id!r}")
            )
            self.supervisor.spawn("side", self._reject_unrouted(work, err))
            return
        key = f"{agent_type}.{agent_id}"
        act = self.activations.get(key)
        if act is None:
            act = Activation(AgentId(agent_type, agent_id), spec)
            self.activations[key] = act
        else:
            self.activations.move_to_end(key)
            mailbox = act.mailbox
            full = mailbox is not None and len(mailbox) >= self.settings.max_mailbox_per_agent
            if (full or act.held is not None) and work.kind != MIGRATE and self._over_bound(act, work):
                return
        if act.scheduled:  # running or waiting for a worker: its commands run in order
            if act.mailbox is None:
                act.mailbox = deque()
            act.mailbox.append(work)
            return
        act.scheduled = True
        if self._running < self.settings.workers:
            self._running += 1
            coro = self._work(act, work)
            # Run it here and now, up to its first wait, rather than one turn of the event
            # loop later in a new task (docs/adr/0031).
            task = start_eager(coro, self._loop) if self.settings.eager_start else self._loop.create_task(coro)
            if task is not None:
                self.supervisor.adopt("workers", task)
            return
        act.mailbox = deque((work,))
        heapq.heappush(self._ready, (work.priority_rank, next(self._seq), act))

    def _over_bound(self, act: Activation, work: Command) -> bool:
        """Whether ``work`` must stay out of its agent's mailbox, and if so refuse it: the
        mailbox is full (``max_mailbox_per_agent``), or, for a durable command, an earlier
        command of the agent was handed back and has not come back yet (this one would
        overtake it). A call is answered ``unavailable`` (agent busy, not applied); a durable
        command is handed back (``-NAK`` with a growing delay) and comes again (ADR 0036)."""
        mailbox = act.mailbox
        full = mailbox is not None and len(mailbox) >= self.settings.max_mailbox_per_agent
        if work.kind in _ACKED and work.stream_seq:
            now = self.clock.monotonic()
            if act.held is not None:
                self._prune_held(act, now)
            held = act.held
            earlier = held is not None and min(held) < work.stream_seq
            if not (full or earlier):
                if held is not None and work.stream_seq in held:
                    work.busy_naks = held.pop(work.stream_seq)[0]
                    if not held:
                        act.held = None
                return False
            if held is None:
                held = act.held = {}
            times = held.get(work.stream_seq, (0, 0.0))[0] + 1
            held[work.stream_seq] = (times, now)
            self._refuse_busy(act, work, times)
            return True
        if not full:
            return False
        self._refuse_busy(act, work, 0)
        return True

    def _prune_held(self, act: Activation, now: float) -> None:
        """Forget handed-back commands that did not come back (purged, moved elsewhere)."""
        held = act.held
        if held is None:
            return
        for cseq in [c for c, (_, at) in held.items() if now - at > _HOLD_S]:
            del held[cseq]
        if not held:
            act.held = None

    def _refuse_busy(self, act: Activation, work: Command, hand_backs: int) -> None:
        """Row 12: hand a durable command back (``hand_backs`` times so far, 0: not tracked),
        refuse a call (agent busy, not applied)."""
        # out of the host's in-flight count at once: a burst of refusals must not fill it
        self._untrack(work)
        err = None
        if not work.durable:
            err = Unavailable(
                f"agent busy: {len(act.mailbox or ())} commands of {act.agent_id} are waiting; retry",
                details={"applied": False, "reason": "agent_busy"},
            )
        outcome = self.outcomes.decide(work, Result.BUSY, error=err, hand_backs=hand_backs)
        self.outcomes.count(work, outcome)  # at once: a burst of refusals shows as it happens
        self.supervisor.spawn("side", self.outcomes.execute(work, outcome, {}, counted=True))

    def _track(self, work: Command) -> None:
        self._inflight.add(work)
        self._inflight_count += 1
        self._inflight_bytes += len(work.body)
        self._idle.clear()

    def _untrack(self, work: Command) -> None:
        if work.done:
            return
        work.done = True
        self._inflight.discard(work)
        self._inflight_count -= 1
        full_bytes = self.settings.max_inflight_bytes - self.topology.max_payload_bytes - 4096
        was_full_bytes = self._inflight_bytes > full_bytes
        self._inflight_bytes -= len(work.body)
        if self._inflight_count <= 0:
            self._idle.set()
        if self._inflight_count == self.settings.max_inflight - 1 or (
            was_full_bytes and self._inflight_bytes <= full_bytes
        ):
            # the host was full: any puller may have been waiting for room
            self.partitions.wake_low(None)
        else:
            self.partitions.wake_low(work.partition)

    # -- workers ---------------------------------------------------------------------------
    async def _work(self, act: Activation, cmd: Command) -> None:
        """A worker: process ``cmd``, then the next ready agent's command, and so on
        until no agent is waiting for a worker."""
        try:
            while True:
                await self._run(act, cmd)
                if not self._ready:
                    return
                # let the event loop breathe between commands that never waited
                await asyncio.sleep(0)
                if not self._ready:
                    return
                _, _, act = heapq.heappop(self._ready)
                assert act.mailbox is not None
                cmd = act.mailbox.popleft()
        finally:
            self._running -= 1

    async def _run(self, act: Activation, cmd: Command) -> None:
        """Process one command of a scheduled agent, then queue its next one (if any)."""
        try:
            await self._process(act, cmd)
        except asyncio.CancelledError:
            if cmd.durable and not cmd.done:
                with contextlib.suppress(Exception):
                    await self.outcomes.settle(cmd, Result.STOPPING, {})
            raise
        except Exception:  # noqa: BLE001 - a bug here must not kill the worker
            self._log.exception("process_failed", agent=str(act.agent_id))
            # a call is never retried: its caller hears of the failure now, not at its timeout
            if (cmd.durable and not cmd.done) or (cmd.kind == CALL and not cmd.outcome):
                await self.outcomes.settle(cmd, Result.BUG, {})
        finally:
            self._untrack(cmd)
            act.last_used = self.clock.monotonic()
            if act.mailbox:
                heapq.heappush(self._ready, (act.mailbox[0].priority_rank, next(self._seq), act))
            else:
                act.mailbox = None
                act.scheduled = False

    async def _process(self, act: Activation, cmd: Command) -> None:
        if cmd.kind == MIGRATE:
            await self.placement.migrate(act, cmd)
            return
        if self.coordinator is not None and cmd.kind != FWD and await self.placement.route_elsewhere(act, cmd):
            return
        out = cmd.reply_headers()
        tel = self._tel
        aid = act.agent_id
        trace_in = cmd.trace
        log_token = enter_command(
            self.settings.host_id, aid, cmd.correlation_id, trace_in.traceparent if trace_in else None
        )
        try:
            if not tel.tracing:  # no SDK configured: carry the trace context, skip the spans
                carry_context(*_trace_of(cmd), out)
                await self._process_traced(act, cmd, out)
            else:
                await self._process_span(act, cmd, out)
        finally:
            exit_command(log_token)
            if tel.metering:
                elapsed = self.clock.monotonic() - cmd.received
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
            HOST_ID: self.settings.host_id,
        }
        if cmd.durable:
            attrs[MESSAGING_PARTITION] = str(cmd.partition)
            attrs[MESSAGING_CONSUMER_GROUP] = self.topology.consumer_name(cmd.partition)
            attrs[DELIVERY_COUNT] = cmd.deliveries
        # the sender's span is the parent (any propagator's headers, as received)
        parent = propagate.extract(cmd.headers) if cmd.headers else None
        token = otel_context.attach(parent) if parent is not None else None
        try:
            with self._tel.tracer.start_as_current_span(
                f"process {aid.type}", kind=trace.SpanKind.CONSUMER, attributes=attrs
            ) as span:
                cmd.traced = True
                carry_context(*_trace_of(cmd), out)
                await self._process_traced(act, cmd, out)
                finish_process_span(span, cmd.action, cmd.outcome or FAILED, cmd.error, out)
        finally:
            if token is not None:
                otel_context.detach(token)

    async def _process_traced(self, act: Activation, cmd: Command, out: dict[str, str]) -> None:
        s = self.settings
        outcomes = self.outcomes
        # hand-backs for a busy agent (ADR 0036) are not failures: they do not count here
        if cmd.durable and exhausted(cmd.deliveries, cmd.busy_naks, outcomes.limits):
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
            body = decode_command(cmd.body, s.max_payload_bytes)
            cmd.action = body.action if body.action in act.spec.actions else "_unknown"
            action = act.spec.action(body.action)
            params = action.validate_params(body.params)
        except JetAgentsError as err:
            await outcomes.settle(cmd, Result.REFUSED, out, error=err)
            return
        # Failures are retried here, in place, so the agent's later commands wait behind
        # this one (per-agent FIFO holds); the housekeeping sends +WPI meanwhile.
        attempt = 0
        while True:
            failure = await self._attempt(act, cmd, action, params, out)
            if failure is None:
                return
            failed, handler_fault = failure
            attempt += 1
            lost = False
            if cmd.durable and isinstance(failed, FencedError) and self.coordinator is not None:
                # Another host wrote this agent. Retry only if the store (not our memory,
                # which may be stale after a pause) says the partition is still ours.
                try:
                    lost = not await self.coordinator.still_holds(cmd.partition)
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
                stopping=self.supervisor.stopping,
            )
            if outcome.ack.kind is not AckKind.RETRY:
                await outcomes.execute(cmd, outcome, out)
                return
            outcomes.count(cmd, outcome)
            await self.clock.sleep(outcome.ack.delay_s)

    async def _attempt(
        self, act: Activation, cmd: Command, action: Any, params: dict[str, Any], out: dict[str, str]
    ) -> tuple[JetAgentsError, bool] | None:
        """Run the command once. ``None`` when finished (answered, acknowledged or
        dead-lettered), else ``(error, handler_fault)`` to retry."""
        s = self.settings
        if act.agent is None:
            try:
                await self.catalog.activate(act)
            except _NON_RETRYABLE_INPUT as err:
                await self.outcomes.settle(cmd, Result.REFUSED, out, error=err)
                return None
            except JetAgentsError as err:
                return err, isinstance(err, InternalError)
        agent = act.agent
        assert agent is not None

        cmd_id = cmd.command_id
        if cmd_id:
            record = act.records.get(cmd_id) if act.records else None
            if record is not None:
                self.metrics.inc("duplicates", agent_type=act.agent_id.type, source="record")
                if record.ok:
                    await self.outcomes.settle(cmd, Result.DUPLICATE, out, answer=record.payload, event_seq=record.seq)
                else:
                    refusal = error_from_wire(record.payload)
                    await self.outcomes.settle(cmd, Result.DUPLICATE, out, error=refusal, event_seq=record.seq)
                return None

        # the action's time limit: its own, its type's or the host's, cut to the command's
        # deadline when that comes first (ADR 0036)
        limit_s: float = action.timeout_s or act.spec.action_timeout_s or s.action_timeout_s
        by_deadline = False
        if cmd.deadline_ms is not None:
            left_s = (cmd.deadline_ms - self.clock.wall_ms()) / 1000
            if left_s < 0:
                late = DeadlineExceeded("the command's deadline passed before it ran")
                await self.outcomes.settle(cmd, Result.DEADLINE, out, error=late)
                return None
            if left_s < limit_s:
                limit_s, by_deadline = left_s, True

        ctx = agent.ctx
        ctx.command_id = cmd_id
        ctx.correlation_id = cmd.correlation_id
        agent._begin()
        try:
            loop = self._loop
            result = await Deadline(
                action.fn(agent, **params),
                loop,
                loop.time() + limit_s,
                on_late=lambda: self._log.warning(
                    "action_ignores_cancel", agent=str(act.agent_id), action=action.name, limit_s=limit_s
                ),
            )
            events, draft = agent._finish()
            if events and action.read_only:
                raise InternalError(f"read-only action {action.name!r} emitted events")
            result_json = action.dump_result(result)
        except DomainError as err:
            agent._finish()
            if cmd_id:  # remembered (in memory) so a redelivery gets the same answer
                self._records(act).refused(cmd_id, err.to_wire())
            await self.outcomes.settle(cmd, Result.DOMAIN, out, error=err)
            return None
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

        if events:
            n, own = act.n + 1, self.placement.token_of(act.agent_id, cmd.partition)
            name = cmd_id or f"c-{self.settings.host_id}-{next(self._seq)}"
            body = encode_commit(
                n=n,
                cmd=name,
                action=action.name,
                events=wire_events(events),
                result=result_json,
                cseq=cmd.stream_seq,
                ts_ms=self.clock.wall_ms(),
                own=own,
            )
            commit = NewCommit(n, name, own, body)
            try:
                if cmd.traced:
                    seq, duplicate = await self.eventlog.append_span(act.agent_id, act.last_seq, commit, out)
                else:
                    seq, duplicate = await self.eventlog.append(act.agent_id, act.last_seq, commit, out)
            except PayloadTooLarge as err:  # the commit itself is too big: never retryable
                await self.outcomes.settle(cmd, Result.REFUSED, out, error=err)
                return None
            except FencedError as err:
                self.metrics.inc("fenced")
                self._log.warning("append_fenced", agent=str(act.agent_id), cmd=cmd_id)
                self.catalog.evict(act)  # rebuild from the log (with the other writer's commits)
                return err, False
            except JetAgentsError as err:
                self.catalog.evict(act)  # the append may or may not have landed: rebuild from the log
                return err, False
            if duplicate:
                # This command's commit is already in the log (its record had been
                # evicted): do not apply it again; answer with what it answered then.
                self.metrics.inc("duplicates", agent_type=act.agent_id.type, source="log")
                first = await self.eventlog.commit_at(seq)
                answer = first.result if first else None
                await self.outcomes.settle(cmd, Result.DUPLICATE, out, answer=answer, event_seq=seq)
                return None
            agent._commit(draft)
            act.last_seq = seq
            act.n = commit.n
            act.own = max(act.own, commit.own)
            act.since_snapshot += 1
            self._records(act).applied(commit.cmd, seq, result_json)
            if act.since_snapshot >= s.snapshot_every and not act.snapshotting:
                self.supervisor.spawn("side", self.catalog.snapshot(act))
        else:
            seq = 0
        await self.outcomes.settle(cmd, Result.OK, out, answer=result_json, event_seq=seq)
        return None

    async def _overran(
        self, act: Activation, cmd: Command, action: str, limit_s: float, by_deadline: bool, out: dict[str, str]
    ) -> None:
        """The action was cancelled at its limit (ADR 0036). Past the command's own deadline:
        ``deadline_exceeded``, acknowledged. Past the action's time limit: ``action_timeout``,
        at once (never retried in place), dead-lettered when durable."""
        err: JetAgentsError
        if by_deadline:
            err = DeadlineExceeded(
                "the command's deadline passed while its action ran: cancelled, nothing applied",
                details={"applied": False},
            )
        else:
            err = ActionTimeout(
                f"action {action!r} ran longer than {limit_s:g} s: cancelled, nothing applied",
                details={"applied": False, "timeout_s": limit_s},
            )
        self.metrics.inc("action_timeouts", agent_type=act.agent_id.type, action=action, error=err.code)
        self._log.warning("action_timed_out", agent=str(act.agent_id), action=action, limit_s=limit_s, code=err.code)
        await self.outcomes.settle(cmd, Result.OVERRAN, out, error=err, by_deadline=by_deadline)

    def _records(self, act: Activation) -> DedupRecord:
        records = act.records
        if records is None:  # created on demand: most agents never see a repeat
            records = act.records = DedupRecord(self.settings.dedup_records_per_agent)
        return records

    # -- outcomes (``outcomes.py``) ------------------------------------------------------
    def _dead_letter_max_bytes(self) -> int:
        """The largest dead letter the stream and the server both take."""
        server = int(getattr(self.nc, "max_payload", 0) or 0) - 1024
        limit = self.topology.dead_letter_max_bytes
        return max(DEAD_LETTER_MIN_BYTES, min(limit, server) if server > 0 else limit)

    async def _reject_unrouted(self, cmd: Command, err: JetAgentsError) -> None:
        """Refuse a command no agent's mailbox takes (unknown type, invalid id, too large)."""
        try:
            out = cmd.reply_headers()  # the same ids _process would answer with (wire contract §4)
            carry_context(*_trace_of(cmd), out)
            await self.outcomes.settle(cmd, Result.REFUSED, out, error=err)
        finally:
            self._untrack(cmd)

    # -- housekeeping ----------------------------------------------------------------------
    def _leads(self) -> bool:
        """Whether this host does the cluster-wide chores now: the leader, or a host on its own."""
        coord = self.coordinator
        return not self.supervisor.stopping and (coord is None or coord.is_leader)

    async def _reject_stranded(self, msg: Msg, seq: int) -> bool:
        """Refuse a command found by the sweep like a malformed one; False: try again later."""
        parts = msg.subject.split(".")
        partition = int(parts[-3]) if len(parts) >= 5 and parts[-3].isdigit() else 0
        route = (partition, parts[-2], parts[-1])
        cmd = self._intake.parse(STREAM, msg.subject, msg.headers, msg.data, "", route, deliveries=1, stream_seq=seq)
        self._track(cmd)
        err = MalformedCommand("the subject holds a byte or token no partition consumer delivers (0x7f, '*' or '>')")
        await self._reject_unrouted(cmd, err)
        return cmd.outcome != REQUEUED

    async def _housekeeping(self) -> None:
        s = self.settings
        tick = max(0.2, min(s.ack_wait_s / 3, s.idle_passivate_s / 4, 5.0))
        while True:
            await self.clock.sleep(tick)
            now = self.clock.monotonic()
            # keep long-running and queued commands from being redelivered meanwhile
            for work in list(self._inflight):
                if work.kind in _ACKED and not work.done and now - work.received > s.ack_wait_s / 3:
                    await self.outcomes.ack(work, b"+WPI")
            self.catalog.passivate_idle(now, self._prune_held)
