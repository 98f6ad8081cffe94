"""The command stream's partition consumers, as the host's pullers use them.

Every JetStream API call on a partition consumer goes through here, so the host's partition
lifecycle (``jetagents._host.partitions``) decides when to create, rewind, revive or unpin a
consumer without knowing how JetStream spells it. ``high`` names the high-priority lane's
consumer of the partition (stream ``<ROOT>_CMDH``, ADR 0058) instead of the normal one.
Errors keep the adapter's meaning: ``JSApiError`` is the server's answer, ``Unavailable`` is
no answer (no responders, timeout).

On a cluster a consumer is its own raft group, and only its leader answers ``CREATE``,
``DELETE`` and ``RESET`` (and ``INFO``, once the group has had a leader: its other members
say "JetStream system temporarily unavailable", 10008, meanwhile). After a NATS node dies
or pauses, the groups it led, and new groups whose preferred peer it is, elect a leader in
nats-server's election timeout (4-9 s, more on a loaded machine): longer than one round
trip's ``timeout_s``. A call that times out then was usually applied (the meta group stores
creates and deletes; the new leader answers a create to an inbox nobody listens to any
more). So a call with no answer, or answered 10008, is followed by reading the consumer
until it is led or gone, for at most ``settle_s``: a create that landed is not made again,
and a consumer that is electing its leader is waited for, not deleted. Deleting it started
a new group and a new election; the next start's timeout deleted that one too, and one
partition stayed unserved for 40 s and more after a node was killed (ADR 0037, session 7).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import orjson
from nats.aio.client import Client as NATS

from .._core.errors import Unavailable
from .api import ERR_CONSUMER_NOT_FOUND, NS, JSApiError, Topology, js_api

# "JetStream system temporarily unavailable": the consumer's group (or the meta group) has
# no leader at the moment
ERR_NO_LEADER: Final = 10008
# two election timeouts of nats-server (4-9 s each: one may end in a split vote) and room
# for a loaded machine; a start that waits longer fails and is tried again, recreating
SETTLE_S: Final = 20.0
SETTLE_POLL_S: Final = 0.25
# one read while settling: a consumer without a leader may not answer at all, and its new
# leader should be heard within a poll or two, not after a whole ``timeout_s``
SETTLE_READ_S: Final = 2.0
# a create or delete is sent again only when reading the consumer showed the last one was
# not applied (no meta leader then), and at most this often
_SENDS: Final = 3
_RESET_SINCE: Final = (2, 14)  # the server version with $JS.API.CONSUMER.RESET
_SAME_CONFIG: Final = ("filter_subject", "ack_wait", "max_ack_pending", "priority_timeout", "mem_storage")


def _led(info: dict[str, Any]) -> bool:
    """The answer came from the consumer itself: its leader (a cluster) or the server (no
    cluster). A member of a group that never had a leader answers with the configuration
    alone (no ``cluster``, no ``delivered``)."""
    cluster = info.get("cluster")
    return bool(cluster.get("leader")) if isinstance(cluster, dict) else "delivered" in info


class PartitionConsumers:
    """The partition consumers of ``topology``'s command stream on one connection."""

    def __init__(self, nc: NATS, topology: Topology, timeout_s: float, settle_s: float = SETTLE_S) -> None:
        self._nc = nc
        self._topo = topology
        self._timeout_s = timeout_s
        self._settle_s = settle_s
        self._next_prefix = f"$JS.API.CONSUMER.MSG.NEXT.{topology.cmd_stream}."
        self._next_prefix_high = f"$JS.API.CONSUMER.MSG.NEXT.{topology.cmd_high_stream}."

    @property
    def connected(self) -> bool:
        return bool(self._nc.is_connected)

    def _api(self, op: str, partition: int, high: bool) -> str:
        topo = self._topo
        return f"$JS.API.CONSUMER.{op}.{topo.lane_stream(high)}.{topo.consumer_name(partition, high)}"

    async def _call(
        self, op: str, partition: int, high: bool, payload: dict[str, Any] | None, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """One API call; 10008 (no leader) is raised as ``Unavailable``, like no answer."""
        try:
            return await js_api(self._nc, self._api(op, partition, high), payload, timeout_s or self._timeout_s)
        except JSApiError as exc:
            if exc.err_code == ERR_NO_LEADER:
                raise Unavailable(f"consumer {op}: {exc.description}") from None
            raise

    async def _info(self, partition: int, high: bool, timeout_s: float | None = None) -> dict[str, Any] | None:
        """The consumer's info, None when it does not exist."""
        try:
            return await self._call("INFO", partition, high, None, timeout_s)
        except JSApiError as exc:
            if exc.err_code != ERR_CONSUMER_NOT_FOUND:
                raise
            return None

    def _deadline(self) -> float:
        """When an operation (with every wait it does) gives up: ``settle_s`` from now."""
        return asyncio.get_running_loop().time() + self._settle_s

    async def _settled(self, partition: int, high: bool, until: float) -> dict[str, Any] | None:
        """Read the consumer until its leader answers (its info) or the server says it does
        not exist (None); ``Unavailable`` past ``until``."""
        try:
            async with asyncio.timeout_at(until):
                while True:
                    try:
                        info = await self._info(partition, high, min(self._timeout_s, SETTLE_READ_S))
                        if info is None or _led(info):
                            return info
                    except Unavailable:
                        pass  # no leader yet
                    await asyncio.sleep(SETTLE_POLL_S)
        except TimeoutError:
            name = self._topo.consumer_name(partition, high)
            raise Unavailable(f"consumer {name}: no leader answered within {self._settle_s}s") from None

    async def ensure(self, partition: int, cfg: dict[str, Any], *, reset: bool = False, high: bool = False) -> None:
        """Create the consumer (an update when it exists); ``reset``: delete it first."""
        await self._ensure(partition, cfg, reset, high, self._deadline())

    async def _ensure(self, partition: int, cfg: dict[str, Any], reset: bool, high: bool, until: float) -> None:
        if reset:
            await self._delete(partition, high, until)
        payload = {"stream_name": self._topo.lane_stream(high), "config": cfg, "action": ""}
        for _ in range(_SENDS):
            try:
                await self._call("CREATE", partition, high, payload)
                return
            except Unavailable:
                if await self._settled(partition, high, until) is not None:
                    return  # created: its leader answered a request we had given up on
            # not there: the create never reached the meta group (no meta leader then)
        raise Unavailable(f"consumer {self._topo.consumer_name(partition, high)} not created")

    async def rewind(self, partition: int, cfg: dict[str, Any], *, high: bool = False) -> str:
        """Make the consumer deliver again, at once and in stream order, everything not
        acknowledged, and forget who it was pinned to: what a new owner needs.

        ``$JS.API.CONSUMER.RESET`` (server 2.14+) rewinds to the ack floor in place: one
        proposal in the consumer's own raft group, where delete + create are two proposals
        in the cluster-wide meta group, which serialises them (about 0.2 s per partition on
        R3 under load, so a host taking over 20 partitions waited seconds). Falls back to
        delete + create when the consumer is missing, its configuration changed, or the
        server is older. Returns ``"rewound"``, ``"created"`` or ``"recreated"``.
        """
        until = self._deadline()
        try:  # (RESET of a missing consumer gets no answer at all: ask first)
            info = await self._info(partition, high)
        except Unavailable:
            info = await self._settled(partition, high, until)
        if info is None:
            await self._ensure(partition, cfg, False, high, until)
            return "created"
        have = info.get("config") or {}
        version = self._nc.connected_server_version
        if any(have.get(k) != cfg.get(k) for k in _SAME_CONFIG) or (version.major, version.minor) < _RESET_SINCE:
            await self._ensure(partition, cfg, True, high, until)
            return "recreated"
        try:
            await self._call("RESET", partition, high, None)
        except Unavailable:
            # its leader changed since it answered: wait for the next one and ask it
            if await self._settled(partition, high, until) is None:
                await self._ensure(partition, cfg, False, high, until)
                return "created"
            await self._call("RESET", partition, high, None)
        except JSApiError:  # refused (a reset the consumer cannot take): start it afresh
            await self._ensure(partition, cfg, True, high, until)
            return "recreated"
        await self.unpin(partition, cfg["priority_groups"][0], high=high)
        return "rewound"

    async def exists(self, partition: int, *, high: bool = False) -> bool:
        """Whether the consumer exists; ``Unavailable`` when no leader answers for it."""
        return await self._info(partition, high) is not None

    async def delete(self, partition: int, *, high: bool = False) -> None:
        """Delete the consumer; one already gone is not an error. A delete with no answer
        (the consumer has no leader to answer it) is checked: done once the consumer is
        gone, sent again if it is still led."""
        await self._delete(partition, high, self._deadline())

    async def _delete(self, partition: int, high: bool, until: float) -> None:
        for _ in range(_SENDS):
            try:
                await self._call("DELETE", partition, high, None)
                return
            except JSApiError as exc:
                if exc.err_code != ERR_CONSUMER_NOT_FOUND:
                    raise
                return
            except Unavailable:
                if await self._settled(partition, high, until) is None:
                    return
        raise Unavailable(f"consumer {self._topo.consumer_name(partition, high)} not deleted")

    async def unpin(self, partition: int, group: str, *, high: bool = False) -> None:
        """Make the consumer forget the client it is pinned to (nothing if none is)."""
        try:
            await js_api(self._nc, self._api("UNPIN", partition, high), {"group": group}, self._timeout_s)
        except JSApiError:
            pass  # nobody was pinned

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
