"""Handing partitions over: when a host whose partition the ring moved lets go of it, and a
host leaving the cluster (``drain``, ``leave``). A part of ``Coordinator`` (its mixin)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ..._core.clock import Clock
from ..._core.errors import JetAgentsError
from ..._core.kv import CasConflict, ClusterStore
from ..._core.membership import successor_alive, successor_knows

if TYPE_CHECKING:
    from .coordinator import ClusterConfig, RingView


class Handoff:
    """The coordinator's handing over (the attributes are the ``Coordinator``'s)."""

    host_id: str
    store: ClusterStore
    clock: Clock
    cfg: ClusterConfig
    ring: RingView | None
    held: set[int]
    releasing: dict[int, asyncio.Task[None]]
    handing: dict[int, float]  # partition -> since when it waits for its next owner to know
    members_cache: dict[str, dict[str, Any]]
    draining: bool
    stopped: bool
    _next_heartbeat: float
    _spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]

    if TYPE_CHECKING:

        def assigned(self) -> set[int]: ...

        async def _release(self, p: int) -> None: ...

        async def resign(self) -> None: ...

    def successor_knows(self, p: int, now: float) -> bool:
        """Whether the host the ring now gives ``p`` has read that ring (its heartbeat says
        which epoch it knows), so we may stop serving ``p``. A call (a core request every
        host sees) is answered by the host serving its partition, or with "moving here,
        retry" by the host its ring names; stopping before the next owner knew the ring left
        a gap in which nobody answered, and an at-most-once call, never re-sent on a
        timeout, waited out its whole timeout. Waited for at most ``member_ttl_s``."""
        ring = self.ring
        if ring is None or self.stopped or successor_knows(ring.owners[p], ring.epoch, self.members_cache):
            return True
        return now - self.handing.setdefault(p, now) >= self.cfg.member_ttl_s

    async def drain(self, timeout_s: float, wait: Callable[[float], Awaitable[None]] | None = None) -> bool:
        """Ask the leader to move our partitions away, and wait until they are released.

        True when they were handed over. False at the timeout, and at once when no other
        live host could take them (a lone host, the last of a cluster, or every host
        draining together): waiting would only delay the stop, and ``leave`` releases them.
        """
        self.draining = True
        self._next_heartbeat = 0.0
        wait = wait or self.clock.sleep
        deadline = self.clock.monotonic() + timeout_s
        while self.clock.monotonic() < deadline:
            if self.handed_over():
                return True
            if not successor_alive(self.host_id, self.members_cache):
                return False  # from the members our rounds read, which go on while we drain
            await wait(self.cfg.tick_s)
        return False

    def handed_over(self) -> bool:
        """Nothing held, being released or assigned to us: a draining host may leave."""
        return not self.held and not self.releasing and not self.assigned()

    async def leave(self) -> None:
        """Stop for good: release what is still held, resign, remove our member key."""
        self.stopped = True
        for p in sorted(self.held):
            self.held.discard(p)
            self.releasing[p] = self._spawn(self._release(p))
        if self.releasing:
            await asyncio.gather(*self.releasing.values(), return_exceptions=True)
        await self.resign()
        with contextlib.suppress(JetAgentsError, CasConflict):
            await self.store.remove(f"member.{self.host_id}")
