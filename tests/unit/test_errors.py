"""The error hierarchy: codes, retryable flags, rebuilding from the wire.

The expected retryable flags are read from the table in the docstring of
``jetagents._core.errors`` so that the documentation and the code cannot drift apart.
"""

from __future__ import annotations

import re

import pytest

from jetagents._core import errors as _errors
from jetagents._core.errors import (
    AgentSuspended,
    AgentTimeout,
    DomainError,
    FencedError,
    InternalError,
    InvalidParams,
    JetAgentsError,
    PartitionError,
    SignalBufferFull,
    Throttled,
    Unavailable,
    error_from_wire,
)

_ROW = re.compile(r"^\s*(?:[│├└─\s]*)\b([A-Z][A-Za-z]+)\b\s+(yes|no)\b", re.MULTILINE)


def documented_flags() -> dict[str, bool]:
    doc = _errors.__doc__ or ""
    return {name: flag == "yes" for name, flag in _ROW.findall(doc)}


def all_error_classes() -> list[type[JetAgentsError]]:
    """Every JetAgentsError subclass defined in jetagents._core.errors (the base included)."""
    return [
        obj
        for obj in vars(_errors).values()
        if isinstance(obj, type) and issubclass(obj, JetAgentsError) and obj.__module__ == _errors.__name__
    ]


CLASSES = [c for c in all_error_classes() if c is not JetAgentsError]
PLAIN = [c for c in CLASSES if c is not DomainError]


def test_the_docstring_table_parses() -> None:
    flags = documented_flags()
    # spot checks of the table, so a broken parser cannot make the tests below vacuous
    assert flags["AgentTimeout"] is True
    assert flags["Unavailable"] is True
    assert flags["PartitionError"] is True
    assert flags["FencedError"] is True
    assert flags["InvalidParams"] is False
    assert flags["DomainError"] is False
    assert flags["InternalError"] is False
    assert len(flags) >= 10


def test_docstring_table_lists_every_error_class() -> None:
    assert set(documented_flags()) == {c.__name__ for c in CLASSES}


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_retryable_flag_as_documented(cls: type[JetAgentsError]) -> None:
    expected = documented_flags()[cls.__name__]
    assert cls.retryable is expected
    err = DomainError("r") if cls is DomainError else cls("m")
    assert err.retryable is expected
    assert err.to_wire()["retryable"] is expected


def test_retryable_classes() -> None:
    assert {c for c in CLASSES if c.retryable} == {
        AgentTimeout,
        Unavailable,
        PartitionError,
        FencedError,
        AgentSuspended,
        SignalBufferFull,
        Throttled,
    }
    assert JetAgentsError.retryable is False


def test_codes_are_unique_and_own() -> None:
    codes = [cls.code for cls in all_error_classes()]
    assert len(codes) == len(set(codes)), codes
    for cls in CLASSES:
        assert "code" in vars(cls), f"{cls.__name__} inherits its code"
        assert re.fullmatch(r"[a-z][a-z_]*", cls.code), cls.code


def test_hierarchy() -> None:
    assert issubclass(PartitionError, Unavailable)
    for cls in all_error_classes():
        assert issubclass(cls, Exception)
    for cls in CLASSES:
        assert issubclass(cls, JetAgentsError)


def test_message_defaults_and_str() -> None:
    err = InvalidParams()
    assert err.message == "invalid_params"
    assert str(err) == "invalid_params"
    assert err.details is None
    assert "details" not in err.to_wire()
    err = InvalidParams("bad by", details=[{"loc": ["by"]}])
    assert str(err) == "bad by"
    assert err.to_wire() == {
        "code": "invalid_params",
        "message": "bad by",
        "retryable": False,
        "details": [{"loc": ["by"]}],
    }


def test_domain_error_fields() -> None:
    err = DomainError("insufficient_funds", "balance 5 < 10", details={"balance": 5})
    assert err.reason == "insufficient_funds"
    assert err.message == "balance 5 < 10"
    assert err.to_wire() == {
        "code": "domain",
        "message": "balance 5 < 10",
        "retryable": False,
        "details": {"balance": 5},
        "reason": "insufficient_funds",
    }
    assert DomainError("just_reason").message == "just_reason"


@pytest.mark.parametrize("cls", PLAIN, ids=lambda c: c.__name__)
def test_every_error_code_is_known_to_error_from_wire(cls: type[JetAgentsError]) -> None:
    back = error_from_wire(cls("msg", details=[1]).to_wire())
    assert type(back) is cls
    assert (back.message, back.details) == ("msg", [1])


def test_error_from_wire_domain() -> None:
    back = error_from_wire({"code": "domain", "message": "m", "reason": "r", "details": {"a": 1}})
    assert isinstance(back, DomainError)
    assert (back.reason, back.message, back.details) == ("r", "m", {"a": 1})
    back = error_from_wire({"code": "domain"})
    assert isinstance(back, DomainError)
    assert back.reason == "domain"


def test_error_from_wire_unknown_code_is_internal() -> None:
    back = error_from_wire({"code": "martian", "message": "from the future", "details": {"x": 1}})
    assert type(back) is InternalError
    assert back.message == "from the future"
    assert back.details == {"x": 1}


def test_error_from_wire_missing_fields() -> None:
    back = error_from_wire({})
    assert type(back) is InternalError
    assert back.message == "internal"
    back = error_from_wire({"code": "fenced"})
    assert type(back) is FencedError
    assert back.message == "fenced"


@pytest.mark.parametrize("data", [None, "timeout", 42, ["timeout"], b"{}", 1.5])
def test_error_from_wire_non_dict_is_internal(data: object) -> None:
    back = error_from_wire(data)
    assert type(back) is InternalError
    assert repr(data) in back.message
