"""The Ray side of ``bench.py`` (run as a separate process, so Ray's own processes and
threads never share an interpreter with the jetagents client).

Measures, on a local Ray instance started here (``ray.init(num_cpus=<cores>)``, no
dashboard):

* calls to ONE counter actor (``increment(by) -> value``, the same state machine as the
  jetagents counter, in memory only): in-flight 1 = ``ray.get(actor.increment.remote(1))``
  per call; in-flight N = N calls kept outstanding to the same actor with a ``ray.wait``
  loop (Ray runs one actor's calls one at a time, in order, like one agent's mailbox).
  The same window rule and percentiles as ``bench_delivery.run_cell``.
* actor creation: new counter actors are created with at most ``--create-window``
  creations outstanding, each counted when its first call answers, until ``--create-deadline``
  seconds have passed or ``--create-max`` actors are up. Ray starts one worker *process* per
  actor, so this is process start-up (interpreter, imports, registration with the raylet)
  rate; also recorded: the drop of the machine's MemAvailable per live actor.

Writes one JSON document to ``--out``; when Ray is not installed it writes
``{"available": false, "reason": ...}`` and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_delivery import median, pct  # noqa: E402


def mem_available_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def log(msg: str) -> None:
    print(f"[ray {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ray_cell(
    ray: Any, actor: Any, inflight: int, warm_s: float, measure_s: float, min_waves: int = 10
) -> tuple[int, list[float], float]:
    """Closed loop with ``inflight`` calls outstanding, the same window rule as
    ``bench_delivery.run_cell``: the window opens after ``warm_s``, lasts at least
    ``measure_s`` and ``min_waves`` times the median latency of the warm-up, and only calls
    answered inside it count. In-flight 1 is ``ray.get`` per call; more is the usual
    ``ray.wait`` loop (in our runs it beat awaiting the refs from asyncio by ~15%, so Ray
    gets its better path). Returns (calls, sorted latencies, window seconds)."""
    perf = time.perf_counter
    inf = float("inf")
    warm_until = perf() + warm_s
    window_start = window_end = inf
    lat: list[float] = []
    warm_lat: list[float] = []

    def record(t0: float, t1: float) -> None:
        nonlocal window_start, window_end
        if window_start == inf and t1 >= warm_until and warm_lat:
            window_start = t1
            window_end = t1 + max(measure_s, min_waves * median(warm_lat))
        if window_start <= t1 <= window_end:
            lat.append(t1 - t0)
        elif t1 < window_start:
            warm_lat.append(t1 - t0)

    if inflight == 1:
        while True:
            t0 = perf()
            if t0 >= window_end:
                break
            ray.get(actor.increment.remote(1))
            record(t0, perf())
        return len(lat), sorted(lat), window_end - window_start
    pending = {actor.increment.remote(1): perf() for _ in range(inflight)}
    while pending:
        ray.wait(list(pending), num_returns=1)
        done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
        now = perf()
        for ref in done:
            record(pending.pop(ref), now)
            if now < window_end:
                pending[actor.increment.remote(1)] = perf()
    return len(lat), sorted(lat), window_end - window_start


def calls(ray: Any, actor: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    for rep in range(args.reps):
        for n in args.inflight:
            ncmd, lat, secs = ray_cell(ray, actor, n, args.warmup, args.duration, args.min_waves)
            run = {
                "system": "ray",
                "mode": "actor call",
                "inflight": n,
                "rep": rep + 1,
                "commands": ncmd,
                "seconds": secs,
                "cmds_per_s": ncmd / secs,
                "p50_ms": pct(lat, 50) * 1000,
                "p99_ms": pct(lat, 99) * 1000,
                "p999_ms": pct(lat, 99.9) * 1000,
                "errors": 0,
            }
            runs.append(run)
            log(f"rep {rep + 1} x{n:<4} {run['cmds_per_s']:9.0f} calls/s  p50 {run['p50_ms']:7.2f} ms")
    return runs


def create_actors(ray: Any, counter_cls: Any, args: argparse.Namespace, rep: int) -> dict[str, Any]:
    mem0 = mem_available_kib()
    t0 = time.perf_counter()
    deadline = t0 + args.create_deadline
    actors: list[Any] = []
    pending: list[Any] = []
    ready = 0
    while True:
        now = time.perf_counter()
        if now >= deadline or ready >= args.create_max:
            break
        while len(pending) < args.create_window and len(actors) < args.create_max:
            a = counter_cls.remote()
            actors.append(a)
            pending.append(a.increment.remote(1))
        done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.perf_counter()))
        ready += len(done)
    elapsed = min(time.perf_counter(), deadline) - t0 if ready < args.create_max else time.perf_counter() - t0
    mem1 = mem_available_kib()
    out = {
        "rep": rep + 1,
        "actors_ready": ready,
        "actors_submitted": len(actors),
        "seconds": elapsed,
        "actors_per_s": ready / elapsed if elapsed > 0 else 0.0,
        "stopped_by": "deadline" if ready < args.create_max else "count",
        "mem_available_drop_kib_per_actor": (mem0 - mem1) / ready if ready else float("nan"),
    }
    log(f"created {ready} actors in {elapsed:.1f}s = {out['actors_per_s']:.2f}/s ({out['stopped_by']})")
    for a in actors:
        try:
            ray.kill(a)
        except Exception:
            pass
    del actors, pending
    time.sleep(args.settle)  # let the worker processes exit before the next repetition
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--inflight", nargs="+", type=int, default=[1, 64, 256])
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--min-waves", type=int, default=10)
    p.add_argument("--create-deadline", type=float, default=20.0)
    p.add_argument("--create-max", type=int, default=10_000)
    p.add_argument("--create-window", type=int, default=8)
    p.add_argument("--create-reps", type=int, default=3)
    p.add_argument("--settle", type=float, default=2.0)
    args = p.parse_args()
    try:
        import ray
    except ImportError as exc:
        args.out.write_text(json.dumps({"available": False, "reason": f"ray is not installed ({exc})"}))
        log("ray is not installed: pip install '.[bench]' to include it")
        return 0

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    init_s = time.perf_counter() - t0

    @ray.remote
    class Counter:
        def __init__(self) -> None:
            self.value = 0

        def increment(self, by: int = 1) -> int:
            self.value += by
            return self.value

    result: dict[str, Any] = {"available": True, "version": ray.__version__, "init_s": init_s}
    try:
        actor = Counter.remote()
        ray.get(actor.increment.remote(1))
        result["calls"] = calls(ray, actor, args)
        ray.kill(actor)
        result["create"] = [create_actors(ray, Counter, args, r) for r in range(args.create_reps)]
        result["create_summary"] = {
            "actors_per_s_median": median([c["actors_per_s"] for c in result["create"]]),
            "actors_per_s_min_max": [
                min(c["actors_per_s"] for c in result["create"]),
                max(c["actors_per_s"] for c in result["create"]),
            ],
            "mem_kib_per_actor_median": median([c["mem_available_drop_kib_per_actor"] for c in result["create"]]),
        }
    finally:
        ray.shutdown()
        args.out.write_text(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
