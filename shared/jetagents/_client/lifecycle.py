"""An agent's data lifecycle (ADR 0052): deletion by tombstone, the purge after its grace
period, and log retention per type. Operator operations, over ``Inspector``'s connection.

>>> async def main():  # doctest: +SKIP
...     life = Lifecycle(Inspector(client, agents=[Counter]))
...     await life.delete("counter", "c1", grace_s=3600, by="alice", reason="GDPR request")
...     # ...an hour later (cron, or `jetagents agent purge`):
...     await life.purge_due()            # log, snapshot, metadata, dead letters, queued commands
...     await life.apply_retention()      # types with keep_snapshots: log before the snapshot

A tombstone (KV ``agt_tomb``, key ``<type>.<id>``) is the deletion's audit record and stays:
hosts read it when they activate the agent and refuse every command with ``agent_deleted``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Iterable
from typing import Any

import orjson

from .._core.blobref import OWNER_SEP
from .._core.errors import JetAgentsError
from .._core.ids import AgentId, is_valid_token, partition_of
from .._core.upcast import state_from
from .._nats.api import ERR_STREAM_NOT_FOUND, JSApiError
from .._nats.pubsub import CONTROL_HEADER, PubSubNames
from .inspection import Inspector, _doc


class Lifecycle:
    """Delete, purge, retain: the writes of the data lifecycle (the ``operator`` user)."""

    def __init__(self, admin: Inspector) -> None:
        self.admin = admin
        self.io = admin.io
        self.subjects = admin.subjects
        self.topology = admin.topology

    async def delete(
        self, agent_type: str, agent_id: str, *, grace_s: float = 86_400.0, by: str = "", reason: str = ""
    ) -> dict[str, Any]:
        """Tombstone the agent: from now on its commands are refused (``agent_deleted``);
        its log and snapshots go at the first ``purge_due`` after ``grace_s``. Hosts holding
        it in memory are told to forget it. Returns the tombstone (the audit record)."""
        aid = AgentId(agent_type, agent_id)
        now_ms = time.time_ns() // 1_000_000
        existing = await self.io.kv_get(self.topology.tomb_bucket, aid.key)
        if existing is not None:
            return _doc(existing.data)
        tomb = {
            "agent": str(aid),
            "deleted_ms": now_ms,
            "purge_after_ms": now_ms + int(grace_s * 1000),
            "by": by,
            "reason": reason,
            "purged_ms": None,
        }
        await self.io.kv_put(self.topology.tomb_bucket, aid.key, orjson.dumps(tomb))
        await self._evict(aid)
        return tomb

    async def tombstones(self) -> dict[str, dict[str, Any]]:
        """Every deleted agent (``<type>.<id>`` -> its tombstone)."""
        return (await self.tombstones_since(1))[0]

    async def tombstones_since(self, start_seq: int) -> tuple[dict[str, dict[str, Any]], int]:
        """The tombstones written from stream sequence ``start_seq`` on (key -> the latest),
        and the sequence to read from next time: the leader's sweep reads only what is new,
        not every tombstone ever written (they stay forever)."""
        bucket = self.topology.tomb_bucket
        msgs = await self.io.read_from_leader(f"KV_{bucket}", f"$KV.{bucket}.>", start_seq, 1_000_000)
        tombs = {m.subject.removeprefix(f"$KV.{bucket}."): _doc(m.data) for m in msgs}
        return tombs, (msgs[-1].seq + 1 if msgs else start_seq)

    async def purge_due(
        self, now_ms: int | None = None, tombs: dict[str, dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """Purge every deleted agent whose grace period is over and that is not purged yet
        (among ``tombs``, by default every tombstone): its log, snapshot, spawn metadata, dead
        letters, queued commands and schedules, its placement, subscriptions, quarantine record
        and blobs. The tombstone records when."""
        now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
        done = []
        due = [
            (key, tomb)
            for key, tomb in (tombs if tombs is not None else await self.tombstones()).items()
            if not tomb.get("purged_ms") and int(tomb.get("purge_after_ms", 0)) <= now
        ]
        blobs = await self._blobs_by_owner() if due else {}  # one listing of the bucket per purge
        for key, tomb in due:
            agent_type, _, agent_id = key.partition(".")
            aid = AgentId(agent_type, agent_id)
            if tombs is not None:  # given (a sweep's memory): the bucket's word is the last
                current = await self.io.kv_get(self.topology.tomb_bucket, aid.key)
                if current is None or _doc(current.data).get("purged_ms"):
                    continue
            await self._purge(aid, blobs.get(aid.key, ()))
            tomb = dict(tomb, purged_ms=time.time_ns() // 1_000_000)
            await self.io.kv_put(self.topology.tomb_bucket, aid.key, orjson.dumps(tomb))
            done.append(tomb)
        return done

    async def _purge(self, aid: AgentId, blob_meta: Iterable[str] = ()) -> None:
        s, t = self.subjects, self.topology
        info = await self.io.stream_info(t.cmd_stream)
        partitions = int(((info.get("config") or {}).get("metadata") or {}).get("jetagents_partitions", 0) or 0)
        targets = [
            (t.evt_stream, s.evt(aid.type, aid.id)),
            (t.dlq_stream, s.dlq(aid.type, aid.id)),
            (f"KV_{t.snap_bucket}", f"$KV.{t.snap_bucket}.{aid.key}"),
            (f"KV_{t.meta_bucket}", f"$KV.{t.meta_bucket}.{aid.key}"),
            (f"KV_{t.cluster_bucket}", f"$KV.{t.cluster_bucket}.place.{aid.key}"),
            (t.cmd_stream, s.rem_of(aid.type, aid.id)),
            (t.out_stream, s.out(aid.type, aid.id, "*")),  # streamed output (ADR 0042)
            (f"KV_{t.quarantine_bucket}", f"$KV.{t.quarantine_bucket}.{aid.key}"),  # ADR 0053
        ]
        # its subscriptions (ADR 0049), keyed <pattern key>.<type>.<id>; each pattern's runner
        # keeps them in memory, so it is told to read the key again once it is gone
        names = PubSubNames(s)
        subs = await self._stored(f"KV_{names.subs_bucket}", f"$KV.{names.subs_bucket}.*.{aid.key}")
        targets.extend((f"KV_{names.subs_bucket}", subject) for subject in subs)
        if partitions:
            p = partition_of(aid.type, aid.id, partitions)
            targets.append((t.cmd_stream, f"{s.root}.p.{p}.{aid.type}.{aid.id}"))
            targets.append((t.cmd_high_stream, f"{s.root}.ph.{p}.{aid.type}.{aid.id}"))  # the high lane (ADR 0058)
        for stream, subject in targets:
            try:
                await self.io.purge(stream, subject)
            except JSApiError as exc:
                if exc.err_code != ERR_STREAM_NOT_FOUND:  # a stream this deployment does not have
                    raise
        await self._purge_blobs(blob_meta)
        for subject in subs:
            key = subject.removeprefix(f"$KV.{names.subs_bucket}.")
            await self.io.publish_durable(names.control_subject(key.split(".")[0]), b"", {CONTROL_HEADER: key})
        await self._evict(aid)  # a command that raced the tombstone may have loaded it again

    async def _blobs_by_owner(self) -> dict[str, list[str]]:
        """The meta subjects of ``agt_blobs`` by the agent their name is scoped to (a name is
        ``<type>.<id>/sha256:<hex>``, ADR 0052; the subject holds it base64url-encoded, so
        the server cannot filter by agent: the bucket's subjects are listed once)."""
        bucket = self.topology.blob_bucket
        prefix = f"$O.{bucket}.M."
        out: dict[str, list[str]] = {}
        for subject in await self._stored(f"OBJ_{bucket}", f"{prefix}*", limit=100_000_000):
            try:
                name = base64.urlsafe_b64decode(subject.removeprefix(prefix)).decode()
            except (binascii.Error, UnicodeDecodeError):
                continue  # not a name this project wrote
            owner, sep, _ = name.rpartition(OWNER_SEP)
            if sep:  # unscoped names (written before ADR 0052's scoping) may be shared: kept
                out.setdefault(owner, []).append(subject)
        return out

    async def _purge_blobs(self, meta_subjects: Iterable[str]) -> None:
        """Remove each blob: its chunks first (named by the nuid its meta message holds), then
        the meta subject, delete markers included, so an interrupted purge is done again."""
        stream = f"OBJ_{self.topology.blob_bucket}"
        for subject in meta_subjects:
            meta = await self.io.last(stream, subject)
            nuid = _doc(meta.data).get("nuid") if meta is not None and meta.data else None
            if isinstance(nuid, str) and nuid and is_valid_token(nuid):
                await self.io.purge(stream, f"$O.{self.topology.blob_bucket}.C.{nuid}")
            await self.io.purge(stream, subject)

    async def _stored(self, stream: str, subject_filter: str, limit: int = 10_000) -> list[str]:
        try:
            return list(await self.io.subjects(stream, subject_filter, limit))
        except JSApiError as exc:
            if exc.err_code != ERR_STREAM_NOT_FOUND:  # a deployment without pub-sub
                raise
            return []

    async def _evict(self, aid: AgentId) -> None:
        cluster = await self.admin.cluster()

        async def ask(h: str) -> None:
            try:
                await self.io.request(
                    self.subjects.sys("host", h, "evict"), orjson.dumps({"agent": aid.key}), self.io.timeout_s
                )
            except (TimeoutError, JetAgentsError):
                pass  # a host gone or slow: it reads the tombstone at the agent's next activation

        await asyncio.gather(*(ask(h["host"]) for h in cluster["hosts"] if h["alive"]))

    def retained_types(self) -> dict[str, int]:
        """The types known here that declare ``keep_snapshots = N`` (type -> N)."""
        out = {}
        for type_name in self.admin.registry.types():
            spec = self.admin.registry.get(type_name)
            keep = getattr(spec.cls, "keep_snapshots", None) if spec is not None else None
            if keep:
                out[type_name] = int(keep)
        return out

    async def snapshot_history(self) -> int:
        """Snapshots the bucket keeps per agent (its ``max_msgs_per_subject``: the hosts'
        ``snapshot_history``, ADR 0059); 0 when there is no bucket yet."""
        try:
            info = await self.io.stream_info(f"KV_{self.topology.snap_bucket}")
        except JSApiError as exc:
            if exc.err_code != ERR_STREAM_NOT_FOUND:
                raise
            return 0
        return max(1, int((info.get("config") or {}).get("max_msgs_per_subject", 1) or 1))

    async def apply_retention(self) -> list[dict[str, Any]]:
        """For every type known here that declares ``keep_snapshots = N``: purge each agent's
        log before the oldest snapshot it still needs, one entry per agent cut or skipped.

        That snapshot is the N-th last, or older: the restore path (ADR 0059) falls back to
        any snapshot the bucket keeps when a newer one cannot be read, and needs the log after
        it, so the cut is before the oldest of the last ``max(N, history)`` snapshots. A
        bucket keeping fewer than N per agent can never satisfy N: the type is reported and
        left whole (raise ``snapshot_history``); an agent with fewer than N snapshots so far,
        or whose cut snapshot this code cannot load, is reported and left whole."""
        kept = self.retained_types()
        if not kept:
            return []
        history = await self.snapshot_history()
        out: list[dict[str, Any]] = []
        for type_name, keep in kept.items():
            if history < keep:
                out.append(
                    {
                        "type": type_name,
                        "skipped": f"the snapshot bucket keeps {history} per agent, keep_snapshots is {keep}",
                    }
                )
                continue
            pattern = self.subjects.evt(type_name, "*")
            for subject in sorted(await self.io.subjects(self.topology.evt_stream, pattern, 100_000_000)):
                out.append(await self._retain(type_name, subject.split(".")[-1], keep, max(keep, history)))
        return out

    async def _retain(self, type_name: str, agent_id: str, keep: int, depth: int) -> dict[str, Any]:
        spec = self.admin.registry.get(type_name)
        assert spec is not None  # one of retained_types()
        aid = AgentId(type_name, agent_id)
        bucket = self.topology.snap_bucket
        snaps = await self.io.read_from_leader(f"KV_{bucket}", f"$KV.{bucket}.{aid.key}", 1, 1000)
        docs = [_doc(m.data) for m in snaps if m.data]  # a delete marker has no body
        if len(docs) < keep:
            return {"agent": str(aid), "skipped": f"{len(docs)} of {keep} snapshots so far"}
        snap = docs[max(0, len(docs) - depth)]
        try:
            state_from(spec, aid, snap["state"], int(snap.get("sv", 1)))
            seq = int(snap["seq"])
        except (JetAgentsError, KeyError, TypeError, ValueError):
            return {"agent": str(aid), "skipped": "snapshot unreadable by this code"}
        # the last commit always stays: it is the fence the next append expects (wire
        # contract 7); a subject without it would refuse every append as "wrong last sequence"
        subject = self.subjects.evt(aid.type, aid.id)
        last = await self.io.last(self.topology.evt_stream, subject)
        keep_from = min(seq + 1, last.seq) if last is not None else seq + 1
        await self.io.purge_until(self.topology.evt_stream, subject, keep_from)
        return {"agent": str(aid), "kept_from_seq": keep_from, "snapshot_seq": seq}
