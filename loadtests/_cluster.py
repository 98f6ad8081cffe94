"""Workloads 5 (scaling over 1, 2, 3 hosts) and 6 (failover after kill -9 of a host), on a
3-node JetStream cluster on loopback (``jetagents._server.NatsCluster``), streams and
buckets R3.

How partitions are owned is the one thing that will change when the cluster ring lands,
so it is isolated in ``Ownership`` below. Today's implementation, ``StaticSplit``, is what
exists: host ``i`` of ``n`` owns partitions ``p % n == i`` (``JETAGENTS_HOST_INDEX`` /
``JETAGENTS_HOST_COUNT``), nobody takes over a dead host's partitions, and "failover" can
only mean a supervisor starting a replacement with the same index. A ring-based
``Ownership`` (hosts started without an index; ``recover`` does nothing because the
survivors take the partitions over; ``owner_of`` read from the ring in KV) drops in
without touching the measurement code.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from jetagents import Client, ClientSettings
from jetagents._ids import partition_of
from jetagents._server import NatsCluster

from _workloads import HostProc, log, min_max, probe_ids, wait_ready  # isort: skip
from bench_delivery import jetagents_sender, median, run_cell  # isort: skip

PARTITIONS = 64


class StaticSplit:
    """Ownership as it exists today: a static split of partitions by host index."""

    label = "static split (JETAGENTS_HOST_INDEX / JETAGENTS_HOST_COUNT); no ring, no takeover"
    recovery = (
        "a replacement host with the same JETAGENTS_HOST_INDEX is started right after the kill (what a "
        "supervisor such as systemd or Kubernetes would do); the surviving hosts do NOT take over"
    )

    def __init__(self, url: str, work_dir: Path, replicas: int, name: str, env: dict[str, str] | None = None) -> None:
        self.name = name  # host ids and log files: <name>-n<count>-i<index>-g<generation>
        self.url = url
        self.work_dir = work_dir
        self.replicas = replicas
        self.env = env or {}
        self.hosts: list[HostProc] = []
        self.count = 0
        self.generation = 0

    def _host(self, index: int) -> HostProc:
        self.generation += 1
        env = {
            "JETAGENTS_REPLICAS": str(self.replicas),
            "JETAGENTS_PARTITIONS": str(PARTITIONS),
            "JETAGENTS_HOST_INDEX": str(index),
            "JETAGENTS_HOST_COUNT": str(self.count),
        } | self.env
        return HostProc(self.url, self.work_dir, f"{self.name}-n{self.count}-i{index}-g{self.generation}", env)

    def start(self, count: int) -> list[HostProc]:
        self.count = count
        self.hosts = [self._host(i) for i in range(count)]
        return self.hosts

    def owner_of(self, agent_id: str) -> int:
        return partition_of("counter", agent_id, PARTITIONS) % self.count

    def probes(self, prefix: str) -> list[str]:
        return probe_ids(PARTITIONS, self.count, prefix)

    def recover(self, index: int) -> HostProc:
        self.hosts[index] = self._host(index)
        return self.hosts[index]

    def stop_all(self) -> None:
        for h in self.hosts:
            h.stop()
        self.hosts = []


def start_cluster(work_dir: Path) -> NatsCluster:
    cluster = NatsCluster(data_dir=work_dir / "cluster", size=3, name="bench")
    cluster.start()
    return cluster


async def cluster_client(cluster: NatsCluster, timeout_s: float) -> Client:
    return await Client.connect(
        settings=ClientSettings(nats_url=cluster.url, request_timeout_s=timeout_s, connect_timeout_s=10)
    )


# -- workload 5 -----------------------------------------------------------------------------
async def scaling(
    cluster: NatsCluster,
    work_dir: Path,
    host_counts: list[int],
    modes: list[str],
    inflight: int,
    reps: int,
    warm_s: float,
    measure_s: float,
    timeout_s: float,
) -> dict[str, Any]:
    own = StaticSplit(cluster.url, work_dir, replicas=3, name="scale")
    client = await cluster_client(cluster, timeout_s)
    out: dict[str, Any] = {
        "what": (
            f"{inflight} closed-loop workers, one counter agent each, `increment` per mode, against 1..3 hosts "
            "on a 3-node loopback JetStream cluster (streams and buckets R3); all of it (3 nats-servers, the "
            "hosts, this client) shares the same cores"
        ),
        "ownership": own.label,
        "runs": [],
        "summary": [],
    }
    try:
        for count in host_counts:
            hosts = own.start(count)
            try:
                ready_s = await wait_ready(client, hosts, own.probes(f"sprobe{count}x"), timeout_s=120)
                agents = [f"s{count}b{i}" for i in range(inflight)]
                act = jetagents_sender(client, "exactly-once", agents, timeout_s, "increment")
                await asyncio.gather(*(act(i) for i in range(inflight)))
                log(f"scaling: {count} host(s) ready in {ready_s:.1f}s, {inflight} agents activated")
                pids = {f"host{i}": h.pid for i, h in enumerate(hosts)} | {
                    f"nats{i}": s.proc.pid for i, s in enumerate(cluster.servers) if s.proc is not None
                }
                for rep in range(reps):
                    for mode in modes:
                        send = jetagents_sender(client, mode, agents, timeout_s, "increment")
                        n, secs, lat, errors, cpu, first_error = await run_cell(
                            send, inflight, warm_s=warm_s, measure_s=measure_s, count=None, pids=pids
                        )
                        lat_ms = [x * 1000 for x in lat]
                        run = {
                            "hosts": count,
                            "mode": mode,
                            "rep": rep + 1,
                            "cmds_per_s": n / secs if secs else 0.0,
                            "p50_ms": lat_ms[len(lat_ms) // 2] if lat_ms else float("nan"),
                            "p99_ms": lat_ms[min(len(lat_ms) - 1, int(len(lat_ms) * 0.99))] if lat_ms else float("nan"),
                            "errors": errors,
                            "first_error": first_error,
                            "host_cores": sum(v for k, v in cpu.items() if k.startswith("host")) / secs,
                            "nats_cores": sum(v for k, v in cpu.items() if k.startswith("nats")) / secs,
                            "client_cores": cpu.get("client", 0.0) / secs,
                            "other_cores": cpu.get("other", 0.0) / secs,
                        }
                        out["runs"].append(run)
                        log(
                            f"scaling {count} host(s) {mode:<13} rep {rep + 1}: {run['cmds_per_s']:8.0f} cmds/s "
                            f"p50 {run['p50_ms']:.1f} ms (cores: hosts {run['host_cores']:.2f} "
                            f"nats {run['nats_cores']:.2f} client {run['client_cores']:.2f})"
                        )
            finally:
                own.stop_all()
        for count in host_counts:
            for mode in modes:
                rs = [r for r in out["runs"] if r["hosts"] == count and r["mode"] == mode]
                out["summary"].append(
                    {"hosts": count, "mode": mode, "reps": len(rs), "errors": sum(r["errors"] for r in rs)}
                    | {
                        k: {"median": median([r[k] for r in rs]), "min_max": min_max([r[k] for r in rs])}
                        for k in ("cmds_per_s", "p50_ms", "p99_ms", "host_cores", "nats_cores", "client_cores")
                    }
                )
    finally:
        await client.close()
    return out


def host_started_after(host: HostProc, t_wall: float) -> float:
    """Seconds from ``t_wall`` to the host's ``host_started`` log line (JSON logs), nan if absent."""
    try:
        for line in host.log_path.read_text(errors="replace").splitlines():
            if '"host_started"' in line:
                ts = orjson.loads(line)["timestamp"]
                return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() - t_wall
    except (OSError, ValueError, KeyError):
        pass
    return float("nan")


# -- workload 6 -----------------------------------------------------------------------------
async def failover(
    cluster: NatsCluster,
    work_dir: Path,
    *,
    hosts: int = 2,
    agents: int = 64,
    reps: int = 3,
    warm_s: float = 2.0,
    after_s: float = 2.0,
    timeout_s: float = 60.0,
    max_wait_s: float = 60.0,
) -> dict[str, Any]:
    """Exactly-once increments from ``agents`` closed-loop workers (one agent each); kill -9
    of the last host; recovery as ``Ownership.recover`` defines it. Per repetition:

    * ``serve_again_s``: kill -> the first reply after the kill, per agent of the killed host;
      max over those agents = when all its partitions serve again (median also reported);
    * ``waited``: commands to the killed host's agents that were answered only after the
      kill with a latency above 0.5 s;
    * lost / applied twice: every reply carries the counter's new value; per agent the values
      must be consecutive (no repeats: nothing applied twice; no holes: nothing applied that was
      not answered) and the final ``get`` must equal the last value (nothing lost).
    """
    # INFO logs: the replacement's "host_started" line tells start-up apart from catching up
    own = StaticSplit(cluster.url, work_dir, replicas=3, name="failover", env={"JETAGENTS_LOG_LEVEL": "INFO"})
    client = await cluster_client(cluster, timeout_s)
    out: dict[str, Any] = {
        "what": (
            f"{agents} closed-loop workers sending exactly-once `increment` to one agent each over {hosts} hosts "
            "(R3 cluster); kill -9 of one host under load"
        ),
        "ownership": own.label,
        "recovery": own.recovery,
        "runs": [],
        "summary": {},
    }
    perf = time.perf_counter
    try:
        hs = own.start(hosts)
        await wait_ready(client, hs, own.probes("fprobe"), timeout_s=120)
        for rep in range(reps):
            ids = [f"f{rep}a{i}" for i in range(agents)]
            victim = hosts - 1
            owned = [a for a in ids if own.owner_of(a) == victim]
            replies: dict[str, list[tuple[float, float, int]]] = {a: [] for a in ids}  # (sent, answered, value)
            errors: list[str] = []
            stop = asyncio.Event()

            async def worker(
                aid: str,
                stop: asyncio.Event = stop,
                errors: list[str] = errors,
                replies: dict[str, list[tuple[float, float, int]]] = replies,
            ) -> None:
                ref = client.agent("counter", aid)
                while not stop.is_set():
                    t0 = perf()
                    try:
                        v = await ref.request("increment", {"by": 1}, delivery="exactly-once", timeout=timeout_s)
                    except Exception as exc:
                        errors.append(f"{aid}: {exc!r}")
                        await asyncio.sleep(0.05)
                        continue
                    replies[aid].append((t0, perf(), int(v)))

            tasks = [asyncio.create_task(worker(a)) for a in ids]
            await asyncio.sleep(warm_s)
            t_kill = perf()
            t_kill_wall = time.time()
            own.hosts[victim].kill9()
            t_killed = perf()
            replacement = own.recover(victim)
            # wait until every agent of the killed host has answered after the kill
            deadline = t_kill + max_wait_s
            while perf() < deadline:
                if all(any(r[1] > t_killed for r in replies[a]) for a in owned):
                    break
                if not replacement.alive():
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(after_s)
            stop.set()
            await asyncio.gather(*tasks)
            first_after = []
            for a in owned:
                after = [r[1] for r in replies[a] if r[1] > t_killed]
                first_after.append(min(after) - t_kill if after else float("nan"))
            waited = [r for a in owned for r in replies[a] if r[1] > t_killed and r[1] - r[0] > 0.5]
            # nothing lost, nothing applied twice
            problems = []
            for a in ids:
                vals = [r[2] for r in sorted(replies[a], key=lambda r: r[1])]
                if vals != list(range(1, len(vals) + 1)):
                    problems.append(f"{a}: values not 1..{len(vals)}: {vals[:5]}...")
                final = await client.agent("counter", a).request("get", delivery="at-most-once", timeout=timeout_s)
                if final != len(vals):
                    problems.append(f"{a}: final value {final} != {len(vals)} answered increments")
            survivors_gap = [
                max((b[1] - a_[1] for a_, b in zip(replies[a], replies[a][1:], strict=False)), default=0.0)
                for a in ids
                if own.owner_of(a) != victim
            ]
            run = {
                "rep": rep + 1,
                "killed_host_agents": len(owned),
                "serve_again_s_max": max(first_after) if first_after else float("nan"),
                "serve_again_s_median": median(first_after),
                "commands_answered": sum(len(v) for v in replies.values()),
                "commands_waited": len(waited),
                "waited_latency_s_max": max((r[1] - r[0] for r in waited), default=0.0),
                "errors": len(errors),
                "first_errors": errors[:3],
                "consistency_problems": problems[:5],
                "lost_or_doubled": len(problems),
                "survivor_max_gap_s": max(survivors_gap, default=0.0),
                "replacement_started_s": host_started_after(replacement, t_kill_wall),
                "replacement_alive": replacement.alive(),
            }
            out["runs"].append(run)
            log(
                f"failover rep {rep + 1}: all {len(owned)} agents of the killed host served again after "
                f"{run['serve_again_s_max']:.2f}s (median {run['serve_again_s_median']:.2f}s), "
                f"{run['commands_waited']} commands waited, errors {len(errors)}, problems {len(problems)}"
            )
            if not replacement.alive():
                raise RuntimeError(f"replacement host died:\n{replacement.tail()}")
        rs = out["runs"]
        out["summary"] = {
            "reps": len(rs),
            "serve_again_s": {
                "median": median([r["serve_again_s_max"] for r in rs]),
                "worst": max(r["serve_again_s_max"] for r in rs),
                "min_max": min_max([r["serve_again_s_max"] for r in rs]),
            },
            "commands_waited_median": median([r["commands_waited"] for r in rs]),
            "replacement_started_s_median": median([r["replacement_started_s"] for r in rs]),
            "errors": sum(r["errors"] for r in rs),
            "lost_or_doubled": sum(r["lost_or_doubled"] for r in rs),
        }
    finally:
        own.stop_all()
        await client.close()
    return out
