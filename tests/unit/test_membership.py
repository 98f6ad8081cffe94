"""The cluster's pure decisions (``jetagents._core.membership``), without a store."""

from __future__ import annotations

import doctest

from jetagents._core import membership
from jetagents._core.kv import Entry
from jetagents._core.membership import (
    Takeover,
    claim_stands,
    cluster_summary,
    in_transit,
    orphan_claims,
    parse_ring,
    rewind_on_start,
    takeover,
    unowned_ring,
)


def test_the_docstring_examples_hold() -> None:
    assert doctest.testmod(membership).failed == 0


def test_a_ring_must_name_one_owner_per_partition() -> None:
    assert parse_ring({"epoch": 2, "owners": ["a", "b"]}, 2) == (2, ["a", "b"])
    assert parse_ring({"owners": ["a", "b"]}, 2) == (0, ["a", "b"])
    assert parse_ring({"epoch": "2", "owners": ["a", "b"]}, 2) is None
    assert parse_ring({"epoch": 2, "owners": ["a", 3]}, 2) is None
    assert parse_ring({"epoch": 2}, 2) is None
    # a malformed ring assigns nothing and never moves the epoch back
    assert unowned_ring({"epoch": 1}, 2, 5) == (5, ["", ""])
    assert unowned_ring({"epoch": 9}, 2, 5) == (9, ["", ""])


def test_a_claim_is_taken_over_only_from_nobody_ourselves_the_gone_or_the_late() -> None:
    alive = {"h1", "h2"}
    assert takeover("", "h1", alive, 0.0, 40.0) is Takeover.FREE
    assert takeover("h1", "h1", alive, 0.0, 40.0) is Takeover.FREE
    assert takeover("h3", "h1", alive, 0.0, 40.0) is Takeover.GONE
    assert takeover("h2", "h1", alive, 39.9, 40.0) is Takeover.WAIT
    assert takeover("h2", "h1", alive, 40.0, 40.0) is Takeover.TIMED_OUT
    assert rewind_on_start("h1", "h1", alive) and rewind_on_start("h3", "h1", alive)
    assert not rewind_on_start("h2", "h1", alive) and not rewind_on_start("", "h1", alive)


def test_a_claim_stands_only_at_our_revision() -> None:
    assert claim_stands(Entry({"host": "h1"}, 4), "h1", 4)
    assert not claim_stands(Entry({"host": "h1"}, 5), "h1", 4)
    assert not claim_stands(Entry({"host": "h2"}, 4), "h1", 4)
    assert not claim_stands(None, "h1", 4)


def test_orphans_are_our_claims_on_partitions_we_neither_serve_nor_want() -> None:
    claims = {
        "claim.0": Entry({"host": "h1"}, 1),
        "claim.1": Entry({"host": "h2"}, 2),
        "claim.2": Entry({"host": "h1"}, 3),
        "claim.9": Entry({"host": "h1"}, 4),  # out of range
        "claim.x": Entry({"host": "h1"}, 5),  # not a partition
    }
    assert orphan_claims(claims, "h1", {0}, 4) == [(2, 3)]


def test_in_transit_counts_live_owners_without_their_claim() -> None:
    claims = {"claim.0": Entry({"host": "a"}, 1), "claim.1": Entry({"host": "a"}, 2)}
    assert in_transit(["a", "b", "c", ""], {"a", "b"}, claims) == 1  # b has not claimed 1 yet; c is gone


def test_the_status_summary_counts_assigned_and_held_per_host() -> None:
    st = cluster_summary(
        {"a": {"capacity": 1.0, "draining": True}},
        Entry({"host": "a"}, 1),
        Entry({"epoch": 3, "owners": ["a", "b", ""]}, 2),
        {"claim.0": Entry({"host": "a"}, 3), "claim.1": Entry({"host": ""}, 4)},
    )
    assert (st["leader"], st["ring_epoch"], st["partitions"], st["unowned"]) == ("a", 3, 3, 1)
    by_host = {h["host"]: h for h in st["hosts"]}
    assert by_host["a"]["alive"] and by_host["a"]["draining"] and by_host["a"]["partitions_held"] == 1
    assert not by_host["b"]["alive"] and by_host["b"]["partitions_assigned"] == 1
