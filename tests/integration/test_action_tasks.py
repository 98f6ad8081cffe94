"""An action is its own task from its first line (issue 17 hardening), against a real
nats-server: ``asyncio.timeout`` in an action times out the action, never the host's intake.

Before the fix, on Python 3.11, the eager start ran an action's first stretch as the caller's
task: the action's timeout cancelled the task of the host's call subscription, the action ran
on past its timeout ("finished") and the host answered no call after it.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from jetagents import Agent, Client, Host, NatsServer, Registry, action
from tests.conftest import host_settings


class Nothing(BaseModel):
    pass


class Timed(Agent[Nothing]):
    type_name = "timed"
    state_type = Nothing

    @action(read_only=True)
    async def wait(self, seconds: float) -> str:
        try:
            async with asyncio.timeout(0.2):
                await asyncio.sleep(seconds)
        except TimeoutError:
            return "timed out"
        return "finished"


async def test_an_actions_own_timeout_cancels_the_action_not_the_host(nats_server: NatsServer, client: Client) -> None:
    host = Host(host_settings(nats_server.url), Registry([Timed]))
    await host.start()
    try:
        ref = client.agent("timed", "t1")
        for _ in range(3):  # the first activates the agent; the later ones start eagerly
            assert await ref.request("wait", {"seconds": 2.0}, delivery="at-most-once", timeout=10) == "timed out"
        for _ in range(3):
            assert await ref.request("wait", {"seconds": 2.0}, timeout=10) == "timed out"
    finally:
        await host.stop()
