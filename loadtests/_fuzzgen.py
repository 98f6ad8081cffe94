"""The fuzzer's messages: pure and deterministic (the same seed gives the same bytes).

Every message is one of the ``KINDS`` below, sent either as a durable command (a
JetStream publish to ``agt.cmd.<type>.<id>``) or as a call (a core request to
``agt.call.<type>.<id>``), chosen at random per message. Malformed messages go to
scratch agents (``fz0`` .. ``fz63``), never to the counters whose totals are checked or to
the victim, except that the ``forbidden_reply`` kinds name the victim's log, snapshot,
metadata and dead-letter subjects as the place to send the reply.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace

import orjson

VICTIM_TYPE = "counter"
VICTIM_ID = "victim"
SCRATCH_IDS = 64
ACK_PREFIX = b"_INBOX.fza."  # PubAcks of durable commands (raw reply subject)
REPLY_PREFIX = b"_INBOX.fzr."  # replies the host sends to a well-formed reply subject


@dataclass(frozen=True, slots=True)
class FuzzMsg:
    n: int
    kind: str
    channel: str  # "cmd" (durable) or "call"
    subject: bytes
    reply: bytes | None  # a call's reply subject; for a durable command the Agt-Reply-To is in the headers
    header_block: bytes | None  # sent verbatim after HPUB; None: PUB without headers
    body: bytes
    expect_bad: bool  # must be refused with an error and dead-lettered (once) if the host gets it
    isolate: bool = False  # the server closes the connection on it: send on a throwaway connection
    answerable: bool = False  # its reply subject is ours and well formed: the host should answer

    def encode(self) -> bytes:
        """The protocol bytes (durable commands get a PubAck subject of their own)."""
        rep = self.reply
        if self.channel == "cmd" and not self.isolate:
            rep = ACK_PREFIX + str(self.n).encode()
        hdr = self.header_block
        r = b" " + rep if rep else b""
        if hdr is None:
            return b"PUB " + self.subject + r + b" %d\r\n" % len(self.body) + self.body + b"\r\n"
        hl = len(hdr)
        return b"HPUB " + self.subject + r + b" %d %d\r\n" % (hl, hl + len(self.body)) + hdr + self.body + b"\r\n"


def header_block(pairs: list[tuple[bytes, bytes]], status: bytes = b"NATS/1.0") -> bytes:
    return status + b"\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in pairs) + b"\r\n"


def good_body(by: int = 1) -> bytes:
    return orjson.dumps({"action": "increment", "params": {"by": by}})


FORBIDDEN_REPLIES = [
    b"agt.evt.counter.victim",
    b"$KV.agt_snap.counter.victim",
    b"$KV.agt_meta.counter.victim",
    b"agt.dlq.counter.victim",
]
FORBIDDEN_JS_REPLIES = [
    b"$JS.API.STREAM.PURGE.AGT_EVT",
    b"$JS.API.STREAM.DELETE.AGT_EVT",
    b"$JS.API.CONSUMER.DELETE.AGT_CMD.p0",
]


class Gen:
    """Draws one message of a kind; every random choice comes from ``rng``."""

    def __init__(self, rng: random.Random, max_payload: int) -> None:
        self.rng = rng
        self.max_payload = max_payload

    # -- pieces ----------------------------------------------------------------------------
    def scratch(self) -> bytes:
        return b"fz%d" % self.rng.randrange(SCRATCH_IDS)

    def subject(self, channel: str, agent_type: bytes = b"counter", agent_id: bytes | None = None) -> bytes:
        return b"agt." + channel.encode() + b"." + agent_type + b"." + (agent_id or self.scratch())

    def reply_hdr(self, n: int) -> list[tuple[bytes, bytes]]:
        return [(b"Agt-Reply-To", REPLY_PREFIX + str(n).encode())]

    def bad_body(self) -> bytes:
        r = self.rng
        choice = r.randrange(4)
        if choice == 0:
            return r.randbytes(r.randrange(1, 200))
        if choice == 1:
            return b'{"action": "increment", "params": {"by": 1}'[: r.randrange(1, 43)]
        if choice == 2:
            return b'{"action": "nope_%d"}' % r.randrange(1000)
        return b'{"params": {"by": 1}}'

    # -- kinds -----------------------------------------------------------------------------
    def random_bytes(self, n: int, ch: str) -> FuzzMsg:
        r = self.rng
        size = r.choice([0, 1, 2, r.randrange(3, 64), r.randrange(64, 4096)])
        body = r.randbytes(size)
        if body[:1] in (b"{", b"[", b'"') or body.strip() == b"":
            body = b"\x00" + body  # never valid JSON by accident
        return self._msg(n, "random_bytes", ch, self.subject(ch), body, True)

    def bad_json(self, n: int, ch: str) -> FuzzMsg:
        r = self.rng
        full = good_body(r.randrange(1, 9))
        choice = r.randrange(8)
        if choice == 0:
            body = full[: r.randrange(0, len(full))]  # a strict prefix of a JSON object is never JSON
        elif choice == 1:
            body = full + b"}" * r.randrange(1, 4)
        elif choice == 2:
            body = full.replace(b'"', b"'")
        elif choice == 3:
            body = b'{"action": "increment", "params": {"by": NaN}}'
        elif choice == 4:
            body = b'{"action": "incr\xff\xfement"}'
        elif choice == 5:
            body = full + b" trailing"
        elif choice == 6:
            body = b'{"action": "increment",, "params": {}}'
        else:
            body = b"\xef\xbb\xbf" + full[:-1]  # BOM and no closing brace
        return self._msg(n, "bad_json", ch, self.subject(ch), body, True)

    def wrong_shape(self, n: int, ch: str) -> FuzzMsg:
        r = self.rng
        depth = r.choice([100, 1000, 5000, 50_000])
        nest = min(depth, 20_000)
        shapes: list[bytes] = [
            b"[1, 2, 3]",
            b'"increment"',
            b"42",
            b"null",
            b"true",
            b"{}",
            b"[" * depth + b"]" * depth,
            b'{"action": "increment", "params": {"by": ' + b"[" * depth + b"]" * depth + b"}}",
            b'{"action": "increment", "params": ' + b'{"a":' * nest + b"1" + b"}" * nest + b"}",
            b'{"action": "increment", "params": {"by": 1e400}}',
            b'{"action": "increment", "params": {"by": ' + b"9" * r.randrange(20, 5000) + b"}}",
            b'{"action": "increment", "params": {"by": -' + b"9" * 30 + b"}}",
            b'{"action": "increment", "params": {"by": 1.5}}',
            b'{"action": "increment", "params": {"by": null}}',
            b'{"action": "increment", "params": {"by": [1]}}',
            b'{"action": "increment", "params": {"by": {"by": 1}}}',
            b'{"action": "increment", "params": {"by": 1}, "extra": 1}',
            b'{"action": "increment", "params": {"by": 1, "extra": true}}',
            b'{"action": "increment", "params": [1]}',
            b'{"action": "increment", "params": "by=1"}',
            b'{"params": {"by": 1}}',
            b'{"action": null}',
            b'{"action": 7}',
            b'{"action": ""}',
            b'{"action": "' + b"a" * 500 + b'"}',
        ]
        return self._msg(n, "wrong_shape", ch, self.subject(ch), r.choice(shapes), True)

    def coerced_params(self, n: int, ch: str) -> FuzzMsg:
        """Values a lax validator turns into an int (``"3"``, ``true``, ``2.0``): a strict
        wire contract refuses them."""
        body = self.rng.choice(
            [
                b'{"action": "increment", "params": {"by": "3"}}',
                b'{"action": "increment", "params": {"by": true}}',
                b'{"action": "increment", "params": {"by": 2.0}}',
                b'{"action": "increment", "params": {"by": " 4 "}}',
            ]
        )
        return self._msg(n, "coerced_params", ch, self.subject(ch), body, True)

    def unknown_type_action(self, n: int, ch: str) -> FuzzMsg:
        r = self.rng
        if r.randrange(2):
            t = r.choice([b"nosuch", b"Counter", b"counter_", b"account2", b"x%d" % r.randrange(10_000)])
            return self._msg(n, "unknown_type_action", ch, self.subject(ch, t), good_body(), True)
        action = r.choice([b"explode", b"_incremented", b"__init__", b"Increment", b"get2", b"model_dump", b"state"])
        body = b'{"action": "' + action + b'"}'
        return self._msg(n, "unknown_type_action", ch, self.subject(ch), body, True)

    def invalid_id(self, n: int, ch: str) -> FuzzMsg:
        r = self.rng
        ident = r.choice(
            [
                b"a+b",
                b"a%20b",
                b"a/b",
                b"a\\b",
                b'a"b',
                b"a'b",
                b"a:b",
                b"a=b",
                b"a@b",
                b"\xc3\xa9t\xc3\xa9",  # UTF-8, not a token
                b"\xe2\x80\x8b",  # zero width space
                b"x" * 129,
                b"x" * r.randrange(130, 2000),
                b"*",
                b">",
                b"a*",
                b"a>",
                b"a#b",
            ]
        )
        if r.randrange(4) == 0:  # the odd token as the type
            return self._msg(n, "invalid_id", ch, b"agt." + ch.encode() + b"." + ident + b".x1", good_body(), True)
        return self._msg(n, "invalid_id", ch, self.subject(ch, b"counter", ident), good_body(), True)

    def odd_subject_bytes(self, n: int, ch: str) -> FuzzMsg:
        r = self.rng
        odd = r.choice(
            [
                b"\x00",
                b"a\x00b",
                b"\x7f",
                b"a\x7f",
                b"\x01",
                b"\x1b[31m",
            ]
        )
        choice = r.randrange(5)
        if choice == 0:
            subject = b"agt." + ch.encode() + b"." + odd + b".x1"
        elif choice == 1:
            subject = b"agt." + ch.encode() + b".counter." + r.choice([b"", b"a."]) + b"x" * r.randrange(200, 3000)
        elif choice == 2:
            subject = b"agt." + ch.encode() + b".counter." + r.choice([b"", b".", b"a..b"])
        else:
            subject = self.subject(ch, b"counter", odd)
        return self._msg(n, "odd_subject_bytes", ch, subject, good_body(), True)

    def odd_reply(self, n: int, ch: str) -> FuzzMsg:
        r = self.rng
        odd = r.choice(
            [
                b"_INBOX.a\x00b",
                b"_INBOX.\x7f",
                b"_INBOX." + b"r" * r.randrange(100, 3000),
                b"_INBOX.*",
                b"_INBOX.>",
                b"_INBOX..x",
                b".",
            ]
        )
        body = good_body() if r.randrange(2) else self.bad_body()
        bad = body != good_body()
        if ch == "call":
            m = self._msg(n, "odd_reply", ch, self.subject(ch), body, bad, reply_to=odd)
        else:
            m = self._msg(n, "odd_reply", ch, self.subject(ch), body, bad, headers=[(b"Agt-Reply-To", odd)])
        return m

    def forbidden_reply(
        self, n: int, ch: str, targets: list[bytes] | None = None, kind: str = "forbidden_reply"
    ) -> FuzzMsg:
        r = self.rng
        target = r.choice(targets or FORBIDDEN_REPLIES)
        body = good_body() if r.randrange(2) else self.bad_body()
        bad = body != good_body()
        if ch == "call":
            return self._msg(n, kind, ch, self.subject(ch), body, bad, reply_to=target)
        return self._msg(n, kind, ch, self.subject(ch), body, bad, headers=[(b"Agt-Reply-To", target)])

    def forbidden_reply_js(self, n: int, ch: str) -> FuzzMsg:
        return self.forbidden_reply(n, ch, FORBIDDEN_JS_REPLIES, "forbidden_reply_js")

    def odd_headers(self, n: int, ch: str) -> FuzzMsg:
        r = self.rng
        status = b"NATS/1.0"
        pairs: list[tuple[bytes, bytes]] = []
        choice = r.randrange(12)
        if choice == 0:
            status = r.choice(
                [b"NATS/1.0 503", b"NATS/1.0 404 No Messages", b"NATS/1.0 100 Idle Heartbeat", b"NATS/1.0 408"]
            )
        elif choice == 1:
            pairs = [(b"\xc3\xa9t\xc3\xa9", b"v"), (b"Agt-Correlation-Id", b"\xe2\x98\x83")]
        elif choice == 2:
            pairs = [(b"X-Ctl", b"a\x01\x7fb"), (b"X-Odd", b"\x1b[0m")]
        elif choice == 3:
            k = r.randrange(100, 3000)
            pairs = [(b"X-H%d" % i, b"v" * r.randrange(1, 20)) for i in range(k)]
        elif choice == 4:
            pairs = [(b"X-Big", b"v" * r.randrange(10_000, 60_000))]
        elif choice == 5:
            pairs = [(b"Nats-Msg-Id", b"dup-%d-a" % n), (b"Nats-Msg-Id", b"dup-%d-b" % n)]
        elif choice == 6:
            bad = r.choice([b"abc", b"-5", b"1e999", b"", b"9" * 400, b"nan", b"inf", b"0x10", b"1.5.6"])
            pairs = [(b"Agt-Deadline", bad)]
        elif choice == 7:
            bad = r.choice([b"urgent", b"", b"HIGH", b"0", b"low low"])
            pairs = [(b"Agt-Priority", bad)]
        elif choice == 8:
            pairs = [(b"Agt-Delivery", b"twice"), (b"Content-Type", b"text/\x7f")]
        elif choice == 9:
            return self._msg(
                n,
                "odd_headers",
                ch,
                self.subject(ch),
                *self._body_bad(),
                raw_headers=b"NATS/1.0\r\nNoColonHere\r\n\r\n",
            )
        elif choice == 10:
            pairs = [(b"", b"empty-name"), (b"traceparent", b"00-zz-zz-01"), (b"tracestate", b"\x00")]
        else:
            pairs = [(b"Nats-Expected-Last-Subject-Sequence", b"notanumber"), (b"Nats-Rollup", b"sub")]
        body, bad = self._body_bad()
        return self._msg(n, "odd_headers", ch, self.subject(ch), body, bad, headers=pairs, status=status)

    def bad_command_id(self, n: int, ch: str) -> FuzzMsg:
        r = self.rng
        ids = [
            (b"", False),
            (b"id\x7f%d" % n, False),
            (b"x" * 257, True),
            (b"x" * r.randrange(300, 3000), True),
            (b"id with spaces %d" % n, False),
            (b"\xc3\xa9%d" % n, False),
            (b"   ", False),
            (b"id\x00%d" % n, False),
        ]
        ident, bad = r.choice(ids)
        name = r.choice([b"Agt-Command-Id", b"Nats-Msg-Id"])
        body = good_body()
        return self._msg(n, "bad_command_id", ch, self.subject(ch), body, bad, headers=[(name, ident)])

    def non_utf8(self, n: int, ch: str) -> FuzzMsg:
        """Bytes that are not UTF-8 in a subject, a reply subject, a header name or value,
        or a command id (the server passes them on; a client library must survive them)."""
        r = self.rng
        odd = r.choice([b"\xff", b"a\xffb", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"])
        body = good_body()
        where = r.randrange(5)
        if where == 0:
            return self._msg(n, "non_utf8", ch, self.subject(ch, b"counter", odd), body, True)
        if where == 1:
            return self._msg(n, "non_utf8", ch, b"agt." + ch.encode() + b"." + odd + b".x1", body, True)
        if where == 2:
            if ch == "call":
                return self._msg(n, "non_utf8", ch, self.subject(ch), body, False, reply_to=b"_INBOX." + odd)
            return self._msg(
                n, "non_utf8", ch, self.subject(ch), body, False, headers=[(b"Agt-Reply-To", b"_INBOX." + odd)]
            )
        if where == 3:
            return self._msg(n, "non_utf8", ch, self.subject(ch), body, False, headers=[(b"X-" + odd, odd)])
        name = r.choice([b"Agt-Command-Id", b"Nats-Msg-Id", b"Agt-Priority", b"Agt-Deadline", b"Content-Type"])
        return self._msg(n, "non_utf8", ch, self.subject(ch), body, False, headers=[(name, b"id" + odd + b"%d" % n)])

    def ws_control(self, n: int, ch: str) -> FuzzMsg:
        """CR, VT and FF inside a subject or reply subject: the server passes them on, a
        client's parser may take them for the end of the control line."""
        r = self.rng
        odd = r.choice([b"\r", b"a\rb", b"\x0b", b"\x0c", b"a\x0bb"])
        body = good_body()
        if r.randrange(2):
            m = self._msg(n, "ws_control", ch, self.subject(ch, b"counter", odd), body, True)
            if ch == "call" and b"\r" in odd:
                # nats-server's parser loses a byte of the PUB line when a read of it ends
                # anywhere after a CR: the message is lost, or arrives with a reply subject
                # one character short ('a\rb' split after the reply's first byte arrives with
                # the reply 'INBOX.r'; loadtests/nats_cr_split.py shows it for every offset).
                # It happens only when the server's read ends there: 4 of 800 in a full run,
                # and most likely the 1 unanswered of 2,209 in a CI run under load.
                # No host can promise a reply (a durable one fails at the stream, no PubAck)
                m = replace(m, answerable=False)
            return m
        if ch == "call":
            return self._msg(n, "ws_control", ch, self.subject(ch), body, False, reply_to=b"_INBOX." + odd)
        hdrs = [(b"Agt-Reply-To", b"_INBOX." + odd)]
        return self._msg(n, "ws_control", ch, self.subject(ch), body, False, headers=hdrs)

    def oversized(self, n: int, ch: str) -> FuzzMsg:
        """Bodies near and over the host's max payload (invalid padding: refused either way)."""
        r = self.rng
        size = r.choice([self.max_payload - 1, self.max_payload, self.max_payload + 1, self.max_payload * 2 + 100])
        head = b'{"action": "increment", "params": {"by": 1, "pad": "'
        body = head + b"p" * max(0, size - len(head) - 3) + b'"}}'
        return self._msg(n, "oversized", ch, self.subject(ch), body, True)

    def oversized_escaped(self, n: int, ch: str) -> FuzzMsg:
        """A body of control bytes just under the max payload: JSON-escaped in a dead
        letter it grows six-fold (``\\u0001``)."""
        size = self.rng.choice([self.max_payload * 3 // 4, self.max_payload - 100])
        return self._msg(n, "oversized_escaped", ch, self.subject(ch), b"\x01" * size, True)

    def server_refused(self, n: int, ch: str) -> FuzzMsg:
        """Protocol errors the server closes the connection for: never reach a host."""
        r = self.rng
        choice = r.randrange(4)
        if choice == 0:
            subject = self.subject(ch, b"counter", b"a b")
        elif choice == 1:
            subject = self.subject(ch, b"counter", b"a\tb")
        elif choice == 2:
            subject = self.subject(ch, b"counter", b"x" * 5000)
        else:
            m = self._msg(n, "server_refused", ch, self.subject(ch), good_body(), True, reply_to=b"_IN BOX.x")
            return replace(m, isolate=True, answerable=False)
        m = self._msg(n, "server_refused", ch, subject, good_body(), True)
        return replace(m, isolate=True, answerable=False)

    # -- assembly --------------------------------------------------------------------------
    def _body_bad(self) -> tuple[bytes, bool]:
        if self.rng.randrange(2):
            return good_body(), False
        return self.bad_body(), True

    def _msg(
        self,
        n: int,
        kind: str,
        ch: str,
        subject: bytes,
        body: bytes,
        bad: bool,
        *,
        reply_to: bytes | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        status: bytes = b"NATS/1.0",
        raw_headers: bytes | None = None,
    ) -> FuzzMsg:
        pairs = list(headers or [])
        ours = REPLY_PREFIX + str(n).encode()
        if ch == "cmd":
            # a durable command names its reply subject in a header; give one unless the kind set it
            if not any(k == b"Agt-Reply-To" for k, _ in pairs) and raw_headers is None:
                pairs.append((b"Agt-Reply-To", ours))
            reply = None
        else:
            reply = reply_to if reply_to is not None else ours
        block = (
            raw_headers
            if raw_headers is not None
            else (header_block(pairs, status) if pairs or status != b"NATS/1.0" else None)
        )
        # the host subscribes to <root>.call.*.* and the stream to <root>.cmd.*.*
        tokens = subject.split(b".")
        routable = len(tokens) == 4 and all(tokens)
        answerable = routable and ((reply == ours) or (ch == "cmd" and (b"Agt-Reply-To", ours) in pairs))
        return FuzzMsg(n, kind, ch, subject, reply, block, body, bad, answerable=answerable)


WEIGHTS: dict[str, float] = {
    "random_bytes": 1.0,
    "bad_json": 1.0,
    "wrong_shape": 1.0,
    "coerced_params": 0.5,
    "unknown_type_action": 1.0,
    "invalid_id": 1.0,
    "odd_subject_bytes": 1.0,
    "non_utf8": 1.0,
    "ws_control": 1.0,
    "odd_reply": 1.0,
    "forbidden_reply": 1.0,
    "forbidden_reply_js": 0.1,
    "odd_headers": 1.0,
    "bad_command_id": 1.0,
    "oversized": 0.02,
    "oversized_escaped": 0.005,
    "server_refused": 0.02,
}
KINDS = list(WEIGHTS)


def plan(seed: int, count: int, kinds: list[str], max_payload: int) -> Iterator[FuzzMsg]:
    """``count`` messages of the given kinds, the same for the same arguments."""
    rng = random.Random(seed)
    gen = Gen(rng, max_payload)
    weights = [WEIGHTS[k] for k in kinds]
    makers = [getattr(gen, k) for k in kinds]
    for n in range(count):
        maker = rng.choices(makers, weights)[0]
        yield maker(n, "cmd" if rng.randrange(2) else "call")


def plan_digest(seed: int, count: int, kinds: list[str], max_payload: int) -> str:
    h = hashlib.sha256()
    for m in plan(seed, count, kinds, max_payload):
        h.update(m.encode())
    return h.hexdigest()[:16]
