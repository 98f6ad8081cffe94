"""The ``shop`` agent as it was first written (the OLD code, kept to record its golden log):
``ItemAdded`` has a field ``item``; the state has no ``currency``. ``tests/unit/test_golden.py``
replays that log with today's ``Shop`` (``shop.py``), which renamed the field and added a
required one, through upcasters (ADR 0052)."""

from __future__ import annotations

from pydantic import BaseModel

from jetagents import Agent, action, applies
from jetagents._core.agent import Event


class ShopState(BaseModel):
    items: dict[str, int] = {}


class ItemAdded(Event):
    item: str
    qty: int


class Shop(Agent[ShopState]):
    type_name = "shop"
    state_type = ShopState

    @action
    async def add(self, item: str, qty: int = 1) -> dict[str, int]:
        self.emit(ItemAdded(item=item, qty=qty))
        return self.state.items

    @applies
    def _added(self, state: ShopState, event: ItemAdded) -> None:
        state.items[event.item] = state.items.get(event.item, 0) + event.qty
