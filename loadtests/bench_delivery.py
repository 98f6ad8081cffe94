"""Delivery-mode benchmark: jetagents against the bare nats-py floor, in one run.

    python loadtests/bench_delivery.py [--quick] [--reps N] [--json out.json] [--smoke]

What it does (everything on this machine, nothing shared with other runs):

1. starts its own nats-server (JetStream, file storage, ``sync_interval: always``) in a
   temporary directory;
2. starts the jetagents host as a separate process (``python -m agent_host``, example
   agents, ``JETAGENTS_LOG_LEVEL=WARNING``) and waits until it answers durable commands;
3. starts the floor responder (``loadtests/_floor_responder.py``) as a separate process:
   plain nats-py doing the minimum NATS work of each delivery mode;
4. activates the agents (one exactly-once ``increment`` each) so activation is never
   measured;
5. for each repetition, each delivery mode (at-most-once, at-least-once, exactly-once)
   and each in-flight level (1 = sequential, 256 = 256 closed-loop workers, one per
   counter agent) measures jetagents (``client.agent("counter", id).request("increment",
   {"by": 1}, delivery=mode)``) and the floor (the same message pattern in plain nats-py)
   back to back -- alternating which goes first -- each for a warm-up period followed by a
   measured window: commands/s = replies received inside the window / window length,
   p50/p99 = latency of those commands (send to reply, in the client process), plus the
   CPU time each process used inside the window (from /proc);
6. prints the machine, a throughput/latency table (medians over repetitions), a CPU table
   and, optionally, writes everything (every repetition) as JSON.

All subprocesses (nats-server, host, responder) are stopped on exit, on Ctrl-C, on
SIGTERM and on errors; they are also started with PR_SET_PDEATHSIG so they die with
this process if it is killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nats
import orjson
from nats.nuid import NUID

from jetagents import Client, ClientSettings, NatsServer, __version__
from jetagents._core.ids import partition_of
from jetagents.testing.server import child_preexec, find_nats_server

HERE = Path(__file__).resolve().parent
MODES = ("at-most-once", "at-least-once", "exactly-once")
FLOOR_REPLY_HEADER = "Floor-Reply-To"
TARGET_MODE, TARGET_INFLIGHT, TARGET_RATIO = "exactly-once", 256, 0.6
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- small helpers --------------------------------------------------------------------------
def pct(sorted_vals: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, math.ceil(q / 100.0 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def proc_cpu_s(pid: int) -> float:
    """utime+stime of a process in seconds (Linux /proc); nan if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        fields = data[data.rindex(b")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return float("nan")


def self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def machine_cpu_s() -> tuple[float, float, float]:
    """(busy, iowait, steal) CPU seconds of the whole machine since boot (/proc/stat)."""
    try:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return (float("nan"),) * 3
    user, nice, system, _idle, iowait, irq, softirq, steal = vals
    return (user + nice + system + irq + softirq) / CLK_TCK, iowait / CLK_TCK, steal / CLK_TCK


def snapshot(pids: dict[str, int]) -> dict[str, float]:
    snap = {name: proc_cpu_s(pid) for name, pid in pids.items()}
    snap["client"] = self_cpu_s()
    snap["_busy"], snap["_iowait"], snap["_steal"] = machine_cpu_s()
    return snap


def cpu_delta(a: dict[str, float], b: dict[str, float], scale: float = 1.0) -> dict[str, float]:
    """CPU seconds per process between two snapshots, plus ``other`` (busy CPU of every
    process not started by this run: other users of a shared machine), ``iowait`` and
    ``steal`` of the whole machine."""
    d = {k: (b[k] - a[k]) * scale for k in a if not k.startswith("_")}
    ours = sum(v for v in d.values() if v == v)
    d["other"] = max(0.0, (b["_busy"] - a["_busy"]) * scale - ours)
    d["iowait"] = (b["_iowait"] - a["_iowait"]) * scale
    d["steal"] = (b["_steal"] - a["_steal"]) * scale
    return d


def median(vals: list[float]) -> float:
    vals = [v for v in vals if v == v]  # drop nan
    return statistics.median(vals) if vals else float("nan")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# jetagents; the floor (one consumer for every durable command); the partitioned floor (the
# same over one consumer per partition, as a jetagents host pulls: durable modes only)
SYSTEMS = ("jetagents", "floor", "floor-p")


# -- results --------------------------------------------------------------------------------
@dataclass
class Run:
    """One measured window of one system in one cell."""

    system: str  # one of SYSTEMS
    mode: str
    inflight: int
    rep: int
    commands: int
    seconds: float
    cmds_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_s: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds in the window
    first_error: str = ""
    p999_ms: float = float("nan")


# -- the load generator ---------------------------------------------------------------------
Sender = Callable[[int], Awaitable[Any]]


async def run_cell(
    send: Sender,
    inflight: int,
    *,
    warm_s: float,
    measure_s: float,
    count: int | None,
    pids: dict[str, int],
    warm_replies: int = 2,
    max_warm_s: float = 30.0,
    min_waves: int = 10,
) -> tuple[int, float, list[float], int, dict[str, float], str]:
    """Closed loop: ``inflight`` workers, worker i always talks to agent i.

    Duration mode (count is None): the workers run continuously; the measured window of
    measure_s seconds opens once warm_s has passed *and* every worker has had
    ``warm_replies`` replies (so a slow first wave, e.g. 256 durable commands on a loaded
    machine, is never inside the window, nor the first few waves, which the floors answer
    faster than later ones, and a fast cell does not wait for a fixed warm-up
    it does not need), or after ``max_warm_s`` whatever happened. The window lasts at least
    ``min_waves`` times the median latency of the warm-up: with many commands in flight a
    closed loop answers in waves (256 durable commands finish within a few ms of each other,
    every ~180 ms), and a window only 3 waves long counts 2 or 3 of them (+-30 %). Only
    replies that arrive inside the window count (no ramp-up or tail in it). Count mode (smoke): warm-up of a
    few commands, then exactly ``count`` measured commands.
    Returns (commands, seconds, latencies, errors, cpu seconds per process, first error).
    """
    loop = asyncio.get_running_loop()
    perf = time.perf_counter
    lat: list[float] = []
    errors = 0
    first_error = ""

    if count is not None:
        budget = [0]

        async def counted(i: int, record: bool) -> None:
            nonlocal errors, first_error
            while budget[0] > 0:
                budget[0] -= 1
                t0 = perf()
                try:
                    await send(i)
                except Exception as exc:
                    errors += 1
                    first_error = first_error or repr(exc)
                    continue
                if record:
                    lat.append(perf() - t0)

        budget[0] = max(inflight, count // 4)
        await asyncio.gather(*(counted(i, False) for i in range(inflight)))
        cpu0 = snapshot(pids)
        budget[0] = count
        t_start = perf()
        await asyncio.gather(*(counted(i, True) for i in range(inflight)))
        seconds = perf() - t_start
        return len(lat), seconds, sorted(lat), errors, cpu_delta(cpu0, snapshot(pids)), first_error

    inf = float("inf")
    window_start = window_end = inf  # set by open_window
    cpu: dict[str, dict[str, float]] = {}
    replies = [0] * inflight
    warm_lat: list[float] = []
    unwarmed = [inflight if warm_replies > 0 else 0]
    warmed = asyncio.Event()
    if not unwarmed[0]:
        warmed.set()

    async def worker(i: int) -> None:
        nonlocal errors, first_error
        while True:
            t0 = perf()
            if t0 >= window_end:
                return
            try:
                await send(i)
            except Exception as exc:
                t1 = perf()
                if window_start <= t1 <= window_end:
                    errors += 1
                    first_error = first_error or repr(exc)
                await asyncio.sleep(0.01)  # do not spin on a dead system
                continue
            t1 = perf()
            if window_start <= t1 <= window_end:
                lat.append(t1 - t0)
            elif t1 < window_start:
                warm_lat.append(t1 - t0)
                replies[i] += 1
                if replies[i] == warm_replies:
                    unwarmed[0] -= 1
                    if not unwarmed[0]:
                        warmed.set()

    async def open_window() -> None:
        nonlocal window_start, window_end
        t_begin = perf()
        await asyncio.sleep(warm_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(warmed.wait(), max(0.0, t_begin + max_warm_s - perf()))
        window = max(measure_s, min_waves * median(warm_lat)) if warm_lat else measure_s
        cpu["start"] = snapshot(pids) | {"_t": perf()}
        window_start = cpu["start"]["_t"]
        window_end = window_start + window
        await asyncio.sleep(max(0.0, window_end - perf()))
        cpu["end"] = snapshot(pids) | {"_t": perf()}

    opener = loop.create_task(open_window())
    await asyncio.gather(*(worker(i) for i in range(inflight)))
    await opener
    # the closing sample may wake a little late on a busy loop: scale to the real interval
    window = window_end - window_start
    real = cpu["end"]["_t"] - cpu["start"]["_t"]
    cpu_used = cpu_delta(cpu["start"], cpu["end"], window / real if real > 0 else 1.0)
    return len(lat), window, sorted(lat), errors, cpu_used, first_error


# -- the two systems ------------------------------------------------------------------------
BODY = orjson.dumps({"action": "increment", "params": {"by": 1}})


class FloorClient:
    """The client half of the floor: plain nats-py, same message pattern as jetagents."""

    def __init__(self, nc: Any, timeout: float, partitions: int = 64) -> None:
        self.nc = nc
        self.timeout = timeout
        self.partitions = partitions  # of the partitioned floor (FLOOR.pcmd, one consumer each)
        self.nuid = NUID()
        self.tokens = itertools.count(1)
        self.pending: dict[str, asyncio.Future[Any]] = {}
        self.prefix = ""

    @classmethod
    async def connect(cls, url: str, timeout: float, partitions: int = 64) -> FloorClient:
        nc = await nats.connect(url, name="floor-client", max_reconnect_attempts=-1)
        self = cls(nc, timeout, partitions)
        self.prefix = nc.new_inbox()
        await nc.subscribe(f"{self.prefix}.*", cb=self._on_reply)
        return self

    async def _on_reply(self, msg: Any) -> None:
        fut = self.pending.get(msg.subject.rpartition(".")[2])
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def call(self, agent: str) -> Any:
        msg = await self.nc.request(f"FLOOR.call.{agent}", BODY, timeout=self.timeout)
        return orjson.loads(msg.data)["result"]

    async def durable(self, agent: str, exactly_once: bool, subject_prefix: str = "FLOOR.cmd.") -> Any:
        token = str(next(self.tokens))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[token] = fut
        headers = {FLOOR_REPLY_HEADER: f"{self.prefix}.{token}"}
        kind = "alo"
        if exactly_once:
            headers["Nats-Msg-Id"] = self.nuid.next().decode()
            kind = "eo"
        try:
            ack = await self.nc.request(f"{subject_prefix}{kind}.{agent}", BODY, timeout=self.timeout, headers=headers)
            puback = orjson.loads(ack.data)
            if "error" in puback:
                raise RuntimeError(f"publish refused: {puback['error']}")
            async with asyncio.timeout(self.timeout):
                msg = await fut
            return orjson.loads(msg.data)["result"]
        finally:
            self.pending.pop(token, None)

    def sender(self, mode: str, agents: list[str], partitioned: bool = False) -> Sender:
        if mode == "at-most-once":
            return lambda i: self.call(agents[i])
        eo = mode == "exactly-once"
        if partitioned:  # the partition of the agent's jetagents counter: the same spread
            prefixes = [f"FLOOR.pcmd.{partition_of('counter', a, self.partitions)}." for a in agents]
            return lambda i: self.durable(agents[i], eo, prefixes[i])
        return lambda i: self.durable(agents[i], eo)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.nc.close()


def jetagents_sender(client: Client, mode: str, agents: list[str], timeout: float, action: str) -> Sender:
    refs = [client.agent("counter", a) for a in agents]
    params = {"by": 1} if action == "increment" else {}
    return lambda i: refs[i].request(action, params, delivery=mode, timeout=timeout)


def host_partitions(args: argparse.Namespace) -> int:
    from jetagents import HostSettings

    return int(args.partitions or HostSettings.model_fields["partitions"].default)


# -- processes ------------------------------------------------------------------------------
class Processes:
    """Everything this run started; ``stop_all`` ends them (each by its own pid)."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.server: NatsServer | None = None
        self.host: subprocess.Popen[bytes] | None = None
        self.responder: subprocess.Popen[bytes] | None = None

    def start_server(self) -> NatsServer:
        self.server = NatsServer(data_dir=self.work_dir / "nats", name="bench")
        self.server.start()
        return self.server

    def _spawn(self, argv: list[str], env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
        # Popen from the main thread: PR_SET_PDEATHSIG is tied to the forking thread
        with open(self.work_dir / log_name, "ab") as out:
            return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=child_preexec)

    def start_host(self, url: str, args: argparse.Namespace) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update(
            {
                "JETAGENTS_NATS_URL": url,
                "JETAGENTS_AGENTS": '["jetagents.examples:EXAMPLE_AGENTS"]',
                "JETAGENTS_HOST_ID": "bench-host",
                "JETAGENTS_LOG_LEVEL": "WARNING",
                "JETAGENTS_LOOP": args.loop,
                "JETAGENTS_DRAIN_GRACE_S": "3",
            }
        )
        if args.partitions:
            env["JETAGENTS_PARTITIONS"] = str(args.partitions)
        for kv in args.host_env:
            k, _, v = kv.partition("=")
            env[k] = v
        self.host = self._spawn([sys.executable, "-m", "agent_host"], env, "host.log")
        return self.host

    def start_responder(self, url: str, args: argparse.Namespace) -> subprocess.Popen[bytes]:
        ready = self.work_dir / "floor.ready"
        argv = [
            sys.executable,
            str(HERE / "_floor_responder.py"),
            "--url",
            url,
            "--ready-file",
            str(ready),
            "--loop",
            args.loop,
            "--partitions",
            str(host_partitions(args)),
        ]
        self.responder = self._spawn(argv, dict(os.environ), "floor.log")
        return self.responder

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        self._stop(self.responder, 5)
        self._stop(self.host, 10)
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.stop()

    def tail(self, log_name: str, n: int = 30) -> str:
        try:
            lines = (self.work_dir / log_name).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


# -- the benchmark --------------------------------------------------------------------------
async def wait_host_ready(client: Client, procs: Processes, timeout_s: float = 60.0) -> None:
    """Ready when the host answers a core call AND a durable (pulled) command."""
    assert procs.host is not None
    deadline = time.monotonic() + timeout_s
    probe = client.agent("counter", "bench-probe")
    for delivery in ("at-most-once", "exactly-once"):
        while True:
            if procs.host.poll() is not None:
                raise RuntimeError(f"host exited with {procs.host.returncode}:\n{procs.tail('host.log')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"host not ready after {timeout_s}s:\n{procs.tail('host.log')}")
            try:
                await probe.request("get", delivery=delivery, timeout=2.0)
                break
            except Exception:
                await asyncio.sleep(0.1)


async def wait_file(path: Path, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout_s}s")
        await asyncio.sleep(0.05)


async def activate(send: Sender, n: int, concurrency: int = 64) -> int:
    sem = asyncio.Semaphore(concurrency)
    failures = 0

    async def one(i: int) -> None:
        nonlocal failures
        async with sem:
            try:
                await send(i)
            except Exception:
                failures += 1

    await asyncio.gather(*(one(i) for i in range(n)))
    return failures


async def bench(args: argparse.Namespace, procs: Processes, url: str) -> list[Run]:
    assert procs.host is not None and procs.responder is not None and procs.server is not None
    assert procs.server.proc is not None
    client = await Client.connect(
        settings=ClientSettings(nats_url=url, request_timeout_s=args.timeout, connect_timeout_s=10)
    )
    floor = await FloorClient.connect(url, args.timeout, host_partitions(args))
    runs: list[Run] = []
    try:
        t0 = time.monotonic()
        await wait_host_ready(client, procs)
        await wait_file(procs.work_dir / "floor.ready", procs.responder, "floor responder")
        log(
            f"host (pid {procs.host.pid}) and floor responder (pid {procs.responder.pid}) ready "
            f"in {time.monotonic() - t0:.1f}s; nats-server pid {procs.server.proc.pid}"
        )

        max_inflight = max(args.inflight)
        agents = {n: ([f"seq{n}"] if n == 1 else [f"b{i}" for i in range(n)]) for n in args.inflight}
        # activation: one exactly-once command to every agent used (and one floor command
        # per agent and durable subject so the floor's streams and maps are warm too)
        t0 = time.monotonic()
        failures = 0
        for n, names in agents.items():
            failures += await activate(jetagents_sender(client, "exactly-once", names, args.timeout, "increment"), n)
            for mode in MODES:
                failures += await activate(floor.sender(mode, names), n)
                if mode != "at-most-once":
                    failures += await activate(floor.sender(mode, names, partitioned=True), n)
        if failures:
            raise RuntimeError(f"{failures} activation commands failed:\n{procs.tail('host.log')}")
        log(
            f"activated {sum(len(v) for v in agents.values())} agents in {time.monotonic() - t0:.1f}s "
            f"(max in flight {max_inflight})"
        )

        # every process of this run is sampled in every window (the idle one costs ~0)
        pids = {"nats-server": procs.server.proc.pid, "host": procs.host.pid, "responder": procs.responder.pid}
        cells = [(mode, n) for mode in args.modes for n in args.inflight]

        def systems(mode: str, n: int) -> list[str]:
            # the partitioned floor is a durable pattern (core request/reply has no consumers),
            # measured where many partitions are busy at once: the most in flight
            return [x for x in args.systems if x != "floor-p" or (mode != "at-most-once" and n == max(args.inflight))]

        total = sum(len(systems(mode, n)) for mode, n in cells) * args.reps
        done = 0
        for rep in range(args.reps):
            for ci, (mode, n) in enumerate(cells):
                order = systems(mode, n)
                k = (rep + ci) % len(order)  # rotate who goes first
                order = order[k:] + order[:k]
                for system in order:
                    if procs.host.poll() is not None:
                        raise RuntimeError(f"host died:\n{procs.tail('host.log')}")
                    if procs.responder.poll() is not None:
                        raise RuntimeError(f"floor responder died:\n{procs.tail('floor.log')}")
                    if system == "jetagents":
                        send = jetagents_sender(client, mode, agents[n], args.timeout, args.action)
                    else:
                        send = floor.sender(mode, agents[n], partitioned=system == "floor-p")
                    count = args.count if args.count else None
                    ncmd, secs, lat, errors, cpu, first_error = await run_cell(
                        send,
                        n,
                        warm_s=args.warmup,
                        measure_s=args.duration,
                        count=count,
                        pids=pids,
                        min_waves=args.min_waves,
                        warm_replies=args.warm_replies,
                    )
                    run = Run(
                        system=system,
                        mode=mode,
                        inflight=n,
                        rep=rep + 1,
                        commands=ncmd,
                        seconds=round(secs, 4),
                        cmds_per_s=ncmd / secs if secs > 0 else 0.0,
                        p50_ms=pct(lat, 50) * 1000,
                        p99_ms=pct(lat, 99) * 1000,
                        p999_ms=pct(lat, 99.9) * 1000,
                        errors=errors,
                        cpu_s={k: round(v, 4) for k, v in cpu.items()},
                        first_error=first_error,
                    )
                    runs.append(run)
                    done += 1
                    log(
                        f"[{done}/{total}] rep {rep + 1} {mode:<13} x{n:<4} {system:<9} "
                        f"{run.cmds_per_s:9.0f} cmds/s  p50 {run.p50_ms:7.2f} ms  p99 {run.p99_ms:7.2f} ms"
                        + (f"  errors {errors} ({first_error})" if errors else "")
                    )
    finally:
        await client.close()
        await floor.close()
    return runs


# -- reporting ------------------------------------------------------------------------------
def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    try:
        server_bin = find_nats_server()
        out = subprocess.run([server_bin, "--version"], capture_output=True, text=True, timeout=10)
        server_version = (out.stdout or out.stderr).strip()
    except Exception as exc:
        server_version = f"unknown ({exc})"
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:
        nproc = str(len(os.sched_getaffinity(0)))
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "code": _code_version(),
        "nproc": nproc,
        "cpu": cpu_model,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "nats_server": server_version,
        "nats_py": _dist_version("nats-py"),
        "jetagents": __version__,
        "loop": args.loop,
        "loadavg_at_start": os.getloadavg(),
    }


def _code_version() -> str:
    """Commit of the library being measured, and whether shared/ or services/ differ from it."""
    repo = HERE.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "shared", "services"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except Exception:
        return "unknown"
    return (head or "unknown") + (" + uncommitted changes in shared/ or services/" if dirty else "")


def _dist_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return "unknown"


def summarize(runs: list[Run], args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for mode in args.modes:
        for n in args.inflight:
            cell: dict[str, Any] = {"mode": mode, "inflight": n}
            for system in SYSTEMS:
                rs = [r for r in runs if r.system == system and r.mode == mode and r.inflight == n]
                if not rs:
                    continue
                rates = [r.cmds_per_s for r in rs]
                worker = "host" if system == "jetagents" else "responder"
                ours = ("client", worker, "nats-server")
                cpu_per_cmd: dict[str, float] = {}
                for proc in ours:
                    cpu_per_cmd[proc] = median(
                        [r.cpu_s.get(proc, float("nan")) / r.commands * 1e6 for r in rs if r.commands]
                    )

                def cores(r: Run, keys: tuple[str, ...]) -> float:
                    return sum(r.cpu_s.get(k, 0.0) for k in keys) / r.seconds if r.seconds else float("nan")

                cell[system] = {
                    "cmds_per_s_median": median(rates),
                    "cmds_per_s_min": min(rates),
                    "cmds_per_s_max": max(rates),
                    "p50_ms_median": median([r.p50_ms for r in rs]),
                    "p99_ms_median": median([r.p99_ms for r in rs]),
                    "p999_ms_median": median([r.p999_ms for r in rs]),
                    "p50_ms_min_max": [min(r.p50_ms for r in rs), max(r.p50_ms for r in rs)],
                    "p99_ms_min_max": [min(r.p99_ms for r in rs), max(r.p99_ms for r in rs)],
                    "p999_ms_min_max": [min(r.p999_ms for r in rs), max(r.p999_ms for r in rs)],
                    "errors": sum(r.errors for r in rs),
                    "cpu_us_per_cmd_median": cpu_per_cmd,
                    "cpu_cores_median": median([cores(r, ours) for r in rs]),
                    "other_cores_median": median([cores(r, ("other",)) for r in rs]),
                    "other_cores_max": max(cores(r, ("other",)) for r in rs),
                    "iowait_cores_median": median([cores(r, ("iowait",)) for r in rs]),
                    "steal_cores_median": median([cores(r, ("steal",)) for r in rs]),
                }
            if "jetagents" in cell and "floor" in cell:
                ja, fl = cell["jetagents"], cell["floor"]
                cell["ratio"] = (
                    ja["cmds_per_s_median"] / fl["cmds_per_s_median"] if fl["cmds_per_s_median"] else float("nan")
                )
                paired = []
                for rep in range(1, args.reps + 1):
                    a = [
                        r
                        for r in runs
                        if r.system == "jetagents" and r.mode == mode and r.inflight == n and r.rep == rep
                    ]
                    b = [r for r in runs if r.system == "floor" and r.mode == mode and r.inflight == n and r.rep == rep]
                    if a and b and b[0].cmds_per_s:
                        paired.append(a[0].cmds_per_s / b[0].cmds_per_s)
                cell["ratio_paired_median"] = median(paired)
                cell["ratio_paired_min_max"] = [min(paired), max(paired)] if paired else []
            if "jetagents" in cell and "floor-p" in cell:
                fp = cell["floor-p"]["cmds_per_s_median"]
                cell["ratio_partitioned"] = cell["jetagents"]["cmds_per_s_median"] / fp if fp else float("nan")
            out.append(cell)
    return out


def fmt_rate(v: float) -> str:
    return f"{v:,.0f}"


def print_report(machine: dict[str, Any], summary: list[dict[str, Any]], args: argparse.Namespace) -> None:
    p = print
    p()
    p(
        f"machine: nproc={machine['nproc']}  cpu={machine['cpu'] or '?'}  python={machine['python']}  "
        f"{machine['nats_server']}  nats-py {machine['nats_py']}  jetagents {machine['jetagents']}  "
        f"loop={machine['loop']}"
    )
    p(f"code: {machine['code']}")
    p(
        f"run: reps={args.reps}  "
        + (f"count={args.count}/cell" if args.count else f"window={args.duration:g}s after {args.warmup:g}s warm-up")
        + f"  action={args.action}  partitions={args.partitions or 'default (64)'}  "
        f"loadavg at start={' '.join(f'{x:.2f}' for x in machine['loadavg_at_start'])}"
    )
    p("cmds/s: median over reps (min-max); ratio = median jetagents / median floor; latency ms: median over reps")
    p()
    hdr = (
        f"{'mode':<14}{'in-flight':>9} | {'jetagents cmds/s (min-max)':>28} | {'floor cmds/s (min-max)':>28} | "
        f"{'ratio':>5} | {'jetagents p50/p99 ms':>20} | {'floor p50/p99 ms':>17}"
    )
    p(hdr)
    p("-" * len(hdr))
    for c in summary:
        ja, fl = c.get("jetagents"), c.get("floor")

        def rate(x: dict[str, Any] | None) -> str:
            if not x:
                return "-"
            return (
                f"{fmt_rate(x['cmds_per_s_median'])} ({fmt_rate(x['cmds_per_s_min'])}-{fmt_rate(x['cmds_per_s_max'])})"
            )

        def lat(x: dict[str, Any] | None) -> str:
            return f"{x['p50_ms_median']:.2f} / {x['p99_ms_median']:.2f}" if x else "-"

        ratio = f"{c['ratio']:.2f}" if "ratio" in c else "-"
        p(
            f"{c['mode']:<14}{c['inflight']:>9} | {rate(ja):>28} | {rate(fl):>28} | {ratio:>5} | "
            f"{lat(ja):>20} | {lat(fl):>17}"
        )
    p()
    p(
        "CPU per command (us, median over reps) inside the window; (cores) = CPU s/s of these three processes; "
        "other = busy cores of processes NOT of this run (max over reps): a noisy neighbour if > ~0.1"
    )
    hdr2 = (
        f"{'mode':<14}{'in-flight':>9} | {'jetagents: client   host server =  total (cores) other':>55} | "
        f"{'floor: client  resp. server =  total (cores) other':>51}"
    )
    p(hdr2)
    p("-" * len(hdr2))
    for c in summary:

        def cpu(x: dict[str, Any] | None, worker: str) -> str:
            if not x:
                return "-"
            d = x["cpu_us_per_cmd_median"]
            parts = [d.get("client", float("nan")), d.get(worker, float("nan")), d.get("nats-server", float("nan"))]
            return (
                f"{parts[0]:6.0f} {parts[1]:6.0f} {parts[2]:6.0f} = {sum(parts):6.0f} "
                f"({x['cpu_cores_median']:.2f}) {x['other_cores_max']:5.2f}"
            )

        p(
            f"{c['mode']:<14}{c['inflight']:>9} | {cpu(c.get('jetagents'), 'host'):>55} | "
            f"{cpu(c.get('floor'), 'responder'):>51}"
        )
    errs = [(c["mode"], c["inflight"], s, c[s]["errors"]) for c in summary for s in ("jetagents", "floor") if s in c]
    errs = [e for e in errs if e[3]]
    if errs:
        p()
        for mode, n, s, e in errs:
            p(f"ERRORS: {s} {mode} x{n}: {e} failed commands (not counted)")
    target = next((c for c in summary if c["mode"] == TARGET_MODE and c["inflight"] == TARGET_INFLIGHT), None)
    if target and "ratio" in target:
        ok = target["ratio"] >= TARGET_RATIO
        p()
        p(
            f"target: {TARGET_MODE} at {TARGET_INFLIGHT} in flight >= {TARGET_RATIO}x floor: "
            f"{target['ratio']:.2f}x (paired per-rep median {target['ratio_paired_median']:.2f}x) -> "
            f"{'MET' if ok else 'NOT MET'}"
        )


def default_json(o: Any) -> Any:
    return str(o)


# -- entry point ----------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="jetagents delivery modes vs the bare nats-py floor (see loadtests/README.md)"
    )
    p.add_argument("--quick", action="store_true", help="short windows (about a minute in all)")
    p.add_argument("--smoke", action="store_true", help="a few dozen commands per cell, 1 rep, 16 in flight")
    p.add_argument("--reps", type=int, default=None, help="repetitions of every measurement (default 3; smoke 1)")
    p.add_argument("--json", type=Path, default=None, help="write every run and the summary here")
    p.add_argument("--duration", type=float, default=None, help="measured window per run, s (default 5; quick 1)")
    p.add_argument("--warmup", type=float, default=None, help="warm-up before each window, s (default 1; quick 0.3)")
    p.add_argument(
        "--warm-replies",
        type=int,
        default=2,
        help="a window opens once every worker has had this many replies (and --warmup has passed)",
    )
    p.add_argument(
        "--min-waves",
        type=int,
        default=10,
        help="a window lasts at least this many median latencies of the warm-up (default 10)",
    )
    p.add_argument("--count", type=int, default=None, help="measure this many commands per run instead of a window")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument(
        "--systems",
        nargs="+",
        choices=list(SYSTEMS),
        default=list(SYSTEMS),
        help="measure only these (e.g. to attach a profiler to one of them)",
    )
    p.add_argument("--inflight", nargs="+", type=int, default=None, help="in-flight levels (default 1 256)")
    p.add_argument(
        "--action",
        choices=["increment", "get"],
        default="increment",
        help="jetagents action: increment appends an event (all modes), get is read-only",
    )
    p.add_argument("--partitions", type=int, default=None, help="JETAGENTS_PARTITIONS for the host (default 64)")
    p.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="event loop of the host, the responder and this client",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="per-command timeout, s")
    p.add_argument("--host-env", action="append", default=[], metavar="K=V", help="extra env for the host process")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (server data, logs)")
    p.add_argument(
        "--check-target",
        action="store_true",
        help=f"exit 3 if {TARGET_MODE} at {TARGET_INFLIGHT} in flight is below {TARGET_RATIO}x its floor",
    )
    a = p.parse_args(argv)
    if a.smoke:
        a.reps = a.reps or 1
        a.count = a.count or 48
        a.inflight = a.inflight or [1, 16]
    a.reps = a.reps or 3
    a.inflight = a.inflight or [1, 256]
    a.duration = a.duration if a.duration is not None else (1.0 if a.quick else 5.0)
    a.warmup = a.warmup if a.warmup is not None else (0.3 if a.quick else 1.0)
    if any(n < 1 for n in a.inflight) or a.reps < 1:
        p.error("--inflight and --reps must be >= 1")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info(args)
    work_dir = Path(tempfile.mkdtemp(prefix="bench-delivery-"))
    procs = Processes(work_dir)

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, on_term) for s in (signal.SIGTERM, signal.SIGHUP)}
    # Ctrl-C must stop the run even when SIGINT was inherited as ignored (background jobs)
    old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    runs: list[Run] = []
    rc = 0
    failed = False
    try:
        log(f"work dir {work_dir}")
        server = procs.start_server()
        procs.start_host(server.url, args)
        procs.start_responder(server.url, args)
        if args.loop == "uvloop":
            import uvloop

            runs = uvloop.run(bench(args, procs, server.url))
        else:
            runs = asyncio.run(bench(args, procs, server.url))
    except KeyboardInterrupt:
        log("interrupted")
        rc = 130
    except SystemExit as exc:
        log(f"terminated ({exc.code})")
        rc = int(exc.code) if isinstance(exc.code, int) else 1
    except Exception as exc:
        log(f"FAILED: {type(exc).__name__}: {exc}")
        rc = 1
        failed = True
    finally:
        log("stopping responder, host, nats-server")
        procs.stop_all()
        for s, h in old.items():
            signal.signal(s, h)
        if args.keep or failed:
            log(f"kept {work_dir} (logs: host.log, floor.log, nats/bench.log)")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    if rc:
        return rc
    summary = summarize(runs, args)
    print_report(machine, summary, args)
    elapsed = time.monotonic() - started
    print(f"\ntotal wall time {elapsed:.0f}s")
    if args.json:
        payload = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": machine,
            "summary": summary,
            "runs": [asdict(r) for r in runs],
            "wall_s": elapsed,
        }
        args.json.write_text(json.dumps(_nan_to_none(payload), indent=2, default=default_json))
        log(f"wrote {args.json}")
    n_failed = sum(r.errors for r in runs)
    if args.smoke and (n_failed or any(r.commands == 0 for r in runs)):
        print(f"SMOKE FAILED: {n_failed} failed commands", file=sys.stderr)
        return 2
    if args.check_target:
        target = next((c for c in summary if c["mode"] == TARGET_MODE and c["inflight"] == TARGET_INFLIGHT), None)
        if target is None or not target.get("ratio", 0) >= TARGET_RATIO:
            return 3
    return 0


def _nan_to_none(o: Any) -> Any:
    if isinstance(o, float) and o != o:
        return None
    if isinstance(o, dict):
        return {k: _nan_to_none(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_nan_to_none(v) for v in o]
    return o


if __name__ == "__main__":
    sys.exit(main())
