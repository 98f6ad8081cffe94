"""Record the golden histories (``tests/golden/*.jsonl``): run the agents on a real
nats-server and host, then write each agent's log exactly as stored in ``AGT_EVT``, its
snapshot from ``agt_snap`` and its final state as the code of that day computed it.

    python -m tests.golden.record          # rewrites the files: only when adding a history

A golden file is never re-recorded to make a test pass: it is what old code wrote, and
``tests/unit/test_golden.py`` replays it against today's code (Temporal's replay tests).
"""

from __future__ import annotations

import asyncio
import base64
import tempfile
from pathlib import Path
from typing import Any

import orjson

from jetagents import Client, ClientSettings, Host, HostSettings, NatsServer, Registry
from jetagents._core.errors import DomainError
from jetagents._nats.api import js_api
from jetagents.examples import EXAMPLE_AGENTS

from .shop_v1 import Shop as ShopV1

HERE = Path(__file__).parent
WORKLOAD: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "counter/golden": [("increment", {"by": b}) for b in (1, 5, -3, 40, 2, -7, 11)],
    "account/golden": [
        ("deposit", {"amount": 500}),
        ("withdraw", {"amount": 120}),
        ("withdraw", {"amount": 10_000}),  # refused: not in the log
        ("deposit", {"amount": 35}),
        ("withdraw", {"amount": 15}),
    ],
    "shop/golden": [
        ("add", {"item": "apple", "qty": 3}),
        ("add", {"item": "pear"}),
        ("add", {"item": "apple", "qty": 2}),
        ("add", {"item": "fig", "qty": 7}),
        ("add", {"item": "pear", "qty": 4}),
    ],
}


async def record(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(data_dir=Path(tmp) / "nats", name="golden")
        server.start()
        try:
            settings = HostSettings(nats_url=server.url, partitions=8, host_id="golden", snapshot_every=3)
            async with Host(settings, Registry([*EXAMPLE_AGENTS, ShopV1])) as host:
                client = await Client.connect(settings=ClientSettings(nats_url=server.url, partitions=8))
                try:
                    for agent, steps in WORKLOAD.items():
                        t, i = agent.split("/")
                        for n, (act, params) in enumerate(steps):
                            try:
                                await client.agent(t, i).request(act, params, command_id=f"golden-{n}")
                            except DomainError:
                                pass
                    await host.catalog.snapshot_all(5.0)
                    for agent in WORKLOAD:
                        t, i = agent.split("/")
                        act = host.catalog.activations[f"{t}.{i}"]
                        assert act.agent is not None
                        state = act.agent._state.model_dump(mode="json")
                        await _write(client, t, i, state, out / f"{t}.jsonl")
                finally:
                    await client.close()
        finally:
            server.stop()


async def _write(client: Client, t: str, i: str, state: Any, path: Path) -> None:
    nc = client.nc
    info = await js_api(nc, "$JS.API.STREAM.INFO.AGT_EVT", {"subjects_filter": f"agt.evt.{t}.{i}"}, 5)
    lines = []
    for seq in range(int(info["state"]["first_seq"]), int(info["state"]["last_seq"]) + 1):
        resp = await js_api(nc, "$JS.API.STREAM.MSG.GET.AGT_EVT", {"seq": seq}, 5)
        msg = resp["message"]
        if msg["subject"] == f"agt.evt.{t}.{i}":
            lines.append({"seq": seq, "commit": base64.b64decode(msg["data"]).decode()})
    snap = await js_api(nc, "$JS.API.STREAM.MSG.GET.KV_agt_snap", {"last_by_subj": f"$KV.agt_snap.{t}.{i}"}, 5)
    header = {
        "agent": f"{t}/{i}",
        "final_state": state,
        "snapshot": orjson.loads(base64.b64decode(snap["message"]["data"])),
    }
    path.write_bytes(b"\n".join(orjson.dumps(x) for x in [header, *lines]) + b"\n")
    print(f"{path}: {len(lines)} commits")


if __name__ == "__main__":
    asyncio.run(record(HERE))
