# ruff: noqa: E501 - long markdown table rows read better unbroken
"""Report of one ``bench.py`` run: ``report.json`` (everything), ``report.md`` (tables, the
targets, what could not be measured) and PNG plots (matplotlib, when installed)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MODES = ("at-most-once", "at-least-once", "exactly-once")


def _nan_to_none(o: Any) -> Any:
    if isinstance(o, float) and (o != o or math.isinf(o)):
        return None
    if isinstance(o, dict):
        return {k: _nan_to_none(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_nan_to_none(v) for v in o]
    return o


def f(v: Any, nd: int = 0) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if isinstance(v, int | float):
        return f"{v:,.{nd}f}"
    return str(v)


def mm(pair: list[float] | None, nd: int = 0) -> str:
    return f"{f(pair[0], nd)}-{f(pair[1], nd)}" if pair else "-"


def cell(results: dict[str, Any], mode: str, n: int) -> dict[str, Any] | None:
    for c in (results.get("delivery") or {}).get("summary", []):
        if c["mode"] == mode and c["inflight"] == n:
            return c
    return None


def get_cell(results: dict[str, Any], n: int, mode: str = "at-most-once") -> dict[str, Any] | None:
    for c in (results.get("delivery") or {}).get("get_summary", []):
        if c["inflight"] == n and c.get("mode", "at-most-once") == mode:
            return c
    return None


def ray_cell(results: dict[str, Any], n: int) -> dict[str, Any] | None:
    ray = results.get("ray") or {}
    for c in ray.get("summary", []) if ray.get("available") else []:
        if c["inflight"] == n:
            return c
    return None


# -- targets ----------------------------------------------------------------------------------
def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, threshold: float, higher: bool, note: str = "") -> None:
        met = None if value is None or value != value else (value >= threshold if higher else value <= threshold)
        out.append({"target": name, "value": value, "threshold": threshold, "met": met, "note": note})

    def ratio(mode: str, n: int) -> float | None:
        c = cell(results, mode, n)
        return c.get("ratio") if c else None

    ab = (results.get("delivery") or {}).get("calls_ab")
    add(
        "at-most-once sequential, jetagents/floor, interleaved A/B blocks (`get`; bench_calls.py)",
        ab["ratio"]["jetagents"] if ab else None,
        0.9,
        True,
    )
    g = get_cell(results, 1)
    add(
        "at-most-once sequential, jetagents/floor, read-only `get` (like for like)",
        g.get("ratio") if g else None,
        0.9,
        True,
    )
    add(
        "at-most-once sequential, jetagents/floor, `increment` (jetagents also appends the event)",
        ratio("at-most-once", 1),
        0.9,
        True,
    )
    add(
        "at-least-once @256, jetagents/floor, `increment` (jetagents also appends the event)",
        ratio("at-least-once", 256),
        0.7,
        True,
    )
    ga = get_cell(results, 256, "at-least-once")
    add(
        "at-least-once @256, jetagents/floor, read-only `get` (like for like)",
        ga.get("ratio") if ga else None,
        0.7,
        True,
    )
    add("exactly-once @256, jetagents/floor (both append one fenced event)", ratio("exactly-once", 256), 0.6, True)
    vs_ray = (
        (
            "in memory (`get`)",
            lambda n: get_cell(results, n),
            "like for like: jetagents read-only `get` vs Ray's counter call; both in memory, neither persists",
        ),
        (
            "persisted (`increment`)",
            lambda n: cell(results, "at-most-once", n),
            "at-most-once (Ray's call is in memory only; jetagents still appends the event)",
        ),
    )
    for kind, jetagents_cell, why in vs_ray:
        for n, label in ((1, "sequential"), (64, "pipelined @64"), (256, "pipelined @256")):
            c, r = jetagents_cell(n), ray_cell(results, n)
            v = (
                c["jetagents"]["cmds_per_s_median"] / r["cmds_per_s_median"]
                if c and r and c.get("jetagents") and r["cmds_per_s_median"]
                else None
            )
            note = why if c and r else "Ray not measured in this run" if c else "not measured in this run"
            add(f"calls/s vs Ray, {label}, {kind}", v, 2.0, True, note)
    many = ((results.get("many") or {}).get("summary") or {}).get("10000")
    ray_create = ((results.get("ray") or {}).get("create_summary") or {}).get("actors_per_s_median")
    v = many["agents_per_s"]["median"] / ray_create if many and ray_create else None
    add(
        "activation of 10,000 agents vs Ray actor creation (agents/s / actors/s)",
        v,
        1000.0,
        True,
        "" if ray_create else "Ray not measured in this run",
    )
    for size in ("10000", "100000"):
        m = ((results.get("many") or {}).get("summary") or {}).get(size)
        add(
            f"host KiB per active idle counter agent ({int(size):,} agents)",
            m["host_kib_per_agent_idle"]["median"] if m else None,
            2.0,
            False,
        )
    for v in (results.get("failover") or {}).get("variants", []):
        fo = v.get("summary") or {}
        label = f" [ring takeover, no replacement; {ttl_label(v)}]"
        note = f"failed: {v['failed'].splitlines()[0][:160]}" if v.get("failed") else ""
        for what, key, limit in (("median", "median", 3.0), ("worst", "worst", 6.0)):
            add(
                f"failover after kill -9, {what} s" + label,
                (fo.get("serve_again_s") or {}).get(key),
                limit,
                False,
                note,
            )
            if note:  # the cluster never got there: a miss, not a gap in the measurement
                out[-1]["met"] = False
    return out


def trouble(t: dict[str, int] | None) -> str:
    return ", ".join(f"{k} {n}" for k, n in (t or {}).items()) or "none"


def ttl_label(v: dict[str, Any]) -> str:
    st = v.get("settings") or {}
    default = " (default)" if str(v.get("label", "")).startswith("default") else ""
    return (
        f"{v.get('partitions', 64)} partitions, member TTL {st.get('member_ttl_s', 3.0):g} s{default}, lease TTL {st.get('lease_ttl_s', 3.0):g} s, "
        f"heartbeat {st.get('heartbeat_s', 0.5):g} s"
    )


def smoke_problems(results: dict[str, Any]) -> list[str]:
    problems = []
    if results.get("failed"):
        problems.append(results["failed"])
    d = results.get("delivery") or {}
    for r in d.get("runs", []) + d.get("get_runs", []):
        if r["errors"] or not r["commands"]:
            problems.append(f"delivery {r['system']} {r['mode']} x{r['inflight']}: {r['errors']} errors")
    for key in ("many", "cold", "scaling"):
        for r in (results.get(key) or {}).get("runs", []):
            if r.get("errors") or r.get("error") or r.get("lost_or_doubled"):
                problems.append(f"{key}: {r}")
    for key in ("scaling", "failover"):
        for v in (results.get(key) or {}).get("variants", []):
            if v.get("failed"):
                problems.append(f"{key}: {v['failed'][:500]}")
    # failover: retried errors are part of a failover; lost, doubled or never served again are not
    for r in (results.get("failover") or {}).get("runs", []):
        if r.get("lost_or_doubled") or r["serve_again_s_max"] != r["serve_again_s_max"]:
            problems.append(f"failover: {r}")
    return problems


# -- plots ------------------------------------------------------------------------------------
def plots(results: dict[str, Any], out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written: list[Path] = []
    delivery = results.get("delivery") or {}
    summary = delivery.get("summary") or []
    if summary:
        levels = sorted({c["inflight"] for c in summary})
        fig, ax = plt.subplots(figsize=(8, 5))
        colors = {"at-most-once": "tab:blue", "at-least-once": "tab:orange", "exactly-once": "tab:green"}
        for mode in MODES:
            for system, style in (("jetagents", "-o"), ("floor", "--s")):
                pts = [(c["inflight"], c[system]) for c in summary if c["mode"] == mode and c.get(system)]
                if not pts:
                    continue
                xs = [p[0] for p in pts]
                ys = [p[1]["cmds_per_s_median"] for p in pts]
                err = [
                    [y - p[1]["cmds_per_s_min"] for y, p in zip(ys, pts, strict=True)],
                    [p[1]["cmds_per_s_max"] - y for y, p in zip(ys, pts, strict=True)],
                ]
                ax.errorbar(xs, ys, yerr=err, fmt=style, color=colors[mode], capsize=3, label=f"{system} {mode}")
        rs = [ray_cell(results, n) for n in levels]
        if any(rs):
            pts = [(n, r) for n, r in zip(levels, rs, strict=True) if r]
            ys = [r["cmds_per_s_median"] for _, r in pts]
            err = [
                [y - r["cmds_per_s_min"] for y, (_, r) in zip(ys, pts, strict=True)],
                [r["cmds_per_s_max"] - y for y, (_, r) in zip(ys, pts, strict=True)],
            ]
            ax.errorbar([n for n, _ in pts], ys, yerr=err, fmt=":^", color="black", capsize=3, label="Ray actor")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(levels)
        ax.set_xticklabels([str(n) for n in levels])
        ax.set_xlabel("commands in flight")
        ax.set_ylabel("commands/s (median, bars: min-max over reps)")
        ax.set_title("Throughput against in-flight count")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        p = out / "throughput.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        written.append(p)

        # latency percentiles: one panel per in-flight level
        fig, axes = plt.subplots(1, len(levels), figsize=(4.5 * len(levels), 4.5), squeeze=False)
        for ax, n in zip(axes[0], levels, strict=True):
            labels, vals = [], []
            for mode in MODES:
                c = cell(results, mode, n)
                for system in ("jetagents", "floor"):
                    if c and c.get(system):
                        s = c[system]
                        labels.append(f"{system[:4]} {mode.split('-')[1] if '-' in mode else mode}")
                        vals.append((s["p50_ms_median"], s["p99_ms_median"], s.get("p999_ms_median")))
            r = ray_cell(results, n)
            if r:
                labels.append("Ray")
                vals.append((r["p50_ms_median"], r["p99_ms_median"], r["p999_ms_median"]))
            xs = range(len(labels))
            w = 0.27
            for k, (name, color) in enumerate((("p50", "tab:blue"), ("p99", "tab:orange"), ("p99.9", "tab:red"))):
                ax.bar(
                    [x + (k - 1) * w for x in xs],
                    [v[k] if v[k] is not None else 0 for v in vals],
                    w,
                    label=name,
                    color=color,
                )
            ax.set_xticks(list(xs))
            ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
            ax.set_yscale("log")
            ax.set_title(f"{n} in flight")
            ax.set_ylabel("latency ms (median over reps)")
            ax.grid(True, axis="y", which="both", alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.suptitle("Latency percentiles (jeta = jetagents, floo = bare nats-py floor; most/least/exactly)")
        fig.tight_layout()
        p = out / "latency.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        written.append(p)
    scaling = (results.get("scaling") or {}).get("summary") or []
    if scaling:
        fig, ax = plt.subplots(figsize=(6, 4))
        for mode, color in (("at-most-once", "tab:blue"), ("exactly-once", "tab:green")):
            pts = [s for s in scaling if s["mode"] == mode]
            if pts:
                ys = [s["cmds_per_s"]["median"] for s in pts]
                err = [
                    [y - s["cmds_per_s"]["min_max"][0] for y, s in zip(ys, pts, strict=True)],
                    [s["cmds_per_s"]["min_max"][1] - y for y, s in zip(ys, pts, strict=True)],
                ]
                ax.errorbar([s["hosts"] for s in pts], ys, yerr=err, fmt="-o", color=color, capsize=3, label=mode)
        ax.set_xlabel("hosts (ring, R3, 3 nats-servers, all on the same cores)")
        ax.set_ylabel("commands/s")
        ax.set_xticks(sorted({s["hosts"] for s in scaling}))
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        p = out / "scaling.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        written.append(p)
    return written


# -- markdown -----------------------------------------------------------------------------------
def markdown(results: dict[str, Any], pngs: list[Path]) -> str:
    m = results.get("machine", {})
    pr = results.get("profile", {})
    L: list[str] = []
    add = L.append
    add(f"# jetagents benchmark report ({results.get('mode')} mode)")
    add("")
    add(
        f"Run {results.get('started_at')}, wall time {f(results.get('wall_s'))} s, workloads: "
        f"{', '.join(results.get('workloads_run', []))}. Command: `python loadtests/bench.py"
        + {"quick": " --quick", "smoke": " --smoke"}.get(results.get("mode", ""), "")
        + "`."
    )
    if results.get("failed"):
        add("")
        add(f"**The run failed:** {results['failed']} (figures below are what was measured before).")
    add("")
    add(
        f"Machine: {m.get('nproc')} cores ({m.get('cpu') or '?'}), {m.get('mem_total_gib')} GiB, "
        f"{m.get('platform')}; {m.get('python')}; {m.get('nats_server')}; nats-py {m.get('nats_py')}; "
        f"jetagents {m.get('jetagents')} (code {m.get('code')}, imported from `{m.get('jetagents_imported_from')}`); "
        f"Ray {m.get('ray')}; matplotlib {m.get('matplotlib')}; event loop {m.get('loop')}; "
        f"load average at start {' '.join(f(x, 2) for x in m.get('loadavg_at_start', []))}."
    )
    add("")
    add(
        "**Read with care:** everything (nats-server(s) with `sync_interval: always`, the host, the floor "
        "responder, Ray, the load generator) shares the same small machine, which other engineers also use "
        "for tests. Absolute figures move from run to run; the ratios, measured back to back in the same run, "
        "are the figures to compare. Every figure is the median over "
        f"{pr.get('reps')} repetition(s) with min-max in brackets"
        + (" (smoke mode: 1 repetition, not a measurement)." if results.get("mode") == "smoke" else ".")
    )
    add("")

    # targets
    add("## Targets")
    add("")
    add("| target | measured | threshold | status |")
    add("|---|---|---|---|")
    for t in results.get("targets", []):
        status = {True: "met", False: "**missed**", None: "not measured"}[t["met"]]
        note = f" ({t['note']})" if t["note"] else ""
        cmp_ = ">=" if "KiB" not in t["target"] and "failover" not in t["target"] else "<="
        add(f"| {t['target']}{note} | {f(t['value'], 2)} | {cmp_} {f(t['threshold'], 1)} | {status} |")
    add("")

    # workload 1
    d = results.get("delivery")
    if d:
        add("## 1. Delivery modes: jetagents vs the bare nats-py floor vs a Ray actor")
        add("")
        add(d["what"] + ". Ray: one counter actor in memory (`ray.get` per call at 1 in flight; a `ray.wait` loop")
        add(
            "keeping N calls outstanding to the same actor otherwise). Window "
            + (
                f"{pr.get('count')} commands"
                if pr.get("count")
                else f"of at least {pr.get('duration')} s, and at least {pr.get('min_waves', 10)} times the median "
                "latency of the "
                f"warm-up (a closed loop with many commands in flight answers in waves; a window a few "
                f"waves long would count 2 or 3 of them), opened after at least {pr.get('warmup')} s of "
                f"warm-up and once every worker has had {pr.get('warm_replies', 2)} replies"
            )
            + ", per cell and repetition."
        )
        add("")
        add(
            "| mode | in flight | jetagents cmds/s | floor cmds/s | jetagents/floor (paired min-max) | "
            "Ray calls/s | jetagents/Ray | jetagents p50/p99/p99.9 ms | floor p50/p99/p99.9 ms |"
        )
        add("|---|---|---|---|---|---|---|---|---|")
        for c in d["summary"]:
            ja, fl = c.get("jetagents") or {}, c.get("floor") or {}
            r = ray_cell(results, c["inflight"])
            ray_s = f"{f(r['cmds_per_s_median'])} ({f(r['cmds_per_s_min'])}-{f(r['cmds_per_s_max'])})" if r else "-"
            vs_ray = f(ja["cmds_per_s_median"] / r["cmds_per_s_median"], 2) if r and ja else "-"

            def lat(x: dict[str, Any]) -> str:
                if not x:
                    return "-"
                return f"{f(x['p50_ms_median'], 2)} / {f(x['p99_ms_median'], 2)} / {f(x.get('p999_ms_median'), 2)}"

            def rate(x: dict[str, Any]) -> str:
                if not x:
                    return "-"
                return f"{f(x['cmds_per_s_median'])} ({f(x['cmds_per_s_min'])}-{f(x['cmds_per_s_max'])})"

            add(
                f"| {c['mode']} | {c['inflight']} | {rate(ja)} | {rate(fl)} | {f(c.get('ratio'), 2)} "
                f"({mm(c.get('ratio_paired_min_max'), 2)}) | {ray_s} | {vs_ray} | {lat(ja)} | {lat(fl)} |"
            )
        add("")
        ray = results.get("ray") or {}
        if ray.get("available"):
            rr = [ray_cell(results, n) for n in (1, 64, 256)]
            add(
                "Ray latency p50/p99/p99.9 ms: "
                + "; ".join(
                    f"{r['inflight']} in flight {f(r['p50_ms_median'], 2)} / {f(r['p99_ms_median'], 2)} / "
                    f"{f(r['p999_ms_median'], 2)}"
                    for r in rr
                    if r
                )
                + f". `ray.init` took {f(ray.get('init_s'), 1)} s."
            )
        else:
            add(f"Ray: **not measured** ({ray.get('reason', 'not run')}).")
        add("")
        add(
            "The floor's at-most-once and at-least-once rows append nothing, while jetagents' `increment` "
            "appends one fsync'd event in every mode: those two ratios include the cost of persisting the "
            "state change. The exactly-once floor appends one fenced event, so that row is like for like. "
            "Ray's counter is in process memory only (nothing survives a crash)."
        )
        add("")
        part = [c for c in d["summary"] + d.get("get_summary", []) if c.get("floor-p")]
        if part:
            add(
                "The floor pulls every durable command through one consumer; a jetagents host pulls each "
                "partition through its own consumer (64 by default), so that ownership can move partition "
                "by partition. The *partitioned floor* is the floor's durable pattern spread over as many "
                "consumers, one credit loop each (`_floor_responder.py --partitions`): what the server's "
                "per-consumer work costs on its own, without jetagents."
            )
            add("")
            add(
                "| mode | action | in flight | floor cmds/s | partitioned floor cmds/s | partitioned/floor | "
                "jetagents cmds/s | jetagents/partitioned floor |"
            )
            add("|---|---|---|---|---|---|---|---|")
            for c in part:
                fl, fp, ja = c.get("floor") or {}, c["floor-p"], c.get("jetagents") or {}
                fl_rate, fp_rate = fl.get("cmds_per_s_median"), fp.get("cmds_per_s_median")
                add(
                    f"| {c['mode']} | {'get' if c in d.get('get_summary', []) else 'increment'} | {c['inflight']} | "
                    f"{f(fl_rate)} | {f(fp_rate)} | {f(fp_rate / fl_rate if fl_rate else None, 2)} | "
                    f"{f(ja.get('cmds_per_s_median'))} | {f(c.get('ratio_partitioned'), 2)} |"
                )
            add("")
    if d and d.get("get_summary"):
        add(
            "The read-only `get` (no event append on either side: like for like), at-most-once at every "
            "in-flight level and at-least-once at the most in flight:"
        )
        add("")
        add(
            "| mode | in flight | jetagents cmds/s | floor cmds/s | jetagents/floor (paired min-max) | "
            "jetagents p50/p99/p99.9 ms | floor p50/p99/p99.9 ms | host us/cmd | floor responder us/cmd |"
        )
        add("|---|---|---|---|---|---|---|---|---|")
        for c in d["get_summary"]:
            ja, fl = c.get("jetagents") or {}, c.get("floor") or {}
            add(
                f"| {c.get('mode', 'at-most-once')} | {c['inflight']} | {f(ja.get('cmds_per_s_median'))} ({f(ja.get('cmds_per_s_min'))}-"
                f"{f(ja.get('cmds_per_s_max'))}) | {f(fl.get('cmds_per_s_median'))} ({f(fl.get('cmds_per_s_min'))}-"
                f"{f(fl.get('cmds_per_s_max'))}) | {f(c.get('ratio'), 2)} ({mm(c.get('ratio_paired_min_max'), 2)}) | "
                f"{f(ja.get('p50_ms_median'), 2)} / {f(ja.get('p99_ms_median'), 2)} / {f(ja.get('p999_ms_median'), 2)} | "
                f"{f(fl.get('p50_ms_median'), 2)} / {f(fl.get('p99_ms_median'), 2)} / {f(fl.get('p999_ms_median'), 2)} | "
                f"{f((ja.get('cpu_us_per_cmd_median') or {}).get('host'))} | "
                f"{f((fl.get('cpu_us_per_cmd_median') or {}).get('responder'))} |"
            )
        add("")
    ab = (d or {}).get("calls_ab")
    if ab:
        add(
            f"Sequential calls again, interleaved: {ab['rounds']} rounds, each running every variant for "
            f"{ab['block']} calls in a new random order (the same host and floor responder), so the machine's "
            "noise falls evenly on all of them (`loadtests/bench_calls.py`, which also runs alone):"
        )
        add("")
        add("| variant | calls/s | mean latency us | / floor |")
        add("|---|---|---|---|")
        for name, rate in ab["calls_per_s"].items():
            add(f"| {name} | {f(rate)} | {f(1e6 / rate)} | {f(ab['ratio'][name], 3)} |")
        add("")
        add(
            "*floor + 3 headers* is the floor's request with headers like the jetagents client's; *host, bare "
            "request* is a request without headers to the jetagents host: the gap between the floor and "
            "jetagents splits into what headers cost nats-py and the server, and what the host and the client add."
        )
        add("")
    hc = results.get("host_cpu")
    if hc:
        add("## 4. Host CPU per command")
        add("")
        add(hc["what"] + "; the floor responder does the minimum NATS work of the same mode.")
        add("")
        add("| mode | in flight | host us/cmd | floor responder us/cmd | nats-server us/cmd | client us/cmd |")
        add("|---|---|---|---|---|---|")
        for r in hc["rows"]:
            add(
                f"| {r['mode']} | {r['inflight']} | {f(r['host_cpu_us_per_cmd'])} | "
                f"{f(r['floor_responder_cpu_us_per_cmd'])} | {f(r['nats_server_cpu_us_per_cmd'])} | "
                f"{f(r['client_cpu_us_per_cmd'])} |"
            )
        add("")
    many = results.get("many")
    if many:
        add("## 2. Many agents")
        add("")
        add(many["what"] + ".")
        add("")
        add(
            "| agents | until all answered s | agents/s | p50 / p99 ms | host CPU us/activation | "
            "host KiB/agent right after | host KiB/agent idle |"
        )
        add("|---|---|---|---|---|---|---|")
        for n, s in many["summary"].items():
            add(
                f"| {int(n):,} | {f(s['seconds_until_all_answered']['median'], 2)} "
                f"({mm(s['seconds_until_all_answered']['min_max'], 2)}) | {f(s['agents_per_s']['median'])} "
                f"({mm(s['agents_per_s']['min_max'])}) | {f(s['p50_ms']['median'], 1)} / {f(s['p99_ms']['median'], 1)} | "
                f"{f(s['host_cpu_us_per_activation']['median'])} ({mm(s['host_cpu_us_per_activation']['min_max'])}) | "
                f"{f(s['host_kib_per_agent_active']['median'], 2)} ({mm(s['host_kib_per_agent_active']['min_max'], 2)}) | "
                f"{f(s['host_kib_per_agent_idle']['median'], 2)} ({mm(s['host_kib_per_agent_idle']['min_max'], 2)}) |"
            )
        add("")
        ray = results.get("ray") or {}
        cs = ray.get("create_summary")
        if ray.get("available") and cs:
            runs = ray.get("create", [])
            add(
                f"Ray, same machine: creating counter actors ({'; '.join(str(c['actors_ready']) + ' up in ' + f(c['seconds'], 1) + ' s' for c in runs)}; "
                f"stopped at the {f(pr.get('ray_create_deadline'))} s deadline) = **{f(cs['actors_per_s_median'], 2)} actors/s** "
                f"({mm(cs['actors_per_s_min_max'], 2)}); the machine's available memory dropped by "
                f"{f(cs['mem_kib_per_actor_median'] / 1024, 1)} MiB per live actor. Ray starts one worker "
                "**process** per actor (a Python interpreter that imports Ray and registers with the raylet), "
                "so its creation rate is the machine's process start-up rate and its memory per actor is a "
                "process; 10,000 Ray actors would need hours and hundreds of GiB here. A jetagents agent is a "
                "Python object in a host process, activated by its first message."
            )
        else:
            add(f"Ray actor creation: **not measured** ({ray.get('reason', 'not run')}).")
        add("")
    cold = results.get("cold")
    if cold:
        add("## 3. Cold activation")
        add("")
        add(
            cold["what"] + f". Passivation after {cold['passivate_after_s']} s idle; the harness waits "
            f"{cold['wait_before_cold_call_s']} s before each cold call. Building the logs took "
            + ", ".join(f"{int(k):,} events: {f(v, 1)} s" for k, v in cold["build_s"].items())
            + "."
        )
        add("")
        add("| events | snapshot | cold call ms | warm call ms | activation ms (cold - warm) |")
        add("|---|---|---|---|---|")
        for s in cold["summary"]:
            add(
                f"| {s['events']:,} | {'yes' if s['variant'] == 'snapshot' else 'no'} | "
                f"{f(s['cold_ms']['median'], 2)} ({mm(s['cold_ms']['min_max'], 2)}) | {f(s['warm_ms']['median'], 2)} | "
                f"{f(s['activation_ms']['median'], 2)} ({mm(s['activation_ms']['min_max'], 2)}) |"
            )
        snaps = {r["events"]: r["snapshot_covers_commits"] for r in cold["runs"] if r["variant"] == "snapshot"}
        add("")
        add(
            "Snapshot found (commits covered): " + ", ".join(f"{k:,} events: {v}" for k, v in snaps.items()) + "; "
            "an agent with no events has no snapshot, so that cell exists only without one."
        )
        add("")
    for sc in (results.get("scaling") or {}).get("variants", []):
        add(f"## 5. Scaling over hosts (3-node cluster, R3, {sc.get('partitions', 64)} partitions)")
        add("")
        add(f"{sc['what']}. **Ownership: {sc['ownership']}.**")
        add("")
        if sc.get("failed"):
            add(
                f"**This workload failed:** `{sc['failed'].splitlines()[0][:400]}`; the figures are what was "
                "measured before."
            )
            add("")
        add("| hosts | mode | cmds/s | p50 / p99 ms | CPU cores: hosts / nats-servers / client |")
        add("|---|---|---|---|---|")
        for s in sc["summary"]:
            add(
                f"| {s['hosts']} | {s['mode']} | {f(s['cmds_per_s']['median'])} ({mm(s['cmds_per_s']['min_max'])}) | "
                f"{f(s['p50_ms']['median'], 1)} / {f(s['p99_ms']['median'], 1)} | "
                f"{f(s['host_cores']['median'], 2)} / {f(s['nats_cores']['median'], 2)} / {f(s['client_cores']['median'], 2)} |"
            )
        add("")
        if sc.get("ring_changes"):
            add(
                f"Partitions moved when a host joins or leaves (of {sc.get('partitions', 64)}): *moved* = ring owners that differ between "
                "the settled ring before and the settled ring after; *through epochs* = owner changes summed "
                "over every intermediate ring seen (polled every 0.1 s; the leader moves at most 8 live "
                "partitions per step); *ideal* = P/k for the k-th host (consistent hashing's minimum); "
                "*settled* = until every live host holds exactly what the ring assigns it."
            )
            add("")
            add(
                "| change | moved | through epochs | epochs | ideal | settled s | partitions per host after | "
                "host log warnings meanwhile |"
            )
            add("|---|---|---|---|---|---|---|---|")
            for c in sc["ring_changes"]:
                per = ", ".join(str(n) for n in c["partitions_per_host"].values())
                add(
                    f"| {c['change']} | {c['moved']} | {c['moves_through_epochs']} | {c['epochs']} | "
                    f"{c['ideal'] if c['ideal'] is not None else '-'} | {f(c['settle_s'], 1)} | {per} | "
                    f"{trouble(c.get('trouble'))} |"
                )
            add("")
        if sc.get("trouble"):
            add(
                "Host log warnings while measuring, per host count: "
                + "; ".join(f"{k} host(s): {trouble(v)}" for k, v in sc["trouble"].items())
                + ". (*self_fenced*: a host whose heartbeat was silent for a member TTL stops all its "
                "partitions; *partition_start_failed*: a consumer delete/create timed out.)"
            )
            add("")
        add(
            "What it shows on this machine: three nats-servers, the hosts and the load generator share "
            f"{m.get('nproc')} cores, so more hosts cannot add capacity here; the cores columns show where the "
            "CPU goes (the R3 servers dominate the durable rows). It checks that the ring spreads the partitions "
            "and what a join or leave moves; it says nothing about throughput scaling on separate machines."
        )
        add("")
    fo = results.get("failover")
    if fo and fo.get("variants"):
        add("## 6. Failover after kill -9 of a host (ring takeover, no replacement)")
        add("")
        first = fo["variants"][0]
        add(f"{first['what']}. **Ownership: {first['ownership']}. Recovery: {first['recovery']}.**")
        add("")
        add(
            "Columns (seconds from the kill -9): *member gone* = the killed host's member key expired; "
            "*ring* = the leader wrote a ring without it; *claimed* = every partition it held claimed by a "
            "survivor; *started* = every one of them started by its new owner (its `partition.started` event: "
            "the claim, then the partition's consumer deleted and recreated on the R3 stream); *served* = for each of those partitions, a command sent after the kill to its agent was "
            "answered (max over its partitions = the figure against the target; median partition in brackets). "
            "*Waited* = commands to its partitions that were in flight at the kill (answered after the "
            "takeover), with their median / max latency. Checked per agent: the increments returned exactly "
            "1..k, the final value is k, and its event log is gapless (n = 1..k), has every command id once "
            "and never goes back to an older owner."
        )
        add("")
        for v in fo["variants"]:
            add(f"### {ttl_label(v)}")
            add("")
            add(
                "| rep | killed host | partitions held | member gone | ring | claimed | started | all served again (median) | "
                "waited: n, median / max s | commands | errors (retried) | lost or applied twice | host log warnings |"
            )
            add("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            for r in v["runs"]:
                add(
                    f"| {r['rep']} | {r['victim']}{' (leader)' if r['victim_was_leader'] else ''} | "
                    f"{r['partitions_held']} | {f(r['member_gone_s'], 2)} | {f(r['ring_s'], 2)} | "
                    f"{f(r['claimed_s'], 2)} | {f(r.get('started_s'), 2)} | **{f(r['serve_again_s_max'], 2)}** ({f(r['serve_again_s_median'], 2)}) | "
                    f"{r['commands_waited']}, {f(r['waited_latency_s_median'], 2)} / {f(r['waited_latency_s_max'], 2)} | "
                    f"{r['commands_answered']:,} | {r['errors']} | {r['lost_or_doubled']} | {trouble(r.get('trouble'))} |"
                )
            if v.get("failed"):
                add("")
                add(
                    f"**Failed after {len(v['runs'])} repetition(s):** `{v['failed'].splitlines()[0][:400]}`. Host log warnings "
                    f"over the whole variant: {trouble(v.get('trouble_total'))}."
                )
            s = v.get("summary") or {}
            if s:
                add("")
                add(
                    f"**Median {f(s['serve_again_s']['median'], 2)} s, worst {f(s['serve_again_s']['worst'], 2)} s** "
                    f"({s['reps']} repetitions) from the kill until every partition of the killed host served "
                    f"again (targets: median < 3 s, worst < 6 s). Medians of the steps: member gone "
                    f"{f(s['member_gone_s_median'], 2)} s, ring {f(s['ring_s_median'], 2)} s, claimed "
                    f"{f(s['claimed_s_median'], 2)} s, started {f(s.get('started_s_median'), 2)} s. Lost or applied twice: {s['lost_or_doubled']}."
                )
            add("")
    add("## Not measured, or not yet what the issue asks")
    add("")
    for line in missing(results):
        add(f"* {line}")
    add("")
    if pngs:
        add("## Plots")
        add("")
        for p in pngs:
            add(f"![{p.stem}]({p.name})")
        add("")
    return "\n".join(L)


def missing(results: dict[str, Any]) -> list[str]:
    out = []
    ran = results.get("workloads_run", [])
    if not (results.get("ray") or {}).get("available"):
        out.append(f"Ray: {(results.get('ray') or {}).get('reason', 'not run')}; the Ray ratios are missing.")
    if "scaling" in ran:
        out.append(
            "Scaling on separate machines: here 3 nats-servers, up to 3 hosts and the load generator share "
            "2 cores, so workload 5 shows the cost of each added host and what the ring moves, not scaling."
        )
    many = results.get("many") or {}
    if many and "100000" not in many.get("summary", {}):
        out.append("100,000 agents: full mode only.")
    return out


def write(results: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    results["targets"] = targets(results)
    pngs = plots(results, out)
    results["plots"] = [p.name for p in pngs]
    (out / "report.json").write_text(json.dumps(_nan_to_none(results), indent=1, default=str))
    md = markdown(results, pngs)
    if (out / "NOTES.md").is_file():  # the hand-written closing note of a committed run
        title, _, rest = md.partition("\n")
        md = f"{title}\n\nClosing note (targets, what costs what, profiles, bugs found): [NOTES.md](NOTES.md).\n{rest}"
    (out / "report.md").write_text(md)
    return [out / "report.md", out / "report.json", *pngs]
