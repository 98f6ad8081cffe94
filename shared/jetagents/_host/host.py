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

``Host`` is the facade: it builds the parts, wires them and runs their lifecycle. Each part
owns its state (ADR 0040): ``Partitions`` (consumers and pullers), ``Intake`` (messages become
``Command``s), ``Scheduler`` (mailboxes, workers), ``Pipeline`` (one command), ``Outcomes``
(dead letter, reply, ack), ``Catalog`` (agents in memory), ``EventLog`` (the fenced append),
``Placement`` (forwarding, migration), ``Supervisor`` (tasks), ``Metrics`` (counters).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from opentelemetry import metrics, trace

from .._core.agent import Registry
from .._core.balance import BalancePolicy
from .._core.clock import Clock, SystemClock
from .._core.command import ACKED, Kind
from .._core.errors import (
    MalformedCommand,
    UnknownAgent,
    UnknownAgentType,
)
from .._core.ids import fnv1a_32
from .._core.outcome import Result
from .._core.wire import (
    DEAD_LETTER_MIN_BYTES,
    Subjects,
    is_high_lane,
)
from .._nats.api import (
    DirectReader,
    Topology,
    connect,
    ensure_topology,
    stream_info,
)
from .._nats.blobs import ObjectBlobs
from .._nats.buckets import KvBucket
from .._nats.consumers import PartitionConsumers
from .._nats.event_stream import JetStreamEventStream
from .._nats.hosts import HostLink, dropped_reply, dropped_subject
from .._nats.inbox import Inbox, shared_inbox
from .._nats.kv import JetStreamStore, NatsClient
from .._nats.out_stream import JetStreamOutStream
from .._nats.ports import NatsPublisher
from .._nats.schedules import NatsSchedules
from .._obs.metrics import Metrics
from .._obs.telemetry import (
    REQUEUED,
    HostTelemetry,
)
from .._obs.watchdog import LoopWatchdog
from .._settings import HostSettings
from .catalog import Activation, Catalog
from .coordination import ClusterConfig, Coordinator
from .eventlog import EventLog
from .intake import Intake
from .loadmeter import LoadMeter
from .outcomes import Outcomes
from .partitions import Partitions
from .pipeline import Pipeline
from .placement import PipelineHooks, Placement
from .ports import Publisher, Schedules
from .pubsub import start_pubsub
from .purging import start_purge_sweep
from .scheduler import Scheduler
from .supervisor import Supervisor
from .sweeper import StrandedSweeper
from .tombstones import watch_tombstones

if TYPE_CHECKING:
    from nats.aio.msg import Msg

log = structlog.get_logger("jetagents.host")

STREAM, CALL, FWD, MIGRATE = Kind.STREAM, Kind.CALL, Kind.FORWARDED, Kind.MIGRATE
_ACKED = ACKED  # kinds that are acknowledged (to the stream, or to the forwarder)
_NON_RETRYABLE_INPUT = (MalformedCommand, UnknownAgentType, UnknownAgent)
# a durable command handed back because its agent's mailbox was full keeps every later
# command of that agent waiting (handed back too) until it returns, or until this long
_HOLD_S = 60.0


def _dead_letter_max_bytes(nc: NatsClient | None, topology: Topology) -> int:
    """The largest dead letter the stream and the server both take."""
    server = int(getattr(nc, "max_payload", 0) or 0) - 1024
    limit = topology.dead_letter_max_bytes
    return max(DEAD_LETTER_MIN_BYTES, min(limit, server) if server > 0 else limit)


def _topology(s: HostSettings, subjects: Subjects) -> Topology:
    return Topology(
        subjects=subjects,
        partitions=s.partitions,
        replicas=s.replicas,
        duplicate_window_s=s.duplicate_window_s,
        max_payload_bytes=s.max_payload_bytes,
        out_max_age_s=s.out_result_ttl_s,
        snapshot_history=s.snapshot_history,
    )


def _cluster_config(s: HostSettings) -> ClusterConfig:
    return ClusterConfig(
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
        balance=BalancePolicy(
            s.rebalance_threshold, s.rebalance_min_gap, s.rebalance_persist, s.rebalance_moves, s.rebalance_cooldown
        ),
        balance_interval_s=s.rebalance_interval_s,
        load_weights=dict(s.load_weights),
    )


def _pull_room(host: Host, high: bool) -> int:
    """How many more commands the host takes in now: 0 while the bodies in flight fill its
    byte budget. The high lane (ADR 0058) has ``high_lane_reserve`` more, in number and in
    bytes, which the normal lane never takes: a host full of normal commands still pulls high ones."""
    s = host.settings
    reserve = s.high_lane_reserve if high else 0
    one = host.topology.max_payload_bytes + 4096
    if host.scheduler.inflight_bytes + one > s.max_inflight_bytes + reserve * one:
        return 0
    return s.max_inflight + reserve - host.scheduler.inflight_count


async def _high_lane_epoch(nc: NatsClient, topology: Topology, timeout_s: float) -> str:
    """Names the high lane's commands that carry no id (``s<cepoch_high>-<seq>``): ``h`` and
    its stream's creation, as ``cepoch`` is the command stream's."""
    info = await stream_info(nc, topology.cmd_high_stream, timeout_s)
    return f"h{fnv1a_32(str(info.get('created', '')).encode()):08x}"


async def _agents_client(
    nc: NatsClient,
    s: HostSettings,
    tracer_provider: trace.TracerProvider | None,
    meter_provider: metrics.MeterProvider | None,
) -> Any:
    """The client agents call other agents with: on the host's connection, addressing the
    host's deployment (subject root, partitions, ...)."""
    from .._client.client import Client  # local import: the client is optional for hosts
    from .._settings import ClientSettings, CommonSettings

    common = s.model_dump(include=set(CommonSettings.model_fields))
    client = Client(
        nc,
        ClientSettings(**common),
        owns_connection=False,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
    await client._start()
    return client


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
        publisher: Publisher | None = None,
        schedules: Schedules | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.clock = clock or SystemClock()
        self.subjects = Subjects(settings.subject_root)
        self.topology = _topology(settings, self.subjects)
        # ring membership: partitions come and go as the cluster's ring assigns them;
        # static: a fixed set (given, or p % host_count == host_index)
        self.static = partitions is not None or settings.membership == "static"
        if partitions is None and self.static:
            partitions = [p for p in range(settings.partitions) if p % settings.host_count == settings.host_index]
        self._static_partitions = sorted(partitions or [])
        self.coordinator: Coordinator | None = None
        self.nc: NatsClient = None  # type: ignore[assignment]
        self.cepoch = self.cepoch_high = ""  # the command streams' incarnations (the high lane's: ADR 0058)
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by start()
        self._intake = Intake(self)
        self._pull_prefix = ""
        self._pull_sub: Any = None
        self._call_sub: Any = None
        self._host_sub: Any = None
        self._reader: DirectReader | None = None
        self._inbox: Inbox | None = None  # PubAcks of event appends
        self._client: Any = None
        self._log = log.bind(host=settings.host_id)
        # every task the host starts, by group; and the lifecycle flags its loops read
        self.supervisor = Supervisor(self._log)
        # OpenTelemetry: the given providers, else the global ones (no SDK: no spans, no metrics)
        self._providers = (tracer_provider, meter_provider)
        self._tel = HostTelemetry(self, settings.host_id, tracer_provider, meter_provider)
        self.metrics = Metrics(self._tel)
        self.loadmeter = LoadMeter(settings, self.clock)  # what the heartbeat advertises (ADR 0060)
        self.partitions = Partitions(
            settings,
            self.topology,
            self.clock,
            self.supervisor,
            self.metrics,
            self._log,
            lambda high: _pull_room(self, high),
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
        # the simulation's (testing/simhost.py), else NATS
        self.publisher: Publisher = publisher or self._publisher
        self.outcomes = Outcomes(
            self.publisher,
            settings,
            subjects=self.subjects,
            registry=registry,
            clock=self.clock,
            metrics=self.metrics,
            tel=self._tel,
            log=self._log,
            dead_letter_max_bytes=lambda: _dead_letter_max_bytes(self.nc, self.topology),
        )
        outcomes = self.outcomes
        hooks = PipelineHooks(
            self._intake.parse, lambda cmd: self.scheduler.dispatch(cmd), outcomes.reply, outcomes.ack, outcomes.settle
        )
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
        self.eventlog = EventLog(self.subjects, settings.host_id, self._tel)  # its stream is bound by start()
        self.pipeline = Pipeline(
            settings,
            self.clock,
            self._tel,
            self.metrics,
            self._log,
            catalog=self.catalog,
            eventlog=self.eventlog,
            outcomes=outcomes,
            placement=self.placement,
            supervisor=self.supervisor,
            coordinator=lambda: self.coordinator,
            consumer_name=self.topology.consumer_name,
        )
        self.scheduler = Scheduler(
            settings,
            registry,
            self.catalog,
            outcomes,
            self.supervisor,
            self.clock,
            self._log,
            process=self.pipeline.process,
            wake_pullers=self.partitions.wake_low,
            max_payload_bytes=self.topology.max_payload_bytes,
        )
        self.watchdog: LoopWatchdog | None = None  # started with the host (loop_block_threshold_s)
        self._nats_schedules = NatsSchedules(self.nc, self.topology.cmd_stream, settings.op_timeout_s)
        self.schedules: Schedules = schedules or self._nats_schedules  # timers, reminders (ADR 0042 §5)
        self.catalog.schedules = self.schedules

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
        self._loop = self.scheduler.loop = self.pipeline.loop = asyncio.get_running_loop()
        if s.loop_block_threshold_s > 0 and self.watchdog is None:
            self.watchdog = LoopWatchdog(
                s.loop_block_threshold_s,
                name=s.host_id,
                on_block=lambda: self.metrics.inc("loop_blocked"),  # from the watchdog's thread
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
        self._publisher.nc = self._nats_schedules.nc = self.nc
        created = await ensure_topology(self.nc, self.topology, s.op_timeout_s)
        self.cepoch = f"{fnv1a_32(created.encode()):08x}"  # names commands that carry no id
        self.cepoch_high = await _high_lane_epoch(self.nc, self.topology, s.op_timeout_s)
        snapshots = await KvBucket.open(self.nc, self.topology.snap_bucket, s.op_timeout_s)
        meta = await KvBucket.open(self.nc, self.topology.meta_bucket, s.op_timeout_s)
        tombs = await KvBucket.open(self.nc, self.topology.tomb_bucket, s.op_timeout_s)
        self._reader = DirectReader(self.nc)
        await self._reader.start()
        self._inbox = await shared_inbox(self.nc)  # the connection's one reply inbox
        self._client = await _agents_client(self.nc, s, *self._providers)
        events = JetStreamEventStream(self.nc, self._inbox, self._reader, self.topology.evt_stream, s.op_timeout_s)
        self.eventlog.bind(events, self.catalog.blobs)
        self.catalog.blobs.bind(await ObjectBlobs.open(self.nc, self.topology.blob_bucket, s.replicas, s.op_timeout_s))
        self.pipeline.out.bind(JetStreamOutStream(self.nc, self._inbox, self.topology.out_stream, s.op_timeout_s))
        self.catalog.bind(events, snapshots, meta, self._client, tombs)
        quarantine = await KvBucket.open(self.nc, self.topology.quarantine_bucket, s.op_timeout_s)
        self.catalog.bind_quarantine(quarantine, self.event)

        self._pull_prefix = self.nc.new_inbox()
        self.partitions.bind(PartitionConsumers(self.nc, self.topology, s.op_timeout_s), self._pull_prefix)
        self.placement.bind(HostLink(self.nc))
        self._pull_sub = await self.nc.subscribe(
            f"{self._pull_prefix}.>", cb=self._intake.on_pull_msg, pending_msgs_limit=1_000_000, pending_bytes_limit=-1
        )
        # Every host sees every call and answers only for the partitions it owns, so an
        # agent is never in memory on two hosts at once.
        # Calls not yet taken by the intake are bounded in bytes too: past the limit nats-py
        # drops them (the callers time out) rather than the host growing without bound.
        self._call_sub = await self.nc.subscribe(
            self.subjects.call_wildcard,
            cb=self._intake.on_call,
            pending_msgs_limit=1_000_000,
            pending_bytes_limit=s.max_inflight_bytes,
        )
        self._host_sub = await self.nc.subscribe(
            self.subjects.sys("host", s.host_id, "*"), cb=self.placement.on_host_msg, pending_msgs_limit=1_000_000
        )
        await watch_tombstones(self.nc, self.topology.tomb_bucket, self.catalog, self._log, s.op_timeout_s)
        self.supervisor.spawn("background", self._housekeeping())
        if s.stranded_sweep_s > 0:

            def leads() -> bool:  # the leader sweeps, or a host on its own
                coord = self.coordinator
                return not self.supervisor.stopping and (coord is None or coord.is_leader)

            for stream in (self.topology.cmd_stream, self.topology.cmd_high_stream):  # both lanes (ADR 0058)
                sweeper = StrandedSweeper(
                    self.nc,
                    stream,
                    self._reject_stranded,
                    now_ms=self.clock.wall_ms,
                    grace_s=s.stranded_grace_s,
                    timeout_s=s.op_timeout_s,
                )
                sweep = sweeper.run(s.stranded_sweep_s, self.clock.sleep, leads, self.metrics, self._log)
                self.supervisor.spawn("background", sweep)
        self.pubsub = await start_pubsub(self)  # the leader's fan-out, declared subscriptions (ADR 0049)
        self.purge_sweep = start_purge_sweep(self)  # deleted agents purged past their grace (ADR 0052)
        self.supervisor.started = True
        if self.static:
            for p in self._static_partitions:
                await self.start_partition(p)
        else:
            store = JetStreamStore(self.nc, self.topology.cluster_bucket, replicas=s.replicas, timeout_s=s.op_timeout_s)
            await store.ensure()
            # its own tasks (heartbeats, releases, claims) under the supervisor too, in a group
            # stop() leaves alone: the coordinator ends them itself (run's end, leave)
            self.coordinator = Coordinator(
                s.host_id,
                store,
                self.clock,
                _cluster_config(s),
                self,
                spawn=lambda coro: self.supervisor.spawn("coordination", coro),
            )
            self.supervisor.spawn("coordinator", self.coordinator.run())
            self.supervisor.spawn("background", self.placement.reserving.run())  # reservations' ends
            # ready when the ring is known and our share of it is started (or give up
            # waiting: the partitions may belong to others that have not let go yet)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(s.ready_timeout_s):
                    while not self.readiness()["partitions_started"]:
                        await asyncio.sleep(0.02)
        self._log.info("host_started", partitions=len(self.owned), types=self.registry.types())

    # -- partitions (the coordinator's hooks) -----------------------------------------------
    async def start_partition(self, partition: int, *, rewind: bool = False) -> None:
        """Start serving ``partition``: recreate its consumer, then pull."""
        await self.partitions.start(partition, rewind=rewind)
        self._tel.handoff(started=True)

    async def stop_partition(self, partition: int, *, graceful: bool) -> None:
        """Stop serving ``partition``. Graceful: finish the commands in hand (bounded by
        ``drain_grace_s``) and snapshot its agents, so the next owner starts warm."""
        self._tel.handoff(started=False, graceful=graceful)
        await self.partitions.stop(partition)
        if graceful:  # on the host's clock: the simulation runs this on its ManualClock
            until = self.clock.monotonic() + self.settings.drain_grace_s
            while self.scheduler.busy_with(partition) and self.clock.monotonic() < until:
                await self.clock.sleep(0.01)
        await self.catalog.forget_partition(partition, graceful=graceful)

    def load(self) -> dict[str, Any]:
        """What this host advertises in its heartbeat: its counts and its measured load (``loadmeter.py``)."""
        counts = {"active_agents": len(self.activations), "inflight": self.scheduler.inflight_count}
        latency = {"latency_ms": self.metrics.latency.summary()}
        return {**counts, "processed": self.stats["processed"], **latency, **self.loadmeter.sample()}

    async def event(self, kind: str, data: dict[str, Any]) -> None:
        """A lifecycle event on ``<root>.sys.<kind>`` (core NATS, for watchers and tools)."""
        body = {"kind": kind, "host": self.settings.host_id, "ts_ms": self.clock.wall_ms(), **data}
        with contextlib.suppress(Exception):
            await self.nc.publish(self.subjects.sys(*kind.split(".")), orjson.dumps(body))

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
        self._log.info("host_draining", inflight=self.scheduler.inflight_count)
        for sub in (self._pull_sub, self._call_sub, self._host_sub):
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        self.partitions.wake_all()
        if drain and self.settings.drain_grace_s > 0 and self.nc.is_connected:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.drain_grace_s):
                    await self.scheduler.wait_idle()
        await self.supervisor.cancel("pubsub", "background", "workers", "pullers")
        # what is left in mailboxes was never started: hand it back at once
        for work in self.scheduler.in_hand():
            if work.kind in _ACKED and not work.done:
                await self.outcomes.settle(work, Result.STOPPING, {})
        if drain and self.nc.is_connected:
            await self.catalog.snapshot_all(max(1.0, self.settings.op_timeout_s))
        await self.supervisor.drain("side", self.settings.op_timeout_s)
        if self._reader is not None:
            await self._reader.stop()
        with contextlib.suppress(Exception):
            await self.nc.flush(timeout=2)
        with contextlib.suppress(Exception):
            await self.nc.close()
        if self.watchdog is not None:
            self.watchdog.stop()
        self._log.info("host_stopped", **self.stats)

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
            reply = dropped_reply(exc, self._call_sub)
            if reply:
                await self._intake.refuse_dropped(reply)
            return
        self._log.debug("nats_error", error=str(exc))

    # -- housekeeping ----------------------------------------------------------------------
    async def _reject_stranded(self, msg: Msg, seq: int) -> bool:
        """Refuse a command found by the sweep like a malformed one; False: try again later."""
        parts = msg.subject.split(".")
        partition = int(parts[-3]) if len(parts) >= 5 and parts[-3].isdigit() else 0
        route = (partition, parts[-2], parts[-1])
        high = is_high_lane(msg.subject)
        cmd = self._intake.parse(
            STREAM, msg.subject, msg.headers, msg.data, "", route, deliveries=1, stream_seq=seq, high=high
        )
        self.scheduler.track(cmd)
        err = MalformedCommand("the subject holds a byte or token no partition consumer delivers (0x7f, '*' or '>')")
        await self.scheduler.reject_unrouted(cmd, err)
        return cmd.outcome != REQUEUED

    async def _housekeeping(self) -> None:
        s = self.settings
        tick = max(0.2, min(s.ack_wait_s / 3, s.idle_passivate_s / 4, 5.0))
        while True:
            await self.clock.sleep(tick)
            now = self.clock.monotonic()
            # keep long-running and queued commands from being redelivered meanwhile
            for work in self.scheduler.in_hand():
                if work.kind in _ACKED and not work.done and now - work.received > s.ack_wait_s / 3:
                    await self.outcomes.ack(work, b"+WPI")
            self.catalog.passivate_idle(now, self.scheduler.prune_held)
