"""OpenTelemetry against a real nats-server, host and client: the shape of one command's
trace (one trace id from the client's send to the host's append and reply), no spans
while replaying, and the host's and client's metrics. Providers are passed explicitly
(the global ones can be set once per process and would turn tracing on for every test)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel

from jetagents import (
    Agent,
    Client,
    ClientSettings,
    Event,
    Host,
    InvalidParams,
    NatsServer,
    Registry,
    UnknownAgentType,
    action,
    applies,
)
from jetagents import partition_of as partition_fn
from jetagents.examples import EXAMPLE_AGENTS
from tests.conftest import host_settings
from tests.integration.helpers import read_all


@dataclass
class Otel:
    spans: InMemorySpanExporter
    tracer_provider: TracerProvider
    reader: InMemoryMetricReader
    meter_provider: MeterProvider

    def kw(self) -> dict[str, Any]:
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}


@pytest.fixture
def otel() -> Iterator[Otel]:
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader])
    yield Otel(exporter, tp, reader, mp)
    tp.shutdown()
    mp.shutdown()


async def finished(exporter: InMemorySpanExporter, n: int, timeout_s: float = 5.0) -> list[ReadableSpan]:
    """The finished spans once there are ``n`` (the host ends its span after the client got
    the reply), then a moment more so an unexpected extra one would show too."""
    async with asyncio.timeout(timeout_s):
        while len(exporter.get_finished_spans()) < n:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    return list(exporter.get_finished_spans())


def render(spans: list[ReadableSpan]) -> str:
    """The trace as a tree: name, kind, ids (what the closing note quotes)."""
    by_parent: dict[int | None, list[ReadableSpan]] = {}
    ids = {s.context.span_id for s in spans}
    for s in sorted(spans, key=lambda s: s.start_time or 0):
        parent = s.parent.span_id if s.parent is not None and s.parent.span_id in ids else None
        by_parent.setdefault(parent, []).append(s)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for s in by_parent.get(parent, []):
            p = f"{s.parent.span_id:016x}" if s.parent is not None else "-"
            lines.append(
                f"{'  ' * depth}{s.name:<{24 - 2 * depth}} {s.kind.name:<8} trace={s.context.trace_id:032x} "
                f"span={s.context.span_id:016x} parent={p}"
            )
            walk(s.context.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_one_command_is_one_trace_across_client_and_host(nats_server: NatsServer, otel: Otel) -> None:
    settings = host_settings(nats_server.url, membership="static")
    cs = ClientSettings(nats_url=nats_server.url, partitions=8)
    client = await Client.connect(settings=cs, **otel.kw())
    try:
        async with Host(settings, Registry(EXAMPLE_AGENTS), **otel.kw()) as host:
            # a durable, exactly-once command
            reply = await client.agent("counter", "t1").request_reply("increment", {"by": 2}, correlation_id="order-42")
            assert reply.result == 2
            spans = await finished(otel.spans, 4)
            print("\nexactly-once increment:\n" + render(spans))
            assert sorted(s.name for s in spans) == [
                "append counter",
                "process counter",
                "reply counter",
                "send counter",
            ]
            send, process = one(spans, "send counter"), one(spans, "process counter")
            append, answer = one(spans, "append counter"), one(spans, "reply counter")
            assert len({s.context.trace_id for s in spans}) == 1
            assert (send.kind, process.kind, append.kind, answer.kind) == (
                SpanKind.PRODUCER,
                SpanKind.CONSUMER,
                SpanKind.PRODUCER,
                SpanKind.PRODUCER,
            )
            assert send.parent is None
            assert parent_of(process) == send.context.span_id and process.parent is not None
            assert process.parent.is_remote  # it came through the NATS headers
            assert parent_of(append) == process.context.span_id
            assert parent_of(answer) == process.context.span_id
            cmd_id = reply.headers["Agt-Command-Id"]
            p = partition_fn("counter", "t1", 8)
            assert dict(send.attributes or {}) == {
                "messaging.system": "nats",
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.destination.name": "agt.cmd.counter.t1",
                "messaging.message.id": cmd_id,
                "messaging.message.conversation_id": "order-42",
                "jetagents.agent.type": "counter",
                "jetagents.agent.id": "t1",
                "jetagents.action": "increment",
                "jetagents.delivery": "exactly-once",
            }
            pa = dict(process.attributes or {})
            assert pa["messaging.system"] == "nats"
            assert pa["messaging.operation.type"] == "process"
            assert pa["messaging.destination.name"] == f"agt.p.{p}.counter.t1"
            assert pa["messaging.destination.partition.id"] == str(p)
            assert pa["messaging.consumer.group.name"]
            assert pa["messaging.message.id"] == cmd_id
            assert pa["messaging.message.conversation_id"] == "order-42"
            assert pa["jetagents.delivery"] == "exactly-once"
            assert pa["jetagents.delivery.count"] == 1
            assert pa["jetagents.outcome"] == "ok" and pa["jetagents.action"] == "increment"
            assert pa["jetagents.host.id"] == "test-host"
            assert pa["jetagents.event.seq"] == reply.event_seq
            assert [(e.name, dict(e.attributes or {})) for e in process.events] == [
                ("activated", {"jetagents.replayed": 0})
            ]
            assert process.status.status_code is StatusCode.UNSET
            aa = dict(append.attributes or {})
            assert aa["messaging.destination.name"] == "agt.evt.counter.t1"
            assert aa["messaging.operation.type"] == "send" and aa["messaging.operation.name"] == "append"
            assert aa["messaging.message.id"] == cmd_id and aa["jetagents.event.seq"] == reply.event_seq
            ra = dict(answer.attributes or {})
            assert ra["messaging.destination.name"].startswith("_INBOX.")
            assert ra["messaging.destination.temporary"] is True
            # each message carries the context of the span that produced it
            (_, _, evt_headers, _) = (await read_all(client.nc, "AGT_EVT", "agt.evt.counter.t1"))[-1]
            assert evt_headers["traceparent"].split("-")[1:3] == [
                f"{append.context.trace_id:032x}",
                f"{append.context.span_id:016x}",
            ]
            assert reply.headers["traceparent"].split("-")[2] == f"{answer.context.span_id:016x}"

            # an at-most-once call: no append (read-only), the same shape otherwise
            otel.spans.clear()
            assert await client.agent("counter", "t1").request("get", delivery="at-most-once") == 2
            spans = await finished(otel.spans, 3)
            print("at-most-once get:\n" + render(spans))
            assert sorted(s.name for s in spans) == ["process counter", "reply counter", "send counter"]
            send, process = one(spans, "send counter"), one(spans, "process counter")
            assert len({s.context.trace_id for s in spans}) == 1
            assert parent_of(process) == send.context.span_id
            assert parent_of(one(spans, "reply counter")) == process.context.span_id
            assert dict(send.attributes or {})["messaging.destination.name"] == "agt.call.counter.t1"
            pa = dict(process.attributes or {})
            assert pa["messaging.destination.name"] == "agt.call.counter.t1"
            assert pa["jetagents.delivery"] == "at-most-once" and pa["jetagents.outcome"] == "ok"
            assert "messaging.destination.partition.id" not in pa
            assert process.events == ()  # already active
            await host.stop(drain=False)  # no final snapshot: the next host replays the log

        # a new host rebuilds t1 from its log: the replay opens no span of its own
        otel.spans.clear()
        async with Host(settings, Registry(EXAMPLE_AGENTS), **otel.kw()):
            assert await client.agent("counter", "t1").request("increment", {"by": 1}) == 3
            spans = await finished(otel.spans, 4)
            assert sorted(s.name for s in spans) == [
                "append counter",
                "process counter",
                "reply counter",
                "send counter",
            ]
            assert len({s.context.trace_id for s in spans}) == 1
            process = one(spans, "process counter")
            assert [(e.name, dict(e.attributes or {})) for e in process.events] == [
                ("activated", {"jetagents.replayed": 1})
            ]
    finally:
        await client.close()


# -- metrics -------------------------------------------------------------------------------
class NapState(BaseModel):
    naps: int = 0


class Napped(Event):
    seconds: float


class Napper(Agent[NapState]):
    """Blocks the event loop: a stalled host (GC pause, CPU hog) whose ack is late."""

    type_name = "napper"
    state_type = NapState

    @action
    async def nap(self, seconds: float) -> int:
        time.sleep(seconds)
        self.emit(Napped(seconds=seconds))
        return self.state.naps

    @applies
    def _napped(self, state: NapState, event: Napped) -> None:
        state.naps += 1


def points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], Any]]]:
    """metric name -> [(attributes, value or histogram count)]"""
    out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for dp in metric.data.data_points:
                    value = getattr(dp, "value", None)
                    if value is None:
                        value = dp.count  # type: ignore[union-attr]
                    out.setdefault(metric.name, []).append((dict(dp.attributes or {}), value))
    return out


def value(pts: dict[str, list[tuple[dict[str, Any], Any]]], name: str, **attrs: Any) -> Any:
    """Sum over the points of ``name`` whose attributes include ``attrs``."""
    want = {k.replace("__", "."): v for k, v in attrs.items()}
    return sum(v for a, v in pts.get(name, []) if all(a.get(k) == w for k, w in want.items()))


async def test_host_and_client_metrics(nats_server: NatsServer, otel: Otel) -> None:
    # ack_wait below the nap: the server redelivers the command to the stalled host
    settings = host_settings(nats_server.url, membership="static", ack_wait_s=1.0, pull_expires_s=10.0)
    cs = ClientSettings(nats_url=nats_server.url, partitions=8)
    client = await Client.connect(settings=cs, **otel.kw())
    try:
        async with Host(settings, Registry([*EXAMPLE_AGENTS, Napper]), **otel.kw()) as host:
            counter = client.agent("counter", "m1")
            assert await counter.request("increment", {"by": 1}) == 1
            assert await counter.request("increment", {"by": 1}, command_id="cmd-a") == 2
            # the same command id again: answered from the agent's record, not applied
            assert await counter.request("increment", {"by": 1}, command_id="cmd-a") == 2
            assert await counter.request("get", delivery="at-most-once") == 2
            with pytest.raises(InvalidParams):
                await counter.request("increment", {"by": "many"})
            with pytest.raises(UnknownAgentType):
                await client.agent("ghost", "g1").request("boo")
            # the stalled host: its ack comes after ack_wait, the copy is answered from the record
            assert await client.agent("napper", "n1").request("nap", {"seconds": 1.6}, timeout=10) == 1

            pts = points(otel.reader)
            # the copy is processed after the first answer: wait for it
            async with asyncio.timeout(5):
                while not value(pts, "jetagents.host.redeliveries"):
                    await asyncio.sleep(0.05)
                    pts = points(otel.reader)
            cmds = "jetagents.host.commands"
            t, act = "jetagents__agent__type", "jetagents__action"
            assert value(pts, cmds, **{t: "counter", act: "increment"}, jetagents__outcome="ok") == 2
            assert value(pts, cmds, **{t: "counter"}, jetagents__outcome="duplicate") == 1
            assert value(pts, cmds, **{t: "counter", act: "get"}, jetagents__delivery="at-most-once") == 1
            assert (
                value(pts, cmds, **{t: "counter"}, jetagents__outcome="dead_letter", error__type="invalid_params") == 1
            )
            assert value(pts, cmds, **{t: "napper"}, jetagents__delivery="exactly-once", jetagents__outcome="ok") == 1
            assert value(pts, cmds, **{t: "napper"}, jetagents__outcome="duplicate") == 1
            assert value(pts, "jetagents.host.redeliveries", **{t: "napper"}) == 1
            assert value(pts, "jetagents.host.duplicates", jetagents__dedup__source="record") == 2
            assert value(pts, "jetagents.host.dead_letters", error__type="invalid_params") == 1
            # a type name no agent class declares is the sender's text: not an attribute value
            assert value(pts, "jetagents.host.dead_letters", **{t: "_unknown"}, error__type="unknown_agent_type") == 1
            assert value(pts, "jetagents.host.command.duration") == value(pts, cmds) == 7
            assert value(pts, "jetagents.host.activations") == 2
            assert value(pts, "jetagents.host.activation.duration") == 2
            assert value(pts, "jetagents.host.handoffs", jetagents__handoff="started") == 8
            assert value(pts, "jetagents.host.partitions.owned") == 8
            rtt = "jetagents.client.request.duration"
            assert value(pts, rtt) == 7  # the redelivered copy is the host's, not a request
            assert value(pts, rtt, jetagents__outcome="error", error__type="invalid_params") == 1
            assert value(pts, rtt, jetagents__delivery="at-most-once") == 1
            # cardinality: no agent id or command id in any metric attribute
            for name, series in pts.items():
                for attrs, _ in series:
                    assert not {"m1", "n1", "g1", "cmd-a"} & {str(v) for v in attrs.values()}, (name, attrs)
                    if name.startswith("jetagents.host."):
                        assert "ghost" not in attrs.values(), (name, attrs)

            # the coordinator's hook for a handoff: release the partition of m1
            await host.stop_partition(partition_fn("counter", "m1", 8), graceful=True)
            pts = points(otel.reader)
            assert value(pts, "jetagents.host.handoffs", jetagents__handoff="released", jetagents__graceful=True) == 1
            assert value(pts, "jetagents.host.partitions.owned") == 7
            assert value(pts, "jetagents.host.passivations", **{t: "counter"}) == 1

        # the dead letter's trace: the process span says why
        dead = [
            s
            for s in otel.spans.get_finished_spans()
            if s.name == "process counter" and (s.attributes or {}).get("jetagents.outcome") == "dead_letter"
        ]
        assert len(dead) == 1
        assert dead[0].status.status_code is StatusCode.ERROR
        assert (dead[0].attributes or {})["error.type"] == "invalid_params"
        # a stopped host reports no partitions; a new host of the same id (the service
        # retries a failed start that way) is the one the gauge reports
        assert value(points(otel.reader), "jetagents.host.partitions.owned") == 0
        async with Host(settings, Registry(EXAMPLE_AGENTS), **otel.kw()):
            assert value(points(otel.reader), "jetagents.host.partitions.owned") == 8
    finally:
        await client.close()
