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
from jetagents._core.journal import enter_step, leave_step
from jetagents.examples import EXAMPLE_AGENTS
from tests.conftest import host_settings
from tests.durable_agents import Relay
from tests.integration.helpers import commits


async def test_a_shared_write_rerun_under_its_step_key_is_not_done_again(nats_server: NatsServer) -> None:
    async with await Client.connect(settings=ClientSettings(nats_url=nats_server.url)) as client:
        shared = client.shared()
        runs = []
        for _ in range(2):  # the step's function, run again after a host died before its journal entry
            tokens = enter_step("relay.x:m1#1")
            try:
                # two writes of each kind in one step: each its own effect, neither deduplicated
                # into the other (ADR 0042 §12), and the same two again on the re-run
                # (strong writes to two keys: a re-run finds a key's own write by the tag of
                # its last version only, so two writes of one key in one step are not covered)
                strong = [(await shared.strong.increment(k)).value for k in ("k", "k2")]
                crdt = [(await shared.crdt.increment("n", 5)).value for _ in range(2)]
                runs.append((strong, crdt))
            finally:
                leave_step(tokens)
        assert runs == [([1, 1], [5, 10]), ([1, 1], [10, 10])]
        assert [(await shared.strong.get(k)).value for k in ("k", "k2")] == [1, 1]
        assert (await shared.crdt.counter("n")).value == 10
        assert (await shared.strong.increment("k")).value == 2  # outside a step: a write as ever
        assert (await shared.crdt.increment("n", 5)).value == 15


async def test_a_step_s_several_publishes_and_calls_each_happen_once(nats_server: NatsServer) -> None:
    settings = ClientSettings(nats_url=nats_server.url, partitions=8)
    async with (
        Host(host_settings(nats_server.url), Registry([*EXAMPLE_AGENTS, Relay])),
        await Client.connect(settings=settings) as client,
    ):
        seqs, results = [], []
        for _ in range(2):  # a step run, then its re-run
            tokens = enter_step("relay.y:m2#0")
            try:
                seqs.append([await client.publish("orders.twice", {"n": n}) for n in range(2)])
                ref = client.agent("counter", "twice")
                results.append([await ref.request("increment", timeout=30) for _ in range(2)])
            finally:
                leave_step(tokens)
        assert seqs[0][0] != seqs[0][1] and seqs[1] == seqs[0]  # two messages, not one; none again
        assert results == [[1, 2], [1, 2]]  # two calls applied, the re-run answered from the record
        assert await client.agent("counter", "twice").request("get", timeout=30) == 2


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
