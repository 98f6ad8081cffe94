"""The blobs of payloads by reference under the shipped accounts (ADR 0042 section 9): a
``host`` writes and reads ``agt_blobs`` (a large event goes there and comes back on replay)
but may not purge or delete from it; a ``client`` can neither read nor write it, so no
tenant reads another's large values by listing the bucket, and none can replace a blob
another agent's log names."""

from __future__ import annotations

from collections.abc import Iterator

import nats
import orjson
import pytest
from pydantic import BaseModel

from jetagents import Agent, Client, ClientSettings, Event, Host, Registry, action, applies
from jetagents._nats.api import js_api
from tests.conftest import host_settings
from tests.ops.nats_configs import CLIENT_INBOX, HOST_INBOX, OPS_NATS, BootedConfigs, Node, Violations, boot


class NoteState(BaseModel):
    size: int = 0


class Noted(Event):
    text: str


class Note(Agent[NoteState]):
    type_name = "note"
    state_type = NoteState

    @action
    async def write(self, size: int) -> int:
        self.emit(Noted(text="n" * size))
        return self.state.size

    @action(read_only=True)
    async def size(self) -> int:
        return self.state.size

    @applies
    def _noted(self, state: NoteState, event: Noted) -> None:
        state.size += len(event.text)


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedConfigs]:
    booted = boot(tmp_path_factory.mktemp("perm-blobs"), [Node("solo", OPS_NATS / "single.conf")], with_accounts=True)
    try:
        yield booted
    finally:
        booted.stop()


async def test_hosts_own_the_blobs_and_clients_cannot_touch_them(server: BootedConfigs) -> None:
    seen = Violations()
    client = await Client.connect(
        settings=ClientSettings(nats_url=server.url("client"), partitions=8, inbox_prefix=CLIENT_INBOX)
    )
    atk = await nats.connect(server.url("client"), inbox_prefix=CLIENT_INBOX, error_cb=seen.record)
    hnc = await nats.connect(server.url("host"), inbox_prefix=HOST_INBOX, error_cb=seen.record)
    try:
        for name in ("perm-blobs-1", "perm-blobs-2"):  # the second host replays the log: reads the blob
            settings = host_settings(server.url("host"), host_id=name, inbox_prefix=HOST_INBOX, snapshot_every=1000)
            async with Host(settings, Registry([Note])):
                ref = client.agent("note", "n1")
                if name == "perm-blobs-1":
                    assert await ref.request("write", {"size": 300_000}, timeout=20) == 300_000
                assert await ref.request("size", timeout=20) == 300_000
        assert len(await _object_metas(hnc)) == 1  # the event's data, by reference

        # a client: no read (stream info, message get, a consumer), no write, no purge
        for subject, body in (
            ("$JS.API.STREAM.INFO.OBJ_agt_blobs", b""),
            ("$JS.API.STREAM.MSG.GET.OBJ_agt_blobs", orjson.dumps({"last_by_subj": "$O.agt_blobs.M.>"})),
            ("$JS.API.CONSUMER.CREATE.OBJ_agt_blobs", orjson.dumps({"stream_name": "OBJ_agt_blobs", "config": {}})),
        ):
            await atk.publish(subject, body)
            await seen.wait_for(f'Publish to "{subject}"')
        await atk.publish("$O.agt_blobs.C.forged", b"x")
        await seen.wait_for('Publish to "$O.agt_blobs.C.forged"')
        await atk.publish("$JS.API.STREAM.PURGE.OBJ_agt_blobs", b"")
        await seen.wait_for('Publish to "$JS.API.STREAM.PURGE.OBJ_agt_blobs"')
        # a host: no purge, no delete of single messages either
        for subject in ("$JS.API.STREAM.PURGE.OBJ_agt_blobs", "$JS.API.STREAM.MSG.DELETE.OBJ_agt_blobs"):
            await hnc.publish(subject, b"{}")
            await seen.wait_for(f'Publish to "{subject}"')
        assert len(await _object_metas(hnc)) == 1
    finally:
        await atk.close()
        await hnc.close()
        await client.close()


async def _object_metas(nc: nats.NATS) -> list[str]:
    info = await js_api(nc, "$JS.API.STREAM.INFO.OBJ_agt_blobs", {"subjects_filter": "$O.agt_blobs.M.>"}, 5)
    return list((info.get("state", {}).get("subjects") or {}).keys())
