"""The seam to a key-value store with revisions: what a read returns, what a lost
compare-and-set raises, and the :class:`ClusterStore` protocol the coordinator talks to.

Implemented by the JetStream adapter (``_nats/kv.py: JetStreamStore``) and by the
in-memory store the simulation runs on (``jetagents.testing.MemoryStore``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


class CasConflict(Exception):
    """A compare-and-set lost: the key changed since it was read (never on the wire)."""


@dataclass(frozen=True, slots=True)
class Entry:
    value: dict[str, Any]
    rev: int


class ClusterStore(Protocol):
    """A linearizable KV of JSON objects with per-key TTL. ``create`` expects the key
    absent and ``update`` expects revision ``rev``; both raise :class:`CasConflict`
    when that no longer holds."""

    async def get(self, key: str) -> Entry | None: ...

    async def create(self, key: str, value: dict[str, Any], ttl_s: float | None = None) -> int: ...

    async def update(self, key: str, value: dict[str, Any], rev: int, ttl_s: float | None = None) -> int: ...

    async def put(self, key: str, value: dict[str, Any], ttl_s: float | None = None) -> int: ...

    async def remove(self, key: str) -> None: ...

    async def scan(self, prefix: str, *, after_rev: int = 0) -> dict[str, Entry]:
        """The live keys under ``prefix``; with ``after_rev`` (a revision the caller wrote
        under it), including every write up to that revision (a store whose replicas may
        lag reads until one has it)."""
        ...
