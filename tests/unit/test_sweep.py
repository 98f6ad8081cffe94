"""Which stored command subjects no partition consumer delivers (_sweep.stranded)."""

from __future__ import annotations

import pytest

from jetagents._sweep import stranded


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
