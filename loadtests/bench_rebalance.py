"""Time to rebalance after a hot spot, and the CPU spread before and after (ADR 0044).

Three host processes on a 3-node JetStream cluster on loopback; 80 % of the commands to 10 %
of the partitions, the busy ones all on one host. Prints, per repetition: seconds from the
start of the hot spot until the leader moved the busy partitions apart, each host's CPU
seconds per second (measured from outside, /proc) before and after, max/mean of those, and
partitions moved to balance and while the load stayed the same (flapping: should be 0), and
the calls that failed (by error code), and whether exactly-once increments sent throughout
were each applied once. With the default settings (rebalancing every 5 s, persist 2, load
window 5 s); ``--fast``: the faster ``BALANCE_ENV`` of ``tests/chaos/skew.py``. The commands
burn ``--burn-ms`` of CPU each (``tests/chaos/burner.py``); 0: counter increments, which on a
loaded machine cost the hot host too little CPU to be worth a move by the defaults.
The short version is ``tests/chaos/test_load_balance.py``. Run::

    .venv/bin/python loadtests/bench_rebalance.py [--reps 3] [--partitions 40] [--steady 20] [--burn-ms 2] [--fast]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from jetagents import Client, ClientSettings
from jetagents.testing.server import NatsCluster

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: tests.chaos.skew
from tests.chaos.skew import BALANCE_ENV, run_skew  # isort: skip

REPO = Path(__file__).resolve().parent.parent  # the hosts' working directory: tests.chaos.burner


async def one(
    work: Path, partitions: int, steady_s: float, workers: int, fast: bool, burn_ms: int
) -> dict[str, object]:
    cluster = NatsCluster(data_dir=work / "cluster", size=3, name="rebal")
    cluster.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(3):
            env = dict(os.environ) | {
                "JETAGENTS_NATS_URL": cluster.url,
                "JETAGENTS_HOST_ID": f"h{i}",
                "JETAGENTS_AGENTS": '["jetagents.examples:EXAMPLE_AGENTS", "tests.chaos.burner:AGENTS"]',
                "JETAGENTS_REPLICAS": "3",
                "JETAGENTS_PARTITIONS": str(partitions),
                **(BALANCE_ENV if fast else {}),
                "JETAGENTS_LOG_LEVEL": "WARNING",
            }
            with open(work / f"h{i}.log", "ab") as log:
                procs.append(
                    subprocess.Popen([sys.executable, "-m", "agent_host"], env=env, stdout=log, stderr=log, cwd=REPO)
                )
        client = await Client.connect(
            settings=ClientSettings(nats_url=cluster.url, partitions=partitions, request_timeout_s=10)
        )
        try:
            pids = {f"h{i}": p.pid for i, p in enumerate(procs)}
            return await run_skew(
                client, pids, partitions, workers=workers, window_s=4.0, steady_s=steady_s, burn_ms=burn_ms
            )
        finally:
            await client.close()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        cluster.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=40)
    ap.add_argument("--steady", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--burn-ms", type=int, default=2, help="CPU each command burns (0: counter increments)")
    ap.add_argument("--fast", action="store_true", help="rebalance every second (BALANCE_ENV), not the defaults")
    args = ap.parse_args()
    for rep in range(args.reps):
        with tempfile.TemporaryDirectory() as tmp:
            got = asyncio.run(one(Path(tmp), args.partitions, args.steady, args.workers, args.fast, args.burn_ms))
        print(f"rep {rep}: {got}", flush=True)


if __name__ == "__main__":
    main()
