"""The host's counters, from one source (ADR 0040).

``Metrics.inc(name, n, **attributes)`` counts in ``stats`` (what the health endpoint,
``jetagents status``, the micro service's stats and the tests read, by these names) and adds to
the OpenTelemetry counter of the same thing, when there is one, in the same call: the two can
no longer drift apart. Attributes are given by short names (``agent_type=...``) and go to the
OpenTelemetry counter only; ``stats`` counts totals.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .telemetry import ACTION, AGENT_TYPE, DEDUP_SOURCE, DELIVERY, ERROR_TYPE, HostTelemetry

# the host's counters, in the order its logs and status show them
STATS = (
    "processed",
    "duplicates",
    "dead_letters",
    "activations",
    "passivations",
    "fenced",
    "naks",
    "retries",
    "consumers_recreated",
    "dead_letters_lost",
    "replies_refused",
    "action_timeouts",
    "agent_busy",
    "loop_blocked",
    "calls_dropped",
    "stranded_swept",
    # pub-sub fan-out (ADR 0049): topic messages handled, commands sent, refused, dead-lettered
    "pubsub_messages",
    "pubsub_deliveries",
    "pubsub_refused",
    "pubsub_dead_letters",
)

# short attribute names at the call site -> OpenTelemetry attribute keys
_ATTRIBUTES = {
    "agent_type": AGENT_TYPE,
    "action": ACTION,
    "error": ERROR_TYPE,
    "delivery": DELIVERY,
    "source": DEDUP_SOURCE,
}


class Metrics:
    """The counters of one host."""

    __slots__ = ("_counters", "_counts", "_tel", "stats")

    def __init__(self, tel: HostTelemetry) -> None:
        self._counts: dict[str, int] = dict.fromkeys(STATS, 0)
        # read-only: every count goes through inc()
        self.stats: Mapping[str, int] = MappingProxyType(self._counts)
        self._tel = tel
        self._counters: dict[str, Any] = {
            "duplicates": tel.duplicates,
            "activations": tel.activations,
            "passivations": tel.passivations,
            "dead_letters": tel.dead_letters,
            "loop_blocked": tel.loop_blocks,
            "action_timeouts": tel.action_timeouts,
            "agent_busy": tel.agent_busy,
        }

    def inc(self, name: str, n: int = 1, **attributes: str) -> None:
        """Count ``n`` more ``name`` (also from the loop watchdog's thread: the SDK's
        counters are thread-safe)."""
        self._counts[name] += n
        counter = self._counters.get(name)
        if counter is not None and self._tel.metering:
            counter.add(n, {_ATTRIBUTES[k]: v for k, v in attributes.items()})
