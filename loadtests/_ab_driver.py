"""One side of ``bench_ab.py``: its own nats-server and agent host from the tree on
``PYTHONPATH``, and a client that runs the blocks the controller asks for on stdin.

Protocol (one JSON object per line): in ``{"mode", "action", "inflight", "n"}``; out
``{"elapsed_s", "cpu_s": {"client", "host", "nats-server"}}``. ``{"quit": true}`` stops.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from jetagents import Client, ClientSettings, NatsServer

TICKS = os.sysconf("SC_CLK_TCK")


def server_msgs(port: int) -> int:
    """Messages in and out of the server so far (its /varz): per call, a count that noise
    cannot change, unlike times."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/varz", timeout=5) as resp:
        v = json.loads(resp.read())
    return int(v["in_msgs"]) + int(v["out_msgs"])


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    server = NatsServer(data_dir=work / "nats", name="ab").start()
    env = dict(
        os.environ,
        JETAGENTS_NATS_URL=server.url,
        JETAGENTS_AGENTS='["jetagents.examples:EXAMPLE_AGENTS"]',
        JETAGENTS_HOST_ID="ab-host",
        JETAGENTS_LOG_LEVEL="WARNING",
    )
    with open(work / "host.log", "ab") as out:
        host = subprocess.Popen([sys.executable, "-m", "agent_host"], env=env, stdout=out, stderr=subprocess.STDOUT)
    client = await Client.connect(settings=ClientSettings(nats_url=server.url, request_timeout_s=30))
    refs = [client.agent("counter", f"a{i}") for i in range(256)]
    for _ in range(300):  # until the host serves every partition it owns
        try:
            await refs[0].request("get", delivery="at-most-once", timeout=1)
            break
        except Exception:  # not up yet
            await asyncio.sleep(0.2)
    await asyncio.gather(*(r.request("get", delivery="at-least-once") for r in refs))
    server_pid = server.proc.pid
    me = os.getpid()
    print(json.dumps({"ready": True}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            job: dict[str, Any] = json.loads(line)
            if job.get("quit"):
                break
            mode, action, inflight, n = job["mode"], job["action"], job["inflight"], job["n"]
            params = {"by": 1} if action == "increment" else {}
            per = n // inflight

            async def worker(ref: Any, per: int, action: str, params: dict[str, Any], mode: str) -> None:
                for _ in range(per):
                    await ref.request(action, params, delivery=mode)

            m0 = server_msgs(server.http_port)
            c0, h0, s0, t0 = cpu_s(me), cpu_s(host.pid), cpu_s(server_pid), time.perf_counter()
            await asyncio.gather(*(worker(refs[i], per, action, params, mode) for i in range(inflight)))
            t1 = time.perf_counter()
            out = {
                "elapsed_s": t1 - t0,
                "n": per * inflight,
                "msgs": server_msgs(server.http_port) - m0,
                "cpu_s": {
                    "client": cpu_s(me) - c0,
                    "host": cpu_s(host.pid) - h0,
                    "nats-server": cpu_s(server_pid) - s0,
                },
            }
            print(json.dumps(out), flush=True)
    finally:
        await client.close()
        host.terminate()
        host.wait(10)
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
