"""One source for the host's counters: ``Metrics.inc`` moves the stats view and the
OpenTelemetry counter together."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from jetagents._host.supervisor import Supervisor
from jetagents._obs.metrics import STATS, Metrics
from jetagents._obs.telemetry import AGENT_TYPE, ERROR_TYPE, HostTelemetry


class _Host:
    supervisor = Supervisor()
    owned: list[int] = []


def _points(reader: InMemoryMetricReader, name: str) -> list[tuple[dict[str, object], int]]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        (dict(p.attributes or {}), int(p.value))
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == name
        for p in m.data.data_points  # type: ignore[union-attr]
    ]


def test_inc_counts_in_stats_and_in_the_otel_counter() -> None:
    reader = InMemoryMetricReader()
    tel = HostTelemetry(_Host(), "h-metrics", meter_provider=MeterProvider(metric_readers=[reader]))
    m = Metrics(tel)
    assert dict(m.stats) == dict.fromkeys(STATS, 0)
    m.inc("dead_letters", agent_type="counter", error="invalid_params")
    m.inc("dead_letters", 2, agent_type="counter", error="invalid_params")
    m.inc("naks")  # no OpenTelemetry counter: stats only
    assert m.stats["dead_letters"] == 3 and m.stats["naks"] == 1
    assert _points(reader, "jetagents.host.dead_letters") == [
        ({AGENT_TYPE: "counter", ERROR_TYPE: "invalid_params"}, 3)
    ]


def test_the_stats_view_is_read_only_and_unknown_names_fail() -> None:
    m = Metrics(HostTelemetry(_Host(), "h-metrics-ro"))
    with pytest.raises(TypeError):
        m.stats["processed"] = 5  # type: ignore[index]
    with pytest.raises(KeyError):
        m.inc("no_such_counter")
