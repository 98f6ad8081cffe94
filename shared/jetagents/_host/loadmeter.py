"""What a host measures of itself and advertises in its heartbeat (ADR 0060).

Measured, not configured: the process's CPU time (``os.times``), its resident memory, and the
commands and bytes it takes in (counted at intake, per partition). Rates span the last
``load_window_s``: one heartbeat's worth would be mostly noise, a long window would make the
leader's rebalancing chase the past. The fractions the load score weighs (``cpu``, ``memory``,
``network``) are of one core (an asyncio host runs its agents on one thread: one core busy is
a full host, however many the machine has), of the host's ``memory_mb`` and of
``load_network_bytes_per_s``; ``cpu_base`` is the CPU it uses without commands (learnt from
windows without any), and ``rates`` (commands per second of each partition this host serves):
with both, the leader predicts what moving a partition moves.
"""

from __future__ import annotations

import os
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._core.clock import Clock
from .._settings import HostSettings

RATE_PARTITIONS = 4096  # partitions one heartbeat lists rates for (busiest first)


def rss_mb() -> float:
    """Resident memory of this process in MiB (Linux; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def machine_memory_mb() -> float:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20, 1)
    except (OSError, ValueError, AttributeError):
        return 1024.0


def host_resources(settings: HostSettings) -> dict[str, float]:
    """What this host offers: its settings, cpu and memory_mb defaulting to the machine's."""
    out = {"cpu": float(os.cpu_count() or 1), "memory_mb": machine_memory_mb()}
    out.update(settings.resources)
    return out


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


@dataclass(slots=True)
class _Sample:
    at_s: float
    cpu_s: float
    msgs: int
    nbytes: int
    per_partition: dict[int, int]


class LoadMeter:
    """Counts what the host takes in and turns it, with the CPU clock, into rates."""

    def __init__(self, settings: HostSettings, clock: Clock, *, cpu: Callable[[], float] = cpu_s) -> None:
        self.settings = settings
        self.clock = clock
        self.resources = host_resources(settings)
        self._cpu = cpu
        self.nbytes = 0
        # counted for every command (a missing partition starts at 0 without a lookup first);
        # only read whole, by sample()
        self.per_partition: defaultdict[int, int] = defaultdict(int)
        self._samples: deque[_Sample] = deque()
        # the CPU the host uses with no command at all (heartbeats, timers, the loop): learnt
        # from windows without commands, so the leader weighs only what partitions cost
        self.cpu_base: float | None = None

    def seen(self, partition: int, nbytes: int) -> None:
        """A command taken in (pulled, called or forwarded)."""
        self.nbytes += nbytes
        self.per_partition[partition] += 1

    @property
    def msgs(self) -> int:
        """The commands taken in so far: summed when a sample is taken, not counted twice
        for every command."""
        return sum(self.per_partition.values())

    def sample(self) -> dict[str, Any]:
        """Rates over the window up to now, and the fractions the load score weighs."""
        now = self.clock.monotonic()
        used = self._cpu()
        msgs = self.msgs
        self._samples.append(_Sample(now, used, msgs, self.nbytes, dict(self.per_partition)))
        window = self.settings.load_window_s
        while len(self._samples) > 2 and now - self._samples[1].at_s >= window:
            self._samples.popleft()
        first = self._samples[0]
        dt = now - first.at_s
        if dt <= 0:
            return {"cpu_s": round(used, 2), "rss_mb": rss_mb(), "resources": self.resources}
        msgs_per_s = (msgs - first.msgs) / dt
        bytes_per_s = (self.nbytes - first.nbytes) / dt
        mem = rss_mb()
        rates = {
            p: (n - first.per_partition.get(p, 0)) / dt
            for p, n in self.per_partition.items()
            if n > first.per_partition.get(p, 0)
        }
        busiest = sorted(rates, key=lambda p: -rates[p])[:RATE_PARTITIONS]
        cpu = min(1.0, (used - first.cpu_s) / dt)
        if msgs == first.msgs and len(self._samples) > 2:
            self.cpu_base = cpu if self.cpu_base is None else round(0.5 * self.cpu_base + 0.5 * cpu, 4)
        return {
            "cpu_s": round(used, 2),  # CPU time used so far (kept: tools read it)
            "rss_mb": mem,
            "resources": self.resources,
            "load": {
                "cpu": round(cpu, 4),
                "cpu_base": round(self.cpu_base or 0.0, 4),
                "memory": round(min(1.0, mem / max(1.0, self.resources.get("memory_mb", 1.0))), 4),
                "network": round(min(1.0, bytes_per_s / self.settings.load_network_bytes_per_s), 4),
                "msgs_per_s": round(msgs_per_s, 2),
                "bytes_per_s": round(bytes_per_s, 1),
            },
            "rates": {str(p): round(rates[p], 3) for p in busiest},
        }
