"""Agent addresses, subject tokens and the partition function (pure, no NATS)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetagents import AgentId, partition_of
from jetagents._core.ids import fnv1a_32, is_valid_token, validate_token

TOKEN_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
tokens = st.text(alphabet=TOKEN_ALPHABET, min_size=1, max_size=128)


# -- partition_of -------------------------------------------------------------------------
# Verified against nats-server 2.15.1's ``partition(8,1,2)`` subject transform.
@pytest.mark.parametrize(
    ("agent_type", "agent_id", "expected"),
    [
        ("counter", "c1", 3),
        ("counter", "c2", 6),
        ("counter", "c3", 1),
        ("counter", "a1", 5),
    ],
)
def test_partition_of_matches_server_vectors(agent_type: str, agent_id: str, expected: int) -> None:
    assert partition_of(agent_type, agent_id, 8) == expected


def test_partition_of_is_fnv1a_of_type_then_id_without_separator() -> None:
    # the server hashes the two tokens concatenated, so these two addresses share a hash
    assert partition_of("counter", "c1", 1 << 30) == fnv1a_32(b"counterc1") % (1 << 30)
    assert partition_of("counter", "c1", 4096) == partition_of("counterc", "1", 4096)


def test_partition_of_single_partition_is_zero() -> None:
    assert partition_of("counter", "c1", 1) == 0


@pytest.mark.parametrize("partitions", [0, -1, -64])
def test_partition_of_rejects_non_positive_partition_count(partitions: int) -> None:
    with pytest.raises(ValueError, match="partitions"):
        partition_of("counter", "c1", partitions)


@settings(max_examples=200, deadline=None)
@given(agent_type=tokens, agent_id=tokens, partitions=st.integers(min_value=1, max_value=4096))
def test_partition_of_in_range_and_deterministic(agent_type: str, agent_id: str, partitions: int) -> None:
    p = partition_of(agent_type, agent_id, partitions)
    assert 0 <= p < partitions
    assert partition_of(agent_type, agent_id, partitions) == p
    assert p == fnv1a_32((agent_type + agent_id).encode()) % partitions


# -- fnv1a_32 -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", 0x811C9DC5),
        (b"a", 0xE40C292C),
        (b"foobar", 0xBF9CF968),  # reference vector from the FNV test suite
    ],
)
def test_fnv1a_32_known_vectors(data: bytes, expected: int) -> None:
    assert fnv1a_32(data) == expected


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=256))
def test_fnv1a_32_is_a_32_bit_value(data: bytes) -> None:
    assert 0 <= fnv1a_32(data) <= 0xFFFFFFFF


# -- tokens -------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["a", "Z", "0", "_", "-", "counter", "c-1_X", "a" * 128, TOKEN_ALPHABET])
def test_valid_tokens_are_accepted(value: str) -> None:
    assert validate_token(value) == value
    assert is_valid_token(value)


@settings(max_examples=200, deadline=None)
@given(tokens)
def test_any_token_of_the_allowed_alphabet_is_accepted(value: str) -> None:
    assert validate_token(value) == value
    assert is_valid_token(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a.b",
        ".",
        "a b",
        " a",
        "*",
        ">",
        "a*",
        "a>",
        "a" * 129,
        "ä",
        "a/b",
        "a\tb",
        "a\n",  # `$` in a re.match pattern also matches before a trailing newline
        "\n",
        "a\r\n",
    ],
)
def test_invalid_tokens_are_rejected(value: str) -> None:
    assert not is_valid_token(value)
    with pytest.raises(ValueError, match="invalid agent id"):
        validate_token(value, "agent id")


@pytest.mark.parametrize("value", [None, 1, b"abc", ["a"]])
def test_non_string_tokens_are_rejected(value: object) -> None:
    assert not is_valid_token(value)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        validate_token(value)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=140))
def test_token_validation_agrees_with_the_documented_alphabet(value: str) -> None:
    expected = 1 <= len(value) <= 128 and all(c in TOKEN_ALPHABET for c in value)
    assert is_valid_token(value) is expected


# -- AgentId ------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["counter/c1", "counter.c1"])
def test_agent_id_parse(text: str) -> None:
    aid = AgentId.parse(text)
    assert aid == AgentId("counter", "c1")
    assert aid.type == "counter"
    assert aid.id == "c1"
    assert aid.key == "counter.c1"
    assert str(aid) == "counter/c1"


def test_agent_id_parse_prefers_slash() -> None:
    # "counter/c1.x" splits at the slash, leaving an id with a dot, which is invalid
    with pytest.raises(ValueError):
        AgentId.parse("counter/c1.x")


@pytest.mark.parametrize(
    "text",
    [
        "counter",  # no separator
        "",
        "/c1",  # empty type
        "counter/",  # empty id
        ".c1",
        "counter.",
        "counter/c1/x",  # id "c1/x"
        "counter.c1.x",  # id "c1.x"
        "count er/c1",
        "counter/c*",
        "counter/>",
    ],
)
def test_agent_id_parse_errors(text: str) -> None:
    with pytest.raises(ValueError):
        AgentId.parse(text)


def test_agent_id_constructor_validates_both_tokens() -> None:
    with pytest.raises(ValueError, match="agent type"):
        AgentId("bad.type", "c1")
    with pytest.raises(ValueError, match="agent id"):
        AgentId("counter", "bad id")


@settings(max_examples=100, deadline=None)
@given(agent_type=tokens, agent_id=tokens)
def test_agent_id_str_round_trips_through_parse(agent_type: str, agent_id: str) -> None:
    aid = AgentId(agent_type, agent_id)
    assert AgentId.parse(str(aid)) == aid
    assert AgentId.parse(aid.key) == aid


def test_agent_id_is_frozen_and_hashable() -> None:
    aid = AgentId("counter", "c1")
    with pytest.raises(AttributeError):
        aid.id = "c2"  # type: ignore[misc]
    assert {aid: 1}[AgentId("counter", "c1")] == 1


def test_agent_id_rejects_trailing_newline() -> None:
    # a newline inside a subject token would split the NATS protocol line
    with pytest.raises(ValueError):
        AgentId("counter", "c1\n")
