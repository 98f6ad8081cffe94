"""The ``shop`` agent as it is today (ADR 0052): ``ItemAdded.item`` was renamed ``sku``
(event version 2) and the state gained a required ``currency`` (state version 2). Two
upcasters carry the old log and old snapshots over; nothing else changed."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from jetagents import Agent, Event, action, applies, upcaster
from jetagents._core.upcast import STATE


class ShopState(BaseModel):
    items: dict[str, int] = {}
    currency: str  # required since state version 2


class ItemAdded(Event):
    event_version = 2
    sku: str
    qty: int


class Shop(Agent[ShopState]):
    type_name = "shop"
    state_type = ShopState
    state_version = 2

    @classmethod
    def initial_state(cls) -> ShopState:
        return ShopState(currency="EUR")

    @action
    async def add(self, sku: str, qty: int = 1) -> dict[str, int]:
        self.emit(ItemAdded(sku=sku, qty=qty))
        return self.state.items

    @applies
    def _added(self, state: ShopState, event: ItemAdded) -> None:
        state.items[event.sku] = state.items.get(event.sku, 0) + event.qty

    @upcaster("ItemAdded", from_version=1)
    def _item_added_v1(data: dict[str, Any]) -> dict[str, Any]:
        return {"sku": data["item"], "qty": data["qty"]}

    @upcaster(STATE, from_version=1)
    def _state_v1(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "currency": "EUR"}


class ShopWithoutUpcasters(Agent[ShopState]):
    """Today's shop had its author forgotten the upcasters: replaying the old log must fail
    with an error naming the event and its version, never guess."""

    type_name = "shop"
    state_type = ShopState
    state_version = 2

    @classmethod
    def initial_state(cls) -> ShopState:
        return ShopState(currency="EUR")

    @applies
    def _added(self, state: ShopState, event: ItemAdded) -> None:
        state.items[event.sku] = state.items.get(event.sku, 0) + event.qty
