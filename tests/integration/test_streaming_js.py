"""A JavaScript reader of streamed output (``tests/js/read_stream.mjs``, wire contract 17) run
against a real nats-server and host: Node.js and the contract, no package, no Python client.

It sends a streaming command itself, prints every chunk and the end; run again with a stream
sequence, it resumes after it. Node.js 18+ must be installed (``.ci/run`` installs it): without
it this test fails, it is not skipped.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from typing import Any

import pytest

from jetagents import Host, NatsServer, Registry
from tests.conftest import REPO, host_settings
from tests.stream_agents import AGENTS

SCRIPT = REPO / "tests" / "js" / "read_stream.mjs"


async def _node(*args: str) -> tuple[int, list[Any], str]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js 18+ ('node' on PATH) is needed for tests/js/read_stream.mjs: install it (.ci/run does)")
    proc = await asyncio.create_subprocess_exec(
        node, str(SCRIPT), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    return proc.returncode or 0, lines, err.decode()


async def test_a_javascript_reader_reads_a_stream_and_resumes_it(nats_server: NatsServer) -> None:
    url = nats_server.url
    async with Host(host_settings(url), Registry(AGENTS)):
        params = json.dumps({"intro": 3, "words": 2, "outro": 1, "pace_s": 0.05})
        code, lines, err = await _node(url, "--send", "writer", "w1", "tell", params, "m-1")
        assert code == 0, err
        *printed, gathered, end = lines
        assert end["end"] == {"ok": True, "result": 6}
        chunks = gathered["chunks"]
        assert chunks[:3] == ["intro 0", "intro 1", "intro 2"] and chunks[-1] == {"outro": 0}
        assert [c["n"] for c in chunks[3:5]] == [0, 1]
        assert printed == chunks  # no reset: every chunk printed once, in order

        subject = "agt.out.writer.w1.m-1"
        code, lines, err = await _node(url, subject, "1")  # resume after the first message
        assert code == 0, err
        resumed = lines[-2]["chunks"]
        assert resumed == chunks[len(chunks) - len(resumed) :] and len(resumed) < len(chunks)
        assert lines[-1] == end
        code, lines, err = await _node(url, subject, str(end["offset"] - 1))  # only the end is left
        assert code == 0, err
        assert lines == [{"chunks": []}, end]
