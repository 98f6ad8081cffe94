"""Record the golden histories (``tests/golden/*.jsonl``): run the agents on a real
nats-server and host, then write each agent's log exactly as stored in ``AGT_EVT``, its
snapshot from ``agt_snap`` and its final state as the code of that day computed it.

    python -m tests.golden.record support   # records only the named histories (here the
                                            # support desk's): the others stay as written

A golden file is never re-recorded to make a test pass: it is what old code wrote, and
``tests/unit/test_golden.py`` replays it against today's code (Temporal's replay tests).
"""

from __future__ import annotations

import asyncio
import base64
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

from jetagents import Client, ClientSettings, Host, HostSettings, NatsServer, Registry
from jetagents._core.errors import DomainError
from jetagents._nats.api import js_api
from jetagents.examples import EXAMPLE_AGENTS
from jetagents.examples.support import SUPPORT_AGENTS

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

# the support desk on its scripted model: a tech ticket through triage, the customer's next
# message, a billing question that needs no refund (an approval would wait for a person); its
# four agents' logs, each in a file of its own (``support_<type>.jsonl``)
SUPPORT: list[tuple[str, str, dict[str, Any]]] = [
    ("triage/acme-7", "open", {"text": "the api is slow since this morning"}),
    ("tech/acme-7", "handle", {"text": "thanks, and is the db fine?"}),
    ("triage/acme-8", "open", {"text": "which invoice is INV-3003?"}),
]
SUPPORT_LOGS = ["triage/acme-7", "tech/acme-7", "followup/acme-7", "billing/acme-8"]


async def record(out: Path, names: list[str]) -> None:
    workload = {a: steps for a, steps in WORKLOAD.items() if a.split("/")[0] in names}
    steps = [(a, act, params) for a, acts in workload.items() for act, params in acts]
    logs = list(workload)
    if "support" in names:
        steps += SUPPORT
        logs += SUPPORT_LOGS
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(data_dir=Path(tmp) / "nats", name="golden")
        server.start()
        try:
            settings = HostSettings(nats_url=server.url, partitions=8, host_id="golden", snapshot_every=3)
            async with Host(settings, Registry([*EXAMPLE_AGENTS, ShopV1, *SUPPORT_AGENTS])) as host:
                client = await Client.connect(
                    settings=ClientSettings(nats_url=server.url, partitions=8, request_timeout_s=120)
                )
                try:
                    sent: dict[str, int] = {}
                    for agent, act, params in steps:
                        t, i = agent.split("/")
                        n = sent[agent] = sent.get(agent, -1) + 1
                        try:
                            await client.agent(t, i).request(act, params, command_id=f"golden-{n}")
                        except DomainError:
                            pass
                    await host.catalog.snapshot_all(5.0)
                    for agent in logs:
                        t, i = agent.split("/")
                        act = host.catalog.activations[f"{t}.{i}"]
                        assert act.agent is not None
                        state = act.agent._state.model_dump(mode="json")
                        name = f"support_{t}" if agent in SUPPORT_LOGS else t
                        await _write(client, t, i, state, out / f"{name}.jsonl")
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
    if len(sys.argv) < 2:
        sys.exit("usage: python -m tests.golden.record NAME... (counter, account, shop, support)")
    asyncio.run(record(HERE, sys.argv[1:]))
