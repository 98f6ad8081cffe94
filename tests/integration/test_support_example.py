"""The support desk example (``jetagents.examples.support``) on its scripted model, end to end:
a ticket routed by triage to billing, a refund that waits for a person's approval (the action
suspended), text streamed by a specialist."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from jetagents import Client, ClientSettings, Host, NatsServer, Registry
from jetagents.examples.support import MODEL, SUPPORT_AGENTS
from tests.conftest import host_settings
from tests.integration.helpers import commits, eventually


@pytest.fixture
async def desk(nats_server: NatsServer) -> AsyncIterator[Client]:
    async with Host(host_settings(nats_server.url), Registry(SUPPORT_AGENTS)):
        client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
        try:
            yield client
        finally:
            await client.close()


async def test_a_refund_ticket_waits_for_approval_and_a_follow_up_streams(desk: Client) -> None:
    assert MODEL.scripted  # no JETAGENTS_MODEL in the tests
    opened = desk.agent("triage", "acme-1").request_async(
        "open", {"text": "I was charged twice for INV-2002"}, command_id="t1", timeout=60
    )
    billing = desk.agent("billing", "acme-1")

    async def suspended() -> bool:
        return any(c["j"]["k"] == "wait" for c in await commits(desk.nc, "billing", "acme-1") if c.get("j"))

    await eventually(suspended, 30, 0.1)  # triage's call (its step #1) waits on the refund's approval
    assert await billing.signal("approval", {"approved": True}) == {"delivered": "triage.acme-1:t1#1"}
    ticket = await opened
    assert ticket["specialist"] == "billing"
    assert ticket["answer"] == (
        "Billing here. INV-2002: 19.99 USD, paid twice on 2026-11-28; refunded 19.99 USD on INV-2002. Anything else?"
    )

    stream = desk.agent("tech", "acme-2").stream("handle", {"text": "the api is slow"}, timeout=20)
    chunks = [c["delta"] async for c in stream]
    assert len(chunks) > 3 and "".join(chunks) == stream.result
    assert stream.result == "Tech here. api: degraded (p99 2.3 s); api: restarted, healthy."
