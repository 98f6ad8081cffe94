"""The host's KV buckets (snapshots, agent metadata, tombstones, quarantine) as its ``Bucket``
port (``jetagents._host.ports``), on the adapter's one KV read (``_nats.kv``)."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from .._core.errors import Unavailable
from .api import ERR_STREAM_NOT_FOUND, JSApiError, js_publish, stream_info
from .kv import checked_key, kv_get, kv_history, kv_subject


class KvBucket:
    """One KV bucket. ``Unavailable`` when JetStream does not answer, ``JSApiError`` for an
    error it answers, ``InvalidKey`` for a key that is none: what a failed read means (retry,
    give up) is the caller's decision."""

    def __init__(self, nc: NATS, bucket: str, timeout_s: float) -> None:
        self._nc = nc
        self._bucket = bucket
        self._timeout_s = timeout_s

    @classmethod
    async def open(cls, nc: NATS, bucket: str, timeout_s: float) -> KvBucket:
        """``Unavailable`` when JetStream does not answer in time: the host's start retries
        on it (a raw nats-py timeout here ended the host process on a loaded cluster). A
        bucket not found is ``Unavailable`` too: the host opens buckets it has just ensured,
        and when three hosts boot together on an R3 cluster the one whose create met another's
        can ask for the stream before it is served ("stream not found": a host process ended)."""
        try:
            await stream_info(nc, f"KV_{bucket}", timeout_s)
        except JSApiError as exc:
            if exc.err_code == ERR_STREAM_NOT_FOUND:
                raise Unavailable(f"the bucket {bucket} is not there (yet)", details={"applied": False}) from None
            raise Unavailable(f"cannot open the bucket {bucket}: {exc.description}") from None
        except Exception as exc:  # noqa: BLE001 - timeouts, no responders, a closed connection alike
            raise Unavailable(f"cannot open the bucket {bucket}: {exc!r}") from None
        return cls(nc, bucket, timeout_s)

    async def get(self, key: str) -> bytes | None:
        entry = await kv_get(self._nc, self._bucket, checked_key(key), self._timeout_s)
        return None if entry is None else entry.data

    async def put(self, key: str, value: bytes) -> int:
        ack = await js_publish(self._nc, kv_subject(self._bucket, checked_key(key)), value, {}, self._timeout_s)
        return int(ack["seq"])

    async def delete(self, key: str) -> None:
        """Delete ``key`` (a delete marker: a later ``get`` returns ``None``)."""
        subject = kv_subject(self._bucket, checked_key(key))
        await js_publish(self._nc, subject, b"", {"KV-Operation": "DEL"}, self._timeout_s)

    async def history(self, key: str) -> list[bytes]:
        """The values the bucket still keeps of ``key``, oldest first (deletes and empty
        values left out)."""
        entries = await kv_history(self._nc, self._bucket, checked_key(key), self._timeout_s)
        return [e.data for e in entries if e.data]
