"""A real host runs today's ``shop`` on the log its old code wrote (ADR 0052): the golden
log, transplanted into a fresh server, is replayed through the upcasters on activation, and
the new commit carries the event's version."""

from __future__ import annotations

import orjson

from jetagents import Client, ClientSettings, Host, NatsServer, Registry
from jetagents._nats.api import js_publish
from tests.golden.shop import Shop

from ..conftest import host_settings
from ..unit.test_golden import _golden
from .helpers import commits


async def test_a_host_replays_an_old_log_through_upcasters(nats_server: NatsServer) -> None:
    header, log = _golden("shop")
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
    try:
        await client.ensure_topology(partitions=8)
        for _, body in log:
            commit = orjson.loads(body)
            # the writer tokens belong to the cluster that recorded it; this one starts afresh
            commit["own"] = 0
            await js_publish(client.nc, "agt.evt.shop.golden", orjson.dumps(commit), {}, 5)
        async with Host(host_settings(nats_server.url), Registry([Shop])):
            items = await client.agent("shop", "golden").request("add", {"sku": "kiwi", "qty": 1})
        assert items == {**header["final_state"]["items"], "kiwi": 1}
        last = (await commits(client.nc, "shop", "golden"))[-1]
        assert last["events"] == [{"type": "ItemAdded", "data": {"sku": "kiwi", "qty": 1}, "v": 2}]
    finally:
        await client.close()
