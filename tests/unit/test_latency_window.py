"""The latency ring before it is full: only what was recorded is ranked (its unused slots
are never read as samples)."""

from __future__ import annotations

from jetagents._core.latency import LatencyWindow


def test_a_window_not_yet_full_ranks_only_its_recorded_samples() -> None:
    w = LatencyWindow(size=8)
    for s in (0.004, 0.002, 0.003):
        w.record(s)
    assert w.summary() == {"n": 3, "p50_ms": 3.0, "p90_ms": 4.0, "p99_ms": 4.0, "max_ms": 4.0, "total": 3}
    for _ in range(6):  # past its size: the oldest are overwritten
        w.record(0.001)
    assert w.summary() == {"n": 8, "p50_ms": 1.0, "p90_ms": 3.0, "p99_ms": 3.0, "max_ms": 3.0, "total": 9}
