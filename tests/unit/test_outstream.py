"""The pure rules of streamed output (``_core/outstream.py``): subjects' last token, message
ids, what a resumed run finds stored, and a reader's fold with resets."""

from __future__ import annotations

import hashlib

import orjson

from jetagents import StreamReset
from jetagents._core.outstream import (
    CHUNK,
    END,
    RESET,
    Stored,
    StreamFold,
    chunk_msg_id,
    ctoken,
    gen_of,
    stored_after,
)


def test_ctoken_keeps_plain_ids_and_hashes_the_rest() -> None:
    assert ctoken("m-1_A") == "m-1_A"
    for odd in ("a.b", "x" * 129, "", "é", "a*b"):
        assert ctoken(odd) == "h" + hashlib.sha256(odd.encode()).hexdigest()[:32]


def test_message_ids_carry_the_generation_after_a_reset() -> None:
    assert gen_of(chunk_msg_id("t.i", "c", 5, 0)) == 0
    assert gen_of(chunk_msg_id("t.i", "c", 5, 42)) == 42
    assert gen_of(None) == 0 and gen_of("t.i:c~x@3") == 0


def test_what_a_resumed_run_finds_stored() -> None:
    assert stored_after(None, None, b"", None, 0) == Stored(0, 0, False)
    assert stored_after(CHUNK, "4", b'["a","b","c"]', "t.i:c@4~9", 12) == Stored(7, 9, False)
    assert stored_after(RESET, "3", b'{"step":1,"from_chunk":3}', "x", 15) == Stored(3, 15, False)
    assert stored_after(END, None, b'{"ok":true,"result":1}', "x", 16).ended


def test_a_fold_drops_void_chunks_and_tells_the_reader() -> None:
    fold = StreamFold()
    assert fold.add(CHUNK, "0", b'["a","b"]') == ["a", "b"]
    assert fold.add(CHUNK, "2", b'["c","d"]') == ["c", "d"]
    # a reset of chunks the reader does not hold yet is silent
    assert fold.add(RESET, "9", orjson.dumps({"step": 0, "from_chunk": 9})) == []
    assert fold.add(RESET, "1", orjson.dumps({"step": 0, "from_chunk": 1})) == [StreamReset(1, 0)]
    assert fold.chunks == ["a"] and fold.next_index == 1
    assert fold.add(CHUNK, "1", b'["B"]') == ["B"]
    # an overlapping message (never sent by a host) is not shown twice
    assert fold.add(CHUNK, "1", b'["B","C"]') == ["C"]
    assert fold.add(END, None, b'{"ok":true,"result":3}') == [] and fold.end == {"ok": True, "result": 3}
    assert fold.add(CHUNK, "3", b'["late"]') == [] and fold.chunks == ["a", "B", "C"]


def test_a_resumed_fold_starts_at_its_next_chunk() -> None:
    fold = StreamFold(next_chunk=3)
    assert fold.add(CHUNK, "2", b'["c","d","e"]') == ["d", "e"]  # the message it stopped inside
    assert fold.add(RESET, "1", orjson.dumps({"step": 2, "from_chunk": 1})) == [StreamReset(1, 2)]
    assert fold.chunks == [] and fold.next_index == 1
    assert fold.add(CHUNK, "1", b'["B"]') == ["B"]
