"""The KV primitives of the adapter (``jetagents._nats.kv``) against a real nats-server: what
the shared state and the cluster coordinator build their reads and compare-and-set on."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from jetagents import NatsServer
from jetagents._core.errors import Unavailable
from jetagents._core.wire import Subjects
from jetagents._nats.api import Topology, connect, ensure_topology
from jetagents._nats.kv import (
    ERR_WRONG_LAST_SEQUENCE,
    JetStreamStore,
    KvConflict,
    ensure_stream,
    kv_subject,
    last_by_subject,
    publish_expecting,
    stream_info,
)
from jetagents.testing.server import NatsCluster

BUCKET = "kvtest"
CONFIG = {
    "name": f"KV_{BUCKET}",
    "subjects": [f"$KV.{BUCKET}.>"],
    "max_msgs_per_subject": 1,
    "discard": "new",
    "allow_direct": True,
    "num_replicas": 1,
    "storage": "file",
}


async def test_ensure_read_and_compare_and_set(nats_server: NatsServer) -> None:
    nc = await connect(nats_server.url, name="kv-test")
    try:
        # several processes may ensure at once: every one succeeds, one stream results
        await asyncio.gather(*(ensure_stream(nc, CONFIG, 5.0) for _ in range(4)))
        await ensure_stream(nc, {**CONFIG, "max_msgs_per_subject": 5}, 5.0)  # existing: left as it is
        info = await stream_info(nc, CONFIG["name"], 5.0)
        assert info["config"]["max_msgs_per_subject"] == 1

        subject = kv_subject(BUCKET, "a.b")
        assert subject == "$KV.kvtest.a.b"
        assert await last_by_subject(nc, CONFIG["name"], subject, 5.0) is None

        ack = await publish_expecting(nc, subject, b'{"n":1}', 5.0, expected_rev=0)
        first = int(ack["seq"])
        entry = await last_by_subject(nc, CONFIG["name"], subject, 5.0)
        assert entry is not None and (entry.data, entry.revision, entry.deleted) == (b'{"n":1}', first, False)

        with pytest.raises(KvConflict) as err:  # created already: revision 0 is stale
            await publish_expecting(nc, subject, b'{"n":2}', 5.0, expected_rev=0)
        assert err.value.err_code == ERR_WRONG_LAST_SEQUENCE
        ack = await publish_expecting(nc, subject, b'{"n":2}', 5.0, expected_rev=first, headers={"Nats-Msg-Id": "x"})
        assert int(ack["seq"]) > first
        ack = await publish_expecting(nc, subject, b"", 5.0, headers={"KV-Operation": "DEL"})  # unconditional
        entry = await last_by_subject(nc, CONFIG["name"], subject, 5.0)
        assert entry is not None and entry.deleted and entry.revision == int(ack["seq"])
    finally:
        await nc.drain()


async def test_ensure_raises_the_limits_it_is_asked_to_and_never_lowers_them(nats_server: NatsServer) -> None:
    """A KV history made smaller by an older version is raised on start (ADR 0053), by
    several processes at once, keeping what the stream holds; a smaller one never lowers it."""
    ncs = [await connect(nats_server.url, name=f"kv-raise-{i}") for i in range(4)]
    nc = ncs[0]
    raise_history = ("max_msgs_per_subject",)
    try:
        await ensure_stream(nc, CONFIG, 5.0)  # as the old version made it: one value per key
        subject = kv_subject(BUCKET, "k")
        await publish_expecting(nc, subject, b"v0", 5.0)
        want = {**CONFIG, "max_msgs_per_subject": 5}
        infos = await asyncio.gather(*(ensure_stream(c, want, 5.0, at_least=raise_history) for c in ncs))
        assert [i["config"]["max_msgs_per_subject"] for i in infos] == [5] * 4
        assert (await stream_info(nc, CONFIG["name"], 5.0))["state"]["messages"] == 1  # v0 kept
        for i in range(1, 7):
            await publish_expecting(nc, subject, f"v{i}".encode(), 5.0)
        info = await ensure_stream(nc, {**CONFIG, "max_msgs_per_subject": 2}, 5.0, at_least=raise_history)
        assert info["config"]["max_msgs_per_subject"] == 5
        info = await stream_info(nc, CONFIG["name"], 5.0)
        assert info["state"]["messages"] == 5  # v2..v6: the limit is 5
        assert info["config"]["allow_direct"] is True and info["config"]["discard"] == "new"
    finally:
        for c in ncs:
            await c.drain()


async def test_a_scan_after_a_revision_waits_for_a_replica_that_has_it(nats_server: NatsServer) -> None:
    """Admission checks (ADR 0060) scan right after their own write: ``after_rev`` makes the
    batched direct get (any replica may answer it) hold every write up to that revision. The
    answer says up to which sequence it read; one short of the revision is asked again, and
    never having it is ``Unavailable`` rather than a stale read taken as the truth."""
    nc = await connect(nats_server.url, name="kv-scan")
    try:
        store = JetStreamStore(nc, "scantest", timeout_s=5.0)
        await store.ensure()
        rev = await store.create("place.a", {"host": "h1"})
        await store.create("member.h1", {})
        assert set(await store.scan("place.", after_rev=rev)) == {"place.a"}
        assert await store.scan("none.", after_rev=0) == {}
        with pytest.raises(Unavailable):  # a revision no replica has (yet)
            await store.scan("place.", after_rev=rev + 100)
        with pytest.raises(Unavailable):  # nothing under the prefix: not even the caller's write
            await store.scan("none.", after_rev=rev)
    finally:
        await nc.drain()


async def test_a_scan_of_more_keys_than_one_multi_last_answers_reads_them_page_by_page(
    nats_server: NatsServer,
) -> None:
    """The server answers a ``multi_last`` direct get for at most 1024 keys (status 413
    beyond): placement scans every ``place.`` record, so the 1025th agent placed with
    resources failed to place, and so did every one after it. Past the limit the scan pages."""
    nc = await connect(nats_server.url, name="kv-scan-big")
    try:
        store = JetStreamStore(nc, "scanbig", timeout_s=10.0)
        await store.ensure()
        n = 1030  # past the 1024 keys of one multi_last, and past one page (SCAN_PAGE)
        revs = await asyncio.gather(*(store.put(f"place.a{i}", {"i": i}) for i in range(n)))
        await store.put("member.h1", {})
        rev = await store.put("place.a7", {"i": -7})  # rewritten: the last value counts
        await store.remove("place.a8")  # removed: not listed
        found = await store.scan("place.", after_rev=rev)
        assert set(found) == {f"place.a{i}" for i in range(n)} - {"place.a8"}
        assert found["place.a7"].value == {"i": -7} and found["place.a7"].rev == rev
        assert found["place.a9"].value == {"i": 9} and found["place.a9"].rev == revs[9]
        with pytest.raises(Unavailable):  # a revision no replica has (yet): not a stale read
            await store.scan("place.", after_rev=rev + 100)
    finally:
        await nc.drain()


async def test_hosts_starting_at_once_on_a_cluster_raise_an_old_snapshot_bucket_once(nats_cluster: NatsCluster) -> None:
    """Six hosts' start (``ensure_topology``), two on each node of a 3-node cluster, at once,
    on an R3 deployment an older version made (its snapshot bucket with one snapshot per
    key): every start succeeds, the bucket keeps ``snapshot_history`` and the snapshot it had."""
    ncs = [await connect(url, name=f"kv-start-{i}") for i, url in enumerate(nats_cluster.urls * 2)]
    topo = Topology(Subjects("agt"), partitions=8, replicas=3, snapshot_history=5)
    try:
        await ensure_topology(ncs[0], replace(topo, snapshot_history=1), 20.0)
        await publish_expecting(ncs[0], kv_subject("agt_snap", "counter.a"), b'{"n": 1}', 10.0)
        await asyncio.gather(*(ensure_topology(nc, topo, 10.0) for nc in ncs))
        info = await stream_info(ncs[1], "KV_agt_snap", 10.0)
        assert info["config"]["max_msgs_per_subject"] == 5 and info["config"]["num_replicas"] == 3
        assert info["state"]["messages"] == 1
    finally:
        for nc in ncs:
            await nc.drain()
