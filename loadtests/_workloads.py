"""Workloads 2 and 3 of ``bench.py`` (one host, one embedded nats-server), and the host
process helper the cluster workloads use too.

* ``many_agents``: N distinct counter agents touched once each (an at-most-once ``get``:
  activation only, no event append), 256 in flight, against a fresh host process per
  repetition. Figures: time until all answered, agents activated per second, host CPU per
  activation, host RSS growth per agent right after the last answer and again once every
  agent has been idle for a while.
* ``cold_activation``: the first call to an agent that is not in the host's memory, for
  agents with 0, 100 and 10,000 events in their log, with the snapshot the host wrote
  and with the snapshot deleted (so the whole log is replayed). The host runs with
  ``JETAGENTS_IDLE_PASSIVATE_S`` short, so waiting a moment makes the agent cold again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from jetagents import Client
from jetagents._core.ids import partition_of
from jetagents.testing.server import child_preexec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_delivery import median, pct, proc_cpu_s  # noqa: E402


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (VmRSS), 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def min_max(vals: list[float]) -> list[float]:
    vals = [v for v in vals if v == v]
    return [min(vals), max(vals)] if vals else []


class HostProc:
    """One ``python -m agent_host`` process with the example agents."""

    def __init__(self, url: str, work_dir: Path, name: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = work_dir / f"{name}.log"
        full = dict(os.environ)
        full.update(
            {
                "JETAGENTS_NATS_URL": url,
                "JETAGENTS_AGENTS": '["jetagents.examples:EXAMPLE_AGENTS"]',  # a host serves none unless told
                "JETAGENTS_HOST_ID": name,
                "JETAGENTS_LOG_LEVEL": "WARNING",
                "JETAGENTS_DRAIN_GRACE_S": "3",
            }
        )
        full.update(env or {})
        self.env = full
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent_host"],
                env=full,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=child_preexec,
            )
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def cpu_s(self) -> float:
        return proc_cpu_s(self.pid)

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def kill9(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout_s: float = 10.0) -> None:
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill9()


def probe_ids(partitions: int, host_count: int, prefix: str = "probe") -> list[str]:
    """One counter id per host of a static split (``p % host_count``), so readiness is
    checked on every host, not only the first that answers."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < host_count:
        aid = f"{prefix}{i}"
        found.setdefault(partition_of("counter", aid, partitions) % host_count, aid)
        i += 1
    return [found[k] for k in sorted(found)]


async def wait_ready(
    client: Client, hosts: list[HostProc], ids: list[str], timeout_s: float = 60.0, durable: bool = True
) -> float:
    """Seconds until every probe agent answers a call and (if ``durable``) a pulled command."""
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    modes = ("at-most-once", "exactly-once") if durable else ("at-most-once",)
    for aid in ids:
        ref = client.agent("counter", aid)
        for delivery in modes:
            while True:
                for h in hosts:
                    if not h.alive():
                        raise RuntimeError(f"host {h.name} exited with {h.proc.returncode}:\n{h.tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"hosts not ready after {timeout_s}s:\n" + "\n".join(h.tail() for h in hosts))
                try:
                    await ref.request("get", delivery=delivery, timeout=2.0)
                    break
                except Exception:
                    await asyncio.sleep(0.1)
    return time.monotonic() - t0


async def closed_loop(
    client: Client, ids: list[str], inflight: int, action: str, delivery: str, timeout_s: float
) -> tuple[float, list[float], int, str]:
    """Send one command to each id, ``inflight`` at a time; (seconds, latencies, errors, first error)."""
    perf = time.perf_counter
    lat: list[float] = []
    errors = 0
    first_error = ""
    it = iter(ids)
    params = {"by": 1} if action == "increment" else {}

    async def worker() -> None:
        nonlocal errors, first_error
        for aid in it:
            t0 = perf()
            try:
                await client.agent("counter", aid).request(action, params, delivery=delivery, timeout=timeout_s)
            except Exception as exc:
                errors += 1
                first_error = first_error or repr(exc)
                continue
            lat.append(perf() - t0)

    t0 = perf()
    await asyncio.gather(*(worker() for _ in range(min(inflight, len(ids)))))
    return perf() - t0, sorted(lat), errors, first_error


# -- workload 2 -----------------------------------------------------------------------------
async def many_agents(
    client: Client,
    url: str,
    work_dir: Path,
    sizes: list[int],
    reps: int,
    *,
    inflight: int = 256,
    idle_wait_s: float = 3.0,
    settle_s: float = 1.0,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "what": (
            "N distinct counter agents touched once each with an at-most-once `get` (activation: "
            "snapshot lookup + empty log read; no event append), 256 in flight, fresh host process per "
            "repetition; RSS = VmRSS of the host process"
        ),
        "inflight": inflight,
        "runs": [],
        "summary": {},
    }
    for n in sizes:
        for rep in range(reps):
            host = HostProc(
                url,
                work_dir,
                f"many-{n}-{rep + 1}",
                {"JETAGENTS_MAX_ACTIVE_AGENTS": str(2 * n + 10_000), "JETAGENTS_IDLE_PASSIVATE_S": "3600"},
            )
            try:
                await wait_ready(client, [host], probe_ids(64, 1, f"mprobe{n}r{rep}"))
                await asyncio.sleep(settle_s)  # let start-up garbage settle before the baseline
                rss0, cpu0 = host.rss_kib(), host.cpu_s()
                ids = [f"m{n}r{rep}i{i}" for i in range(n)]
                secs, lat, errors, first_error = await closed_loop(
                    client, ids, inflight, "get", "at-most-once", timeout_s
                )
                cpu1, rss1 = host.cpu_s(), host.rss_kib()
                await asyncio.sleep(idle_wait_s)
                rss_idle = host.rss_kib()
                run = {
                    "agents": n,
                    "rep": rep + 1,
                    "seconds_until_all_answered": secs,
                    "agents_per_s": len(lat) / secs if secs > 0 else 0.0,
                    "p50_ms": pct(lat, 50) * 1000,
                    "p99_ms": pct(lat, 99) * 1000,
                    "errors": errors,
                    "first_error": first_error,
                    "host_cpu_us_per_activation": (cpu1 - cpu0) / n * 1e6,
                    "host_rss_kib_before": rss0,
                    "host_rss_kib_after": rss1,
                    "host_rss_kib_idle": rss_idle,
                    "host_kib_per_agent_active": (rss1 - rss0) / n,
                    "host_kib_per_agent_idle": (rss_idle - rss0) / n,
                }
                out["runs"].append(run)
                log(
                    f"many agents {n} rep {rep + 1}: all answered in {secs:.2f}s ({run['agents_per_s']:.0f}/s), "
                    f"{run['host_kib_per_agent_idle']:.2f} KiB/agent idle, "
                    f"{run['host_cpu_us_per_activation']:.0f} us host CPU/activation, errors {errors}"
                )
            finally:
                host.stop()
        rs = [r for r in out["runs"] if r["agents"] == n]
        out["summary"][str(n)] = {
            k: {"median": median([r[k] for r in rs]), "min_max": min_max([r[k] for r in rs])}
            for k in (
                "seconds_until_all_answered",
                "agents_per_s",
                "p50_ms",
                "p99_ms",
                "host_cpu_us_per_activation",
                "host_kib_per_agent_active",
                "host_kib_per_agent_idle",
            )
        } | {"errors": sum(r["errors"] for r in rs), "reps": len(rs)}
    return out


# -- workload 3 -----------------------------------------------------------------------------
async def build_log(client: Client, aid: str, events: int, concurrency: int = 128) -> float:
    """Give ``aid`` exactly ``events`` commits through the host (durable increments), and
    wait until the host has applied them all. Returns seconds."""
    t0 = time.perf_counter()
    ref = client.agent("counter", aid)
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            await ref.send("increment", {"by": 1}, delivery="at-least-once", timeout=60)

    await asyncio.gather(*(one() for _ in range(events)))
    deadline = time.monotonic() + 300
    while True:
        value = await ref.request("get", delivery="at-most-once", timeout=30)
        if value >= events:
            if value != events:
                raise RuntimeError(f"{aid}: built {value} events, wanted {events}")
            return time.perf_counter() - t0
        if time.monotonic() > deadline:
            raise TimeoutError(f"{aid}: only {value} of {events} events applied")
        await asyncio.sleep(0.2)


async def cold_activation(
    client: Client,
    url: str,
    work_dir: Path,
    sizes: list[int],
    reps: int,
    *,
    passivate_s: float = 0.5,
    warm_calls: int = 5,
) -> dict[str, Any]:
    host = HostProc(url, work_dir, "cold", {"JETAGENTS_IDLE_PASSIVATE_S": str(passivate_s)})
    # passivation runs on the housekeeping tick (max(0.2, passivate_s / 4) here) once an
    # agent has been idle passivate_s: two ticks of margin
    wait_s = passivate_s + 2 * max(0.2, passivate_s / 4) + 0.1
    out: dict[str, Any] = {
        "what": (
            "first at-most-once `get` to an agent that is not in memory (client-side latency), minus the "
            "median of the warm `get`s right after it = activation; logs built through the host "
            "(durable increments; the host snapshots every 100 commits and on passivation); 'no snapshot' "
            "deletes the agent's snapshot from KV first so the whole log is replayed"
        ),
        "passivate_after_s": passivate_s,
        "wait_before_cold_call_s": wait_s,
        "build_s": {},
        "runs": [],
        "summary": [],
    }
    try:
        await wait_ready(client, [host], probe_ids(64, 1, "cprobe"))
        js = client.nc.jetstream()
        kv = await js.key_value("agt_snap")
        for n in sizes:
            if n:
                out["build_s"][str(n)] = await build_log(client, f"cold{n}", n)
                log(f"cold activation: built a log of {n} events in {out['build_s'][str(n)]:.1f}s")
        for variant in ("snapshot", "no snapshot"):
            for n in sizes:
                if n == 0 and variant == "snapshot":
                    continue  # an agent without events has no snapshot
                for rep in range(reps):
                    aid = f"cold{n}" if n else f"empty{rep}{variant.replace(' ', '')}"
                    await asyncio.sleep(wait_s)  # idle long enough to be passivated
                    key = f"counter.{aid}"
                    snap_n = None
                    if variant == "no snapshot":
                        with contextlib.suppress(Exception):
                            await kv.purge(key)
                    else:
                        with contextlib.suppress(Exception):
                            entry = await kv.get(key)
                            snap_n = orjson.loads(entry.value)["n"] if entry and entry.value else None
                    ref = client.agent("counter", aid)
                    t0 = time.perf_counter()
                    value = await ref.request("get", delivery="at-most-once", timeout=60)
                    cold = time.perf_counter() - t0
                    warm = []
                    for _ in range(warm_calls):
                        t1 = time.perf_counter()
                        await ref.request("get", delivery="at-most-once", timeout=60)
                        warm.append(time.perf_counter() - t1)
                    run = {
                        "events": n,
                        "variant": variant,
                        "rep": rep + 1,
                        "snapshot_covers_commits": snap_n,
                        "value": value,
                        "cold_ms": cold * 1000,
                        "warm_ms": median(warm) * 1000,
                        "activation_ms": (cold - median(warm)) * 1000,
                    }
                    if value != n:
                        run["error"] = f"value {value} != {n}"
                    out["runs"].append(run)
                    log(
                        f"cold activation {n:>6} events, {variant:<11} rep {rep + 1}: "
                        f"{run['cold_ms']:.2f} ms cold, {run['warm_ms']:.2f} ms warm (snapshot n={snap_n})"
                    )
                rs = [r for r in out["runs"] if r["events"] == n and r["variant"] == variant]
                out["summary"].append(
                    {"events": n, "variant": variant, "reps": len(rs)}
                    | {
                        k: {"median": median([r[k] for r in rs]), "min_max": min_max([r[k] for r in rs])}
                        for k in ("cold_ms", "warm_ms", "activation_ms")
                    }
                )
    finally:
        host.stop()
    return out
