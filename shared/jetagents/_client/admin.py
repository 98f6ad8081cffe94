"""Operator actions on agents (ADR 0053): ``client.admin``.

They write buckets only the operator's NATS user may write (``ops/nats/accounts.conf``): an
application's client connection is refused by the server, not by this code.

>>> await client.admin.quarantined("order", "o1")  # doctest: +SKIP
{'agent': 'order/o1', 'reason': 'replay of order/o1 failed at commit 7: ...', ...}
>>> await client.admin.release("order", "o1")  # doctest: +SKIP
True
"""

from __future__ import annotations

from typing import Any

import orjson

from .._core.errors import Unavailable
from .._core.ids import AgentId
from .._core.wire import Subjects
from .._nats.api import Topology
from .._nats.buckets import KvBucket


class Admin:
    """Quarantine records of agents, and their release."""

    def __init__(self, nc: Any, subjects: Subjects, timeout_s: float) -> None:
        self._nc = nc
        self._topology = Topology(subjects)
        self._timeout_s = timeout_s

    async def _quarantine(self) -> KvBucket:
        try:
            return await KvBucket.open(self._nc, self._topology.quarantine_bucket, self._timeout_s)
        except Exception as exc:  # noqa: BLE001 - nats-py raises several types here
            raise Unavailable(f"cannot open the quarantine bucket: {exc!r}") from None

    async def quarantined(self, agent_type: str, agent_id: str) -> dict[str, Any] | None:
        """The agent's quarantine record (why, since when, which host), or None."""
        raw = await (await self._quarantine()).get(AgentId(agent_type, agent_id).key)
        if raw is None:
            return None
        record = orjson.loads(raw) if raw else {}
        return record if isinstance(record, dict) else {"record": record}

    async def release(self, agent_type: str, agent_id: str) -> bool:
        """Release a quarantined agent: its next command activates it again (fix the cause
        first: purge the corrupt message, deploy the fixed applier). False: it was not
        quarantined."""
        bucket = await self._quarantine()
        key = AgentId(agent_type, agent_id).key
        if await bucket.get(key) is None:
            return False
        await bucket.delete(key)
        return True
