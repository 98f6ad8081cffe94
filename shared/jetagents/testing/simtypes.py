"""The simulation's vocabulary (``jetagents.testing.simulation``): its configuration, what a
host is built from (``NodePorts``), what the driver asks of a host (``SimNode``), a delivery,
a host's slot in the run and the run's result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .._core.wire import Subjects
from .._host.coordination import ClusterConfig, Coordinator
from .._host.ports import Bucket, EventStream, Publisher
from .clock import ManualClock
from .simworld import FaultyConsumers, FaultyStore, HostFaults

__all__ = ["Delivered", "HostSlot", "NodeFactory", "NodePorts", "SimConfig", "SimNode", "SimResult"]


@dataclass(frozen=True)
class SimConfig:
    hosts: int = 3
    max_hosts: int = 5
    partitions: int = 8
    agents: int = 24
    agent_type: str = "counter"
    rounds: int = 300
    quiet_rounds: int = 240  # after the faults stop: time for every command to be applied
    dt_s: float = 0.25
    deliveries_per_round: int = 4
    sends_per_round: float = 1.5
    resend_p: float = 0.05  # a client re-sends a command under the same id (outside the window)
    domain_p: float = 0.04  # a command the agent refuses (increment by 0): answered, never applied
    invalid_p: float = 0.03  # a command with invalid parameters: dead-lettered, never applied
    # a command that suspends (``hold``: waits for signal ``go``), its signal sent 1-20 rounds
    # later (ADR 0042); 0 keeps the runs (and their histories) of before suspension
    hold_p: float = 0.0
    # a command that runs past its time limit (``stall``): cancelled on the simulation's clock,
    # dead-lettered, never applied; 0 keeps the runs of before
    stall_p: float = 0.0
    fault_p: float = 0.06  # per round
    ack_wait_s: float = 2.0
    duplicate_window_s: float = 120.0
    dedup_records: int = 8  # the hosts' dedup_records_per_agent: short, so records are evicted
    heartbeat_s: float = 0.5
    member_ttl_s: float = 3.0
    lease_ttl_s: float = 3.0
    # out of reach: a claim freed only by waiting this out would never settle in time
    handoff_timeout_s: float = 10_000.0
    # agents a0.. with an @every reminder firing increment(by=1) while the faults run (ADR 0042
    # section 5): every firing is applied once (invariants), none is lost (the end check)
    reminders: int = 0
    reminder_every_s: int = 2
    # calls (at-most-once core requests, ``simcalls``) sent per faulty round; 0 sends none and
    # keeps the runs (and their histories) of before calls
    calls_per_round: float = 0.0
    faults: tuple[str, ...] = (
        "crash",
        "kill",
        "pause",
        "pause_at_append",
        "lost_ack",
        "lost_reply",
        "cut",
        "drop_heartbeat",
        "stale_ring",
        "outage",
        "join",
        "drain",
    )


@dataclass(frozen=True, slots=True)
class Delivered:
    """A command as the command stream hands it to a host."""

    subject: str
    data: bytes
    headers: Mapping[str, str]
    ack: str  # where +ACK / -NAK / +TERM / +WPI go
    deliveries: int
    stream_seq: int
    partition: int


@dataclass
class NodePorts:
    """What a host is built from: its id, the clock, and its faulty view of the world."""

    host_id: str
    clock: ManualClock
    events: EventStream
    snapshots: Bucket
    meta: Bucket
    publisher: Publisher
    store: FaultyStore
    consumers: FaultyConsumers  # the command stream's partition consumers, as it reaches them
    cluster: ClusterConfig
    partitions: int
    subjects: Subjects
    schedules: Any = None  # the server's schedules (testing/schedules.py), shared by all hosts
    dedup_records: int = 8  # dedup_records_per_agent (SimConfig.dedup_records)


class SimNode(Protocol):
    """A host under simulation. It is the coordinator's hooks (start/stop partition)."""

    coordinator: Coordinator

    def serves(self, partition: int) -> bool: ...

    def takes(self, partition: int) -> bool:
        """Whether a command of ``partition`` may be delivered to it now (it asked for one)."""
        ...

    def handle(self, delivery: Delivered) -> Awaitable[None]:
        """Take one delivered command to its answer (published to ``delivery.ack``); called
        when the command is sent, awaited in a task of the host's."""
        ...

    def call(self, msg: Any) -> Awaitable[None]:
        """A call (a core request, a ``Received``) as the host's call subscription hands it over."""
        ...

    def crash(self) -> None:
        """Cancel every task the host runs (its process died)."""
        ...


NodeFactory = Callable[[NodePorts], SimNode]


@dataclass
class HostSlot:
    """One host of the run: its node, its faults, its tasks."""

    id: str
    node: SimNode
    faults: HostFaults
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    alive: bool = True
    draining: bool = False
    restart_at: float | None = None
    coordinating: asyncio.Task[None] | None = None

    def running(self) -> bool:
        return self.alive and not self.faults.crashed and self.faults.running.is_set()


@dataclass
class SimResult:
    seed: int
    steps: int
    rounds: int
    history: list[tuple[Any, ...]]
    faults: dict[str, int]
    commands: int
    commits: int
