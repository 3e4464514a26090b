"""The SDK's typed errors: every sender checks first and raises one of these instead of
sending a transaction that would revert.
"""

from __future__ import annotations

STALE_REASON = "oracle: stale price"

# --- errors ---------------------------------------------------------------


class MarginCallError(Exception):
    """Base of every error the SDK raises before sending a transaction."""


class InvalidRequest(MarginCallError, ValueError):
    """The request itself cannot succeed (zero amount, unknown market, ...)."""


class InsufficientFunds(MarginCallError):
    """The sender lacks the token balance or allowance for a deposit."""


class InsufficientMargin(MarginCallError):
    """The account would end below its initial margin (or lose more than its collateral)."""


class UnderMarginCall(MarginCallError):
    """The account is under a margin call: no withdrawal and no new exposure."""


class OracleError(MarginCallError):
    """A needed price is invalid; `reason` is the adapter's `reason()`."""

    def __init__(self, market_id: int, reason: str):
        self.market_id = market_id
        self.reason = reason
        super().__init__(f"market {market_id}: no valid price ({reason or 'unknown reason'})")


class StalePrice(OracleError):
    """The needed price is older than the feed's heartbeat."""


class SlippageExceeded(MarginCallError):
    """The oracle price is beyond the trader's acceptable price."""


class NotCallable(MarginCallError):
    """`margin_call` would revert: the account is not CALLABLE."""


class NotLiquidatable(MarginCallError):
    """`liquidate` would revert: the account is not liquidatable."""


class TooSoon(NotLiquidatable):
    """`liquidate` would revert: the tranche interval has not elapsed."""


class WindowFull(NotLiquidatable):
    """`liquidate` would revert: the market's liquidation window cap is reached."""


class ReserveLocked(MarginCallError):
    """An LP withdrawal would dip into the pool's reserve for open interest."""


class SharesLocked(MarginCallError):
    """The LP's shares are still in the pool's cooldown (only on pools that have one)."""
