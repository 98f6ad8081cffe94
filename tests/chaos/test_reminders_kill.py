"""Reminders across SIGKILL (ADR 0042 section 5): a real host process, a real nats-server.

An ``every`` 1 s reminder keeps firing while its host is killed and, a few seconds later,
replaced by a new process. The firings the server produces meanwhile wait in the command
stream; the new host processes them. Counted outside the host, from the event log: one
``fire`` commit per firing, each with its own ``s<cepoch>-<seq>`` command id, and the
server's ``Nats-Schedule-Next`` times they record are consecutive seconds: none lost, none
doubled (a firing the killed host had committed but not acknowledged is redelivered and
answered from the record).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from jetagents import Client, ClientSettings, NatsServer
from jetagents._core.ids import partition_of
from jetagents._nats.api import js_api
from tests.integration.helpers import commits, eventually
from tests.integration.test_reminders import assert_once_each_second, fires

pytestmark = pytest.mark.chaos

AGENTS = json.dumps(["jetagents.examples:EXAMPLE_AGENTS", "tests.reminder_agents:AGENTS"])
PENDING = f"agt.p.{partition_of('alarm', 'k1', 8)}.alarm.k1"


async def test_every_second_across_a_host_kill_loses_and_doubles_nothing(
    nats_server: NatsServer, host_process_factory: Any
) -> None:
    url = nats_server.url
    hp = host_process_factory(url, JETAGENTS_AGENTS=AGENTS).start()
    client = await Client.connect(settings=ClientSettings(nats_url=url, partitions=8, request_timeout_s=10))
    try:
        await hp.wait_ready(client)
        ref = client.agent("alarm", "k1")
        await ref.remind("tick", every=1, action="ring")

        async def fired(n: int) -> bool:
            return len(fires(await commits(client.nc, "alarm", "k1"))) >= n

        await eventually(lambda: fired(3), timeout_s=20)
        hp.kill()

        async def waiting(n: int) -> bool:
            info = await js_api(client.nc, "$JS.API.STREAM.INFO.AGT_CMD", {"subjects_filter": PENDING}, 5)
            return int((info["state"].get("subjects") or {}).get(PENDING, 0)) >= n

        await eventually(lambda: waiting(3), timeout_s=20)  # firings pile up while no host runs
        before = len(fires(await commits(client.nc, "alarm", "k1")))
        hp = host_process_factory(url, JETAGENTS_AGENTS=AGENTS).start()
        await eventually(lambda: fired(before + 5), timeout_s=30)
        await ref.cancel_reminder("tick")

        async def drained() -> bool:
            return not await waiting(1)

        await eventually(drained, timeout_s=20)
        log = await commits(client.nc, "alarm", "k1")
        every = fires(log, "tick")
        assert_once_each_second(every)
        rings = sum(len(c["events"]) for c in log)
        assert rings == len(every) == int(await ref.request("count", delivery="at-most-once"))
    finally:
        await client.close()
        hp.terminate()
