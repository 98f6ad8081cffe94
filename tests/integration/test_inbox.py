"""The one reply inbox (``_nats.inbox``): the host's event appends, the client's sends and the
adapter's JetStream API calls all wait on it, on a real server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jetagents import NatsServer
from jetagents._core.errors import Unavailable
from jetagents._nats.api import DirectReader, connect, js_api, js_publish
from jetagents._nats.inbox import Inbox, shared_inbox


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


async def test_the_adapters_requests_share_one_inbox_per_connection(nats_server: NatsServer) -> None:
    nc = await connect(nats_server.url, name="shared-inbox-test")
    try:
        js = nc.jetstream()  # (nats-py's own requests: its own inbox subscription)
        await js.add_stream(name="SHAREDT", subjects=["sharedt.>"], allow_direct=True)
        before = len(nc._subs)
        # concurrent first users: one inbox, one subscription
        infos = await asyncio.gather(*(js_api(nc, "$JS.API.INFO", None, 5.0) for _ in range(5)))
        assert all("memory" in info for info in infos)
        inbox = await shared_inbox(nc)
        assert inbox.started and len(nc._subs) == before + 1
        ack = await js_publish(nc, "sharedt.a", b"{}", {"Nats-Msg-Id": "s1"}, 5.0)  # no inbox of its own
        assert ack["seq"] == 1
        reader = DirectReader(nc)
        await reader.start()
        try:
            assert await reader.last("SHAREDT", "sharedt.b", 5.0) is None
            for i in (2, 3):
                await js_publish(nc, "sharedt.a", b"{}", {"Nats-Msg-Id": f"s{i}"}, 5.0)
            # batches of 2: each answer is several messages, to a listener on the same inbox
            msgs = await reader.read_subject("SHAREDT", "sharedt.a", 1, 2, 5.0)
            assert [m.headers["Nats-Sequence"] for m in msgs if m.headers] == ["1", "2", "3"]
        finally:
            await reader.stop()
        assert await shared_inbox(nc) is inbox and len(nc._subs) == before + 1
        assert not inbox._pending and not inbox._listeners

        with pytest.raises(Unavailable, match="no responders"):
            await js_api(nc, "nobody.listens", None, 5.0)

        async def ignore(_msg: object) -> None:
            return None

        await nc.subscribe("silent.api", cb=ignore)
        with pytest.raises(Unavailable, match="timed out"):
            await js_api(nc, "silent.api", None, 0.2)
        assert not inbox._pending
    finally:
        await nc.close()


async def test_one_timer_ends_each_request_at_its_own_deadline(nats_server: NatsServer) -> None:
    """Requests share the inbox's one loop timer: a long wait started first does not hold a
    shorter one back, an answered request is not failed later, and ended requests' deadlines
    are dropped from the heap rather than kept until they are due."""
    nc = await connect(nats_server.url, name="inbox-timer")
    inbox = Inbox(nc)
    await inbox.start()
    loop = asyncio.get_running_loop()

    async def ignore(_msg: object) -> None:
        return None

    async def echo(msg: Any) -> None:
        await msg.respond(msg.data)

    try:
        await nc.subscribe("timer.silent", cb=ignore)
        await nc.subscribe("timer.echo", cb=echo)
        await nc.flush()
        long = asyncio.ensure_future(inbox.request("timer.silent", b"", None, 60.0))
        started = loop.time()
        with pytest.raises(TimeoutError):
            await inbox.request("timer.silent", b"", None, 0.3)
        assert loop.time() - started >= 0.3
        assert not long.done()  # its own deadline has not come
        answered = await inbox.request("timer.echo", b"hi", None, 0.2)
        assert answered.data == b"hi"
        for _ in range(3000):  # each answered at once: their deadlines are ended ones
            await inbox.request("timer.echo", b"", None, 30.0)
        assert len(inbox._deadlines) < 1500  # rebuilt from the pending ones, not 3,000 kept
        await asyncio.sleep(0.3)  # past the answered request's deadline: nothing is failed
        assert not long.done()
        long.cancel()
        with pytest.raises(asyncio.CancelledError):
            await long
    finally:
        await inbox.close()
        await nc.close()


async def test_replies_go_from_the_read_loop_to_their_request_without_the_subscription_queue(
    nats_server: NatsServer,
) -> None:
    """The inbox takes its replies as the read loop parses them (``deliver_directly``): none
    passes through nats-py's per-subscription queue and task, which counts each message it
    queues in ``_received``; the requests still get their own replies, and after the inbox
    unsubscribes nothing is handed to it any more."""
    nc = await connect(nats_server.url, name="inbox-direct-test")
    inbox = Inbox(nc)
    await inbox.start()

    async def echo(msg: Any) -> None:
        await msg.respond(b"re:" + msg.data)

    await nc.subscribe("echo.direct", cb=echo)
    try:
        replies = await asyncio.gather(*(inbox.request("echo.direct", str(i).encode(), None, 5.0) for i in range(40)))
        assert [r.data for r in replies] == [b"re:" + str(i).encode() for i in range(40)]
        sid = inbox._sub._id
        assert inbox._sub._received == 0  # not one went through nats-py's queue
        assert sid in nc._direct
    finally:
        await inbox.close()
    assert sid not in nc._subs
    # a message still in flight for the closed subscription: dropped, not handed on
    await nc._process_msg(sid, b"x", b"", b"late", None)
    assert sid not in nc._direct
    await nc.close()
