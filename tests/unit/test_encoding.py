"""Payload compression (ADR 0043) and the high lane's mailbox order (ADR 0058), without a server."""

from __future__ import annotations

from collections import deque

import orjson
import pytest
import zstandard

from jetagents._client.command import OutboundCommand, SendOptions
from jetagents._client.reply import decode_reply
from jetagents._core.command import Command, Kind
from jetagents._core.encoding import ZSTD, compress, decode
from jetagents._core.errors import MalformedCommand, PayloadTooLarge, UnsupportedEncoding
from jetagents._core.ids import AgentId
from jetagents._core.wire import Priority, Subjects, is_high_lane
from jetagents._host.scheduler import _held_before, _queued


def test_decode_round_trips_and_bounds_what_a_frame_decodes_to() -> None:
    body = orjson.dumps({"action": "put", "params": {"rows": list(range(5000))}})
    assert decode(compress(body), ZSTD, limit_bytes=len(body)) == body
    with pytest.raises(PayloadTooLarge) as info:
        decode(compress(body), ZSTD, limit_bytes=len(body) - 1)
    assert info.value.details["encoding"] == "zstd"
    # a frame that does not declare its size, holding 32 MiB: stopped one byte past the limit
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (32 << 20))
    with pytest.raises(PayloadTooLarge):
        decode(bomb, ZSTD, limit_bytes=1024)
    with pytest.raises(UnsupportedEncoding) as unknown:
        decode(body, "br", limit_bytes=1 << 20)
    assert unknown.value.code == "unsupported_encoding" and unknown.value.details["supported"] == ["zstd"]
    assert isinstance(unknown.value, MalformedCommand)
    with pytest.raises(MalformedCommand):
        decode(b"not a frame", ZSTD, limit_bytes=1 << 20)


def _build(params: dict[str, object], threshold: int, *, want_reply: bool = True) -> OutboundCommand:
    return OutboundCommand.build(
        AgentId("docs", "d1"),
        "put",
        params,
        SendOptions(want_reply=want_reply),
        subjects=Subjects(),
        timeout_s=5.0,
        limit_bytes=1 << 20,
        new_id=lambda: "id1",
        wall_ms=0,
        compress_min_bytes=threshold,
    )


def test_the_client_compresses_above_its_threshold_and_accepts_a_compressed_reply() -> None:
    big = {"text": "abc" * 10_000}
    cmd = _build(big, 1024)
    assert cmd.headers["Agt-Encoding"] == "zstd" and cmd.headers["Agt-Accept-Encoding"] == "zstd"
    assert orjson.loads(decode(cmd.body, ZSTD, limit_bytes=1 << 20)) == {"action": "put", "params": big}
    small = _build({"x": 1}, 1024)
    assert "Agt-Encoding" not in small.headers and small.headers["Agt-Accept-Encoding"] == "zstd"
    off = _build(big, 0)
    assert "Agt-Encoding" not in off.headers and "Agt-Accept-Encoding" not in off.headers
    assert "Agt-Accept-Encoding" not in _build(big, 1024, want_reply=False).headers

    class Msg:
        data = compress(orjson.dumps({"ok": True, "result": big}))
        headers = {"Agt-Encoding": "zstd"}

    assert decode_reply(Msg()).result == big


def test_a_high_command_is_sent_to_the_high_lane() -> None:
    cmd = OutboundCommand.build(
        AgentId("docs", "d1"),
        "put",
        {},
        SendOptions(priority=Priority.HIGH),
        subjects=Subjects(),
        timeout_s=5.0,
        limit_bytes=1 << 20,
        new_id=lambda: "id1",
        wall_ms=0,
    )
    assert cmd.subject == "agt.cmd.docs.d1.high" and cmd.headers["Agt-Priority"] == "high"
    assert is_high_lane("agt.ph.3.docs.d1") and not is_high_lane("agt.p.3.docs.d1")


def _cmd(seq: int, high: bool) -> Command:
    c = Command(Kind.STREAM, "s", "docs", "d1", 0, b"{}", 0.0, {}, stream_seq=seq)
    c.high = high
    return c


def test_the_mailbox_bound_and_hand_backs_are_per_lane() -> None:
    mailbox = deque([_cmd(1, True), _cmd(2, True), _cmd(5, False), _cmd(6, False), _cmd(7, False)])
    assert _queued(mailbox, True) == 2 and _queued(mailbox, False) == 5
    held = {9: (1, 0.0)}  # normal command 9 handed back
    assert _held_before(held, _cmd(10, False)) and not _held_before(held, _cmd(8, False))
    assert not _held_before(held, _cmd(100, True))  # the high lane is not held by a normal one
    held[-4] = (1, 0.0)  # high command 4 handed back
    assert _held_before(held, _cmd(5, True)) and not _held_before(held, _cmd(3, True))
