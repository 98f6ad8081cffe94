"""The journal's rules (ADR 0042), pure: which commits close a command, the cursor check,
the keys, and the JSON of journal commits."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from jetagents import NonDeterministic, step_key
from jetagents._core.journal import (
    _STEP_KEY,
    Journal,
    blocked_entry,
    closes,
    end_entry,
    entry_tag,
    fold,
    key_of,
    recorded,
    step_entry,
)
from jetagents._core.wire import Commit, encode_commit


def test_only_plain_and_closing_commits_feed_the_record() -> None:
    assert closes(None)  # every commit written before durable steps
    assert closes(end_entry(3))
    assert not closes(step_entry(0, "a", 1))
    assert not closes(blocked_entry(1, {"code": "nondeterministic"}))


def test_fold_opens_a_journal_at_its_first_entry_and_drops_it_at_its_end() -> None:
    journals: dict[str, Journal] = {}
    assert not fold(journals, "m1", step_entry(0, "a", 1))
    assert not fold(journals, "m2", step_entry(0, "x", "v"))
    assert not fold(journals, "m1", step_entry(1, "b", {"k": [1]}))
    assert [e["name"] for e in journals["m1"].steps] == ["a", "b"]
    assert fold(journals, "m0", None)  # another command's plain commit: no journal
    assert "m0" not in journals
    assert fold(journals, "m1", end_entry(2))
    assert list(journals) == ["m2"]


def test_a_repeated_or_skipping_position_is_not_a_second_run() -> None:
    j = Journal()
    j.add(step_entry(0, "a", 1))
    j.add(step_entry(0, "a", 2))  # a repeat of position 0: the first one wins
    j.add(step_entry(2, "c", 3))  # a gap: not this journal's next entry
    assert [e["value"] for e in j.steps] == [1]


def test_recorded_returns_the_entry_or_none_past_the_end() -> None:
    j = Journal()
    j.add(step_entry(0, "reserve", "r-1"))
    j.add(step_entry(1, "charge", error={"code": "domain", "reason": "declined"}))
    assert recorded(None, 0, "reserve", "checkout") is None  # no journal: new work
    assert recorded(j, 0, "reserve", "checkout") == step_entry(0, "reserve", "r-1")
    assert recorded(j, 1, "charge", "checkout")["ok"] is False  # type: ignore[index]
    assert recorded(j, 2, "ship", "checkout") is None  # steps added after the journaled ones


def test_another_name_at_a_journaled_position_is_nondeterministic() -> None:
    j = Journal()
    j.add(step_entry(0, "reserve", 1))
    j.add(step_entry(1, "charge", 2))
    with pytest.raises(NonDeterministic, match=r"reached step 1 'ship', but its journal has step 1 'charge'") as info:
        recorded(j, 1, "ship", "checkout")
    err = info.value
    assert err.code == "nondeterministic" and not err.retryable
    assert err.details == {"step": "ship", "position": 1, "journaled": "charge"}


def test_blocked_keeps_the_journal_open_and_survives_json() -> None:
    journals: dict[str, Journal] = {}
    fold(journals, "m1", step_entry(0, "a", 1))
    fold(journals, "m1", blocked_entry(1, {"code": "nondeterministic"}))
    assert journals["m1"].blocked is not None
    back = Journal.from_json(orjson.loads(orjson.dumps(journals["m1"].to_json())))
    assert back.steps == journals["m1"].steps and back.blocked == journals["m1"].blocked


def test_keys_and_message_id_tags() -> None:
    assert key_of("order.o1", "m1", 2) == "order.o1:m1#2"
    assert entry_tag(step_entry(2, "a", 1), 9) == "#2"
    assert entry_tag(blocked_entry(2, {}), 9) == "#blocked@9"  # one per blocked re-run


def test_step_key_is_only_known_inside_a_step() -> None:
    with pytest.raises(RuntimeError, match="inside a step"):
        step_key()
    token = _STEP_KEY.set("order.o1:m1#0")
    try:
        assert step_key() == "order.o1:m1#0"
    finally:
        _STEP_KEY.reset(token)


def test_a_journal_commit_reads_back_and_an_old_commit_still_reads() -> None:
    body = encode_commit(
        n=8,
        cmd="m1",
        action="checkout",
        events=[],
        result=None,
        cseq=0,
        ts_ms=1,
        own=4,
        j=step_entry(2, "charge", {"id": 9}),
    )
    c = Commit.model_validate_json(body)
    assert c.j == step_entry(2, "charge", {"id": 9}) and c.events == [] and c.cseq == 0
    old = encode_commit(n=1, cmd="m0", action="a", events=[], result=1, cseq=3, ts_ms=1, own=0)
    assert b'"j"' not in old and Commit.model_validate_json(old).j is None
    # a value orjson cannot write goes through the model, as for plain commits
    big = encode_commit(n=1, cmd="m", action="a", events=[], result=2**70, ts_ms=1, own=0, j=end_entry(0), cseq=5)
    assert Commit.model_validate_json(big).result == 2**70


def test_an_action_without_a_host_runs_its_steps_plainly() -> None:
    from tests.durable_agents import Job

    async def main() -> None:
        from jetagents import AgentContext, AgentId, SystemClock

        class _JS:
            async def publish(self, subject: str, body: bytes) -> None:
                seen.append((subject, body))

        class _NC:
            def jetstream(self) -> _JS:
                return _JS()

        class _Client:
            nc = _NC()

        seen: list[tuple[str, bytes]] = []
        agent = Job(AgentContext(AgentId("job", "j1"), SystemClock(), client=_Client()))
        agent._begin()
        with pytest.raises(RuntimeError, match="inside a step"):  # no host: no journal, no key
            await Job.run(agent, run="r", steps=1)

    asyncio.run(main())


def test_a_call_made_as_a_step_sends_the_steps_key_as_command_id() -> None:
    from jetagents._core.journal import callee_command_id, current_step_key

    assert current_step_key() is None
    assert callee_command_id("order.o1:m1#3") == "order.o1:m1#3"
    long = "order.o1:" + "m" * 300 + "#3"
    hashed = callee_command_id(long)
    assert hashed.startswith("h") and len(hashed) == 33 and hashed == callee_command_id(long)
