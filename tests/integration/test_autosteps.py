"""Implicit steps with a real nats-server (ADR 0042 §12); the crash proof is
``tests/chaos/test_autosteps_kill.py``.

* a shared-state write re-run under the same step key (a host died after the write, before
  its journal entry) is not done again: the strong write finds its own tagged version, the
  counter increment is deduplicated by its ``Nats-Msg-Id``;
* in an action, ``request_reply`` is a step (its ``Reply`` comes back from the journal),
  while requests made in tasks the action spawns stay plain.
"""

from __future__ import annotations

from jetagents import Client, ClientSettings, Host, NatsServer, Registry
from jetagents._core.journal import _STEP_KEY
from jetagents.examples import EXAMPLE_AGENTS
from tests.conftest import host_settings
from tests.durable_agents import Relay
from tests.integration.helpers import commits


async def test_a_shared_write_rerun_under_its_step_key_is_not_done_again(nats_server: NatsServer) -> None:
    async with await Client.connect(settings=ClientSettings(nats_url=nats_server.url)) as client:
        shared = client.shared()
        token = _STEP_KEY.set("relay.x:m1#1")  # what a step's function runs under, on every re-run
        try:
            first, again = await shared.strong.increment("k"), await shared.strong.increment("k")
            c_first, c_again = await shared.crdt.increment("n", 5), await shared.crdt.increment("n", 5)
        finally:
            _STEP_KEY.reset(token)
        assert (first.value, again.value) == (1, 1)
        assert (c_first.value, c_again.value) == (5, 5)
        assert (await shared.strong.get("k")).value == 1
        assert (await shared.crdt.counter("n")).value == 5
        assert (await shared.strong.increment("k")).value == 2  # outside a step: a write as ever
        assert (await shared.crdt.increment("n", 5)).value == 10


async def test_request_reply_is_a_step_and_spawned_tasks_stay_plain(nats_server: NatsServer) -> None:
    settings = ClientSettings(nats_url=nats_server.url, partitions=8)
    async with (
        Host(host_settings(nats_server.url), Registry([*EXAMPLE_AGENTS, Relay])),
        await Client.connect(settings=settings) as client,
    ):
        out = await client.agent("relay", "f1").request("fan", {"counter": "c9"}, command_id="f1", timeout=30)
        assert out == [1, "relay.f1:f1#0", [11, 111]] or out == [1, "relay.f1:f1#0", [101, 111]]
        log = await commits(client.nc, "relay", "f1")
        assert [(c["j"]["k"], c["j"].get("name")) for c in log] == [
            ("step", "call:counter/c9.increment"),
            ("end", None),
        ]
        assert log[0]["j"]["value"]["result"] == 1
        assert (await commits(client.nc, "counter", "c9"))[0]["cmd"] == "relay.f1:f1#0"
