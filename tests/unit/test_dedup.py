"""The exactly-once record (``_core/dedup.py``): first answers, bounded, oldest out first."""

from __future__ import annotations

from jetagents._core.dedup import Answer, DedupRecord


def test_a_command_is_answered_with_its_first_answer() -> None:
    r = DedupRecord(limit=10)
    r.applied("a", 3, {"v": 1})
    r.refused("b", {"code": "domain", "message": "no"})
    assert r.get("a") == Answer(3, True, {"v": 1})
    assert r.get("b") == Answer(0, False, {"code": "domain", "message": "no"})
    assert r.get("c") is None and len(r) == 2


def test_the_record_is_bounded_oldest_first() -> None:
    r = DedupRecord(limit=2)
    for i, cmd in enumerate("abc", start=1):
        r.applied(cmd, i, i)
    assert r.get("a") is None and r.get("b") is not None and r.get("c") is not None


def test_a_snapshot_keeps_applied_commands_only() -> None:
    r = DedupRecord(limit=5)
    r.applied("a", 4, 1)
    r.refused("b", {"code": "domain"})
    assert r.snapshot() == [["a", 4, 1]]


def test_rebuilt_from_a_snapshot_then_the_replayed_commits_then_bounded() -> None:
    r = DedupRecord.rebuilt([["a", "1", 10], ["b", 2, 20]], [("c", 3, 30), ("d", 4, 40)], limit=3)
    assert r.get("a") is None and r.snapshot() == [["b", 2, 20], ["c", 3, 30], ["d", 4, 40]]
    # a command seen again keeps its place (the bound applies once, at the end)
    again = DedupRecord.rebuilt([], [("a", 1, 1), ("b", 2, 2), ("a", 3, 3)], limit=2)
    assert again.snapshot() == [["a", 3, 3], ["b", 2, 2]]
