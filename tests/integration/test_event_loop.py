"""The host process runs on the event loop its settings choose (ADR 0041): uvloop unless
``JETAGENTS_EVENT_LOOP=asyncio`` (or the older ``JETAGENTS_LOOP``) says otherwise."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from jetagents import Client, ClientSettings, NatsServer


async def _loop_logged(log_path: Any, timeout_s: float = 20.0) -> str:
    async with asyncio.timeout(timeout_s):
        while True:
            if log_path.exists():
                for line in log_path.read_text().splitlines():
                    if line.startswith("{") and json.loads(line).get("event") == "event_loop":
                        return str(json.loads(line)["loop"])
            await asyncio.sleep(0.1)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "uvloop"),
        ({"JETAGENTS_EVENT_LOOP": "asyncio"}, "asyncio"),
        ({"JETAGENTS_EVENT_LOOP": "uvloop"}, "uvloop"),
        ({"JETAGENTS_LOOP": "asyncio"}, "asyncio"),
    ],
)
async def test_the_host_process_runs_on_the_chosen_loop(
    nats_server: NatsServer,
    host_process_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    expected: str,
) -> None:
    for name in ("JETAGENTS_EVENT_LOOP", "JETAGENTS_LOOP"):
        monkeypatch.delenv(name, raising=False)
    hp = host_process_factory(nats_server.url, **env).start()
    assert await _loop_logged(hp.log_path) == expected
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url, partitions=8))
    try:
        await hp.wait_ready(client)  # and it serves on it
        assert await client.agent("counter", "loop").request("increment", {"by": 2}) == 2
    finally:
        await client.close()
    assert hp.terminate() == 0
