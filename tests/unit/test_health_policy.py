"""The pure parts of per-agent health (ADR 0059): the decayed CPU share, the policy's
validation, and the instance-size walk."""

from __future__ import annotations

import math

import pytest
from pydantic import BaseModel, ValidationError

from jetagents import HealthPolicy, HostSettings
from jetagents._core.health import Decayed
from jetagents._host.health import held_bytes


def test_a_steady_rate_reads_as_its_share() -> None:
    d = Decayed(2.0)
    for step in range(1, 2001):  # 0.25 CPU seconds per second, for 20 s (ten time constants)
        d.add(0.0025, step * 0.01)
    assert d.share(20.0) == pytest.approx(0.25, rel=0.01)


def test_the_share_decays_and_under_in_says_when_it_is_under() -> None:
    d = Decayed(1.0)
    d.add(1.0, 0.0)  # one CPU second at once: share 1.0
    assert d.share(0.0) == 1.0
    wait_s = d.under_in(0.25, 0.0)
    assert wait_s == pytest.approx(math.log(4))
    assert d.share(wait_s) == pytest.approx(0.25)
    assert d.under_in(0.25, wait_s + 0.001) == 0.0
    assert d.under_in(0.5, 10.0) == 0.0


def test_time_going_backwards_does_not_grow_the_sum() -> None:
    d = Decayed(1.0)
    d.add(1.0, 5.0)
    assert d.share(4.0) == 1.0


def test_policies_are_validated_and_settings_take_them_per_type() -> None:
    with pytest.raises(ValidationError):
        HealthPolicy(cpu_share=0)
    with pytest.raises(ValidationError):
        HealthPolicy(on_memory="throttle")  # type: ignore[arg-type]  # throttling frees no memory
    with pytest.raises(ValidationError):
        HealthPolicy(bogus=1)  # type: ignore[call-arg]
    s = HostSettings(health={"hungry": {"type_cpu_share": 0.5, "window_s": 3}})
    assert s.health["hungry"] == HealthPolicy(type_cpu_share=0.5, window_s=3)
    assert s.health["hungry"].measures_cpu and not HealthPolicy(memory_bytes=4096).measures_cpu


class _State(BaseModel):
    items: list[int] = []


class _Instance:
    def __init__(self) -> None:
        self.state = _State(items=list(range(1000)))
        self.ctx = object()


def test_held_bytes_counts_the_instance_s_own_objects_once_and_not_what_it_excludes() -> None:
    obj = _Instance()
    empty, _ = held_bytes(obj, (obj.state, obj.ctx))
    blob = bytes(100_000)
    obj.cache = [blob, blob]  # type: ignore[attr-defined]  # the same object twice: counted once
    size, partial = held_bytes(obj, (obj.state, obj.ctx))
    assert not partial
    assert 100_000 < size - empty < 101_000
    assert held_bytes(obj)[0] > size  # the state, when not excluded


def test_held_bytes_is_bounded() -> None:
    obj = _Instance()
    obj.many = [object() for _ in range(50_000)]  # type: ignore[attr-defined]
    size, partial = held_bytes(obj)
    assert partial and size > 0
