"""`FundClient`: the insurance fund: balance, donations, its payments to keepers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from margincall.sdk.errors import InsufficientFunds, InvalidRequest
from margincall.sdk.events import RawEvent
from margincall.sdk.types import _addr

# --- insurance fund -----------------------------------------------------------


@dataclass(frozen=True)
class FundState:
    """The insurance fund's wiring and balance (token units)."""

    balance: int
    asset: str
    pool: str
    engine: str


class FundClient:
    """The insurance fund and its token."""

    def __init__(self, fund: Any, token: Any):
        self.fund = fund
        self.token = token

    @classmethod
    def from_system(cls, system: Any) -> FundClient:
        return cls(system.fund, system.token)

    @property
    def address(self) -> str:
        """The fund's address."""
        return str(self.fund.address)

    def raw_event(self, name: str) -> RawEvent:
        """A fast reader of the fund's event `name` (e.g. `DeficitCovered`)."""
        return RawEvent(getattr(self.fund, name).abi)

    # --- reads ---

    def balance(self) -> int:
        """The fund's assets, token units."""
        return int(self.fund.fund_balance())

    def state(self) -> FundState:
        return FundState(
            balance=self.balance(),
            asset=str(self.fund.asset()),
            pool=str(self.fund.pool()),
            engine=str(self.fund.engine()),
        )

    # --- checks and senders ---

    def check_donate(self, amount: int, sender: Any) -> None:
        if amount <= 0:
            raise InvalidRequest("fund donate: amount must be positive (fund: zero amount)")
        balance = int(self.token.balanceOf(_addr(sender)))
        if balance < amount:
            raise InsufficientFunds(f"fund donate: balance {balance} < amount {amount}")
        allowance = int(self.token.allowance(_addr(sender), _addr(self.fund)))
        if allowance < amount:
            raise InsufficientFunds(
                f"fund donate: allowance {allowance} < amount {amount}; approve the fund first"
            )

    def approve(self, amount: int, sender: Any, **txn: Any) -> Any:
        """Lets the fund take `amount` token units from the sender."""
        return self.token.approve(_addr(self.fund), amount, sender=sender, **txn)

    def donate(self, amount: int, sender: Any, **txn: Any) -> Any:
        """Adds `amount` token units of the sender's to the fund (for good)."""
        self.check_donate(amount, sender)
        return self.fund.donate(amount, sender=sender, **txn)
