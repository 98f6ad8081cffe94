"""The faster header code writes the same bytes and reads the same dicts as nats-py's."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio import client as nc_mod

from jetagents._nats.conn import FAST_HEADERS, Connection, parse_header_lines

header_names = st.one_of(
    st.sampled_from(["Agt-Command-Id", "traceparent", "Nats-Msg-Id", " Padded ", "", "bad name", "ä", "a:b"]),
    st.text(min_size=0, max_size=12),
)
header_values = st.text(max_size=40)


def _capture(client: Any) -> list[bytes]:
    sent: list[bytes] = []

    async def send_command(cmd: bytes, priority: bool = False) -> None:
        sent.append(cmd)

    client._send_command = send_command
    client._flush_queue = None
    return sent


def _publish(client: Any, headers: dict[str, str] | None) -> tuple[str, bytes]:
    sent = _capture(client)
    try:
        asyncio.run(client._send_publish("agt.call.t.x", "_INBOX.r.1", b'{"a":1}', 7, headers))
    except Exception as exc:
        return type(exc).__name__, b""
    return "ok", b"".join(sent)


def test_the_installed_nats_py_gets_the_fast_path() -> None:
    # If this fails, nats-py changed the two methods: read the new code, adjust _natsconn.py.
    assert FAST_HEADERS


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.dictionaries(header_names, header_values, max_size=5)))
def test_encoding_is_byte_identical(headers: dict[str, str] | None) -> None:
    ours = _publish(Connection(), headers)
    theirs = _publish(nc_mod.Client(), headers)
    assert ours == theirs


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=30),
            st.builds(
                lambda k, v: k + b":" + v,
                st.sampled_from([b"Agt-Deadline", b" spaced ", b"tab\tname", b"\xc3\xa4", b"", b"x\x1cy"]),
                st.binary(max_size=20),
            ),
        ),
        max_size=6,
    )
)
def test_parsing_is_identical(lines: list[bytes]) -> None:
    raw = b"\r\n".join(lines) + b"\r\n\r\n"
    assert parse_header_lines(raw) == nc_mod.Client._parse_header_lines(raw)


@pytest.mark.parametrize("value", ["a\r\nInjected: 1", " spaced ", "ünïcode"])
def test_values_are_cleaned_like_nats_py(value: str) -> None:
    assert _publish(Connection(), {"K": value}) == _publish(nc_mod.Client(), {"K": value})
