"""Data lifecycle (ADR 0052): a deleted agent's commands are refused with ``agent_deleted``
at once, and after its grace period nothing of it is left in any stream or bucket but its
tombstone; retention cuts a log before its snapshot and the agent still loads."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from jetagents import Agent, Client, ClientSettings, Event, Host, NatsServer, Registry, action, applies
from jetagents._client.inspection import Inspector
from jetagents._client.lifecycle import Lifecycle
from jetagents._core.errors import AgentDeleted, InternalError, JetAgentsError
from jetagents._nats.api import js_api
from jetagents.examples import EXAMPLE_AGENTS, Counter

from ..conftest import host_settings
from .helpers import commits, dead_letters, eventually


class Ledger(Counter):
    type_name = "ledger"
    keep_snapshots = 1


class Journal(Counter):
    type_name = "journal"
    keep_snapshots = 2


class Archive(Counter):
    type_name = "archive"
    keep_snapshots = 3


class KeptState(BaseModel):
    texts: list[str] = []


class Kept(Event):
    text: str


class Keeper(Agent[KeptState]):
    """Keeps what it is sent: a large command becomes a large event, result and state, all
    three stored in agt_blobs by reference."""

    type_name = "keeper"
    state_type = KeptState

    @action
    async def keep(self, text: str) -> str:
        self.emit(Kept(text=text))
        return text

    @action
    async def tell(self, n: int) -> int:
        for i in range(n):
            await self.stream(i)
        return n

    @action
    async def ping(self) -> str:
        return "pong"

    @action
    async def on_message(self, msg: dict[str, Any]) -> None:  # its topic subscriptions' handler
        self.emit(Kept(text=orjson.dumps(msg["data"]).decode()))

    @applies
    def _kept(self, state: KeptState, event: Kept) -> None:
        state.texts.append(event.text)


async def _blobs(nc: Any) -> tuple[dict[str, str], set[str]]:
    """The blobs of ``agt_blobs`` read from its stream (name -> nuid of its chunks, delete
    markers included) and the chunk nuids the stream holds."""
    info = await js_api(nc, "$JS.API.STREAM.INFO.OBJ_agt_blobs", {"subjects_filter": ">"}, 5)
    metas, chunks = {}, set()
    for subject in info["state"].get("subjects") or {}:
        kind, token = subject.split(".")[2:4]
        if kind == "C":
            chunks.add(token)
        else:
            msg = await js_api(nc, "$JS.API.STREAM.MSG.GET.OBJ_agt_blobs", {"last_by_subj": subject}, 5)
            meta = orjson.loads(base64.b64decode(msg["message"]["data"]))
            metas[base64.urlsafe_b64decode(token).decode()] = meta["nuid"]
    return metas, chunks


async def _subjects_of(nc: Any, needle: str) -> dict[str, list[str]]:
    """Every subject holding a message, in every stream of the account, that names ``needle``."""
    names = (await js_api(nc, "$JS.API.STREAM.NAMES", {}, 5)).get("streams") or []
    found: dict[str, list[str]] = {}
    for stream in names:
        info = await js_api(nc, f"$JS.API.STREAM.INFO.{stream}", {"subjects_filter": ">"}, 5)
        hits = [s for s in (info["state"].get("subjects") or {}) if needle in s]
        if hits:
            found[stream] = hits
    return found


async def test_delete_refuses_at_once_and_the_purge_leaves_nothing(nats_server: NatsServer) -> None:
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
    try:
        async with Host(host_settings(nats_server.url), Registry(EXAMPLE_AGENTS)) as host:
            ref = client.agent("counter", "gone")
            await client.spawn("counter", "gone", {"owner": "x"})
            await client.subscribe_agent("counter", "gone", "news.>")
            for _ in range(3):
                await ref.request("increment", {"by": 1})
            with pytest.raises(JetAgentsError):
                await ref.request("nope", {})
            await host.catalog.snapshot_all(5.0)
            assert set(await _subjects_of(client.nc, "counter.gone")) == {
                "AGT_EVT",
                "AGT_DLQ",
                "KV_agt_snap",
                "KV_agt_meta",
                "KV_agt_subs",
            }
            life = Lifecycle(Inspector(client))
            tomb = await life.delete("counter", "gone", grace_s=3600, by="test", reason="asked to")
            # refused at once, although the host had it in memory; not dead-lettered
            letters = len(await dead_letters(client.nc))
            with pytest.raises(AgentDeleted):
                await ref.request("increment", {"by": 1})
            with pytest.raises(AgentDeleted):
                await ref.request("get", delivery="at-most-once")
            assert len(await dead_letters(client.nc)) == letters
            assert len(await commits(client.nc, "counter", "gone")) == 3
            await life.io.kv_put(life.topology.quarantine_bucket, "counter.gone", b'{"reason": "test"}')
            # within the grace period nothing is purged
            assert await life.purge_due(now_ms=tomb["deleted_ms"] + 1000) == []
            assert "AGT_EVT" in await _subjects_of(client.nc, "counter.gone")
            (purged,) = await life.purge_due(now_ms=tomb["purge_after_ms"])
            assert purged["by"] == "test" and purged["reason"] == "asked to" and purged["purged_ms"]
            # nothing of the agent in any stream or bucket, but its tombstone (the audit record)
            assert await _subjects_of(client.nc, "counter.gone") == {"KV_agt_tomb": ["$KV.agt_tomb.counter.gone"]}
            with pytest.raises(AgentDeleted):
                await ref.request("increment", {"by": 1})
            assert await _subjects_of(client.nc, "counter.gone") == {"KV_agt_tomb": ["$KV.agt_tomb.counter.gone"]}
            assert await life.purge_due(now_ms=tomb["purge_after_ms"] + 10**9) == []  # once
            # the others are untouched
            assert await client.agent("counter", "kept").request("increment", {"by": 2}) == 2
    finally:
        await client.close()


async def test_the_purge_removes_the_agents_blobs_and_keeps_anothers_with_the_same_bytes(
    nats_server: NatsServer,
) -> None:
    """ADR 0052: blobs are named by the agent whose log or snapshot holds the reference, so
    the purge removes every blob of the deleted agent (chunks and meta, delete markers
    included) and leaves another agent's copy of the same bytes readable."""
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
    text = "k" * 150_000  # a command of ~150 KB: its event, result and state go by reference
    try:
        async with Host(host_settings(nats_server.url), Registry([Keeper])) as host:
            for agent in ("a", "b"):
                assert await client.agent("keeper", agent).request("keep", {"text": text}) == text
            await host.catalog.snapshot_all(5.0)
            before, _ = await _blobs(client.nc)
            mine = {n for n in before if n.startswith("keeper.a/")}
            kept = {n for n in before if n.startswith("keeper.b/")}
            # the event's data, the result and the state: three blobs each, the same bytes
            assert len(mine) == 3 and {n.replace("keeper.a/", "keeper.b/") for n in mine} == kept
            life = Lifecycle(Inspector(client))
            tomb = await life.delete("keeper", "a", grace_s=60, by="test")
            await life.purge_due(now_ms=tomb["purge_after_ms"])
            after, chunks = await _blobs(client.nc)
            assert set(after) == set(before) - mine  # no object of the deleted agent, not even a marker
            assert chunks == set(after.values())  # and no chunk of it left behind
            store = await client.nc.jetstream().object_store("agt_blobs")
            for name in kept:  # the other agent's copies: complete and readable
                data = (await store.get(name)).data
                assert data is not None and name.endswith(hashlib.sha256(data).hexdigest())
            assert await client.agent("keeper", "b").request("keep", {"text": "x"}) == "x"
    finally:
        await client.close()


async def test_the_leader_purges_after_the_grace_period_and_nothing_of_the_agent_remains(
    nats_server: NatsServer,
) -> None:
    """ADR 0052 without an operator: the host that leads the cluster sweeps tombstones every
    ``purge_sweep_s``; after the grace period no stream or bucket holds anything of the agent
    (log and its exactly-once records, dead letter, snapshots, metadata, reminder, streamed
    output, subscription, blobs) but its tombstone, and its commands are refused."""
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
    text = "g" * 150_000
    try:
        async with Host(host_settings(nats_server.url, purge_sweep_s=0.2), Registry([Keeper])) as host:
            ref = client.agent("keeper", "gone")
            await client.spawn("keeper", "gone", {"owner": "x"})
            await client.subscribe_agent("keeper", "gone", "news.>")
            for agent in ("gone", "kept"):
                await client.agent("keeper", agent).request("keep", {"text": text}, command_id=f"k-{agent}")
            await ref.remind("later", every=3600, action="ping")
            assert [i async for i in ref.stream("tell", {"n": 3}, command_id="s1")] == [0, 1, 2]
            with pytest.raises(JetAgentsError):
                await ref.request("nope", {})
            await host.catalog.snapshot_all(5.0)
            assert set(await _subjects_of(client.nc, "keeper.gone")) == {
                "AGT_CMD",  # the reminder
                "AGT_EVT",
                "AGT_DLQ",
                "AGT_OUT",
                "KV_agt_snap",
                "KV_agt_meta",
                "KV_agt_subs",
            }
            blobs, _ = await _blobs(client.nc)
            assert sum(n.startswith("keeper.gone/") for n in blobs) == 3
            life = Lifecycle(Inspector(client))
            await life.delete("keeper", "gone", grace_s=1.0, by="test")
            with pytest.raises(AgentDeleted):
                await ref.request("ping", {})

            async def purged() -> bool:
                return bool((await life.tombstones())["keeper.gone"].get("purged_ms"))

            await eventually(purged, timeout_s=30, interval_s=0.2)
            assert host.purge_sweep is not None and host.purge_sweep.runs >= 1
            # every stream and bucket of the account (KV and object buckets are streams too)
            assert await _subjects_of(client.nc, "keeper.gone") == {"KV_agt_tomb": ["$KV.agt_tomb.keeper.gone"]}
            blobs, chunks = await _blobs(client.nc)
            assert not [n for n in blobs if n.startswith("keeper.gone/")] and chunks == set(blobs.values())
            assert sum(n.startswith("keeper.kept/") for n in blobs) == 3  # the same bytes, another agent's
            with pytest.raises(AgentDeleted):
                await ref.request("ping", {})
            with pytest.raises(AgentDeleted):
                await ref.request("keep", {"text": "again"}, command_id="k-gone")  # its old id too
            assert await _subjects_of(client.nc, "keeper.gone") == {"KV_agt_tomb": ["$KV.agt_tomb.keeper.gone"]}
            assert await client.agent("keeper", "kept").request("ping", {}) == "pong"
    finally:
        await client.close()


async def test_a_purged_subscriber_is_dropped_by_its_patterns_runner(nats_server: NatsServer) -> None:
    """ADR 0049 and 0052: the purge removes the agent's subscription and signals its pattern's
    runner (``agt.pubctl.<pattern key>``), which keeps subscribers in memory: the topic messages
    published after the purge become commands to the other subscriber only. Without the signal
    the runner would go on sending the deleted agent a command per message (each refused)."""
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
    try:
        async with Host(host_settings(nats_server.url, purge_sweep_s=0), Registry([Keeper])) as host:
            for agent in ("gone", "kept"):
                await client.subscribe_agent("keeper", agent, "news.>")
            await client.publish("news.a", {"n": 1})

            async def received(agent: str, n: int) -> bool:
                return len(await commits(client.nc, "keeper", agent)) == n

            for agent in ("gone", "kept"):
                await eventually(lambda agent=agent: received(agent, 1), timeout_s=20)
            assert host.stats["pubsub_deliveries"] == 2
            life = Lifecycle(Inspector(client))
            tomb = await life.delete("keeper", "gone", grace_s=0, by="test")
            await life.purge_due(now_ms=tomb["purge_after_ms"])
            # the runner handles one message at a time, in stream order: once the third one
            # reached "kept", the second one's fan-out is over
            await client.publish("news.b", {"n": 2})
            await client.publish("news.c", {"n": 3})
            await eventually(lambda: received("kept", 3), timeout_s=20)
            assert host.stats["pubsub_deliveries"] == 4  # 2, then one per message
            assert host.stats["pubsub_refused"] == 0
            assert await commits(client.nc, "keeper", "gone") == []
            assert await _subjects_of(client.nc, "keeper.gone") == {"KV_agt_tomb": ["$KV.agt_tomb.keeper.gone"]}
    finally:
        await client.close()


async def test_a_host_that_missed_the_evict_refuses_the_deleted_agent_by_its_tombstone_watch(
    nats_server: NatsServer,
) -> None:
    """The tombstone written without the ``evict`` request (a host that missed it: slow,
    cut off): the agent is in the host's memory, yet its next commands are refused, because
    the host watches the tombstone bucket. A later tombstone of an agent not in memory changes
    nothing for the others."""
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
    try:
        async with Host(host_settings(nats_server.url), Registry(EXAMPLE_AGENTS)) as host:
            ref = client.agent("counter", "missed")
            for _ in range(2):
                await ref.request("increment", {"by": 1})
            assert "counter.missed" in host.catalog.activations
            admin = Inspector(client)
            tomb = {"agent": "counter/missed", "deleted_ms": 1, "purge_after_ms": 2, "by": "t", "purged_ms": None}
            await admin.io.kv_put(admin.topology.tomb_bucket, "counter.missed", orjson.dumps(tomb))
            await eventually(lambda: "counter.missed" not in host.catalog.activations, timeout_s=10)
            with pytest.raises(AgentDeleted):
                await ref.request("increment", {"by": 1})
            with pytest.raises(AgentDeleted):
                await ref.request("get", delivery="at-most-once")
            assert len(await commits(client.nc, "counter", "missed")) == 2
            assert await client.agent("counter", "other").request("increment", {"by": 3}) == 3
    finally:
        await client.close()


async def test_retention_keeps_the_log_every_kept_snapshot_needs(nats_server: NatsServer) -> None:
    """keep_snapshots = 2 under a bucket keeping 2 snapshots per agent: the log is kept from
    the second-last snapshot; keep_snapshots = 1 is raised to the bucket's history (the
    restore path falls back to the older one); 3 cannot be met and is reported. An agent
    whose latest snapshot is corrupt restores from the older one with the right state."""
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
    settings = host_settings(nats_server.url, snapshot_every=3, snapshot_history=2)
    types = [Ledger, Journal, Archive, Counter]
    try:
        async with Host(settings, Registry(types)) as host:
            kv = await client.nc.jetstream().key_value("agt_snap")
            for i in range(12):
                for t in ("ledger", "journal", "counter"):
                    await client.agent(t, "a").request("increment", {"by": i + 1})

            async def snapshotted() -> bool:  # a snapshot still in flight is waited for, not raced
                await host.catalog.snapshot_all(5.0)
                latest = [await kv.get(f"{t}.a") for t in ("ledger", "journal")]
                return all(e.value and orjson.loads(e.value)["n"] == 12 for e in latest)

            await eventually(snapshotted)
        snaps = {t: [e for e in await kv.history(f"{t}.a") if e.value] for t in ("ledger", "journal")}
        older = {t: orjson.loads(h[0].value) for t, h in snaps.items()}
        for t, h in snaps.items():  # the stop snapshotted the last commit; an older one is kept
            assert len(h) == 2 and orjson.loads(h[1].value)["n"] == 12 and older[t]["n"] < 12
        before = {t: await commits(client.nc, t, "a") for t in ("ledger", "journal")}
        admin = Inspector(client, agents=types)
        report = await Lifecycle(admin).apply_retention()
        assert {"type": "archive", "skipped": "the snapshot bucket keeps 2 per agent, keep_snapshots is 3"} in report
        for t in ("ledger", "journal"):
            assert {"agent": f"{t}/a", "kept_from_seq": older[t]["seq"] + 1, "snapshot_seq": older[t]["seq"]} in report
            after = await commits(client.nc, t, "a")
            assert after == [c for c in before[t] if c["_seq"] > older[t]["seq"]]
            assert [c["n"] for c in after] == list(range(older[t]["n"] + 1, 13))
        assert len(await commits(client.nc, "counter", "a")) == 12  # keeps everything
        # time travel from the kept snapshot on; before it, the state is gone, and says so
        rebuilt = await admin.state_at("journal", "a")
        assert rebuilt.state.model_dump() == {"value": sum(range(1, 13))} and rebuilt.n == 12
        with pytest.raises(InternalError, match="purged"):
            await admin.state_at("journal", "a", before["journal"][0]["_seq"])
        # the latest snapshot is damaged (the bucket denies deleting one message: the key is
        # emptied and the older snapshot written back, then garbage): the restore path falls
        # back to the older one and replays the log retention kept after it
        for t, h in snaps.items():
            await js_api(client.nc, "$JS.API.STREAM.PURGE.KV_agt_snap", {"filter": f"$KV.agt_snap.{t}.a"}, 5)
            await kv.put(f"{t}.a", h[0].value)
            await kv.put(f"{t}.a", b"{not json")
        async with Host(settings, Registry(types)) as host:
            for t in ("ledger", "journal"):
                assert await client.agent(t, "a").request("increment", {"by": 100}) == 178
            assert host.stats["restores"] == 2
    finally:
        await client.close()


async def test_the_leader_bounds_a_retained_log_without_an_operator(nats_server: NatsServer) -> None:
    """A host whose type declares keep_snapshots applies retention itself every
    ``retention_sweep_s``: the log is cut while the agent runs, and the agent keeps its state."""
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
    settings = host_settings(
        nats_server.url, snapshot_every=3, snapshot_history=2, purge_sweep_s=0, retention_sweep_s=0.2
    )
    try:
        async with Host(settings, Registry([Journal, Counter])) as host:
            assert host.purge_sweep is not None
            ref = client.agent("journal", "b")
            for i in range(12):
                await ref.request("increment", {"by": i + 1})
                await client.agent("counter", "b").request("increment", {"by": 1})

            async def cut() -> bool:
                log = await commits(client.nc, "journal", "b")
                return len(log) < 12 and log[0]["n"] > 1

            await eventually(cut, timeout_s=30)
            assert host.stats["logs_retained"] >= 1
            assert len(await commits(client.nc, "counter", "b")) == 12  # keeps everything
            assert await ref.request("increment", {"by": 100}) == 178
            host.catalog.evict(host.catalog.activations["journal.b"])  # rebuilt from what is kept
            assert await ref.request("get", delivery="at-most-once") == 178
    finally:
        await client.close()
