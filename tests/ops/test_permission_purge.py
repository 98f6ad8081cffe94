"""The leader's purge of deleted agents under the shipped accounts (ADR 0052): hosts may not
purge logs, so the sweep over the host's own connection is refused, and over
``purge_nats_url`` (the operator user's) it purges. A server of its own: the hosts here would
otherwise enter the ring log the permission matrix reads."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import nats
import pytest
from nats.js.errors import NotFoundError

from jetagents import Client, ClientSettings, Host, Registry
from jetagents._client.inspection import Inspector
from jetagents._client.lifecycle import Lifecycle
from jetagents._core.blobref import name_of
from jetagents._nats.api import js_api
from jetagents.examples import EXAMPLE_AGENTS
from tests.conftest import host_settings
from tests.ops.nats_configs import CLIENT_INBOX, HOST_INBOX, OPERATOR_INBOX, OPS_NATS, BootedConfigs, Node, boot


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedConfigs]:
    booted = boot(tmp_path_factory.mktemp("purge"), [Node("solo", OPS_NATS / "single.conf")], with_accounts=True)
    try:
        yield booted
    finally:
        booted.stop()


async def test_the_leader_purges_as_the_operator_user_never_as_a_host(server: BootedConfigs) -> None:
    """ADR 0052: hosts may not purge logs, so the leader's sweep over its own connection is
    refused (logged, counted, the agent kept); over ``purge_nats_url`` as the operator user it
    purges the agent, blobs included, and marks the tombstone."""
    admin = await nats.connect(server.url("admin"))
    op = await Client.connect(settings=ClientSettings(nats_url=server.url("operator"), inbox_prefix=OPERATOR_INBOX))
    life = Lifecycle(Inspector(op))
    base = host_settings(server.url("host"), host_id="perm-purge", inbox_prefix=HOST_INBOX, purge_sweep_s=0.2)
    registry = Registry(EXAMPLE_AGENTS)

    async def stored() -> int:
        info = await js_api(admin, "$JS.API.STREAM.INFO.AGT_EVT", {"subjects_filter": "agt.evt.counter.purged"}, 5)
        return sum((info["state"].get("subjects") or {}).values())

    async def purged() -> bool:
        return bool((await life.tombstones())["counter.purged"].get("purged_ms"))

    try:
        async with Host(base, registry) as host:
            client = await Client.connect(
                settings=ClientSettings(nats_url=server.url("client"), partitions=8, inbox_prefix=CLIENT_INBOX)
            )
            try:
                assert await client.agent("counter", "purged").request("increment", {"by": 1}) == 1
            finally:
                await client.close()
            blobs = await admin.jetstream().object_store("agt_blobs")
            await blobs.put(name_of(b'"big"', "counter.purged"), b'"big"')
            await life.delete("counter", "purged", grace_s=0, by="op")
            sweep = host.purge_sweep
            assert sweep is not None
            for _ in range(1500):
                if sweep.failures >= 2:
                    break
                await asyncio.sleep(0.02)
            assert sweep.failures >= 2  # (a run before the tombstone had nothing to do, and succeeded)
            assert await stored() == 1 and not await purged()
        with_operator = base.model_copy(
            update={"purge_nats_url": server.url("operator"), "purge_inbox_prefix": OPERATOR_INBOX}
        )
        async with Host(with_operator, registry):
            for _ in range(1500):
                if await purged():
                    break
                await asyncio.sleep(0.02)
            assert await purged() and await stored() == 0
            with contextlib.suppress(NotFoundError):  # nats-py's answer for an empty bucket
                assert name_of(b'"big"', "counter.purged") not in {info.name for info in await blobs.list()}
    finally:
        await op.close()
        await admin.close()
