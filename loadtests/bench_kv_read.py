"""One KV key read N times through each way the adapter has read KV entries, against a real
nats-server (and, with ``--cluster``, an R3 bucket on a 3-node cluster), back to back in
rounds so drift hits every way alike. Prints the median and p99 latency, the client's CPU
per read, and each way's ratio to the hand-written leader read (``STREAM.MSG.GET``).

    python loadtests/bench_kv_read.py                 # 5,000 reads per way, one server
    python loadtests/bench_kv_read.py --cluster       # and the same on an R3 bucket
    python loadtests/bench_kv_read.py --reads 500     # quicker

The ways (the host reads a snapshot and the agent's metadata on every activation):

* ``msg_get``: ``_nats.kv.last_by_subject``, ``$JS.API.STREAM.MSG.GET`` on the shared inbox,
  answered by the stream leader (linearizable per key);
* ``nats-py kv``: nats-py's ``KeyValue.get`` on a bucket without ``allow_direct`` (as the
  snapshot and metadata buckets are made: the same ``STREAM.MSG.GET``, nats-py's code);
* ``direct``: ``$JS.API.DIRECT.GET.<stream>.<subject>`` on the shared inbox (any replica
  answers: a lagging one may answer an older value);
* ``nats-py kv direct``: nats-py's ``KeyValue.get`` on a bucket with ``allow_direct``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from jetagents._nats.api import DirectReader, connect, ensure_stream, kv_bucket_config
from jetagents._nats.kv import kv_subject, last_by_subject, publish_expecting
from jetagents.testing.server import NatsCluster, NatsServer

VALUE = b'{"state": {"n": 41, "names": ["a", "b", "c"]}, "seq": 1234}' * 8  # ~0.5 KiB, a small snapshot


async def _measure(url: str, replicas: int, reads: int, rounds: int) -> dict[str, dict[str, float]]:
    nc = await connect(url, name="bench-kv-read")
    try:
        plain, direct = "bkr_plain", "bkr_direct"
        await ensure_stream(nc, kv_bucket_config(plain, replicas), 20.0)
        await ensure_stream(nc, {**kv_bucket_config(direct, replicas), "allow_direct": True}, 20.0)
        for bucket in (plain, direct):
            await publish_expecting(nc, kv_subject(bucket, "agent.a1"), VALUE, 10.0)
        js = nc.jetstream(timeout=10.0)
        kv_plain, kv_direct = await js.key_value(plain), await js.key_value(direct)
        reader = DirectReader(nc)
        await reader.start()

        async def ours_msg_get() -> bytes:
            e = await last_by_subject(nc, f"KV_{plain}", kv_subject(plain, "agent.a1"), 10.0)
            assert e is not None
            return e.data

        async def ours_direct() -> bytes:
            m = await reader.last(f"KV_{direct}", kv_subject(direct, "agent.a1"), 10.0)
            assert m is not None
            return bytes(m.data)

        async def natspy_plain() -> bytes:
            return (await kv_plain.get("agent.a1")).value or b""

        async def natspy_direct() -> bytes:
            return (await kv_direct.get("agent.a1")).value or b""

        ways: dict[str, Callable[[], Awaitable[bytes]]] = {
            "msg_get": ours_msg_get,
            "nats-py kv": natspy_plain,
            "direct": ours_direct,
            "nats-py kv direct": natspy_direct,
        }
        lat: dict[str, list[int]] = {w: [] for w in ways}
        cpu: dict[str, float] = dict.fromkeys(ways, 0.0)
        for fn in ways.values():  # warm up (inbox subscriptions, caches)
            for _ in range(50):
                assert await fn() == VALUE
        per_round = max(1, reads // rounds)
        for r in range(rounds):
            order = list(ways) if r % 2 == 0 else list(reversed(ways))
            for w in order:
                fn = ways[w]
                c0 = time.process_time()
                for _ in range(per_round):
                    t0 = time.perf_counter_ns()
                    await fn()
                    lat[w].append(time.perf_counter_ns() - t0)
                cpu[w] += time.process_time() - c0
        out: dict[str, dict[str, float]] = {}
        for w, xs in lat.items():
            xs.sort()
            out[w] = {
                "median_us": statistics.median(xs) / 1000,
                "p99_us": xs[int(len(xs) * 0.99) - 1] / 1000,
                "cpu_us": cpu[w] / len(xs) * 1e6,
                "n": len(xs),
            }
        return out
    finally:
        await nc.close()


def _print(title: str, res: dict[str, dict[str, float]]) -> None:
    base = res["msg_get"]
    print(f"\n{title}")
    print(f"{'way':<20}{'reads':>7}{'median us':>11}{'p99 us':>9}{'client cpu us':>15}{'median/msg_get':>16}")
    for w, r in res.items():
        print(
            f"{w:<20}{int(r['n']):>7}{r['median_us']:>11.0f}{r['p99_us']:>9.0f}{r['cpu_us']:>15.0f}"
            f"{r['median_us'] / base['median_us']:>16.2f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reads", type=int, default=5000, help="reads per way")
    ap.add_argument("--rounds", type=int, default=10, help="rounds the reads are split in, ways alternating")
    ap.add_argument("--cluster", action="store_true", help="also an R3 bucket on a 3-node cluster")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-kv-read-"))
    with NatsServer(data_dir=work / "single", name="bench-kv-read") as srv:
        _print("one server, R1 bucket", asyncio.run(_measure(srv.url, 1, args.reads, args.rounds)))
    if args.cluster:
        with NatsCluster(data_dir=work / "cluster", name="bkr") as cl:
            _print("3-node cluster, R3 bucket", asyncio.run(_measure(cl.url, 3, args.reads, args.rounds)))


if __name__ == "__main__":
    main()
