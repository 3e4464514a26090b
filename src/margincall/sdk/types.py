"""What the SDK's clients return: frozen dataclasses with plain integers (wad for values and
ratios, token units for token amounts), and the small helpers the clients share.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from margincall import math as ref
from margincall.constants import (
    MAX_MARKETS,
    WAD,
    PlanCode,
    State,
)
from margincall.sdk.errors import STALE_REASON, OracleError, StalePrice

MAX_UINT = 2**256 - 1
# --- data ---------------------------------------------------------------


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, dict):
        return obj[name]
    return getattr(obj, name)


def _addr(who: Any) -> str:
    return str(getattr(who, "address", who))


@dataclass(frozen=True)
class MarginStatus:
    """`check_margin(account)`: all values in wad (collateral included)."""

    account: str
    collateral: int
    equity: int
    maintenance: int
    initial: int
    ratio: int  # MAX_UINT with no positions
    state: State
    call_deadline: int  # 0 when no live call
    next_tranche_time: int  # 0 before the first tranche
    positions: int
    # False: a needed price is invalid (batched view only): the figures are the liquidation
    # value (the unpriced leg at its worst case), or none (state HEALTHY) if no leg is priced
    priced: bool = True

    @classmethod
    def from_struct(cls, s: Any) -> MarginStatus:
        return cls(
            account=str(_get(s, "account")),
            collateral=int(_get(s, "collateral")),
            equity=int(_get(s, "equity")),
            maintenance=int(_get(s, "maintenance")),
            initial=int(_get(s, "initial")),
            ratio=int(_get(s, "ratio")),
            state=State(int(_get(s, "state"))),
            call_deadline=int(_get(s, "call_deadline")),
            next_tranche_time=int(_get(s, "next_tranche_time")),
            positions=int(_get(s, "positions")),
            priced=bool(_get(s, "priced")),
        )

    @property
    def free_margin(self) -> int:
        """Equity above the initial margin (wad); negative when short of it."""
        return self.equity - self.initial

    @property
    def needs_action(self) -> bool:
        """A keeper may act on it now (call or liquidate), tranche interval aside; an
        unpriced account only by a liquidation (a call needs every price)."""
        if self.state == State.CALLABLE:
            return self.priced
        return self.state in (State.LIQUIDATABLE, State.CRITICAL, State.BANKRUPT)


@dataclass(frozen=True)
class Position:
    """One open position, priced at the oracle (wad)."""

    market_id: int
    size: int  # signed, wad of base asset
    open_notional: int  # signed, size times average entry price
    price: int  # oracle price

    @property
    def notional(self) -> int:
        return ref.mul_up(abs(self.size), self.price)

    @property
    def pnl(self) -> int:
        """Unrealised PnL (wad), rounded down as the engine does."""
        return ref.div_floor(self.size * self.price, WAD) - self.open_notional

    @property
    def entry_price(self) -> int:
        return abs(self.open_notional) * WAD // abs(self.size) if self.size else 0

    @property
    def is_long(self) -> bool:
        return self.size > 0


@dataclass(frozen=True)
class LiquidationPreview:
    """`preview_liquidation(account)`: token amounts in token units, the rest in wad."""

    state: State
    liquidatable: bool
    reason: PlanCode
    full_close: bool
    fraction: int
    closed: tuple[tuple[int, int], ...]  # (market id, closed size)
    closed_notional: int
    penalty: int
    keeper_reward: int
    fund_fee: int
    deficit: int
    equity_after: int
    ratio_after: int

    @classmethod
    def from_struct(cls, p: Any) -> LiquidationPreview:
        return cls(
            state=State(int(_get(p, "state"))),
            liquidatable=bool(_get(p, "liquidatable")),
            reason=PlanCode(int(_get(p, "reason"))),
            full_close=bool(_get(p, "full_close")),
            fraction=int(_get(p, "fraction")),
            closed=tuple(
                (int(m), int(s))
                for m, s in zip(_get(p, "market_ids"), _get(p, "closed_sizes"), strict=True)
            ),
            closed_notional=int(_get(p, "closed_notional")),
            penalty=int(_get(p, "penalty")),
            keeper_reward=int(_get(p, "keeper_reward")),
            fund_fee=int(_get(p, "fund_fee")),
            deficit=int(_get(p, "deficit")),
            equity_after=int(_get(p, "equity_after")),
            ratio_after=int(_get(p, "ratio_after")),
        )


@dataclass(frozen=True)
class Market:
    """`markets(market_id)` (ratios in wad)."""

    market_id: int
    oracle: str
    imr: int
    mmr: int
    fee: int
    window_cap: int
    active: bool


@dataclass(frozen=True)
class AccountRecord:
    """`account_info(account)`: the raw record (collateral in token units)."""

    collateral: int
    markets: int  # bitmap
    deadline: int  # recorded call deadline, 0 if none (may have lapsed)
    last_tranche: int
    tranches: int

    @property
    def market_ids(self) -> tuple[int, ...]:
        return tuple(m for m in range(MAX_MARKETS) if self.markets >> m & 1)


def _checked_price(adapter: Any, market_id: int) -> int:
    """The adapter's price (wad); `StalePrice`/`OracleError` with its reason when invalid."""
    price, ok = adapter.try_price()
    if not ok:
        reason = str(adapter.reason())
        raise (StalePrice if reason == STALE_REASON else OracleError)(market_id, reason)
    return int(price)


def _has_view(contract: Any, name: str) -> bool:
    """Whether the contract's ABI has a view `name` (any object with that attribute when it
    carries no ABI, as test doubles do)."""
    contract_type = getattr(contract, "contract_type", None)
    if contract_type is None:
        return callable(getattr(contract, name, None))
    return any(abi.name == name for abi in contract_type.view_methods)


def in_tokens(units: int, decimals: int) -> str:
    """Token units as whole tokens for a message: `in_tokens(1_500_000, 6)` is `1.5 tokens`."""
    from decimal import Decimal

    text = f"{Decimal(int(units)).scaleb(-decimals):,f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} tokens"


def chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive slices of at most `size` items."""
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


@dataclass(frozen=True)
class Call:
    """A transaction the SDK built for a bot to sign and send elsewhere (the keeper's
    `TxSender`): the contract's address, the calldata, a label (the function) and the
    accounts it acts on."""

    to: str
    data: bytes
    label: str
    accounts: tuple[str, ...] = ()
