"""The shared-state benchmark runs end to end (figures are printed, not asserted)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_bench_state_smoke() -> None:
    r = subprocess.run(
        [sys.executable, "loadtests/bench_state.py", "--smoke"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [line.split() for line in r.stdout.splitlines() if line and not line.startswith(("#", "level"))]
    assert {row[0] for row in rows} == {"strong", "eventual", "session", "crdt-incr", "crdt-orset"}
    assert all(float(row[2]) > 0 for row in rows), r.stdout  # every cell made progress
