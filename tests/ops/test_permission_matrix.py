"""The permission matrix of issue 12: every attack a ``client`` (or a ``host``) can try with
the shipped accounts, against a real nats-server running ``single.conf`` + ``accounts.conf``
and a real host running as the ``host`` user. Each case checks that the damage did not
happen (logs, buckets, streams unchanged, no ghost member) and the legitimate paths still
work (a call and a durable command round trip under the client's inbox prefix).

The confused deputy: a host publishes a reply where the sender says (``Agt-Reply-To`` of a
durable command, the reply subject of a call) with its own permissions, which reach its
event log, its buckets and the JetStream API. The host answers only under its reply
prefixes (``_INBOX.``), and the accounts drop ``allow_responses`` for hosts.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
from collections.abc import AsyncIterator, Iterator

import nats
import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from jetagents import Client, ClientSettings, Host, Registry
from jetagents._client.inspection import Inspector
from jetagents._client.lifecycle import Lifecycle
from jetagents._core.blobref import name_of
from jetagents._core.errors import AgentDeleted, JetAgentsError, PermissionDenied
from jetagents._core.pubsub import pattern_key
from jetagents._nats.api import js_api, js_publish
from jetagents._state.store import SharedState
from jetagents.examples import EXAMPLE_AGENTS
from tests.conftest import host_settings
from tests.ops.nats_configs import (
    CLIENT_INBOX,
    HOST_INBOX,
    OPERATOR_INBOX,
    OPS_NATS,
    BootedConfigs,
    Node,
    Violations,
    boot,
)
from tests.stream_agents import AGENTS as STREAM_AGENTS

# reply subjects that land in a stream (subject, stream): a reply there is a forged commit,
# a spawned agent, an overwritten snapshot or shared state, a forged dead letter, a ghost
# member that takes partitions, a frozen ring
STORED_TARGETS = [
    ("agt.evt.counter.victim", "AGT_EVT"),
    ("$KV.agt_meta.counter.victim", "KV_agt_meta"),
    ("$KV.agt_snap.counter.victim", "KV_agt_snap"),
    ("$KV.agt_state.victim", "KV_agt_state"),
    ("agt.dlq.counter.forged", "AGT_DLQ"),
    ("$KV.agt_cluster.member.ghost", "KV_agt_cluster"),
    ("$KV.agt_cluster.ring", "KV_agt_cluster"),
    ("$KV.agt_cluster.ringlog.0", "KV_agt_cluster"),  # the ring's change log (slot 0: epoch 64)
    ("$KV.agt_quarantine.counter.victim", "KV_agt_quarantine"),
    ("agt.out.counter.victim.forged", "AGT_OUT"),
]
# reply subjects that are JetStream API requests (a stream delete ignores its body)
API_TARGETS = ["$JS.API.STREAM.PURGE.AGT_EVT", "$JS.API.STREAM.DELETE.AGT_DLQ"]
PROTECTED = ["AGT_CMD", "AGT_CMDH", "AGT_EVT", "AGT_DLQ", "AGT_OUT", "KV_agt_snap", "KV_agt_meta"]
_ids = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedConfigs]:
    booted = boot(tmp_path_factory.mktemp("perm"), [Node("solo", OPS_NATS / "single.conf")], with_accounts=True)
    try:
        yield booted
    finally:
        booted.stop()


class World:
    def __init__(self, booted: BootedConfigs, host: Host, admin: NATS, client: Client) -> None:
        self.booted, self.host, self.admin, self.client = booted, host, admin, client

    async def count(self, stream: str, subject: str) -> int:
        info = await js_api(self.admin, f"$JS.API.STREAM.INFO.{stream}", {"subjects_filter": subject}, 5)
        return int((info["state"].get("subjects") or {}).get(subject, 0))

    async def messages(self, stream: str) -> int:
        return int((await js_api(self.admin, f"$JS.API.STREAM.INFO.{stream}", None, 5))["state"]["messages"])

    async def last(self, stream: str, subject: str) -> bytes:
        resp = await js_api(self.admin, f"$JS.API.STREAM.MSG.GET.{stream}", {"last_by_subj": subject}, 5)
        return base64.b64decode(resp["message"].get("data") or "")

    async def settled(self, before: int, n: int) -> None:
        """The host finished ``n`` more commands (answered or dead-lettered)."""
        stats = self.host.stats
        for _ in range(3000):  # 60 s
            if stats["processed"] + stats["dead_letters"] >= before + n:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"the host did not finish {n} commands: {stats}")

    def done(self) -> int:
        return self.host.stats["processed"] + self.host.stats["dead_letters"]


@pytest.fixture
async def world(server: BootedConfigs) -> AsyncIterator[World]:
    admin = await nats.connect(server.url("admin"))
    # the shared-state bucket exists (a host creates it on first use)
    state = SharedState(admin)
    await state.start()
    await state.close()
    settings = host_settings(server.url("host"), host_id="perm-host", inbox_prefix=HOST_INBOX)
    async with Host(settings, Registry([*EXAMPLE_AGENTS, *STREAM_AGENTS])) as host:
        client = await Client.connect(
            settings=ClientSettings(nats_url=server.url("client"), partitions=8, inbox_prefix=CLIENT_INBOX)
        )
        try:
            yield World(server, host, admin, client)
        finally:
            await client.close()
    await admin.close()


async def _attacker(w: World, errors: Violations | None = None) -> NATS:
    return await nats.connect(
        w.booted.url("client"), inbox_prefix=CLIENT_INBOX, **({"error_cb": errors.record} if errors else {})
    )


async def _durable(nc: NATS, agent_type: str, reply_to: str) -> None:
    """A durable command naming ``reply_to`` as its reply subject (stored: PubAck checked)."""
    n = next(_ids)
    hdrs = {"Agt-Reply-To": reply_to, "Nats-Msg-Id": f"atk-{n}"}
    ack = await nc.request(
        f"agt.cmd.{agent_type}.atk-d{n}", b'{"action":"increment","params":{"by":1}}', 5, headers=hdrs
    )
    assert orjson.loads(ack.data)["stream"] == "AGT_CMD", ack.data


async def _call(nc: NATS, agent_type: str, reply_to: str) -> None:
    n = next(_ids)
    await nc.publish(f"agt.call.{agent_type}.atk-c{n}", b'{"action":"increment","params":{"by":1}}', reply=reply_to)
    await nc.flush()


async def test_replies_never_reach_logs_buckets_or_the_cluster(world: World) -> None:
    w = world
    victim = w.client.agent("counter", "victim")
    assert await victim.request("increment", {"by": 2}) == 2
    events = await w.count("AGT_EVT", "agt.evt.counter.victim")
    before = {t: await w.count(stream, t) for t, stream in STORED_TARGETS}
    refused = w.host.stats.get("replies_refused", 0)
    start = w.done()
    atk = await _attacker(w)
    try:
        for target, _ in STORED_TARGETS:
            await _durable(atk, "counter", target)
            await _call(atk, "counter", target)
        # unknown types and invalid ids are refused on another path: still never answered there
        await _durable(atk, "nosuchtype", "agt.evt.counter.victim")
        await _call(atk, "nosuchtype", "$KV.agt_cluster.member.ghost")
        await w.settled(start, 2 * len(STORED_TARGETS) + 2)
    finally:
        await atk.close()

    for target, stream in STORED_TARGETS:
        if target == "$KV.agt_cluster.ring":  # rewritten by the leader; never a reply
            assert "owners" in orjson.loads(await w.last(stream, target))
        else:
            assert await w.count(stream, target) == before[target], target
    assert before["$KV.agt_cluster.member.ghost"] == 0 and before["$KV.agt_meta.counter.victim"] == 0
    # every attack was dead-lettered as malformed, none ran
    assert w.host.stats["dead_letters"] >= 2 * len(STORED_TARGETS) + 2
    assert w.host.stats.get("replies_refused", 0) >= refused + 2  # the unknown types: refused at the reply
    # the victim's log holds its own commits only, it still answers, and so do the rest
    assert await w.count("AGT_EVT", "agt.evt.counter.victim") == events
    assert await victim.request("get", delivery="at-most-once") == 2
    assert await victim.request("increment", {"by": 1}) == 3
    for i in range(8):
        assert (
            await w.client.agent("counter", f"after-{i}").request("increment", {"by": 1}, delivery="at-most-once") == 1
        )


async def test_replies_never_reach_the_jetstream_api(world: World) -> None:
    w = world
    victim = w.client.agent("counter", "api-victim")
    assert await victim.request("increment", {"by": 5}) == 5
    counts = {s: await w.messages(s) for s in ("AGT_EVT", "AGT_DLQ")}
    start = w.done()
    atk = await _attacker(w)
    try:
        for target in API_TARGETS:
            await _durable(atk, "counter", target)
            await _call(atk, "counter", target)
        await w.settled(start, 2 * len(API_TARGETS))
    finally:
        await atk.close()
    assert await w.messages("AGT_EVT") >= counts["AGT_EVT"]  # not purged
    assert await w.messages("AGT_DLQ") >= counts["AGT_DLQ"] + 2 * len(API_TARGETS)  # not deleted: dead letters in it
    assert await victim.request("get", delivery="at-least-once") == 5


async def test_a_host_cannot_answer_past_its_permissions(world: World) -> None:
    """Without ``allow_responses`` a host's answer to a reply subject it received is held to
    its publish permissions: no stream delete or purge, no foreign bucket."""
    w = world
    seen = Violations()
    rogue = await nats.connect(w.booted.url("host"), inbox_prefix=HOST_INBOX, error_cb=seen.record)
    atk = await _attacker(w)
    got: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        got.put_nowait(msg)

    try:
        await rogue.subscribe("agt.call.bait.*", cb=on_msg)
        await rogue.flush()
        targets = ["$JS.API.STREAM.DELETE.AGT_DLQ", "$JS.API.STREAM.PURGE.AGT_EVT", "$KV.other.key"]
        for target in targets:
            await atk.publish("agt.call.bait.x", b"{}", reply=target)
            msg = await asyncio.wait_for(got.get(), 15)
            assert msg.reply == target
            await msg.respond(b"{}")
            await seen.wait_for(f'Publish to "{target}"')
        for stream in PROTECTED:
            await js_api(w.admin, f"$JS.API.STREAM.INFO.{stream}", None, 5)  # still there
    finally:
        await rogue.close()
        await atk.close()


async def test_a_host_cannot_delete_purge_or_write_outside_its_own(world: World) -> None:
    w = world
    assert await w.client.agent("counter", "keep").request("increment", {"by": 1}) == 1
    counts = {s: await w.messages(s) for s in PROTECTED}
    seen = Violations()
    rogue = await nats.connect(w.booted.url("host"), inbox_prefix=HOST_INBOX, error_cb=seen.record)
    try:
        for stream in PROTECTED:
            for api in ("STREAM.DELETE", "STREAM.PURGE", "STREAM.UPDATE"):
                subject = f"$JS.API.{api}.{stream}"
                with pytest.raises((NatsTimeout, NoRespondersError)):
                    await rogue.request(subject, b"{}", timeout=0.5)
                await seen.wait_for(subject)
            if stream in ("AGT_CMD", "AGT_CMDH"):
                continue  # a host removes commands no consumer delivers (0x7f; ADR 0039), as it may +TERM any
            subject = f"$JS.API.STREAM.MSG.DELETE.{stream}"
            with pytest.raises((NatsTimeout, NoRespondersError)):
                await rogue.request(subject, b'{"seq":1}', timeout=0.5)
            await seen.wait_for(subject)
        for subject in ("$KV.other.key", "$O.store.x", "$SYS.REQ.SERVER.PING"):
            await rogue.publish(subject, b"x")
            await seen.wait_for(f'Publish to "{subject}"')
        # a host reads its own inboxes only
        await rogue.subscribe(f"{CLIENT_INBOX}.>")
        await seen.wait_for(f'Subscription to "{CLIENT_INBOX}.>"')
    finally:
        await rogue.close()
    for stream in PROTECTED:
        assert await w.messages(stream) >= counts[stream], stream


@pytest.mark.parametrize("pattern", ["_INBOX.>", "_INBOX.*.>", f"{HOST_INBOX}.>", "_INBOX.other.>", "_INBOX.x"])
async def test_a_client_reads_only_its_own_inboxes(world: World, pattern: str) -> None:
    w = world
    seen = Violations()
    spy = await _attacker(w, seen)
    try:
        leaked: list[Msg] = []

        async def on_leak(msg: Msg) -> None:
            leaked.append(msg)

        await spy.subscribe(pattern, cb=on_leak)
        await seen.wait_for(f'Subscription to "{pattern}"')
        # a host's and another client's replies go by, then a sentinel to the spy's own inbox:
        # anything the refused subscription could see would arrive before the sentinel
        own = spy.new_inbox()
        sentinel = await spy.subscribe(own)
        await spy.flush()
        await w.admin.publish(f"{HOST_INBOX}.x.1", b"host reply")
        await w.admin.publish(f"{CLIENT_INBOX}.other.1", b"client reply")
        await w.admin.publish("_INBOX.x", b"default inbox")
        await w.admin.flush()
        # the sentinel is a fence, re-sent until it arrives (it was seen to go missing right
        # after a refused subscription under load): whatever came first has arrived by then
        for _ in range(60):
            await w.admin.publish(own, b"sentinel")
            await w.admin.flush()
            try:
                assert (await sentinel.next_msg(timeout=0.5)).data == b"sentinel"
                break
            except NatsTimeout:
                continue
        else:
            raise AssertionError("the sentinel never reached the spy's own inbox")
        assert leaked == []
    finally:
        await spy.close()


async def test_a_client_cannot_answer_another_clients_request(world: World) -> None:
    w = world
    seen = Violations()
    forger = await _attacker(w, seen)
    victim = await _attacker(w)
    try:
        inbox = victim.new_inbox()
        sub = await victim.subscribe(inbox)
        await victim.flush()
        await forger.publish(inbox, b'{"ok":true,"result":"forged"}')
        await seen.wait_for(f'Publish to "{inbox}"')
        await w.admin.publish(inbox, b"real")
        assert (await sub.next_msg(timeout=15)).data == b"real"
        assert sub.pending_msgs == 0
    finally:
        await forger.close()
        await victim.close()


async def test_the_legitimate_paths_work_under_the_inbox_prefixes(world: World) -> None:
    w = world
    ref = w.client.agent("counter", "legit")
    assert await ref.request("increment", {"by": 2}) == 2  # durable, exactly-once: PubAck + reply
    assert await ref.request("increment", {"by": 1}, delivery="at-least-once") == 3
    assert await ref.request("increment", {"by": 1}, delivery="at-most-once") == 4  # a call
    assert await w.count("AGT_EVT", "agt.evt.counter.legit") == 3
    # the client user's own inboxes are its prefix; a default one is refused by the server
    assert w.client.nc.new_inbox().startswith(f"{CLIENT_INBOX}.")
    assert w.host.nc.new_inbox().startswith(f"{HOST_INBOX}.")


async def test_the_operator_inspects_and_redrives_a_client_cannot(world: World) -> None:
    """ADR 0051: inspection and redrive need the operator user; an ordinary client can
    neither read dead letters nor redrive them, nor ask hosts what they hold."""
    w = world
    assert await w.client.agent("counter", "ops").request("increment", {"by": 1}) == 1
    with pytest.raises(JetAgentsError):
        await w.client.agent("counter", "ops").request("nope", {}, command_id="ops-bad")
    seen = Violations()
    spy = await _attacker(w, seen)
    try:
        for attempt in ("dead_letters", "redrive"):
            # a connection of its own per attempt: the library's connection drops itself on
            # a permissions violation (jetagents._nats.conn), which is not what is tested here
            settings = ClientSettings(nats_url=w.booted.url("client"), inbox_prefix=CLIENT_INBOX)
            nosy = await Client.connect(settings=settings)
            try:
                as_client = Inspector(nosy, timeout_s=0.5)
                with pytest.raises(JetAgentsError):
                    await (as_client.dead_letters() if attempt == "dead_letters" else as_client.redrive(1))
            finally:
                await nosy.close()
        for subject in (
            "agt.sys.host.perm-host.agents",
            "agt.sys.host.perm-host.evict",
            "$JS.API.STREAM.MSG.DELETE.AGT_DLQ",
            "$KV.agt_tomb.counter.ops",
            "$JS.API.STREAM.PURGE.AGT_EVT",
            "$JS.API.STREAM.PURGE.KV_agt_subs",
            "$JS.API.STREAM.PURGE.KV_agt_quarantine",
            "$JS.API.STREAM.PURGE.OBJ_agt_blobs",
        ):
            await spy.publish(subject, b'{"seq":1}')
            await seen.wait_for(f'Publish to "{subject}"')
    finally:
        await spy.close()
    op = await Client.connect(settings=ClientSettings(nats_url=w.booted.url("operator"), inbox_prefix=OPERATOR_INBOX))
    seen = Violations()
    rogue = await nats.connect(w.booted.url("operator"), inbox_prefix=OPERATOR_INBOX, error_cb=seen.record)
    try:
        admin = Inspector(op, agents=EXAMPLE_AGENTS)
        listed = {(a.type, a.id): a for a in await admin.agents("counter")}
        assert listed[("counter", "ops")].active and listed[("counter", "ops")].host == "perm-host"
        assert (await admin.show("counter", "ops")).state == {"value": 1}
        (dl,) = [d for d in await admin.dead_letters("counter", "ops") if d.command_id == "ops-bad"]
        done = await admin.redrive(dl.seq, wait_s=10)
        assert done.removed and done.reply is not None and done.reply["error"]["code"] == "unknown_action"
        # the operator deletes an agent and, after the grace period, purges it (ADR 0052)
        assert await w.client.agent("counter", "ops2").request("increment", {"by": 1}) == 1
        life = Lifecycle(admin)
        tomb = await life.delete("counter", "ops2", grace_s=0, by="op")
        with pytest.raises(AgentDeleted):
            await w.client.agent("counter", "ops2").request("increment", {"by": 1})
        # its subscription and quarantine record (written by hosts) go too, the runner signalled
        sub_subject = f"$KV.agt_subs.{pattern_key('perm.>')}.counter.ops2"
        sub = {"pattern": "perm.>", "type": "counter", "id": "ops2"}
        await js_publish(w.admin, sub_subject, orjson.dumps(sub), {}, 5)
        await js_publish(w.admin, "$KV.agt_quarantine.counter.ops2", b'{"reason": "t"}', {}, 5)
        # and a blob under its name (ADR 0052), while another agent's stays
        blobs = await w.admin.jetstream().object_store("agt_blobs")
        for owner in ("counter.ops2", "counter.ops"):
            await blobs.put(name_of(b'"large"', owner), b'"large"')
        assert await w.count("KV_agt_subs", sub_subject) == 1
        assert [t["agent"] for t in await life.purge_due(now_ms=tomb["purge_after_ms"])] == ["counter/ops2"]
        assert await w.count("AGT_EVT", "agt.evt.counter.ops2") == 0
        assert await w.count("KV_agt_subs", sub_subject) == 0
        assert await w.count("KV_agt_quarantine", "$KV.agt_quarantine.counter.ops2") == 0
        assert {info.name for info in await blobs.list()} >= {name_of(b'"large"', "counter.ops")}
        assert name_of(b'"large"', "counter.ops2") not in {info.name for info in await blobs.list()}
        # the operator repairs; it does not rewrite history or drop streams
        for subject in ("agt.evt.counter.ops", "$KV.agt_snap.counter.ops", "$JS.API.STREAM.DELETE.AGT_DLQ"):
            await rogue.publish(subject, b"{}")
            await seen.wait_for(f'Publish to "{subject}"')
    finally:
        await rogue.close()
        await op.close()


async def test_only_hosts_write_the_ring_log_and_heartbeats_the_dashboard_reads(world: World) -> None:
    """Issue 18: the leader's ring change log (``ringlog.*``) and the hosts' heartbeats with
    their latency are read by the operator (the dashboard); neither a client nor the operator
    can write a forged ownership history or a host's figures."""
    w = world
    assert await w.client.agent("counter", "rl").request("increment", {"by": 1}) == 1
    op = await Client.connect(settings=ClientSettings(nats_url=w.booted.url("operator"), inbox_prefix=OPERATOR_INBOX))
    try:
        admin = Inspector(op)
        logged = await admin.io.kv_scan("agt_cluster", "ringlog.")
        assert logged and all(orjson.loads(e.data)["leader"] == "perm-host" for e in logged.values())

        async def advertised() -> bool:
            beat = await admin.io.kv_get("agt_cluster", "member.perm-host")
            return beat is not None and int(orjson.loads(beat.data)["latency_ms"]["n"]) > 0

        async with asyncio.timeout(10):
            while not await advertised():
                await asyncio.sleep(0.1)
    finally:
        await op.close()
    for user, prefix in (("client", CLIENT_INBOX), ("operator", OPERATOR_INBOX)):
        seen = Violations()
        forger = await nats.connect(w.booted.url(user), inbox_prefix=prefix, error_cb=seen.record)
        try:
            for subject in ("$KV.agt_cluster.ringlog.0", "$KV.agt_cluster.member.perm-host"):
                await forger.publish(subject, b'{"epoch":1,"moves":[[0,"perm-host","forged"]]}')
                await seen.wait_for(f'Publish to "{subject}"')
        finally:
            await forger.close()
    assert await w.count("KV_agt_cluster", "$KV.agt_cluster.ringlog.0") == 0


async def test_the_host_watches_tombstones_under_its_permissions(world: World) -> None:
    """ADR 0052: a tombstone the operator writes without the ``evict`` request (a host that
    missed it) still reaches the host through its watch of the tombstone bucket (an ordered
    consumer the host user may create): the agent in its memory is refused from then on."""
    w = world
    ref = w.client.agent("counter", "watched")
    assert await ref.request("increment", {"by": 1}) == 1
    assert "counter.watched" in w.host.catalog.activations
    op = await Client.connect(settings=ClientSettings(nats_url=w.booted.url("operator"), inbox_prefix=OPERATOR_INBOX))
    try:
        admin = Inspector(op)
        await admin.io.kv_put("agt_tomb", "counter.watched", b'{"agent": "counter/watched", "by": "op"}')
    finally:
        await op.close()
    async with asyncio.timeout(10):
        while "counter.watched" in w.host.catalog.activations:
            await asyncio.sleep(0.05)
    with pytest.raises(AgentDeleted):
        await ref.request("increment", {"by": 1})


async def test_only_the_operator_quarantines_releases_or_rolls_back_an_agent(world: World) -> None:
    """A client can neither release a quarantined agent (delete its record) nor quarantine
    another's (write one) nor read or list the records, nor forge the operator events of a
    quarantine or a release, nor ask for a rollback; the operator user lists them, the admin
    releases it (and says so on agt.sys.agent.released) and rolls agents back (ADR 0053, 0059)."""
    w = world
    await w.admin.jetstream().publish("$KV.agt_quarantine.counter.jailed", b'{"reason":"test"}')
    assert await w.count("KV_agt_quarantine", "$KV.agt_quarantine.counter.jailed") == 1
    heard: list[dict[str, object]] = []

    async def hear(msg: Msg) -> None:
        heard.append(orjson.loads(msg.data))

    listener = await w.admin.subscribe("agt.sys.agent.*", cb=hear)
    await w.admin.flush()
    seen = Violations()
    atk = await _attacker(w, seen)
    try:
        for subject in ("$KV.agt_quarantine.counter.jailed", "$KV.agt_quarantine.counter.victim"):
            await atk.publish(subject, b"", headers={"KV-Operation": "PURGE"})
            await seen.wait_for(f'Publish to "{subject}"')
        for kind in ("quarantined", "released"):
            forged = f"agt.sys.agent.{kind}"
            await atk.publish(forged, orjson.dumps({"kind": f"agent.{kind}", "agent": "counter/forged"}))
            await seen.wait_for(f'Publish to "{forged}"')
        # nor roll an agent back (a request to its owner host, on agt.sys: hosts and admin only)
        rollback = "agt.sys.host.perm-host.rollback"
        await atk.publish(rollback, b'{"type": "counter", "id": "keep", "to": 1}')
        await seen.wait_for(f'Publish to "{rollback}"')
        for api in ("STREAM.MSG.GET", "DIRECT.GET", "STREAM.PURGE"):
            subject = f"$JS.API.{api}.KV_agt_quarantine"
            with pytest.raises((NatsTimeout, NoRespondersError)):
                await atk.request(subject, b'{"last_by_subj":"$KV.agt_quarantine.counter.jailed"}', timeout=0.5)
            await seen.wait_for(subject)
        app = await Client.connect(
            settings=ClientSettings(
                nats_url=w.booted.url("client"), partitions=8, inbox_prefix=CLIENT_INBOX, request_timeout_s=1
            )
        )
        try:
            with pytest.raises(Exception, match=r"(?i)permission|timeout|unavailable"):
                await app.admin.release("counter", "jailed")
            with pytest.raises(Exception, match=r"(?i)permission|timeout|unavailable"):
                await app.admin.quarantined_agents()
        finally:
            await app.close()
    finally:
        await atk.close()
    assert await w.last("KV_agt_quarantine", "$KV.agt_quarantine.counter.jailed") == b'{"reason":"test"}'
    op = await Client.connect(settings=ClientSettings(nats_url=w.booted.url("operator"), inbox_prefix=OPERATOR_INBOX))
    try:
        assert {"agent": "counter/jailed", "reason": "test"} in await op.admin.quarantined_agents()
    finally:
        await op.close()
    operator = await Client.connect(settings=ClientSettings(nats_url=w.booted.url("admin"), partitions=8))
    try:
        assert await operator.admin.release("counter", "jailed", by="ops") is True
        assert await operator.admin.quarantined("counter", "jailed") is None
        async with asyncio.timeout(10):
            while not heard:
                await asyncio.sleep(0.02)
        await w.admin.flush()
        assert [(e["kind"], e["agent"], e["by"]) for e in heard] == [("agent.released", "counter/jailed", "ops")]
        await listener.unsubscribe()
        ref = w.client.agent("counter", "rolled")
        assert await ref.request("increment", {"by": 1}) == 1
        assert await ref.request("increment", {"by": 1}) == 2
        first = await js_api(
            w.admin, "$JS.API.STREAM.MSG.GET.AGT_EVT", {"next_by_subj": "agt.evt.counter.rolled", "seq": 1}, 5
        )
        done = await operator.admin.rollback("counter", "rolled", int(first["message"]["seq"]), by="ops")
        assert done["n"] == 3
        assert await ref.request("increment", {"by": 5}) == 6
    finally:
        await operator.close()


async def test_signals_cancels_and_result_queries_need_only_the_command_rights(world: World) -> None:
    """ADR 0042: a signal and a cancel are commands on agt.cmd, a result query a call on
    agt.call: the client user sends them with the rights it has for commands, and gets no
    new subject (the timers on agt.rem are the host's; a client cannot publish there)."""
    w = world
    ref = w.client.agent("counter", "sig")
    assert await ref.signal("approve", {"by": "ann"}) == {"buffered": True}  # nobody waits on a counter
    assert await ref.cancel("nothing") == {"cancelled": False, "state": "unknown"}
    assert await ref.request("increment", {"by": 1}, command_id="sig-1") == 1
    assert await ref.result("sig-1", timeout=10) == 1
    assert await ref.cancel("sig-1") == {"cancelled": False, "state": "finished"}
    seen = Violations()
    attacker = await _attacker(w, seen)
    try:
        await attacker.publish("agt.rem.counter.sig._wforged-0", b'{"timer": {"for": "sig-1", "i": 0}}')
        await seen.wait_for('Publish to "agt.rem.counter.sig._wforged-0"')
    finally:
        await attacker.close()


async def test_a_client_reads_streamed_output_but_never_writes_or_purges_it(world: World) -> None:
    """Clients read ``AGT_OUT`` (direct get, and ``agt.out.>`` to wake up); only hosts publish
    there, and nobody but the admin purges or deletes from it."""
    w = world
    stream = w.client.agent("writer", "perm-w").stream("tell", {"intro": 2, "outro": 1}, command_id="perm-s1")
    assert [item async for item in stream] == ["intro 0", "intro 1", {"outro": 0}] and stream.result == 3
    subject = "agt.out.writer.perm-w.perm-s1"
    stored = await w.count("AGT_OUT", subject)
    seen = Violations()
    atk = await _attacker(w, seen)
    try:
        forged = {"Agt-Stream-Kind": "end", "Nats-Msg-Id": "forged"}
        await atk.publish(subject, b'{"ok":true,"result":"forged"}', headers=forged)
        await atk.publish("agt.out.writer.perm-w.other", b"[]")
        await seen.wait_for(f'Publish to "{subject}"')
        await seen.wait_for('Publish to "agt.out.writer.perm-w.other"')
        for api in (
            "$JS.API.STREAM.PURGE.AGT_OUT",
            "$JS.API.STREAM.MSG.DELETE.AGT_OUT",
            "$JS.API.STREAM.DELETE.AGT_OUT",
            "$JS.API.CONSUMER.CREATE.AGT_OUT",
            "$JS.API.DIRECT.GET.AGT_EVT",  # direct gets reach streamed output only, not logs
        ):
            with pytest.raises((NatsTimeout, NoRespondersError)):
                await atk.request(api, b'{"seq":1}', timeout=0.5)
            await seen.wait_for(api)
    finally:
        await atk.close()
    assert await w.count("AGT_OUT", subject) == stored
    again = w.client.agent("writer", "perm-w").read_stream("perm-s1")
    assert [item async for item in again] == stream.chunks and again.result == 3


async def test_a_client_can_neither_lower_nor_read_the_model_budgets(world: World) -> None:
    """Token and cost budgets (``jetagents.ai``, ADR 0047) live in server counters on
    ``agt.ctr.ai.>`` that only hosts increment: a client cannot give its tenant tokens back by
    publishing a negative increment, nor read another tenant's spending."""
    seen = Violations()
    atk = await _attacker(world, seen)
    try:
        await atk.publish("agt.ctr.ai.tokens.tenant.acme", b"", headers={"Nats-Incr": "-1000000"})
        await seen.wait_for('Publish to "agt.ctr.ai.tokens.tenant.acme"')
        api = "$JS.API.DIRECT.GET.AGT_CTR.agt.ctr.ai.tokens.tenant.acme"
        with pytest.raises((NatsTimeout, NoRespondersError)):
            await atk.request(api, b"", timeout=0.5)
        await seen.wait_for(api)
    finally:
        await atk.close()


async def test_reminders_only_through_a_host(world: World) -> None:
    """A client may not publish a schedule on agt.rem.> (it would fire commands at any agent
    and replace or cancel any agent's reminders); it asks the agent's host, which may."""
    w = world
    ref = w.client.agent("counter", "rem")
    got = await ref.remind("later", cron="0 3 * * *", action="increment", params={"by": 1})
    assert got["schedule"] == "0 0 3 * * *"
    subject = "agt.rem.counter.rem.later"
    assert await w.count("AGT_CMD", subject) == 1
    seen = Violations()
    forger = await _attacker(w, seen)
    try:
        for target in (subject, "agt.rem.counter.victim.forged"):
            hdrs = {
                "Nats-Schedule": "@every 1s",
                "Nats-Schedule-Target": "agt.cmd.counter.victim",
                "Nats-Rollup": "sub",
            }
            with pytest.raises((NatsTimeout, NoRespondersError)):
                await forger.request(target, b'{"action":"increment","params":{}}', timeout=0.5, headers=hdrs)
            await seen.wait_for(f'Publish to "{target}"')
    finally:
        await forger.close()
    assert [r["name"] for r in await ref.reminders()] == ["later"]
    assert await w.count("AGT_CMD", "agt.rem.counter.victim.forged") == 0
    await ref.cancel_reminder("later")
    assert await ref.reminders() == []


async def test_a_client_uses_the_high_lane_but_never_its_consumers_or_stored_subjects(world: World) -> None:
    """ADR 0058: a client publishes high-priority commands (``agt.cmd.<type>.<id>.high``,
    stream ``AGT_CMDH``) with the rights it has for commands; it cannot publish to the stored
    subjects, pull or acknowledge the hosts' ``h<n>`` consumers, make its own, or purge."""
    w = world
    ref = w.client.agent("counter", "perm-high")
    assert await ref.request("increment", {"by": 2}, priority="high") == 2
    stored = await w.messages("AGT_CMDH")
    seen = Violations()
    atk = await _attacker(w, seen)
    try:
        ack = await atk.request("agt.cmd.counter.perm-high.high", b'{"action":"get"}', 5)
        assert orjson.loads(ack.data)["stream"] == "AGT_CMDH", ack.data
        await atk.publish("agt.ph.0.counter.perm-high", b'{"action":"increment"}')
        await seen.wait_for('Publish to "agt.ph.0.counter.perm-high"')
        for api in (
            "$JS.API.CONSUMER.MSG.NEXT.AGT_CMDH.h0",
            "$JS.API.CONSUMER.CREATE.AGT_CMDH.mine",
            "$JS.API.CONSUMER.DELETE.AGT_CMDH.h0",
            "$JS.API.STREAM.PURGE.AGT_CMDH",
            "$JS.API.STREAM.MSG.DELETE.AGT_CMDH",
        ):
            with pytest.raises((NatsTimeout, NoRespondersError)):
                await atk.request(api, b'{"seq":1}', timeout=0.5)
            await seen.wait_for(api)
    finally:
        await atk.close()
    assert await w.messages("AGT_CMDH") <= stored + 1  # only its own command, taken by the host


async def test_a_refused_publish_fails_its_own_call_and_spares_the_connection(world: World) -> None:
    """A subject the client user may not publish to (a typo'd root here) is refused by the
    server: the call waiting on it gets ``PermissionDenied`` at once, not a timeout, and the
    library's connection stays open for every other call (nats-py's own behaviour; the
    library's parser used to turn it into a closed connection)."""
    w = world
    ref = w.client.agent("counter", "perm-denied")
    assert await ref.request("increment", {"by": 1}) == 1
    typo = await Client.connect(
        settings=ClientSettings(
            nats_url=w.booted.url("client"), subject_root="agx", inbox_prefix=CLIENT_INBOX, request_timeout_s=60
        )
    )
    try:
        wrong = typo.agent("counter", "perm-denied")
        for delivery in ("at-most-once", "exactly-once"):
            with pytest.raises(PermissionDenied) as caught:
                await wrong.request("increment", {"by": 1}, delivery=delivery)
            assert caught.value.details["subject"].startswith("agx.")
        assert not typo.nc.is_closed
    finally:
        await typo.close()
    # a raw publish of the shared client's connection to a subject it may not use
    await w.client.nc.publish("agt.evt.counter.perm-denied", b"{}")
    await w.client.nc.flush()
    assert await ref.request("increment", {"by": 1}, delivery="at-most-once") == 2
    assert not w.client.nc.is_closed


async def test_a_client_schedule_on_a_command_subject_never_runs(server: BootedConfigs) -> None:
    """``AGT_CMD`` allows message schedules (reminders need them) on all its subjects, and the
    server can neither be told which nor turn them off again: whoever may send commands may
    store one (``Nats-Schedule`` on ``agt.cmd.<type>.<id>``, firing at another agent every
    second), and while no host runs it fires unchecked. A host refuses it as it arrives
    (dead-lettered once, acknowledged: that deletes it, and a deleted schedule stops), and
    refuses every firing of it (its ``Nats-Scheduler`` is no host's reminder subject of that
    agent): the victim never runs one, not even those that piled up before."""
    admin = await nats.connect(server.url("admin"))
    settings = host_settings(server.url("host"), host_id="perm-sch", inbox_prefix=HOST_INBOX)
    registry = Registry(EXAMPLE_AGENTS)
    async with Host(settings, registry):
        pass  # the streams exist; now no host runs

    async def held(subject: str) -> int:
        info = await js_api(admin, "$JS.API.STREAM.INFO.AGT_CMD", {"subjects_filter": subject}, 5)
        return sum((info["state"].get("subjects") or {}).values())

    async def last_seq() -> int:
        return int((await js_api(admin, "$JS.API.STREAM.INFO.AGT_CMD", None, 5))["state"]["last_seq"])

    victim, schedule = "agt.p.*.counter.sch-victim", "agt.p.*.counter.sch-evil"
    atk = await nats.connect(server.url("client"), inbox_prefix=CLIENT_INBOX)
    try:
        hdrs = {
            "Nats-Schedule": "@every 1s",
            "Nats-Schedule-Target": "agt.cmd.counter.sch-victim",
            "Agt-Reminder": "forged",
        }
        body = b'{"action":"increment","params":{"by":100}}'
        ack = await atk.request("agt.cmd.counter.sch-evil", body, 5, headers=hdrs)
        assert orjson.loads(ack.data)["stream"] == "AGT_CMD", ack.data  # stored: the server cannot refuse it
        for _ in range(1500):  # 30 s: it fired twice, with nobody there to refuse it
            if await held(victim) >= 2:
                break
            await asyncio.sleep(0.02)
        assert await held(victim) >= 2
    finally:
        await atk.close()
    async with Host(settings, registry) as host:
        for _ in range(1500):  # the schedule and its firings are refused (and so deleted)
            if await held(schedule) + await held(victim) == 0:
                break
            await asyncio.sleep(0.02)
        assert await held(schedule) + await held(victim) == 0
        before = await last_seq()
        await asyncio.sleep(2.5)  # more than two periods: a schedule still held fires again
        assert await last_seq() == before, "the client's schedule still fires"
        client = await Client.connect(
            settings=ClientSettings(nats_url=server.url("client"), partitions=8, inbox_prefix=CLIENT_INBOX)
        )
        try:
            assert await client.agent("counter", "sch-victim").request("get", delivery="at-most-once") == 0
        finally:
            await client.close()
        assert host.stats["dead_letters"] >= 3  # the schedule and every firing, refused once
    await admin.close()
