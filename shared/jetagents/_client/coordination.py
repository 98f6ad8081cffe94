"""Coordination for users (ADR 0050): leases fenced by their KV revision, barriers, and a
cache with per-key TTL and single-flight, all on the ``<root>_coord`` KV bucket.

>>> async with client.lease("billing", ttl_s=5) as lease:  # doctest: +SKIP
...     await lease.put("last-run", {"at": 17})      # refused once the lease is someone else's
>>> await client.barrier("phase-1", parties=3, timeout_s=30)  # doctest: +SKIP
>>> await client.get_or_compute("fx.eur", fetch_rate, ttl_s=60)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic_core import to_jsonable_python

from .._core.coordination import BarrierTimeout, CacheTimeout, LeaseBusy, LeaseLost, coord_key
from .._core.errors import Unavailable
from .._core.kv import CasConflict, Entry
from .._core.retry import RetryPolicy
from .._core.wire import Subjects
from .._nats.client_transport import NatsConnection
from .._nats.coordination import CoordStore, coord_bucket_name, new_party_id

__all__ = ["Coordination", "Lease"]

_POLL = RetryPolicy(base_s=0.02, max_s=0.25, jitter=True)
COMPUTE_TIMEOUT_S = 30.0  # a computing marker older than this is taken over


class Lease:
    """A lease held under ``lease.<name>``: ``token`` is the revision that acquired it (it
    grows with every new holder: hand it to whatever must refuse a stale holder), renewed
    every third of ``ttl_s``. ``put`` writes fenced: the server stores nothing once the lease
    moved on. ``lost`` is set when the lease is found gone."""

    def __init__(
        self, store: CoordStore, ensure: Callable[[], Awaitable[None]], name: str, ttl_s: float, wait_s: float | None
    ) -> None:
        if ttl_s < 1:
            raise ValueError("ttl_s must be at least 1 s (the server's TTL unit)")
        self.name = name
        self.key = coord_key("lease", name)
        self.ttl_s = ttl_s
        self.wait_s = wait_s
        self.holder = new_party_id()
        self.token = 0
        self.rev = 0
        self.lost = asyncio.Event()
        self._store = store
        self._ensure = ensure
        self._lock = asyncio.Lock()  # renewals and fenced writes move ``rev`` one at a time
        self._renewer: asyncio.Task[None] | None = None

    @property
    def _doc(self) -> dict[str, Any]:
        return {"holder": self.holder, "token": self.token}

    async def acquire(self) -> Lease:
        """Wait for the lease (at most ``wait_s``; None: as long as it takes)."""
        await self._ensure()
        loop = asyncio.get_running_loop()
        deadline = None if self.wait_s is None else loop.time() + self.wait_s
        attempt = 0
        while True:
            entry = await self._store.get(self.key)
            try:
                if entry is None:
                    self.rev = await self._store.create(self.key, {"holder": self.holder}, self.ttl_s)
                    break
                if not entry.value.get("holder"):  # released
                    self.rev = await self._store.update(self.key, {"holder": self.holder}, entry.rev, self.ttl_s)
                    break
            except CasConflict:
                pass  # someone else got there first: look again
            if deadline is not None and loop.time() >= deadline:
                raise LeaseBusy(f"lease {self.name!r} stayed taken for {self.wait_s}s", details={"lease": self.name})
            await asyncio.sleep(_POLL.delay(min(attempt, 6)))
            attempt += 1
        self.token = self.rev
        self.lost.clear()
        self._renewer = asyncio.create_task(self._renew())
        return self

    async def _renew(self) -> None:
        loop = asyncio.get_running_loop()
        confirmed = loop.time()
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                async with self._lock:
                    self.rev = await self._store.update(self.key, self._doc, self.rev, self.ttl_s)
                confirmed = loop.time()
            except CasConflict:
                self.lost.set()
                return
            except Unavailable:
                if loop.time() - confirmed >= self.ttl_s:  # it may have expired meanwhile
                    self.lost.set()
                    return

    async def put(self, key: str, value: Any) -> int:
        """Write ``value`` (JSON) at ``data.<key>``, fenced: stored only if the lease key is
        still at our revision, checked by the server in the same atomic batch. Raises
        :class:`LeaseLost` when refused. The value's revision."""
        data_key = coord_key("data", key)
        doc = {"value": to_jsonable_python(value), "token": self.token, "holder": self.holder}
        async with self._lock:
            if self.lost.is_set():
                raise LeaseLost(f"lease {self.name!r} is lost", details={"lease": self.name, "token": self.token})
            try:
                self.rev = await self._store.fenced_put(self.key, self._doc, self.rev, self.ttl_s, data_key, doc)
            except CasConflict:
                self.lost.set()
                raise LeaseLost(
                    f"lease {self.name!r} moved on: write refused", details={"lease": self.name, "token": self.token}
                ) from None
        return self.rev + 1

    async def get(self, key: str) -> Any:
        """The value last written at ``data.<key>`` by a holder of any lease (None if none)."""
        entry = await self._store.get(coord_key("data", key))
        return None if entry is None else entry.value.get("value")

    async def release(self) -> None:
        """Give the lease up (others may take it at once); nothing if it was lost."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        if self.lost.is_set():
            return
        async with self._lock:
            with contextlib.suppress(CasConflict, Unavailable):
                await self._store.update(self.key, {"holder": ""}, self.rev, self.ttl_s)
        self.lost.set()

    def pause_renewals(self) -> None:
        """Stop renewing without releasing (what a stalled process does; for tests and drills)."""
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None

    async def __aenter__(self) -> Lease:
        return await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


class Coordination:
    """Leases, barriers and the cache of one client."""

    def __init__(self, nc: NatsConnection, subjects: Subjects, *, timeout_s: float) -> None:
        self.store = CoordStore(nc, coord_bucket_name(subjects), timeout_s=timeout_s)
        self._ready = False
        self._flights: dict[str, asyncio.Future[Any]] = {}

    async def ensure(self) -> None:
        if not self._ready:
            await self.store.ensure()
            self._ready = True

    def lease(self, name: str, *, ttl_s: float, wait_s: float | None) -> Lease:
        return Lease(self.store, self.ensure, name, ttl_s, wait_s)

    async def get(self, key: str) -> Any:
        """The value a lease last wrote at ``data.<key>`` (None if none)."""
        await self.ensure()
        entry = await self.store.get(coord_key("data", key))
        return None if entry is None else entry.value.get("value")

    # -- barriers ------------------------------------------------------------------------------
    async def barrier(self, name: str, *, parties: int, timeout_s: float) -> None:
        if not 1 <= parties <= 4096:
            raise ValueError("parties must be between 1 and 4096")
        await self.ensure()
        prefix = coord_key("barrier", name) + "."
        # the arrival outlives the wait, so late parties still count it; a barrier name
        # serves one round (use a new name per round: "phase-2")
        await self.store.create(prefix + new_party_id(), {"at": "arrived"}, ttl_s=timeout_s + 60)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        attempt = 0
        while True:
            arrived = len(await self.store.scan(prefix))
            if arrived >= parties:
                return
            if loop.time() >= deadline:
                raise BarrierTimeout(
                    f"barrier {name!r}: {arrived} of {parties} parties arrived in {timeout_s}s",
                    details={"barrier": name, "arrived": arrived, "parties": parties},
                )
            await asyncio.sleep(min(_POLL.delay(min(attempt, 6)), max(0.0, deadline - loop.time())))
            attempt += 1

    # -- the cache ------------------------------------------------------------------------------
    async def get_or_compute(self, key: str, fn: Callable[[], Any], *, ttl_s: float) -> Any:
        if ttl_s < 1:
            raise ValueError("ttl_s must be at least 1 s (the server's TTL unit)")
        ckey = coord_key("cache", key)
        flight = self._flights.get(ckey)
        if flight is not None:  # the same process: wait for the one already asking
            return await asyncio.shield(flight)
        flight = asyncio.get_running_loop().create_future()
        self._flights[ckey] = flight
        try:
            value = await self._get_or_compute(ckey, fn, ttl_s)
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                flight.set_exception(exc)
                flight.exception()  # retrieved: waiters re-raise it, nobody else has to
            else:
                flight.cancel()
            raise
        else:
            flight.set_result(value)
        finally:
            self._flights.pop(ckey, None)
        return value

    async def _get_or_compute(self, ckey: str, fn: Callable[[], Any], ttl_s: float) -> Any:
        await self.ensure()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + COMPUTE_TIMEOUT_S
        attempt = 0
        while True:
            entry = await self.store.get(ckey)
            if entry is not None and entry.value.get("ready"):
                return entry.value.get("value")
            if entry is None:
                mine = await self._claim(ckey)
                if mine is not None:
                    return await self._compute(ckey, fn, ttl_s, mine)
            if loop.time() >= deadline:
                raise CacheTimeout(f"cache {ckey!r} was being computed elsewhere for {COMPUTE_TIMEOUT_S}s")
            await asyncio.sleep(_POLL.delay(min(attempt, 6)))
            attempt += 1

    async def _claim(self, ckey: str) -> Entry | None:
        """Mark ``ckey`` as being computed by us (expires after ``COMPUTE_TIMEOUT_S`` if we die)."""
        try:
            rev = await self.store.create(ckey, {"ready": False}, ttl_s=COMPUTE_TIMEOUT_S)
        except CasConflict:
            return None
        return Entry({"ready": False}, rev)

    async def _compute(self, ckey: str, fn: Callable[[], Any], ttl_s: float, mine: Entry) -> Any:
        try:
            result = fn()
            if inspect.isawaitable(result):
                result = await result
        except BaseException:
            with contextlib.suppress(CasConflict, Unavailable):  # let another try at once
                await self.store.update(ckey, {"ready": False}, mine.rev, ttl_s=1)
            raise
        value = to_jsonable_python(result)
        with contextlib.suppress(CasConflict):  # our marker expired and another wrote: keep theirs
            await self.store.update(ckey, {"ready": True, "value": value}, mine.rev, ttl_s=ttl_s)
        return value
