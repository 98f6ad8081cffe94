"""Two trees of jetagents side by side, interleaved in small blocks: is B slower than A?

    python loadtests/bench_ab.py --a /tmp/ja_old --b /tmp/ja_new [--rounds 12]

Each tree (a directory holding ``shared/`` and ``services/``, e.g. made by
``git archive <rev> shared services loadtests | tar -x -C DIR``) runs its own nats-server, agent
host and client (``_ab_driver.py``, with that tree on ``PYTHONPATH``). Every round runs each
workload once on each side, in a new random order, so the noise of a shared machine (other
processes, CPU frequency, the disk) falls on both sides alike; separate windows, as in
``bench.py``, let one side draw a quiet minute and the other a busy one. Both sides sit idle
while the other runs.

Prints, per workload: calls/s of each side (total calls / total time), the median over rounds
of the per-round ratio B/A, and CPU microseconds per call of the client, host and nats-server
of each side, and the messages in and out of each side's nats-server per call (from its
``/varz``: a count the noise cannot change). A ratio B/A below 1 means B is slower.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROCS = ("client", "host", "nats-server")

WORKLOADS: list[dict[str, Any]] = [
    {"mode": "at-most-once", "action": "get", "inflight": 1, "n": 400},
    {"mode": "at-most-once", "action": "get", "inflight": 256, "n": 5120},
    {"mode": "at-least-once", "action": "get", "inflight": 256, "n": 2560},
    {"mode": "at-least-once", "action": "increment", "inflight": 1, "n": 100},
    {"mode": "at-least-once", "action": "increment", "inflight": 256, "n": 1024},
    {"mode": "exactly-once", "action": "increment", "inflight": 1, "n": 100},
    {"mode": "exactly-once", "action": "increment", "inflight": 256, "n": 1024},
]


class Side:
    def __init__(self, name: str, tree: Path) -> None:
        env = dict(os.environ, PYTHONPATH=f"{tree}/shared:{tree}/services")
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "_ab_driver.py")],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = self._read()
        if not ready.get("ready"):
            raise SystemExit(f"side {name} did not start: {ready}")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"side {self.name} exited (code {self.proc.poll()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            self.proc.stdin.write('{"quit": true}\n')
            self.proc.stdin.flush()
            self.proc.wait(30)


def label(w: dict[str, Any]) -> str:
    return f"{w['mode']} {w['action']} @{w['inflight']}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", type=Path, required=True, help="the baseline tree")
    p.add_argument("--b", type=Path, required=True, help="the tree compared with it")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--only", nargs="*", default=None, help="substrings of workload labels to keep")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    rnd = random.Random(args.seed)
    work = [w for w in WORKLOADS if not args.only or any(s in label(w) for s in args.only)]
    sides = {"A": Side("A", args.a), "B": Side("B", args.b)}
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    try:
        for w in work:  # warm-up, not counted
            for side in sides.values():
                side.run(w)
        for r in range(args.rounds):
            order = [(w, s) for w in work for s in ("A", "B")]
            rnd.shuffle(order)
            for w, s in order:
                runs.setdefault((label(w), s), []).append(sides[s].run(w))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        for side in sides.values():
            side.close()
    print(f"A = {args.a}\nB = {args.b}\n{args.rounds} rounds, interleaved\n")
    head = f"{'workload':34s} {'A calls/s':>10s} {'B calls/s':>10s} {'B/A med':>8s} {'B/A min-max':>12s}"
    print(f"{head}   server msgs/call A -> B   cpu us/call A -> B (client, host, server)")
    for w in work:
        a, b = runs[(label(w), "A")], runs[(label(w), "B")]
        rate = {s: sum(x["n"] for x in xs) / sum(x["elapsed_s"] for x in xs) for s, xs in (("A", a), ("B", b))}
        pair = [(xa["elapsed_s"] / xb["elapsed_s"]) for xa, xb in zip(a, b, strict=True)]
        cpu = {
            s: [1e6 * sum(x["cpu_s"][k] for x in xs) / sum(x["n"] for x in xs) for k in PROCS]
            for s, xs in (("A", a), ("B", b))
        }
        cpus = ", ".join(f"{ca:.0f}->{cb:.0f}" for ca, cb in zip(cpu["A"], cpu["B"], strict=True))
        msgs = {s: sum(x.get("msgs", 0) for x in xs) / sum(x["n"] for x in xs) for s, xs in (("A", a), ("B", b))}
        print(
            f"{label(w):34s} {rate['A']:10.0f} {rate['B']:10.0f} {statistics.median(pair):8.3f} "
            f"{min(pair):5.2f}-{max(pair):<6.2f}   {msgs['A']:7.2f} -> {msgs['B']:<7.2f}   {cpus}"
        )


if __name__ == "__main__":
    main()
