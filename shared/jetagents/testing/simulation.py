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
from collections.abc import Callable
from typing import Any

import orjson

from .._client.command import OutboundCommand, SendOptions
from .._core.errors import JetAgentsError
from .._core.ids import AgentId, partition_of
from .._core.schedules import pattern_of
from .._core.wire import H_COMMAND_ID, H_REMINDER
from .._host.coordination import CasConflict, ClusterConfig
from .clock import ManualClock, wait_all_blocked
from .invariants import Invariants, Violation
from .schedules import MemorySchedules
from .simcalls import Calls
from .simfaults import Faults
from .simtypes import Delivered, HostSlot, NodeFactory, NodePorts, SimConfig, SimNode, SimResult
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


class Simulation:
    """One seeded run: ``await Simulation(seed, factory).run()``."""

    def __init__(self, seed: int, factory: NodeFactory, config: SimConfig | None = None) -> None:
        self.seed = seed
        self.cfg = cfg = config or SimConfig()
        self.factory = factory
        self.rnd = random.Random(seed)
        self.clock = ManualClock()
        self.world = World(self.clock, ack_wait_s=cfg.ack_wait_s, duplicate_window_s=cfg.duplicate_window_s)
        self.invariants = Invariants(self.world, records=cfg.dedup_records, window_s=cfg.duplicate_window_s)
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
        self.faults = Faults(self)
        self.sent: dict[str, str] = {}  # command id -> event subject
        self.kinds: dict[str, str] = {}  # command id -> "ok", "domain" (refused) or "invalid"
        self._next_cmd = 0
        self.bodies: dict[str, bytes] = {}  # command id -> its body, when not an increment
        self.signals_due: list[tuple[int, str, int]] = []  # (round, hold's command id, agent)
        self.world.schedules = MemorySchedules(self.clock, self._fired)
        self.fired = 0  # reminder firings stored in the command stream
        self.calls = Calls(self) if cfg.calls_per_round else None
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
            dedup_records=self.cfg.dedup_records,
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
            elif cfg.stall_p and self.rnd.random() < cfg.stall_p:  # overruns: dead-lettered, not applied
                self.kinds[cmd_id] = "stall"
                self.invariants.refused.add(cmd_id)
                body = self.bodies[cmd_id] = b'{"action":"stall","params":{}}'
            elif cfg.hold_p and self.rnd.random() < cfg.hold_p:  # suspends until its signal
                body = self.bodies[cmd_id] = orjson.dumps({"action": "hold", "params": {"by": 1 + agent_no % 3}})
                self.signals_due.append((self.rounds + 1 + self.rnd.randrange(20), cmd_id, agent_no))
                self.signals_due.sort()
        assert agent_no is not None
        agent = AgentId(cfg.agent_type, f"a{agent_no}")
        by: Any = {"ok": 1 + agent_no % 3, "domain": 0, "invalid": "three"}.get(self.kinds[cmd_id], 1)
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

    def deliver(self, to: HostSlot | None = None) -> bool:
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
        self.faults.wake()
        if faulty and self.rnd.random() < cfg.fault_p:
            await self._step(self.faults.inject)
        actions: list[Callable[[], Any]] = []
        for h in self.hosts:
            if h.running():
                actions.append(lambda h=h: self._coordinate(h))  # type: ignore[misc]
        actions += [self.deliver] * cfg.deliveries_per_round
        while self.signals_due and self.signals_due[0][0] <= self.rounds:  # in faulty rounds or not
            _, hold, agent_no = self.signals_due.pop(0)
            actions.append(lambda h=hold, a=agent_no: self._signal(h, a))  # type: ignore[misc]
        if self.calls is not None:
            actions += self.calls.round(faulty)
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
            self.faults.calm()
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
            self.faults.counts,
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
        if self.calls is not None:
            self.calls.check_end()
