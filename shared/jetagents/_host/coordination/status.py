"""``jetagents status``: the cluster as the store sees it (members, leader, ring, claims)."""

from __future__ import annotations

from typing import Any

from ..._core.kv import ClusterStore
from ..._core.membership import cluster_summary


async def cluster_status(store: ClusterStore) -> dict[str, Any]:
    """Hosts, leader, ring epoch, partitions per host (what ``jetagents status`` prints)."""
    members = {k.removeprefix("member."): e.value for k, e in (await store.scan("member.")).items()}
    leader = await store.get("leader")
    ring = await store.get("ring")
    claims = await store.scan("claim.")
    return cluster_summary(members, leader, ring, claims)
