"""Which stored command subjects no partition consumer delivers (_sweep.stranded)."""

from __future__ import annotations

import pytest

from jetagents._host.sweeper import stored_ms, stranded


@pytest.mark.parametrize(
    "subject",
    ["agt.p.3.counter.a\x7fb", "agt.p.3.\x7f.a", "agt.p.0.counter.*", "agt.p.0.>.a", "agt.p.1.*.>"],
)
def test_stranded(subject: str) -> None:
    assert stranded(subject)


@pytest.mark.parametrize(
    "subject",
    ["agt.p.3.counter.c1", "agt.p.3.counter.a*b", "agt.p.3.counter.a>", "agt.p.3.counter.\xff", "agt.p.3.co\x00.x"],
)
def test_delivered(subject: str) -> None:
    assert not stranded(subject)


def test_stored_ms_reads_the_servers_time() -> None:
    assert stored_ms("2026-11-30T03:00:14.123456789Z") == 1_796_007_614_123
    assert stored_ms("2026-11-30T03:00:14Z") == 1_796_007_614_000
    assert stored_ms("2026-11-30T04:00:14.5+01:00") == 1_796_007_614_500
    assert stored_ms("yesterday") is None
