"""The client's pub-sub (ADR 0049): publish to a topic, subscribe ephemerally, subscribe
an agent durably.

>>> seq = await client.publish("orders.created", {"id": "o-17"})  # doctest: +SKIP
>>> async with client.subscribe("orders.*") as stream:  # doctest: +SKIP
...     async for msg in stream:
...         print(msg.topic, msg.data)
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from .._core.clock import Clock
from .._core.errors import InvalidParams, PayloadTooLarge
from .._core.ids import validate_token
from .._core.pubsub import DEFAULT_HANDLER, Subscription, validate_pattern, validate_topic
from .._core.wire import Delivery, Subjects
from .._nats.client_transport import NatsConnection
from .._nats.pubsub import PubSubStore, TopicStream

__all__ = ["ClientPubSub", "encode_data"]


def encode_data(data: Any) -> bytes:
    """``data`` as the JSON a topic message carries (pydantic models as their JSON)."""
    try:
        if isinstance(data, BaseModel):
            return data.model_dump_json().encode()
        return orjson.dumps(data, default=to_jsonable_python)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise InvalidParams(f"a topic message must be JSON: {exc}") from None


class ClientPubSub:
    """What ``Client.publish``/``subscribe``/``subscribe_agent`` do, over the client's connection."""

    def __init__(
        self, nc: NatsConnection, subjects: Subjects, clock: Clock, *, timeout_s: float, max_payload_bytes: int
    ) -> None:
        self._nc = nc
        self._clock = clock
        self._max_bytes = max(1024, max_payload_bytes - 1024)  # the topic stream's limit
        self.store = PubSubStore(nc, subjects, timeout_s=timeout_s)

    async def publish(self, topic: str, data: Any, *, msg_id: str | None = None) -> int:
        validate_topic(topic)
        body = encode_data(data)
        if len(body) > self._max_bytes:
            raise PayloadTooLarge(f"topic message of {len(body)} bytes exceeds the limit of {self._max_bytes}")
        return await self.store.publish(topic, body, msg_id)

    def subscribe(self, pattern: str, *, max_pending: int = 65536) -> TopicStream:
        return TopicStream(self._nc, self.store.names, validate_pattern(pattern), max_pending)

    async def subscribe_agent(
        self,
        agent_type: str,
        agent_id: str,
        pattern: str,
        *,
        action: str = DEFAULT_HANDLER,
        delivery: Delivery | str = Delivery.EXACTLY_ONCE,
    ) -> Subscription:
        sub = Subscription(
            pattern=validate_pattern(pattern),
            type=validate_token(agent_type, "agent type"),
            id=validate_token(agent_id, "agent id"),
            action=action,
            delivery=Delivery(delivery),
            ts_ms=self._clock.wall_ms(),
        ).checked()
        await self.store.save(sub)
        return sub

    async def unsubscribe_agent(self, agent_type: str, agent_id: str, pattern: str) -> None:
        sub = Subscription(
            pattern=validate_pattern(pattern),
            type=validate_token(agent_type, "agent type"),
            id=validate_token(agent_id, "agent id"),
        )
        await self.store.remove(sub)
