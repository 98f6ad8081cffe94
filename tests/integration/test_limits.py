"""Large bodies are refused before they hurt the host (ADR 0039): the server's max_payload,
the host's intake check and its byte budget."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from typing import Any

import orjson
import pytest

from jetagents import Client, ClientSettings, NatsServer, PayloadTooLarge
from jetagents._nats.api import connect
from tests.conftest import HostProcess, host_settings
from tests.integration.helpers import dead_letters, eventually

MiB = 1024 * 1024


def _vm(pid: int, key: str) -> int:
    """``VmRSS`` or ``VmHWM`` (peak RSS) of a process, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} for {pid}")


def _varz(server: NatsServer) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/varz", timeout=10) as r:
        return dict(json.loads(r.read()))


async def test_server_refuses_publishes_over_its_max_payload(nats_server: NatsServer) -> None:
    """The embedded server takes 2 MiB: more is a protocol error to a raw publisher and a
    typed PayloadTooLarge to the Python client, whatever its own limit says."""
    assert _varz(nats_server)["max_payload"] == 2 * MiB
    # a raw publisher is told, and disconnected, by the server
    with socket.create_connection(("127.0.0.1", nats_server.port), timeout=10) as s:
        s.recv(4096)
        s.sendall(b'CONNECT {"verbose":false}\r\nPUB agt.call.counter.big 3145728\r\n')
        got = b""
        while b"\r\n" not in got:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
    assert b"-ERR 'Maximum Payload Violation'" in got
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, max_payload_bytes=8 * MiB))
    try:
        with pytest.raises(PayloadTooLarge):
            await client.agent("counter", "big").request("increment", {"pad": "x" * (3 * MiB)}, delivery="at-most-once")
    finally:
        await client.close()


async def test_oversized_call_is_refused_at_intake_and_dead_lettered_once(nats_server: NatsServer) -> None:
    from jetagents import Host, Registry
    from jetagents.examples import EXAMPLE_AGENTS

    host = Host(host_settings(nats_server.url, max_payload_bytes=4096), Registry(EXAMPLE_AGENTS))
    await host.start()
    nc = await connect(nats_server.url, name="raw")
    try:
        body = b'{"action":"add","params":{"by":1},"pad":"' + b"x" * 100_000 + b'"}'
        reply = await nc.request("agt.call.counter.big1", body, timeout=10)
        err = orjson.loads(reply.data)["error"]
        assert err["code"] == "payload_too_large"
        assert "100" in err["message"]
        await eventually(lambda: host.stats["dead_letters"] == 1)
        [dl] = await dead_letters(nc)
        assert dl["error"]["code"] == "payload_too_large" and dl["payload_bytes"] == len(body)
        assert host.scheduler.inflight_bytes == 0 and host.scheduler.inflight_count == 0
    finally:
        await nc.close()
        await host.stop()


async def test_burst_of_max_size_calls_keeps_the_host_bounded(
    nats_server: NatsServer, host_process_factory: Any
) -> None:
    """250 calls of 1.9 MiB at once (the largest the shipped server takes): the host refuses
    them as they arrive; its peak RSS stays bounded, the server never drops it as a slow
    consumer, and small calls keep answering exactly."""
    hp: HostProcess = host_process_factory(nats_server.url, JETAGENTS_LOG_LEVEL="WARNING").start()
    assert hp.proc is not None
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
    nc = await connect(nats_server.url, name="burst")
    try:
        await hp.wait_ready(client, timeout_s=60)
        for _ in range(20):  # warm up the host's code paths before the baseline
            await client.agent("counter", "warm").request("increment", {"by": 1}, delivery="at-most-once")
        rss_before = _vm(hp.proc.pid, "VmRSS")
        slow_before = _varz(nats_server)["slow_consumers"]
        body = b'{"action":"add","params":{"by":1},"pad":"' + b"x" * int(1.9 * MiB) + b'"}'

        async def big(i: int) -> str:
            try:
                reply = await nc.request(f"agt.call.counter.big{i}", body, timeout=120)
            except Exception as exc:
                return type(exc).__name__
            return str(orjson.loads(reply.data)["error"]["code"])

        async def small() -> int:
            n = 0
            while not burst.done():
                # exactly-once: the answer may be slow while the burst passes, never wrong
                await client.agent("counter", "small").request("increment", {"by": 1}, timeout=60)
                n += 1
                await asyncio.sleep(0.02)  # a steady trickle, not a second flood
            return n

        burst = asyncio.ensure_future(asyncio.gather(*(big(i) for i in range(250))))
        smalls = await small()
        codes = await burst
        peak = _vm(hp.proc.pid, "VmHWM")
        rss_after = _vm(hp.proc.pid, "VmRSS")
        print(f"\nRSS before {rss_before / MiB:.0f} MiB, peak {peak / MiB:.0f} MiB, after {rss_after / MiB:.0f} MiB")
        print(f"codes {sorted((c, codes.count(c)) for c in set(codes))}, small calls during the burst {smalls}")
        assert _varz(nats_server)["slow_consumers"] == slow_before
        assert set(codes) <= {"payload_too_large", "unavailable"}, codes
        assert codes.count("payload_too_large") >= 1
        # 250 x 1.9 MiB is 475 MiB; the host holds at most its byte budget (64 MiB) in flight
        # plus nats-py's bounded pending calls (64 MiB) and read buffers
        assert peak - rss_before < 250 * MiB, (rss_before, peak)
        got = await client.agent("counter", "small").request("get", delivery="at-most-once", timeout=30)
        assert got == smalls
        for _ in range(50):
            await client.agent("counter", "small").request("increment", {"by": 1}, delivery="at-most-once", timeout=30)
        assert await client.agent("counter", "small").request("get", delivery="at-most-once") == smalls + 50
        assert hp.proc.poll() is None
    finally:
        await nc.close()
        await client.close()
        hp.terminate()
