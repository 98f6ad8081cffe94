"""A deleted agent leaves every host's memory (ADR 0052): on the operator's ``evict`` request
(``Placement``), and on the host's watch of the tombstone bucket, for a host that missed the
request (slow, partitioned away, restarting its subscription). Either way the activation is
forgotten, so the agent's next command activates it again and meets the tombstone
(``agent_deleted``); an activation still busy is kept, emptied, so its queue runs into it.
"""

from __future__ import annotations

from typing import Any

from .._core.errors import Unavailable
from .._nats.keywatch import watch_new_keys
from .catalog import Catalog


def forget(catalog: Catalog, key: str) -> bool:
    """Forget agent ``key`` (``<type>.<id>``); whether it was in memory."""
    act = catalog.activations.get(key)
    if act is None:
        return False
    catalog.evict(act)
    if not (act.scheduled or act.mailbox or act.held):
        catalog.activations.pop(key, None)
    return True


async def watch_tombstones(nc: Any, bucket: str, catalog: Catalog, log: Any, timeout_s: float) -> None:
    """Forget each agent whose tombstone is written from now on (the connection's life).
    Without the watch (the server refused it) the tombstone is still read at activation:
    only an agent already in memory would keep running until it passivates, as before."""

    async def on_tomb(key: str) -> None:
        if forget(catalog, key):
            log.info("agent_forgotten", agent=key, why="tombstone")

    try:
        await watch_new_keys(nc, bucket, on_tomb, timeout_s)
    except Unavailable as exc:
        log.warning("tombstone_watch_unavailable", error=exc.message)
