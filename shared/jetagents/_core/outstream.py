"""Streamed output (ADR 0042 section 6): the rules of ``agt.out.<type>.<id>.<ctoken>``, pure.

A command sent with ``Agt-Stream: 1`` gets a subject of its own in stream ``AGT_OUT``. The host
publishes ``chunk`` messages (a JSON array of the chunks the action streamed, ``Agt-Chunk`` the
index of the first), ``reset`` when a step that streamed is run again (its chunks from
``from_chunk`` on are void) and one ``end`` (the reply body). A reader reads the subject in
stream order from any sequence: the stream sequence is its resume offset. ``StreamFold`` is
what a reader makes of those messages; the host's side is ``_host/outbox.py``.

>>> fold = StreamFold()
>>> fold.add(CHUNK, "0", b'["He","llo"]'), fold.add(CHUNK, "2", b'[" wor"]')
(['He', 'llo'], [' wor'])
>>> fold.add(RESET, "2", b'{"step": 0, "from_chunk": 2}')
[StreamReset(from_chunk=2, step=0)]
>>> fold.add(CHUNK, "2", b'[" world"]'), fold.chunks
([' world'], ['He', 'llo', ' world'])
>>> fold.add(END, None, b'{"ok": true, "result": 3}'), fold.end
([], {'ok': True, 'result': 3})
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Final

import orjson

CHUNK: Final = "chunk"
RESET: Final = "reset"
END: Final = "end"
KINDS: Final = frozenset({CHUNK, RESET, END})

_PLAIN = re.compile(r"[A-Za-z0-9_-]{1,128}")


def ctoken(command_id: str) -> str:
    """The last token of a command's output subject: the command id itself when it is a
    plain token, else ``h`` + the first 32 hex digits of its SHA-256 (ids may hold dots).

    >>> ctoken("m1"), ctoken("a.b")
    ('m1', 'h2e7336dc8eba87ef472df568c35482ab')
    """
    if _PLAIN.fullmatch(command_id):
        return command_id
    return "h" + hashlib.sha256(command_id.encode()).hexdigest()[:32]


def chunk_msg_id(agent_key: str, command_id: str, index: int, gen: int) -> str:
    """``Nats-Msg-Id`` of a chunk message: ``<type>.<id>:<cmd>@<index>``, and ``~<gen>`` after
    a reset (``gen`` = the reset's stream sequence): the void chunks of the run before it
    held the same indices, and the duplicate window would drop their replacements.

    >>> chunk_msg_id("chat.c1", "m1", 4, 0), chunk_msg_id("chat.c1", "m1", 4, 17)
    ('chat.c1:m1@4', 'chat.c1:m1@4~17')
    """
    base = f"{agent_key}:{command_id}@{index}"
    return f"{base}~{gen}" if gen else base


def reset_msg_id(agent_key: str, command_id: str, from_chunk: int, after_seq: int) -> str:
    """``Nats-Msg-Id`` of a reset: unique per reset (it follows a different last message)."""
    return f"{agent_key}:{command_id}@{from_chunk}!{after_seq}"


def end_msg_id(agent_key: str, command_id: str) -> str:
    return f"{agent_key}:{command_id}@end"


def gen_of(msg_id: str | None) -> int:
    """The generation a stored chunk message was published in (0 before any reset)."""
    if not msg_id:
        return 0
    _, sep, tail = msg_id.rpartition("~")
    return int(tail) if sep and tail.isdigit() else 0


@dataclass(frozen=True, slots=True)
class Stored:
    """What the host learns from the last message of a command's subject when it resumes
    a run: the index one past the last stored chunk, the generation of its message ids,
    and whether the command's ``end`` is stored already."""

    end_index: int
    gen: int
    ended: bool


def stored_after(kind: str | None, chunk: str | None, data: bytes, msg_id: str | None, seq: int) -> Stored:
    """``Stored`` from the subject's last message (``kind`` None: there is none)."""
    if kind == CHUNK and chunk is not None and chunk.isdigit():
        values = orjson.loads(data)
        return Stored(int(chunk) + (len(values) if isinstance(values, list) else 0), gen_of(msg_id), False)
    if kind == RESET:
        body = orjson.loads(data)
        return Stored(int(body.get("from_chunk", 0)), seq, False)
    if kind == END:
        return Stored(0, 0, True)
    return Stored(0, 0, False)


def encode_chunks(parts: list[bytes]) -> bytes:
    """A chunk message's body from the chunks' JSON encodings."""
    return b"[" + b",".join(parts) + b"]"


def encode_reset(step: int | None, from_chunk: int) -> bytes:
    return orjson.dumps({"step": step, "from_chunk": from_chunk})


@dataclass(frozen=True, slots=True)
class StreamReset:
    """Yielded to a reader when chunks it already got are void: drop every chunk from index
    ``from_chunk`` on (a step that streamed them ran again after a crash; ``step`` is its
    position in the action)."""

    from_chunk: int
    step: int | None = None


class StreamFold:
    """A reader's view of one command's stream, fed its messages in stream order.

    ``add`` returns what to hand the caller: chunk values, and a ``StreamReset`` when chunks
    it already handed out became void. ``chunks`` is the output as it stands (resets
    applied); ``end`` the reply body once the ``end`` message came. A reader that starts
    after the first message (a resumed reader) keeps the chunks from the first it saw.
    """

    __slots__ = ("base", "chunks", "end")

    def __init__(self, next_chunk: int | None = None) -> None:
        # a resumed reader starts at the chunk after the last one it yielded
        self.base: int | None = next_chunk  # the index of chunks[0]
        self.chunks: list[Any] = []
        self.end: dict[str, Any] | None = None

    @property
    def next_index(self) -> int:
        return (self.base or 0) + len(self.chunks)

    def add(self, kind: str | None, chunk: str | None, data: bytes) -> list[Any]:
        if self.end is not None:
            return []  # nothing after the end (a second end of a re-sent id)
        if kind == CHUNK:
            values = orjson.loads(data)
            first = int(chunk) if chunk is not None and chunk.isdigit() else self.next_index
            if not isinstance(values, list):
                values = [values]
            if self.base is None:
                self.base = first
            skip = self.next_index - first  # overlap: the host never sends it, a reader never shows it twice
            fresh = values[skip:] if skip > 0 else values
            self.chunks.extend(fresh)
            return fresh
        if kind == RESET:
            body = orjson.loads(data)
            from_chunk = int(body.get("from_chunk", 0))
            step = body.get("step")
            if self.base is None or from_chunk >= self.next_index:
                return []  # nothing this reader holds became void
            del self.chunks[max(0, from_chunk - self.base) :]
            self.base = min(self.base, from_chunk)
            return [StreamReset(from_chunk, step if isinstance(step, int) else None)]
        if kind == END:
            body = orjson.loads(data)
            self.end = body if isinstance(body, dict) else {"ok": True, "result": body}
        return []
