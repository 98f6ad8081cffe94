"""Health endpoints, micro-service discovery and the readiness timeline of one host
(the service's own ``serve()``, in-process) through a start against a late NATS and a drain."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from pydantic import BaseModel

from agent_host.main import serve
from jetagents import Agent, Client, ClientSettings, Event, NatsServer, Registry, action, applies
from jetagents._obs.health import HealthMonitor, host_checks
from jetagents.examples import EXAMPLE_AGENTS
from jetagents.testing.server import free_port
from tests.conftest import host_settings


class SlowState(BaseModel):
    done: int = 0


class Worked(Event):
    pass


class Slow(Agent[SlowState]):
    """An action that takes a while, so a drain has something to wait for."""

    type_name = "slow"
    state_type = SlowState

    @action
    async def work(self, seconds: float = 1.0) -> int:
        await asyncio.sleep(seconds)
        self.emit(Worked())
        return self.state.done

    @applies
    def _worked(self, state: SlowState, event: Worked) -> None:
        state.done += 1


async def _get(port: int, path: str) -> tuple[int, dict[str, object]] | None:
    """One HTTP GET with a bare socket; None when nothing listens."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), orjson.loads(body)


class Timeline:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.rows: list[str] = []

    def note(self, what: str) -> None:
        self.rows.append(f"  +{(time.monotonic() - self.t0) * 1000:7.0f} ms  {what}")

    def __str__(self) -> str:
        return "\n".join(self.rows)


def test_host_checks_reads_either_host_interface() -> None:
    class Old:
        ready = True
        nc = None

    class New:
        def readiness(self) -> dict[str, bool]:
            return {"connected": True, "ring_joined": False}

    assert host_checks(None) == {"started": False}
    assert host_checks(Old()) == {"connected": False, "started": True}
    assert host_checks(New()) == {"connected": True, "ring_joined": False}


async def test_readiness_timeline_start_and_drain(tmp_path: Path) -> None:
    tl = Timeline()
    nats_port, health_port = free_port(), free_port()
    server = NatsServer(data_dir=tmp_path / "nats", port=nats_port, name="health")
    settings = host_settings(server.url, health_port=health_port, health_bind="127.0.0.1", drain_grace_s=5.0)
    monitor = HealthMonitor(settings.host_id)
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve(settings, Registry([*EXAMPLE_AGENTS, Slow]), stop=stop, monitor=monitor, install_signals=False)
    )
    seen: set[tuple[str, int | None]] = set()

    async def probe(label: str) -> tuple[int | None, dict[str, object]]:
        live, ready = await _get(health_port, "/livez"), await _get(health_port, "/readyz")
        state = (live[0] if live else None, ready[0] if ready else None)
        if (label, state[1]) not in seen:
            seen.add((label, state[1]))
            tl.note(f"{label}: /livez {state[0]}  /readyz {state[1]}  {ready[1]['checks'] if ready else '-'}")
        return state[1], (ready[1] if ready else {})

    try:
        # 1. NATS is not running yet: alive, not ready, and it says why
        tl.note("serve() started, nats-server not running")
        async with asyncio.timeout(10):
            while (await probe("nats down"))[0] is None:
                await asyncio.sleep(0.02)
        code, body = await probe("nats down")
        assert code == 503 and body["ready"] is False
        assert (await _get(health_port, "/livez")) == (200, {"live": True, "host_id": settings.host_id})
        assert (await _get(health_port, "/nope"))[0] == 404  # type: ignore[index]

        # 2. NATS comes up: the service's retry loop connects; ready once partitions run
        await asyncio.to_thread(server.start)
        tl.note("nats-server ready")
        async with asyncio.timeout(20):
            while (await probe("starting"))[0] != 200:
                await asyncio.sleep(0.02)
        code, body = await probe("running")
        assert code == 200 and all(body["checks"].values())  # type: ignore[union-attr]

        # 3. discovery with bare nats-py: $SRV.PING / INFO / STATS and the status endpoint
        nc = await nats.connect(server.url)
        try:
            ping = orjson.loads((await nc.request("$SRV.PING.jetagents-host", b"", timeout=2)).data)
            assert ping["name"] == "jetagents-host" and ping["metadata"]["host_id"] == settings.host_id
            info = orjson.loads((await nc.request("$SRV.INFO.jetagents-host", b"", timeout=2)).data)
            assert [e["subject"] for e in info["endpoints"]] == [f"agt.sys.status.{settings.host_id}"]
            stats = orjson.loads((await nc.request("$SRV.STATS.jetagents-host", b"", timeout=2)).data)
            assert stats["endpoints"][0]["data"]["partitions_owned"] == 8
            status = orjson.loads((await nc.request(f"agt.sys.status.{settings.host_id}", b"", timeout=2)).data)
            assert status["ready"] is True and status["partitions"] == list(range(8))
            tl.note(f"$SRV.PING answered by {ping['name']} id={ping['id']} host_id={ping['metadata']['host_id']}")

            # 4. drain with a command in hand: not ready at once, the command still finishes
            client = await Client.connect(settings=ClientSettings(nats_url=server.url, partitions=8))
            try:
                pending = asyncio.ensure_future(client.agent("slow", "s1").request("work", {"seconds": 1.5}))
                async with asyncio.timeout(10):
                    while monitor.status()["inflight"] == 0:
                        await asyncio.sleep(0.01)
                tl.note("slow command in hand; stop requested (what SIGTERM does)")
                stop.set()
                async with asyncio.timeout(5):
                    while (await probe("draining"))[0] != 503:
                        await asyncio.sleep(0.01)
                assert not pending.done(), "readiness must drop before the in-flight command finishes"
                async with asyncio.timeout(5):
                    while True:  # discovery forgets the host while it drains
                        try:
                            await nc.request("$SRV.PING.jetagents-host", b"", timeout=0.5)
                        except (NoRespondersError, NatsTimeout):
                            break
                        await asyncio.sleep(0.02)
                tl.note("$SRV.PING: no responders")
                assert await asyncio.wait_for(pending, 10) == 1
                tl.note("in-flight command answered during the drain")
            finally:
                await client.close()
        finally:
            await nc.close()
        await asyncio.wait_for(task, settings.drain_grace_s + settings.op_timeout_s + 2 + 5)
        tl.note("serve() returned (drain finished)")
        assert await _get(health_port, "/livez") is None
        tl.note("health server closed")
    finally:
        stop.set()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        server.stop()
        print("\nreadiness timeline (probe view):\n" + str(tl))
        print("readiness transitions (monitor):")
        for t, ready, checks in monitor.timeline:
            print(f"  +{(t - tl.t0) * 1000:7.0f} ms  ready={ready}  {checks}")
    transitions = [ready for _, ready, _ in monitor.timeline]
    assert transitions == [False, True, False], monitor.timeline


@pytest.mark.parametrize("line", [b"BROKEN\r\n\r\n", b"POST /readyz HTTP/1.1\r\n\r\n"])
async def test_health_server_refuses_bad_requests(line: bytes) -> None:
    from jetagents._obs.health import HealthServer

    server = await HealthServer(HealthMonitor("h"), "127.0.0.1", 0).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(line)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert int(raw.split()[1]) in (400, 405)
        assert (await _get(server.port, "/readyz"))[0] == 503  # type: ignore[index]
    finally:
        await server.stop()


async def test_sigterm_drains_the_host_process(nats_server: NatsServer, host_process_factory: Any) -> None:
    """The container's PID 1 path: ``python -m agent_host``, ready over HTTP, SIGTERM, exit 0."""
    health_port = free_port()
    hp = host_process_factory(
        nats_server.url,
        JETAGENTS_HEALTH_PORT=str(health_port),
        JETAGENTS_HOST_ID="sig",
        JETAGENTS_DRAIN_GRACE_S="3",
        JETAGENTS_OP_TIMEOUT_S="2",
    ).start()
    async with asyncio.timeout(30):
        while (await _get(health_port, "/readyz") or (0, {}))[0] != 200:
            await asyncio.sleep(0.05)
    t0 = time.monotonic()
    code = await asyncio.to_thread(hp.terminate, 20)
    elapsed = time.monotonic() - t0
    log = hp.log_path.read_text()
    print(f"\nSIGTERM to exit: {elapsed:.2f}s")
    assert code == 0
    assert '"drain_started"' in log and '"readiness_changed"' in log, log[-2000:]
    assert '"drain_finished"' in log or '"drain_interrupted"' in log, log[-2000:]
    assert elapsed < 3 + 2 + 2 + 2, log[-2000:]  # grace + one round trip + margin, + process exit
    assert await _get(health_port, "/livez") is None
