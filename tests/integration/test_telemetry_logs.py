"""The host service's JSON logs and OTLP setup, on the real entry point (``python -m
agent_host``) with OTEL_* variables pointing at a collector that is not there."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import orjson
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

from jetagents import Agent, Client, ClientSettings, InternalError, NatsServer, action
from jetagents.testing.server import free_port

# the host process imports this module for Broken: no tests.conftest here (it configures logging)
REPO = Path(__file__).resolve().parents[2]


class BrokenState(BaseModel):
    pass


class Broken(Agent[BrokenState]):
    """Its only action fails: the host logs the failure and dead-letters the command."""

    type_name = "broken"
    state_type = BrokenState

    @action
    async def explode(self) -> None:
        raise RuntimeError("boom")


def closed_port() -> int:
    """A port reserved for this process and never listened on."""
    return free_port()


async def test_failing_action_logs_json_with_trace_and_correlation(
    nats_server: NatsServer, host_process_factory: Any
) -> None:
    port = closed_port()
    hp = host_process_factory(
        nats_server.url,
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        JETAGENTS_AGENTS=json.dumps(
            ["jetagents.examples:EXAMPLE_AGENTS", "tests.integration.test_telemetry_logs:Broken"]
        ),
        JETAGENTS_HOST_ID="log-host",
        JETAGENTS_MEMBERSHIP="static",
        JETAGENTS_MAX_DELIVER="1",
        JETAGENTS_DRAIN_GRACE_S="1",
        # an SDK with OTLP exporters to a port nobody listens on: the host works, and exits in time
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
    ).start()
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    client = await Client.connect(
        settings=ClientSettings(nats_url=nats_server.url, partitions=8, request_timeout_s=10), tracer_provider=tp
    )
    try:
        await hp.wait_ready(client)
        try:
            await client.agent("broken", "b1").request("explode", correlation_id="corr-77")
            raise AssertionError("the action should have failed")
        except InternalError as exc:
            assert "boom" in exc.message
        sends = [s for s in exporter.get_finished_spans() if s.name == "send broken"]
        assert len(sends) == 1
        trace_id = f"{sends[0].context.trace_id:032x}"
    finally:
        await client.close()
        tp.shutdown()
    started = time.monotonic()
    assert hp.terminate(timeout_s=30) == 0
    # drain (1 s grace) plus the bounded flush to the missing collector (5 s)
    assert time.monotonic() - started < 12

    lines = [orjson.loads(line) for line in hp.log_path.read_bytes().splitlines() if line.startswith(b"{")]
    events = {line["event"]: line for line in lines}
    assert events["telemetry_export"]["traces"] is True and events["telemetry_export"]["metrics"] is True
    # the process took what starting made out of the collector's reach (ADR 0031, session 7)
    assert events["gc_frozen"]["objects"] > 10_000, events["gc_frozen"]
    for name in ("action_failed", "dead_lettered"):
        line = events[name]
        assert line["host"] == "log-host", line
        assert line["agent"] == "broken/b1", line
        assert line["correlation_id"] == "corr-77", line
        # the host's own span (an SDK is installed): same trace as the client's send
        assert line["trace_id"] == trace_id, line
        assert len(line["span_id"]) == 16 and line["span_id"] != f"{sends[0].context.span_id:016x}", line
        assert line["level"] in ("warning", "info") and line["timestamp"]
    assert "boom" in events["action_failed"]["error"]
