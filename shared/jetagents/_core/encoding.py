"""Payload compression negotiated by a header (ADR 0043; wire contract §3.6): pure, no I/O.

A body sent with ``Agt-Encoding: zstd`` is one zstd frame of the JSON body. The reader
decodes at most ``limit_bytes`` and refuses more, whatever the frame claims, so a small
hostile frame (a zip bomb) costs ``limit_bytes`` of memory at most. An encoding the reader
does not know is refused by name (``unsupported_encoding``), never guessed at.

>>> body = b'{"action":"put","params":{"v":"' + b"x" * 4000 + b'"}}'
>>> packed = compress(body)
>>> len(packed) < 100, decode(packed, ZSTD, limit_bytes=5000) == body
(True, True)
>>> decode(packed, ZSTD, limit_bytes=1000)
Traceback (most recent call last):
...
jetagents._core.errors.PayloadTooLarge: zstd body decodes to more than 1000 bytes
"""

from __future__ import annotations

import zstandard

from .errors import MalformedCommand, PayloadTooLarge, UnsupportedEncoding

ZSTD = "zstd"
ENCODINGS = (ZSTD,)  # what this library reads and writes
# level 3 (zstd's default): on 100 KiB of JSON most of the ratio of level 19 at a fraction of its CPU
_LEVEL = 3
_CHUNK_BYTES = 64 * 1024


def compress(body: bytes) -> bytes:
    """One zstd frame of ``body`` (its size written in the frame header)."""
    return zstandard.ZstdCompressor(level=_LEVEL).compress(body)


def decode(body: bytes, encoding: str, *, limit_bytes: int) -> bytes:
    """``body`` decoded from ``encoding``: ``UnsupportedEncoding`` for an encoding not in
    ``ENCODINGS``, ``PayloadTooLarge`` past ``limit_bytes`` decoded, ``MalformedCommand`` for
    bytes that are no zstd frame."""
    if encoding != ZSTD:
        raise UnsupportedEncoding(
            f"unknown Agt-Encoding {encoding[:64]!r}", details={"encoding": encoding[:64], "supported": list(ENCODINGS)}
        )
    out = bytearray()
    try:
        # read at most limit + 1 bytes, in chunks: the frame's own claim of its size is not trusted
        with zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=False) as reader:
            while len(out) <= limit_bytes:
                chunk = reader.read(min(_CHUNK_BYTES, limit_bytes + 1 - len(out)))
                if not chunk:
                    break
                out += chunk
    except zstandard.ZstdError as exc:
        raise MalformedCommand(f"Agt-Encoding zstd but the body is no zstd frame: {exc}") from None
    if len(out) > limit_bytes:
        raise PayloadTooLarge(
            f"zstd body decodes to more than {limit_bytes} bytes",
            details={"encoding": ZSTD, "limit_bytes": limit_bytes, "encoded_bytes": len(body)},
        )
    return bytes(out)
