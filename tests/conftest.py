"""Fixtures that start real nats-server processes (free loopback ports, temp store dirs)
and real hosts. Nothing here mocks NATS."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from jetagents import Client, ClientSettings, Host, HostSettings, NatsServer, Registry
from jetagents._obs.logging import configure_logging
from jetagents.examples import EXAMPLE_AGENTS
from jetagents.testing.server import NatsCluster

configure_logging("console", os.environ.get("JETAGENTS_TEST_LOG_LEVEL", "WARNING"))
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(data_dir=tmp_path / "nats", name="test")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A real 3-node JetStream cluster on loopback (R3 streams and KV work on it)."""
    cluster = NatsCluster(data_dir=tmp_path / "cluster", size=3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def host_settings(url: str, **overrides: Any) -> HostSettings:
    base: dict[str, Any] = {
        "nats_url": url,
        "partitions": 8,
        "host_id": "test-host",
        "ack_wait_s": 3.0,
        "pull_expires_s": 2.0,
        "drain_grace_s": 5.0,
        "op_timeout_s": 3.0,
    }
    base.update(overrides)
    return HostSettings(**base)


@pytest.fixture
async def host(nats_server: NatsServer) -> AsyncIterator[Host]:
    h = Host(host_settings(nats_server.url), Registry(EXAMPLE_AGENTS))
    await h.start()
    try:
        yield h
    finally:
        await h.stop()


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[Client]:
    c = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8, request_timeout_s=10))
    try:
        yield c
    finally:
        await c.close()


class HostProcess:
    """An agent host in its own OS process (``python -m agent_host``), for kill tests."""

    def __init__(self, url: str, log_path: Path, **env: str) -> None:
        self.url = url
        self.log_path = log_path
        self.env = dict(os.environ)
        self.env.update(
            {
                "JETAGENTS_NATS_URL": url,
                "JETAGENTS_PARTITIONS": "8",
                "JETAGENTS_LOG_FORMAT": "json",
                "JETAGENTS_LOG_LEVEL": "INFO",
                "JETAGENTS_ACK_WAIT_S": "2",
                "JETAGENTS_PULL_EXPIRES_S": "1",
                # a killed host leaves the cluster within ~2 s (the default is 3 s)
                "JETAGENTS_MEMBER_TTL_S": "2",
                "JETAGENTS_LEASE_TTL_S": "2",
                "JETAGENTS_HEARTBEAT_S": "0.4",
                # a host serves no agent type unless told (ADR 0040)
                "JETAGENTS_AGENTS": '["jetagents.examples:EXAMPLE_AGENTS"]',
            }
        )
        self.env.update(env)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> HostProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent_host"], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        return self

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def terminate(self, timeout_s: float = 30) -> int:
        assert self.proc is not None
        self.signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    async def wait_ready(self, client: Client, timeout_s: float = 20) -> None:
        """Ready when a command to a probe agent is answered."""
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    await client.agent("counter", "probe").request("get", delivery="at-most-once", timeout=1)
                    return
                except Exception:
                    await asyncio.sleep(0.1)


@pytest.fixture
def host_process_factory(tmp_path: Path) -> Iterator[Any]:
    made: list[HostProcess] = []

    def make(url: str, **env: str) -> HostProcess:
        hp = HostProcess(url, tmp_path / f"host-{len(made)}.log", **env)
        made.append(hp)
        return hp

    yield make
    for hp in made:
        if hp.proc is not None and hp.proc.poll() is None:
            hp.kill()


__all__ = ["REPO", "HostProcess", "host_settings", "structlog"]
