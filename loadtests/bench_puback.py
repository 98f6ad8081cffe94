"""The client's cost of one durable publish by reply mechanism, A/B in one process.

    python loadtests/bench_puback.py [--n 1000] [--rounds 9] [--loop asyncio|uvloop]

Starts a nats-server with one stream and publishes ``--n`` messages per block, waiting for
each PubAck: ``request`` (nats-py's ``request()``: a random inbox token and ``wait_for`` per
message, what the client did before) or ``inbox`` (``jetagents._nats.inbox.Inbox``: one
subscription, a counter token and one timer per message, what the client and host do now),
at 1 and 256 in flight. Blocks alternate in a new random order every round; the figure is
the median over the rounds of this process's CPU time per publish.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from jetagents import NatsServer
from jetagents._nats.api import connect
from jetagents._nats.inbox import Inbox


async def measure(url: str, args: argparse.Namespace) -> dict[tuple[str, int], list[float]]:
    nc = await connect(url, name="bench-puback")
    js = nc.jetstream()
    await js.add_stream(name="PUBACK", subjects=["puback.>"], max_msgs=100_000)
    inbox = Inbox(nc)
    await inbox.start()
    ids = iter(range(1, 1 << 62))

    async def via_request() -> Any:
        msg = await nc.request(
            "puback.a", b'{"action":"increment","params":{}}', timeout=5.0, headers={"Nats-Msg-Id": str(next(ids))}
        )
        return orjson.loads(msg.data)

    async def via_inbox() -> Any:
        msg = await inbox.request(
            "puback.a", b'{"action":"increment","params":{}}', {"Nats-Msg-Id": str(next(ids))}, 5.0
        )
        return orjson.loads(msg.data)

    ways: dict[str, Callable[[], Awaitable[Any]]] = {"request": via_request, "inbox": via_inbox}

    async def block(fn: Callable[[], Awaitable[Any]], inflight: int) -> int:
        per = args.n // inflight

        async def worker() -> None:
            for _ in range(per):
                await fn()

        await asyncio.gather(*(worker() for _ in range(inflight)))
        return per * inflight

    cells = [(w, k) for w in ways for k in args.inflight]
    for w, k in cells:
        await block(ways[w], k)  # warm up
    out: dict[tuple[str, int], list[float]] = {c: [] for c in cells}
    for _ in range(args.rounds):
        random.shuffle(cells)
        for w, k in cells:
            c0 = time.process_time()
            n = await block(ways[w], k)
            out[(w, k)].append((time.process_time() - c0) / n * 1e6)
    await inbox.close()
    await nc.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    p.add_argument("--inflight", type=int, nargs="+", default=[1, 256])
    args = p.parse_args()
    server = NatsServer(data_dir=Path(tempfile.mkdtemp(prefix="bench-puback-")) / "nats", name="bench").start()
    try:
        if args.loop == "uvloop":
            import uvloop

            res = uvloop.run(measure(server.url, args))
        else:
            res = asyncio.run(measure(server.url, args))
    finally:
        server.stop()
    print(f"durable publish + PubAck, loop {args.loop}, median of {args.rounds} blocks of {args.n}")
    print(f"{'mechanism':10s} {'in flight':>9s} {'client us/publish':>18s}")
    for (w, k), vals in sorted(res.items()):
        print(f"{w:10s} {k:9d} {statistics.median(vals):18.1f}")


if __name__ == "__main__":
    main()
