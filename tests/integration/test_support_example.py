"""The support desk example (``jetagents.examples.support``) on its scripted model, end to end:
a ticket routed by triage to billing, a refund that waits for a person's approval (the action
suspended), text streamed by a specialist."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from jetagents import Client, ClientSettings, Host, NatsServer, Registry
from jetagents.examples.support import MODEL, SUPPORT_AGENTS, Followup
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


async def test_a_reminder_follows_up_on_a_ticket_waiting_for_approval_then_for_the_customer(
    desk: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Followup, "every_s", 1)  # an hour in the example; whole seconds for the server
    monkeypatch.setattr(Followup, "max_nudges", 2)
    opened = desk.agent("billing", "acme-5").request_async(
        "handle", {"text": "I was charged twice for INV-2005"}, command_id="b5", timeout=60
    )
    followup = desk.agent("followup", "acme-5")

    async def status() -> dict[str, Any]:
        return dict(await followup.request("status", delivery="at-most-once"))

    async def nudged_on_approval() -> bool:
        s = await status()
        return s["waiting"] == "approval" and s["nudges"] >= 2

    await eventually(nudged_on_approval, 30, 0.2)  # the action is suspended: the reminder is not parked behind it
    note = (await status())["notes"][0]
    assert note.startswith("ticket acme-5 still waits for approval of issue_refund") and "signal billing/acme-5" in note
    await desk.agent("billing", "acme-5").signal("approval", {"approved": True})
    assert "refunded 19.99 USD on INV-2005" in await opened

    async def closed() -> bool:
        return (await status())["waiting"] == "closed"

    await eventually(closed, 30, 0.2)  # now waiting on the customer: 2 follow-ups, then closed
    s = await status()
    assert s["nudges"] == 2 and s["notes"][-1].endswith("solved it; no answer, closed")
    assert s["notes"][-2] == "ticket acme-5: asked the customer whether billing's answer solved it"
    assert await followup.reminders() == []  # closed: the reminder is gone, nothing fires again
    # each firing ran once: one commit per firing, the follow-up count from the log
    fired = [c for c in await commits(desk.nc, "followup", "acme-5") if (c.get("j") or {}).get("k") == "fire"]
    assert len({c["cmd"] for c in fired}) == len(fired) == len(s["notes"])
