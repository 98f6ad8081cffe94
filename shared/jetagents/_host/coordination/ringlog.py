"""The ring's change log (issue 18, ADR 0055): after each ring it writes, the leader records
which partitions changed owner in ``ringlog.<epoch % RING_LOG_KEPT>`` of the cluster bucket,
so the dashboard can show ownership over time. The bucket keeps one value per key, so the
log holds the last ``RING_LOG_KEPT`` epochs of the last week, and never grows.

Written after the ring, not with it: a leader that dies in between leaves one epoch out of
the log (the ring itself, what hosts act on, is never held back for its history).
"""

from __future__ import annotations

from ..._core.errors import JetAgentsError
from ..._core.kv import ClusterStore

RING_LOG_KEPT = 64  # epochs the log keeps (one key each)
# an entry expires after a week: like every cluster key, none outlives its writer unguarded
# (a leader paused between its ring and this write cannot leave a stale entry for ever)
RING_LOG_TTL_S = 7 * 86_400.0
RING_LOG_PREFIX = "ringlog."


def ring_moves(before: list[str], after: list[str]) -> list[list[int | str]]:
    """``[partition, from, to]`` for each partition whose owner changed ("" = nobody).

    >>> ring_moves(["h1", "h1", ""], ["h1", "h2", "h2"])
    [[1, 'h1', 'h2'], [2, '', 'h2']]
    """
    return [[p, a, b] for p, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]


async def record_ring_change(
    store: ClusterStore, epoch: int, before: list[str], after: list[str], leader: str, ts_ms: int
) -> None:
    value = {"epoch": epoch, "ts_ms": ts_ms, "leader": leader, "moves": ring_moves(before, after)}
    try:
        await store.put(f"{RING_LOG_PREFIX}{epoch % RING_LOG_KEPT}", value, RING_LOG_TTL_S)
    except (JetAgentsError, TimeoutError):
        pass  # history only: the ring is written and acted on; this epoch is missing from the log
