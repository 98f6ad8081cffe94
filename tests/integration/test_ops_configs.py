"""The NATS configs shipped in ops/ boot with the native nats-server binary."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from jetagents import Client, ClientSettings, Host, Registry
from jetagents.examples import EXAMPLE_AGENTS
from jetagents.testing.server import NatsServer, find_nats_server, free_port
from tests.conftest import REPO, host_settings


def _rewrite(conf: str, port: int, http_port: int, store: Path) -> str:
    conf = re.sub(r"listen:\s*\S+", f"listen: 127.0.0.1:{port}", conf)
    conf = re.sub(r"http:\s*\S+", f"http: 127.0.0.1:{http_port}", conf)
    return re.sub(r'store_dir:\s*"[^"]*"', f'store_dir: "{store.as_posix()}"', conf)


async def test_single_node_config_boots_and_serves(tmp_path: Path) -> None:
    src = (REPO / "ops" / "nats" / "single.conf").read_text()
    assert "sync_interval: always" in src
    port, http_port = free_port(), free_port()
    conf = tmp_path / "single.conf"
    conf.write_text(_rewrite(src, port, http_port, tmp_path / "js"))
    check = subprocess.run([find_nats_server(), "-c", str(conf), "-t"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    server = NatsServer(data_dir=tmp_path, port=port, http_port=http_port)
    server.proc = subprocess.Popen(
        [find_nats_server(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        server.wait_ready()
        client = await Client.connect(settings=ClientSettings(nats_url=server.url))
        try:
            async with Host(host_settings(server.url), Registry(EXAMPLE_AGENTS)):
                assert await client.agent("counter", "ops").request("increment", {"by": 2}) == 2
        finally:
            await client.close()
    finally:
        server.stop()
