"""Cold activations per second with the quarantine check (ADR 0053: one KV read of
``agt_quarantine`` per activation) against the same host without it (``quarantine_after=0``),
measured in the same run.

    python loadtests/bench_activation.py [--agents 2000] [--concurrency 16] [--reps 3]

One nats-server; per repetition, in random order, a host (in this process) with
``quarantine_after`` 5 (the default: checked) and 0 (not checked) each serve ``--agents``
calls of ``counter.get`` to agents never seen before, so every call is an activation (a
snapshot read, a log read and, when checked, the quarantine read). Figures are medians of
``--reps``: activations per second of each and their ratio. No assertion: a benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jetagents import Client, ClientSettings, Delivery, Host, HostSettings, NatsServer, Registry  # noqa: E402
from jetagents.examples import EXAMPLE_AGENTS  # noqa: E402


async def one(url: str, quarantine_after: int, tag: str, agents: int, concurrency: int) -> float:
    settings = HostSettings(
        nats_url=url, partitions=8, host_id=f"bench-{tag}", quarantine_after=quarantine_after, op_timeout_s=10
    )
    async with Host(settings, Registry(EXAMPLE_AGENTS)) as host:
        client = await Client.connect(settings=ClientSettings(nats_url=url, partitions=8, request_timeout_s=30))
        try:
            ids = iter(range(agents))

            async def worker() -> None:
                for i in ids:
                    await client.agent("counter", f"{tag}-{i}").request("get", delivery=Delivery.AT_MOST_ONCE)

            # durable: it waits in the stream until the host has taken the partitions (an
            # at-most-once call sent before that is lost, and the run ended in AgentTimeout)
            await client.agent("counter", f"{tag}-warm").request("get", delivery=Delivery.AT_LEAST_ONCE)
            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
            assert host.stats["activations"] >= agents
        finally:
            await client.close()
    return agents / elapsed


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(data_dir=Path(tmp) / "nats", name="bench-activation")
        server.start()
        try:
            rates: dict[str, list[float]] = {"checked": [], "unchecked": []}
            for rep in range(args.reps):
                order = [("checked", 5), ("unchecked", 0)]
                random.shuffle(order)
                for name, after in order:
                    rate = await one(server.url, after, f"{name}{rep}", args.agents, args.concurrency)
                    rates[name].append(rate)
                    print(f"rep {rep} {name:<9} {rate:8.0f} activations/s", flush=True)
        finally:
            server.stop()
    checked, unchecked = statistics.median(rates["checked"]), statistics.median(rates["unchecked"])
    print(f"median: checked {checked:.0f}/s, unchecked {unchecked:.0f}/s, ratio {checked / unchecked:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
