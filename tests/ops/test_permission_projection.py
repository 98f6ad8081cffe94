"""Projections under the shipped accounts (ADR 0057): the ``projector`` user reads the event
logs and writes the projections bucket, and nothing else of what hosts own; a ``client``
reads projections' rows but never the logs and never writes a row or a position."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import nats
import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from jetagents import Client, ClientSettings, Host, Registry, Unavailable
from jetagents.examples import EXAMPLE_AGENTS
from tests.conftest import host_settings
from tests.integration.helpers import eventually
from tests.ops.nats_configs import (
    CLIENT_INBOX,
    HOST_INBOX,
    OPS_NATS,
    PROJECTOR_INBOX,
    BootedConfigs,
    Node,
    Violations,
    boot,
)
from tests.projection_agents import Totals


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedConfigs]:
    booted = boot(tmp_path_factory.mktemp("perm-proj"), [Node("solo", OPS_NATS / "single.conf")], with_accounts=True)
    try:
        yield booted
    finally:
        booted.stop()


async def _refused(nc: nats.NATS, seen: Violations, subject: str, body: bytes = b"{}") -> None:
    with pytest.raises((NatsTimeout, NoRespondersError)):
        await nc.request(subject, body, timeout=0.5)
    await seen.wait_for(subject)


async def test_a_projector_reads_logs_and_writes_projections_and_nothing_else(server: BootedConfigs) -> None:
    settings = host_settings(server.url("host"), host_id="perm-proj", inbox_prefix=HOST_INBOX)
    async with Host(settings, Registry(EXAMPLE_AGENTS)):
        client = await Client.connect(
            settings=ClientSettings(nats_url=server.url("client"), partitions=8, inbox_prefix=CLIENT_INBOX)
        )
        projector = await Client.connect(
            settings=ClientSettings(nats_url=server.url("projector"), inbox_prefix=PROJECTOR_INBOX)
        )
        seen_client, seen_proj = Violations(), Violations()
        atk = await nats.connect(server.url("client"), inbox_prefix=CLIENT_INBOX, error_cb=seen_client.record)
        proj_raw = await nats.connect(server.url("projector"), inbox_prefix=PROJECTOR_INBOX, error_cb=seen_proj.record)
        stop = asyncio.Event()
        task = None
        try:
            for by in (2, 3):
                await client.agent("counter", "p1").request("increment", {"by": by})
            # the legitimate paths: the projector tails the logs and runs the projection
            async with projector.events("counter", "p1") as tail:
                first = await asyncio.wait_for(anext(aiter(tail)), 20)
            assert first.n == 1
            task = asyncio.create_task(projector.projections.runner(Totals(), lease_ttl_s=2).run(stop=stop))
            reader = client.projections.reader("totals")

            async def projected() -> bool:
                try:
                    return await reader.get("p1") == {"total": 5, "events": 2, "n": 2}
                except Unavailable:  # the bucket is not there before the first run
                    return False

            await eventually(projected, 30, 0.05)

            # a client reads rows, never the logs, never writes a row or purges the bucket
            await atk.publish("$KV.agt_proj.totals.g1.p1", b'{"total":1000}')
            await seen_client.wait_for('Publish to "$KV.agt_proj.totals.g1.p1"')
            for api in ("$JS.API.DIRECT.GET.AGT_EVT", "$JS.API.STREAM.PURGE.KV_agt_proj"):
                await _refused(atk, seen_client, api, b'{"seq":1}')
            # the projector writes no log, command or host bucket, creates no consumer
            for subject in ("agt.evt.counter.p1", "agt.cmd.counter.p1", "$KV.agt_snap.counter.p1"):
                await proj_raw.publish(subject, b"{}")
                await seen_proj.wait_for(f'Publish to "{subject}"')
            for api in (
                "$JS.API.CONSUMER.CREATE.AGT_EVT",
                "$JS.API.STREAM.PURGE.AGT_EVT",
                "$JS.API.DIRECT.GET.AGT_DLQ",
                "$JS.API.STREAM.DELETE.KV_agt_proj",
            ):
                await _refused(proj_raw, seen_proj, api)
            assert await reader.get("p1") == {"total": 5, "events": 2, "n": 2}
        finally:
            stop.set()
            if task is not None:
                await asyncio.wait_for(task, 30)
            await atk.close()
            await proj_raw.close()
            await projector.close()
            await client.close()
