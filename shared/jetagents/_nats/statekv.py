"""The shared state's streams over NATS: the state bucket (``<root>_state``) and the counter
stream (``<ROOT>_CTR``), as :class:`StateBucket` (used by ``jetagents._state``).

Every call turns "the cluster cannot answer" (connection lost or reconnecting, no responders,
a timeout, JetStream's 500/503) into :class:`Unavailable`, which the state reads as a
partition; the layout of both streams is in ``docs/state.md``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import nats.errors
import orjson
from nats.nuid import NUID

from .._core.errors import Unavailable
from .._core.wire import H_MSG_ID
from .api import NS, JSApiError, js_publish
from .headers import H_NATS_INCR
from .kv import KvEntry, NatsClient, ensure_stream, kv_subject, last_by_subject, publish_expecting
from .kv import stream_info as _stream_info


def new_replica_id() -> str:
    """A fresh replica id (a NUID: 22 characters, unique without coordination)."""
    return NUID().next().decode()


@contextlib.asynccontextmanager
async def unavailable_on_loss() -> AsyncIterator[None]:
    """One place that turns "the cluster cannot answer" into Unavailable."""
    try:
        yield
    except (
        nats.errors.ConnectionClosedError,
        nats.errors.ConnectionReconnectingError,
        nats.errors.OutboundBufferLimitError,
        nats.errors.NoRespondersError,
        nats.errors.TimeoutError,
        TimeoutError,
    ) as exc:
        raise Unavailable(f"NATS unavailable: {type(exc).__name__}") from None
    except JSApiError as exc:
        if exc.status == 503 or exc.status == 500:
            raise Unavailable(f"JetStream unavailable: {exc.description}") from None
        raise


@dataclass(frozen=True, slots=True)
class KvChange:
    """One update seen by a watch: the key, its body (empty for a delete), revision, how
    many updates the watch still has to deliver (``delta``), and whether it is a delete."""

    key: str
    value: bytes
    revision: int
    delta: int
    deleted: bool


class Watch:
    """Every key of a bucket, then every change: yields :class:`KvChange`, and None once
    when the initial values have all been delivered."""

    def __init__(self, watcher: Any) -> None:
        self._watcher = watcher

    async def __aiter__(self) -> AsyncIterator[KvChange | None]:
        async for entry in self._watcher:
            if entry is None:
                yield None
                continue
            yield KvChange(
                key=entry.key,
                value=entry.value or b"",
                revision=int(entry.revision),
                delta=int(entry.delta or 0),
                deleted=entry.operation in ("DEL", "PURGE"),
            )

    async def stop(self) -> None:
        await self._watcher.stop()


class StateBucket:
    """The state bucket and the counter stream of one subject root, for one connection."""

    def __init__(
        self, nc: NatsClient, bucket: str, counter_stream: str, counter_subjects: str, *, timeout_s: float
    ) -> None:
        self.nc = nc
        self.bucket = bucket
        self.stream = f"KV_{bucket}"
        self.counter_stream = counter_stream
        self.counter_subjects = counter_subjects
        self.timeout_s = timeout_s

    def subject(self, kv_key: str) -> str:
        return kv_subject(self.bucket, kv_key)

    async def ensure(self, *, replicas: int, max_value_bytes: int) -> None:
        """Create the bucket's stream and the counter stream if missing (idempotent)."""
        dup = 120 * NS
        configs = [
            {
                "name": self.stream,
                "subjects": [f"$KV.{self.bucket}.>"],
                "max_msgs_per_subject": 1,
                "discard": "new",
                "allow_rollup_hdrs": True,
                "deny_delete": True,
                "allow_direct": True,
                "num_replicas": replicas,
                "storage": "file",
                "duplicate_window": dup,
                "max_msg_size": max_value_bytes + 4096,
                "retention": "limits",
            },
            {
                "name": self.counter_stream,
                "subjects": [self.counter_subjects],
                "allow_msg_counter": True,
                "allow_direct": True,
                "max_msgs_per_subject": 1,  # the server keeps the running total in the last one
                "num_replicas": replicas,
                "storage": "file",
                "duplicate_window": dup,
                "retention": "limits",
            },
        ]
        async with unavailable_on_loss():
            for cfg in configs:
                await ensure_stream(self.nc, cfg, self.timeout_s, create_timeout_s=self.timeout_s * 2)

    async def info(self) -> dict[str, Any]:
        """The bucket stream's ``STREAM.INFO`` (its last sequence, its cluster's leader)."""
        async with unavailable_on_loss():
            return await _stream_info(self.nc, self.stream, self.timeout_s)

    async def last(self, kv_key: str) -> KvEntry | None:
        """The key's latest entry, from the stream leader (linearizable per key)."""
        async with unavailable_on_loss():
            return await last_by_subject(self.nc, self.stream, self.subject(kv_key), self.timeout_s)

    async def cas(self, kv_key: str, data: bytes, expected_rev: int, msg_id: str) -> int:
        """Store ``data`` if the key is still at ``expected_rev`` (0: absent); returns the new
        revision, or raises ``KvConflict``."""
        async with unavailable_on_loss():
            ack = await publish_expecting(
                self.nc,
                self.subject(kv_key),
                data,
                self.timeout_s,
                expected_rev=expected_rev,
                headers={H_MSG_ID: msg_id},
            )
        return int(ack["seq"])

    async def barrier(self, kv_key: str, rev: int) -> None:
        """Commit an empty message to ``$KV.<bucket>._rb`` through the bucket's Raft group,
        checked against ``kv_key``'s last sequence (``...-Subject``); raises ``KvConflict`` if
        the key is no longer at ``rev``."""
        async with unavailable_on_loss():
            await publish_expecting(
                self.nc,
                self.subject("_rb"),
                b"",
                self.timeout_s,
                expected_rev=rev,
                headers={"Nats-Expected-Last-Subject-Sequence-Subject": self.subject(kv_key)},
            )

    async def watch(self) -> Watch:
        """Watch every key of the bucket (initial values first)."""
        async with unavailable_on_loss():
            kv = await self.nc.jetstream(timeout=self.timeout_s).key_value(self.bucket)
            return Watch(await kv.watchall())

    async def incr(self, subject: str, by: int, msg_id: str) -> dict[str, Any]:
        """Add ``by`` to the server counter on ``subject`` (``Nats-Incr``); the PubAck holds
        the total (``val``) unless the message id was a duplicate."""
        async with unavailable_on_loss():
            return await js_publish(self.nc, subject, b"", {H_NATS_INCR: f"{by:+d}", H_MSG_ID: msg_id}, self.timeout_s)

    async def counter_total(self, subject: str) -> int:
        """The server counter's total on ``subject`` (0 if it was never incremented)."""
        async with unavailable_on_loss():
            entry = await last_by_subject(self.nc, self.counter_stream, subject, self.timeout_s)
        if entry is None:
            return 0
        return int(orjson.loads(entry.data)["val"])
