"""Pub-sub's pure rules (ADR 0049): topics and patterns, the subscription record, the
message an agent's handler receives, and the command a published message becomes.

A **topic** is one to 16 dot-separated tokens of ``[A-Za-z0-9_-]`` (at most 200 characters):
``orders.created``. A **pattern** is a topic that may use NATS wildcards: ``*`` for one token,
``>`` as the last token for one or more. Both are checked before anything is published or
subscribed, so no subject is ever built from unchecked text.

>>> validate_topic("orders.created")
'orders.created'
>>> validate_pattern("orders.*")
'orders.*'
>>> matches("orders.>", "orders.eu.created")
True
"""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field

from .ids import is_valid_token
from .wire import Delivery

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

MAX_TOPIC_TOKENS: Final = 16
MAX_TOPIC_CHARS: Final = 200
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")
DEFAULT_HANDLER: Final = "on_message"
SUBSCRIBE_MARK: Final = "__jetagents_subscribe__"


def _tokens(text: object, what: str) -> list[str]:
    if not isinstance(text, str) or not 0 < len(text) <= MAX_TOPIC_CHARS:
        raise ValueError(f"invalid {what} {text!r}: 1-{MAX_TOPIC_CHARS} characters")
    tokens = text.split(".")
    if len(tokens) > MAX_TOPIC_TOKENS:
        raise ValueError(f"invalid {what} {text!r}: at most {MAX_TOPIC_TOKENS} tokens")
    return tokens


def validate_topic(topic: object) -> str:
    """``topic`` if it is a literal topic (no wildcard), else ``ValueError``."""
    for token in _tokens(topic, "topic"):
        if not _TOKEN.fullmatch(token):
            raise ValueError(f"invalid topic {topic!r}: tokens are 1-128 characters of [A-Za-z0-9_-]")
    return str(topic)


def validate_pattern(pattern: object) -> str:
    """``pattern`` if it is a topic pattern (``*`` for a token, ``>`` last), else ``ValueError``."""
    tokens = _tokens(pattern, "pattern")
    for i, token in enumerate(tokens):
        if token == "*" or (token == ">" and i == len(tokens) - 1):
            continue
        if not _TOKEN.fullmatch(token):
            raise ValueError(f"invalid pattern {pattern!r}: tokens are [A-Za-z0-9_-]{{1,128}}, '*', or '>' last")
    return str(pattern)


def matches(pattern: str, topic: str) -> bool:
    """Whether ``topic`` matches ``pattern`` as NATS matches subjects."""
    pt, tt = pattern.split("."), topic.split(".")
    for i, p in enumerate(pt):
        if p == ">":
            return len(tt) > i
        if i >= len(tt) or (p != "*" and p != tt[i]):
            return False
    return len(pt) == len(tt)


def pattern_key(pattern: str) -> str:
    """A subject- and key-safe name for a pattern (its consumer's, its subscriptions' prefix):
    16 hex digits of its SHA-256."""
    return hashlib.sha256(pattern.encode()).hexdigest()[:16]


def pattern_partition(pattern: str, partitions: int) -> int:
    """The partition whose owner runs ``pattern``'s fan-out: the patterns spread over the hosts
    as the agents do, and move with the partition when its owner changes."""
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    return int(pattern_key(pattern), 16) % partitions


def subscription_key(pattern: str, agent_type: str, agent_id: str) -> str:
    """The KV key of one agent's subscription to ``pattern``."""
    return f"{pattern_key(pattern)}.{agent_type}.{agent_id}"


def delivery_id(stream_seq: int, agent_type: str, agent_id: str) -> str:
    """The command id (and ``Nats-Msg-Id``) of message ``stream_seq`` delivered to one agent:
    the same on every re-delivery, so the stream and the agent's record drop copies."""
    return f"pub:{stream_seq}:{agent_type}.{agent_id}"


class Subscription(BaseModel):
    """One agent's durable subscription, as stored in the subscriptions bucket."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    pattern: str
    type: str
    id: str
    action: str = Field(default=DEFAULT_HANDLER, min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    delivery: Delivery = Delivery.EXACTLY_ONCE
    ts_ms: int = 0

    @property
    def key(self) -> str:
        return subscription_key(self.pattern, self.type, self.id)

    def checked(self) -> Subscription:
        """Itself when every field that becomes part of a subject is valid; read from a
        bucket anyone might have written, it is checked before a command is sent."""
        validate_pattern(self.pattern)
        if not (is_valid_token(self.type) and is_valid_token(self.id)):
            raise ValueError(f"invalid agent address {self.type!r}/{self.id!r} in a subscription")
        if self.delivery == Delivery.AT_MOST_ONCE:
            raise ValueError("a subscription delivers at least once or exactly once")
        return self


class Message(BaseModel):
    """What a subscribed agent's handler receives: ``async def on_order(self, msg: Message)``.

    ``seq`` is the message's sequence in the topic stream (the same for every subscriber; 0
    for an ephemeral listener, which core NATS does not tell);
    ``ts_ms`` when it was published (unix milliseconds). Extra fields are ignored, so a newer
    host may add some.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    topic: str
    data: Any = None
    seq: int = 0
    ts_ms: int = 0


def command_body(action: str, topic: str, data_json: bytes, seq: int, ts_ms: int) -> bytes:
    """The command a message becomes for a subscriber: ``{"action": handler, "params":
    {"msg": {"topic", "data", "seq", "ts_ms"}}}``; the payload's JSON is copied as it is."""
    head = f'{{"action":"{action}","params":{{"msg":{{"topic":"{topic}","seq":{seq},"ts_ms":{ts_ms},"data":'
    return head.encode() + data_json + b"}}}"


def subscribe(*patterns: str, delivery: Delivery | str = Delivery.EXACTLY_ONCE) -> Callable[[F], F]:
    """Declare that every agent of the class receives the topics matching ``patterns`` in
    this method, which becomes an action taking one ``msg: Message``. An agent is
    subscribed when it is first activated on a host (ADR 0049).

    >>> from jetagents import Agent
    >>> class Stats(Agent[Any]):  # doctest: +SKIP
    ...     @subscribe("orders.*")
    ...     async def on_order(self, msg: Message) -> None: ...
    """
    if not patterns:
        raise TypeError("@subscribe needs at least one pattern")
    checked = tuple(validate_pattern(p) for p in patterns)
    mode = Delivery(delivery)
    if mode == Delivery.AT_MOST_ONCE:
        raise ValueError("@subscribe delivers at least once or exactly once")

    def mark(fn: F) -> F:
        from .agent import action  # the handler is an action: validated like any other

        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"subscriber {fn.__qualname__} must be declared with 'async def'")
        setattr(fn, SUBSCRIBE_MARK, {"patterns": checked, "delivery": mode})
        return cast(F, action(fn))

    return mark


def declared_subscriptions(cls: type) -> list[tuple[str, str, Delivery]]:
    """``(pattern, handler action, delivery)`` for every ``@subscribe`` of an agent class."""
    out: list[tuple[str, str, Delivery]] = []
    for klass in reversed(cls.__mro__):
        for name, member in vars(klass).items():
            mark = getattr(member, SUBSCRIBE_MARK, None)
            if mark is not None:
                out.extend((p, name, mark["delivery"]) for p in mark["patterns"])
    return out
