"""Demo workload for the compose cluster: drive counters and accounts through every
delivery mode with the ``client`` user, check every answer, print a summary, exit 0/1.

    docker compose run --rm demo            # or: python ops/demo/workload.py (JETAGENTS_NATS_URL set)
"""

from __future__ import annotations

import asyncio
import sys
import time

from jetagents import Client, ClientSettings, DomainError

COUNTERS = 12  # spread over the partitions, so every host gets work
ROUNDS = 5


async def main() -> int:
    settings = ClientSettings()
    started = time.monotonic()
    client = None
    for _ in range(60):  # the hosts may still be taking their partitions
        try:
            client = await Client.connect(settings=settings, name="jetagents-demo")
            await client.agent("counter", "demo-probe").request("get", delivery="at-most-once", timeout=2)
            break
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            print(f"waiting for the cluster: {exc}", flush=True)
            if client is not None:
                await client.close()
                client = None
            await asyncio.sleep(1)
    if client is None:
        print("FAIL: cluster never answered", flush=True)
        return 1
    failures: list[str] = []
    try:
        run = f"{int(time.time())}"
        refs = [client.agent("counter", f"demo-{run}-{i}") for i in range(COUNTERS)]
        for r in range(1, ROUNDS + 1):
            results = await asyncio.gather(*(ref.request("increment", {"by": 1}) for ref in refs))
            failures += [f"exactly-once round {r}: {v}" for v in results if v != r]
        durable = (ref.request("increment", {"by": 10}, delivery="at-least-once") for ref in refs)
        results = await asyncio.gather(*durable)
        failures += [f"at-least-once: {v}" for v in results if v != ROUNDS + 10]
        results = await asyncio.gather(*(ref.request("get", delivery="at-most-once") for ref in refs))
        failures += [f"at-most-once get: {v}" for v in results if v != ROUNDS + 10]

        # the same command id twice is applied once
        ref = refs[0]
        first = await ref.request("increment", {"by": 100}, command_id=f"demo-{run}-once")
        again = await ref.request("increment", {"by": 100}, command_id=f"demo-{run}-once")
        if first != again:
            failures.append(f"re-sent command applied twice: {first} then {again}")

        # a domain refusal comes back typed
        account = client.agent("account", f"demo-{run}")
        await account.request("deposit", {"amount": 50})
        try:
            await account.request("withdraw", {"amount": 80})
            failures.append("overdraft was accepted")
        except DomainError as err:
            print(f"refused as expected: {err.code}", flush=True)
    finally:
        await client.close()
    elapsed = time.monotonic() - started
    commands = COUNTERS * (ROUNDS + 2) + 4
    if failures:
        print("FAIL:", *failures, sep="\n  ", flush=True)
        return 1
    print(f"OK: {commands} commands to {COUNTERS + 1} agents answered correctly in {elapsed:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
