"""Sequential calls, interleaved A/B: where a call's time goes compared with the floor.

    python loadtests/bench_calls.py [--rounds 60] [--block 200] [--loop asyncio|uvloop]

Starts a nats-server, one agent host (``python -m agent_host``) and the floor responder
(``_floor_responder.py``), then sends calls one at a time (1 in flight) in blocks of
``--block`` calls, cycling through the variants below in a new random order every round.
Interleaving in small blocks spreads the noise of a shared machine evenly over all
variants, so their ratios are steadier than those of separate windows (bench_delivery.py).

Variants (each a core NATS request/reply with a ~30-byte JSON body):

* ``floor``: bare nats-py ``request()`` to the floor responder, no headers (the floor);
* ``floor + 3 headers``: the same with headers like the ones the jetagents client sends
  (what headers alone cost nats-py and the server);
* ``host, bare request``: bare nats-py ``request()`` to the jetagents host, no headers (the
  host's own cost over the floor responder's);
* ``jetagents``: ``client.agent("counter", "a1").request("get", delivery="at-most-once")``.

It prints calls/s, the mean latency and the ratio to the floor for each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats

from jetagents import Client, ClientSettings, NatsServer
from jetagents.testing.server import child_preexec

HERE = Path(__file__).resolve().parent
BODY = b'{"action":"get","params":{}}'
HEADERS = {
    "Agt-Command-Id": "5Xq2rPZ0mYcJ4kW8hT1bN3",
    "Agt-Deadline": "1895000000000",
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
}


async def measure(url: str, ready: Path, args: argparse.Namespace) -> dict[str, float]:
    deadline = time.monotonic() + 30
    while not ready.exists():
        if time.monotonic() > deadline:
            raise SystemExit("the floor responder did not start")
        await asyncio.sleep(0.1)
    client = await Client.connect(settings=ClientSettings(nats_url=url, request_timeout_s=10))
    nc = await nats.connect(url, name="bench-calls")
    ref = client.agent("counter", "a1")
    for _ in range(150):  # until the host serves
        try:
            await ref.request("get", delivery="at-most-once", timeout=1)
            break
        except Exception:
            await asyncio.sleep(0.2)
    variants: dict[str, Callable[[], Awaitable[Any]]] = {
        "floor": lambda: nc.request("FLOOR.call.a1", BODY, timeout=10),
        "floor + 3 headers": lambda: nc.request("FLOOR.call.a1", BODY, timeout=10, headers=dict(HEADERS)),
        "host, bare request": lambda: nc.request("agt.call.counter.a1", BODY, timeout=10),
        "jetagents": lambda: ref.request("get", delivery="at-most-once"),
    }
    spent = dict.fromkeys(variants, 0.0)
    for fn in variants.values():  # warm up
        for _ in range(args.block):
            await fn()
    for _ in range(args.rounds):
        order = list(variants.items())
        random.shuffle(order)
        for name, fn in order:
            t0 = time.perf_counter()
            for _ in range(args.block):
                await fn()
            spent[name] += time.perf_counter() - t0
    await client.close()
    await nc.close()
    n = args.rounds * args.block
    return {name: n / s for name, s in spent.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--block", type=int, default=200)
    p.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-calls-"))
    server = NatsServer(data_dir=work / "nats", name="bench").start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        env = dict(
            os.environ,
            JETAGENTS_NATS_URL=server.url,
            JETAGENTS_AGENTS='["jetagents.examples:EXAMPLE_AGENTS"]',
            JETAGENTS_HOST_ID="bench-host",
            JETAGENTS_LOG_LEVEL="WARNING",
            JETAGENTS_LOOP=args.loop,
        )
        ready = work / "floor.ready"
        for argv, log in (
            ([sys.executable, "-m", "agent_host"], "host.log"),
            (
                [
                    sys.executable,
                    str(HERE / "_floor_responder.py"),
                    *("--url", server.url, "--ready-file", str(ready), "--loop", args.loop),
                ],
                "floor.log",
            ),
        ):
            with open(work / log, "ab") as out:
                procs.append(
                    subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=child_preexec)
                )
        if args.loop == "uvloop":
            import uvloop

            rates = uvloop.run(measure(server.url, ready, args))
        else:
            rates = asyncio.run(measure(server.url, ready, args))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
        server.stop()
    floor = rates["floor"]
    print(f"sequential calls, {args.rounds} rounds x {args.block} calls per variant, loop {args.loop}")
    print(f"{'variant':20s} {'calls/s':>9s} {'mean us':>8s} {'/ floor':>8s}")
    for name, rate in rates.items():
        print(f"{name:20s} {rate:9.0f} {1e6 / rate:8.0f} {rate / floor:8.3f}")


if __name__ == "__main__":
    main()
