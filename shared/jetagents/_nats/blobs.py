"""The Object Store bucket ``agt_blobs`` (ADR 0042 section 9) as the host's ``Blobs`` port:
content-addressed blobs, written once (``get_info`` first: putting a name again rewrites
its chunks)."""

from __future__ import annotations

from typing import Any

from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError, ObjectNotFoundError

from .._core.errors import Unavailable


class ObjectBlobs:
    """Put and get blobs by name in one object store bucket."""

    __slots__ = ("_bucket", "_js", "_replicas", "_store", "_timeout_s")

    def __init__(self, js: Any, bucket: str, replicas: int, timeout_s: float) -> None:
        self._js = js
        self._bucket = bucket
        self._replicas = replicas
        self._timeout_s = timeout_s
        self._store: Any = None

    @classmethod
    async def open(cls, nc: Any, bucket: str, replicas: int, timeout_s: float) -> ObjectBlobs:
        """The bucket, created when missing; ``Unavailable`` when JetStream does not answer
        in time (the host's start retries on it: the first R3 bucket on a loaded cluster can
        take longer than one timeout, and a raw nats-py timeout ended the host process)."""
        blobs = cls(nc.jetstream(timeout=timeout_s), bucket, replicas, timeout_s)
        try:
            try:
                blobs._store = await blobs._js.object_store(bucket)
            except BucketNotFoundError:
                try:
                    blobs._store = await blobs._js.create_object_store(bucket, replicas=replicas)
                except BadRequestError:  # another host created it first
                    blobs._store = await blobs._js.object_store(bucket)
        except Exception as exc:  # noqa: BLE001 - nats-py raises several types here
            raise Unavailable(f"cannot open the object store {bucket}: {exc!r}") from None
        return blobs

    async def has(self, name: str) -> bool:
        try:
            info = await self._store.get_info(name)
        except (NotFoundError, ObjectNotFoundError):
            return False
        except Exception as exc:  # noqa: BLE001 - nats-py raises several types here
            raise Unavailable(f"cannot read agt_blobs: {exc!r}") from None
        return not getattr(info, "deleted", False)

    async def put(self, name: str, data: bytes) -> None:
        try:
            await self._store.put(name, data)
        except Exception as exc:  # noqa: BLE001
            raise Unavailable(f"cannot write blob {name} to agt_blobs: {exc!r}") from None

    async def get(self, name: str) -> bytes | None:
        """The blob, or None when the bucket has no such name."""
        try:
            result = await self._store.get(name)
        except (NotFoundError, ObjectNotFoundError):
            return None
        except Exception as exc:  # noqa: BLE001
            raise Unavailable(f"cannot read blob {name} from agt_blobs: {exc!r}") from None
        data = result.data
        return bytes(data) if data is not None else None
