"""Workloads 5 (scaling over 1, 2, 3 hosts) and 6 (failover after kill -9 of a host), on a
3-node JetStream cluster on loopback (``jetagents.testing.server.NatsCluster``), streams and
buckets R3.

Partitions are owned through the cluster ring (``jetagents._host.coordination``): every host is
started with its own ``JETAGENTS_HOST_ID`` and no index/count; the hosts heartbeat a
member key with a TTL in the KV bucket ``agt_cluster``, a leader (lease in the same bucket)
writes the ring, and hosts claim the partitions the ring gives them. ``Ring`` below starts
and stops hosts and reads that bucket (``cluster_status``, the ``ring`` key, the
``claim.<p>`` keys) to decide when the cluster has settled and who owns what.

* Workload 5: 1, then 2, then 3 hosts (each joins the running cluster), the same load at
  each size; then the third host leaves (SIGTERM: drain). For every join and leave: how
  many ring owners changed between the settled ring before and after, through how many
  epochs, and how long until settled.
* Workload 6: 3 hosts under an exactly-once load (one agent per partition, each command
  re-sent with the same command id until acknowledged, as a careful caller does); kill -9
  of one host and **no replacement**: the survivors take its partitions over once its
  member key expires. Per repetition: kill -> member key gone -> ring without it ->
  every partition it held claimed by a survivor -> every such partition served again (a
  command sent after the kill to that partition's agent answered); the commands that were
  in flight across the kill; nothing lost or applied twice (values returned, final value,
  and the agent's event log: gapless, every command id once, owners never going back).
  Before the next repetition a new host (new id) joins, so every repetition starts from 3.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from pathlib import Path
from typing import Any

import orjson

from jetagents import Client, ClientSettings, JetAgentsError
from jetagents._core.ids import partition_of
from jetagents._core.ring import compute_ring
from jetagents._host.coordination import cluster_status
from jetagents._nats.kv import JetStreamStore
from jetagents._settings import HostSettings
from jetagents.testing.server import NatsCluster

from _workloads import HostProc, log, min_max, wait_ready  # isort: skip
from bench_delivery import jetagents_sender, median, run_cell  # isort: skip

PARTITIONS = 64  # bench.py sets it per profile (smoke: 8, so a ring change resets few consumers)
RING_LABEL = (
    "cluster ring: hosts with distinct JETAGENTS_HOST_ID (no index/count), membership by per-key TTL, "
    "leader lease, ring and partition claims in KV `agt_cluster`"
)
TTL3 = {"JETAGENTS_MEMBER_TTL_S": "3", "JETAGENTS_LEASE_TTL_S": "3", "JETAGENTS_HEARTBEAT_S": "0.5"}
TROUBLE = ("self_fenced", "partition_start_failed", "handoff_timeout", "claim_lost")
SHORT_TTL = {"JETAGENTS_MEMBER_TTL_S": "2", "JETAGENTS_LEASE_TTL_S": "2", "JETAGENTS_HEARTBEAT_S": "0.4"}


def partition_ids(prefix: str, partitions: int | None = None) -> list[str]:
    """One counter agent id per partition (index = partition)."""
    partitions = partitions or PARTITIONS
    found: dict[int, str] = {}
    i = 0
    while len(found) < partitions:
        aid = f"{prefix}{i}"
        found.setdefault(partition_of("counter", aid, partitions), aid)
        i += 1
    return [found[p] for p in range(partitions)]


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}


async def get_value(client: Client, aid: str, timeout_s: float) -> Any:
    """The counter's value (at-most-once `get`), asked again while the cluster is busy."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await client.agent("counter", aid).request("get", delivery="at-most-once", timeout=10)
        except JetAgentsError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def moved(a: list[str], b: list[str]) -> int:
    return sum(1 for x, y in zip(a, b, strict=True) if x != y)


class Ring:
    """Hosts of one ring cluster, and what the ``agt_cluster`` bucket says about them."""

    label = RING_LABEL

    def __init__(self, client: Client, url: str, work_dir: Path, name: str, env: dict[str, str] | None = None) -> None:
        self.client = client
        self.url = url
        self.work_dir = work_dir
        self.name = name
        self.env = env or {}
        self.hosts: dict[str, HostProc] = {}  # live (not killed, not stopped) hosts by id
        self.every: list[HostProc] = []  # every host ever started (their logs)
        self.seq = 0
        self.store = JetStreamStore(client.nc, "agt_cluster", replicas=3)

    def add(self) -> HostProc:
        host_id = f"{self.name}-h{self.seq}"
        self.seq += 1
        env = {"JETAGENTS_REPLICAS": "3", "JETAGENTS_PARTITIONS": str(PARTITIONS)} | self.env
        h = HostProc(self.url, self.work_dir, host_id, env)
        self.hosts[host_id] = h
        self.every.append(h)
        return h

    def trouble(self) -> dict[str, int]:
        """Warning events in every host's log so far (self-fencing, failed partition starts,
        hand-off timeouts, lost claims): a phase's count is the difference of two calls."""
        out = dict.fromkeys(TROUBLE, 0)
        for h in self.every:
            with contextlib.suppress(OSError):
                text = h.log_path.read_text(errors="replace")
                for k in TROUBLE:
                    out[k] += text.count(f'"{k}"')
        return out

    def kill9(self, host_id: str) -> None:
        self.hosts.pop(host_id).kill9()

    async def leave(self, host_id: str, timeout_s: float = 60.0) -> float:
        """SIGTERM (drain: the leader moves its partitions away first); seconds until it exited."""
        h = self.hosts.pop(host_id)
        t0 = time.monotonic()
        await asyncio.to_thread(h.stop, timeout_s)
        return time.monotonic() - t0

    def stop_all(self) -> None:
        for h in self.hosts.values():
            h.stop()
        self.hosts = {}

    async def status(self) -> dict[str, Any]:
        return await cluster_status(self.store)

    async def owners(self) -> tuple[int, list[str]]:
        try:
            e = await self.store.get("ring")
        except JetAgentsError:  # the bucket does not exist before the first host made it
            e = None
        if e is None:
            return 0, [""] * PARTITIONS
        return int(e.value.get("epoch", 0)), list(e.value.get("owners", []))

    async def claims(self) -> dict[int, str]:
        return {
            int(k.removeprefix("claim.")): str(e.value.get("host", ""))
            for k, e in (await self.store.scan("claim.")).items()
        }

    def is_settled(self, st: dict[str, Any], owners: list[str]) -> bool:
        """Exactly the live hosts are members, the ring is the leader's target for them (the
        leader moves at most ``rebalance_max_moves`` partitions per step, so an intermediate
        ring is not settled), everyone holds what it is assigned, nobody else holds anything."""
        want = set(self.hosts)
        if not want or owners != compute_ring(PARTITIONS, dict.fromkeys(want, 1.0), previous=owners):
            return False
        alive = {h["host"] for h in st["hosts"] if h["alive"] and not h["draining"]}
        return (
            alive == want
            and st["partitions"] == PARTITIONS
            and st["unowned"] == 0
            and all(
                h["partitions_assigned"] == h["partitions_held"] > 0
                if h["host"] in want
                else h["partitions_assigned"] == h["partitions_held"] == 0
                for h in st["hosts"]
            )
        )

    async def settled(self, timeout_s: float = 120.0, watch: list[list[str]] | None = None) -> dict[str, Any]:
        """Wait until exactly the live hosts are members, each holds what the ring assigns
        it, nothing is unowned and nobody else holds anything. ``watch`` collects every
        distinct ring seen on the way (to count the owner changes of intermediate epochs)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for h in self.hosts.values():
                if not h.alive():
                    raise RuntimeError(f"host {h.name} exited with {h.proc.returncode}:\n{h.tail()}")
            try:
                st = await self.status()
                _, owners = await self.owners()
                if watch is not None and len(owners) == PARTITIONS and (not watch or owners != watch[-1]):
                    watch.append(owners)
                if self.is_settled(st, owners):
                    return st
            except JetAgentsError:
                st = {}
            if time.monotonic() > deadline:
                tails = "\n".join(h.tail(10) for h in self.hosts.values())
                raise TimeoutError(f"cluster not settled after {timeout_s}s: {st}\n{tails}")
            await asyncio.sleep(0.1)

    async def ready(self, prefix: str, timeout_s: float = 120.0) -> float:
        """Settled, and one agent of every partition answers a call and a pulled command."""
        t0 = time.monotonic()
        await self.settled(timeout_s)
        await wait_ready(self.client, list(self.hosts.values()), partition_ids(prefix), timeout_s=timeout_s)
        return time.monotonic() - t0

    async def change(self, what: str, action: Any, timeout_s: float = 120.0) -> dict[str, Any]:
        """Run ``action`` (a join or a leave) and measure what the ring did until settled."""
        epoch0, before = await self.owners()
        tr0 = self.trouble()
        watch: list[list[str]] = [before]
        t0 = time.monotonic()
        res = action()
        if asyncio.iscoroutine(res):
            await res
        await self.settled(timeout_s, watch=watch)
        settle_s = time.monotonic() - t0
        epoch1, after = await self.owners()
        if after != watch[-1]:
            watch.append(after)
        steps = sum(moved(a, b) for a, b in itertools.pairwise(watch))
        load = {h: after.count(h) for h in sorted(set(after))}
        out = {
            "change": what,
            "hosts_after": len(self.hosts),
            "moved": moved(before, after),
            "moves_through_epochs": steps,
            "epochs": epoch1 - epoch0,
            "settle_s": settle_s,
            "partitions_per_host": load,
            "ideal": None,
            "trouble": delta(self.trouble(), tr0),
        }
        log(
            f"ring: {what}: {out['moved']} of {PARTITIONS} partitions changed owner over {out['epochs']} epoch(s), "
            f"settled in {settle_s:.1f}s; per host {load}"
        )
        return out


def start_cluster(work_dir: Path) -> NatsCluster:
    cluster = NatsCluster(data_dir=work_dir / "cluster", size=3, name="bench")
    cluster.start()
    return cluster


async def cluster_client(cluster: NatsCluster, timeout_s: float) -> Client:
    return await Client.connect(
        settings=ClientSettings(
            nats_url=cluster.url, partitions=PARTITIONS, request_timeout_s=timeout_s, connect_timeout_s=10
        )
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
    min_waves: int = 10,
    warm_replies: int = 2,
) -> dict[str, Any]:
    client = await cluster_client(cluster, timeout_s)
    own = Ring(client, cluster.url, work_dir, "scale")
    out: dict[str, Any] = {
        "what": (
            f"{inflight} closed-loop workers, one counter agent each, `increment` per mode, against 1..3 hosts "
            "on a 3-node loopback JetStream cluster (streams and buckets R3); each host joins the running "
            "cluster; all of it (3 nats-servers, the hosts, this client) shares the same cores"
        ),
        "ownership": own.label,
        "partitions": PARTITIONS,
        "runs": [],
        "summary": [],
        "ring_changes": [],
        "trouble": {},
    }
    try:
        agents = [f"sb{i}" for i in range(inflight)]
        for count in host_counts:
            while len(own.hosts) < count:
                n = len(own.hosts)
                change = await own.change(f"host {n + 1} joins ({n} -> {n + 1})", own.add, timeout_s=180)
                change["ideal"] = round(PARTITIONS / (n + 1)) if n else PARTITIONS
                out["ring_changes"].append(change)
            ready_s = await own.ready(f"sprobe{count}x", timeout_s=120)
            act = jetagents_sender(client, "exactly-once", agents, timeout_s, "increment")
            await asyncio.gather(*(act(i) for i in range(inflight)))
            log(f"scaling: {count} host(s) ready in {ready_s:.1f}s, {inflight} agents active")
            tr0 = own.trouble()
            hosts = list(own.hosts.values())
            pids = {f"host{i}": h.pid for i, h in enumerate(hosts)} | {
                f"nats{i}": s.proc.pid for i, s in enumerate(cluster.servers) if s.proc is not None
            }
            for rep in range(reps):
                for mode in modes:
                    send = jetagents_sender(client, mode, agents, timeout_s, "increment")
                    n, secs, lat, errors, cpu, first_error = await run_cell(
                        send,
                        inflight,
                        warm_s=warm_s,
                        measure_s=measure_s,
                        count=None,
                        pids=pids,
                        min_waves=min_waves,
                        warm_replies=warm_replies,
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
            out["trouble"][str(count)] = delta(own.trouble(), tr0)
        # the last host leaves (drain), then the next one: partitions moved back
        while len(own.hosts) > 1:
            n = len(own.hosts)
            last = sorted(own.hosts, key=lambda h: int(h.rsplit("h", 1)[1]))[-1]
            change = await own.change(
                f"host {n} leaves, SIGTERM/drain ({n} -> {n - 1})", lambda last=last: own.leave(last), timeout_s=180
            )
            change["ideal"] = round(PARTITIONS / n)
            out["ring_changes"].append(change)
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
    except Exception as exc:  # report what was measured, and why the rest was not
        out["failed"] = f"{type(exc).__name__}: {exc}"[:2000]
        out["trouble_total"] = own.trouble()
        log(f"scaling FAILED: {out['failed'][:300]}")
    finally:
        own.stop_all()
        await client.close()
    return out


# -- workload 6 -----------------------------------------------------------------------------
async def read_logs(client: Client, agents: set[str], start_seq: int, timeout_s: float = 60.0) -> dict[str, list]:
    """Every commit in ``AGT_EVT`` from ``start_seq`` on for ``agents``: {agent: [commit, ...]}."""
    from nats.js.api import ConsumerConfig, DeliverPolicy

    js = client.nc.jetstream()
    info = await js.stream_info("AGT_EVT")
    last = info.state.last_seq
    out: dict[str, list] = {a: [] for a in agents}
    if last < start_seq:
        return out
    sub = await js.subscribe(
        "agt.evt.counter.>",
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_seq),
    )
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                msg = await sub.next_msg(timeout=timeout_s)
                aid = msg.subject.rsplit(".", 1)[1]
                if aid in out:
                    out[aid].append(orjson.loads(msg.data) | {"_host": (msg.headers or {}).get("Agt-Host", "")})
                if msg.metadata.sequence.stream >= last:
                    break
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return out


async def evt_last_seq(client: Client) -> int:
    return int((await client.nc.jetstream().stream_info("AGT_EVT")).state.last_seq)


def check_agent(aid: str, values: list[int], final: Any, commits: list[dict[str, Any]]) -> list[str]:
    """Nothing lost, nothing applied twice, for one agent with ``len(values)`` acked increments."""
    k = len(values)
    problems = []
    if values != list(range(1, k + 1)):
        problems.append(f"{aid}: returned values not 1..{k}: {values[:8]}...")
    if final != k:
        problems.append(f"{aid}: final value {final} != {k} acknowledged increments")
    ns = [c.get("n") for c in commits]
    if ns != list(range(1, k + 1)):
        problems.append(f"{aid}: log n = {ns[:8]}... (len {len(ns)}), expected 1..{k}")
    cmds = [c.get("cmd") for c in commits]
    if len(set(cmds)) != len(cmds):
        problems.append(f"{aid}: a command id appears twice in the log")
    owns = [c.get("own", 0) for c in commits]
    if owns != sorted(owns):
        problems.append(f"{aid}: an older owner wrote after a newer one: {owns}")
    return problems


async def failover(
    cluster: NatsCluster,
    work_dir: Path,
    *,
    hosts: int = 3,
    reps: int = 5,
    warm_s: float = 2.0,
    after_s: float = 1.0,
    timeout_s: float = 60.0,
    max_wait_s: float = 60.0,
    env: dict[str, str] | None = None,
    label: str = "default",
    evidence_dir: Path | None = None,
) -> dict[str, Any]:
    """Exactly-once increments, one closed-loop worker per partition (so every partition of
    the killed host has an agent under load); kill -9 of one host, no replacement.

    Per repetition (times from the kill):

    * ``member_gone_s``: the killed host's member key has expired (``alive`` false);
    * ``ring_s``: the ring no longer names it; ``claimed_s``: every partition it held is
      claimed by a survivor;
    * ``serve_again_s``: every partition it held served again = for each of its
      partitions, a command sent after the kill to that partition's agent was answered
      (max over the partitions; the median partition too);
    * ``waited``: commands to its partitions in flight at the kill, and their latency;
    * lost / applied twice: ``check_agent`` on every agent.
    """
    env = dict(env or {})
    client = await cluster_client(cluster, timeout_s)
    own = Ring(client, cluster.url, work_dir, f"fo{label}", env)
    tag = label.replace("-", "")  # agent ids
    fields = HostSettings.model_fields  # the defaults of the code being measured
    ttl = {
        k: float(env.get(f"JETAGENTS_{k.upper()}", fields[k].default))
        for k in ("member_ttl_s", "lease_ttl_s", "heartbeat_s")
    }
    out: dict[str, Any] = {
        "label": label,
        "settings": ttl,
        "env": env,
        "what": (
            f"one closed-loop worker per partition ({PARTITIONS}) sending exactly-once `increment` (re-sent with "
            f"the same command id until acknowledged) over {hosts} hosts (R3 cluster); kill -9 of one host, "
            "no replacement: the survivors take its partitions over"
        ),
        "ownership": own.label,
        "recovery": "ring takeover by the surviving hosts (no replacement host)",
        "partitions": PARTITIONS,
        "runs": [],
        "summary": {},
    }
    perf = time.perf_counter
    try:
        for _ in range(hosts):
            own.add()
        await own.ready(f"fprobe{tag}x", timeout_s=180)
        for rep in range(reps):
            if len(own.hosts) < hosts:
                await own.change("replacement joins before the next repetition", own.add, timeout_s=180)
                await own.ready(f"fprobe{tag}r{rep}x", timeout_s=120)
            ids = partition_ids(f"f{tag}r{rep}a")
            # activate every agent first (one acked increment each)
            replies: dict[str, list[tuple[float, float, int]]] = {a: [] for a in ids}  # (sent, answered, value)
            start_seq = await evt_last_seq(client) + 1
            errors: list[str] = []
            stop = asyncio.Event()

            async def one(ref: Any, cmd_id: str, errors: list[str] = errors) -> int:
                t0 = time.monotonic()
                while True:
                    try:
                        v = await ref.request(
                            "increment", {"by": 1}, command_id=cmd_id, delivery="exactly-once", timeout=timeout_s
                        )
                        return int(v)
                    except JetAgentsError as exc:
                        errors.append(f"{cmd_id}: {exc!r}")
                        if not exc.retryable or time.monotonic() - t0 > 3 * timeout_s:
                            raise
                        await asyncio.sleep(0.05)

            async def worker(
                aid: str, stop: asyncio.Event = stop, replies: dict[str, list[tuple[float, float, int]]] = replies
            ) -> None:
                ref = client.agent("counter", aid)
                i = 0
                while not stop.is_set():
                    t0 = perf()
                    v = await one(ref, f"{aid}-{i}")
                    replies[aid].append((t0, perf(), v))
                    i += 1

            st = await own.status()
            leader = st["leader"]
            alive = sorted(own.hosts)
            # alternate: a follower, then the leader (its lease must expire too), ...
            followers = [h for h in alive if h != leader]
            victim = leader if rep % 2 == 1 and leader in own.hosts else followers[(rep // 2) % len(followers)]
            started: dict[int, float] = {}  # partition -> when a survivor said it started it

            async def on_started(msg: Any, started: dict[int, float] = started) -> None:
                with contextlib.suppress(ValueError, KeyError):
                    started.setdefault(int(orjson.loads(msg.data)["partition"]), perf())

            sub = await client.nc.subscribe("agt.sys.partition.started", cb=on_started)
            tasks = [asyncio.create_task(worker(a)) for a in ids]
            await asyncio.sleep(warm_s)
            held = sorted(p for p, h in (await own.claims()).items() if h == victim)
            started.clear()
            tr0 = own.trouble()
            t_kill = perf()
            own.kill9(victim)
            t_killed = perf()
            marks: dict[str, float] = {}
            served: dict[int, float] = {}
            deadline = t_kill + max_wait_s
            while perf() < deadline:
                now = perf()
                for p in held:
                    if p not in served and any(r[0] > t_killed for r in replies[ids[p]]):
                        served[p] = min(r[1] for r in replies[ids[p]] if r[0] > t_killed) - t_kill
                with contextlib.suppress(JetAgentsError):
                    if "member_gone_s" not in marks:
                        st = await own.status()
                        if not any(h["host"] == victim and h["alive"] for h in st["hosts"]):
                            marks["member_gone_s"] = now - t_kill
                    if "ring_s" not in marks:
                        _, owners = await own.owners()
                        if victim not in owners:
                            marks["ring_s"] = now - t_kill
                    if "claimed_s" not in marks:
                        claims = await own.claims()
                        if all(claims.get(p) not in (None, "", victim) for p in held):
                            marks["claimed_s"] = now - t_kill
                if "started_s" not in marks and all(p in started for p in held):
                    marks["started_s"] = max(started[p] for p in held) - t_kill
                if len(served) == len(held) and len(marks) == 4:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(after_s)
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await sub.unsubscribe()
            waited = [
                r[1] - r[0] for p in held for r in replies[ids[p]] if r[0] < t_kill and r[1] > t_killed
            ]  # in flight across the kill, to the victim's partitions
            others = [r[1] - r[0] for p in range(PARTITIONS) if p not in held for r in replies[ids[p]]]
            # nothing lost, nothing applied twice
            logs = await read_logs(client, set(ids), start_seq)
            problems: list[str] = []
            for a in ids:
                vals = [r[2] for r in sorted(replies[a], key=lambda r: r[1])]
                final = await get_value(client, a, 2 * timeout_s)
                problems += check_agent(a, vals, final, logs[a])
            s_vals = [served.get(p, float("nan")) for p in held]
            run = {
                "rep": rep + 1,
                "victim": victim,
                "victim_was_leader": victim == leader,
                "partitions_held": len(held),
                "member_gone_s": marks.get("member_gone_s", float("nan")),
                "ring_s": marks.get("ring_s", float("nan")),
                "claimed_s": marks.get("claimed_s", float("nan")),
                "started_s": marks.get("started_s", float("nan")),
                "serve_again_s_max": max(s_vals) if len(served) == len(held) and held else float("nan"),
                "serve_again_s_median": median(s_vals),
                "partitions_served": len(served),
                "commands_answered": sum(len(v) for v in replies.values()),
                "commands_waited": len(waited),
                "waited_latency_s_median": median(waited) if waited else 0.0,
                "waited_latency_s_max": max(waited, default=0.0),
                "other_partitions_latency_s_max": max(others, default=0.0),
                "errors": len(errors),
                "first_errors": errors[:3],
                "consistency_problems": problems[:8],
                "lost_or_doubled": len(problems),
                "trouble": delta(own.trouble(), tr0),
            }
            out["runs"].append(run)
            log(
                f"failover [{label}] rep {rep + 1}: killed {victim}{' (leader)' if run['victim_was_leader'] else ''} "
                f"holding {len(held)} partitions; member gone {run['member_gone_s']:.2f}s, ring {run['ring_s']:.2f}s, "
                f"claimed {run['claimed_s']:.2f}s, started {run['started_s']:.2f}s, "
                f"all served again {run['serve_again_s_max']:.2f}s; "
                f"{len(waited)} commands waited (max {run['waited_latency_s_max']:.2f}s), errors {len(errors)}, "
                f"problems {len(problems)}; host log warnings {run['trouble'] or 'none'}"
            )
            if problems and evidence_dir is not None:
                evidence_dir.mkdir(parents=True, exist_ok=True)
                (evidence_dir / f"failover-{label}-rep{rep + 1}.json").write_text(
                    orjson.dumps(
                        {"run": run, "problems": problems, "replies": replies, "logs": logs, "held": held},
                        option=orjson.OPT_INDENT_2,
                    ).decode()
                )
    except Exception as exc:  # report the repetitions measured, and why the rest were not
        out["failed"] = f"{type(exc).__name__}: {exc}"[:2000]
        out["trouble_total"] = own.trouble()
        log(f"failover [{label}] FAILED: {out['failed'][:300]}")
    finally:
        own.stop_all()
        await client.close()
    rs = out["runs"]
    worst = [r["serve_again_s_max"] for r in rs]
    out["summary"] = {
        "reps": len(rs),
        "serve_again_s": {
            "median": median(worst),
            # a repetition that never recovered (nan) makes the worst case nan, not the best
            "worst": float("nan") if any(v != v for v in worst) or not worst else max(worst),
            "min_max": min_max(worst),
        },
        "member_gone_s_median": median([r["member_gone_s"] for r in rs]),
        "ring_s_median": median([r["ring_s"] for r in rs]),
        "claimed_s_median": median([r["claimed_s"] for r in rs]),
        "started_s_median": median([r["started_s"] for r in rs]),
        "commands_waited_median": median([r["commands_waited"] for r in rs]),
        "waited_latency_s_max": max((r["waited_latency_s_max"] for r in rs), default=0.0),
        "errors": sum(r["errors"] for r in rs),
        "lost_or_doubled": sum(r["lost_or_doubled"] for r in rs),
    }
    if out.get("failed"):  # a repetition that never happened is not a good one
        out["summary"]["serve_again_s"]["worst"] = float("nan")
        out["summary"]["failed"] = out["failed"]
    return out
