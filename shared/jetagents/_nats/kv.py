"""JetStream KV through the raw ``$JS.API``, written once: read the newest value of a key
from the stream leader, compare-and-set on its revision, purge a key, scan a prefix,
ensure the bucket exists.

:class:`KvBucket` speaks bytes and revisions and is what every KV user builds on;
:class:`JetStreamStore` is the coordinator's :class:`~jetagents._core.kv.ClusterStore`
(JSON objects, per-key TTL) on top of it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
from typing import Any

import orjson
from nats.aio.client import Client as NATS

from .._core.errors import Unavailable
from .._core.kv import CasConflict, Entry
from .api import ERR_NO_MESSAGE, ERR_WRONG_LAST_SEQUENCE, NS, JSApiError, ensure_stream, js_api, js_publish


def cluster_bucket_config(bucket: str, replicas: int) -> dict[str, Any]:
    """A KV bucket (so ``nats kv`` can read it) that also allows per-message TTLs."""
    return {
        "name": f"KV_{bucket}",
        "subjects": [f"$KV.{bucket}.>"],
        "retention": "limits",
        "storage": "file",
        "num_replicas": replicas,
        "max_msgs_per_subject": 1,
        "discard": "new",
        "allow_rollup_hdrs": True,
        "deny_delete": True,
        "deny_purge": False,
        "allow_direct": True,
        "allow_msg_ttl": True,
        "duplicate_window": 2 * 60 * NS,
    }


class KvBucket:
    """One KV bucket as bytes and revisions (a revision is the stream sequence of the
    key's last message; 0 means absent).

    Reads go to the stream leader (``STREAM.MSG.GET``), so a value is never read from a
    lagging replica; ``scan`` uses a batched direct get, which any replica may answer.
    """

    def __init__(self, nc: NATS, bucket: str, *, timeout_s: float = 5.0) -> None:
        self.nc = nc
        self.bucket = bucket
        self.stream = f"KV_{bucket}"
        self.timeout_s = timeout_s

    def subject(self, key: str) -> str:
        return f"$KV.{self.bucket}.{key}"

    async def ensure(self, config: dict[str, Any], timeout_s: float | None = None) -> None:
        await ensure_stream(self.nc, config, timeout_s or self.timeout_s)

    async def get(self, key: str) -> tuple[bytes, int] | None:
        """The key's value and revision; None when absent, deleted or purged."""
        try:
            resp = await js_api(
                self.nc, f"$JS.API.STREAM.MSG.GET.{self.stream}", {"last_by_subj": self.subject(key)}, self.timeout_s
            )
        except JSApiError as exc:
            if exc.err_code == ERR_NO_MESSAGE:
                return None
            raise
        msg = resp["message"]
        hdrs = base64.b64decode(msg.get("hdrs") or b"").decode(errors="replace")
        if "KV-Operation: DEL" in hdrs or "KV-Operation: PURGE" in hdrs:
            return None
        return base64.b64decode(msg.get("data") or b""), int(msg["seq"])

    async def publish(
        self,
        key: str,
        data: bytes,
        *,
        expect_rev: int | None = None,
        ttl_s: float | None = None,
        headers: dict[str, str] | None = None,
        conflict_codes: frozenset[int] = frozenset({ERR_WRONG_LAST_SEQUENCE}),
    ) -> int:
        """Write ``data``; with ``expect_rev`` only if the key is still at that revision
        (0: absent), else :class:`CasConflict`. Returns the new revision."""
        hdrs = dict(headers or {})
        if expect_rev is not None:
            hdrs["Nats-Expected-Last-Subject-Sequence"] = str(expect_rev)
        if ttl_s:
            hdrs["Nats-TTL"] = f"{max(1, math.ceil(ttl_s))}s"
        try:
            ack = await js_publish(self.nc, self.subject(key), data, hdrs, self.timeout_s)
        except JSApiError as exc:
            if exc.err_code in conflict_codes:
                raise CasConflict(f"{key} changed") from None
            raise
        return int(ack["seq"])

    async def purge(self, key: str) -> None:
        await js_api(self.nc, f"$JS.API.STREAM.PURGE.{self.stream}", {"filter": self.subject(key)}, self.timeout_s)

    async def scan(self, prefix: str) -> dict[str, tuple[bytes, int]]:
        """Every live key starting with ``prefix``: its value and revision."""
        inbox = self.nc.new_inbox()
        q: asyncio.Queue[Any] = asyncio.Queue()

        async def on_msg(msg: Any) -> None:
            q.put_nowait(msg)

        sub = await self.nc.subscribe(inbox, cb=on_msg)
        out: dict[str, tuple[bytes, int]] = {}
        base = f"$KV.{self.bucket}."
        try:
            req = {"multi_last": [f"{base}{prefix}>"], "batch": 4096}
            await self.nc.publish(f"$JS.API.DIRECT.GET.{self.stream}", orjson.dumps(req), reply=inbox)
            async with asyncio.timeout(self.timeout_s):
                while True:
                    msg = await q.get()
                    hdrs = msg.headers or {}
                    status = hdrs.get("Status")
                    if status in ("404", "204"):
                        return out
                    if status is not None:
                        raise Unavailable(f"KV scan of {self.bucket} failed with status {status}")
                    if hdrs.get("KV-Operation") in ("DEL", "PURGE"):
                        continue
                    key = hdrs.get("Nats-Subject", "")[len(base) :]
                    out[key] = (msg.data, int(hdrs.get("Nats-Sequence", "0")))
        except TimeoutError:
            raise Unavailable(f"KV scan of {self.bucket} timed out") from None
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


def _doc(data: bytes) -> dict[str, Any]:
    return orjson.loads(data) if data else {}


class JetStreamStore:
    """:class:`~jetagents._core.kv.ClusterStore` on a JetStream KV bucket: JSON objects,
    leader reads (a claim or the ring is never read from a lagging replica), and every
    JetStream error but a lost compare-and-set reported as :class:`Unavailable`."""

    def __init__(self, nc: NATS, bucket: str, *, replicas: int = 1, timeout_s: float = 5.0) -> None:
        self.kv = KvBucket(nc, bucket, timeout_s=timeout_s)
        self.bucket = bucket
        self.stream = self.kv.stream
        self.replicas = replicas
        self.timeout_s = timeout_s

    async def ensure(self) -> None:
        await self.kv.ensure(cluster_bucket_config(self.bucket, self.replicas))

    async def get(self, key: str) -> Entry | None:
        try:
            found = await self.kv.get(key)
        except JSApiError as exc:
            raise Unavailable(f"cluster store: {exc.description}") from None
        return None if found is None else Entry(_doc(found[0]), found[1])

    async def _publish(self, key: str, value: dict[str, Any], expect: int | None, ttl_s: float | None) -> int:
        try:
            return await self.kv.publish(key, orjson.dumps(value), expect_rev=expect, ttl_s=ttl_s)
        except JSApiError as exc:
            raise Unavailable(f"cluster store: {exc.description}") from None

    async def create(self, key: str, value: dict[str, Any], ttl_s: float | None = None) -> int:
        return await self._publish(key, value, 0, ttl_s)

    async def update(self, key: str, value: dict[str, Any], rev: int, ttl_s: float | None = None) -> int:
        return await self._publish(key, value, rev, ttl_s)

    async def put(self, key: str, value: dict[str, Any], ttl_s: float | None = None) -> int:
        return await self._publish(key, value, None, ttl_s)

    async def remove(self, key: str) -> None:
        try:
            await self.kv.purge(key)
        except JSApiError as exc:
            raise Unavailable(f"cluster store: {exc.description}") from None

    async def scan(self, prefix: str) -> dict[str, Entry]:
        return {key: Entry(_doc(data), rev) for key, (data, rev) in (await self.kv.scan(prefix)).items()}
