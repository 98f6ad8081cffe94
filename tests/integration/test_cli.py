"""The CLI as a user runs it: `jetagents call`, `jetagents host`, `jetagents up`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import nats
import pytest

from jetagents import Client, ClientSettings, NatsServer
from jetagents.testing.server import free_port
from tests.integration.helpers import stream_state

CLI = [sys.executable, "-m", "jetagents.cli"]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


async def test_call_and_errors(nats_server: NatsServer, host_process_factory: Any) -> None:
    hp = host_process_factory(nats_server.url).start()
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url))
    try:
        await hp.wait_ready(client)
    finally:
        await client.close()
    env = dict(os.environ, JETAGENTS_NATS_URL=nats_server.url)

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("call", *args, env=env)

    r = await asyncio.to_thread(call, "counter/cli", "increment", '{"by": 2}', "--id", "cli-1")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"ok": True, "result": 2}
    r = await asyncio.to_thread(call, "counter/cli", "increment", '{"by": 2}', "--id", "cli-1")
    assert json.loads(r.stdout) == {"ok": True, "result": 2}  # same id: not applied twice
    r = await asyncio.to_thread(call, "counter/cli", "get", "--delivery", "at-most-once")
    assert json.loads(r.stdout)["result"] == 2
    # --priority high goes through the high lane's stream, not the normal one (ADR 0058)
    nc = await nats.connect(nats_server.url)
    try:
        before = [(await stream_state(nc, s))["last_seq"] for s in ("AGT_CMDH", "AGT_CMD")]
        r = await asyncio.to_thread(call, "counter/cli", "increment", '{"by": 1}', "--priority", "high")
        assert json.loads(r.stdout) == {"ok": True, "result": 3}, r.stderr
        after = [(await stream_state(nc, s))["last_seq"] for s in ("AGT_CMDH", "AGT_CMD")]
    finally:
        await nc.close()
    assert after == [before[0] + 1, before[1]]
    r = await asyncio.to_thread(call, "account/cli", "withdraw", '{"amount": 5}')
    assert r.returncode == 1
    assert json.loads(r.stdout)["error"]["reason"] == "insufficient_funds"
    assert "error: domain" in r.stderr
    r = await asyncio.to_thread(call, "counter/cli", "increment", "{not json")
    assert r.returncode == 2 and "error" in r.stderr
    r = await asyncio.to_thread(call, "counter.bad/x", "get")
    assert r.returncode == 2
    r = await asyncio.to_thread(call, "nosuch/x", "get", "--timeout", "5")
    assert r.returncode == 1 and "unknown_agent_type" in r.stdout
    r = await asyncio.to_thread(run_cli, "dlq", "--nats-url", nats_server.url)
    assert r.returncode == 0
    assert any(json.loads(line)["error"]["code"] == "unknown_agent_type" for line in r.stdout.splitlines())


def test_call_without_nats_is_a_clear_error() -> None:
    r = run_cli("call", "counter/c1", "get", "--nats-url", f"nats://127.0.0.1:{free_port()}", "--timeout", "2")
    assert r.returncode == 1
    assert "unavailable" in r.stderr


def test_a_host_with_no_agents_refuses_to_start() -> None:
    """An unconfigured host serves no example agents (ADR 0040): with no JETAGENTS_AGENTS it
    says so and exits 2 before it connects anywhere, rather than pull commands it can only refuse."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETAGENTS_")}
    env["JETAGENTS_NATS_URL"] = f"nats://127.0.0.1:{free_port()}"  # nothing there: it must not get that far
    env["JETAGENTS_LOG_FORMAT"] = "json"
    for argv in ([*CLI, "host"], [sys.executable, "-m", "agent_host"]):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 2, (argv, r.stdout, r.stderr)
        assert "no agent types configured" in r.stderr and "JETAGENTS_AGENTS" in r.stderr, r.stderr
        assert '"no_agents_configured"' in r.stdout + r.stderr
        assert "nats_unavailable" not in r.stdout + r.stderr


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not running
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


# some twenty CLI runs, each a Python process importing the package: at a load of 18 on two
# cores they alone took over the default 180 s
@pytest.mark.timeout(480)
def test_up_serves_and_stops_cleanly(tmp_path: Path) -> None:
    port, http_port, dash_port = free_port(), free_port(), free_port()
    proc = subprocess.Popen(
        [
            *CLI,
            "up",
            "--data-dir",
            str(tmp_path / "data"),
            "--hosts",
            "2",
            "--port",
            str(port),
            "--http-port",
            str(http_port),
            "--partitions",
            "16",
            "--dashboard-port",
            str(dash_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        env = dict(os.environ, JETAGENTS_NATS_URL=f"nats://127.0.0.1:{port}", JETAGENTS_PARTITIONS="16")
        # each wait has a deadline of its own: on a loaded machine the start and the model's
        # calls may take most of a minute, which must not leave the later waits no time at all
        deadline = time.monotonic() + 90
        ok = None
        while time.monotonic() < deadline:
            r = run_cli("call", "counter/up1", "increment", '{"by": 3}', "--id", "up-1", "--timeout", "3", env=env)
            if r.returncode == 0:
                ok = json.loads(r.stdout)
                break
            time.sleep(0.5)
        assert ok == {"ok": True, "result": 3}
        # the support desk (jetagents.ai) on the scripted model: triage routes, billing uses its tools
        text = '{"text": "What is on invoice INV-1001?"}'
        r = run_cli("call", "triage/acme-1", "open", text, "--timeout", "30", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        ticket = json.loads(r.stdout)["result"]
        assert ticket["specialist"] == "billing" and "INV-1001: 19.99 USD, paid twice" in ticket["answer"]
        # a specialist's answer streamed to the terminal as it comes, then the reply
        r = run_cli(
            "call", "tech/acme-3", "handle", '{"text": "the api is slow"}', "--stream", "--timeout", "30", env=env
        )
        assert r.returncode == 0, r.stdout + r.stderr
        text, reply = r.stdout.rstrip("\n").rsplit("\n", 1)
        assert text == "Tech here. api: degraded (p99 2.3 s); api: restarted, healthy."
        assert json.loads(reply) == {"ok": True, "result": text}
        # the ticket now waits for the customer: its follow-up reminder is set (an hour by default)
        r = run_cli("call", "followup/acme-1", "status", "--timeout", "10", env=env)
        assert r.returncode == 0 and json.loads(r.stdout)["result"]["waiting"] == "customer", r.stdout + r.stderr
        # both hosts joined the ring and hold their share (jetagents status)
        deadline = time.monotonic() + 90
        while True:
            r = run_cli("status", "--json", env=env)
            assert r.returncode == 0, r.stdout + r.stderr
            st = json.loads(r.stdout)
            held = sorted(h["partitions_held"] for h in st["hosts"] if h["alive"])
            if (held == [8, 8] and st["unowned"] == 0) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert st["leader"] in {"local-1", "local-2"} and st["ring_epoch"] >= 1, st
        assert held == [8, 8], st
        table = run_cli("status", env=env)
        assert table.returncode == 0 and "local-1" in table.stdout and "ring epoch" in table.stdout
        # move one agent to the second host and keep using it
        r = run_cli("migrate", "counter/up1", "local-2", "--strategy", "state", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["result"]["to"] == "local-2"
        r = run_cli("call", "counter/up1", "increment", '{"by": 3}', "--timeout", "10", env=env)
        assert json.loads(r.stdout) == {"ok": True, "result": 6}
        bad = run_cli("migrate", "counter/up1", "no-such-host", "--timeout", "3", env=env)
        assert bad.returncode == 1 and "not a live member" in bad.stderr
        # agents on both hosts answer
        for i in range(8):
            r = run_cli("call", f"counter/many{i}", "increment", "--delivery", "at-most-once", env=env)
            assert r.returncode == 0, r.stdout + r.stderr
        # the dashboard `up` started, on loopback only (a process of its own: it may still be
        # starting while the hosts already answer)
        deadline = time.monotonic() + 90
        while _http_status(dash_port, "/") != 200 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert _http_status(dash_port, "/") == 200 and _http_status(dash_port, "/agents") == 200
        assert _listen_addresses(dash_port) == {"127.0.0.1"}
        children = _children(proc.pid)
        assert len(children) == 4  # nats-server + 2 hosts + the dashboard
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "stopped" in out
        assert f"dashboard: http://127.0.0.1:{dash_port}/" in out
        assert "support desk (model: none configured: a scripted model" in out
        assert not [c for c in children if _alive(c)], "processes left running after jetagents up stopped"
        assert (tmp_path / "data" / "jetstream").is_dir()
    finally:
        # a failure midway: `up` stops what it started (its own clean stop), and whatever is
        # still running after that is killed; each child is the leader of a process group of
        # its own (child_preexec). A clean stop was checked above and left nothing.
        kids = _children(proc.pid) if proc.poll() is None else []
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                left, _ = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                left, _ = proc.communicate()
            print(left[-20_000:])  # what `up` said, shown with the failure
        for kid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(kid, signal.SIGKILL)


def _listen_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port`` (Linux /proc/net/tcp{,6})."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            addr, hex_port = fields[1].split(":")
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                if len(addr) == 8:  # IPv4, little-endian
                    found.add(".".join(str(int(addr[i : i + 2], 16)) for i in (6, 4, 2, 0)))
                else:
                    found.add("::" if int(addr, 16) == 0 else addr)
    return found


def _http_status(port: int, path: str) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=15) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def test_up_with_a_health_port_gives_each_host_its_own_on_loopback(tmp_path: Path) -> None:
    """``JETAGENTS_HEALTH_PORT`` with ``--hosts 2``: host 1 on the port, host 2 on the
    next one (they used to share it and the second host died), both on 127.0.0.1 only."""
    port, http_port, health = free_port(), free_port(), free_port(count=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETAGENTS_")}
    env["JETAGENTS_HEALTH_PORT"] = str(health)
    # the dashboard's port is taken: `up` runs without it and says why
    taken = socket.create_server(("127.0.0.1", 0))
    more = ["--http-port", str(http_port), "--partitions", "8", "--dashboard-port", str(taken.getsockname()[1])]
    proc = subprocess.Popen(
        [*CLI, "up", "--data-dir", str(tmp_path / "data"), "--hosts", "2", "--port", str(port), *more],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if _http_status(health, "/readyz") == 200 and _http_status(health + 1, "/readyz") == 200:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate(timeout=60)[0]
        assert _http_status(health, "/livez") == 200
        assert _http_status(health + 1, "/livez") == 200
        assert _listen_addresses(health) == {"127.0.0.1"}
        assert _listen_addresses(health + 1) == {"127.0.0.1"}
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "exited with" not in out, out
        assert "dashboard: not started" in out and "Address already in use" in out, out
    finally:
        taken.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
