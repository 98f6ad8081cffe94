"""CPU profile of the nats-server under the jetagents exactly-once load, without Go tools.

    python loadtests/server_profile.py [--partitions 64] [--seconds 10] [--inflight 256]

Starts a nats-server with ``prof_port`` (Go's pprof over HTTP), one agent host with the
given partition count, and ``--inflight`` closed-loop workers sending exactly-once
``increment`` commands to as many counter agents; after 3 s of warm-up it fetches a CPU
profile of the server and prints the server CPU per command and the functions with the
largest cumulative share. The profile (``profile.proto``, gzipped) is decoded here by a
minimal protobuf reader, since this machine has no ``go tool pprof``; ``--save`` keeps it.

This is how the cost of many partitions was found (loadtests/results/full/NOTES.md):
compare ``--partitions 1`` with ``--partitions 64``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gzip
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import bench_delivery as bd
from jetagents import Client, ClientSettings, NatsServer
from jetagents.testing.server import free_port


def _varint(b: bytes, i: int) -> tuple[int, int]:
    r = s = 0
    while True:
        x = b[i]
        i += 1
        r |= (x & 0x7F) << s
        s += 7
        if x < 0x80:
            return r, i


def _fields(b: bytes) -> Any:
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        f, t = key >> 3, key & 7
        if t == 0:
            v, i = _varint(b, i)
        elif t == 2:
            n, i = _varint(b, i)
            v, i = b[i : i + n], i + n
        elif t == 1:
            v, i = b[i : i + 8], i + 8
        elif t == 5:
            v, i = b[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {t}")
        yield f, t, v


def _packed(v: Any, t: int) -> list[int]:
    if t == 0:
        return [v]
    out, i = [], 0
    while i < len(v):
        x, i = _varint(v, i)
        out.append(x)
    return out


def cumulative(profile_gz: bytes) -> tuple[int, collections.Counter[str]]:
    """Total sampled CPU (ns) and the cumulative CPU (ns) per function name."""
    data = gzip.decompress(profile_gz)
    samples: list[tuple[list[int], list[int]]] = []
    locs: dict[int, list[int]] = {}
    funcs: dict[int, int] = {}
    strings: list[str] = []
    for f, _t, v in _fields(data):
        if f == 2:  # Sample: location ids, values
            ids: list[int] = []
            vals: list[int] = []
            for g, tt, vv in _fields(v):
                if g == 1:
                    ids += _packed(vv, tt)
                elif g == 2:
                    vals += _packed(vv, tt)
            samples.append((ids, vals))
        elif f == 4:  # Location: id, lines (function ids)
            lid, lines = 0, []
            for g, _tt, vv in _fields(v):
                if g == 1:
                    lid = vv
                elif g == 4:
                    lines += [v3 for h, _t3, v3 in _fields(vv) if h == 1]
            locs[lid] = lines
        elif f == 5:  # Function: id, name (string index)
            fid = name = 0
            for g, _tt, vv in _fields(v):
                if g == 1:
                    fid = vv
                elif g == 2:
                    name = vv
            funcs[fid] = name
        elif f == 6:
            strings.append(v.decode())
    cum: collections.Counter[str] = collections.Counter()
    total = 0
    for ids, vals in samples:
        w = vals[-1] if vals else 1
        total += w
        names = {strings[funcs[fid]] for lid in ids for fid in locs.get(lid, [])}
        for n in names:
            cum[n] += w
    return total, cum


async def load_and_profile(url: str, prof_port: int, args: argparse.Namespace) -> tuple[float, bytes]:
    client = await Client.connect(settings=ClientSettings(nats_url=url, request_timeout_s=30))
    for _ in range(100):  # until the host serves
        try:
            await client.agent("counter", "w0").request("increment", {"by": 1})
            break
        except Exception:
            await asyncio.sleep(0.3)
    stop = False
    done = 0

    async def worker(i: int) -> None:
        nonlocal done
        ref = client.agent("counter", f"w{i}")
        while not stop:
            await ref.request("increment", {"by": 1})
            done += 1

    tasks = [asyncio.create_task(worker(i)) for i in range(args.inflight)]
    await asyncio.sleep(3)
    n0, t0 = done, time.monotonic()
    url_prof = f"http://127.0.0.1:{prof_port}/debug/pprof/profile?seconds={args.seconds}"
    data = await asyncio.to_thread(lambda: urllib.request.urlopen(url_prof, timeout=args.seconds + 30).read())
    rate = (done - n0) / (time.monotonic() - t0)
    stop = True
    await asyncio.gather(*tasks, return_exceptions=True)
    await client.close()
    return rate, data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--partitions", type=int, default=64)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--inflight", type=int, default=256)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--save", type=Path, default=None, help="keep the gzipped profile here")
    args = p.parse_args()
    prof_port = free_port()
    procs = bd.Processes(Path(f"/tmp/server-profile-{args.partitions}"))
    procs.work_dir.mkdir(parents=True, exist_ok=True)
    try:
        procs.server = NatsServer(data_dir=procs.work_dir / "nats", name="bench", extra_conf=f"prof_port: {prof_port}")
        procs.server.start()
        procs.start_host(procs.server.url, bd.parse_args(["--partitions", str(args.partitions)]))
        rate, data = asyncio.run(load_and_profile(procs.server.url, prof_port, args))
    finally:
        procs.stop_all()
    if args.save:
        args.save.write_bytes(data)
    total, cum = cumulative(data)
    per_cmd = total / 1e3 / (rate * args.seconds)
    print(f"{args.partitions} partitions: {rate:.0f} exactly-once cmds/s; nats-server {per_cmd:.0f} us CPU per command")
    print("cumulative us per command, server functions:")
    shown = 0
    for name, ns in cum.most_common():
        if "nats-server" in name or name.startswith(("os.", "syscall.")):
            print(f"{ns / 1e3 / (rate * args.seconds):8.0f}  {name[:120]}")
            shown += 1
            if shown >= args.top:
                break


if __name__ == "__main__":
    sys.exit(main())
