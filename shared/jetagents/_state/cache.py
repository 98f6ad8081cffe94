"""The watch-fed copy of the state bucket that eventual and session reads are served from."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import orjson

from .._core.errors import JetAgentsError
from .._nats.statekv import KvChange, Watch
from .tasks import stop_tasks

if TYPE_CHECKING:
    from .store import SharedState


class Cache:
    """A watch-fed copy of the bucket (every key), with a staleness bound.

    ``caught_up_at`` is the last moment the cache was known to hold everything the stream
    held: when the watch reports nothing pending, or when a probe finds the stream's last
    sequence already applied. ``now - caught_up_at`` bounds how stale any read is.
    """

    def __init__(self, owner: SharedState) -> None:
        self._owner = owner
        self.entries: dict[str, tuple[Any, int]] = {}  # kv key -> (doc, revision)
        self.last_seq = 0
        self.caught_up_at: float | None = None
        self._paused = False
        self._held: list[KvChange] = []
        self._watcher: Watch | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.ready = asyncio.Event()
        self.changed = asyncio.Condition()

    async def start(self) -> None:
        o = self._owner
        self._watcher = await o.kv.watch()
        self._tasks = [
            asyncio.create_task(self._run(self._watcher), name="state-cache-watch"),
            asyncio.create_task(self._probe(), name="state-cache-probe"),
        ]
        await asyncio.wait_for(self.ready.wait(), o.options.op_timeout_s * 5)

    async def stop(self) -> None:
        await stop_tasks(self._tasks)
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()

    def pause(self) -> None:
        """Stop applying updates (they are held): a lagging cache, for tests and drills."""
        self._paused = True

    async def resume(self) -> None:
        self._paused = False
        held, self._held = self._held, []
        for e in held:
            await self._apply(e)

    async def _run(self, watcher: Watch) -> None:
        async for entry in watcher:
            if entry is None:  # initial values delivered
                self.caught_up_at = self._owner.clock.monotonic()
                self.ready.set()
                continue
            if self._paused:
                self._held.append(entry)
                continue
            await self._apply(entry)

    async def _apply(self, entry: KvChange) -> None:
        key = entry.key
        if entry.deleted or not entry.value:
            self.entries.pop(key, None)
        else:
            try:
                self.entries[key] = (orjson.loads(entry.value), entry.revision)
            except orjson.JSONDecodeError:
                return  # not ours; a foreign writer must not break the cache
        self.last_seq = max(self.last_seq, entry.revision)
        if not self._paused and entry.delta == 0:
            self.caught_up_at = self._owner.clock.monotonic()
        async with self.changed:
            self.changed.notify_all()

    async def _probe(self) -> None:
        o = self._owner
        while True:
            await asyncio.sleep(o.options.probe_interval_s)
            t0 = o.clock.monotonic()
            try:
                info = await o.kv.info()
            except JetAgentsError:
                continue
            if not self._paused and self.last_seq >= int(info["state"]["last_seq"]):
                self.caught_up_at = max(self.caught_up_at or t0, t0)

    def staleness_s(self) -> float | None:
        if self.caught_up_at is None:
            return None
        return max(0.0, self._owner.clock.monotonic() - self.caught_up_at)

    def get(self, kv_key: str) -> tuple[Any, int] | None:
        return self.entries.get(kv_key)

    async def wait_revision(self, kv_key: str, revision: int, timeout_s: float) -> bool:
        """Wait until the cache holds ``kv_key`` at ``revision`` or later."""
        try:
            async with asyncio.timeout(timeout_s):
                async with self.changed:
                    while True:
                        cur = self.entries.get(kv_key)
                        if cur is not None and cur[1] >= revision:
                            return True
                        await self.changed.wait()
        except TimeoutError:
            return False
