"""The simulation's faults (``jetagents.testing.simulation``): which fault, on which host, and
for how long, drawn from the run's seed; waking paused hosts and restarting crashed ones as
their time comes; and calm, when the faults stop.

* a crash (the host's tasks are cancelled, its memory lost; it restarts later, empty, under
  the same id), or a kill (for good: the others take its partitions),
* a pause (past the lease and the member TTL; with commands in hand, or between computing a
  commit and writing it),
* lost acknowledgements, lost replies to writes that landed, a host cut off from the server,
  lost heartbeats, stale reads of the ring, an outage of the server for everyone,
* ring changes: hosts join, drain and leave.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .simulation import Simulation

__all__ = ["Faults"]


class Faults:
    """The faults of one run, and how many of each kind happened (``counts``)."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.counts = dict.fromkeys(sim.cfg.faults, 0)

    async def inject(self) -> None:
        sim = self.sim
        now = sim.clock.monotonic()
        live = [h for h in sim.hosts if h.running() and not h.draining]
        if not live:
            return
        kind = sim.cfg.faults[sim.rnd.randrange(len(sim.cfg.faults))]
        victim = live[sim.rnd.randrange(len(live))]
        f = victim.faults
        if kind == "crash" and len(live) > 1:  # and restarts, empty, under the same id
            sim.crash(victim, sim.rnd.uniform(1.0, 6.0))
        elif kind == "kill" and len(live) > 1:  # for good: the others take its partitions
            sim.crash(victim)
        elif kind == "pause":  # past the lease and the member TTL, then back
            # with commands in hand: they run when it wakes, before its coordinator notices
            for _ in range(sim.rnd.randrange(4)):
                sim.deliver(to=victim)
            f.running.clear()
            f.paused_until = now + sim.rnd.uniform(0.5, 7.0)
        elif kind == "pause_at_append":
            f.pause_at_append_s = sim.rnd.uniform(3.5, 8.0)
        elif kind == "lost_ack":
            f.lost_ack_until = now + sim.rnd.uniform(1.0, 6.0)
        elif kind == "lost_reply":
            f.lost_reply_until = now + sim.rnd.uniform(1.0, 6.0)
        elif kind == "cut":
            f.cut_until = now + sim.rnd.uniform(1.0, 5.0)
        elif kind == "drop_heartbeat":
            f.no_heartbeat_until = now + sim.rnd.uniform(1.0, 4.5)
        elif kind == "stale_ring":
            f.stale_ring = await sim.world.store.get("ring")
            f.stale_ring_until = now + sim.rnd.uniform(1.0, 10.0)
        elif kind == "outage":  # the server's leader paused: nobody reaches it
            until = now + sim.rnd.uniform(3.5, 8.0)
            for h in sim.hosts:
                h.faults.cut_until = max(h.faults.cut_until, until)
        elif kind == "join" and len(live) < sim.cfg.max_hosts:
            sim.add_host()
        elif kind == "drain" and len(live) > 1:
            victim.draining = True
            victim.node.coordinator.draining = True
        else:
            return
        self.counts[kind] += 1
        sim.world.record("fault", kind, victim.id)

    def wake(self) -> None:
        sim = self.sim
        now = sim.clock.monotonic()
        for h in list(sim.hosts):
            f = h.faults
            if h.alive and not f.running.is_set() and now >= f.paused_until:
                f.running.set()
                sim.world.record("resume", h.id)
            if h.restart_at is not None and now >= h.restart_at:
                h.restart_at = None
                sim.world.record("restart", h.id)
                sim.add_host(h.id)

    def calm(self) -> None:
        sim = self.sim
        for h in sim.hosts:
            f = h.faults
            f.cut_until = f.lost_reply_until = f.lost_ack_until = f.no_heartbeat_until = 0.0
            f.pause_at_append_s = f.paused_until = f.stale_ring_until = 0.0
            if h.restart_at is not None:
                h.restart_at = 0.0
