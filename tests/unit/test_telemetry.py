"""Telemetry without NATS: the OTel setup from OTEL_* variables, the log processor, the
no-SDK fast path."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetrics
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
from opentelemetry.sdk.trace import TracerProvider

from jetagents._obs.telemetry import (
    ClientTelemetry,
    OtelSetup,
    Telemetry,
    add_trace_context,
    exit_command,
    set_command,
    setup_from_env,
)
from jetagents.testing.server import free_port

OTEL_VARS = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_SDK_DISABLED",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in OTEL_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def closed_port() -> int:
    """A port reserved for this process and never listened on."""
    return free_port()


def exporters(setup: OtelSetup) -> list[type]:
    return [type(e) for e in setup.exporters]


def test_no_otel_variables_no_sdk(env: pytest.MonkeyPatch) -> None:
    assert setup_from_env() is None
    env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    env.setenv("OTEL_SDK_DISABLED", "true")
    assert setup_from_env() is None


def test_endpoint_builds_otlp_providers_and_shutdown_is_bounded(env: pytest.MonkeyPatch) -> None:
    env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{closed_port()}")  # no collector there
    env.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")  # so the abandoned flush ends soon after the test
    setup = setup_from_env("jetagents-host", instance_id="h-1")
    assert setup is not None
    assert isinstance(setup.tracer_provider, TracerProvider) and isinstance(setup.meter_provider, MeterProvider)
    assert exporters(setup) == [GrpcSpans, GrpcMetrics]
    attrs = setup.tracer_provider.resource.attributes
    assert attrs["service.name"] == "jetagents-host"
    assert attrs["service.instance.id"] == "h-1"
    # something to flush, to an endpoint that refuses connections
    with setup.tracer_provider.get_tracer("t").start_as_current_span("s"):
        pass
    setup.meter_provider.get_meter("t").create_counter("c").add(1)
    started = time.monotonic()
    setup.shutdown(timeout_s=0.5)  # the exporter would retry for longer: abandoned at the bound
    assert time.monotonic() - started < 1.5
    # Let the abandoned flush finish before the next test: its retries draw from the
    # global `random` (jitter), which hypothesis, in a later test, rightly objects to.
    for thread in threading.enumerate():
        if thread.name == "otel-shutdown":
            thread.join(15)


def test_protocol_exporter_choice_and_service_name(env: pytest.MonkeyPatch) -> None:
    env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    env.setenv("OTEL_METRICS_EXPORTER", "console")
    env.setenv("OTEL_SERVICE_NAME", "my-hosts")
    env.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=pod-7")
    setup = setup_from_env("jetagents-host", instance_id="h-1")
    assert setup is not None
    assert exporters(setup) == [HttpSpans, ConsoleMetricExporter]
    assert setup.tracer_provider is not None
    attrs = setup.tracer_provider.resource.attributes
    assert attrs["service.name"] == "my-hosts"
    assert attrs["service.instance.id"] == "pod-7"  # the operator's word wins
    assert setup.shutdown(timeout_s=2.0)

    env.setenv("OTEL_TRACES_EXPORTER", "none")
    setup = setup_from_env()
    assert setup is not None and setup.tracer_provider is None and setup.meter_provider is not None
    assert setup.shutdown(timeout_s=2.0)

    env.setenv("OTEL_METRICS_EXPORTER", "zipkin")
    with pytest.raises(ValueError, match="zipkin"):
        setup_from_env()


def test_no_sdk_no_spans_no_metrics() -> None:
    # the global providers are the API's stand-ins in the test process
    assert not Telemetry("x").tracing and not Telemetry("x").metering
    noop = Telemetry("x", trace.NoOpTracerProvider(), metrics.NoOpMeterProvider())
    assert not noop.tracing and not noop.metering
    sdk = ClientTelemetry(TracerProvider(), MeterProvider())
    assert sdk.tracing and sdk.metering


def test_log_context_from_the_command_and_its_traceparent() -> None:
    assert add_trace_context(None, "info", {"event": "x"}) == {"event": "x"}
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    token = set_command(("h-1", "counter/c1", "order-42", tp))
    try:
        out = add_trace_context(None, "info", {"event": "x"})
        assert out == {
            "event": "x",
            "host": "h-1",
            "agent": "counter/c1",
            "correlation_id": "order-42",
            "trace_id": "0af7651916cd43dd8448eb211c80319c",
            "span_id": "b7ad6b7169203331",
        }
        # what the line says itself wins
        assert add_trace_context(None, "info", {"event": "x", "agent": "other/a"})["agent"] == "other/a"
        # with an SDK span current, its ids (the host's own span) are used
        tracer = TracerProvider().get_tracer("t")
        with tracer.start_as_current_span("process") as span:
            out = add_trace_context(None, "info", {"event": "x"})
        ctx = span.get_span_context()
        assert out["trace_id"] == f"{ctx.trace_id:032x}" and out["span_id"] == f"{ctx.span_id:016x}"
    finally:
        exit_command(token)
    assert add_trace_context(None, "info", {"event": "x"}) == {"event": "x"}
    # an invalid traceparent adds no ids
    token = set_command(("h-1", "counter/c1", "", "garbage"))
    try:
        assert add_trace_context(None, "info", {"event": "x"}) == {"event": "x", "host": "h-1", "agent": "counter/c1"}
    finally:
        exit_command(token)


def test_global_sdk_set_after_construction_is_picked_up() -> None:
    # in a child process: the global providers can be set once per process
    code = """
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from jetagents._obs.telemetry import Telemetry
tel = Telemetry("x")
assert not tel.tracing and not tel.metering
trace.set_tracer_provider(TracerProvider())
metrics.set_meter_provider(MeterProvider())
assert tel.tracing and tel.metering
with tel.tracer.start_as_current_span("s") as span:
    assert span.is_recording()
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
