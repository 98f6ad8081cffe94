"""An in-memory :class:`~jetagents._core.kv.ClusterStore`: what the deterministic
simulation of the cluster runs the real coordinator on."""

from __future__ import annotations

from typing import Any

from .._core.clock import Clock
from .._core.kv import CasConflict, Entry


class MemoryStore:
    """A linearizable KV with per-key TTL on a fake clock: what the simulation runs on.

    >>> import asyncio
    >>> from jetagents.testing import ManualClock
    >>> store = MemoryStore(ManualClock())
    >>> asyncio.run(store.create("leader", {"host": "h1"}, ttl_s=3.0))
    1
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.rev = 0
        self.data: dict[str, tuple[dict[str, Any], int, float | None]] = {}
        self.history: list[tuple[str, dict[str, Any], int]] = []  # every accepted write

    def _live(self, key: str) -> tuple[dict[str, Any], int, float | None] | None:
        item = self.data.get(key)
        if item is not None and item[2] is not None and self.clock.monotonic() >= item[2]:
            del self.data[key]
            return None
        return item

    def _write(self, key: str, value: dict[str, Any], ttl_s: float | None) -> int:
        self.rev += 1
        expires = self.clock.monotonic() + ttl_s if ttl_s else None
        self.data[key] = (dict(value), self.rev, expires)
        self.history.append((key, dict(value), self.rev))
        return self.rev

    async def get(self, key: str) -> Entry | None:
        item = self._live(key)
        return Entry(dict(item[0]), item[1]) if item else None

    async def create(self, key: str, value: dict[str, Any], ttl_s: float | None = None) -> int:
        if self._live(key) is not None:
            raise CasConflict(f"{key} exists")
        return self._write(key, value, ttl_s)

    async def update(self, key: str, value: dict[str, Any], rev: int, ttl_s: float | None = None) -> int:
        item = self._live(key)
        if item is None or item[1] != rev:
            raise CasConflict(f"{key} changed")
        return self._write(key, value, ttl_s)

    async def put(self, key: str, value: dict[str, Any], ttl_s: float | None = None) -> int:
        return self._write(key, value, ttl_s)

    async def remove(self, key: str) -> None:
        self.data.pop(key, None)

    async def scan(self, prefix: str, *, after_rev: int = 0) -> dict[str, Entry]:
        out: dict[str, Entry] = {}  # one copy: every read holds every write
        for key in sorted(self.data):
            if key.startswith(prefix):
                item = self._live(key)
                if item is not None:
                    out[key] = Entry(dict(item[0]), item[1])
        return out
