"""jetagents against the bare nats-py floor and against Ray, in one run, with a report.

    python loadtests/bench.py --quick            # about two minutes
    python loadtests/bench.py                    # full: under 20 minutes
    python loadtests/bench.py --smoke            # tiny: does every workload still run?

Workloads (see loadtests/README.md for what each figure means):

1. delivery: sequential and pipelined (64, 256 in flight) calls per delivery mode, jetagents
   vs the bare nats-py floor (``bench_delivery.py``) and vs a Ray counter actor;
2. many agents: 10,000 (and 100,000 in full mode) agents touched once, vs Ray creating actors;
3. cold activation of an agent with 0, 100, 10,000 events, with and without a snapshot;
4. host CPU per exactly-once command (from workload 1's windows);
5. scaling over 1, 2, 3 hosts on a 3-node R3 cluster (hosts join the ring one by one, then
   leave): commands/s, and partitions moved per join and leave;
6. failover after kill -9 of one of 3 hosts under an exactly-once load, no replacement: time
   until the survivors serve all its partitions again, with the default member TTL (3 s)
   and a short one (2 s).

Writes ``report.md``, ``report.json`` and PNG plots to ``--out`` (default
``loadtests/results/<mode>``). Ray and matplotlib come from the ``bench`` extra
(``pip install '.[bench]'``); without Ray the Ray columns say so, without matplotlib
there are no plots; everything else runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _cluster  # noqa: E402
import _report  # noqa: E402
import _workloads  # noqa: E402
import bench_calls  # noqa: E402
import bench_delivery as bd  # noqa: E402
from _workloads import log  # noqa: E402
from jetagents import Client, ClientSettings, NatsServer  # noqa: E402

WORKLOADS = ("delivery", "ray", "many", "cold", "scaling", "failover")

# every knob of every mode in one place, so the report can print what was run
PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "reps": 1,
        "inflight": [1, 16],
        "count": 48,
        "calls_rounds": 2,
        "calls_block": 20,
        "duration": 0.3,
        "warmup": 0.1,
        "min_waves": 6,
        "warm_replies": 2,
        "ray_warmup": 0.1,
        "ray_create_deadline": 3.0,
        "ray_create_reps": 1,
        "ray_settle_s": 0.5,
        "many_sizes": [200],
        "many_settle_s": 0.3,
        "many_idle_s": 0.3,
        "cold_sizes": [0, 120],
        "cold_passivate_s": 0.2,
        "cluster_partitions": [8],
        "scale_hosts": [1, 2],
        "scale_inflight": 16,
        "scale_duration": 0.3,
        "scale_warmup": 0.1,
        "failover_hosts": 2,
        "failover_reps": 1,
        "failover_ttls": ["default"],
        "failover_warm_s": 0.5,
        "failover_after_s": 0.3,
    },
    "quick": {
        "reps": 3,
        # 64 in flight runs in full mode: quick measures the target cells, 1 and 256
        "inflight": [1, 256],
        "count": None,
        # at-most-once is measured with the read-only `get` (workload 1b, the like-for-like
        # target); the full mode also runs `increment` at-most-once (an event append per call)
        "modes": ["at-least-once", "exactly-once"],
        # the partitioned floor (what 64 consumers cost the server on their own) runs in full mode
        "systems": ["jetagents", "floor"],
        "calls_rounds": 10,
        "calls_block": 200,
        "duration": 0.5,
        # the minimum: a window also waits until every worker has had 2 replies
        # (bench_delivery.run_cell), so a slow first wave of 256 durable commands on a loaded
        # machine never falls inside it
        "warmup": 0.2,
        # a window lasts at least this many median latencies (waves at 256 in flight; full: 10)
        "min_waves": 6,
        # and opens once every worker has had this many replies: the floors run faster for the
        # first few waves of a cell (at-least-once 2,300-3,000/s, then 1,900-2,050/s), 6 waves
        # are past that
        "warm_replies": 6,
        "ray_warmup": 0.2,
        "ray_create_deadline": 2.0,
        "ray_create_reps": 3,
        "ray_settle_s": 0.5,
        "many_sizes": [10_000],
        "many_settle_s": 0.3,
        "many_idle_s": 0.3,
        "cold_sizes": [0, 100, 10_000],
        "cold_passivate_s": 0.2,
        "cluster_partitions": [64],
        "scale_hosts": [1, 2, 3],
        "scale_inflight": 128,
        "scale_duration": 0.5,
        "scale_warmup": 0.2,
        "failover_hosts": 3,
        "failover_reps": 3,
        "failover_ttls": ["default"],
        "failover_warm_s": 0.8,
        "failover_after_s": 0.5,
    },
    "full": {
        "reps": 3,
        "inflight": [1, 64, 256],
        "count": None,
        "calls_rounds": 60,
        "calls_block": 200,
        "duration": 4.0,
        "warmup": 1.0,
        "min_waves": 10,
        "warm_replies": 6,
        "ray_warmup": 1.0,
        "ray_create_deadline": 20.0,
        "ray_create_reps": 3,
        "ray_settle_s": 2.0,
        "many_sizes": [10_000, 100_000],
        "many_settle_s": 1.0,
        "many_idle_s": 3.0,
        "cold_sizes": [0, 100, 10_000],
        "cold_passivate_s": 0.5,
        "cluster_partitions": [64],
        "scale_hosts": [1, 2, 3],
        "scale_inflight": 256,
        "scale_duration": 3.0,
        "scale_warmup": 1.0,
        "failover_hosts": 3,
        "failover_reps": 5,
        "failover_ttls": ["default"],
        "failover_warm_s": 3.0,
        "failover_after_s": 1.5,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="short windows, 10,000 agents (about two minutes)")
    g.add_argument("--smoke", action="store_true", help="tiny sizes, 1 rep: checks that everything runs")
    p.add_argument("--out", type=Path, default=None, help="report directory (default loadtests/results/<mode>)")
    p.add_argument("--only", nargs="+", choices=WORKLOADS, default=list(WORKLOADS), help="run only these")
    p.add_argument("--skip", nargs="+", choices=WORKLOADS, default=[], help="skip these")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 3; smoke 1)")
    p.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    p.add_argument("--timeout", type=float, default=60.0, help="per-command timeout, s")
    p.add_argument(
        "--cluster-partitions",
        type=int,
        nargs="+",
        default=None,
        help="partition counts for workloads 5 and 6, a fresh cluster each (default 64; smoke 8)",
    )
    p.add_argument("--failover-reps", type=int, default=None, help="failover repetitions (quick 3, full 5)")
    p.add_argument(
        "--failover-ttls",
        nargs="+",
        choices=["default", "short", "ttl3"],
        default=None,
        help="host settings per failover variant: the code's defaults; member/lease TTL 2 s, heartbeat 0.4 s; "
        "member/lease TTL 3 s, heartbeat 0.5 s (default: default short)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (server data, host logs)")
    p.add_argument(
        "--evidence",
        type=Path,
        default=Path("/tmp/bench-evidence"),
        help="where failover writes every reply and log of a repetition that lost or doubled a command",
    )
    a = p.parse_args(argv)
    a.mode = "smoke" if a.smoke else "quick" if a.quick else "full"
    a.profile = dict(PROFILES[a.mode])
    if a.reps:
        a.profile["reps"] = a.reps
    if a.cluster_partitions:
        a.profile["cluster_partitions"] = a.cluster_partitions
    if a.failover_reps:
        a.profile["failover_reps"] = a.failover_reps
    if a.failover_ttls:
        a.profile["failover_ttls"] = a.failover_ttls
    a.run = [w for w in a.only if w not in a.skip]
    a.out = a.out or HERE / "results" / a.mode
    return a


# -- workload 1 (and 4) ---------------------------------------------------------------------
def run_delivery(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    pr = args.profile
    common = ["--reps", str(pr["reps"]), "--loop", args.loop, "--timeout", str(args.timeout)]
    if pr["count"]:
        common += ["--count", str(pr["count"])]
    else:
        common += ["--duration", str(pr["duration"]), "--warmup", str(pr["warmup"])]
        common += ["--min-waves", str(pr["min_waves"]), "--warm-replies", str(pr["warm_replies"])]
    inflight = ["--inflight", *map(str, pr["inflight"])]
    common += ["--systems", *pr.get("systems", bd.SYSTEMS)]
    dargs = bd.parse_args([*common, *inflight, "--modes", *pr.get("modes", bd.MODES)])
    # the read-only `get` appends no event, so it is like for like with a floor that appends
    # nothing: core request/reply (at-most-once, every in-flight level), and publish + pull +
    # ack + reply (at-least-once, at the most in flight, where the target is)
    gargs = bd.parse_args([*common, *inflight, "--action", "get", "--modes", "at-most-once"])
    aargs = bd.parse_args(
        [*common, "--inflight", str(max(pr["inflight"])), "--action", "get", "--modes", "at-least-once"]
    )
    procs = bd.Processes(work_dir / "delivery")
    procs.work_dir.mkdir(parents=True, exist_ok=True)
    try:
        server = procs.start_server()
        procs.start_host(server.url, dargs)
        procs.start_responder(server.url, dargs)
        runs = asyncio.run(bd.bench(dargs, procs, server.url))
        log("workload 1b: at-most-once with the read-only `get` (like for like with core request/reply)")
        get_runs = asyncio.run(bd.bench(gargs, procs, server.url))
        log("workload 1b: at-least-once with the read-only `get` (like for like with its floor)")
        get_alo_runs = asyncio.run(bd.bench(aargs, procs, server.url))
        log("workload 1c: sequential calls, interleaved A/B blocks (bench_calls.py)")
        cargs = argparse.Namespace(rounds=pr["calls_rounds"], block=pr["calls_block"])
        calls = asyncio.run(bench_calls.measure(server.url, procs.work_dir / "floor.ready", cargs))
    finally:
        procs.stop_all()
    summary = bd.summarize(runs, dargs)
    get_summary = bd.summarize(get_runs, gargs) + bd.summarize(get_alo_runs, aargs)
    get_runs += get_alo_runs
    return {
        "calls_ab": {
            "rounds": pr["calls_rounds"],
            "block": pr["calls_block"],
            "calls_per_s": calls,
            "ratio": {k: v / calls["floor"] for k, v in calls.items()},
        },
        "get_summary": get_summary,
        "get_runs": [bd.asdict(r) for r in get_runs],
        "what": (
            "closed loop; in-flight 1 = one worker on one agent; in-flight N = N workers, worker i always "
            "talks to agent i; jetagents `increment` (appends an event in every mode) vs the floor "
            "(_floor_responder.py) measured back to back per repetition"
        ),
        "args": {k: v for k, v in vars(dargs).items() if not isinstance(v, Path)},
        "summary": summary,
        "runs": [bd.asdict(r) for r in runs],
    }


def host_cpu_per_command(delivery: dict[str, Any]) -> dict[str, Any]:
    """Workload 4: CPU (user+sys) of the host process per command, from workload 1's windows."""
    rows = []
    for cell in delivery["summary"]:
        ja, fl = cell.get("jetagents"), cell.get("floor")
        if not ja:
            continue
        rows.append(
            {
                "mode": cell["mode"],
                "inflight": cell["inflight"],
                "host_cpu_us_per_cmd": ja["cpu_us_per_cmd_median"].get("host"),
                "floor_responder_cpu_us_per_cmd": fl["cpu_us_per_cmd_median"].get("responder") if fl else None,
                "nats_server_cpu_us_per_cmd": ja["cpu_us_per_cmd_median"].get("nats-server"),
                "client_cpu_us_per_cmd": ja["cpu_us_per_cmd_median"].get("client"),
            }
        )
    return {
        "what": "utime+stime of the host process inside each measured window / commands answered (median over reps)",
        "rows": rows,
    }


# -- Ray --------------------------------------------------------------------------------------
def run_ray(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    pr = args.profile
    out = work_dir / "ray.json"
    argv = [sys.executable, str(HERE / "_ray_bench.py"), "--out", str(out), "--reps", str(pr["reps"])]
    argv += ["--inflight", *map(str, pr["inflight"])]
    argv += ["--duration", str(pr["duration"] if not pr["count"] else 0.3), "--warmup", str(pr["ray_warmup"])]
    argv += ["--create-deadline", str(pr["ray_create_deadline"]), "--create-reps", str(pr["ray_create_reps"])]
    argv += ["--settle", str(pr["ray_settle_s"]), "--min-waves", str(pr["min_waves"])]
    log("ray: starting a local Ray instance in its own process (log: ray.log)")
    with open(work_dir / "ray.log", "ab") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, preexec_fn=os.setpgrp)
        try:
            proc.wait(timeout=900)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            raise
    try:
        data: dict[str, Any] = json.loads(out.read_text())
    except (OSError, ValueError):
        tail = (work_dir / "ray.log").read_text(errors="replace").splitlines()[-20:]
        return {"available": False, "reason": "the Ray run failed: " + " | ".join(tail)}
    if data.get("available"):
        calls = data.get("calls", [])
        data["summary"] = []
        for n in sorted({c["inflight"] for c in calls}):
            rs = [c for c in calls if c["inflight"] == n]
            data["summary"].append(
                {
                    "inflight": n,
                    "cmds_per_s_median": bd.median([r["cmds_per_s"] for r in rs]),
                    "cmds_per_s_min": min(r["cmds_per_s"] for r in rs),
                    "cmds_per_s_max": max(r["cmds_per_s"] for r in rs),
                    "p50_ms_median": bd.median([r["p50_ms"] for r in rs]),
                    "p99_ms_median": bd.median([r["p99_ms"] for r in rs]),
                    "p999_ms_median": bd.median([r["p999_ms"] for r in rs]),
                }
            )
        log(f"ray {data.get('version')}: done")
    else:
        log(f"ray: skipped ({data.get('reason')})")
    return data


# -- workloads 2 and 3 ------------------------------------------------------------------------
async def single_host(args: argparse.Namespace, work_dir: Path, results: dict[str, Any]) -> None:
    pr = args.profile
    server = NatsServer(data_dir=work_dir / "single" / "nats", name="single")
    server.start()
    try:
        client = await Client.connect(
            settings=ClientSettings(nats_url=server.url, request_timeout_s=args.timeout, connect_timeout_s=10)
        )
        try:
            if "many" in args.run:
                results["many"] = await _workloads.many_agents(
                    client,
                    server.url,
                    work_dir,
                    pr["many_sizes"],
                    pr["reps"],
                    idle_wait_s=pr["many_idle_s"],
                    settle_s=pr["many_settle_s"],
                    timeout_s=args.timeout,
                )
            if "cold" in args.run:
                results["cold"] = await _workloads.cold_activation(
                    client, server.url, work_dir, pr["cold_sizes"], pr["reps"], passivate_s=pr["cold_passivate_s"]
                )
        finally:
            await client.close()
    finally:
        server.stop()


# -- workloads 5 and 6 ------------------------------------------------------------------------
async def on_cluster(args: argparse.Namespace, work_dir: Path, results: dict[str, Any]) -> None:
    """Workloads 5 and 6 once per partition count, each on a fresh 3-node cluster (the
    partition count is fixed when the streams are created)."""
    pr = args.profile
    scaling: list[dict[str, Any]] = []
    failover: list[dict[str, Any]] = []
    for parts in pr["cluster_partitions"]:
        _cluster.PARTITIONS = parts
        log(f"cluster: starting 3 nats-servers on loopback; {parts} partitions")
        cluster = _cluster.start_cluster(work_dir / f"p{parts}")
        try:
            if "scaling" in args.run:
                scaling.append(
                    await _cluster.scaling(
                        cluster,
                        work_dir,
                        pr["scale_hosts"],
                        ["at-most-once", "exactly-once"],
                        pr["scale_inflight"],
                        pr["reps"],
                        pr["scale_warmup"],
                        pr["scale_duration"],
                        args.timeout,
                        pr["min_waves"],
                        pr["warm_replies"],
                    )
                )
            if "failover" in args.run:
                for ttl in pr["failover_ttls"]:
                    env = {"short": _cluster.SHORT_TTL, "ttl3": _cluster.TTL3}.get(ttl, {})
                    failover.append(
                        await _cluster.failover(
                            cluster,
                            work_dir,
                            hosts=pr["failover_hosts"],
                            reps=pr["failover_reps"],
                            warm_s=pr["failover_warm_s"],
                            after_s=pr["failover_after_s"],
                            timeout_s=args.timeout,
                            env=env,
                            label=f"{ttl}-p{parts}",
                            evidence_dir=args.evidence,
                        )
                    )
        finally:
            cluster.stop()
    if scaling:
        results["scaling"] = {
            "variants": scaling,
            "summary": scaling[0]["summary"],
            "runs": [r for v in scaling for r in v["runs"]],
        }
    if failover:
        results["failover"] = {"variants": failover, "runs": [r for v in failover for r in v["runs"]]}


# -- entry point ------------------------------------------------------------------------------
def machine(args: argparse.Namespace) -> dict[str, Any]:
    import jetagents

    info = bd.machine_info(argparse.Namespace(loop=args.loop))
    pkg = Path(jetagents.__file__).resolve().parent
    info["jetagents_imported_from"] = str(pkg)
    if not pkg.is_relative_to(HERE.parent):
        # an exported tree (git archive <rev> shared services): say which revision it is
        rev = pkg.parent.parent / "REVISION"
        info["code"] = rev.read_text().strip() if rev.is_file() else f"not this checkout: {pkg}"
    info["ray"] = bd._dist_version("ray")
    info["matplotlib"] = bd._dist_version("matplotlib")
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["mem_total_gib"] = round(int(mem) / 1024 / 1024, 1)
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    work_dir = Path(tempfile.mkdtemp(prefix="bench-"))
    results: dict[str, Any] = {
        "mode": args.mode,
        "profile": args.profile,
        "workloads_run": args.run,
        "machine": machine(args),
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, on_term) for s in (signal.SIGTERM, signal.SIGHUP)}
    old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    failed = False
    rc = 0
    try:
        log(f"mode {args.mode}; work dir {work_dir}; workloads {' '.join(args.run)}")
        if "delivery" in args.run:
            log("workload 1: delivery modes, jetagents vs the bare nats-py floor")
            results["delivery"] = run_delivery(args, work_dir)
            results["host_cpu"] = host_cpu_per_command(results["delivery"])
        if "ray" in args.run:
            results["ray"] = run_ray(args, work_dir)
        if "many" in args.run or "cold" in args.run:
            log("workloads 2 and 3: many agents, cold activation (one host, one nats-server)")
            asyncio.run(single_host(args, work_dir, results))
        if "scaling" in args.run or "failover" in args.run:
            log("workloads 5 and 6: scaling and failover (3-node cluster, R3)")
            asyncio.run(on_cluster(args, work_dir, results))
    except KeyboardInterrupt:
        log("interrupted")
        rc = 130
    except SystemExit as exc:
        rc = int(exc.code) if isinstance(exc.code, int) else 1
    except Exception as exc:
        log(f"FAILED: {type(exc).__name__}: {exc}")
        results["failed"] = f"{type(exc).__name__}: {exc}"
        failed = True
        rc = 1
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    results["wall_s"] = time.monotonic() - started
    if rc != 130:
        paths = _report.write(results, args.out)
        log("wrote " + ", ".join(str(p) for p in paths))
        print((args.out / "report.md").read_text())
    if args.keep or failed:
        log(f"kept {work_dir} (host logs, nats data, ray.log)")
    else:
        shutil.rmtree(work_dir, ignore_errors=True)
    if args.smoke and not rc and _report.smoke_problems(results):
        print("SMOKE FAILED: " + "; ".join(_report.smoke_problems(results)), file=sys.stderr)
        return 2
    return rc


if __name__ == "__main__":
    sys.exit(main())
