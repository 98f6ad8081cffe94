"""A host of the simulation made of the real host: ``Host`` built as in production, its parts
bound to the simulation's ports instead of a NATS connection (``jetagents.testing.simulation``).

What runs is the host's own code, wired by ``Host.__init__``: ``Intake.parse`` (the
``Command``), the ``Scheduler`` (mailboxes, workers, per-agent order), the ``Pipeline``
(validation, the dedup record, the action, the commit), the ``EventLog`` (the append with
the fence, and the check of the last message after a wrong last sequence), ``Outcomes`` with
the pure ack table (``decide``: reply, ack, nak, dead letter), the ``Catalog`` (activation by
snapshot and replay, the newer-owner check, eviction, passivation, snapshots) and the
``Coordinator`` (membership, lease, ring, claims).

The command stream's consumers are the simulation's (``simworld.FaultyConsumers``), and what
reaches them is the host's: ``Host.start_partition`` rewinds the partition's consumer and
starts the real ``Partitions`` pullers, whose credit loops wait on the simulation's clock and
ask the consumers for commands; the driver hands a command only to a host holding credit
for its partition, to the host's ``Intake.on_pull_msg`` (the pull subscription's callback),
and an expired request's ``408`` status goes there too. Stopping a partition is the real
``Host.stop_partition`` (the pullers stop, the commands in hand finish on the host's clock,
the catalog forgets the partition's agents).

Not driven here: calls (core requests) and their forwarding, migration, and an action's
time limit (``_host/deadline.py`` arms its timer on the event loop's clock).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import Any, NamedTuple

from .._core.agent import Event, Registry, action, applies
from .._host.coordination import Coordinator
from .._host.host import Host
from .._settings import HostSettings
from ..examples.counter import Counter, CounterState, Incremented
from .simcalls import CallMsg
from .simtypes import Delivered, NodePorts

__all__ = ["HostNode", "sim_settings"]

_GROUPS = ("workers", "side", "background", "coordinator", "coordination", "pullers")


def sim_settings(ports: NodePorts, **overrides: Any) -> HostSettings:
    """Settings that make the simulation reach the host's rarer paths: snapshots every few
    commits, a small memory budget (passivation, LRU eviction), a short dedup record."""
    base: dict[str, Any] = {
        "host_id": ports.host_id,
        "partitions": ports.partitions,
        "subject_root": ports.subjects.root,
        "snapshot_every": 3,
        "max_active_agents": 6,
        "dedup_records_per_agent": ports.dedup_records,
        "max_redeliveries": 1000,
        "loop_block_threshold_s": 0,
        "drain_grace_s": 2.0,
        "action_timeout_s": 10.0,  # past the longest pause; ``stall`` overruns it (on the simulation's clock)
    }
    base.update(overrides)
    return HostSettings(**base)


class Tagged(Event):
    """What ``HoldingCounter.tag`` records: the call that applied it."""

    tag: str


class HoldingCounter(Counter):
    """The example counter with one more action: ``hold`` waits for signal ``go`` (ADR 0042
    §3), then increments, so the simulation runs suspended actions, their signals, and the
    commands parked behind them, through every fault."""

    type_name = "counter"

    @action
    async def hold(self, by: int = 1) -> int:
        await self.wait_for("go")
        self.emit(Incremented(by=by))
        return self.state.value

    @action
    async def stall(self) -> int:
        """Emits, then never returns: its time limit cancels it and nothing it emitted is kept."""
        self.emit(Incremented(by=1_000))
        await asyncio.Event().wait()
        return self.state.value

    @action
    async def tag(self, tag: str) -> int:
        """A call's mark in the log: each time it is applied shows (``simcalls``)."""
        self.emit(Tagged(tag=tag))
        return self.state.value

    @applies
    def _tagged(self, state: CounterState, event: Tagged) -> None:
        return None


class HostNode:
    """One simulated host: the real ``Host`` over the simulation's ports."""

    def __init__(self, ports: NodePorts, settings: HostSettings | None = None) -> None:
        s = settings or sim_settings(ports)
        self.ports = ports
        host = self.host = Host(
            s, Registry([HoldingCounter]), clock=ports.clock, publisher=ports.publisher, schedules=ports.schedules
        )
        # what Host.start() does once connected, with the simulation's ports for NATS'
        host.scheduler.loop = asyncio.get_running_loop()
        host.pipeline.loop = ports.clock  # actions' time limits run on the simulation's time
        host.eventlog.bind(ports.events)
        host.catalog.bind(ports.events, ports.snapshots, ports.meta, None)
        host.cepoch = "5eed"
        host.supervisor.started = True
        consumers = self.consumers = ports.consumers
        consumers.on_status = host._intake.on_pull_msg
        host.partitions.bind(consumers, f"_INBOX.pull-{ports.host_id}")
        self.coordinator = host.coordinator = self._coordinator()

    def _coordinator(self) -> Coordinator:
        p = self.ports
        supervisor = self.host.supervisor  # its tasks under the host's supervisor, as in Host.start
        return Coordinator(
            p.host_id, p.store, p.clock, p.cluster, self, spawn=lambda coro: supervisor.spawn("coordination", coro)
        )

    # -- the coordinator's hooks ---------------------------------------------------------
    async def start_partition(self, partition: int, *, rewind: bool = False) -> None:
        await self.host.start_partition(partition, rewind=rewind)

    async def stop_partition(self, partition: int, *, graceful: bool) -> None:
        await self.host.stop_partition(partition, graceful=graceful)

    def load(self) -> dict[str, Any]:
        return {"active_agents": len(self.host.activations), "inflight": self.host.scheduler.inflight_count}

    async def event(self, kind: str, data: dict[str, Any]) -> None:
        return None

    # -- what the driver asks ------------------------------------------------------------
    def serves(self, partition: int) -> bool:
        return partition in self.host.partitions.owned_set

    def takes(self, partition: int) -> bool:
        return self.consumers.takes(partition)

    def handle(self, d: Delivered) -> Awaitable[None]:
        self.consumers.take(d.partition)  # now: the credit is spent when the server sends
        return self.host._intake.on_pull_msg(_Pulled(d.subject, d.headers, d.data, d.ack))

    def call(self, msg: CallMsg) -> Awaitable[None]:
        return self.host._intake.on_call(msg)

    def crash(self) -> None:
        self.consumers.crash()  # its pull requests die with its connection
        self.host.supervisor.stopping = True
        # the coordinator's own heartbeat, release and claim tasks ("coordination") die too
        doomed = self.host.supervisor.tasks(*_GROUPS)
        for task in doomed:
            task.cancel()


class _Pulled(NamedTuple):
    """A command as the pull subscription hands it over (a ``Received``)."""

    subject: str
    headers: Mapping[str, str]
    data: bytes
    reply: str
