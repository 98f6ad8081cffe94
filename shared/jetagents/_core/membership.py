"""The cluster's decisions that need no I/O: how to read the ring, weigh members, count
partitions in transit, decide whether a claim may be taken over, which claims are lost or
orphaned, and what ``jetagents status`` shows. The coordinator reads the store, asks
these functions, and writes the answer."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Set
from typing import Any

from .kv import Entry
from .ring import UNOWNED


def parse_ring(value: Mapping[str, Any], partitions: int) -> tuple[int, list[str]] | None:
    """The ring's epoch and owners; None when the value is not a ring of ``partitions``.

    >>> parse_ring({"epoch": 3, "owners": ["h1", ""]}, 2)
    (3, ['h1', ''])
    >>> parse_ring({"epoch": 3, "owners": ["h1"]}, 2) is None
    True
    """
    epoch = value.get("epoch", 0)
    owners = value.get("owners")
    if (
        isinstance(epoch, int)
        and isinstance(owners, list)
        and len(owners) == partitions
        and all(isinstance(o, str) for o in owners)
    ):
        return epoch, list(owners)
    return None


def unowned_ring(value: Mapping[str, Any], partitions: int, known_epoch: int) -> tuple[int, list[str]]:
    """How a malformed ring is read: a ring that assigns nothing, at the newest epoch seen.

    Only hosts (and admins) may write the ring, yet a bad value must not stop every round;
    the leader replaces it (CAS on its revision) with a valid one at the next epoch.

    >>> unowned_ring({"epoch": "x"}, 2, 4)
    (4, ['', ''])
    """
    epoch = value.get("epoch", 0)
    return max(epoch if isinstance(epoch, int) else 0, known_epoch), [UNOWNED] * partitions


def capacity_weights(members: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Each member's share of the ring: its capacity, nothing while it drains.

    >>> capacity_weights({"h1": {"capacity": 2}, "h2": {"draining": True}})
    {'h1': 2.0, 'h2': 0.0}
    """
    return {h: 0.0 if m.get("draining") else float(m.get("capacity", 1.0)) for h, m in members.items()}


def in_transit(owners: list[str], alive: Set[str], claims: Mapping[str, Entry]) -> int:
    """Partitions the ring gives a live host that has not claimed them yet.

    >>> in_transit(["h1", "h2", ""], {"h1", "h2"}, {"claim.0": Entry({"host": "h1"}, 1)})
    1
    """
    count = 0
    for p, owner in enumerate(owners):
        claim = claims.get(f"claim.{p}")
        if owner and owner in alive and (claim is None or claim.value.get("host") != owner):
            count += 1
    return count


class Takeover(enum.Enum):
    """May a host claim a partition whose claim names ``holder``?"""

    FREE = "free"  # no holder, or ourselves
    GONE = "gone"  # the holder is no longer a member
    WAIT = "wait"  # the holder is alive and still handing it over
    TIMED_OUT = "timed_out"  # the holder is alive but took longer than the handoff timeout


def takeover(holder: str, me: str, alive: Set[str], waited_s: float, handoff_timeout_s: float) -> Takeover:
    """
    >>> takeover("h2", "h1", {"h1", "h2"}, 1.0, 40.0)
    <Takeover.WAIT: 'wait'>
    >>> takeover("h2", "h1", {"h1"}, 1.0, 40.0)
    <Takeover.GONE: 'gone'>
    """
    if holder in ("", me):
        return Takeover.FREE
    if holder not in alive:
        return Takeover.GONE
    return Takeover.WAIT if waited_s < handoff_timeout_s else Takeover.TIMED_OUT


def rewind_on_start(holder: str, me: str, alive: Set[str]) -> bool:
    """Rewind the consumer in place (fast) rather than recreate it: when the previous
    holder is gone (its connection, and its pull requests with it) or was ourselves. A
    live previous holder may still have pull requests waiting at the server: recreating
    the consumer cuts them off.

    >>> rewind_on_start("h2", "h1", {"h1", "h2"}), rewind_on_start("h2", "h1", {"h1"})
    (False, True)
    """
    return holder == me or (bool(holder) and holder not in alive)


def claim_stands(claim: Entry | None, me: str, rev: int | None) -> bool:
    """Does the store's claim still name us, at the revision we wrote?"""
    return claim is not None and claim.value.get("host") == me and claim.rev == rev


def orphan_claims(claims: Mapping[str, Entry], me: str, busy: Set[int], partitions: int) -> list[tuple[int, int]]:
    """Claims that name us in the store but that we do not serve: (partition, revision).

    A host forgets a claim without releasing it when it fences itself (silent for a member
    TTL: the store was unreachable, so it could not write), when a release or a claim's
    write failed or its reply was lost although the write landed, or when it restarts
    under the same id. While the ring gives it the partition that heals by itself (it
    claims its own claim again); once the ring has moved the partition on, nothing else
    would ever free it, and the new owner would wait out ``handoff_timeout_s`` for a live
    host that neither serves nor releases it. Checked every round, so a release that
    fails is simply tried again.

    >>> orphan_claims({"claim.1": Entry({"host": "h1"}, 7), "claim.2": Entry({"host": "h1"}, 8)}, "h1", {2}, 4)
    [(1, 7)]
    """
    out: list[tuple[int, int]] = []
    for key, claim in claims.items():
        if claim.value.get("host") != me:
            continue
        try:
            p = int(key.removeprefix("claim."))
        except ValueError:
            continue
        if p not in busy and 0 <= p < partitions:
            out.append((p, claim.rev))
    return out


def merge_placements(scanned: Mapping[str, Entry], known: Mapping[str, tuple[str, int]]) -> dict[str, tuple[str, int]]:
    """The placements read (agent key -> (host, revision)), never forgetting one learnt
    directly (adopt) that the scan has not seen yet.

    >>> merge_placements({"place.a": Entry({"host": "h1"}, 3)}, {"a": ("h2", 5), "b": ("h1", 1)})
    {'a': ('h2', 5), 'b': ('h1', 1)}
    """
    fresh = {k.removeprefix("place."): (str(e.value.get("host", "")), e.rev) for k, e in scanned.items()}
    for key, (host, rev) in known.items():
        if key not in fresh or fresh[key][1] < rev:
            fresh[key] = (host, rev)
    return fresh


def successor_knows(owner: str, epoch: int, members: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether ``owner`` (a partition's next owner) has read ring ``epoch``, by the
    ``ring_epoch`` its member record advertises; a host that is not a member, or does not
    say (an older version), is not waited for.

    >>> successor_knows("h2", 5, {"h2": {"ring_epoch": 4}}), successor_knows("h2", 5, {"h2": {}})
    (False, True)
    """
    member = members.get(owner) if owner else None
    seen = member.get("ring_epoch") if member is not None else None
    return not isinstance(seen, int) or seen >= epoch


def successor_alive(me: str, members: Mapping[str, Mapping[str, Any]]) -> bool:
    """Is any other host alive and not draining (someone our partitions can go to)?

    >>> successor_alive("h1", {"h1": {}, "h2": {"draining": True}})
    False
    """
    return any(h != me and not m.get("draining") for h, m in members.items())


def _count(hosts: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for h in hosts:
        if h:
            out[h] = out.get(h, 0) + 1
    return out


def cluster_summary(
    members: Mapping[str, Mapping[str, Any]], leader: Entry | None, ring: Entry | None, claims: Mapping[str, Entry]
) -> dict[str, Any]:
    """Hosts, leader, ring epoch, partitions per host (what ``jetagents status`` prints).

    >>> cluster_summary({}, None, Entry({"epoch": 2, "owners": ["h1", ""]}, 5), {})["unowned"]
    1
    """
    owners: list[str] = list(ring.value.get("owners", [])) if ring else []
    held = _count([str(e.value.get("host", "")) for e in claims.values()])
    assigned = _count(owners)
    hosts = []
    for h in sorted(set(members) | set(assigned) | set(held)):
        m = members.get(h, {})
        hosts.append(
            {
                "host": h,
                "alive": h in members,
                "draining": bool(m.get("draining", False)),
                "capacity": m.get("capacity"),
                "tags": m.get("tags", []),
                "partitions_assigned": assigned.get(h, 0),
                "partitions_held": held.get(h, 0),
                "active_agents": m.get("active_agents"),
                "inflight": m.get("inflight"),
            }
        )
    return {
        "leader": (leader.value.get("host") or None) if leader else None,
        "ring_epoch": int(ring.value.get("epoch", 0)) if ring else 0,
        "partitions": len(owners),
        "unowned": sum(1 for h in owners if not h),
        "hosts": hosts,
    }
