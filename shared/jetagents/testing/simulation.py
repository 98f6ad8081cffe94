"""Deterministic simulation of a cluster of hosts (TigerBeetle's VOPR, for jetagents).

N hosts share one in-memory world (``simworld.World``: the event stream, the command work
queue, buckets, the cluster store) on one ``ManualClock``. Each host is built by a
``NodeFactory`` from ports that pass through its own faults; ``simhost`` builds one from the
host's real parts. One seed drives everything: which command is delivered to which host,
when a host's coordinator runs, and the faults:

* a crash (the host's tasks are cancelled, its memory lost; it restarts later, empty, and
  rebuilds what it needs from the log),
* a pause (a paused host's calls wait; it wakes with whatever it read before, a claim that
  may have passed to another host, a stale log position, and must be fenced), including a
  pause that catches a host between computing a commit and writing it,
* lost acknowledgements (the command comes again after it was applied: exactly once must
  hold through the dedup record), lost replies to writes that landed, a host cut off from
  the server, lost heartbeats, an outage of the server for everyone,
* ring changes: hosts join, drain and leave.

After every step the invariants are checked (``Invariants``): in each agent's log the commit
numbers run 1..k without a gap, no command id appears twice, the writers' claims never
decrease (no write after a newer owner's) and one claim belongs to one host; no two hosts
acquired one partition's claim at one ring epoch; every command acknowledged with ``+ACK`` is
in its agent's log; every snapshot names a sequence whose commit is its agent's, with its
``n``, and lists each recorded command at its own commit; no command the agent refuses or
whose parameters are invalid is ever applied. At the end the faults stop; every command sent
must end up in its agent's log exactly once (an invalid one in the dead letters).

Everything that happens goes into one history (deliveries, appends with their sequence,
acknowledgements, ring epochs, faults); two runs of one seed produce the same history,
compared whole. To replay a failing seed: ``await Simulation(seed, factory, config).run()``
with the seed and config the failure printed; the history shows what led to it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from .._client.command import OutboundCommand, SendOptions
from .._core.errors import JetAgentsError
from .._core.ids import AgentId, partition_of
from .._core.schedules import pattern_of
from .._core.wire import H_COMMAND_ID, H_REMINDER, Subjects
from .._host.coordination import CasConflict, ClusterConfig, Coordinator
from .._host.ports import Bucket, EventStream, Publisher
from .clock import ManualClock, wait_all_blocked
from .invariants import Invariants, Violation
from .schedules import MemorySchedules
from .simworld import (
    SUBJECTS,
    FaultyBucket,
    FaultyConsumers,
    FaultyEventStream,
    FaultyPublisher,
    FaultyStore,
    HostFaults,
    World,
)
from .streams import QueuedCommand

__all__ = [
    "Delivered",
    "HostSlot",
    "Invariants",
    "NodePorts",
    "SimConfig",
    "SimNode",
    "SimResult",
    "Simulation",
    "Violation",
]


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
    fault_p: float = 0.06  # per round
    ack_wait_s: float = 2.0
    duplicate_window_s: float = 120.0
    heartbeat_s: float = 0.5
    member_ttl_s: float = 3.0
    lease_ttl_s: float = 3.0
    # out of reach: a claim freed only by waiting this out would never settle in time
    handoff_timeout_s: float = 10_000.0
    # agents a0.. with an @every reminder firing increment(by=1) while the faults run (ADR 0042
    # section 5): every firing is applied once (invariants), none is lost (the end check)
    reminders: int = 0
    reminder_every_s: int = 2
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


class Simulation:
    """One seeded run: ``await Simulation(seed, factory).run()``."""

    def __init__(self, seed: int, factory: NodeFactory, config: SimConfig | None = None) -> None:
        self.seed = seed
        self.cfg = cfg = config or SimConfig()
        self.factory = factory
        self.rnd = random.Random(seed)
        self.clock = ManualClock()
        self.world = World(self.clock, ack_wait_s=cfg.ack_wait_s, duplicate_window_s=cfg.duplicate_window_s)
        self.invariants = Invariants(self.world)
        self.cluster = ClusterConfig(
            partitions=cfg.partitions,
            heartbeat_s=cfg.heartbeat_s,
            member_ttl_s=cfg.member_ttl_s,
            lease_ttl_s=cfg.lease_ttl_s,
            tick_s=cfg.dt_s,
        )
        self.cluster.max_moves = 4
        self.cluster.handoff_timeout_s = cfg.handoff_timeout_s
        self.hosts: list[HostSlot] = []
        self.next_host = 0
        self.steps = 0
        self.rounds = 0
        self.counts = dict.fromkeys(cfg.faults, 0)
        self.sent: dict[str, str] = {}  # command id -> event subject
        self.kinds: dict[str, str] = {}  # command id -> "ok", "domain" (refused) or "invalid"
        self._next_cmd = 0
        self.bodies: dict[str, bytes] = {}  # command id -> its body, when not an increment
        self.signals_due: list[tuple[int, str, int]] = []  # (round, hold's command id, agent)
        self.world.schedules = MemorySchedules(self.clock, self._fired)
        self.fired = 0  # reminder firings stored in the command stream
        self.firings: dict[str, str] = {}  # a firing's command id -> its agent's event subject

    # -- hosts ---------------------------------------------------------------------------
    def add_host(self, host_id: str | None = None) -> HostSlot:
        """Start a host (a new id unless given: a restart keeps its id)."""
        if host_id is None:
            host_id = f"h{self.next_host}"
            self.next_host += 1
        faults = HostFaults(rnd=random.Random(self.rnd.random()))
        w = self.world
        ports = NodePorts(
            host_id=host_id,
            clock=self.clock,
            events=FaultyEventStream(w, host_id, faults),
            snapshots=FaultyBucket(w, host_id, faults, w.snapshots),
            meta=FaultyBucket(w, host_id, faults, w.meta),
            publisher=FaultyPublisher(w, host_id, faults),
            store=FaultyStore(w, host_id, faults),
            consumers=FaultyConsumers(w, host_id, faults),
            cluster=self.cluster,
            partitions=self.cfg.partitions,
            subjects=SUBJECTS,
            schedules=w.schedules,
        )
        host = HostSlot(host_id, self.factory(ports), faults)
        self.hosts.append(host)
        w.record("start", host_id)
        return host

    def crash(self, host: HostSlot, restart_after_s: float | None = None) -> None:
        """The host's process dies: its tasks are cancelled, nothing it sends arrives."""
        host.faults.crashed = True
        host.faults.running.set()  # a paused host's waiting calls see the crash
        host.node.crash()
        for task in host.tasks:
            task.cancel()
        host.alive = False
        if restart_after_s is not None:
            host.restart_at = self.clock.monotonic() + restart_after_s

    def _spawn(self, host: HostSlot, coro: Any, what: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        host.tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            host.tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self.world.record("task_failed", host.id, what, repr(t.exception()))

        task.add_done_callback(done)
        return task

    # -- commands ------------------------------------------------------------------------
    def _send(self, cmd_id: str | None = None, agent_no: int | None = None, body: bytes | None = None) -> None:
        cfg = self.cfg
        if cmd_id is None:
            self._next_cmd += 1
            cmd_id = f"k{self._next_cmd}"
            agent_no = self.rnd.randrange(cfg.agents)
            r = self.rnd.random()
            kind = "invalid" if r < cfg.invalid_p else "domain" if r < cfg.invalid_p + cfg.domain_p else "ok"
            self.kinds[cmd_id] = kind
            if kind != "ok":
                self.invariants.refused.add(cmd_id)
            elif cfg.hold_p and self.rnd.random() < cfg.hold_p:  # suspends until its signal
                body = self.bodies[cmd_id] = orjson.dumps({"action": "hold", "params": {"by": 1 + agent_no % 3}})
                self.signals_due.append((self.rounds + 1 + self.rnd.randrange(20), cmd_id, agent_no))
                self.signals_due.sort()
        assert agent_no is not None
        agent = AgentId(cfg.agent_type, f"a{agent_no}")
        by: Any = {"ok": 1 + agent_no % 3, "domain": 0, "invalid": "three"}[self.kinds[cmd_id]]
        out = OutboundCommand.build(
            agent,
            "increment",
            {"by": by},
            SendOptions(command_id=cmd_id),
            subjects=SUBJECTS,
            timeout_s=30.0,
            limit_bytes=64 * 1024,
            new_id=lambda: cmd_id,
            wall_ms=self.clock.wall_ms(),
            body=body or self.bodies.get(cmd_id),
        )
        p = partition_of(agent.type, agent.id, cfg.partitions)
        stored = f"{SUBJECTS.root}.p.{p}.{agent.type}.{agent.id}"
        seq = self.world.commands.publish(stored, out.body, out.headers, p)
        subject = SUBJECTS.evt(agent.type, agent.id)
        self.sent[cmd_id] = subject
        self.invariants.subject_of_seq[seq] = (subject, cmd_id)
        self.world.record("send", cmd_id, seq, agent.id)

    def _signal(self, hold: str, agent_no: int) -> None:
        """The signal that resumes ``hold`` (a durable command of its own, id ``g...``)."""
        cmd_id = "g" + hold
        self.kinds[cmd_id] = "ok"
        body = self.bodies[cmd_id] = orjson.dumps({"signal": "go", "payload": None, "to": hold})
        self._send(cmd_id, agent_no, body)

    def _fired(self, target: str, body: bytes, headers: dict[str, str]) -> None:
        """A schedule's firing lands in the command stream; the host names it s<cepoch>-<seq>
        (HostNode's cepoch is 5eed). A reminder's firing the invariants then expect in the
        agent's log once acknowledged; the host's own kick (``Steps.arm_kick``: a host died
        while parked commands were runnable) is answered without a commit of its own."""
        agent_type, agent_id = target.split(".")[2:4]
        p = partition_of(agent_type, agent_id, self.cfg.partitions)
        seq = self.world.commands.publish(f"{SUBJECTS.root}.p.{p}.{agent_type}.{agent_id}", body, headers, p)
        cmd_id, subject = f"s5eed-{seq}", SUBJECTS.evt(agent_type, agent_id)
        self.invariants.subject_of_seq[seq] = (subject, cmd_id)
        if H_REMINDER not in headers:
            self.invariants.refused.add(cmd_id)  # acknowledged, never applied as a command
            self.world.record("kick", seq, agent_id)
            return
        self.firings[cmd_id] = subject
        self.fired += 1
        self.world.record("fire", seq, agent_id)

    async def _remind(self, on: bool) -> None:
        """Start (or cancel) the reminders, as a host publishes them."""
        sch, t = self.world.schedules, self.cfg.agent_type
        body = orjson.dumps({"action": "increment", "params": {"by": 1}})
        for k in range(self.cfg.reminders):
            subject = SUBJECTS.rem(t, f"a{k}", "tick")
            if on:
                pattern = pattern_of(every=self.cfg.reminder_every_s)
                await sch.schedule(subject, pattern, SUBJECTS.cmd(t, f"a{k}"), body, headers={H_REMINDER: "tick"})
            else:
                await sch.cancel(subject)

    def _deliver(self, to: HostSlot | None = None) -> bool:
        ready = self.world.commands.ready()
        if to is not None:
            ready = [c for c in ready if to.node.takes(c.partition)]
        if not ready:
            return False
        cmd = ready[self.rnd.randrange(len(ready))]
        takers = [to] if to is not None else [h for h in self.hosts if h.running() and h.node.takes(cmd.partition)]
        if not takers:
            return False
        host = takers[self.rnd.randrange(len(takers))]
        self._hand(host, cmd)
        return True

    def _hand(self, host: HostSlot, cmd: QueuedCommand) -> None:
        ack = self.world.commands.deliver(cmd)
        self.world.record("deliver", host.id, cmd.seq, cmd.deliveries)
        d = Delivered(cmd.subject, cmd.data, cmd.headers, ack, cmd.deliveries, cmd.seq, cmd.partition)
        self._spawn(host, host.node.handle(d), "handle")

    def _coordinate(self, host: HostSlot) -> None:
        # a task of the host's, as in a host: a pause can catch it half way through a round
        if host.coordinating is None or host.coordinating.done():
            host.coordinating = self._spawn(host, self._round_of(host), "coordinator")

    async def _round_of(self, host: HostSlot) -> None:
        try:
            await host.node.coordinator.step()
        except (JetAgentsError, CasConflict):
            pass  # the coordinator's own loop logs and carries on the same way
        coord = host.node.coordinator
        if host.draining and coord.ring and coord.handed_over():
            await coord.leave()
            self.world.record("left", host.id)
            self.crash(host, None)

    # -- faults --------------------------------------------------------------------------
    async def _fault(self) -> None:
        now = self.clock.monotonic()
        live = [h for h in self.hosts if h.running() and not h.draining]
        if not live:
            return
        kind = self.cfg.faults[self.rnd.randrange(len(self.cfg.faults))]
        victim = live[self.rnd.randrange(len(live))]
        f = victim.faults
        if kind == "crash" and len(live) > 1:  # and restarts, empty, under the same id
            self.crash(victim, self.rnd.uniform(1.0, 6.0))
        elif kind == "kill" and len(live) > 1:  # for good: the others take its partitions
            self.crash(victim)
        elif kind == "pause":  # past the lease and the member TTL, then back
            # with commands in hand: they run when it wakes, before its coordinator notices
            for _ in range(self.rnd.randrange(4)):
                self._deliver(to=victim)
            f.running.clear()
            f.paused_until = now + self.rnd.uniform(0.5, 7.0)
        elif kind == "pause_at_append":
            f.pause_at_append_s = self.rnd.uniform(3.5, 8.0)
        elif kind == "lost_ack":
            f.lost_ack_until = now + self.rnd.uniform(1.0, 6.0)
        elif kind == "lost_reply":
            f.lost_reply_until = now + self.rnd.uniform(1.0, 6.0)
        elif kind == "cut":
            f.cut_until = now + self.rnd.uniform(1.0, 5.0)
        elif kind == "drop_heartbeat":
            f.no_heartbeat_until = now + self.rnd.uniform(1.0, 4.5)
        elif kind == "stale_ring":
            f.stale_ring = await self.world.store.get("ring")
            f.stale_ring_until = now + self.rnd.uniform(1.0, 10.0)
        elif kind == "outage":  # the server's leader paused: nobody reaches it
            until = now + self.rnd.uniform(3.5, 8.0)
            for h in self.hosts:
                h.faults.cut_until = max(h.faults.cut_until, until)
        elif kind == "join" and len(live) < self.cfg.max_hosts:
            self.add_host()
        elif kind == "drain" and len(live) > 1:
            victim.draining = True
            victim.node.coordinator.draining = True
        else:
            return
        self.counts[kind] += 1
        self.world.record("fault", kind, victim.id)

    def _wake(self) -> None:
        now = self.clock.monotonic()
        for h in list(self.hosts):
            f = h.faults
            if h.alive and not f.running.is_set() and now >= f.paused_until:
                f.running.set()
                self.world.record("resume", h.id)
            if h.restart_at is not None and now >= h.restart_at:
                h.restart_at = None
                self.world.record("restart", h.id)
                self.add_host(h.id)

    def _calm(self) -> None:
        for h in self.hosts:
            f = h.faults
            f.cut_until = f.lost_reply_until = f.lost_ack_until = f.no_heartbeat_until = 0.0
            f.pause_at_append_s = f.paused_until = f.stale_ring_until = 0.0
            if h.restart_at is not None:
                h.restart_at = 0.0

    # -- the run -------------------------------------------------------------------------
    async def _step(self, action: Callable[[], Any]) -> None:
        result = action()
        if asyncio.iscoroutine(result):
            await result
        self.steps += 1
        await wait_all_blocked()
        self.invariants.check()

    async def round(self, faulty: bool) -> None:
        cfg = self.cfg
        self.clock.advance(cfg.dt_s)
        self.rounds += 1
        self.world.schedules.fire_due()
        self._wake()
        if faulty and self.rnd.random() < cfg.fault_p:
            await self._step(self._fault)
        actions: list[Callable[[], Any]] = []
        for h in self.hosts:
            if h.running():
                actions.append(lambda h=h: self._coordinate(h))  # type: ignore[misc]
        actions += [self._deliver] * cfg.deliveries_per_round
        while self.signals_due and self.signals_due[0][0] <= self.rounds:  # in faulty rounds or not
            _, hold, agent_no = self.signals_due.pop(0)
            actions.append(lambda h=hold, a=agent_no: self._signal(h, a))  # type: ignore[misc]
        if faulty:
            sends = int(cfg.sends_per_round) + (self.rnd.random() < cfg.sends_per_round % 1)
            for _ in range(sends):
                if self.sent and self.rnd.random() < cfg.resend_p:
                    cmd_id = sorted(self.sent)[self.rnd.randrange(len(self.sent))]
                    agent_no = int(self.sent[cmd_id].rsplit(".a", 1)[1])
                    actions.append(lambda c=cmd_id, a=agent_no: self._send(c, a))  # type: ignore[misc]
                else:
                    actions.append(self._send)
        self.rnd.shuffle(actions)
        for action in actions:
            await self._step(action)

    async def run(self) -> SimResult:
        cfg = self.cfg
        for _ in range(cfg.hosts):
            self.add_host()
        try:
            await self._remind(True)
            for _ in range(cfg.rounds):
                await self.round(faulty=True)
            self._calm()
            await self._remind(False)
            for _ in range(cfg.quiet_rounds):
                await self.round(faulty=False)
                if not self.world.commands.pending() and self._all_applied() and await self.settled():
                    self.world.record("settled", self.rounds)
                    break
            self._check_end()
        except Violation as v:
            # what replays it: the seed and the config; what led to it: the end of the history
            tail = "\n  ".join(repr(e) for e in self.world.history[-25:])
            raise Violation(
                f"seed {self.seed}, step {self.steps}, round {self.rounds}: {v}\n"
                f"replay: Simulation({self.seed}, factory, {self.cfg!r}).run()\nlast events:\n  {tail}"
            ) from None
        finally:
            for h in self.hosts:
                if h.alive:
                    self.crash(h, None)
            await wait_all_blocked()
        return SimResult(
            self.seed,
            self.steps,
            self.rounds,
            self.world.history,
            self.counts,
            len(self.sent),
            len(self.world.events.messages),
        )

    def _all_applied(self) -> bool:
        return not self._unaccounted(dead_letters_count=False)

    def _unaccounted(self, *, dead_letters_count: bool) -> list[str]:
        """Commands not (yet) where they belong: applied once (in the log), or for invalid
        ones dead-lettered; a refused one is only answered."""
        logged = self.invariants.logged
        dead: set[str] = set()
        for m in self.world.dead_letters.messages:
            headers = orjson.loads(m.data).get("headers") or {}
            dead.add(str(headers.get(H_COMMAND_ID)))
        out = []
        for cmd, subject in sorted(self.sent.items()):
            kind = self.kinds[cmd]
            applied = cmd in logged.get(subject, ()) or (dead_letters_count and cmd in dead)
            if not (applied if kind == "ok" else kind == "domain" or cmd in dead):
                out.append(cmd)
        return out

    async def settled(self) -> bool:
        """Every live host sees one ring, and each partition is claimed and served by exactly
        the live host it names."""
        live = [h for h in self.hosts if h.alive]
        rings = {h.node.coordinator.ring.epoch if h.node.coordinator.ring else -1 for h in live}
        ring = live[0].node.coordinator.ring if live else None
        if len(rings) != 1 or ring is None:
            return False
        claims = await self.world.store.scan("claim.")
        names = {h.id for h in live}
        for p, owner in enumerate(ring.owners):
            claim = claims.get(f"claim.{p}")
            if owner not in names or claim is None or claim.value["host"] != owner:
                return False
            if [h.id for h in live if h.node.serves(p)] != [owner]:
                return False
        return True

    def _check_end(self) -> None:
        if not self.world.history or self.world.history[-1][1] != "settled":
            raise Violation(f"the cluster did not settle in {self.cfg.quiet_rounds} rounds after the faults stopped")
        left = self.world.commands.pending()
        if left:
            raise Violation(f"{len(left)} commands never acknowledged after the faults stopped: {left[:3]}")
        # a firing closes once: by its "fire" commit, or (parked behind a suspended action)
        # by the "end" of its parked run
        logged = self.invariants.logged
        unclosed = [cmd for cmd, subject in self.firings.items() if cmd not in logged.get(subject, ())]
        if unclosed:
            raise Violation(
                f"{len(unclosed)} of {self.fired} reminder firings never closed in their logs: {unclosed[:5]}"
            )
        lost = self._unaccounted(dead_letters_count=True)
        if lost:
            raise Violation(f"{len(lost)} commands acknowledged or gone but never applied: {lost[:5]}")
