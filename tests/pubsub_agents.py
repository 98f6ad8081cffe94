"""Agents for the pub-sub tests (ADR 0049), in-process and in real host processes
(``JETAGENTS_AGENTS='["tests.pubsub_agents:PUBSUB_AGENTS"]'``).

``Follower`` is subscribed to ``orders.*`` by its class, so every follower that has been
activated receives each order; ``follow`` subscribes it to more at run time. Each message it
handles is an event in its log, so the log says exactly what arrived, how often and in which
order.
"""

from __future__ import annotations

import contextlib
from typing import Any

from pydantic import BaseModel

from jetagents import Agent, Event, Message, action, applies, subscribe


class FollowerState(BaseModel):
    seen: list[list[Any]] = []  # [topic, seq, data["n"]]


class Seen(Event):
    topic: str
    seq: int
    n: int


class Follower(Agent[FollowerState]):
    type_name = "follower"
    state_type = FollowerState

    @subscribe("orders.*")
    async def on_order(self, msg: Message) -> int:
        self.emit(Seen(topic=msg.topic, seq=msg.seq, n=int(msg.data["n"])))
        return len(self.state.seen)

    @action(read_only=True)
    async def seen(self) -> list[list[Any]]:
        return self.state.seen

    @action
    async def follow(self, pattern: str) -> None:
        await self.subscribe(pattern, action="on_order")

    @action
    async def unfollow(self, pattern: str) -> None:
        await self.unsubscribe(pattern)

    @action
    async def announce(self, topic: str, n: int) -> int:
        return await self.publish(topic, {"n": n})

    @action
    async def take_jobs(self, queue: str, n: int) -> list[Any]:
        """Pull ``n`` jobs from a work queue through its host's connection (ADR 0050)."""
        got: list[Any] = []
        async with contextlib.aclosing(self.ctx.client.work_queue(queue, visibility_s=5).jobs()) as jobs:
            async for job in jobs:
                got.append(job.data)
                await job.ack()
                if len(got) == n:
                    break
        return got

    @applies
    def _seen(self, state: FollowerState, event: Seen) -> None:
        state.seen.append([event.topic, event.seq, event.n])


class LooseSeen(Event):
    topic: str
    seq: int
    n: int


class LooseFollower(Agent[FollowerState]):
    """Subscribed at least once: its deliveries carry no deterministic id."""

    type_name = "loose_follower"
    state_type = FollowerState

    @subscribe("loose.*", delivery="at-least-once")
    async def on_loose(self, msg: Message) -> None:
        self.emit(LooseSeen(topic=msg.topic, seq=msg.seq, n=int(msg.data["n"])))

    @action(read_only=True)
    async def seen(self) -> list[list[Any]]:
        return self.state.seen

    @applies
    def _seen(self, state: FollowerState, event: LooseSeen) -> None:
        state.seen.append([event.topic, event.seq, event.n])


PUBSUB_AGENTS = [Follower, LooseFollower]
