"""The command stream's partition consumers, as the host's pullers use them.

Every JetStream API call on a partition consumer goes through here, so the host's partition
lifecycle (``jetagents._host.partitions``) decides when to create, rewind, revive or unpin a
consumer without knowing how JetStream spells it. ``high`` names the high-priority lane's
consumer of the partition (stream ``<ROOT>_CMDH``, ADR 0058) instead of the normal one.
Errors keep the adapter's meaning: ``JSApiError`` is the server's answer, ``Unavailable`` is
no answer (no responders, timeout).
"""

from __future__ import annotations

from typing import Any

import orjson
from nats.aio.client import Client as NATS

from .api import (
    ERR_CONSUMER_NOT_FOUND,
    NS,
    JSApiError,
    Topology,
    ensure_consumer,
    js_api,
    rewind_consumer,
    unpin_consumer,
)


class PartitionConsumers:
    """The partition consumers of ``topology``'s command stream on one connection."""

    def __init__(self, nc: NATS, topology: Topology, timeout_s: float) -> None:
        self._nc = nc
        self._topo = topology
        self._timeout_s = timeout_s
        self._next_prefix = f"$JS.API.CONSUMER.MSG.NEXT.{topology.cmd_stream}."
        self._next_prefix_high = f"$JS.API.CONSUMER.MSG.NEXT.{topology.cmd_high_stream}."

    @property
    def connected(self) -> bool:
        return bool(self._nc.is_connected)

    def _api(self, op: str, partition: int, high: bool) -> str:
        topo = self._topo
        return f"$JS.API.CONSUMER.{op}.{topo.lane_stream(high)}.{topo.consumer_name(partition, high)}"

    async def ensure(self, partition: int, cfg: dict[str, Any], *, reset: bool = False, high: bool = False) -> None:
        """Create the consumer (an update when it exists); ``reset``: delete it first."""
        await ensure_consumer(self._nc, self._topo, partition, cfg, self._timeout_s, reset=reset, high=high)

    async def rewind(self, partition: int, cfg: dict[str, Any], *, high: bool = False) -> str:
        """Redeliver everything not acknowledged, at once and in order, and unpin."""
        return await rewind_consumer(self._nc, self._topo, partition, cfg, self._timeout_s, high=high)

    async def exists(self, partition: int, *, high: bool = False) -> bool:
        """Whether the consumer exists; ``Unavailable`` when no leader answers for it."""
        try:
            await js_api(self._nc, self._api("INFO", partition, high), None, self._timeout_s)
        except JSApiError as exc:
            if exc.err_code != ERR_CONSUMER_NOT_FOUND:
                raise
            return False
        return True

    async def delete(self, partition: int, *, high: bool = False) -> None:
        """Delete the consumer; one already gone is not an error."""
        try:
            await js_api(self._nc, self._api("DELETE", partition, high), None, self._timeout_s)
        except JSApiError as exc:
            if exc.err_code != ERR_CONSUMER_NOT_FOUND:
                raise

    async def unpin(self, partition: int, group: str, *, high: bool = False) -> None:
        await unpin_consumer(self._nc, self._topo, partition, group, self._timeout_s, high=high)

    async def pull(
        self,
        partition: int,
        reply: str,
        *,
        batch: int,
        expires_s: float,
        group: str,
        pin_id: str | None,
        high: bool = False,
    ) -> None:
        """Ask for up to ``batch`` messages, delivered (with statuses) to ``reply``."""
        request: dict[str, Any] = {"batch": batch, "expires": int(expires_s * NS), "group": group}
        if pin_id:
            request["id"] = pin_id
        prefix = self._next_prefix_high if high else self._next_prefix
        subject = prefix + self._topo.consumer_name(partition, high)
        await self._nc.publish(subject, orjson.dumps(request), reply=reply)
