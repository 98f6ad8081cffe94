"""Fuzz a running host with malformed messages; check that nothing a client sends crashes
it, stalls it, loops, damages another agent or disturbs good commands.

    python loadtests/fuzz.py                      # 200,000 messages, own nats-server and host
    python loadtests/fuzz.py --quick              # 20,000 messages
    python loadtests/fuzz.py --count 3000 --partitions 8 --quiet-s 6     # the smoke test
    python loadtests/fuzz.py --exclude odd_subject_bytes forbidden_reply_js
    python loadtests/fuzz.py --plan-only --seed 7 --count 3000            # the plan's digest

Malformed messages go over a raw TCP socket (``_rawnats.py``) so that any bytes reach the
server; their kinds are in ``_fuzzgen.py``. Between batches it sends good traffic through
the jetagents client: exactly-once increments with known totals (re-sent with the same
command id until answered) and at-most-once calls whose latency is reported. At the end it
waits for the command stream to drain, watches the consumers for a quiet period, reads
every dead letter and checks the invariants; the exit code is 1 if any breaks, 0 if
none. See ``loadtests/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from nats.js.api import AckPolicy, ConsumerConfig

from jetagents import Client, ClientSettings, NatsServer
from jetagents._nats.api import js_api

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _fuzzgen import ACK_PREFIX, KINDS, REPLY_PREFIX, VICTIM_ID, FuzzMsg, plan, plan_digest  # noqa: E402
from _rawnats import RawClosed, RawNats  # noqa: E402
from _workloads import HostProc, probe_ids, wait_ready  # noqa: E402
from bench_delivery import pct  # noqa: E402

VICTIM_COMMITS = 120  # > snapshot_every (100): the victim has a snapshot to overwrite


def log(msg: str) -> None:
    print(f"[fuzz {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Tally:
    sent: Counter[str] = field(default_factory=Counter)  # kind/channel
    stored: dict[int, str] = field(default_factory=dict)  # AGT_CMD seq -> kind/channel of bad durable commands
    stored_any: dict[int, str] = field(default_factory=dict)  # seq -> kind/channel of every stored fuzz command
    pub_refused: Counter[str] = field(default_factory=Counter)  # PubAck error (size, ...) per kind/channel
    pub_dup: Counter[str] = field(default_factory=Counter)
    answerable: dict[int, str] = field(default_factory=dict)  # n -> kind/channel, reply expected
    answered: Counter[str] = field(default_factory=Counter)
    answered_n: set[int] = field(default_factory=set)
    reply_codes: Counter[str] = field(default_factory=Counter)
    server_closed: Counter[str] = field(default_factory=Counter)
    raw_reconnects: int = 0
    conn_of: dict[int, int] = field(default_factory=dict)  # n -> generation of the raw connection it went on
    lost_conns: set[int] = field(default_factory=set)  # generations the server closed under us
    bad_calls: int = 0
    raw_errors: list[str] = field(default_factory=list)
    msgs: dict[int, FuzzMsg] = field(default_factory=dict)  # durable fuzz messages awaiting their PubAck
    subjects: dict[int, bytes] = field(default_factory=dict)  # AGT_CMD seq -> the subject it was sent to

    def on_msg(self, subject: bytes, reply: bytes, hdr: bytes, body: bytes) -> None:
        if subject.startswith(ACK_PREFIX):
            n = int(subject[len(ACK_PREFIX) :])
            m = self.msgs.pop(n, None)
            if m is None:
                return
            key = f"{m.kind}/{m.channel}"
            try:
                ack = orjson.loads(body)
            except orjson.JSONDecodeError:
                ack = {"error": {"description": body[:100].decode(errors="replace")}}
            if "error" in ack or ack.get("duplicate"):
                (self.pub_refused if "error" in ack else self.pub_dup)[key] += 1
                self.answerable.pop(n, None)  # never stored: no host sees it
            else:
                self.stored_any[int(ack["seq"])] = key
                self.subjects[int(ack["seq"])] = m.subject
                if m.expect_bad:
                    self.stored[int(ack["seq"])] = key
        elif subject.startswith(REPLY_PREFIX):
            try:
                n = int(subject[len(REPLY_PREFIX) :])
            except ValueError:
                return
            key = self.answerable.get(n)
            if key is None:
                return
            if n not in self.answered_n:
                self.answered_n.add(n)
                self.answered[key] += 1
            try:
                rep = orjson.loads(body)
                code = "ok" if rep.get("ok") else str(rep.get("error", {}).get("code"))
            except (orjson.JSONDecodeError, AttributeError):
                code = "unparsable"
            self.reply_codes[code] += 1


@dataclass
class Good:
    """Good traffic: exactly-once increments with known totals, and timed calls."""

    client: Client
    counters: int
    expected: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    results: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    sent: int = 0
    resends: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    inc_ms: list[float] = field(default_factory=list)
    call_ms: list[float] = field(default_factory=list)
    stalls: list[dict[str, Any]] = field(default_factory=list)

    async def increment(self, aid: str, by: int, cmd_id: str) -> None:
        """Re-send with the same id until answered (exactly-once makes that safe)."""
        t0 = time.monotonic()
        ref = self.client.agent("counter", aid)
        for attempt in range(60):
            try:
                value = await ref.request("increment", {"by": by}, command_id=cmd_id, timeout=10.0)
                break
            except Exception as exc:
                self.errors[type(exc).__name__] += 1
                self.resends += 1
                await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
        else:
            raise RuntimeError(f"increment {cmd_id} never answered")
        self.inc_ms.append((time.monotonic() - t0) * 1000)
        self.expected[aid] += by
        self.results[aid].append(int(value))
        self.sent += 1

    async def call(self, aid: str, limit_s: float) -> float:
        """An at-most-once ``get``; a host that does not answer in 5 s is stalled: retry
        until it answers (up to ``limit_s``) and return the stall's length (0 if none)."""
        ref = self.client.agent("counter", aid)
        t0 = time.monotonic()
        while True:
            try:
                await ref.request("get", delivery="at-most-once", timeout=5.0)
                break
            except Exception as exc:
                self.errors[f"call:{type(exc).__name__}"] += 1
                if time.monotonic() - t0 > limit_s:
                    raise RuntimeError(f"host stalled: no answer to a call for {limit_s:.0f}s") from exc
                await asyncio.sleep(0.2)
        elapsed = time.monotonic() - t0
        self.call_ms.append(elapsed * 1000)
        return elapsed if elapsed > 5.0 else 0.0


async def consumers(client: Client, partitions: int) -> list[dict[str, Any]]:
    out = []
    for p in range(partitions):
        try:
            out.append(await js_api(client.nc, f"$JS.API.CONSUMER.INFO.AGT_CMD.p{p}", None, 10))
        except Exception as exc:
            out.append(
                {"missing": str(exc), "num_pending": 0, "num_ack_pending": 0, "num_redelivered": 0, "delivered": {}}
            )
    return out


async def stream_info(client: Client, stream: str, subjects: str | None = None) -> dict[str, Any]:
    body = {"subjects_filter": subjects} if subjects else None
    try:
        return await js_api(client.nc, f"$JS.API.STREAM.INFO.{stream}", body, 10)
    except Exception as exc:
        return {"missing": str(exc), "state": {}}


def subject_count(info: dict[str, Any], subject: str) -> int:
    return int((info.get("state", {}).get("subjects") or {}).get(subject, 0))


async def read_dead_letters(client: Client) -> tuple[list[dict[str, Any]], int, int]:
    """Every message of AGT_DLQ (parsed), the largest size in bytes, and how many are not
    dead letters at all (forged by a reply, say)."""
    js = client.nc.jetstream(timeout=30)
    info = await stream_info(client, "AGT_DLQ")
    total = int(info.get("state", {}).get("messages", 0))
    out: list[dict[str, Any]] = []
    biggest = 0
    forged = 0
    if not total:
        return out, 0, 0
    cfg = ConsumerConfig(ack_policy=AckPolicy.NONE, max_ack_pending=-1)
    sub = await js.pull_subscribe("agt.dlq.>", durable=None, stream="AGT_DLQ", config=cfg)
    try:
        got = 0
        while got < total:
            try:
                msgs = await sub.fetch(512, timeout=10)
            except Exception:
                break
            for m in msgs:
                got += 1
                biggest = max(biggest, len(m.data))
                try:
                    dl = orjson.loads(m.data)
                except orjson.JSONDecodeError:
                    dl = None
                if not isinstance(dl, dict) or "error" not in dl or "subject" not in dl:
                    forged += 1
                    continue
                dl["_subject"] = m.subject
                out.append({k: dl.get(k) for k in ("error", "subject", "stream_seq", "deliveries", "_subject")})
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return out, biggest, forged


class Sender:
    """The raw connection for the fuzz messages, reopened when the server closes it."""

    def __init__(self, url: str, tally: Tally) -> None:
        self.url = url
        self.tally = tally
        self.raw: RawNats | None = None
        self.gen = 0  # the raw connection's generation: replies due on a lost one never arrive

    async def open(self) -> RawNats:
        if self.raw is None or self.raw.closed:
            if self.raw is not None:
                self.tally.lost_conns.add(self.gen)
                self.gen += 1
                self.tally.raw_reconnects += 1
                self.tally.raw_errors.append(self.raw.last_err)
                await self.raw.close()
            self.raw = await RawNats(self.url, self.tally.on_msg).connect()
            self.raw.sub(ACK_PREFIX + b">", 1)
            self.raw.sub(REPLY_PREFIX + b">", 2)
            await self.raw.ping()
        return self.raw

    async def isolated(self, m: FuzzMsg) -> None:
        """A message the server closes the connection for, on a connection of its own."""
        raw = await RawNats(self.url, name="fuzz-isolated").connect()
        try:
            raw.write(m.encode())
            await raw.ping(5)
        except (RawClosed, OSError, TimeoutError):
            self.tally.server_closed[f"{m.kind}/{m.channel}"] += 1
        finally:
            await raw.close()

    async def batch(self, msgs: list[FuzzMsg]) -> None:
        raw = await self.open()
        for m in msgs:
            key = f"{m.kind}/{m.channel}"
            self.tally.sent[key] += 1
            if m.isolate:
                await self.isolated(m)
                continue
            if m.answerable:
                self.tally.answerable[m.n] = key
                self.tally.conn_of[m.n] = self.gen
            if m.channel == "cmd":
                self.tally.msgs[m.n] = m
            elif m.expect_bad:
                self.tally.bad_calls += 1
            try:
                raw.write(m.encode())
            except RawClosed:
                raw = await self.open()
                raw.write(m.encode())
            if raw.writer is not None and raw.writer.transport.get_write_buffer_size() > 4 * 1024 * 1024:
                await raw.writer.drain()
        try:
            await raw.ping(30)
        except (RawClosed, OSError, TimeoutError) as exc:
            self.tally.raw_errors.append(f"batch ping: {exc}")
            await self.open()


async def wait_backlog(client: Client, limit: int, timeout_s: float) -> float:
    """Wait while AGT_CMD holds more than ``limit`` commands; seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        info = await stream_info(client, "AGT_CMD")
        if int(info.get("state", {}).get("messages", 0)) <= limit:
            break
        await asyncio.sleep(0.2)
    return time.monotonic() - t0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    kinds = [k for k in (args.kinds or KINDS) if k not in (args.exclude or [])]
    work = Path(tempfile.mkdtemp(prefix="fuzz-"))
    server: NatsServer | None = None
    host: HostProc | None = None
    url = args.nats_url
    report: dict[str, Any] = {
        "seed": args.seed,
        "count": args.count,
        "kinds": kinds,
        "partitions": args.partitions,
        "max_payload_bytes": args.max_payload,
        "plan_digest": plan_digest(args.seed, args.count, kinds, args.max_payload),
        "work_dir": str(work),
    }
    t_start = time.monotonic()
    try:
        if url is None:
            server = NatsServer(data_dir=work / "nats", log_file=work / "nats.log")
            server.start()
            url = server.url
            env = {
                "JETAGENTS_PARTITIONS": str(args.partitions),
                "JETAGENTS_MAX_PAYLOAD_BYTES": str(args.max_payload),
                "JETAGENTS_LOG_LEVEL": "WARNING",
            }
            host = HostProc(url, work, "fuzz-host", env)
            log(f"nats-server {url}, host pid {host.pid}, work dir {work}")
        settings = ClientSettings(nats_url=url, max_payload_bytes=args.max_payload, request_timeout_s=10)
        client = await Client.connect(settings=settings)
        try:
            if host is not None:
                await wait_ready(client, [host], probe_ids(args.partitions, 1), timeout_s=90)
            try:
                report.update(await fuzz(args, client, url, kinds, host, t_start))
            except Exception as exc:  # the run could not finish: a failure, reported as such
                report["aborted"] = f"{type(exc).__name__}: {exc}"
                report["ok"] = False
                log(f"ABORTED: {report['aborted']}")
        finally:
            await client.close()
    finally:
        if host is not None:
            report["host_exit_code_at_stop"] = host.proc.poll()
            host.stop()
            report["host_log_tail"] = host.tail(20)
        if server is not None:
            server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return report


def host_log_counts(host: HostProc | None) -> dict[str, int]:
    if host is None:
        return {}
    text = host.log_path.read_text(errors="replace")
    words = ["nats_disconnected", "nats_reconnected", "dead_letter_failed", "Traceback", "slow consumer"]
    words += ["nats_error", "partition_start_failed", "Exception", "error"]
    counts: dict[str, Any] = {w: text.count(w) for w in words}
    # the last line of each traceback: what failed, most frequent first
    last_lines: Counter[str] = Counter()
    for line in text.splitlines():
        if "Traceback" in line:
            try:
                exc = str(orjson.loads(line).get("exception", ""))
            except orjson.JSONDecodeError:
                continue
            last_lines[exc.strip().splitlines()[-1][:160] if exc.strip() else "?"] += 1
    counts["exceptions"] = dict(last_lines.most_common(10))
    return counts


async def fuzz(
    args: argparse.Namespace, client: Client, url: str, kinds: list[str], host: HostProc | None, t_start: float
) -> dict[str, Any]:
    tally = Tally()
    good = Good(client, args.counters)
    good_rng = random.Random(f"{args.seed}-good")
    # the victim: a counter with a log and a snapshot that nothing may touch
    victim = client.agent("counter", VICTIM_ID)
    for i in range(VICTIM_COMMITS):
        await victim.request("increment", {"by": 1}, command_id=f"victim-{i}")
    await asyncio.sleep(0.5)
    snap_kv = await client.nc.jetstream().key_value("agt_snap")
    victim_snap_before = await snap_kv.get("counter.victim")
    evt_before = await stream_info(client, "AGT_EVT", "agt.evt.counter.victim")
    victim_log_before = subject_count(evt_before, "agt.evt.counter.victim")
    evt_first_before = int(evt_before["state"].get("first_seq", 0))
    crashes = 0
    host_restarts: list[dict[str, Any]] = []
    rss_before = host.rss_kib() if host else 0
    log(f"host RSS before: {rss_before / 1024:.1f} MiB; sending {args.count} messages of {len(kinds)} kinds")

    sender = Sender(url, tally)
    await sender.open()
    batch: list[FuzzMsg] = []
    n_batches = 0
    backlog_wait_s = 0.0
    t_fuzz = time.monotonic()
    last_log = t_fuzz

    async def flush(batch: list[FuzzMsg]) -> None:
        nonlocal n_batches, crashes, backlog_wait_s
        n_batches += 1
        picks = good_rng.sample(range(args.counters), k=min(args.counters, max(1, len(batch) // args.good_every)))
        incs = [
            asyncio.create_task(good.increment(f"good{c}", good_rng.randrange(1, 10), f"g{n_batches}-{c}"))
            for c in picks
        ]
        await sender.batch(batch)
        stall = await good.call(f"good{good_rng.randrange(args.counters)}", args.stall_limit_s)
        await asyncio.gather(*incs)
        if stall:
            kinds_in = sorted({f"{m.kind}/{m.channel}" for m in batch})
            good.stalls.append({"batch": n_batches, "stall_s": round(stall, 1), "kinds": kinds_in})
            log(f"host stalled {stall:.1f}s after batch {n_batches}")
        if host is not None and not host.alive():
            crashes += 1
            host_restarts.append({"batch": n_batches, "exit_code": host.proc.returncode, "tail": host.tail(30)})
            log(f"HOST CRASHED (exit {host.proc.returncode}); restarting it")
            host.__init__(host.env["JETAGENTS_NATS_URL"], host.log_path.parent, host.name, host.env)  # type: ignore[misc]
            await wait_ready(client, [host], probe_ids(args.partitions, 1), timeout_s=90)
        if n_batches % 5 == 0:
            backlog_wait_s += await wait_backlog(client, args.backlog, 120)

    for m in plan(args.seed, args.count, kinds, args.max_payload):
        batch.append(m)
        if len(batch) >= args.batch:
            await flush(batch)
            batch = []
            if time.monotonic() - last_log > 10:
                last_log = time.monotonic()
                done = sum(tally.sent.values())
                rate = done / (last_log - t_fuzz)
                rss_mib = host.rss_kib() / 1024 if host else 0
                log(f"{done} sent ({rate:.0f}/s), {good.sent} good increments, RSS {rss_mib:.0f} MiB")
    if batch:
        await flush(batch)
    send_s = time.monotonic() - t_fuzz
    log(f"all {sum(tally.sent.values())} sent in {send_s:.0f}s; waiting for the command stream to drain")

    # -- settle: the command stream drains, then nothing moves for a quiet period ---------------
    t_settle = time.monotonic()
    drained = False
    while time.monotonic() - t_settle < args.settle_s:
        info = await stream_info(client, "AGT_CMD")
        cons = await consumers(client, args.partitions)
        if int(info.get("state", {}).get("messages", 0)) == 0 and not any(c["num_ack_pending"] for c in cons):
            drained = True
            break
        await asyncio.sleep(0.5)
    drain_s = time.monotonic() - t_settle
    cons_a = await consumers(client, args.partitions)
    await asyncio.sleep(args.quiet_s)
    cons_b = await consumers(client, args.partitions)
    cmd_info = await stream_info(client, "AGT_CMD")

    def delivered(cs: list[dict[str, Any]]) -> int:
        return sum(int((c.get("delivered") or {}).get("consumer_seq", 0)) for c in cs)

    moving = delivered(cons_b) - delivered(cons_a)
    left = int(cmd_info.get("state", {}).get("messages", 0))
    left_kinds: Counter[str] = Counter()
    left_samples: list[str] = []
    if left:
        first, last = int(cmd_info["state"]["first_seq"]), int(cmd_info["state"]["last_seq"])
        for seq, key in tally.stored_any.items():
            if first <= seq <= last:
                with contextlib.suppress(Exception):
                    await client.nc.jetstream().get_msg("AGT_CMD", seq)
                    left_kinds[key] += 1
                    if len(left_samples) < 20:
                        left_samples.append(f"{key} {tally.subjects.get(seq, b'')[:60]!r}")
    redelivered_now = sum(int(c.get("num_redelivered", 0)) for c in cons_b)
    ack_pending_now = sum(int(c.get("num_ack_pending", 0)) for c in cons_b)
    missing_consumers = [p for p, c in enumerate(cons_b) if "missing" in c]
    # calls answered: give the last replies a moment (they were sent before the quiet period)
    rss_after = host.rss_kib() if host else 0

    # -- dead letters -------------------------------------------------------------------------
    dls, biggest_dl, forged = await read_dead_letters(client)
    dl_by_seq: Counter[int] = Counter()
    dl_calls = 0
    dl_codes: Counter[str] = Counter()
    for d in dls:
        dl_codes[str((d.get("error") or {}).get("code"))] += 1
        if d.get("deliveries") is None:
            dl_calls += 1
        elif d.get("stream_seq"):
            dl_by_seq[int(d["stream_seq"])] += 1
    missing_dl: Counter[str] = Counter()
    missing_samples: Counter[str] = Counter()
    for seq, key in tally.stored.items():
        if dl_by_seq[seq] == 0:
            missing_dl[key] += 1
            missing_samples[f"{key} {tally.subjects.get(seq, b'')[:60]!r}"] += 1
    twice = {seq: c for seq, c in dl_by_seq.items() if c > 1}
    twice_kinds = Counter(tally.stored_any.get(s, "?") for s in twice)
    dl_durable_kinds: Counter[str] = Counter(tally.stored_any.get(s, "good/victim") for s in dl_by_seq)

    # -- good commands exact -------------------------------------------------------------------
    inexact: dict[str, Any] = {}
    for i in range(args.counters):
        aid = f"good{i}"
        value = await client.agent("counter", aid).request("get", delivery="at-most-once", timeout=30)
        want = good.expected.get(aid, 0)
        running, ok_seq = 0, True
        # one command per counter in flight at a time: each reply is the running total
        steps = good.results.get(aid, [])
        if steps and any(b <= a for a, b in itertools.pairwise(steps)):
            ok_seq = False
        running = steps[-1] if steps else 0
        if value != want or running != want or not ok_seq:
            inexact[aid] = {"value": value, "expected": want, "last_reply": running, "monotonic": ok_seq}

    # -- the victim ------------------------------------------------------------------------------
    evt_after = await stream_info(client, "AGT_EVT", "agt.evt.counter.victim")
    victim_log_after = subject_count(evt_after, "agt.evt.counter.victim")
    victim_value: Any
    try:
        victim_value = await victim.request("get", delivery="at-most-once", timeout=30)
    except Exception as exc:
        victim_value = f"{type(exc).__name__}: {exc}"
    try:
        snap_after = await snap_kv.get("counter.victim")
        snap_changed = snap_after.revision != (victim_snap_before.revision if victim_snap_before else None)
    except Exception:
        snap_changed = victim_snap_before is not None
    meta_kv = await client.nc.jetstream().key_value("agt_meta")
    try:
        await meta_kv.get("counter.victim")
        meta_written = True
    except Exception:
        meta_written = False
    dlq_info = await stream_info(client, "AGT_DLQ", "agt.dlq.counter.victim")
    victim_forged_dls = subject_count(dlq_info, "agt.dlq.counter.victim")
    evt_first_after = int(evt_after.get("state", {}).get("first_seq", 0))
    victim = {
        "value": victim_value,
        "expected": VICTIM_COMMITS,
        "log_before": victim_log_before,
        "log_after": victim_log_after,
        "snapshot_overwritten": snap_changed,
        "meta_written": meta_written,
        "forged_dead_letters": victim_forged_dls,
        "evt_stream_purged_or_deleted": "missing" in evt_after or evt_first_after != evt_first_before,
        "dlq_stream_missing": "missing" in dlq_info,
    }
    victim_ok = (
        victim_value == VICTIM_COMMITS
        and victim_log_after == victim_log_before
        and not snap_changed
        and not meta_written
        and victim_forged_dls == 0
        and not victim["evt_stream_purged_or_deleted"]
        and not victim["dlq_stream_missing"]
    )

    # -- calls and durable commands with our inbox that were never answered -----------------------
    unanswered: Counter[str] = Counter()
    for n in tally.msgs:  # no PubAck: the subject matched no stream, no host saw it
        tally.answerable.pop(n, None)
    unanswered_samples: list[str] = []
    lost_with_conn: Counter[str] = Counter()
    for n, key in tally.answerable.items():
        if n not in tally.answered_n and tally.conn_of.get(n) in tally.lost_conns:
            # its reply was due on the fuzzer's own raw connection, which the server closed
            # (a slow consumer of the replies, or a message the server refuses): unknowable
            lost_with_conn[key] += 1
        elif n not in tally.answered_n:
            unanswered[key] += 1
            if len(unanswered_samples) < 20:
                unanswered_samples.append(f"{key} #{n}")

    bad_durable_stored = len(tally.stored)
    invariants = {
        "host_crashes == 0": crashes == 0,
        "command stream drained (nothing stuck or looping)": drained and left == 0,
        "no redelivery during the quiet period": moving == 0 and ack_pending_now == 0,
        "every stored bad durable command dead-lettered": sum(missing_dl.values()) == 0,
        "no command dead-lettered twice": not twice,
        "good increments exact": not inexact,
        "victim untouched": victim_ok,
        "every call/command with a reply subject answered": sum(unanswered.values()) == 0,
        "partition consumers intact": not missing_consumers,
    }
    total_s = time.monotonic() - t_start
    return {
        "sent": sum(tally.sent.values()),
        "sent_by_kind": dict(sorted(tally.sent.items())),
        "send_s": round(send_s, 1),
        "total_s": round(total_s, 1),
        "batches": n_batches,
        "backlog_wait_s": round(backlog_wait_s, 1),
        "server_closed_connection": dict(tally.server_closed),
        "raw_reconnects": tally.raw_reconnects,
        "raw_errors": tally.raw_errors[:20],
        "durable": {
            "stored": len(tally.stored_any),
            "bad_stored": bad_durable_stored,
            "refused_by_stream": dict(tally.pub_refused),
            "deduplicated": dict(tally.pub_dup),
            "no_puback": len(tally.msgs),
            "no_puback_by_kind": dict(Counter(f"{m.kind}/{m.channel}" for m in tally.msgs.values())),
        },
        "dead_letters": {
            "total": len(dls) + forged,
            "of_durable_commands": sum(dl_by_seq.values()),
            "distinct_durable_commands": len(dl_by_seq),
            "durable_by_kind": dict(sorted(dl_durable_kinds.items())),
            "of_calls": dl_calls,
            "calls_sent": sum(v for k, v in tally.sent.items() if k.endswith("/call")),
            "bad_calls_sent": tally.bad_calls,
            "max_size_bytes": biggest_dl,
            "not_dead_letters": forged,
            "codes": dict(dl_codes.most_common()),
            "missing_by_kind": dict(missing_dl),
            "missing_samples": dict(missing_samples.most_common(20)),
            "twice": len(twice),
            "twice_by_kind": dict(twice_kinds),
        },
        "replies": {
            "answerable": len(tally.answerable),
            "answered": len(tally.answered_n.intersection(tally.answerable)),
            "unanswered_by_kind": dict(sorted(unanswered.items())),
            "unanswered_samples": unanswered_samples,
            "unknowable_connection_lost": sum(lost_with_conn.values()),
            "codes": dict(tally.reply_codes.most_common()),
        },
        "redelivery": {
            "drained": drained,
            "drain_s": round(drain_s, 1),
            "quiet_s": args.quiet_s,
            "deliveries_during_quiet": moving,
            "num_redelivered": redelivered_now,
            "num_ack_pending": ack_pending_now,
            "left_in_stream": left,
            "left_by_kind": dict(left_kinds),
            "left_samples": left_samples,
            "missing_consumers": missing_consumers,
        },
        "host": {
            "crashes": crashes,
            "restarts": host_restarts,
            "rss_before_mib": round(rss_before / 1024, 1),
            "rss_after_mib": round(rss_after / 1024, 1),
            "log_counts": host_log_counts(host),
        },
        "stalls": {
            "count": len(good.stalls),
            "total_s": round(sum(s["stall_s"] for s in good.stalls), 1),
            "suspect_kinds": sorted(set.intersection(*(set(s["kinds"]) for s in good.stalls))) if good.stalls else [],
            "list": good.stalls[:50],
        },
        "good": {
            "increments": good.sent,
            "resends": good.resends,
            "errors": dict(good.errors),
            "counters": args.counters,
            "inexact": inexact,
            "increment_ms_p50": round(pct(sorted(good.inc_ms), 50), 1),
            "increment_ms_p99": round(pct(sorted(good.inc_ms), 99), 1),
            "calls": len(good.call_ms),
            "call_ms_p50": round(pct(sorted(good.call_ms), 50), 1),
            "call_ms_p99": round(pct(sorted(good.call_ms), 99), 1),
        },
        "victim": victim,
        "invariants": invariants,
        "ok": all(invariants.values()),
    }


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# jetagents fuzz report",
        "",
        f"seed {r['seed']}, {r['sent']:,} messages (plan {r['plan_digest']}), {r['total_s']} s in all "
        f"({r['send_s']} s sending), {r['partitions']} partitions, max payload {r['max_payload_bytes']:,} bytes",
        "",
        "## Invariants",
        "",
        *[f"* {'PASS' if ok else '**FAIL**'}: {name}" for name, ok in r["invariants"].items()],
        "",
        "## Sent per kind",
        "",
        "| kind/channel | sent |",
        "|---|---:|",
        *[f"| {k} | {v:,} |" for k, v in r["sent_by_kind"].items()],
        "",
        "## Figures",
        "",
        "```",
        orjson.dumps(
            {k: r[k] for k in ("durable", "dead_letters", "replies", "redelivery", "host", "stalls", "good", "victim")},
            option=orjson.OPT_INDENT_2,
        ).decode(),
        "```",
        "",
    ]
    return "\n".join(lines)


def summary(r: dict[str, Any]) -> str:
    d, h, g, red = r["dead_letters"], r["host"], r["good"], r["redelivery"]
    out = [
        f"sent {r['sent']:,} malformed messages of {len(r['kinds'])} kinds in {r['send_s']} s ({r['total_s']} s total)",
        f"host crashes: {h['crashes']}; RSS {h['rss_before_mib']} -> {h['rss_after_mib']} MiB",
        f"durable: {r['durable']['stored']:,} stored ({r['durable']['bad_stored']:,} bad); dead letters: "
        f"{d['distinct_durable_commands']:,} durable + {d['of_calls']:,} calls, max {d['max_size_bytes']:,} bytes, "
        f"missing {sum(d['missing_by_kind'].values())}, twice {d['twice']}",
        f"redelivery: drained={red['drained']}, deliveries in quiet {red['deliveries_during_quiet']}, "
        f"left {red['left_in_stream']}",
        f"replies: {r['replies']['answered']:,}/{r['replies']['answerable']:,} answered"
        f" ({r['replies']['unknowable_connection_lost']:,} due on a raw connection the server closed)"
        + (
            f"; unanswered {r['replies']['unanswered_by_kind']} e.g. {r['replies']['unanswered_samples'][:5]}"
            if r["replies"]["unanswered_by_kind"]
            else ""
        ),
        f"stalls: {r['stalls']['count']} ({r['stalls']['total_s']} s), suspects {r['stalls']['suspect_kinds']}",
        f"good: {g['increments']:,} exactly-once increments, {len(g['inexact'])} counters inexact; "
        f"calls p50 {g['call_ms_p50']} ms p99 {g['call_ms_p99']} ms",
        f"victim: {r['victim']}",
    ]
    out += [f"{'PASS' if ok else 'FAIL'}: {name}" for name, ok in r["invariants"].items()]
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=200_000, help="malformed messages to send")
    p.add_argument("--quick", action="store_true", help="20,000 messages")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--kinds", nargs="+", choices=KINDS, help="only these kinds")
    p.add_argument("--exclude", nargs="+", choices=KINDS, default=[], help="all kinds but these")
    p.add_argument("--nats-url", help="fuzz an existing cluster (its host(s) already running) instead")
    p.add_argument("--partitions", type=int, default=64)
    p.add_argument("--max-payload", type=int, default=256 * 1024, help="the host's JETAGENTS_MAX_PAYLOAD_BYTES")
    p.add_argument("--batch", type=int, default=500, help="malformed messages between two good rounds")
    p.add_argument("--good-every", type=int, default=25, help="one good increment per this many malformed")
    p.add_argument("--counters", type=int, default=32, help="counters that receive the good increments")
    p.add_argument("--backlog", type=int, default=4000, help="pause while AGT_CMD holds more than this")
    p.add_argument("--settle-s", type=float, default=120.0, help="wait this long for the command stream to drain")
    p.add_argument("--quiet-s", type=float, default=12.0, help="then watch the consumers for this long")
    p.add_argument("--stall-limit-s", type=float, default=600.0, help="abort when the host answers no call this long")
    p.add_argument("--out", type=Path, help="report directory (default loadtests/out/fuzz-<time>)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (host log, server store)")
    p.add_argument("--plan-only", action="store_true", help="print the plan's digest and exit")
    args = p.parse_args(argv)
    if args.quick:
        args.count = 20_000
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plan_only:
        kinds = [k for k in (args.kinds or KINDS) if k not in args.exclude]
        print(plan_digest(args.seed, args.count, kinds, args.max_payload))
        return 0
    report = asyncio.run(run(args))
    out = args.out or HERE / "out" / f"fuzz-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    if "aborted" in report:
        print(f"ABORTED: {report['aborted']}\n{report.get('host_log_tail', '')}")
        return 1
    (out / "report.md").write_text(markdown(report))
    print(summary(report))
    print(f"report: {out}/report.md")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
