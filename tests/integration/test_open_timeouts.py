"""Opening the host's buckets when JetStream does not answer in time is ``Unavailable``,
which the host's start retries, against a real nats-server paused with SIGSTOP.

Before: nats-py's own ``TimeoutError`` escaped ``ObjectBlobs.open`` (and ``KvBucket.open``),
the host's start did not retry it, and the host process exited; three hosts starting on a
loaded 3-node cluster then never settled (seen in the suite under two workers).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from jetagents import NatsServer
from jetagents._core.errors import Unavailable
from jetagents._nats.api import connect
from jetagents._nats.blobs import ObjectBlobs
from jetagents._nats.buckets import KvBucket


async def test_opening_buckets_on_a_server_that_does_not_answer_is_unavailable(tmp_path: Path) -> None:
    server = NatsServer(data_dir=tmp_path / "nats", name="paused").start()
    try:
        nc = await connect(server.url, name="open-timeouts")
        try:
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                with pytest.raises(Unavailable, match="agt_blobs"):
                    await ObjectBlobs.open(nc, "agt_blobs", 1, 0.5)
                with pytest.raises(Unavailable, match="agt_snap"):
                    await KvBucket.open(nc, "agt_snap", 0.5)
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            # answered again: the bucket is created once the server answers
            blobs = await ObjectBlobs.open(nc, "agt_blobs", 1, 5.0)
            assert await blobs.get("sha256:none") is None
        finally:
            await nc.close()
    finally:
        server.stop()
