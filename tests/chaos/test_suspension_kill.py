"""Suspended actions across SIGKILL and a partition move (ADR 0042 step 4): real host
processes, a real nats-server.

Actions of ``tests/durable_agents.py`` (``Flow.approve_flow``: a step, ``wait_for("approve")``,
a step) suspend on host A; A is killed (-9) and a new host takes over. Nothing of them is in
any host's memory: each resumes from its journal when its signal comes, sent with the CLI
(``jetagents signal``) and with bare nats-py (a JetStream publish of the documented body), one
is cancelled with the CLI (``jetagents cancel``), and one with a timeout and no signal ends on
the server's timer although the host that armed it is dead. Then a second host joins, the
ring moves partitions to it, and an action suspended before the move resumes there. Every
step before a wait ran once (counted outside the host).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter as Tally
from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.js.api import StreamConfig

from jetagents import ActionCancelled, Client, ClientSettings, NatsServer
from jetagents._core.ids import partition_of
from jetagents._nats.kv import JetStreamStore
from tests.durable_agents import FX_STREAM, FX_SUBJECTS
from tests.integration.helpers import commits, eventually, read_all

pytestmark = pytest.mark.chaos

AGENTS = json.dumps(["jetagents.examples:EXAMPLE_AGENTS", "tests.durable_agents:AGENTS"])


async def _done(client: Client, run: str) -> Tally[str]:
    msgs = await read_all(client.nc, FX_STREAM)
    return Tally(s.split(".", 2)[2] for _, s, _, _ in msgs if s.startswith(f"stepfx.{run}."))


def _cli(url: str, *argv: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "jetagents.cli", *argv, "--nats-url", url], capture_output=True, timeout=60, check=True
    )
    return dict(orjson.loads(out.stdout.splitlines()[-1]))


async def test_suspended_actions_survive_a_kill_and_a_partition_move(
    nats_server: NatsServer, host_process_factory: Any, tmp_path: Path
) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    url = nats_server.url
    a = host_process_factory(url, JETAGENTS_AGENTS=AGENTS, JETAGENTS_HOST_ID="host-a").start()
    client = await Client.connect(settings=ClientSettings(nats_url=url, partitions=8))
    try:
        await a.wait_ready(client)
        await client.nc.jetstream().add_stream(StreamConfig(name=FX_STREAM, subjects=[FX_SUBJECTS]))
        # agents on every partition, so some move when the second host joins
        names = [f"m{k}" for k in range(40)]
        spread = {partition_of("flow", n, 8): n for n in names}
        moving = sorted(spread.values())
        runs = {"k-cli": "cli", "k-bare": "bare", "k-timer": "timer", "k-gate": "gate", "k-cancel": "cancel"}
        runs.update({n: f"move-{n}" for n in moving})
        for agent, run in runs.items():
            params: dict[str, Any] = {"run": run}
            if agent == "k-timer":
                params["timeout_s"] = 4
            if agent == "k-gate":
                params["gates"] = str(gates)
            reply = await client.agent("flow", agent).request_reply("approve_flow", params, command_id=run, timeout=20)
            assert reply.status == "suspended", (agent, reply.result)

        # k-gate: its signal is in the log and its resumed run is inside its last step when
        # the host dies; the signal, acknowledged only after the run, comes again and resumes it
        (gates / "pre-finish").touch()
        assert await client.agent("flow", "k-gate").signal("approve", "gated") == {"delivered": "gate"}

        async def entered() -> bool:
            return (await _done(client, "gate"))["finish.enter"] >= 1

        await eventually(entered, 20)
        a.kill()  # nothing of the other suspended actions was in its memory anyway
        a2 = host_process_factory(url, JETAGENTS_AGENTS=AGENTS, JETAGENTS_HOST_ID="host-a2").start()
        await a2.wait_ready(client, timeout_s=30)
        (gates / "pre-finish").unlink()
        assert await client.agent("flow", "k-gate").result("gate", timeout=30) == {"run": "gate", "payload": "gated"}
        gate_fx = await _done(client, "gate")
        assert gate_fx["finish.enter"] == 2 and gate_fx["finish.done"] == 1
        gate_log = await commits(client.nc, "flow", "k-gate")
        assert [c["j"]["k"] for c in gate_log] == ["step", "wait", "signal", "step", "end"]

        # resumed by a signal sent with the CLI
        sent = await asyncio.to_thread(_cli, url, "signal", "flow/k-cli", "approve", json.dumps({"by": "cli"}))
        assert sent == {"ok": True, "result": {"delivered": "cli"}}
        assert await client.agent("flow", "k-cli").result("cli", timeout=30) == {"run": "cli", "payload": {"by": "cli"}}

        # resumed by a signal published with bare nats-py: the wire contract's body, nothing else
        ack = await client.nc.jetstream().publish(
            "agt.cmd.flow.k-bare",
            orjson.dumps({"signal": "approve", "payload": "bare", "to": "bare"}),
            headers={"Nats-Msg-Id": "sig-bare"},
        )
        assert ack.seq > 0
        assert await client.agent("flow", "k-bare").result("bare", timeout=30) == {"run": "bare", "payload": "bare"}

        # cancelled with the CLI after the kill: closed with `cancelled`, its caller told so
        cancelled = await asyncio.to_thread(_cli, url, "cancel", "flow/k-cancel", "cancel")
        assert cancelled == {"ok": True, "result": {"cancelled": True}}
        with pytest.raises(ActionCancelled):
            await client.agent("flow", "k-cancel").result("cancel", timeout=30)
        assert (await commits(client.nc, "flow", "k-cancel"))[-1]["j"]["error"]["code"] == "cancelled"

        # no signal: the server's timer (armed by the killed host) ends the wait
        assert await client.agent("flow", "k-timer").result("timer", timeout=30) == {
            "run": "timer",
            "payload": "timed out",
        }
        timer_log = await commits(client.nc, "flow", "k-timer")
        assert [c["j"]["k"] for c in timer_log] == ["step", "wait", "timeout", "step", "end"]

        # a second host joins: the ring moves partitions to it; suspended actions there resume on it
        b = host_process_factory(url, JETAGENTS_AGENTS=AGENTS, JETAGENTS_HOST_ID="host-b").start()

        async def moved() -> list[str]:
            return [n for n in moving if await client.locate("flow", n) == "host-b"]

        await eventually(moved, 40, 0.2)
        on_b = await moved()
        store = JetStreamStore(client.nc, "agt_cluster")

        async def claimed_by_b() -> bool:
            # the ring names host-b before host-a2 has handed the partitions over: a signal
            # sent in between is rightly run by host-a2, which serves them until it releases
            # its claims; once host-b holds them, host-a2 no longer does
            claims = [await store.get(f"claim.{partition_of('flow', n, 8)}") for n in on_b]
            return all(c is not None and c.value.get("host") == "host-b" for c in claims)

        await eventually(claimed_by_b, 40, 0.2)
        for n in on_b:
            assert await client.agent("flow", n).signal("approve", n, timeout=30) == {"delivered": f"move-{n}"}
        for n in on_b:
            assert await client.agent("flow", n).result(f"move-{n}", timeout=30) == {"run": f"move-{n}", "payload": n}
            log = await commits(client.nc, "flow", n)
            assert [c["j"]["k"] for c in log] == ["step", "wait", "signal", "step", "end"]
            assert log[0]["_headers"]["Agt-Host"] == "host-a" and log[-1]["_headers"]["Agt-Host"] == "host-b"

        for run in ["cli", "bare", "timer", "gate", *(f"move-{n}" for n in on_b)]:
            fx = await _done(client, run)
            assert fx["prepare.done"] == 1 and fx["finish.done"] == 1, (run, fx)
        assert b.proc is not None and b.proc.poll() is None
    finally:
        await client.close()
