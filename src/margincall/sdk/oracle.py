"""`OracleClient`: one market's oracle adapter: price, validity, reason, settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from margincall.sdk.types import _checked_price

# --- oracle adapter -------------------------------------------------------------


@dataclass(frozen=True)
class OracleStatus:
    """`status()` and `reason()` of an adapter: price 0 and a reason when not valid."""

    price: int  # wad
    valid: bool
    using_fallback: bool
    reason: str  # "" when valid


@dataclass(frozen=True)
class FeedSettings:
    """The adapter's immutable settings (prices in wad, times in seconds; ZERO: none)."""

    primary: str
    primary_heartbeat: int
    fallback: str
    fallback_heartbeat: int
    sequencer: str
    sequencer_grace: int
    min_price: int
    max_price: int


_LATEST_ROUND_ABI = {
    "type": "function",
    "name": "latestRoundData",
    "stateMutability": "view",
    "inputs": [],
    "outputs": [
        {"name": "roundId", "type": "uint80"},
        {"name": "answer", "type": "int256"},
        {"name": "startedAt", "type": "uint256"},
        {"name": "updatedAt", "type": "uint256"},
        {"name": "answeredInRound", "type": "uint80"},
    ],
}


class OracleClient:
    """One market's oracle adapter (the adapter has no owner and no setters: reads only)."""

    def __init__(self, adapter: Any, market_id: int = 0):
        self.adapter = adapter
        self.market_id = market_id

    def price(self) -> int:
        """The valid price (wad); raises `StalePrice`/`OracleError` with the adapter's reason."""
        return _checked_price(self.adapter, self.market_id)

    def try_price(self) -> tuple[int, bool]:
        price, ok = self.adapter.try_price()
        return int(price), bool(ok)

    def reason(self) -> str:
        """Why no valid price exists ("" when one does)."""
        return str(self.adapter.reason())

    def status(self) -> OracleStatus:
        price, ok, fallback = self.adapter.status()
        return OracleStatus(int(price), bool(ok), bool(fallback), "" if ok else self.reason())

    def feed_updated_at(self) -> int | None:
        """When the primary feed's latest round was published (`latestRoundData().updatedAt`,
        unix seconds), read through Chainlink's `AggregatorV3Interface`; None when the feed
        cannot be read (a reverting or missing feed: `status()` then says why)."""
        from ape import Contract

        try:
            feed = Contract(str(self.adapter.primary()), abi=[_LATEST_ROUND_ABI])
            return int(feed.latestRoundData()[3])
        except Exception:  # noqa: BLE001 - any failure of a foreign feed reads as unknown
            return None

    def settings(self) -> FeedSettings:
        a = self.adapter
        return FeedSettings(
            primary=str(a.primary()),
            primary_heartbeat=int(a.primary_heartbeat()),
            fallback=str(a.fallback()),
            fallback_heartbeat=int(a.fallback_heartbeat()),
            sequencer=str(a.sequencer()),
            sequencer_grace=int(a.sequencer_grace()),
            min_price=int(a.min_price()),
            max_price=int(a.max_price()),
        )
