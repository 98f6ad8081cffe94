"""The bare nats-py floor responder for ``bench_delivery.py`` (run as a separate process).

It does, with plain nats-py and nothing else, the minimum NATS work each delivery mode
needs, so the benchmark can compare jetagents against it:

* at-most-once  -- core request/reply: a queue subscription on ``FLOOR.call.<agent>``
  answers every request.
* at-least-once -- commands are stored in the work-queue stream ``FLOOR_CMD`` (file
  storage) under ``FLOOR.cmd.alo.<agent>`` with the reply inbox in a header; this process
  pulls them with a raw ``$JS.API.CONSUMER.MSG.NEXT`` credit loop (the same algorithm as
  the jetagents host: keep ``--batch`` messages requested, ask again when less than half
  is left, never more than ``--max-inflight`` unfinished), replies on core NATS to the
  inbox from the header, then acks (``+ACK``).
* exactly-once  -- the same under ``FLOOR.cmd.eo.<agent>`` (the client adds
  ``Nats-Msg-Id``), and before replying it appends one event to ``FLOOR_EVT`` (file
  storage) under ``FLOOR.evt.<agent>`` with ``Nats-Expected-Last-Subject-Sequence`` set to
  the last sequence of that subject, kept in memory and updated from each PubAck.

``--partitions N`` adds the same durable pattern spread over N consumers, as a jetagents
host spreads commands over one consumer per partition: subjects
``FLOOR.pcmd.<p>.<alo|eo>.<agent>``, consumer ``floor-p<p>`` filtering ``FLOOR.pcmd.<p>.>``,
one credit loop per consumer, p chosen by the client (``floor_partition``, the same hash
jetagents uses). It shows what the server's per-consumer work costs on its own.

It creates its streams and consumers, then writes ``--ready-file``. SIGTERM/SIGINT stop it;
on exit it prints its counters (and any errors) to stderr.

    python loadtests/_floor_responder.py --url nats://127.0.0.1:4222 --ready-file /tmp/r
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import signal
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import nats
import orjson
from nats.aio.msg import Msg

NS = 1_000_000_000
CMD_STREAM = "FLOOR_CMD"
EVT_STREAM = "FLOOR_EVT"
CONSUMER = "floor"
CALL_SUBJECTS = "FLOOR.call.*"
CMD_SUBJECTS = "FLOOR.cmd.>"
PCMD_PREFIX = "FLOOR.pcmd."
EVT_PREFIX = "FLOOR.evt."
REPLY_HEADER = "Floor-Reply-To"
ERR_STREAM_NOT_FOUND = 10059
ERR_WRONG_LAST_SEQUENCE = 10071


async def js_api(nc: Any, subject: str, payload: dict[str, Any] | None, timeout: float = 5.0) -> dict[str, Any]:
    msg = await nc.request(subject, orjson.dumps(payload) if payload is not None else b"", timeout=timeout)
    resp: dict[str, Any] = orjson.loads(msg.data)
    return resp


async def ensure_topology(nc: Any, args: argparse.Namespace) -> None:
    dup_ns = int(120 * NS)
    streams = [
        {
            "name": CMD_STREAM,
            "subjects": [CMD_SUBJECTS, PCMD_PREFIX + ">"],
            "retention": "workqueue",
            "storage": "file",
            "num_replicas": 1,
            "duplicate_window": dup_ns,
            "discard": "old",
        },
        {
            "name": EVT_STREAM,
            "subjects": [EVT_PREFIX + "*"],
            "retention": "limits",
            "storage": "file",
            "num_replicas": 1,
            "duplicate_window": dup_ns,
        },
    ]
    for cfg in streams:
        name = cfg["name"]
        info = await js_api(nc, f"$JS.API.STREAM.INFO.{name}", None)
        if "error" in info:
            if info["error"].get("err_code") != ERR_STREAM_NOT_FOUND:
                raise RuntimeError(f"stream info {name}: {info['error']}")
            created = await js_api(nc, f"$JS.API.STREAM.CREATE.{name}", cfg)
            if "error" in created:
                raise RuntimeError(f"stream create {name}: {created['error']}")
    for name, filt in consumers(args.partitions):
        consumer = {
            "durable_name": name,
            "filter_subject": filt,
            "ack_policy": "explicit",
            "deliver_policy": "all",
            "ack_wait": int(10 * NS),
            "max_deliver": -1,
            "max_ack_pending": args.max_ack_pending,
            "max_waiting": 512,
            "num_replicas": 1,
            # like a jetagents partition consumer (docs/adr/0032)
            "mem_storage": True,
        }
        resp = await js_api(
            nc,
            f"$JS.API.CONSUMER.CREATE.{CMD_STREAM}.{name}",
            {"stream_name": CMD_STREAM, "config": consumer, "action": ""},
        )
        if "error" in resp:
            raise RuntimeError(f"consumer create {name}: {resp['error']}")


def consumers(partitions: int) -> list[tuple[str, str]]:
    """(name, filter subject) of every consumer: the single one, then one per partition."""
    return [(CONSUMER, CMD_SUBJECTS)] + [(f"{CONSUMER}-p{p}", f"{PCMD_PREFIX}{p}.>") for p in range(partitions)]


class Credit:
    """The pull requests of one consumer still open, and how many messages each still owes."""

    def __init__(self, name: str) -> None:
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{CMD_STREAM}.{name}"
        self.requests: OrderedDict[str, list[float]] = OrderedDict()  # token -> [remaining, sent_at]
        self.wake = asyncio.Event()

    def outstanding(self) -> int:
        return int(sum(r[0] for r in self.requests.values()))


class Responder:
    def __init__(self, nc: Any, args: argparse.Namespace) -> None:
        self.nc = nc
        self.batch: int = args.batch
        self.max_inflight: int = args.max_inflight
        self.expires_s: float = args.expires
        self.credits = [Credit(name) for name, _ in consumers(args.partitions)]
        self.ids = itertools.count(1)
        self.inflight = 0
        self.last_seq: dict[str, int] = {}  # event subject -> last stream sequence
        self.values: dict[str, int] = {}  # agent -> counter value (the "state")
        self.tasks: set[asyncio.Task[None]] = set()
        self.stats = {"call": 0, "alo": 0, "eo": 0, "errors": 0, "fenced": 0}
        self.stopping = False
        self.pull_prefix = ""

    # -- at-most-once -------------------------------------------------------------------
    async def on_call(self, msg: Msg) -> None:
        agent = msg.subject.rpartition(".")[2]
        v = self.values.get(agent, 0) + 1
        self.values[agent] = v
        self.stats["call"] += 1
        if msg.reply:
            await self.nc.publish(msg.reply, b'{"ok":true,"result":%d}' % v)

    # -- durable: the credit loop -------------------------------------------------------
    async def pull_loop(self, index: int) -> None:
        credit = self.credits[index]
        expires_ns = int(self.expires_s * NS)
        loop = asyncio.get_running_loop()
        while not self.stopping:
            now = loop.time()
            for token, req in list(credit.requests.items()):
                if now - req[1] > self.expires_s + 2.0:
                    credit.requests.pop(token, None)
            want = self.batch - credit.outstanding()
            room = self.max_inflight - self.inflight
            if want >= max(1, self.batch // 2) and room > 0 and self.nc.is_connected:
                n = min(want, room)
                token = str(next(self.ids))
                credit.requests[token] = [n, now]
                await self.nc.publish(
                    credit.subject,
                    orjson.dumps({"batch": n, "expires": expires_ns}),
                    reply=f"{self.pull_prefix}.{index}.{token}",
                )
                continue
            credit.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await credit.wake.wait()

    async def on_pull_msg(self, msg: Msg) -> None:
        if not msg.reply:  # a status about one of our pull requests (timeout, ...)
            hdrs = msg.headers or {}
            if hdrs.get("Status") == "100":
                return
            _, index, token = msg.subject.rsplit(".", 2)
            credit = self.credits[int(index)]
            credit.requests.pop(token, None)
            credit.wake.set()
            return
        credit = self.credits[int(msg.subject.split(".", 3)[2]) + 1] if msg.subject[6] == "p" else self.credits[0]
        for token, req in credit.requests.items():  # the server fills requests in order
            req[0] -= 1
            if req[0] <= 0:
                del credit.requests[token]
                credit.wake.set()
            break
        self.inflight += 1
        hdrs = msg.headers or {}
        reply_to = hdrs.get(REPLY_HEADER)
        # FLOOR.cmd.<alo|eo>.<agent> or FLOOR.pcmd.<p>.<alo|eo>.<agent>
        tokens = msg.subject.split(".")
        kind, agent = tokens[-2], tokens[-1]
        if kind == "eo":
            task = asyncio.create_task(self.exactly_once(msg, agent, reply_to))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return
        v = self.values.get(agent, 0) + 1
        self.values[agent] = v
        self.stats["alo"] += 1
        await self.finish(msg, reply_to, v)

    async def exactly_once(self, msg: Msg, agent: str, reply_to: str | None) -> None:
        subject = EVT_PREFIX + agent
        try:
            v = self.values.get(agent, 0) + 1
            last = self.last_seq.get(subject, 0)
            ack = await self.nc.request(
                subject,
                b'{"type":"Incremented","data":{"by":1}}',
                timeout=5.0,
                headers={"Nats-Expected-Last-Subject-Sequence": str(last)},
            )
            resp = orjson.loads(ack.data)
            err = resp.get("error")
            if err:
                self.stats["errors"] += 1
                if err.get("err_code") == ERR_WRONG_LAST_SEQUENCE:
                    self.stats["fenced"] += 1
                    self.last_seq.pop(subject, None)
                await self.nc.publish(msg.reply, b"-NAK")
                self.done()
                return
            self.last_seq[subject] = int(resp["seq"])
            self.values[agent] = v
            self.stats["eo"] += 1
            await self.finish(msg, reply_to, v)
        except Exception as exc:
            self.stats["errors"] += 1
            print(f"floor responder: exactly-once failed: {exc!r}", file=sys.stderr)
            with contextlib.suppress(Exception):
                await self.nc.publish(msg.reply, b"-NAK")
            self.done()

    async def finish(self, msg: Msg, reply_to: str | None, value: int) -> None:
        if reply_to:
            await self.nc.publish(reply_to, b'{"ok":true,"result":%d}' % value)
        await self.nc.publish(msg.reply, b"+ACK")
        self.done()

    def done(self) -> None:
        self.inflight -= 1
        for credit in self.credits:
            if credit.outstanding() < self.batch // 2:
                credit.wake.set()


async def main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    nc = await nats.connect(args.url, name="floor-responder", max_reconnect_attempts=-1, reconnect_time_wait=0.25)
    await ensure_topology(nc, args)
    r = Responder(nc, args)
    r.pull_prefix = nc.new_inbox()
    await nc.subscribe(f"{r.pull_prefix}.*.*", cb=r.on_pull_msg, pending_msgs_limit=1_000_000, pending_bytes_limit=-1)
    await nc.subscribe(CALL_SUBJECTS, queue="floor", cb=r.on_call, pending_msgs_limit=1_000_000, pending_bytes_limit=-1)
    pullers = [asyncio.create_task(r.pull_loop(i)) for i in range(len(r.credits))]
    await nc.flush()
    if args.ready_file:
        Path(args.ready_file).write_text(f"{time.time()}\n")
    print("floor responder ready", file=sys.stderr, flush=True)
    await stop.wait()
    r.stopping = True
    for puller in pullers:
        puller.cancel()
    await asyncio.gather(*pullers, return_exceptions=True)
    if r.tasks:
        await asyncio.wait(list(r.tasks), timeout=2)
    with contextlib.suppress(Exception):
        await nc.flush(timeout=2)
    with contextlib.suppress(Exception):
        await nc.close()
    print(f"floor responder stopped: {orjson.dumps(r.stats).decode()}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--ready-file", default="")
    p.add_argument("--partitions", type=int, default=0, help="also serve FLOOR.pcmd over this many consumers")
    p.add_argument("--batch", type=int, default=64, help="pull batch (credits), like JETAGENTS_PULL_BATCH")
    p.add_argument("--max-inflight", type=int, default=1024, help="like JETAGENTS_MAX_INFLIGHT")
    p.add_argument("--max-ack-pending", type=int, default=1024, help="like JETAGENTS_MAX_ACK_PENDING")
    p.add_argument("--expires", type=float, default=5.0, help="pull request expiry (s), like JETAGENTS_PULL_EXPIRES_S")
    p.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    return p.parse_args(argv)


if __name__ == "__main__":
    a = parse_args()
    if a.loop == "uvloop":
        import uvloop

        uvloop.run(main(a))
    else:
        asyncio.run(main(a))
