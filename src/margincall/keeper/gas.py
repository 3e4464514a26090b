"""The one owner of the keeper's gas price.

A keeper's transactions for a block carry `max_fee = 2 * base_fee + tip` (room for the base
fee to rise for a block or two) and `max_priority_fee = tip`; what a transaction pays per gas,
and what the profit rule charges each action (`CostModel.gas_price`), is `base_fee + tip`.
The bot (`TxSender.begin_block`, `Keeper.on_block`) and the simulator (`Replay`, a fixed
base fee of `gas_price_gwei` and no tip) both take their figures from here, and a stuck
transaction's replacement its raised fees (`bumped`, `TxSender.replace`).
"""

from __future__ import annotations

GWEI = 10**9


def block_fees(base_fee: int, tip: int) -> tuple[int, int]:
    """`(max_fee, tip)` of the transactions sent for a block whose base fee is `base_fee`."""
    if base_fee < 0 or tip < 0:
        raise ValueError("base fee and tip must be non-negative")
    return 2 * int(base_fee) + int(tip), int(tip)


def gas_price(base_fee: int, tip: int) -> int:
    """The price per gas a transaction of that block pays: what the profit rule charges."""
    if base_fee < 0 or tip < 0:
        raise ValueError("base fee and tip must be non-negative")
    return int(base_fee) + int(tip)


def bumped(old: int, current: int, bump_bps: int) -> int:
    """A replacement's fee: `old` raised by `bump_bps` (rounded up, and at least by 1 wei),
    or `current` if that is higher."""
    return max(-(-old * bump_bps // 10_000), old + 1, current)


def gwei(price_gwei: float) -> int:
    """A price in gwei (a setting, e.g. the simulator's `gas_price_gwei`) in wei."""
    return int(price_gwei * GWEI)


__all__ = ["GWEI", "block_fees", "bumped", "gas_price", "gwei"]
