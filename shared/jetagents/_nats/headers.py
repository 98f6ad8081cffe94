"""Headers the NATS server sets on what it hands back: a message read from a stream (direct
get) and a KV counter increment. The headers jetagents itself defines on the wire are in
``_core/wire.py`` (and the wire contract); these belong to the server's protocol."""

from typing import Final

H_NATS_SEQUENCE: Final = "Nats-Sequence"  # the stream sequence of a message read back
H_NATS_SUBJECT: Final = "Nats-Subject"  # its subject (a direct get by sequence may not know it)
H_NATS_INCR: Final = "Nats-Incr"  # a counter stream's increment (server 2.12+)
