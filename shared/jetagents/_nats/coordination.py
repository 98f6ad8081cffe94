"""The coordination bucket (``<root>_coord``): a KV bucket with per-key TTLs, direct gets
and atomic batches, and the one write that needs a batch: a lease's fenced write, which
the server stores only while the lease key is still at the holder's revision.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from nats.aio.client import Client as NATS
from nats.nuid import NUID

from .._core.wire import Subjects
from .batch import Outgoing, atomic_batch
from .kv import JetStreamStore, cluster_bucket_config, ensure_stream, kv_subject

_nuid = NUID()


def coord_bucket_name(subjects: Subjects) -> str:
    return subjects.bucket("coord")


def coord_bucket_config(bucket: str, replicas: int) -> dict[str, Any]:
    """A KV bucket with per-message TTLs and direct gets, allowing atomic batches."""
    return {**cluster_bucket_config(bucket, replicas), "allow_atomic": True}


def _ttl(ttl_s: float | None) -> dict[str, str]:
    return {"Nats-TTL": f"{max(1, math.ceil(ttl_s))}s"} if ttl_s else {}


class CoordStore(JetStreamStore):
    """``JetStreamStore`` on the coordination bucket, plus the fenced write."""

    async def ensure(self) -> None:
        await ensure_stream(self.nc, coord_bucket_config(self.bucket, self.replicas), self.timeout_s)

    async def fenced_put(
        self,
        lease_key: str,
        lease_doc: dict[str, Any],
        lease_rev: int,
        ttl_s: float,
        key: str,
        value: dict[str, Any],
    ) -> int:
        """Write ``value`` at ``key`` together with the lease key at ``lease_rev`` again, in
        one atomic batch: the server stores both or neither, and neither when the lease key
        moved on (another holder, or our own lost renewal). The lease's new revision (the
        data's is one more); :class:`CasConflict` when refused."""
        lease = Outgoing(kv_subject(self.bucket, lease_key), orjson.dumps(lease_doc), _ttl(ttl_s))
        data = Outgoing(kv_subject(self.bucket, key), orjson.dumps(value), {})
        return await atomic_batch(self.nc, [lease, data], lease_rev, self.timeout_s, "fenced write (the lease)")


def new_party_id() -> str:
    return _nuid.next().decode()


__all__ = ["NATS", "CoordStore", "coord_bucket_config", "new_party_id"]
