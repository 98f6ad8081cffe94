"""The host's own reply inbox for event appends (``_nats.Inbox``), on a real server."""

from __future__ import annotations

import asyncio

import pytest

from jetagents import NatsServer
from jetagents._core.errors import Unavailable
from jetagents._nats.api import Inbox, connect, js_publish


async def test_inbox_publishes_to_a_stream_and_maps_failures(nats_server: NatsServer) -> None:
    nc = await connect(nats_server.url, name="inbox-test")
    inbox = Inbox(nc)
    await inbox.start()
    try:
        js = nc.jetstream()
        await js.add_stream(name="INBOXT", subjects=["inboxt.>"])
        acks = await asyncio.gather(
            *(js_publish(nc, f"inboxt.{i % 3}", b"{}", {"Nats-Msg-Id": f"m{i}"}, 5.0, inbox) for i in range(50))
        )
        assert sorted(a["seq"] for a in acks) == list(range(1, 51))
        assert all(a["stream"] == "INBOXT" and not a.get("duplicate") for a in acks)
        again = await js_publish(nc, "inboxt.0", b"{}", {"Nats-Msg-Id": "m0"}, 5.0, inbox)
        assert again["duplicate"] is True and again["seq"] == acks[0]["seq"]

        # nothing listens: the server answers "no responders" on the inbox
        with pytest.raises(Unavailable, match="no stream accepted"):
            await js_publish(nc, "nobody.here", b"{}", {}, 5.0, inbox)

        # something listens and never answers: the request's own timer ends the wait
        async def ignore(_msg: object) -> None:
            return None

        await nc.subscribe("silent.one", cb=ignore)
        with pytest.raises(Unavailable, match=r"not acknowledged in 0\.2s"):
            await js_publish(nc, "silent.one", b"{}", {}, 0.2, inbox)
        assert not inbox._pending  # every request cleaned up after itself
    finally:
        await inbox.close()
    with pytest.raises(Unavailable, match="closed"):
        await js_publish(nc, "inboxt.0", b"{}", {}, 5.0, inbox)
    await nc.close()
