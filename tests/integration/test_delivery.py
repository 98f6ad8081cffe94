"""The three delivery modes, futures, the typed proxy, exactly-once re-sends."""

from __future__ import annotations

import asyncio

import pytest

from jetagents import (
    AgentTimeout,
    Client,
    ClientSettings,
    DeadlineExceeded,
    DomainError,
    Host,
    NatsServer,
    Registry,
    Unavailable,
)
from jetagents.examples import EXAMPLE_AGENTS, Account, Counter
from tests.conftest import host_settings
from tests.integration.helpers import commits, eventually

MODES = ["at-most-once", "at-least-once", "exactly-once"]


@pytest.mark.parametrize("mode", MODES)
async def test_request_each_mode(host: Host, client: Client, mode: str) -> None:
    ref = client.agent("counter", f"m-{mode}")
    assert await ref.request("increment", {"by": 2}, delivery=mode) == 2
    assert await ref.request("increment", {"by": 3}, delivery=mode) == 5
    assert await ref.request("get", delivery=mode) == 5
    # the event log holds exactly the two state changes, numbered without a gap
    log = await commits(client.nc, "counter", f"m-{mode}")
    assert [c["n"] for c in log] == [1, 2]
    assert [c["events"][0]["data"]["by"] for c in log] == [2, 3]


async def test_send_is_fire_and_forget(host: Host, client: Client) -> None:
    ref = client.agent("counter", "ff")
    ids = [await ref.send("increment", {"by": 1}) for _ in range(5)]
    assert len(set(ids)) == 5
    await eventually(lambda: ref.request("get", delivery="at-most-once"), 10)

    async def five() -> bool:
        return await ref.request("get", delivery="at-most-once") == 5

    await eventually(five, 10)


async def test_request_async_futures_gather(host: Host, client: Client) -> None:
    futs = [client.agent("counter", f"g{i % 7}").request_async("increment", {"by": 1}) for i in range(70)]
    results = await asyncio.gather(*futs)
    assert len(results) == 70
    totals = await asyncio.gather(*[client.agent("counter", f"g{i}").request("get") for i in range(7)])
    assert totals == [10] * 7


async def test_per_agent_fifo_under_pipelining(host: Host, client: Client) -> None:
    ref = client.agent("counter", "fifo")
    results = await asyncio.gather(*[ref.request("increment", {"by": 1}) for _ in range(50)])
    # one agent processes one command at a time in stream order: the replies are 1..50
    assert sorted(results) == list(range(1, 51))
    log = await commits(client.nc, "counter", "fifo")
    assert [c["n"] for c in log] == list(range(1, 51))


async def test_typed_proxy(host: Host, client: Client) -> None:
    counter = client.proxy(Counter, "typed")
    value = await counter.increment(by=4)
    assert value == 4 and isinstance(value, int)
    account = client.proxy(Account, "acct-typed")
    assert await account.deposit(amount=100) == 100
    with pytest.raises(DomainError) as exc:
        await account.withdraw(amount=150)
    assert exc.value.reason == "insufficient_funds"
    assert exc.value.details == {"balance": 100, "requested": 150}
    assert await account.balance() == 100
    with pytest.raises(AttributeError):
        counter.not_an_action  # noqa: B018


async def test_exactly_once_resend_same_id(host: Host, client: Client) -> None:
    ref = client.agent("counter", "eo")
    first = await ref.request_reply("increment", {"by": 5}, command_id="cmd-1")
    again = await ref.request_reply("increment", {"by": 5}, command_id="cmd-1")
    assert first.result == again.result == 5
    assert not first.duplicate and again.duplicate
    assert again.event_seq == first.event_seq
    assert await ref.request("get") == 5
    assert len(await commits(client.nc, "counter", "eo")) == 1


async def test_exactly_once_record_survives_restart_and_dedup_window(nats_server: NatsServer) -> None:
    """Beyond the stream's dedup window and across a host restart, the agent's record
    (rebuilt from its log) still answers a re-sent command without applying it again."""
    settings = host_settings(nats_server.url, duplicate_window_s=1.0)
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url))
    try:
        async with Host(settings, Registry(EXAMPLE_AGENTS)):
            ref = client.agent("account", "eo2")
            assert await ref.request("deposit", {"amount": 10}, command_id="dep-1") == 10
        await asyncio.sleep(1.5)  # the server's dedup window has passed
        async with Host(settings, Registry(EXAMPLE_AGENTS)):
            again = await ref.request_reply("deposit", {"amount": 10}, command_id="dep-1")
            assert again.duplicate and again.result == 10
            assert await ref.request("balance") == 10
    finally:
        await client.close()


async def test_at_most_once_without_host_is_unavailable(nats_server: NatsServer) -> None:
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, retry_attempts=2))
    try:
        with pytest.raises(Unavailable):
            await client.agent("counter", "x").request("get", delivery="at-most-once", timeout=2)
    finally:
        await client.close()


async def test_durable_command_waits_for_a_host(nats_server: NatsServer) -> None:
    """No host running: the durable command is stored; the caller times out with a clear
    error; the command runs once a host starts."""
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url))
    try:
        await client.ensure_topology(partitions=8)
        ref = client.agent("counter", "later")
        with pytest.raises(AgentTimeout, match="stored and will run once"):
            await ref.request("increment", {"by": 7}, timeout=1, command_id="later-1")
        async with Host(host_settings(nats_server.url), Registry(EXAMPLE_AGENTS)):

            async def applied() -> bool:
                return await ref.request("get", delivery="at-most-once", timeout=2) == 7

            await eventually(applied, 15)
            # re-sending the same command after it ran does not apply it again
            again = await ref.request_reply("increment", {"by": 7}, command_id="later-1")
            assert again.duplicate and again.result == 7
            assert await ref.request("get") == 7
    finally:
        await client.close()


async def test_deadline_passed_is_not_run(host: Host, client: Client) -> None:
    # 'timeout' sets the Agt-Deadline header; a command seen after it is refused, not run
    ref = client.agent("counter", "late")
    body_headers = {"Agt-Command-Id": "late-1", "Agt-Deadline": "1000", "Agt-Reply-To": ""}
    inbox = client.nc.new_inbox()
    sub = await client.nc.subscribe(inbox)
    body_headers["Agt-Reply-To"] = inbox
    await client.nc.jetstream().publish(
        "agt.cmd.counter.late", b'{"action":"increment","params":{"by":1}}', headers=body_headers
    )
    msg = await sub.next_msg(timeout=10)
    assert b"deadline_exceeded" in msg.data
    assert await ref.request("get") == 0
    with pytest.raises(DeadlineExceeded):
        from jetagents._client.reply import decode_reply

        decode_reply(msg)


async def test_trace_and_correlation_travel_to_events_and_reply(host: Host, client: Client) -> None:
    ref = client.agent("counter", "traced")
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    inbox = client.nc.new_inbox()
    sub = await client.nc.subscribe(inbox)
    await client.nc.jetstream().publish(
        "agt.cmd.counter.traced",
        b'{"action":"increment","params":{"by":1}}',
        headers={"Agt-Reply-To": inbox, "Agt-Command-Id": "t-1", "Agt-Correlation-Id": "corr-9", "traceparent": tp},
    )
    reply = await sub.next_msg(timeout=10)
    assert reply.headers is not None
    assert reply.headers["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
    assert reply.headers["Agt-Correlation-Id"] == "corr-9"
    assert reply.headers["Agt-Command-Id"] == "t-1"
    [commit] = await commits(client.nc, "counter", "traced")
    h = commit["_headers"]
    assert h["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
    assert h["Agt-Correlation-Id"] == "corr-9"
    assert commit["cmd"] == "t-1"
    assert await ref.request("get") == 1


async def test_client_generates_traceparent(host: Host, client: Client) -> None:
    reply = await client.agent("counter", "tp2").request_reply("increment", {"by": 1})
    assert reply.headers.get("traceparent", "").startswith("00-")
    [commit] = await commits(client.nc, "counter", "tp2")
    assert commit["_headers"]["traceparent"].split("-")[1] == reply.headers["traceparent"].split("-")[1]


async def test_resend_after_record_evicted_is_not_applied_twice(nats_server: NatsServer) -> None:
    """The host keeps only the last record here; the stream's Nats-Msg-Id dedup on the
    event log still recognises the old commit, and the host answers from it."""
    settings = host_settings(nats_server.url, dedup_records_per_agent=1)
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url))
    try:
        async with Host(settings, Registry(EXAMPLE_AGENTS)) as host:
            ref = client.agent("account", "evicted")
            assert await ref.request("deposit", {"amount": 10}, command_id="A") == 10
            assert await ref.request("deposit", {"amount": 10}, command_id="B") == 20
            again = await ref.request_reply("deposit", {"amount": 10}, command_id="A")
            assert again.duplicate and again.result == 10
            assert await ref.request("balance") == 20
            assert await ref.request("deposit", {"amount": 1}, command_id="C") == 21
            assert host.stats["fenced"] == 0
            assert len(await commits(client.nc, "account", "evicted")) == 3
    finally:
        await client.close()
