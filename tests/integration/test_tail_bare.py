"""The wire contract's section 18 followed by a bare nats-py reader, with nothing of jetagents
on the reading side: a tail of ``agt.evt.counter.*`` from position 0 by batched direct gets,
live through the "subscribe once caught up, then read again" rule, while a host keeps
committing; then a projection's row read by direct gets of its position and its row."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from jetagents import Client, Host, NatsServer
from tests.integration.helpers import eventually
from tests.projection_agents import Totals

FILTER = "agt.evt.counter.*"


async def _direct_get(nc: NATS, body: dict[str, Any]) -> list[Msg]:
    """One direct get request; every answer up to the end-of-batch or not-found status."""
    inbox = nc.new_inbox()
    got: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        await got.put(msg)

    sub = await nc.subscribe(inbox, cb=on_msg)
    try:
        await nc.publish("$JS.API.DIRECT.GET.AGT_EVT", orjson.dumps(body), reply=inbox)
        out: list[Msg] = []
        async with asyncio.timeout(10):
            while True:
                msg = await got.get()
                status = (msg.headers or {}).get("Status")
                if status is None:
                    out.append(msg)
                elif status in ("204", "404"):
                    return out
                else:
                    raise AssertionError(f"direct get status {status}")
    finally:
        await sub.unsubscribe()


async def _tail(nc: NATS, want: int, handled: list[tuple[int, str, int]]) -> None:
    """The reading loop of section 18 until ``want`` commits with events were handled."""
    p = 0
    bell = asyncio.Event()
    listening = None
    while len(handled) < want:
        msgs = await _direct_get(nc, {"seq": p + 1, "next_by_subj": FILTER, "batch": 16})
        for m in msgs:
            seq = int(m.headers["Nats-Sequence"])  # type: ignore[index]
            commit = orjson.loads(m.data)
            if commit["events"]:
                handled.append((seq, m.headers["Nats-Subject"], commit["n"]))  # type: ignore[index]
            p = seq
        if msgs:
            continue
        if listening is None:  # caught up: subscribe, then read again at once

            async def ring(_: Msg) -> None:
                bell.set()

            listening = await nc.subscribe(FILTER, cb=ring)
            continue
        try:
            async with asyncio.timeout(1.0):
                await bell.wait()
        except TimeoutError:
            pass
        bell.clear()
    if listening is not None:
        await listening.unsubscribe()


async def test_a_bare_reader_tails_the_logs_and_reads_a_projection(
    host: Host, client: Client, nats_server: NatsServer
) -> None:
    refs = [client.agent("counter", f"bare-{i}") for i in range(2)]
    for i in range(20):
        await refs[i % 2].send("increment", {"by": 1})
    nc = await nats.connect(nats_server.url)
    handled: list[tuple[int, str, int]] = []
    try:
        reader = asyncio.create_task(_tail(nc, 40, handled))

        async def more() -> None:
            for i in range(20):
                await refs[i % 2].send("increment", {"by": 2})

        await more()
        await asyncio.wait_for(reader, 60)
        seqs = [s for s, _, _ in handled]
        assert seqs == sorted(set(seqs)) and len(seqs) == 40
        for i in range(2):
            ns = [n for _, subject, n in handled if subject == f"agt.evt.counter.bare-{i}"]
            assert ns == list(range(1, 21))

        # the projection's row, read as the contract says: the position, then the row
        stop = asyncio.Event()
        run = asyncio.create_task(client.projections.runner(Totals(), lease_ttl_s=2).run(stop=stop))
        js = "$JS.API.DIRECT.GET.KV_agt_proj.$KV.agt_proj."

        async def row() -> Any:
            try:
                pos = orjson.loads((await nc.request(js + "totals.pos", b"", timeout=5)).data)
                found = await nc.request(js + f"totals.g{pos['gen']}.bare-1", b"", timeout=5)
            except (NoRespondersError, orjson.JSONDecodeError):  # no bucket yet; a 404 (no body)
                return None
            return orjson.loads(found.data) if found.data else None

        async def projected() -> bool:
            return await row() == {"total": 30, "events": 20, "n": 20}

        await eventually(projected, 30, 0.05)
        stop.set()
        await asyncio.wait_for(run, 30)
    finally:
        await nc.close()
