"""The dashboard's pure parts (issue 18): a host's latency summary, the ring's change log
entries, the SVG pictures (escaped), the live charts' rates from samples, schedules and open
journals read back from what the server and the log hold."""

from __future__ import annotations

import orjson
from markupsafe import Markup

from jetagents._core.ids import AgentId
from jetagents._core.journal import Journal, end_entry, fold, park_entry, resolution_entry, wait_entry
from jetagents._core.latency import LatencyWindow
from jetagents._dashboard.live import Live, Sample
from jetagents._dashboard.reads import _open_actions, _Scan, _schedule_row
from jetagents._dashboard.svg import line_chart, ring_svg
from jetagents._host.coordination.ringlog import ring_moves


def test_latency_window_keeps_the_newest_and_ranks_them() -> None:
    w = LatencyWindow(size=100)
    assert w.summary() == {"n": 0, "total": 0}
    for i in range(1, 201):  # 1..200 ms: the window keeps 101..200
        w.record(i / 1000)
    s = w.summary()
    assert (s["n"], s["total"]) == (100, 200)
    assert (s["p50_ms"], s["p90_ms"], s["p99_ms"], s["max_ms"]) == (150.0, 190.0, 199.0, 200.0)


def test_ring_moves_name_each_changed_partition() -> None:
    assert ring_moves(["a", "a", "b"], ["a", "b", "b"]) == [[1, "a", "b"]]
    assert ring_moves(["", ""], ["a", ""]) == [[0, "", "a"]]
    assert ring_moves(["a"], ["a"]) == []


def test_the_ring_picture_has_one_arc_per_partition_and_escapes_host_ids() -> None:
    svg = ring_svg(["h1", "<script>", "", "h1"])
    assert isinstance(svg, Markup)
    assert svg.count("<path ") == 4
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert 'data-owner="h1"' in svg and "unowned (1)" in svg and "h1 (2)" in svg


def test_a_line_chart_plots_each_series_and_shows_its_last_value() -> None:
    svg = line_chart({"a": [(-4.0, 1.0), (-2.0, 3.0)], "<b>": []}, unit="ms", chart_id="c")
    assert svg.count("<polyline") == 1
    assert 'data-series="a">a: 3.00<' in svg and "&lt;b&gt;: -" in svg
    assert "no figures yet" in line_chart({}, unit="ms")


def test_live_rates_come_from_consecutive_samples_and_heartbeats() -> None:
    live = Live()
    beat = {"ts_ms": 1000, "processed": 10, "latency_ms": {"p50_ms": 2.0, "p99_ms": 9.0}}
    live.samples.append(Sample(0.0, 100, 50, {"h1": beat}))
    live.samples.append(Sample(2.0, 140, 70, {"h1": dict(beat, ts_ms=3000, processed=30)}))
    live.samples.append(Sample(4.0, 140, 70, {"h1": dict(beat, ts_ms=3000, processed=30)}))  # no new heartbeat
    rates = live.throughput()
    assert rates["commands stored"] == [(2.0, 20.0), (4.0, 0.0)]
    assert rates["commits"] == [(2.0, 10.0), (4.0, 0.0)]
    assert rates["h1 answered"] == [(2.0, 10.0)]  # 20 commands in the host's own 2 s
    assert live.latency()["h1 p99"] == [(0.0, 9.0), (2.0, 9.0), (4.0, 9.0)]


def test_a_schedule_reads_as_a_reminder_or_a_wait_timer() -> None:
    rem = _schedule_row("agt.rem.alarm.a1.tick", "@every 60s", b'{"action":"ring","params":{"tag":"x"}}', None)
    assert (rem.agent, rem.name, rem.kind, rem.at_ms) == ("alarm/a1", "tick", "reminder", None)
    assert rem.does == 'ring({"tag":"x"})'
    timer = _schedule_row("agt.rem.flow.f1._wabc-1", "@at 2026-11-30T10:00:00Z", b'{"timer":{"for":"c1","i":1}}', "UTC")
    assert (timer.kind, timer.at_ms, timer.tz) == ("timer", 1_796_032_800_000, "UTC")
    assert timer.does == "ends wait 1 of command c1"


def test_open_journals_read_as_suspended_resuming_and_parked_actions() -> None:
    journals: dict[str, Journal] = {}
    fold(journals, "c1", {**wait_entry(0, "approve", 5000), "params": {}, "reply_to": None}, "guarded")
    fold(journals, "c2", park_entry("bump", {"by": 1}, None), "bump")
    fold(journals, "c3", wait_entry(0, "@sleep", 9000), "nap")
    fold(journals, "s1", resolution_entry("timeout", "c3", 0, "@sleep"), "_timer")
    fold(journals, "c4", {"k": "step", "i": 0, "name": "x"}, "run")  # running, never waited
    aid = AgentId("flow", "f1")
    got = {a.command_id: a for a in _open_actions(aid, _Scan(journals, {"c1": 7}))}
    assert set(got) == {"c1", "c2", "c3"}
    assert (got["c1"].status, got["c1"].waits_for, got["c1"].until_ms, got["c1"].since_ms) == (
        "suspended",
        "approve",
        5000,
        7,
    )
    assert (got["c2"].status, got["c2"].action) == ("parked", "bump")
    assert got["c3"].status == "resuming"
    fold(journals, "c1", end_entry(1), "guarded")  # the action ended: nothing open of it
    assert "c1" not in {a.command_id for a in _open_actions(aid, _Scan(journals))}
    assert orjson.dumps(journals["c2"].to_json())  # what a snapshot would carry
