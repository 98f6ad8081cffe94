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
    mode, and the report is written; exit 2 would mean failed commands or lost increments."""
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
