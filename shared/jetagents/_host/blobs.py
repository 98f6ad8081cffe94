"""Payloads by reference on the host (ADR 0042 section 9): values too large for a message
go to the Object Store bucket ``agt_blobs``, content-addressed within the agent whose log or
snapshot names them, and the log keeps ``{"$ref": "<type>.<id>/sha256:<hex>", "bytes": n}``
(ADR 0052: the agent's purge removes what is under its name; no other agent names it).

* A commit (a journal entry, or a command's closing commit) whose JSON is larger than
  ``payload_ref_threshold_bytes`` has its large parts stored first (``offload_commit``): each
  event's ``data``, the ``result``, a step entry's ``j.value``. A crash between the put and the
  append leaves an orphan blob, never a dangling reference. ``has`` comes first: putting a name
  again would rewrite its chunks.
* A snapshot's ``state`` likewise (``offload``).
* Replay, migration, snapshots and the exactly-once record read them back (``resolve``),
  digest checked, through a per-host LRU of ``blob_cache_bytes``; a missing or corrupted blob
  is ``BlobUnreadable`` (internal), never a silently different value.
* A reply whose body would not fit a message (``reply_body``) answers ``payload_too_large``
  with ``details.applied`` true and the result's reference instead.

The blobs themselves are the ``Blobs`` port (``_nats/blobs.py``); without one bound (the
simulation) values stay inline.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Protocol

import orjson

from .._core.blobref import REF, check, is_ref, name_of, ref_of
from .._core.errors import PayloadTooLarge
from .._core.wire import WireEvent, encode_error, encode_ok
from .._settings import HostSettings


class BlobStore(Protocol):
    """What the host needs of the Object Store."""

    async def has(self, name: str) -> bool: ...
    async def put(self, name: str, data: bytes) -> None: ...
    async def get(self, name: str) -> bytes | None: ...


class Blobs:
    """Offload and resolve large values; one per host."""

    def __init__(self, settings: HostSettings, log: Any) -> None:
        self._log = log
        self.threshold = settings.payload_ref_threshold_bytes
        # what one message of the host may carry (ADR 0039: max(body limit + 4 KiB, 1 MiB))
        self.message_max_bytes = max(settings.max_payload_bytes + 4096, 1024 * 1024)
        self._cache_max = settings.blob_cache_bytes
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cached_bytes = 0
        self._store: BlobStore | None = None
        self.puts = 0  # blobs written by this host (tests and metrics read it)

    def bind(self, store: BlobStore) -> None:
        self._store = store

    # -- writing ----------------------------------------------------------------------------
    async def _stored(self, data: bytes, owner: str) -> dict[str, Any]:
        assert self._store is not None
        name = name_of(data, owner)
        if name not in self._cache and not await self._store.has(name):
            await self._store.put(name, data)
            self.puts += 1
        self._remember(name, data)
        return ref_of(data, owner)

    async def offload(self, value: Any, owner: str) -> Any:
        """``value``, or its reference when its JSON is larger than the threshold, stored
        under agent ``owner`` (``<type>.<id>``: the agent whose log or snapshot holds it)."""
        if self._store is None or is_ref(value):
            return value
        data = orjson.dumps(value)
        return await self._stored(data, owner) if len(data) > self.threshold else value

    async def offload_commit(self, body: bytes, owner: str) -> bytes:
        """A commit of agent ``owner`` with its large parts stored by reference (called
        only for a body over the threshold: the common small commit is never parsed again)."""
        if self._store is None:
            return body
        doc = orjson.loads(body)
        for event in doc.get("events") or ():
            event["data"] = await self.offload(event.get("data"), owner)
        if doc.get("result") is not None:
            doc["result"] = await self.offload(doc["result"], owner)
        j = doc.get("j")
        if isinstance(j, dict) and j.get("k") == "step" and "value" in j:
            j["value"] = await self.offload(j["value"], owner)
        return orjson.dumps(doc)

    # -- reading ----------------------------------------------------------------------------
    async def resolve(self, value: Any, where: str = "") -> Any:
        """The value a reference stands for (digest checked); anything else as it is."""
        if not is_ref(value):
            return value
        name = value[REF]
        data = self._cache.get(name)
        if data is not None:
            self._cache.move_to_end(name)
        else:
            data = await self._store.get(name) if self._store is not None else None
            check(name, data, where)
            assert data is not None
            self._remember(name, data)
        return orjson.loads(data)

    @staticmethod
    def refers(events: list[WireEvent]) -> bool:
        """Whether any of a commit's events holds its data by reference."""
        return any(is_ref(e.data) for e in events)

    async def resolve_events(self, events: list[WireEvent], where: str) -> list[WireEvent]:
        return [WireEvent(type=e.type, data=await self.resolve(e.data, where)) for e in events]

    async def reply_body(self, result: Any, owner: str) -> bytes:
        """The body of an ``ok`` reply of agent ``owner``: the value (a recorded reference
        resolved), or ``payload_too_large`` (applied, with the reference) when it does not
        fit a message."""
        result = await self.resolve(result, "a recorded result")
        body = encode_ok(result)
        if len(body) <= self.message_max_bytes:
            return body
        data = orjson.dumps(result)
        # stored (once) even when no commit names it (a command without events has none)
        ref = await self._stored(data, owner) if self._store is not None else ref_of(data, owner)
        err = PayloadTooLarge(
            f"the result ({len(data)} bytes) is larger than a reply may be ({self.message_max_bytes}); "
            f"the command was applied: its result is in agt_blobs under {ref[REF]}",
            details={"applied": True, **ref},
        )
        return encode_error(err)

    def _remember(self, name: str, data: bytes) -> None:
        if name in self._cache or len(data) > self._cache_max:
            return
        self._cache[name] = data
        self._cached_bytes += len(data)
        while self._cached_bytes > self._cache_max:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= len(old)
