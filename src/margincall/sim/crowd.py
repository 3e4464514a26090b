"""A seeded crowd of leveraged traders, opened through the SDK on any Ape chain.

The demo and the end-to-end tests need the same thing: N traders, each with
a deposit and one position at a leverage between 2x and ~10x, long or short,
in one of the markets, reproducible from a seed. `plan_crowd` draws the
plan (pure), `open_crowd` funds and opens it (mint, approve, deposit, an order each, then
one round per market and the settlements),
and `crash_path` gives a price path with a fall and rebounds.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from margincall.constants import WAD

SETTLE_GAS = 25_000_000  # a batch of 50 settlements uses ~2.7M, plus 500k kept per fill


@dataclass(frozen=True)
class TraderPlan:
    """One trader: deposit (whole tokens), market, side and leverage."""

    deposit: int
    market_id: int
    long: bool
    leverage: Decimal

    def size(self, price_wad: int) -> int:
        """Position size (wad of base asset, signed) for this leverage at `price_wad`."""
        notional = Decimal(self.deposit) * self.leverage * WAD
        size = int(notional * WAD / Decimal(price_wad))
        return size if self.long else -size


def plan_crowd(
    n: int,
    seed: int,
    market_ids: Sequence[int] = (0, 1),
    leverage: tuple[float, float] = (2.0, 9.9),
    deposit: tuple[int, int] = (1_000, 20_000),
    long_share: float = 0.75,
) -> list[TraderPlan]:
    """`n` traders drawn from `seed`: leverage uniform in `leverage`, mostly long."""
    if n < 0:
        raise ValueError("n must be non-negative")
    lo, hi = leverage
    if not 1 <= lo <= hi:
        raise ValueError("leverage bounds must satisfy 1 <= low <= high")
    rng = random.Random(seed)
    plans = []
    for _ in range(n):
        lev = Decimal(str(round(rng.uniform(lo, hi), 2)))
        plans.append(
            TraderPlan(
                deposit=rng.randrange(deposit[0], deposit[1] + 1, 100),
                market_id=rng.choice(list(market_ids)),
                long=rng.random() < long_share,
                leverage=lev,
            )
        )
    return plans


def open_crowd(
    client: Any,
    traders: Sequence[Any],
    plans: Sequence[TraderPlan],
    publish: Callable[[int], Any],
    slippage_bps: int = 100,
    progress: Callable[[int], None] | None = None,
    settle: Callable[[list[int]], list[str]] | None = None,
) -> list[int]:
    """Funds each trader with its deposit (mock token) and opens its position through an
    order: every trader commits, then `publish(market_id)` posts the next round of each
    market used (at its current price, in a later block than the commits: on a local chain,
    `publish_round`), then `settle(order_ids)` sees every order settled at it and returns
    the reasons of those refused (default: the first trader settles them, `settle_as`; the
    demo waits for its keeper process instead). Returns the order ids; raises if one of them
    was refused or is still pending."""
    if len(traders) < len(plans):
        raise ValueError(f"{len(plans)} plans but only {len(traders)} trader accounts")
    orders = []
    for i, (trader, plan) in enumerate(zip(traders, plans, strict=False)):
        amount = client.tokens(plan.deposit)
        client.mint(amount, sender=trader)
        client.approve(amount, sender=trader)
        client.deposit(amount, sender=trader)
        size = plan.size(client.price(plan.market_id))
        bound = client.acceptable_price(plan.market_id, size, slippage_bps)
        order_id, _ = client.orders.commit(plan.market_id, size, bound, sender=trader)
        orders.append(order_id)
        if progress:
            progress(i + 1)
    if not orders:
        return orders
    for m in sorted({p.market_id for p in plans}):
        publish(m)
    if settle is None:
        refused = settle_as(client, orders, traders[0])
    else:
        refused = settle(orders)
    left = [o for o in orders if client.orders.order(o) is not None]
    if refused or left:
        why = refused[0] if refused else "not settled"
        raise RuntimeError(f"open_crowd: {len(refused) + len(left)} orders not filled ({why})")
    return orders


def settle_as(client: Any, orders: list[int], settler: Any) -> list[str]:
    """Settles `orders` in batches sent by `settler`; the reasons of those refused."""
    refused = []
    # a gas limit given, not estimated: the book stops a batch early when less than its fill
    # gas is left, so an estimate settles fewer orders (or starves a fill mid-way)
    for receipt in client.orders.settle_many(orders, sender=settler, gas_limit=SETTLE_GAS):
        refused += [o.reason for o in client.orders.outcomes(receipt) if not o.settled]
    return refused


def publish_round(system: Any, chain: Any, client: Any, market_id: int) -> Any:
    """Posts the next round of a local market's mock feed at its current price (the SDK's
    `client.price`), in a block stamped after the head (Anvil's automine can give the next
    block the head's timestamp, and a round at the commit's own timestamp is not after it)."""
    if chain.pending_timestamp <= chain.blocks.head.timestamp:
        chain.pending_timestamp = chain.blocks.head.timestamp + 1
    return system.set_price(market_id, float(Decimal(client.price(market_id)) / WAD))


def crash_path(
    start: float,
    fall: float = 0.45,
    steps: int = 30,
    rebound: float = 0.03,
    every: int = 6,
    seed: int = 7,
) -> list[float]:
    """Prices from `start` down by `fall` (0.45 = -45%) in `steps` steps, ending at the low.

    Every `every`-th step (but the last) is a rebound of `rebound` (+3%); the other steps
    fall by the same return, chosen so that the path ends exactly at the low, with a
    jitter of +-20% drawn from `seed`. No step falls by much more than the average,
    as in a crash seen minute by minute.
    """
    if not 0 < fall < 1 or steps < 2 or every < 2:
        raise ValueError("fall must be in (0, 1), steps >= 2, every >= 2")
    rng = random.Random(seed)
    ups = [k % every == 0 for k in range(1, steps)] + [False]
    weights = [0.0 if up else rng.uniform(0.8, 1.2) for up in ups]
    # the falls share the log-return left after the rebounds, in proportion to the weights
    total = math.log((1 - fall) / (1 + rebound) ** sum(ups))
    path, price = [], start
    for up, w in zip(ups, weights, strict=True):
        price *= (1 + rebound) if up else math.exp(total * w / sum(weights))
        path.append(round(price, 2))
    path[-1] = round(start * (1 - fall), 2)
    return path


__all__ = ["TraderPlan", "crash_path", "open_crowd", "plan_crowd", "publish_round", "settle_as"]
