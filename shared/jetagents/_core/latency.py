"""A host's latency summary (issue 18): the receipt-to-answer time of its last commands, small
enough to ride in every heartbeat (``member.<host>``, key ``latency_ms``) so the dashboard can
chart it without a metrics backend.

A fixed ring of the last ``size`` durations: recording is an index store (no allocation on
the command path); the summary sorts a copy, once per heartbeat.

>>> w = LatencyWindow(size=4)
>>> for s in (0.001, 0.002, 0.003, 0.010, 0.004):
...     w.record(s)
>>> w.summary()
{'n': 4, 'p50_ms': 3.0, 'p90_ms': 10.0, 'p99_ms': 10.0, 'max_ms': 10.0, 'total': 5}
"""

from __future__ import annotations

import math
from typing import Any

LATENCY_WINDOW = 1024  # commands the summary covers (the newest)


class LatencyWindow:
    """The last ``size`` command durations, in seconds."""

    __slots__ = ("_samples", "_size", "total")

    def __init__(self, size: int = LATENCY_WINDOW) -> None:
        self._size = size
        # made full at once: every record is then the same index store, never a length check
        self._samples: list[float] = [0.0] * size
        self.total = 0  # commands recorded since the host started

    def record(self, elapsed_s: float) -> None:
        self._samples[self.total % self._size] = elapsed_s
        self.total += 1

    def summary(self) -> dict[str, Any]:
        """Nearest-rank percentiles in milliseconds over the window; ``n`` 0 before any."""
        total = self.total
        xs = sorted(self._samples if total >= self._size else self._samples[:total])
        n = len(xs)
        if not n:
            return {"n": 0, "total": self.total}

        def rank(q: float) -> float:
            return round(xs[max(0, math.ceil(q * n - 1e-9) - 1)] * 1000, 3)

        return {
            "n": n,
            "p50_ms": rank(0.50),
            "p90_ms": rank(0.90),
            "p99_ms": rank(0.99),
            "max_ms": round(xs[-1] * 1000, 3),
            "total": self.total,
        }
