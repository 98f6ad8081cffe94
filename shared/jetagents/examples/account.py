"""``account``: deposit, withdraw (never below zero), balance."""

from __future__ import annotations

from pydantic import BaseModel, Field

from .._core.agent import Agent, Event, action, applies
from .._core.errors import DomainError


class AccountState(BaseModel):
    balance: int = 0


class Deposited(Event):
    amount: int


class Withdrawn(Event):
    amount: int


class Account(Agent[AccountState]):
    """Amounts are integers in minor units (cents) so replay is exact."""

    type_name = "account"
    state_type = AccountState

    @action
    async def deposit(self, amount: int = Field(gt=0, le=10**15)) -> int:
        self.emit(Deposited(amount=amount))
        return self.state.balance

    @action
    async def withdraw(self, amount: int = Field(gt=0, le=10**15)) -> int:
        if amount > self.state.balance:
            raise DomainError(
                "insufficient_funds",
                f"cannot withdraw {amount}: balance is {self.state.balance}",
                details={"balance": self.state.balance, "requested": amount},
            )
        self.emit(Withdrawn(amount=amount))
        return self.state.balance

    @action(read_only=True)
    async def balance(self) -> int:
        return self.state.balance

    @applies
    def _deposited(self, state: AccountState, event: Deposited) -> None:
        state.balance += event.amount

    @applies
    def _withdrawn(self, state: AccountState, event: Withdrawn) -> None:
        state.balance -= event.amount
