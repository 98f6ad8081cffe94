"""A command leaves no reference cycle behind on the host: what it made is freed by reference
counting as it ends, not by the garbage collector, whose full collections walk every object the
process holds (at 256 durable commands in flight they had taken ~15 % of the host's CPU; ADR
0031, session 7). The journaled run's mark named its own task from the task's own context
(task -> context -> mark -> task), with the run's events in the cycle."""

from __future__ import annotations

import asyncio
import gc
from collections import Counter

import pytest

from jetagents import Client, ClientSettings, Host, NatsServer, Registry
from jetagents.examples import EXAMPLE_AGENTS
from tests.conftest import host_settings


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once", "at-most-once"])
async def test_commands_leave_no_cyclic_garbage_on_the_host(nats_server: NatsServer, delivery: str) -> None:
    async with Host(host_settings(nats_server.url), Registry(EXAMPLE_AGENTS)):
        client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
        try:
            refs = [client.agent("counter", f"cyc-{i}") for i in range(32)]

            async def burst(n: int) -> None:
                await asyncio.gather(
                    *(r.request("increment", {"by": 1}, delivery=delivery) for r in refs for _ in range(n))
                )

            await burst(2)  # every agent active, every lazy structure made
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                await burst(4)
                gc.collect()
                kinds = Counter(
                    f"{type(o).__module__}.{type(o).__qualname__}"
                    for o in gc.garbage
                    if isinstance(o, asyncio.Task) or type(o).__module__.startswith("jetagents")
                )
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
            assert not kinds, f"left to the garbage collector by {len(refs) * 4} commands: {dict(kinds)}"
        finally:
            await client.close()
