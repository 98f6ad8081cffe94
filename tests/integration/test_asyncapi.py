"""docs/asyncapi.yaml against the code and against what a running host really sends.

A client in another language generates its types from the AsyncAPI document, or
validates messages with it; a document that rejects a real commit (it once forbade the
``own`` property every commit carries) breaks every such client. So: the schemas are
generated from the models (and the committed file must match), and real messages of a
real host (a durable command and its PubAck and reply, a call and its reply, a refusal,
a commit read from AGT_EVT, a snapshot read from KV, a dead letter read from AGT_DLQ) are
validated against the published schemas with jsonschema, headers included.
"""

from __future__ import annotations

import asyncio
import copy
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
import yaml
from jsonschema import Draft7Validator
from nats.aio.client import Client as NATS

from jetagents import Host, NatsServer, Registry
from jetagents._core.contract import schemas
from jetagents.examples import EXAMPLE_AGENTS
from tests.conftest import REPO, host_settings
from tests.integration.helpers import eventually, read_all

SPEC: dict[str, Any] = yaml.safe_load((REPO / "docs" / "asyncapi.yaml").read_text())


def _closed(node: Any) -> Any:
    """The spec with every object schema that names properties closed: a message that
    carries a property the document does not name fails validation."""
    if isinstance(node, list):
        return [_closed(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _closed(v) for k, v in node.items()}
    if isinstance(out.get("properties"), dict) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _check(pointer: str, instance: Any, *, closed: bool = True) -> None:
    """Validate ``instance`` against the schema at ``pointer`` (``#/components/...``),
    as published and, with ``closed``, with no property the document does not name."""
    for spec in (SPEC, _closed(copy.deepcopy(SPEC))) if closed else (SPEC,):
        # draft 07: a $ref at the root is resolved against the whole document
        validator = Draft7Validator({**spec, "$ref": pointer})
        errors = sorted(validator.iter_errors(instance), key=str)
        assert not errors, f"{pointer}: {[e.message for e in errors]}\n{instance!r}"


def _check_message(name: str, headers: dict[str, str] | None, payload: Any) -> None:
    message = SPEC["components"]["messages"][name]
    if "headers" in message:
        _check(f"#/components/messages/{name}/headers", dict(headers or {}))
    _check(f"#/components/messages/{name}/payload", payload)


def test_the_committed_schemas_are_the_ones_generated_from_the_models() -> None:
    assert SPEC["components"]["schemas"] == schemas(), "run: python3 ops/scripts/asyncapi-schemas"
    r = subprocess.run(
        [sys.executable, str(REPO / "ops" / "scripts" / "asyncapi-schemas"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr


def test_every_reference_in_the_document_resolves() -> None:
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(SPEC)
    assert len(refs) > 20
    for ref in refs:
        target: Any = SPEC
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(target, dict) and part in target, ref
            target = target[part]


def test_the_check_catches_a_property_the_document_does_not_name() -> None:
    commit = {"n": 1, "cmd": "x", "action": "a", "events": [{"type": "t", "data": {}}], "own": 0}
    _check("#/components/schemas/Commit", commit)
    with pytest.raises(AssertionError):
        _check("#/components/schemas/Commit", {**commit, "surprise": 1})
    _check("#/components/schemas/Commit", {**commit, "surprise": 1}, closed=False)  # readers ignore it
    with pytest.raises(AssertionError):
        _check("#/components/schemas/CommandBody", {"action": "get", "surprise": 1}, closed=False)


async def test_work_jobs_and_their_dead_letters_match_the_document(nats_server: NatsServer, nc: NATS) -> None:
    from jetagents import Client, ClientSettings
    from jetagents._core.wire import Subjects
    from jetagents._nats.workqueue import WorkStore

    assert {"workJob", "workDeadLetters", "topicControl"} <= set(SPEC["channels"])
    client = await Client.connect(settings=ClientSettings(nats_url=nats_server.url))
    try:
        await WorkStore(client.nc, Subjects(), timeout_s=5).ensure(max_msg_bytes=64 * 1024)
        q = client.work_queue("api", max_attempts=1)
        await q.put({"to": "a@example.com"}, msg_id="api-job-1")
        [(_, subject, headers, data)] = await read_all(nc, "AGT_WORK")
        assert subject == "agt.work.api"
        _check_message("WorkJob", headers, orjson.loads(data))
        stop = asyncio.Event()

        def fail(_: object) -> None:
            stop.set()
            raise RuntimeError("no")

        await asyncio.wait_for(q.process(fail, stop=stop), 20)

        async def dead() -> bool:
            return len(await read_all(nc, "AGT_WORKDLQ")) == 1

        await eventually(dead, 20)
        [(_, subject, headers, data)] = await read_all(nc, "AGT_WORKDLQ")
        assert subject == "agt.workdlq.api"
        _check_message("DeadLetter", headers, orjson.loads(data))
    finally:
        await client.close()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    conn = await nats.connect(nats_server.url)
    try:
        yield conn
    finally:
        await conn.close()


async def test_real_messages_of_a_running_host_match_the_document(nats_server: NatsServer, nc: NATS) -> None:
    settings = host_settings(nats_server.url, snapshot_every=2)
    async with Host(settings, Registry(EXAMPLE_AGENTS)):
        # a durable command, its PubAck and its reply
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        headers = {"Nats-Msg-Id": "asyncapi-1", "Agt-Reply-To": inbox, "Agt-Correlation-Id": "corr-1"}
        body = {"action": "increment", "params": {"by": 2}}
        _check_message("DurableCommand", headers, body)
        ack = await nc.request("agt.cmd.counter.api1", orjson.dumps(body), timeout=10, headers=headers)
        _check("#/components/messages/PubAck/payload", orjson.loads(ack.data), closed=False)
        reply = await sub.next_msg(timeout=20)
        assert orjson.loads(reply.data) == {"ok": True, "result": 2}
        _check_message("Reply", reply.headers, orjson.loads(reply.data))

        # a call and its reply (it writes the second commit: a snapshot follows)
        call_headers = {"Agt-Command-Id": "asyncapi-2"}
        call = {"action": "increment", "params": {"by": 3}}
        _check_message("CallCommand", call_headers, call)
        answer = await nc.request("agt.call.counter.api1", orjson.dumps(call), timeout=10, headers=call_headers)
        assert orjson.loads(answer.data) == {"ok": True, "result": 5}
        _check_message("Reply", answer.headers, orjson.loads(answer.data))

        # a domain refusal and a refusal of bad input
        refused = await nc.request(
            "agt.call.counter.api1", orjson.dumps({"action": "increment", "params": {"by": 0}}), timeout=10
        )
        assert orjson.loads(refused.data)["error"]["code"] == "domain"
        _check_message("Reply", refused.headers, orjson.loads(refused.data))
        bad_inbox = nc.new_inbox()
        bad_sub = await nc.subscribe(bad_inbox)
        await nc.request(
            "agt.cmd.counter.api1", b"not json", timeout=10, headers={"Nats-Msg-Id": "bad-1", "Agt-Reply-To": bad_inbox}
        )
        bad = await bad_sub.next_msg(timeout=20)
        assert orjson.loads(bad.data)["error"]["code"] == "malformed"
        _check_message("Reply", bad.headers, orjson.loads(bad.data))

        # the commits, as stored in AGT_EVT
        stored = await read_all(nc, "AGT_EVT", "agt.evt.counter.api1")
        assert [orjson.loads(data)["n"] for _, _, _, data in stored] == [1, 2]
        for _, _, msg_headers, data in stored:
            _check_message("Commit", msg_headers, orjson.loads(data))

        # the dead letter of the bad command, as stored in AGT_DLQ
        async def dead_letters() -> list[Any]:
            return [orjson.loads(data) for _, _, _, data in await read_all(nc, "AGT_DLQ")]

        await eventually(dead_letters, 20)
        for letter in await dead_letters():
            _check_message("DeadLetter", None, letter)

        # the snapshot, as stored in KV (snapshot_every=2: after the second commit)
        kv = await nc.jetstream().key_value("agt_snap")

        async def snapshot() -> Any:
            try:
                entry = await kv.get("counter.api1")
            except Exception:
                return None
            return orjson.loads(entry.value) if entry.value else None

        await eventually(snapshot, 20)
        snap = await snapshot()
        assert snap["n"] == 2 and snap["state"] == {"value": 5}
        _check("#/components/schemas/Snapshot", snap)
        await sub.unsubscribe()
        await bad_sub.unsubscribe()


def test_the_document_path_is_the_one_the_generator_writes() -> None:
    script = (REPO / "ops" / "scripts" / "asyncapi-schemas").read_text()
    assert 'parents[2] / "docs" / "asyncapi.yaml"' in script
    assert Path(REPO / "docs" / "asyncapi.yaml").read_text().count("  schemas:\n") == 1
