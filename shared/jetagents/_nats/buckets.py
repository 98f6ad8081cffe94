"""The host's KV buckets (snapshots, agent metadata) as its ``Bucket`` port, over nats-py's
KeyValue (``jetagents._host.ports``)."""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue

from .._core.errors import Unavailable


class KvBucket:
    """One KV bucket. Errors other than an absent key are nats-py's, unchanged: what a
    failed read means (retry, give up) is the caller's decision."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, nc: NATS, bucket: str, timeout_s: float) -> KvBucket:
        """``Unavailable`` when JetStream does not answer in time: the host's start retries
        on it (a raw nats-py timeout here ended the host process on a loaded cluster). A
        bucket not found is ``Unavailable`` too: the host opens buckets it has just ensured,
        and when three hosts boot together on an R3 cluster the one whose create met another's
        can ask for the stream before it is served ("stream not found": a host process ended)."""
        try:
            return cls(await nc.jetstream(timeout=timeout_s).key_value(bucket))
        except NotFoundError:
            raise Unavailable(f"the bucket {bucket} is not there (yet)", details={"applied": False}) from None
        except Exception as exc:  # noqa: BLE001 - nats-py's timeouts and API errors alike
            raise Unavailable(f"cannot open the bucket {bucket}: {exc!r}") from None

    async def get(self, key: str) -> bytes | None:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:  # absent, or a delete marker (KeyDeletedError)
            return None
        return entry.value or b""

    async def put(self, key: str, value: bytes) -> int:
        return await self._kv.put(key, value)

    async def delete(self, key: str) -> None:
        """Delete ``key`` (a delete marker: a later ``get`` returns ``None``)."""
        await self._kv.delete(key)

    async def history(self, key: str) -> list[bytes]:
        """The values the bucket still keeps of ``key``, oldest first (deletes left out)."""
        try:
            entries = await self._kv.history(key)
        except NoKeysError:
            return []
        return [e.value for e in entries if e.value and e.operation is None]
