"""Supervision of agents whose history cannot be used (issue 17, ADR 0053), against a real
nats-server and real hosts.

* an agent whose activation keeps failing (an applier that raises on its log) is quarantined
  after ``quarantine_after`` attempts: its commands are dead-lettered once each with
  ``agent_quarantined`` (a typed, non-retryable error to a caller), the record is in KV (a
  restarted host refuses it too), one ``agt.sys.agent.quarantined`` event is raised, ``jetagents
  agents quarantined`` lists it, and after the cause is fixed an operator releases it with
  ``jetagents agent release`` (``agt.sys.agent.released``) and it works again.

The agents are defined here, for these tests only.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import orjson
import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from jetagents import (
    Agent,
    AgentQuarantined,
    Client,
    ClientSettings,
    Event,
    Host,
    InvalidParams,
    NatsServer,
    Registry,
    action,
    applies,
)
from jetagents._core.contract import AgentQuarantinedEvent, AgentReleasedEvent
from jetagents._nats.api import connect as raw_connect
from jetagents._nats.api import js_api, kv_bucket_config
from jetagents.cli import app
from tests.conftest import host_settings
from tests.integration.helpers import dead_letters, eventually, read_all

CLI = [sys.executable, "-m", "jetagents.cli"]
BROKEN = {"applier": False}  # what the test breaks and fixes: the applier's code, in effect


class Total(BaseModel):
    total: int = 0


class Bumped(Event):
    by: int


class Fragile(Agent[Total]):
    type_name = "fragile"
    state_type = Total

    @action
    async def bump(self, by: int) -> int:
        self.emit(Bumped(by=by))
        return self.state.total

    @action(read_only=True)
    async def total(self) -> int:
        return self.state.total

    @applies
    def _bumped(self, state: Total, event: Bumped) -> None:
        if BROKEN["applier"]:
            raise RuntimeError("applier bug: cannot apply Bumped")
        state.total += event.by


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[Client]:
    c = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8, request_timeout_s=10))
    try:
        yield c
    finally:
        await c.close()


def _host(url: str, **overrides: Any) -> Host:
    settings: dict[str, Any] = {"quarantine_after": 2, "snapshot_every": 1000, "max_deliver": 5}
    settings.update(overrides)
    return Host(host_settings(url, **settings), Registry([Fragile]))


async def test_an_agent_that_keeps_failing_activation_is_quarantined_and_released(
    nats_server: NatsServer, client: Client
) -> None:
    BROKEN["applier"] = False
    ref = client.agent("fragile", "f1")
    h = _host(nats_server.url)
    await h.start()
    try:
        assert await ref.request("bump", {"by": 2}) == 2
        assert await ref.request("bump", {"by": 3}) == 5
    finally:
        await h.stop()

    # A deploy with a broken applier, and no snapshot (lost, or of an older state shape):
    # the agent's log cannot be applied, however often it is tried.
    BROKEN["applier"] = True
    nc = await raw_connect(nats_server.url, name="test-supervision")
    await (await nc.jetstream().key_value("agt_snap")).purge("fragile.f1")
    # the operator's events (core NATS: heard only by who listens before)
    events: list[dict[str, Any]] = []

    async def hear(msg: Any) -> None:
        body = orjson.loads(msg.data)
        # an assertion here would be lost in the client's callback: a wrong subject fails the kinds
        ok = msg.subject == f"agt.sys.{body.get('kind')}"
        events.append(body if ok else {"kind": f"on {msg.subject}: {body}"})

    heard = await nc.subscribe("agt.sys.agent.*", cb=hear)
    await nc.flush()
    h = _host(nats_server.url)
    await h.start()
    try:
        await ref.send("bump", {"by": 10}, command_id="durable-1")
        await eventually(lambda: h.stats["quarantines"] == 1)
        record = await client.admin.quarantined("fragile", "f1")
        assert record is not None
        assert record["failures"] == 2 and record["code"] == "internal"
        assert "applier bug" in record["reason"]
        await eventually(lambda: _kinds(events) == ["agent.quarantined"])
        said = AgentQuarantinedEvent.model_validate(events[0])  # closed: no field the document omits
        assert said.model_dump() == {
            "kind": "agent.quarantined",
            **{k: record[k] for k in said.model_dump() if k != "kind"},
        }
        assert said.agent == "fragile/f1" and said.host == h.settings.host_id and said.failures == 2
        assert await client.admin.quarantined_agents() == [record]
        # a caller gets the typed error at once (no retries: nothing more to try)
        with pytest.raises(AgentQuarantined) as caught:
            await ref.request("bump", {"by": 100}, command_id="call-1")
        assert not caught.value.retryable
        assert h.stats["quarantines"] == 1  # counted once, not once per command
    finally:
        await h.stop()

    # The quarantine is in KV: a restarted host refuses the agent without trying it again.
    h = _host(nats_server.url)
    await h.start()
    env = dict(os.environ, JETAGENTS_NATS_URL=nats_server.url)
    try:
        with pytest.raises(AgentQuarantined):
            await ref.request("bump", {"by": 1000}, command_id="call-2")
        assert h.stats["activations"] == 0

        async def refused() -> list[dict[str, Any]]:
            return [d for d in await dead_letters(nc) if d["error"]["code"] == "agent_quarantined"]

        await eventually(lambda: _has(refused(), 3))
        letters = await refused()
        assert len(letters) == 3  # each command dead-lettered once, with the reason
        assert all("quarantined" in d["error"]["message"] for d in letters)

        BROKEN["applier"] = False  # the fixed applier is deployed
        assert [r["agent"] for r in await _listed(nats_server.url)] == ["fragile/f1"]
        released = await _cli(env, "agent", "release", "fragile/f1", "--by", "ops-test")
        assert orjson.loads(released) == {"ok": True, "result": True}
        assert await client.admin.quarantined("fragile", "f1") is None
        await eventually(lambda: _kinds(events) == ["agent.quarantined", "agent.released"])
        freed = AgentReleasedEvent.model_validate(events[1])
        assert (freed.agent, freed.by, freed.host) == ("fragile/f1", "ops-test", h.settings.host_id)
        assert (freed.reason, freed.quarantined_ms) == (record["reason"], record["ts_ms"])
        assert await client.admin.quarantined_agents() == [] == await _listed(nats_server.url)
        # it activates again; the refused commands were not applied
        assert await ref.request("total") == 5
        assert await ref.request("bump", {"by": 1}) == 6
        assert await client.admin.release("fragile", "f1") is False  # nothing left to release
        await nc.flush()
        # once each: the refused commands and the restarted host did not quarantine it again
        assert _kinds(events) == ["agent.quarantined", "agent.released"]
    finally:
        await h.stop()
        await heard.unsubscribe()
        await nc.close()


def _kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["kind"] for e in events]


async def _listed(url: str) -> Any:
    """`jetagents agents quarantined --json` as typer runs it, in this process (a new
    interpreter costs seconds on a loaded machine; the release below runs the executable)."""
    run = partial(CliRunner().invoke, app, ["agents", "quarantined", "--json", "--nats-url", url])
    r = await asyncio.to_thread(run)
    assert r.exit_code == 0, r.output
    return orjson.loads(r.stdout)


async def _cli(env: dict[str, str], *args: str) -> str:
    r = await asyncio.to_thread(subprocess.run, [*CLI, *args], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout


async def _has(letters: Any, n: int) -> bool:
    return len(await letters) >= n


async def _evt(nc: Any, agent: str) -> list[tuple[int, bytes]]:
    return [(seq, data) for seq, _, _, data in await read_all(nc, "AGT_EVT", f"agt.evt.{agent}")]


async def test_a_corrupt_latest_snapshot_and_log_tail_are_restored_from_an_older_snapshot(
    nats_server: NatsServer, client: Client
) -> None:
    """On a deployment whose snapshot bucket an older version made (one snapshot per key):
    the host raises its history when it starts, so there is an older snapshot to restore."""
    BROKEN["applier"] = False
    ref = client.agent("fragile", "r1")
    nc = await raw_connect(nats_server.url, name="test-supervision")
    await js_api(nc, "$JS.API.STREAM.CREATE.KV_agt_snap", kv_bucket_config("agt_snap", 1, history=1), 5)
    kv = None
    h = _host(nats_server.url, snapshot_every=2, snapshot_history=3)
    await h.start()
    try:
        info = await js_api(nc, "$JS.API.STREAM.INFO.KV_agt_snap", None, 5)
        assert info["config"]["max_msgs_per_subject"] == 3
        for i in range(6):
            assert await ref.request("bump", {"by": 1}) == i + 1
        kv = await nc.jetstream().key_value("agt_snap")

        async def snapshot_at(n: int) -> bool:
            return any(orjson.loads(e.value).get("n") == n for e in await kv.history("fragile.r1") if e.value)

        await eventually(lambda: snapshot_at(6))
    finally:
        await h.stop()
    log = await _evt(nc, "fragile.r1")
    seq_of = {orjson.loads(d)["n"]: seq for seq, d in log}
    # The damage: the log's head is gone (retention limits: only an older snapshot can
    # rebuild the agent), the latest snapshot does not parse, nor do the last two messages.
    await nc.request(
        "$JS.API.STREAM.PURGE.AGT_EVT", orjson.dumps({"filter": "agt.evt.fragile.r1", "seq": seq_of[6]}), timeout=5
    )
    await kv.put("fragile.r1", b"{not json")
    js = nc.jetstream()
    bad = [(await js.publish("agt.evt.fragile.r1", junk)).seq for junk in (b"\x00garbage", b'{"n": "x"}')]

    h = _host(nats_server.url)
    await h.start()
    try:
        assert await ref.request("total") == 6  # the state as of the last good commit
        assert h.stats["restores"] == 1
        assert await ref.request("bump", {"by": 10}) == 16  # later commands apply on top
        log = await _evt(nc, "fragile.r1")
        resets = [orjson.loads(d) for seq, d in log if seq > bad[-1] and orjson.loads(d).get("reset")]
        assert len(resets) == 1
        assert resets[0]["n"] == 7 and resets[0]["reset"]["unreadable_from"] == bad[0]
        assert resets[0]["reset"]["state"] == {"total": 6}
        # A later activation replays through the unreadable messages to the reset commit
        # (no second reset is appended, nothing is lost).
        h.catalog.evict(h.catalog.activations["fragile.r1"])
        assert await ref.request("bump", {"by": 100}) == 116
        log = await _evt(nc, "fragile.r1")
        assert sum(1 for _, d in log if d.startswith(b"{") and b'"reset"' in d) == 1
    finally:
        await h.stop()
        await nc.close()


async def test_an_operator_rolls_an_agent_back_to_a_sequence(nats_server: NatsServer, client: Client) -> None:
    BROKEN["applier"] = False
    ref = client.agent("fragile", "b1")
    nc = await raw_connect(nats_server.url, name="test-supervision")
    h = _host(nats_server.url)
    await h.start()
    try:
        for by, total in ((1, 1), (2, 3), (3, 6), (4, 10)):
            assert await ref.request("bump", {"by": by}) == total
        log = await _evt(nc, "fragile.b1")
        seq_of = {orjson.loads(d)["n"]: seq for seq, d in log}
        env = dict(os.environ, JETAGENTS_NATS_URL=nats_server.url)
        argv = [*CLI, "agent", "rollback", "fragile/b1", "--to", str(seq_of[2]), "--by", "ops-ann"]
        r = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 0, r.stderr
        result = orjson.loads(r.stdout)["result"]
        assert result["to"] == seq_of[2] and result["n"] == 5 and result["by"] == "ops-ann"
        assert await ref.request("total") == 3  # the state as of that sequence
        assert await ref.request("bump", {"by": 100}) == 103  # later commands apply on top
        # the audit record is the reset commit in the agent's own log
        reset = orjson.loads(next(d for seq, d in await _evt(nc, "fragile.b1") if seq == result["reset_seq"]))
        assert reset["action"] == "_reset" and reset["reset"]["rollback"]["to"] == seq_of[2]
        assert reset["reset"]["rollback"]["by"] == "ops-ann"
        # a rebuild from the log alone (no snapshot) honours it
        h.catalog.evict(h.catalog.activations["fragile.b1"])
        assert await ref.request("total") == 103
        # a sequence that is not this agent's commit changes nothing
        with pytest.raises(InvalidParams):
            await client.admin.rollback("fragile", "b1", 10**9)
        assert await ref.request("total") == 103
    finally:
        await h.stop()
        await nc.close()


async def test_a_rollback_answer_goes_only_to_an_inbox(nats_server: NatsServer, client: Client) -> None:
    """A host answers a host-to-host or admin request (here a rollback that succeeds) only on
    a reply subject under its reply prefixes, as every other answer of the host: never on a
    subject the request names, such as another agent's command subject."""
    BROKEN["applier"] = False
    ref = client.agent("fragile", "r9")
    nc = await raw_connect(nats_server.url, name="test-supervision")
    h = _host(nats_server.url)
    await h.start()
    try:
        for by in (1, 2, 3):
            await ref.request("bump", {"by": by})
        first = (await _evt(nc, "fragile.r9"))[0][0]
        forged: list[bytes] = []

        async def caught(msg: Any) -> None:
            forged.append(msg.data)

        await nc.subscribe("agt.cmd.fragile.victim", cb=caught)
        subject = h.subjects.sys("host", h.settings.host_id, "rollback")
        body = orjson.dumps({"type": "fragile", "id": "r9", "to": first, "by": "t"})
        await nc.publish(subject, body, reply="agt.cmd.fragile.victim")
        # the same request on an inbox is answered: the forged one was handled before it
        answer = orjson.loads((await nc.request(subject, body, timeout=10)).data)
        assert answer["ok"] is True, answer
        await nc.flush()
        assert forged == []
    finally:
        await h.stop()
        await nc.close()
