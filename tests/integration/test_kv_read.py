"""The adapter's one KV read (``_nats.kv.last_by_subject`` and ``kv_get``) and every KV user
on it (the host's ``KvBucket``, the cluster store, the shared state), against real
nats-servers: an absent, deleted or purged key reads as None, the revision is the one the
write returned, "JetStream does not answer" is ``Unavailable``, and on an R3 bucket a read
through any node sees the write just made through another (the read goes to the leader)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from jetagents import NatsServer
from jetagents._core.errors import Unavailable
from jetagents._nats.api import connect, ensure_stream, kv_bucket_config
from jetagents._nats.buckets import KvBucket
from jetagents._nats.kv import (
    InvalidKey,
    JetStreamStore,
    kv_get,
    kv_subject,
    last_by_subject,
    publish_expecting,
)
from jetagents._nats.statekv import StateBucket
from jetagents.testing.server import NatsCluster


async def test_absent_deleted_and_purged_keys_read_as_none_and_revisions_are_the_writes(
    nats_server: NatsServer,
) -> None:
    nc = await connect(nats_server.url, name="kv-read")
    try:
        # the host's buckets are made without direct gets (ensure_topology), the cluster
        # store's and the state's with them: the read is the same on both
        await ensure_stream(nc, kv_bucket_config("snap", 1, history=3), 5.0)
        store = JetStreamStore(nc, "clu", timeout_s=5.0)
        await store.ensure()
        state = StateBucket(nc, "st", "ST_CTR", "st.ctr.>", timeout_s=5.0)
        await state.ensure(replicas=1, max_value_bytes=1024)
        snaps = await KvBucket.open(nc, "snap", 5.0)

        for bucket in ("snap", "clu", "st"):
            assert await kv_get(nc, bucket, "a.b", 5.0) is None  # absent
        assert await snaps.get("a.b") is None and await store.get("a.b") is None and await state.last("a.b") is None

        rev = await snaps.put("a.b", b"v1")  # revision: the write's stream sequence
        assert await snaps.put("a.c", b"") == rev + 1
        entry = await kv_get(nc, "snap", "a.b", 5.0)
        assert entry is not None and (entry.data, entry.revision) == (b"v1", rev)
        assert await snaps.get("a.b") == b"v1" and await snaps.get("a.c") == b""  # empty is not absent
        rev = await store.put("k", {"n": 1})
        found = await store.get("k")
        assert found is not None and (found.value, found.rev) == ({"n": 1}, rev)
        rev = await state.cas("k", b"s1", 0, "m1")
        last = await state.last("k")
        assert last is not None and (last.data, last.revision, last.deleted) == (b"s1", rev, False)

        # deleted: a delete marker reads as None; the raw read keeps it and its revision,
        # which the shared state compares-and-sets on
        await snaps.put("a.b", b"v2")
        await snaps.delete("a.b")
        assert await snaps.get("a.b") is None and await kv_get(nc, "snap", "a.b", 5.0) is None
        assert await snaps.history("a.b") == [b"v1", b"v2"]  # what the bucket keeps, markers left out
        ack = await publish_expecting(nc, kv_subject("st", "k"), b"", 5.0, headers={"KV-Operation": "DEL"})
        marker = await state.last("k")
        assert marker is not None and marker.deleted and marker.revision == int(ack["seq"])
        assert await kv_get(nc, "st", "k", 5.0) is None
        rev = await state.cas("k", b"s2", marker.revision, "m2")  # the marker's revision is the one to expect
        entry = await kv_get(nc, "st", "k", 5.0)
        assert entry is not None and (entry.data, entry.revision) == (b"s2", rev)

        # purged: a purge marker (as nats-py's ``KeyValue.purge`` writes it) and a stream
        # purge of the key's subject (the cluster store's ``remove``) both read as None
        purge = {"KV-Operation": "PURGE", "Nats-Rollup": "sub"}
        await publish_expecting(nc, kv_subject("snap", "a.c"), b"", 5.0, headers=purge)
        assert await snaps.get("a.c") is None and await snaps.history("a.c") == []
        await store.remove("k")
        assert await store.get("k") is None and await last_by_subject(nc, "KV_clu", kv_subject("clu", "k"), 5.0) is None
        assert await store.create("k", {"n": 2}) > 0  # absent again: created from revision 0
    finally:
        await nc.drain()


async def test_a_key_that_would_name_other_subjects_is_refused_before_it_is_sent(nats_server: NatsServer) -> None:
    nc = await connect(nats_server.url, name="kv-keys")
    try:
        await ensure_stream(nc, kv_bucket_config("meta", 1), 5.0)
        bucket = await KvBucket.open(nc, "meta", 5.0)
        for bad in ("", "a b", "a.*", ">", "a.>", ".a", "a.", "a..b", "a\r\nPUB x 1"):
            with pytest.raises(InvalidKey):
                await bucket.get(bad)
            with pytest.raises(InvalidKey):
                await bucket.put(bad, b"x")
        assert await bucket.put("counter.a-1_=/", b"x") > 0
    finally:
        await nc.drain()


class _CoreOnly(NatsServer):
    """A nats-server without JetStream: every ``$JS.API`` request has no responders."""

    def config_text(self) -> str:
        return f"server_name: {self.name}\nlisten: {self.host}:{self.port}\nhttp: {self.host}:{self.http_port}\n"


async def test_no_responders_and_a_timeout_are_unavailable(tmp_path: Path, nats_server: NatsServer) -> None:
    core = _CoreOnly(data_dir=tmp_path / "core", name="core-only")
    core.spawn()
    try:
        core.wait_ready(jetstream=False)
        nc = await connect(core.url, name="kv-no-js")
        try:
            with pytest.raises(Unavailable, match="no responders"):
                await kv_get(nc, "snap", "a", 5.0)
            with pytest.raises(Unavailable, match="snap"):
                await KvBucket.open(nc, "snap", 5.0)
        finally:
            await nc.close()
    finally:
        core.stop()

    nc = await connect(nats_server.url, name="kv-paused")
    try:
        await ensure_stream(nc, kv_bucket_config("snap", 1), 5.0)
        bucket = await KvBucket.open(nc, "snap", 5.0)
        store = JetStreamStore(nc, "snap", timeout_s=0.3)
        paused = KvBucket(nc, "snap", 0.3)
        assert nats_server.proc is not None
        os.kill(nats_server.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(Unavailable, match="timed out"):
                await paused.get("a")
            with pytest.raises(Unavailable, match="timed out"):
                await store.get("a")
        finally:
            os.kill(nats_server.proc.pid, signal.SIGCONT)
        assert await bucket.get("a") is None  # answered again
    finally:
        await nc.close()


async def test_on_an_r3_bucket_every_node_reads_the_write_just_made_through_another(
    nats_cluster: NatsCluster,
) -> None:
    """The read goes to the stream leader, so a reader connected to a follower never sees an
    older value than one already acknowledged (a direct get may: any replica answers it).
    The host's bucket (no direct gets) and the cluster store's (direct gets allowed) alike."""
    ncs = [await connect(url, name=f"kv-r3-{i}") for i, url in enumerate(nats_cluster.urls)]
    try:
        await ensure_stream(ncs[0], kv_bucket_config("meta", 3), 20.0)
        store = JetStreamStore(ncs[0], "clu", replicas=3, timeout_s=10.0)
        await store.ensure()
        writer = await KvBucket.open(ncs[0], "meta", 10.0)
        readers = [await KvBucket.open(nc, "meta", 10.0) for nc in ncs]
        stores = [JetStreamStore(nc, "clu", replicas=3, timeout_s=10.0) for nc in ncs]
        rev = 0
        for i in range(20):
            await writer.put("agent.a", b"%d" % i)
            rev = await (store.create("k", {"i": i}) if i == 0 else store.update("k", {"i": i}, rev))
            got = await asyncio.gather(*(r.get("agent.a") for r in readers), *(s.get("k") for s in stores))
            assert got[:3] == [b"%d" % i] * 3, (i, got)
            assert [(e.value, e.rev) if e else None for e in got[3:]] == [({"i": i}, rev)] * 3, (i, got)
        await writer.delete("agent.a")
        assert await asyncio.gather(*(r.get("agent.a") for r in readers)) == [None] * 3
    finally:
        for nc in ncs:
            await nc.drain()
