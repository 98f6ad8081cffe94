"""The benchmark harness runs end to end (figures are not asserted: it is a smoke test)."""

from __future__ import annotations

import subprocess
import sys

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
