"""Reproduce the nats-server parser quirk the fuzzer allows for (``_fuzzgen.ws_control``):
a CR inside a PUB line's arguments, and the server's read of that line ending anywhere
after the CR, loses one byte of the arguments. The message is then lost, or delivered with
a reply subject one character short, so no host can answer it.

    python loadtests/nats_cr_split.py

sends ``PUB agt.call.counter.<odd> _INBOX.r 5`` in two writes, split at each offset, and
prints what a raw subscriber received for each (``LOST`` or the MSG line's arguments)."""

from __future__ import annotations

import socket
import tempfile
import time
from pathlib import Path

from jetagents.testing.server import NatsServer

PREFIX = b"PUB agt.call.counter."


def main() -> None:
    srv = NatsServer(data_dir=Path(tempfile.mkdtemp()) / "nats", name="cr-split").start()
    host, port = srv.url.removeprefix("nats://").split(":")

    def connect() -> socket.socket:
        s = socket.create_connection((host, int(port)))
        s.recv(4096)
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n')
        return s

    sub = connect()
    sub.settimeout(2)
    sub.sendall(b"SUB agt.call.*.* 1\r\nPING\r\n")
    sub.recv(100)
    k = 0
    try:
        for odd in [b"\r", b"a\rb", b"\ra", b"\x0b", b"a\x0cb"]:
            seen = []
            for split in range(16):
                k += 1
                tag = b"m%04d" % k
                line = PREFIX + odd + b" _INBOX.r 5\r\n" + tag + b"\r\n"
                pub = connect()
                pub.sendall(line[: len(PREFIX) + split])
                time.sleep(0.03)  # the server reads the first part alone
                pub.sendall(line[len(PREFIX) + split :] + b"PING\r\n")
                pub.settimeout(1)
                pub.recv(4096)
                pub.close()
                buf = b""
                sub.sendall(b"PING\r\n")
                while b"PONG" not in buf:
                    buf += sub.recv(65536)
                i = buf.find(tag)
                start = buf.rfind(b"MSG ", 0, i)
                seen.append(f"{split}:" + ("LOST" if i < 0 else repr(buf[start + 4 + len(PREFIX) - 4 : i - 2])))
            print(repr(odd), " ".join(seen))
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
