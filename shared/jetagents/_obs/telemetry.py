"""OpenTelemetry for hosts and clients: spans, metric instruments, log context, OTLP setup.

Cost rule (ADR 0030): without an SDK provider (the OpenTelemetry API alone), a command
costs one provider check for spans and one for metrics; no span object, attribute dict or
measurement is made. The trace context is still carried (``propagation.carry_context``).

Span shape of one command (one trace across processes, ``traceparent`` in NATS headers)::

    send <type>        PRODUCER  client
    └─ process <type>  CONSUMER  host
       ├─ append <type>  PRODUCER  host (the commit on agt.evt.<type>.<id>)
       └─ reply <type>   PRODUCER  host (core NATS, to the caller's inbox)

Replaying events on activation opens no span: it is reported as an ``activated`` event on
the process span. Metric attributes are bounded by the code (agent type, action, delivery
mode, outcome, error code), never by data (agent ids, command ids).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, propagate, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .._core.wire import TRACESTATE
from .propagation import valid_traceparent

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

try:  # the API's stand-in before an SDK provider is set; private, hence the fallback
    from opentelemetry.metrics import _internal as _metrics_internal
    from opentelemetry.metrics._internal import _ProxyMeterProvider
except ImportError:  # pragma: no cover - another API version
    _metrics_internal = None  # type: ignore[assignment]
    _ProxyMeterProvider = metrics.NoOpMeterProvider  # type: ignore[misc,assignment]

SCOPE_VERSION = "0.1.0"

# -- attribute keys (OpenTelemetry messaging conventions + ours) ---------------------------
MESSAGING_SYSTEM = "messaging.system"
MESSAGING_OPERATION_TYPE = "messaging.operation.type"
MESSAGING_OPERATION_NAME = "messaging.operation.name"
MESSAGING_DESTINATION = "messaging.destination.name"
MESSAGING_DESTINATION_TEMPORARY = "messaging.destination.temporary"
MESSAGING_PARTITION = "messaging.destination.partition.id"
MESSAGING_CONSUMER_GROUP = "messaging.consumer.group.name"
MESSAGING_MESSAGE_ID = "messaging.message.id"
MESSAGING_CONVERSATION_ID = "messaging.message.conversation_id"
MESSAGING_BODY_SIZE = "messaging.message.body.size"
ERROR_TYPE = "error.type"
AGENT_TYPE = "jetagents.agent.type"
AGENT_ID = "jetagents.agent.id"  # spans only: unbounded
ACTION = "jetagents.action"
DELIVERY = "jetagents.delivery"
OUTCOME = "jetagents.outcome"
HOST_ID = "jetagents.host.id"
DELIVERY_COUNT = "jetagents.delivery.count"
EVENT_SEQ = "jetagents.event.seq"
REPLAYED = "jetagents.replayed"
HANDOFF = "jetagents.handoff"
GRACEFUL = "jetagents.graceful"
DEDUP_SOURCE = "jetagents.dedup.source"

# outcomes of one command on the host
OK = "ok"
DUPLICATE = "duplicate"  # answered from the dedup record, not applied again
ERROR = "error"  # answered with an error (domain refusal, deadline, at-most-once failure)
DEAD_LETTER = "dead_letter"  # bad input or retries exhausted: dead-lettered, terminated
REQUEUED = "requeued"  # handed back to the stream (stopping, partition lost)
FAILED = "failed"  # the host itself failed (a bug); redelivered

# seconds; the SDK default buckets are meant for milliseconds
DURATION_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


_API_TRACER_PROVIDERS = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
_API_METER_PROVIDERS = (metrics.NoOpMeterProvider, _ProxyMeterProvider)


def sdk_tracer_provider(tp: trace.TracerProvider | None) -> bool:
    """Whether ``tp`` (or the global provider) records spans (an SDK, not the API's stand-ins)."""
    return not isinstance(tp if tp is not None else trace.get_tracer_provider(), _API_TRACER_PROVIDERS)


def sdk_meter_provider(mp: metrics.MeterProvider | None) -> bool:
    return not isinstance(mp if mp is not None else metrics.get_meter_provider(), _API_METER_PROVIDERS)


class _SdkSet:
    """``Telemetry.tracing`` / ``Telemetry.metering``: whether an SDK provider of that kind is
    set. A non-data descriptor, so an answer that is settled (explicit providers, or an SDK
    seen once) is a plain instance attribute that shadows it; until then (read for every
    command), the API's module global holding the global provider is looked at."""

    __slots__ = ("_api_types", "_globals", "_key", "_name", "_sdk")

    def __init__(self, module: Any, key: str, api_types: tuple[type, ...], sdk: Callable[[Any], bool]) -> None:
        # The public getter looks up an environment variable on every call while no provider
        # is set (~1 us, per check, per command); the module global says the same for ~50 ns
        # (private: without it, as in another API version, the getter decides)
        self._globals: dict[str, Any] = vars(module) if module is not None else {}
        self._key = key
        self._api_types = api_types
        self._sdk = sdk
        self._name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, tel: Telemetry | None, owner: type | None = None) -> bool:
        try:
            provider = self._globals[self._key]
        except KeyError:  # pragma: no cover - another API version
            sdk = self._sdk(None)
        else:
            if provider is None:  # none set (the common case)
                return False
            sdk = not isinstance(provider, self._api_types)
        if not sdk:
            return False
        # a global SDK provider can be set once per process and never unset: once seen, it stays
        if tel is not None:  # not read on the class
            tel.__dict__[self._name] = True
        return True


class Telemetry:
    """The tracer and meter of one host or client.

    With explicit providers they are used as given; without, the global ones are looked
    up on every check, so an SDK installed after construction is picked up.
    """

    tracing = _SdkSet(trace, "_TRACER_PROVIDER", _API_TRACER_PROVIDERS, sdk_tracer_provider)
    metering = _SdkSet(_metrics_internal, "_METER_PROVIDER", _API_METER_PROVIDERS, sdk_meter_provider)

    def __init__(
        self,
        scope: str,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        scope_attributes: Mapping[str, str] | None = None,
    ) -> None:
        # settled now (explicit providers): plain attributes, which shadow the descriptors
        if tracer_provider is not None:
            self.__dict__["tracing"] = sdk_tracer_provider(tracer_provider)
        if meter_provider is not None:
            self.__dict__["metering"] = sdk_meter_provider(meter_provider)
        attrs = dict(scope_attributes or {})
        tp = tracer_provider or trace.get_tracer_provider()
        mp = meter_provider or metrics.get_meter_provider()
        self.tracer = tp.get_tracer(scope, SCOPE_VERSION)
        self.meter = mp.get_meter(scope, SCOPE_VERSION, attributes=attrs or None)

    def start_producer(
        self, name: str, subject: str, headers: dict[str, str], attributes: dict[str, Any]
    ) -> tuple[Span, dict[str, str]]:
        """A PRODUCER span child of the current one; returns it and a copy of ``headers``
        that carries its context (the message's creation context)."""
        attributes[MESSAGING_SYSTEM] = "nats"
        attributes[MESSAGING_OPERATION_TYPE] = "send"
        attributes[MESSAGING_DESTINATION] = subject
        span = self.tracer.start_span(name, kind=SpanKind.PRODUCER, attributes=attributes)
        out = dict(headers)
        out.pop(TRACESTATE, None)
        propagate.inject(out, context=trace.set_span_in_context(span))
        return span, out


def fail_span(span: Span, exc: BaseException) -> None:
    code = getattr(exc, "code", None)
    span.set_attribute(ERROR_TYPE, code if isinstance(code, str) else type(exc).__qualname__)
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))


def finish_process_span(span: Span, action: str, outcome: str, error: str, out_headers: Mapping[str, str]) -> None:
    if action:
        span.set_attribute(ACTION, action)
    span.set_attribute(OUTCOME, outcome)
    seq = out_headers.get("Agt-Event-Seq")
    if seq:
        span.set_attribute(EVENT_SEQ, int(seq))
    if outcome not in (OK, DUPLICATE):
        span.set_attribute(ERROR_TYPE, error or outcome)
        span.set_status(Status(StatusCode.ERROR, error or outcome))


_live_hosts: dict[str, weakref.ref[Any]] = {}  # host id -> the newest Host of that id


class HostTelemetry(Telemetry):
    """Spans and instruments of one host (names in docs/architecture.md, Observability)."""

    def __init__(
        self,
        host: Any,
        host_id: str,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        # one meter per host id: its observable gauge reports that host only
        super().__init__("jetagents.host", tracer_provider, meter_provider, {HOST_ID: host_id})
        m = self.meter
        self.commands = m.create_counter(
            "jetagents.host.commands", "{command}", "commands finished, by type, action, delivery mode and outcome"
        )
        self.duration = m.create_histogram(
            "jetagents.host.command.duration",
            "s",
            "from receipt to answer (mailbox wait included)",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self.redeliveries = m.create_counter(
            "jetagents.host.redeliveries", "{command}", "commands received again from the stream"
        )
        self.duplicates = m.create_counter(
            "jetagents.host.duplicates", "{command}", "commands answered from the dedup record, not applied again"
        )
        self.activations = m.create_counter(
            "jetagents.host.activations", "{agent}", "agents rebuilt from snapshot and events"
        )
        self.activation_duration = m.create_histogram(
            "jetagents.host.activation.duration",
            "s",
            "snapshot read plus replay",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self.passivations = m.create_counter("jetagents.host.passivations", "{agent}", "agents dropped from memory")
        self.handoffs = m.create_counter(
            "jetagents.host.handoffs", "{partition}", "partitions started or released by this host"
        )
        self.dead_letters = m.create_counter(
            "jetagents.host.dead_letters", "{command}", "commands stored on the dead-letter subject"
        )
        self.loop_blocks = m.create_counter(
            "jetagents.host.loop.blocked", "{block}", "times the event loop was blocked longer than the threshold"
        )
        self.loop_block_duration = m.create_histogram(
            "jetagents.host.loop.blocked.duration",
            "s",
            "how long the event loop was blocked, each time it was",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self.action_timeouts = m.create_counter(
            "jetagents.host.action.timeouts", "{command}", "actions cancelled at their time limit or deadline"
        )
        self.agent_busy = m.create_counter(
            "jetagents.host.agent_busy", "{command}", "commands refused or handed back: the agent's mailbox was full"
        )
        # The SDK keeps the first instrument of a name per meter: a later Host with the same
        # id (the service retries a start while NATS is down) must be seen by that one.
        _live_hosts[host_id] = weakref.ref(host)

        def owned(_: CallbackOptions) -> Iterable[Observation]:
            ref = _live_hosts.get(host_id)
            h = ref() if ref is not None else None
            if h is not None and h.supervisor.started and not h.supervisor.stopping:
                yield Observation(len(h.owned))

        self.partitions = m.create_observable_gauge(
            "jetagents.host.partitions.owned", [owned], "{partition}", "partitions this host serves"
        )

    def command_done(
        self, agent_type: str, action: str, delivery: str, outcome: str, error: str, deliveries: int, elapsed_s: float
    ) -> None:
        attrs = {AGENT_TYPE: agent_type, ACTION: action or "_unknown", DELIVERY: delivery, OUTCOME: outcome}
        if error:
            attrs[ERROR_TYPE] = error
        self.commands.add(1, attrs)
        self.duration.record(elapsed_s, attrs)
        if deliveries > 1:
            self.redeliveries.add(1, {AGENT_TYPE: agent_type})

    def activated(self, agent_type: str, replayed: int, elapsed_s: float) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event("activated", {REPLAYED: replayed})
        if self.metering:  # the activations counter is Metrics' (one source with Host.stats)
            self.activation_duration.record(elapsed_s, {AGENT_TYPE: agent_type})

    def handoff(self, started: bool, graceful: bool = True) -> None:
        if self.metering:
            attrs: dict[str, Any] = {HANDOFF: "started" if started else "released"}
            if not started:
                attrs[GRACEFUL] = graceful
            self.handoffs.add(1, attrs)

    def loop_unblocked(self, blocked_s: float) -> None:
        if self.metering:
            self.loop_block_duration.record(blocked_s)


class ClientTelemetry(Telemetry):
    def __init__(
        self, tracer_provider: trace.TracerProvider | None = None, meter_provider: metrics.MeterProvider | None = None
    ) -> None:
        super().__init__("jetagents.client", tracer_provider, meter_provider)
        self.request_duration = self.meter.create_histogram(
            "jetagents.client.request.duration",
            "s",
            "round trip of a request: send, wait for the reply (retries included)",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )

    def request_done(self, agent_type: str, action: str, delivery: str, error: str, elapsed_s: float) -> None:
        attrs = {AGENT_TYPE: agent_type, ACTION: action, DELIVERY: delivery, OUTCOME: ERROR if error else OK}
        if error:
            attrs[ERROR_TYPE] = error
        self.request_duration.record(elapsed_s, attrs)


# -- log context ---------------------------------------------------------------------------
# The command a task is processing: (host id, agent, correlation id, traceparent). Set by
# the host around each command, read by the log processor below (also in agent code).
# The agent is kept as given (an AgentId) and turned into text only when a line is logged.
_command: ContextVar[tuple[str, object, str, str | None] | None] = ContextVar("jetagents_command", default=None)


# The pipeline's, around every command: ``set_command((host_id, agent, correlation_id,
# traceparent))`` gives the token ``exit_command`` takes; the variable's own methods, bound
# once (no frame of ours on the path)
set_command = _command.set
exit_command = _command.reset


def add_trace_context(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: ``trace_id``/``span_id`` of the current span, or else of the
    command's ``traceparent`` (the caller's span), plus ``host``, ``agent`` and
    ``correlation_id`` of the command being processed."""
    cmd = _command.get()
    if cmd is not None:
        host_id, agent, corr, tp = cmd
        event.setdefault("host", host_id)
        if "agent" not in event:
            event["agent"] = str(agent)
        if corr:
            event.setdefault("correlation_id", corr)
    else:
        tp = None
    if "trace_id" not in event:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            event["trace_id"] = format(ctx.trace_id, "032x")
            event["span_id"] = format(ctx.span_id, "016x")
        elif valid_traceparent(tp):
            _, trace_id, span_id, _ = tp.split("-")  # type: ignore[union-attr]
            event["trace_id"] = trace_id
            event["span_id"] = span_id
    return event


# -- OTLP export from OTEL_* environment variables -----------------------------------------
_ENABLING_VARS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
)


@dataclass
class OtelSetup:
    """SDK providers built from the environment; :meth:`install` makes them global.

    They are not shut down at interpreter exit by the SDK (that flush is unbounded while a
    collector is unreachable): call :meth:`shutdown`."""

    tracer_provider: SdkTracerProvider | None
    meter_provider: SdkMeterProvider | None
    exporters: list[Any] = field(default_factory=list)  # span exporters, then metric exporters

    def install(self) -> None:
        if self.tracer_provider is not None:
            trace.set_tracer_provider(self.tracer_provider)
        if self.meter_provider is not None:
            metrics.set_meter_provider(self.meter_provider)

    def shutdown(self, timeout_s: float = 5.0) -> bool:
        """Flush and stop the exporters; never blocks longer than ``timeout_s`` (an
        unreachable collector must not hold up a stopping host). True if it finished."""

        def run() -> None:
            ms = int(timeout_s * 1000)
            if self.tracer_provider is not None:
                self.tracer_provider.force_flush(ms)
                self.tracer_provider.shutdown()
            if self.meter_provider is not None:
                self.meter_provider.shutdown(ms)

        worker = threading.Thread(target=run, name="otel-shutdown", daemon=True)
        worker.start()
        worker.join(timeout_s)
        return not worker.is_alive()


def _exporter_names(env: Mapping[str, str], var: str) -> list[str]:
    return [x.strip().lower() for x in env.get(var, "otlp").split(",") if x.strip() and x.strip().lower() != "none"]


def _protocol(env: Mapping[str, str], signal: str) -> str:
    # grpc unless told otherwise, as the Python SDK's own auto-configuration does
    return env.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"


def setup_from_env(default_service_name: str = "jetagents-host", instance_id: str | None = None) -> OtelSetup | None:
    """SDK tracer and meter providers exporting as the standard ``OTEL_*`` variables say,
    or None when none of them asks for export (or ``OTEL_SDK_DISABLED=true``).

    Exporters read their endpoint, headers, timeout, compression and TLS from the same
    variables (``OTEL_EXPORTER_OTLP_*``); ``OTEL_TRACES_EXPORTER``/``OTEL_METRICS_EXPORTER``
    take ``otlp`` (default), ``console`` or ``none``; ``OTEL_SERVICE_NAME`` defaults to
    ``default_service_name``.
    """
    env = os.environ  # the exporters and the resource detector read it too
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true" or not any(env.get(v) for v in _ENABLING_VARS):
        return None
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricExporter, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    from .._version import __version__

    detected = OTELResourceDetector().detect().attributes  # OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME
    attrs: dict[str, Any] = {"service.version": __version__}
    if not env.get("OTEL_SERVICE_NAME") and "service.name" not in detected:
        attrs["service.name"] = default_service_name
    if instance_id and "service.instance.id" not in detected:
        attrs["service.instance.id"] = instance_id
    resource = Resource.create(attrs)

    tracer_provider: TracerProvider | None = None
    span_exporters: list[SpanExporter] = []
    for name in _exporter_names(env, "OTEL_TRACES_EXPORTER"):
        if name == "console":
            span_exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            if _protocol(env, "TRACES").startswith("http"):
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans

                span_exporters.append(HttpSpans())
            else:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans

                span_exporters.append(GrpcSpans())
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER: unsupported exporter {name!r} (otlp, console, none)")
    if span_exporters:
        tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        for exporter in span_exporters:
            tracer_provider.add_span_processor(BatchSpanProcessor(exporter))

    meter_provider: MeterProvider | None = None
    readers: list[PeriodicExportingMetricReader] = []
    metric_exporters: list[MetricExporter] = []
    for name in _exporter_names(env, "OTEL_METRICS_EXPORTER"):
        metric_exporter: MetricExporter
        if name == "console":
            metric_exporter = ConsoleMetricExporter()
        elif name == "otlp":
            if _protocol(env, "METRICS").startswith("http"):
                from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetrics

                metric_exporter = HttpMetrics()
            else:
                from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetrics

                metric_exporter = GrpcMetrics()
        else:
            raise ValueError(f"OTEL_METRICS_EXPORTER: unsupported exporter {name!r} (otlp, console, none)")
        metric_exporters.append(metric_exporter)
        readers.append(PeriodicExportingMetricReader(metric_exporter))  # OTEL_METRIC_EXPORT_INTERVAL
    if readers:
        meter_provider = MeterProvider(metric_readers=readers, resource=resource, shutdown_on_exit=False)
    return OtelSetup(tracer_provider, meter_provider, [*span_exporters, *metric_exporters])


__all__ = [
    "ClientTelemetry",
    "HostTelemetry",
    "OtelSetup",
    "Telemetry",
    "add_trace_context",
    "exit_command",
    "set_command",
    "setup_from_env",
]
