"""Operator actions on agents (ADR 0053): ``client.admin``.

They write a bucket and a subject (``agt.sys.host.<id>.rollback``) only the operator's NATS
user may (``ops/nats/accounts.conf``): an application's client connection is refused by the
server, not by this code.

>>> await client.admin.quarantined("order", "o1")  # doctest: +SKIP
{'agent': 'order/o1', 'reason': 'replay of order/o1 failed at commit 7: ...', ...}
>>> await client.admin.release("order", "o1", by="ops")  # doctest: +SKIP
True
>>> await client.admin.quarantined_agents()  # doctest: +SKIP
[]

A release through this class publishes ``agt.sys.agent.released`` (wire contract 9.1), as a
host publishes ``agt.sys.agent.quarantined``; a record deleted by other means (``nats kv
del``) releases the agent without telling anyone.
"""

from __future__ import annotations

import contextlib
from typing import Any, cast

import orjson

from .._core.errors import AgentTimeout, Unavailable
from .._core.ids import AgentId
from .._core.wire import Subjects
from .._nats.admin import AdminTransport
from .._nats.api import Topology
from .._nats.buckets import KvBucket
from .reply import decode_reply, no_responders


class Admin:
    """Quarantine records of agents, their release, and rollback to a sequence."""

    def __init__(self, client: Any, subjects: Subjects, timeout_s: float) -> None:
        self._client = client
        self._nc = client.nc
        self._subjects = subjects
        self._topology = Topology(subjects)
        self._timeout_s = timeout_s

    async def rollback(self, agent_type: str, agent_id: str, to_seq: int, *, by: str = "") -> dict[str, Any]:
        """Roll the agent back to its state as of its commit at ``to_seq`` (its sequence in
        the event stream): the agent's owner appends a reset commit naming ``to_seq`` and
        ``by`` (the audit record, in the agent's own log); later commands apply on top.
        ``fenced``: a command committed meanwhile; ask again."""
        owner = await self._client.locate(agent_type, agent_id)
        if owner is None:
            raise Unavailable("no host owns the agent's partition yet", details={"applied": False})
        body = orjson.dumps({"type": agent_type, "id": agent_id, "to": to_seq, "by": by})
        subject = self._subjects.sys("host", owner, "rollback")
        try:
            msg = await self._client._transport.request(subject, body, None, self._timeout_s)
        except TimeoutError:
            raise AgentTimeout(f"the rollback of {agent_type}/{agent_id} did not answer in time") from None
        if no_responders(msg):
            raise Unavailable(f"host {owner} is gone", details={"applied": False})
        return cast(dict[str, Any], decode_reply(msg).result)

    async def _quarantine(self) -> KvBucket:
        try:
            return await KvBucket.open(self._nc, self._topology.quarantine_bucket, self._timeout_s)
        except Exception as exc:  # noqa: BLE001 - nats-py raises several types here
            raise Unavailable(f"cannot open the quarantine bucket: {exc!r}") from None

    async def quarantined(self, agent_type: str, agent_id: str) -> dict[str, Any] | None:
        """The agent's quarantine record (why, since when, which host), or None."""
        raw = await (await self._quarantine()).get(AgentId(agent_type, agent_id).key)
        return None if raw is None else _record(raw)

    async def quarantined_agents(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The records of the quarantined agents (each with ``agent``), oldest first, at most
        ``limit`` (see :func:`quarantined_agents`)."""
        return await quarantined_agents(AdminTransport(self._nc, self._timeout_s), self._topology, limit)

    async def release(self, agent_type: str, agent_id: str, *, by: str = "") -> bool:
        """Release a quarantined agent: its next command activates it again (fix the cause
        first: purge the corrupt message, deploy the fixed applier), and publish
        ``agt.sys.agent.released`` naming ``by``. False: it was not quarantined."""
        bucket = await self._quarantine()
        aid = AgentId(agent_type, agent_id)
        raw = await bucket.get(aid.key)
        if raw is None:
            return False
        await bucket.delete(aid.key)
        record = _record(raw)
        # the envelope of a host's lifecycle events (Host.event), published by the operator
        event = {
            "kind": "agent.released",
            "host": str(record.get("host", "")),
            "ts_ms": self._client._clock.wall_ms(),
            "agent": str(aid),
            "by": by,
            "reason": str(record.get("reason", "")),
            "quarantined_ms": record.get("ts_ms") if isinstance(record.get("ts_ms"), int) else 0,
        }
        # best effort, as a host's events: the release is done whether or not anyone hears it
        with contextlib.suppress(Exception):
            await self._client._transport.publish(self._subjects.sys("agent", "released"), orjson.dumps(event), {})
            await self._nc.flush(self._timeout_s)
        return True


async def quarantined_agents(io: AdminTransport, topology: Topology, limit: int = 1000) -> list[dict[str, Any]]:
    """Every quarantine record (each with ``agent``), oldest first, at most ``limit``: read
    from the bucket's stream leader, one message per agent (the bucket keeps one value per
    key, and a release leaves a delete marker, skipped). The CLI's and the dashboard's list."""
    bucket = topology.quarantine_bucket
    try:
        stored = await io.read_from_leader(f"KV_{bucket}", f"$KV.{bucket}.>", 1, limit)
    except Exception as exc:  # noqa: BLE001 - nats-py raises several types here
        raise Unavailable(f"cannot read the quarantine bucket: {exc!r}") from None
    prefix = f"$KV.{bucket}."
    return [{"agent": m.subject[len(prefix) :].replace(".", "/", 1), **_record(m.data)} for m in stored]


def _record(raw: bytes) -> dict[str, Any]:
    """A record as hosts write it; anything else (written by hand) kept under ``record``."""
    try:
        record = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {"record": raw.decode("utf-8", "replace")}
    return record if isinstance(record, dict) else {"record": record}
