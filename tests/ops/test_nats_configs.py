"""The cluster and supercluster configs of ``ops/nats/`` booted natively: a host and a
client with the shipped users, R3 streams, placement across gateways, and the permissions."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import orjson
import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from jetagents import Client, ClientSettings, Host, Registry
from jetagents._core.wire import Subjects
from jetagents._nats.api import Topology, ensure_topology, js_api, kv_bucket_config, raise_limits
from jetagents.examples import EXAMPLE_AGENTS
from tests.conftest import REPO, host_settings
from tests.ops.nats_configs import CLIENT_INBOX, HOST_INBOX, OPS_NATS, BootedConfigs, Node, Violations, boot


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedConfigs]:
    tmp = tmp_path_factory.mktemp("cluster")
    booted = boot(tmp, [Node(f"nats-{i}", OPS_NATS / "cluster.conf") for i in (1, 2, 3)])
    try:
        yield booted
    finally:
        booted.stop()


async def _stream(url: str, name: str) -> dict[str, object]:
    nc = await nats.connect(url.split(","))
    try:
        return await js_api(nc, f"$JS.API.STREAM.INFO.{name}", None, 5)
    finally:
        await nc.close()


async def test_three_node_cluster_runs_r3_with_the_host_and_client_users(cluster: BootedConfigs) -> None:
    settings = host_settings(cluster.url("host"), replicas=3, host_id="ops-cluster", inbox_prefix=HOST_INBOX)
    async with Host(settings, Registry(EXAMPLE_AGENTS)):
        client = await Client.connect(
            settings=ClientSettings(nats_url=cluster.url("client", "nats-3"), partitions=8, inbox_prefix=CLIENT_INBOX)
        )
        try:
            ref = client.agent("counter", "r3")
            assert await ref.request("increment", {"by": 2}) == 2
            assert await ref.request("increment", {"by": 1}, delivery="at-most-once") == 3
        finally:
            await client.close()
        # the compose demo workload, as the client user, through every node
        demo = await asyncio.create_subprocess_exec(
            sys.executable,
            str(REPO / "ops" / "demo" / "workload.py"),
            env={
                **os.environ,
                "JETAGENTS_NATS_URL": cluster.url("client"),
                "JETAGENTS_PARTITIONS": "8",
                "JETAGENTS_INBOX_PREFIX": CLIENT_INBOX,
            },
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(demo.communicate(), 60)
        assert demo.returncode == 0 and b"OK:" in out, out.decode()
    for name in ("AGT_CMD", "AGT_CMDH", "AGT_EVT", "AGT_DLQ", "AGT_OUT", "KV_agt_snap", "KV_agt_meta"):
        info = await _stream(cluster.url("admin"), name)
        assert info["config"]["num_replicas"] == 3, name  # type: ignore[index]
        assert info["config"]["storage"] == "file", name  # type: ignore[index]
        peers = [info["cluster"]["leader"]] + [r["name"] for r in info["cluster"]["replicas"]]  # type: ignore[index]
        assert sorted(peers) == ["nats-1", "nats-2", "nats-3"], name


async def test_permissions_clients_send_only_and_only_admin_deletes(cluster: BootedConfigs) -> None:
    seen = Violations()
    client = await nats.connect(cluster.url("client").split(","), error_cb=seen.record, inbox_prefix=CLIENT_INBOX)
    admin = await nats.connect(cluster.url("admin").split(","))
    # the streams exist (a host made them in the test above, or the admin makes them now)
    await ensure_topology(admin, Topology(Subjects("agt"), partitions=8, replicas=3))
    host_seen = Violations()
    host = await nats.connect(cluster.url("host").split(","), error_cb=host_seen.record, inbox_prefix=HOST_INBOX)
    try:
        before = (await js_api(admin, "$JS.API.STREAM.INFO.AGT_EVT", None, 5))["state"]["messages"]

        # a client cannot forge an event, read a log or a snapshot, or snoop on calls
        with pytest.raises((NatsTimeout, NoRespondersError)):
            await client.request("agt.evt.counter.forged", b"{}", timeout=0.3)
        await seen.wait_for('Publish to "agt.evt.counter.forged"')
        with pytest.raises((NatsTimeout, NoRespondersError)):
            await client.request("$JS.API.DIRECT.GET.AGT_EVT.agt.evt.counter.r3", b"", timeout=0.3)
        await seen.wait_for("DIRECT.GET")
        await client.subscribe("agt.call.>")
        await seen.wait_for('Subscription to "agt.call.>"')
        assert (await js_api(admin, "$JS.API.STREAM.INFO.AGT_EVT", None, 5))["state"]["messages"] == before

        # neither a client nor a host can delete or purge a stream
        for conn, log in ((client, seen), (host, host_seen)):
            with pytest.raises((NatsTimeout, NoRespondersError)):
                await conn.request("$JS.API.STREAM.DELETE.AGT_EVT", b"", timeout=0.3)
            await log.wait_for("STREAM.DELETE.AGT_EVT")
            with pytest.raises((NatsTimeout, NoRespondersError)):
                await conn.request("$JS.API.STREAM.PURGE.AGT_CMD", b"", timeout=0.3)
            await log.wait_for("STREAM.PURGE.AGT_CMD")
        await _stream(cluster.url("admin"), "AGT_EVT")  # still there

        # but a client may send commands and calls, and the admin may delete
        ack = orjson.loads((await client.request("agt.cmd.counter.perm", b'{"action":"get"}', timeout=5)).data)
        assert ack["stream"] == "AGT_CMD"
        await js_api(admin, "$JS.API.STREAM.CREATE.SCRATCH", {"name": "SCRATCH", "subjects": ["scratch.>"]}, 5)
        assert (await js_api(admin, "$JS.API.STREAM.DELETE.SCRATCH", None, 5))["success"] is True
    finally:
        for nc in (client, admin, host):
            await nc.close()


async def test_an_old_snapshot_bucket_is_raised_by_the_admin_never_by_a_host(cluster: BootedConfigs) -> None:
    """ADR 0053: a snapshot bucket an older version made keeps one snapshot per agent. A host
    may not update a stream (its update is refused, the bucket left as it is); the admin's
    ``place-streams`` raises it to ``--snapshot-history``, keeping its snapshots. Another
    subject root (``sx``), so the other tests' streams are not touched."""
    admin = await nats.connect(cluster.url("admin").split(","))
    host_seen = Violations()
    host = await nats.connect(cluster.url("host").split(","), error_cb=host_seen.record, inbox_prefix=HOST_INBOX)
    old = kv_bucket_config("sx_snap", 3, history=1)
    try:
        await js_api(admin, "$JS.API.STREAM.CREATE.KV_sx_snap", old, 5)
        await admin.request("$KV.sx_snap.counter.a", b'{"n": 1}', timeout=5)
        info = await js_api(host, "$JS.API.STREAM.INFO.KV_sx_snap", None, 5)
        wanted = {**old, "max_msgs_per_subject": 3}
        after = await raise_limits(host, info, wanted, ("max_msgs_per_subject",), 0.5)
        await host_seen.wait_for("STREAM.UPDATE.KV_sx_snap")
        assert after["config"]["max_msgs_per_subject"] == 1
        argv = [sys.executable, str(REPO / "ops" / "scripts" / "place-streams"), "--nats-url", cluster.url("admin")]
        argv += ["--cluster", "jetagents", "--subject-root", "sx", "--partitions", "8", "--snapshot-history", "3"]
        place = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=60)
        assert place.returncode == 0, place.stdout + place.stderr
        info = await js_api(admin, "$JS.API.STREAM.INFO.KV_sx_snap", None, 5)
        assert info["config"]["max_msgs_per_subject"] == 3 and info["config"]["num_replicas"] == 3
        assert info["state"]["messages"] == 1  # the snapshot it had is kept
    finally:
        await host.close()
        await admin.close()


async def test_supercluster_placed_streams_answer_through_the_other_cluster(tmp_path: Path) -> None:
    nodes = [Node(f"{r}-{i}", OPS_NATS / "supercluster" / f"{r}.conf") for r in ("east", "west") for i in (1, 2, 3)]
    sc = boot(tmp_path, nodes, timeout_s=60)
    try:
        # the admin, connected to the west, places the streams in the east by tag
        place = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                str(REPO / "ops" / "scripts" / "place-streams"),
                "--nats-url", sc.url("admin", "west-2"),
                "--tag", "region:east",
                "--replicas", "3",
                "--partitions", "8",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        assert place.returncode == 0, place.stdout + place.stderr
        placed = [orjson.loads(line) for line in place.stdout.splitlines()]
        placed_names = {p["stream"] for p in placed}
        assert placed_names == {
            *("AGT_CMD", "AGT_CMDH", "AGT_EVT", "AGT_DLQ", "AGT_OUT", "KV_agt_snap", "KV_agt_meta"),
            # the patterns' objects (ADRs 0049, 0050, 0057), which hosts would make where they run
            *("AGT_PUB", "KV_agt_subs", "KV_agt_coord", "AGT_WORK", "AGT_WORKDLQ", "KV_agt_proj"),
        }
        assert all(p["cluster"] == "east" and p["replicas"] == 3 for p in placed), placed

        # a host in the east, a client that only knows the west
        east = sc.url("host", "east-1", "east-2", "east-3")
        async with Host(
            host_settings(east, replicas=3, host_id="east-host", inbox_prefix=HOST_INBOX), Registry(EXAMPLE_AGENTS)
        ):
            west = sc.url("client", "west-1", "west-2", "west-3")
            settings = ClientSettings(nats_url=west, partitions=8, inbox_prefix=CLIENT_INBOX)
            client = await Client.connect(settings=settings)
            try:
                ref = client.agent("counter", "geo")
                assert await ref.request("increment", {"by": 5}) == 5  # durable, exactly-once
                assert await ref.request("increment", {"by": 1}, delivery="at-most-once") == 6  # core call
                assert await ref.request("get", delivery="at-least-once") == 6
            finally:
                await client.close()
        info = await _stream(sc.url("admin", "west-1"), "AGT_EVT")
        assert info["cluster"]["name"] == "east"  # type: ignore[index]
        assert info["state"]["messages"] == 2  # type: ignore[index]
    finally:
        sc.stop()
