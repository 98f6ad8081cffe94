"""The load a host measures and advertises (``_host/loadmeter.py``, ADR 0060)."""

from __future__ import annotations

from jetagents._host.loadmeter import LoadMeter
from jetagents._settings import HostSettings
from jetagents.testing import ManualClock


def test_rates_span_the_window_and_fractions_are_of_one_core_memory_and_network() -> None:
    clock = ManualClock()
    used = [10.0]
    s = HostSettings(load_window_s=2.0, load_network_bytes_per_s=1000, resources={"memory_mb": 1e9, "gpu": 2})
    meter = LoadMeter(s, clock, cpu=lambda: used[0])
    first = meter.sample()
    for _ in range(3):  # idle, the CPU of heartbeats and timers only: the baseline
        clock.advance(0.5)
        used[0] += 0.05
        meter.sample()
    assert "load" not in first and first["resources"]["gpu"] == 2.0 and first["resources"]["cpu"] >= 1
    for _ in range(4):  # 0.5 s apart: 4 commands of 100 bytes to partition 3, 1 to partition 7
        clock.advance(0.5)
        used[0] += 0.25
        for _ in range(4):
            meter.seen(3, 100)
        meter.seen(7, 100)
        out = meter.sample()
    load = out["load"]
    assert load["cpu_base"] > 0.0  # learnt while idle, kept while busy
    assert load["cpu"] == 0.5 and load["msgs_per_s"] == 10.0 and load["network"] == 1.0
    assert out["rates"] == {"3": 8.0, "7": 2.0}
    # an idle window: rates fall to nothing once the busy samples are older than the window
    for _ in range(6):
        clock.advance(0.5)
        out = meter.sample()
    assert out["load"]["msgs_per_s"] == 0.0 and out["rates"] == {} and out["load"]["cpu"] == 0.0
    assert out["load"]["cpu_base"] < 0.05  # follows the windows without commands (no CPU now)
