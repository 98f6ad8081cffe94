"""The wire contract: command bodies, ack subjects, replies, dead letters, subjects."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.js.api import Header

from jetagents import Subjects
from jetagents._core import errors as _errors
from jetagents._core.errors import (
    DomainError,
    InternalError,
    JetAgentsError,
    MalformedCommand,
    PayloadTooLarge,
    error_from_wire,
)
from jetagents._core.wire import (
    CommandBody,
    Commit,
    WireEvent,
    decode_command,
    encode_commit,
    encode_dead_letter,
    encode_error,
    encode_ok,
    parse_ack_subject,
)

LIMIT = 1024


# -- decode_command -----------------------------------------------------------------------
def test_decode_command_valid_body() -> None:
    body = decode_command(b'{"action": "increment", "params": {"by": 2}}', LIMIT)
    assert isinstance(body, CommandBody)
    assert body.action == "increment"
    assert body.params == {"by": 2}


def test_decode_command_params_default_to_empty_dict() -> None:
    body = decode_command(b'{"action": "get"}', LIMIT)
    assert body.action == "get"
    assert body.params == {}
    # the default is not shared between bodies
    assert decode_command(b'{"action": "get"}', LIMIT).params is not body.params


def test_decode_command_nested_params_kept_as_is() -> None:
    body = decode_command(b'{"action": "a", "params": {"x": [1, {"y": null}], "s": "\\u00e9"}}', LIMIT)
    assert body.params == {"x": [1, {"y": None}], "s": "\u00e9"}


def test_decode_command_body_is_frozen() -> None:
    body = decode_command(b'{"action": "get"}', LIMIT)
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance ValidationError
        body.action = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "data",
    [
        b'{"action": "get", "extra": 1}',  # extra keys
        b'{"action": "get", "params": {}, "id": "x"}',
        b"not json",
        b"",
        b"{",
        b'["get", {}]',  # a JSON array
        b'"get"',
        b"null",
        b"42",
        b"{}",  # missing action
        b'{"params": {"by": 1}}',
        b'{"action": ""}',  # bad action names
        b'{"action": "1abc"}',
        b'{"action": "a.b"}',
        b'{"action": "a-b"}',
        b'{"action": "a b"}',
        b'{"action": "inc\\n"}',
        b'{"action": "' + b"a" * 129 + b'"}',
        b'{"action": 5}',
        b'{"action": null}',
        b'{"action": "get", "params": []}',  # params not an object
        b'{"action": "get", "params": null}',
        b'{"action": "get", "params": "x"}',
        b"\xff\xfe\x00",  # not UTF-8
    ],
)
def test_decode_command_rejects_malformed(data: bytes) -> None:
    with pytest.raises(MalformedCommand) as info:
        decode_command(data, LIMIT)
    err = info.value
    assert err.code == "malformed"
    assert isinstance(err.details, list)
    assert err.details, "details explain what is wrong"
    for d in err.details:
        assert set(d) == {"loc", "msg"}
        assert all(isinstance(p, str) for p in d["loc"])


def test_decode_command_details_name_the_bad_field() -> None:
    with pytest.raises(MalformedCommand) as info:
        decode_command(b'{"action": "get", "extra": 1}', LIMIT)
    assert ["extra"] in [d["loc"] for d in info.value.details]


@pytest.mark.parametrize("name", ["a", "_", "_private", "increment", "Get_2", "A" * 128])
def test_decode_command_accepts_identifier_action_names(name: str) -> None:
    assert decode_command(orjson.dumps({"action": name}), 4096).action == name


def test_decode_command_size_limit_is_inclusive() -> None:
    data = b'{"action": "get"}'
    assert decode_command(data, len(data)).action == "get"
    with pytest.raises(PayloadTooLarge):
        decode_command(data, len(data) - 1)


def test_decode_command_checks_size_before_parsing() -> None:
    # invalid JSON, but oversized: the size is the reported problem
    with pytest.raises(PayloadTooLarge) as info:
        decode_command(b"x" * (LIMIT + 1), LIMIT)
    assert info.value.code == "payload_too_large"
    assert str(LIMIT) in info.value.message
    # a valid but oversized body is refused too
    big = orjson.dumps({"action": "a", "params": {"s": "y" * LIMIT}})
    with pytest.raises(PayloadTooLarge):
        decode_command(big, LIMIT)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64))
def test_decode_command_only_raises_typed_errors(data: bytes) -> None:
    try:
        decode_command(data, LIMIT)
    except MalformedCommand:
        pass


# -- parse_ack_subject --------------------------------------------------------------------
def test_parse_ack_subject_v1() -> None:
    assert parse_ack_subject("$JS.ACK.AGT_CMD.p3.2.17.5.1795470801006429834.0") == (2, 17)


def test_parse_ack_subject_v2_with_domain_and_account_hash() -> None:
    # $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>.<token>
    reply = "$JS.ACK.hub.ACCHASH.AGT_CMD.p3.4.1234.9.1795470801006429834.7.r4nd0m"
    assert len(reply.split(".")) == 12
    assert parse_ack_subject(reply) == (4, 1234)


def test_parse_ack_subject_v2_underscore_domain() -> None:
    reply = "$JS.ACK._.ACCHASH.AGT_CMD.p0.1.1.1.1795470801006429834.0.tok"
    assert parse_ack_subject(reply) == (1, 1)


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "garbage",
        "_INBOX.abc.def",
        "$JS.ACK.AGT_CMD.p3",
        "$JS.ACK.AGT_CMD.p3.x.17.5.1795470801006429834.0",  # delivered not a number
        "$JS.ACK.AGT_CMD.p3.2.y.5.1795470801006429834.0",  # stream seq not a number
        "$JS.ACK.hub.ACCHASH.AGT_CMD.p3.x.1234.9.1795470801006429834.7.tok",
        "$JS.ACK.AGT_CMD.p3.2.17.5.1795470801006429834.0.extra",  # 10 tokens
        "a.b.c.d.e.f.g.h.i.j.k",  # 11 tokens
    ],
)
def test_parse_ack_subject_garbage_is_none(reply: str) -> None:
    assert parse_ack_subject(reply) is None


# -- replies and errors -------------------------------------------------------------------
@pytest.mark.parametrize("result", [None, 0, 7, -3, "s", [1, 2], {"a": {"b": [None]}}, True, 1.5])
def test_encode_ok(result: object) -> None:
    assert orjson.loads(encode_ok(result)) == {"ok": True, "result": result}


# every concrete error class of jetagents._core.errors except DomainError and its subclasses
# (tested on their own: their wire form carries a reason)
PLAIN_ERRORS: list[type[JetAgentsError]] = [
    obj
    for obj in vars(_errors).values()
    if isinstance(obj, type)
    and issubclass(obj, JetAgentsError)
    and obj.__module__ == _errors.__name__
    and obj is not JetAgentsError
    and not issubclass(obj, DomainError)
]


def test_plain_errors_found() -> None:
    assert {"AgentTimeout", "Unavailable", "InvalidParams", "InternalError"} <= {c.__name__ for c in PLAIN_ERRORS}


@pytest.mark.parametrize("cls", PLAIN_ERRORS, ids=lambda c: c.__name__)
def test_encode_error_round_trip(cls: type[JetAgentsError]) -> None:
    err = cls("something went wrong", details={"k": [1, 2]})
    wire = orjson.loads(encode_error(err))
    assert wire["ok"] is False
    assert wire["error"] == {
        "code": cls.code,
        "message": "something went wrong",
        "retryable": cls.retryable,
        "details": {"k": [1, 2]},
    }
    back = error_from_wire(wire["error"])
    assert type(back) is cls
    assert back.message == "something went wrong"
    assert back.details == {"k": [1, 2]}
    assert back.retryable is cls.retryable


@pytest.mark.parametrize("cls", PLAIN_ERRORS, ids=lambda c: c.__name__)
def test_encode_error_without_details_omits_the_key(cls: type[JetAgentsError]) -> None:
    wire = orjson.loads(encode_error(cls()))["error"]
    assert "details" not in wire
    assert wire["message"] == cls.code  # the message defaults to the code
    back = error_from_wire(wire)
    assert type(back) is cls
    assert back.details is None


def test_encode_error_domain_error_keeps_reason_and_details() -> None:
    err = DomainError("insufficient_funds", "balance 5 < 10", details={"balance": 5, "requested": 10})
    wire = orjson.loads(encode_error(err))["error"]
    assert wire == {
        "code": "domain",
        "message": "balance 5 < 10",
        "retryable": False,
        "details": {"balance": 5, "requested": 10},
        "reason": "insufficient_funds",
    }
    back = error_from_wire(wire)
    assert type(back) is DomainError
    assert isinstance(back, DomainError)
    assert back.reason == "insufficient_funds"
    assert back.message == "balance 5 < 10"
    assert back.details == {"balance": 5, "requested": 10}


def test_domain_error_message_defaults_to_reason() -> None:
    back = error_from_wire(orjson.loads(encode_error(DomainError("zero_increment")))["error"])
    assert isinstance(back, DomainError)
    assert back.reason == "zero_increment"
    assert back.message == "zero_increment"


# -- dead letters -------------------------------------------------------------------------
def _dead_letter(payload: bytes, **kw: object) -> dict[str, object]:
    out = orjson.loads(
        encode_dead_letter(
            error=InternalError("boom", details={"attempt": 5}),
            subject="agt.p.3.counter.c1",
            headers={"Agt-Command-Id": "cmd-1"},
            payload=payload,
            host="host-a",
            ts_ms=1_700_000_000_000,
            **kw,  # type: ignore[arg-type]
        )
    )
    assert isinstance(out, dict)
    return out


def test_encode_dead_letter_utf8_payload() -> None:
    payload = '{"action": "incr\u00e9ment"}'.encode()
    dl = _dead_letter(payload, stream_seq=17, deliveries=5)
    assert dl == {
        "error": {"code": "internal", "message": "boom", "retryable": False, "details": {"attempt": 5}},
        "subject": "agt.p.3.counter.c1",
        "headers": {"Agt-Command-Id": "cmd-1"},
        "payload": '{"action": "incr\u00e9ment"}',
        "payload_encoding": "utf8",
        "stream_seq": 17,
        "deliveries": 5,
        "host": "host-a",
        "ts_ms": 1_700_000_000_000,
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "truncated": False,
    }


@settings(max_examples=60, deadline=None)
@given(
    small=st.binary(max_size=4096),
    big=st.sampled_from([0, 1, 2, 3]),
    subject=st.text(max_size=3000),
    headers=st.dictionaries(st.text(max_size=300), st.text(max_size=6000), max_size=80),
)
def test_encode_dead_letter_always_fits(small: bytes, big: int, subject: str, headers: dict[str, str]) -> None:
    # large payloads are built here: hypothesis would print their repr
    payload = [small, b"\x01" * 200_000, b"\xff" * 300_000, b'"' * 100_000][big]
    limit = 64 * 1024
    out = encode_dead_letter(
        error=MalformedCommand("bad " + subject, details={"s": subject}),
        subject=subject + "\udcff",  # a lone surrogate: orjson refuses it unless cleaned
        headers={**headers, Header.DESCRIPTION: "x"},  # nats-py's enum key (a status line)
        payload=payload,
        host="h",
        ts_ms=0,
        max_bytes=limit,
        keep_bytes=256 * 1024,
    )
    assert len(out) <= limit
    dl = orjson.loads(out)
    assert dl["payload_bytes"] == len(payload)
    assert dl["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    kept = dl["payload"].encode() if dl["payload_encoding"] == "utf8" else base64.b64decode(dl["payload"])
    assert payload.startswith(kept)
    if len(kept) < len(payload):
        assert dl["truncated"] is True


@pytest.mark.parametrize("payload", [b"\xff\xfe\x00", b"\x80", b"ok\xc3"])
def test_encode_dead_letter_non_utf8_payload_is_base64(payload: bytes) -> None:
    dl = _dead_letter(payload)
    assert dl["payload_encoding"] == "base64"
    assert isinstance(dl["payload"], str)
    assert base64.b64decode(dl["payload"]) == payload
    assert dl["stream_seq"] is None
    assert dl["deliveries"] is None


def test_encode_dead_letter_empty_payload_and_no_headers() -> None:
    out = orjson.loads(
        encode_dead_letter(error=MalformedCommand("bad"), subject="s", headers=None, payload=b"", host="h", ts_ms=0)
    )
    assert out["headers"] == {}
    assert out["payload"] == ""
    assert out["payload_encoding"] == "utf8"
    assert error_from_wire(out["error"]).code == "malformed"


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=128))
def test_encode_dead_letter_payload_round_trips(payload: bytes) -> None:
    dl = _dead_letter(payload)
    if dl["payload_encoding"] == "utf8":
        assert isinstance(dl["payload"], str)
        assert dl["payload"].encode() == payload
    else:
        assert dl["payload_encoding"] == "base64"
        assert base64.b64decode(dl["payload"]) == payload  # type: ignore[arg-type]


# -- event log commit -----------------------------------------------------------------------
def test_commit_round_trip_and_extra_rejected() -> None:
    c = Commit(n=1, cmd="c", action="increment", events=[{"type": "Incremented", "data": {"by": 1}}])  # type: ignore[list-item]
    back = Commit.model_validate_json(c.model_dump_json())
    assert back == c
    assert back.cseq == 0 and back.result is None
    with pytest.raises(Exception):  # noqa: B017 - pydantic ValidationError
        Commit.model_validate({**c.model_dump(), "surprise": 1})


# -- subjects -----------------------------------------------------------------------------
def test_subjects_default_root() -> None:
    s = Subjects()
    assert s.root == "agt"
    assert s.cmd("counter", "c1") == "agt.cmd.counter.c1"
    assert s.call("counter", "c1") == "agt.call.counter.c1"
    assert s.evt("counter", "c1") == "agt.evt.counter.c1"
    assert s.dlq("counter", "c1") == "agt.dlq.counter.c1"
    assert s.partition_filter(3) == "agt.p.3.>"
    assert s.cmd_wildcard == "agt.cmd.*.*"
    assert s.call_wildcard == "agt.call.*.*"
    assert s.evt_wildcard == "agt.evt.*.*"
    assert s.dlq_wildcard == "agt.dlq.>"
    assert s.sys() == "agt.sys"
    assert s.sys("hosts", "h1") == "agt.sys.hosts.h1"


def test_subjects_partition_transform_dest() -> None:
    assert Subjects().partition_transform_dest(8) == "agt.p.{{partition(8,1,2)}}.{{wildcard(1)}}.{{wildcard(2)}}"
    assert Subjects("x").partition_transform_dest(64) == "x.p.{{partition(64,1,2)}}.{{wildcard(1)}}.{{wildcard(2)}}"


def test_subjects_custom_root() -> None:
    s = Subjects("myapp")
    assert s.cmd("account", "a1") == "myapp.cmd.account.a1"
    assert s.call("account", "a1") == "myapp.call.account.a1"
    assert s.evt("account", "a1") == "myapp.evt.account.a1"
    assert s.dlq("account", "a1") == "myapp.dlq.account.a1"
    assert s.partition_filter(0) == "myapp.p.0.>"
    assert s.cmd_wildcard == "myapp.cmd.*.*"
    assert s.dlq_wildcard == "myapp.dlq.>"
    assert s.sys("x") == "myapp.sys.x"


# -- encode_commit: orjson's JSON of a Commit, the model's when orjson cannot -----------------
_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)  # beyond 64 bits: the model's path
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=2**40),
    cmd=st.text(min_size=1, max_size=20),
    action=st.text(min_size=1, max_size=10),
    events=st.lists(
        st.fixed_dictionaries(
            {"type": st.text(min_size=1, max_size=10), "data": st.dictionaries(st.text(max_size=5), _json_values)}
        ),
        max_size=3,
    ),
    result=_json_values,
    cseq=st.integers(min_value=0, max_value=2**40),
    ts_ms=st.integers(min_value=0, max_value=2**45),
    own=st.integers(min_value=0, max_value=2**40),
)
def test_encode_commit_reads_back_as_the_model_writes_it(
    n: int, cmd: str, action: str, events: list[dict[str, Any]], result: Any, cseq: int, ts_ms: int, own: int
) -> None:
    fields = {"n": n, "cmd": cmd, "action": action, "result": result, "cseq": cseq, "ts_ms": ts_ms, "own": own}
    body = encode_commit(events=events, **fields)
    model = Commit(events=[WireEvent(**e) for e in events], **fields)
    assert Commit.model_validate_json(body) == model
    # the same JSON document as the model's own (orjson and pydantic may spell a float
    # differently, never its value), fields in the model's order; the journal field ``j``
    # (ADR 0042) is only written when given (journal commits, test_journal.py), ``reset``
    # (ADR 0053) only in the reset commits a restore appends (test_supervision.py)
    assert json.loads(body) == json.loads(model.model_dump_json(exclude={"j", "reset"}))
    assert list(json.loads(body)) == [f for f in Commit.model_fields if f not in ("j", "reset")]
