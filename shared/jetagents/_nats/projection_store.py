"""The projections bucket (``<root>_proj``, ADR 0057): a KV bucket allowing atomic batches,
with one position key per projection (``<name>.pos``) and its rows (``<name>.g<gen>.<key>``).

A runner writes the rows it changed and its new position in **one atomic batch** whose first
message is the position with ``Nats-Expected-Last-Subject-Sequence`` = the revision it read:
the server stores all of it or nothing, and nothing once someone else moved the position (a
second runner, a rebuild). So a row is never written without the position that covers it.
"""

from __future__ import annotations

from typing import Any

import orjson
from nats.aio.client import Client as NATS

from .._core.errors import Unavailable
from .._core.kv import CasConflict
from .._core.projection import DELETED
from .._core.wire import Subjects
from .api import ERR_WRONG_LAST_SEQUENCE, DirectReader, JSApiError, js_api
from .batch import Outgoing, atomic_batch
from .kv import KvConflict, cluster_bucket_config, ensure_stream, kv_get, publish_expecting

__all__ = ["ProjectionStore", "proj_bucket_name"]

MAX_BATCH_ROWS = 512  # rows per atomic batch (the server takes at most 1,000 messages)


def proj_bucket_name(subjects: Subjects) -> str:
    return subjects.bucket("proj")


def _pos_key(name: str) -> str:
    return f"{name}.pos"


def _row_key(name: str, gen: int, key: str) -> str:
    return f"{name}.g{gen}.{key}"


class ProjectionStore:
    """Positions and rows of projections. Writes and the runner's reads go to the stream
    leader (a runner must read what it wrote); ``peek``/``scan`` use direct gets (readers)."""

    def __init__(self, nc: NATS, subjects: Subjects, *, replicas: int = 1, timeout_s: float = 5.0) -> None:
        self.nc = nc
        self.bucket = proj_bucket_name(subjects)
        self.stream = f"KV_{self.bucket}"
        self.replicas = replicas
        self.timeout_s = timeout_s
        self._direct = DirectReader(nc)

    def _subject(self, key: str) -> str:
        return f"$KV.{self.bucket}.{key}"

    async def ensure(self) -> None:
        cfg = {**cluster_bucket_config(self.bucket, self.replicas), "allow_atomic": True}
        try:
            await ensure_stream(self.nc, cfg, self.timeout_s)
        except JSApiError as exc:
            raise Unavailable(f"projections bucket: {exc.description}") from None

    async def _leader_get(self, key: str) -> tuple[Any, int] | None:
        try:
            found = await kv_get(self.nc, self.bucket, key, self.timeout_s)
        except JSApiError as exc:
            raise Unavailable(f"projections bucket: {exc.description}") from None
        if found is None:
            return None
        return orjson.loads(found.data), found.revision

    async def position(self, name: str) -> tuple[dict[str, Any], int] | None:
        """The position document and its revision (None before the first run)."""
        return await self._leader_get(_pos_key(name))

    async def row(self, name: str, gen: int, key: str) -> Any:
        found = await self._leader_get(_row_key(name, gen, key))
        return None if found is None else found[0]

    async def set_position(self, name: str, doc: dict[str, Any], rev: int) -> int:
        """Write the position alone, expecting ``rev`` (0: none yet); its new revision."""
        try:
            ack = await publish_expecting(
                self.nc, self._subject(_pos_key(name)), orjson.dumps(doc), self.timeout_s, expected_rev=rev
            )
        except KvConflict as exc:
            if exc.err_code == ERR_WRONG_LAST_SEQUENCE:
                raise CasConflict(f"the position of projection {name} moved on") from None
            raise Unavailable(f"projection {name}: {exc}") from None
        except JSApiError as exc:
            raise Unavailable(f"projection {name}: {exc.description}") from None
        return int(ack["seq"])

    async def commit(self, name: str, doc: dict[str, Any], rev: int, gen: int, rows: dict[str, Any]) -> int:
        """Store ``rows`` of generation ``gen`` and the position ``doc`` in one atomic batch,
        only if the position is still at ``rev``; the position's new revision.
        :class:`CasConflict` when someone else moved it."""
        if not rows:
            return await self.set_position(name, doc, rev)
        if len(rows) > MAX_BATCH_ROWS * 2:
            raise ValueError(f"{len(rows)} rows in one batch: write more often")
        batch = [Outgoing(self._subject(_pos_key(name)), orjson.dumps(doc), {})]
        for key, value in rows.items():
            subject = self._subject(_row_key(name, gen, key))
            if value is DELETED:
                batch.append(Outgoing(subject, b"", {"KV-Operation": "DEL"}))
            else:
                batch.append(Outgoing(subject, orjson.dumps(value), {}))
        return await atomic_batch(self.nc, batch, rev, self.timeout_s, f"projection batch (the position of {name})")

    async def purge_generation(self, name: str, gen: int) -> None:
        """Remove every row of generation ``gen`` (after a rebuild moved past it)."""
        try:
            await js_api(
                self.nc, f"$JS.API.STREAM.PURGE.{self.stream}", {"filter": self._subject(f"{name}.g{gen}.>")}, 10.0
            )
        except JSApiError as exc:
            raise Unavailable(f"projection {name}: {exc.description}") from None

    # -- readers (direct gets: any replica answers) -----------------------------------------
    async def peek(self, key: str) -> Any:
        msg = await self._direct.last(self.stream, self._subject(key), self.timeout_s)
        if msg is None or (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
            return None
        return orjson.loads(msg.data)

    async def peek_position(self, name: str) -> dict[str, Any] | None:
        doc = await self.peek(_pos_key(name))
        return doc if isinstance(doc, dict) else None

    async def peek_row(self, name: str, gen: int, key: str) -> Any:
        return await self.peek(_row_key(name, gen, key))
