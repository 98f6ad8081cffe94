"""Helpers for integration tests: read streams the way an operator would."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from nats.aio.client import Client as NATS

from jetagents import Agent, Host, Registry
from jetagents._nats.api import connect as raw_connect
from jetagents._nats.api import js_api
from tests.conftest import host_settings

HostFactory = Callable[..., Awaitable[Host]]


@contextlib.asynccontextmanager
async def started_hosts(url: str, agents: list[type[Agent[Any]]]) -> AsyncIterator[HostFactory]:
    """``make(**overrides)`` starts a host serving ``agents`` with ``host_settings(url,
    **overrides)``; every host made is stopped at the end, without a drain (tests of stuck
    agents leave work behind on purpose)."""
    hosts: list[Host] = []

    async def make(meter_provider: Any = None, **overrides: Any) -> Host:
        h = Host(host_settings(url, **overrides), Registry(agents), meter_provider=meter_provider)
        await h.start()
        hosts.append(h)
        return h

    try:
        yield make
    finally:
        for h in hosts:
            await h.stop(drain=False)


@contextlib.asynccontextmanager
async def raw_nats(url: str, name: str) -> AsyncIterator[NATS]:
    """A plain nats-py connection (raw calls, streams read as an operator would)."""
    conn = await raw_connect(url, name=name)
    try:
        yield conn
    finally:
        await conn.close()


async def call_json(nc: NATS, subject: str, body: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """A core request with a JSON body, the reply's JSON."""
    msg = await nc.request(subject, orjson.dumps(body), timeout=timeout)
    out: dict[str, Any] = orjson.loads(msg.data)
    return out


async def stream_state(nc: NATS, stream: str) -> dict[str, Any]:
    info = await js_api(nc, f"$JS.API.STREAM.INFO.{stream}", None, 5)
    return dict(info["state"])


async def consumer_info(nc: NATS, stream: str, consumer: str) -> dict[str, Any]:
    return await js_api(nc, f"$JS.API.CONSUMER.INFO.{stream}.{consumer}", None, 5)


async def read_all(nc: NATS, stream: str, subject: str | None = None) -> list[tuple[int, str, dict[str, str], bytes]]:
    """Every message of ``stream`` (optionally one subject): (seq, subject, headers, data)."""
    js = nc.jetstream()
    state = await stream_state(nc, stream)
    out = []
    if state["messages"] == 0:
        return out
    for seq in range(int(state["first_seq"]), int(state["last_seq"]) + 1):
        try:
            m = await js.get_msg(stream, seq)
        except Exception:
            continue
        if subject is None or m.subject == subject:
            out.append((seq, m.subject or "", dict(m.headers or {}), m.data or b""))
    return out


async def dead_letters(nc: NATS, stream: str = "AGT_DLQ") -> list[dict[str, Any]]:
    return [orjson.loads(d) for _, _, _, d in await read_all(nc, stream)]


async def commits(nc: NATS, agent_type: str, agent_id: str) -> list[dict[str, Any]]:
    msgs = await read_all(nc, "AGT_EVT", f"agt.evt.{agent_type}.{agent_id}")
    return [dict(orjson.loads(d), _seq=seq, _headers=h) for seq, _, h, d in msgs]


async def eventually(pred: Any, timeout_s: float = 10.0, interval_s: float = 0.05) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            result = pred()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(interval_s)
