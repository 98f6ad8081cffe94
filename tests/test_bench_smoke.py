"""The benchmark harnesses run end to end (figures are not asserted: these are smoke tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def test_bench_delivery_smoke() -> None:
    r = subprocess.run(
        [sys.executable, "loadtests/bench_delivery.py", "--smoke"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for mode in ("at-most-once", "at-least-once", "exactly-once"):
        assert mode in r.stdout


@pytest.mark.timeout(480)
def test_bench_all_workloads_smoke(tmp_path: Path) -> None:
    """Every workload of ``loadtests/bench.py`` (Ray too when it is installed) in its tiny
    mode, and the report is written; exit 2 would mean failed commands, lost or doubled
    increments, or a cluster that never served the killed host's partitions again. The
    cluster workloads run on 8 partitions here (a ring change resets few consumers)."""
    out = tmp_path / "report"
    r = subprocess.run(
        [sys.executable, "loadtests/bench.py", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    report = json.loads((out / "report.json").read_text())
    for key in ("delivery", "host_cpu", "ray", "many", "cold", "scaling", "failover", "targets"):
        assert key in report, key
    assert (out / "report.md").read_text().startswith("# jetagents benchmark report")
    # the like-for-like `get` ran at-most-once and at-least-once, and the partitioned floor ran
    delivery = report["delivery"]
    assert {c["mode"] for c in delivery["get_summary"]} == {"at-most-once", "at-least-once"}
    assert any(r["system"] == "floor-p" and r["commands"] for r in delivery["runs"]), delivery["runs"]
    top = [c for c in delivery["summary"] if c["mode"] != "at-most-once" and c["inflight"] == 16]
    assert len(top) == 2 and all(c.get("ratio_partitioned") for c in top), top
    # the ring: hosts joined and left, and the survivors took the killed host's partitions
    changes = report["scaling"]["variants"][0]["ring_changes"]
    assert [c["hosts_after"] for c in changes] == [1, 2, 1], changes
    (run,) = report["failover"]["runs"]
    assert run["partitions_served"] == run["partitions_held"] > 0, run
    assert run["lost_or_doubled"] == 0, run


@pytest.mark.parametrize(
    "argv",
    [
        ["loadtests/bench_cpu.py", "--n", "64", "--reps", "1", "--inflight", "1", "4", "--host-loop", "uvloop"],
        ["loadtests/bench_puback.py", "--n", "64", "--rounds", "1", "--inflight", "1", "4"],
    ],
)
def test_cpu_benches_smoke(argv: list[str]) -> None:
    """The CPU-per-command harnesses of ADR 0041 (by loop) and of the one reply inbox."""
    r = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "us/" in r.stdout


def test_bench_placement_quick_smoke() -> None:
    """The pure placement figures and the end-to-end ones (reservations written and checked on
    a real nats-server through ``Reserving.place``), each beside its baseline."""
    r = subprocess.run(
        [sys.executable, "loadtests/bench_placement.py", "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "choose_host/s" in r.stdout and "placed/s" in r.stdout and "e2e/pure" in r.stdout
