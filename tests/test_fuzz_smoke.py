"""The fuzzer (``loadtests/fuzz.py``) on a small count: every kind of malformed message,
against a real nats-server and a host process, and every invariant holds: no crash, no
stall, no loop, every bad durable command dead-lettered once, good increments exact, the
victim untouched. The plan is deterministic for a seed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SEED = 7
COUNT = 3000


def _plan_digest() -> str:
    r = subprocess.run(
        [sys.executable, "loadtests/fuzz.py", "--plan-only", "--seed", str(SEED), "--count", str(COUNT)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip()


@pytest.mark.timeout(900)
def test_fuzz_smoke(tmp_path: Path) -> None:
    out = tmp_path / "fuzz"
    args = ["--seed", str(SEED), "--count", str(COUNT), "--partitions", "8", "--quiet-s", "6", "--out", str(out)]
    args += ["--stall-limit-s", "120"]
    r = subprocess.run(
        [sys.executable, "loadtests/fuzz.py", *args], cwd=REPO, capture_output=True, text=True, timeout=840
    )
    report = json.loads((out / "report.json").read_text())
    assert "aborted" not in report, f"{report['aborted']}\n{r.stdout[-4000:]}\n{r.stderr[-3000:]}"
    failed = [name for name, ok in report["invariants"].items() if not ok]
    assert r.returncode == 0 and not failed, f"{failed}\n{r.stdout[-4000:]}\n{r.stderr[-3000:]}"
    assert report["sent"] == COUNT == sum(report["sent_by_kind"].values())
    kinds = {k.split("/")[0] for k in report["sent_by_kind"]}
    assert len(kinds) >= 12, kinds  # the rare kinds (oversized, ...) may not be drawn at this count
    assert report["host"]["crashes"] == 0
    assert report["dead_letters"]["distinct_durable_commands"] >= report["durable"]["bad_stored"] > 0
    assert report["good"]["increments"] > 0 and not report["good"]["inexact"]
    assert report["stalls"]["count"] == 0, report["stalls"]
    # the same seed gives the same messages
    assert report["plan_digest"] == _plan_digest() == _plan_digest()
