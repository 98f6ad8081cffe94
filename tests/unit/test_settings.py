"""Settings from ``JETAGENTS_*`` environment variables."""

from __future__ import annotations

import os
import re

import pytest
from pydantic import ValidationError

from jetagents import ClientSettings, HostSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("JETAGENTS_"):
            monkeypatch.delenv(key)


def test_host_defaults() -> None:
    s = HostSettings()
    assert s.nats_url == "nats://127.0.0.1:4222"
    assert s.partitions == 64
    assert s.subject_root == "agt"
    assert s.agents == []  # the examples are opt-in (ADR 0040)
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", s.host_id)
    assert s.loop == "uvloop"  # cheaper per command (ADR 0041)


def test_host_reads_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JETAGENTS_NATS_URL", "nats://10.0.0.1:4333")
    monkeypatch.setenv("JETAGENTS_PARTITIONS", "8")
    monkeypatch.setenv("JETAGENTS_AGENTS", '["my.mod:Thing", "other:AGENTS"]')
    monkeypatch.setenv("JETAGENTS_HOST_ID", "host-a_1")
    monkeypatch.setenv("JETAGENTS_ACK_WAIT_S", "2.5")
    monkeypatch.setenv("JETAGENTS_MAX_DELIVER", "7")
    monkeypatch.setenv("JETAGENTS_SUBJECT_ROOT", "myapp")
    monkeypatch.setenv("JETAGENTS_LOOP", "uvloop")
    monkeypatch.setenv("JETAGENTS_LOG_FORMAT", "json")
    s = HostSettings()
    assert s.nats_url == "nats://10.0.0.1:4333"
    assert s.partitions == 8
    assert s.agents == ["my.mod:Thing", "other:AGENTS"]
    assert s.host_id == "host-a_1"
    assert s.ack_wait_s == 2.5
    assert s.max_deliver == 7
    assert s.subject_root == "myapp"
    assert s.loop == "uvloop"
    assert s.log_format == "json"


def test_the_event_loop_is_read_under_its_name_and_the_older_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JETAGENTS_LOOP", "uvloop")
    monkeypatch.setenv("JETAGENTS_EVENT_LOOP", "asyncio")
    assert HostSettings().loop == "asyncio"  # the documented name wins
    monkeypatch.delenv("JETAGENTS_EVENT_LOOP")
    monkeypatch.setenv("LOOP", "asyncio")  # never unprefixed
    assert HostSettings().loop == "uvloop"
    assert HostSettings(loop="asyncio").loop == "asyncio"  # by its field name in code (the CLI's --loop)


def test_unprefixed_and_unknown_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARTITIONS", "3")
    monkeypatch.setenv("JETAGENTS_NOT_A_SETTING", "x")
    assert HostSettings().partitions == 64


def test_init_arguments_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JETAGENTS_PARTITIONS", "8")
    assert HostSettings(partitions=16).partitions == 16


def test_client_reads_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JETAGENTS_NATS_URL", "nats://h:1")
    monkeypatch.setenv("JETAGENTS_PARTITIONS", "8")
    monkeypatch.setenv("JETAGENTS_REQUEST_TIMEOUT_S", "1.5")
    monkeypatch.setenv("JETAGENTS_RETRY_ATTEMPTS", "2")
    s = ClientSettings()
    assert (s.nats_url, s.partitions, s.request_timeout_s, s.retry_attempts) == ("nats://h:1", 8, 1.5, 2)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("JETAGENTS_PARTITIONS", "0"),
        ("JETAGENTS_PARTITIONS", "-1"),
        ("JETAGENTS_PARTITIONS", "4097"),
        ("JETAGENTS_PARTITIONS", "eight"),
        ("JETAGENTS_HOST_ID", "host.a"),
        ("JETAGENTS_HOST_ID", "host a"),
        ("JETAGENTS_HOST_ID", "h*"),
        ("JETAGENTS_HOST_ID", "h" * 65),
        ("JETAGENTS_HOST_ID", "host\n"),
        ("JETAGENTS_SUBJECT_ROOT", "agt.x"),
        ("JETAGENTS_SUBJECT_ROOT", "agt\n"),
        ("JETAGENTS_MAX_DELIVER", "0"),
        ("JETAGENTS_ACK_WAIT_S", "0"),
        ("JETAGENTS_PULL_EXPIRES_S", "0.5"),
        ("JETAGENTS_REPLICAS", "6"),
        ("JETAGENTS_MAX_PAYLOAD_BYTES", "100"),
        ("JETAGENTS_LOOP", "trio"),
        ("JETAGENTS_EVENT_LOOP", "trio"),
        ("JETAGENTS_LOG_FORMAT", "xml"),
    ],
)
def test_host_rejects_invalid_env(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError):
        HostSettings()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"partitions": 0},
        {"host_id": "bad.id"},
        {"host_id": ""},
        {"workers": 0},
        {"drain_grace_s": -1},
    ],
)
def test_host_rejects_invalid_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        HostSettings(**kwargs)  # type: ignore[arg-type]


def test_agents_must_be_a_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JETAGENTS_AGENTS", "my.mod:Thing")  # not JSON
    with pytest.raises(Exception) as info:
        HostSettings()
    assert "agents" in str(info.value)


@pytest.mark.parametrize(("var", "value"), [("JETAGENTS_RETRY_ATTEMPTS", "0"), ("JETAGENTS_REQUEST_TIMEOUT_S", "0")])
def test_client_rejects_invalid_env(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError):
        ClientSettings()
