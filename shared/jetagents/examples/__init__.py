"""Example agents shipped with jetagents and run by ``jetagents up``."""

from .account import Account, AccountState
from .counter import Counter, CounterState

EXAMPLE_AGENTS = [Counter, Account]

__all__ = ["EXAMPLE_AGENTS", "Account", "AccountState", "Counter", "CounterState"]
