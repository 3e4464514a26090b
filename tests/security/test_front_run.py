"""The oracle front-run of issue 11, replayed against orders: it loses money on every timing.

The attack on a fill-at-once `trade`: a Chainlink update is a pending transaction (and a pull
oracle's price is public before it lands), so a trader buys just before a known update and
sells just after it. On main it paid +391.75 on 10,000 of collateral per 0.5% update. With
orders, a position change fills at the first round published strictly after its commit, so
the known update is the trader's entry price, never a profit. Both sides, every ordering of
commit and update we can make on a chain (same second, next block, blocks later, after the
update in its own second), 6- and 18-decimal collateral (the shared `system` fixture).
"""

from __future__ import annotations

import pytest

from margincall.sdk import MarginEngineClient, OrderBookClient
from tests.utils.helpers import deposit, publish_round, wad

ETH = 0
START_PRICE = 2_000.0
MOVE = 10.0  # a 0.5% Chainlink deviation update
SIZE = 49  # ETH: 98,000 of notional on 10,000 of collateral, as in the reproduction
FEE_MICRO = 100_000


@pytest.fixture(scope="module", autouse=True)
def _settlement_fee(system, owner):
    system.book.set_config(FEE_MICRO, 3_600, sender=owner)


@pytest.fixture
def orders(system):
    return OrderBookClient(system.book, MarginEngineClient.from_system(system))


def holdings(system, trader) -> int:
    """Everything the trader owns in the system and in the wallet, token units."""
    return (
        system.engine.collateral_of(trader)
        + system.book.escrowed_of(trader)
        + system.token.balanceOf(trader)
    )


def pin(chain, timestamp: int) -> None:
    chain.pending_timestamp = timestamp


def settle_at_next_round(system, orders, order_id, trader, price: float):
    """Settles the order at its settlement round, publishing one at `price` if none exists
    yet (the market then stays at `price`)."""
    order = orders.order(order_id)
    if orders.settlement_round(order) is None:
        publish_round(system, ETH, price=price)
    receipt = orders.settle(order_id, trader)  # the trader settles: the fee comes back
    (outcome,) = orders.outcomes(receipt)
    assert outcome.settled, outcome.reason
    return outcome


@pytest.mark.parametrize("side", [1, -1], ids=["long", "short"])
@pytest.mark.parametrize(
    "timing", ["same_second", "next_block", "five_blocks_later", "after_update_same_second"]
)
def test_front_running_a_known_update_loses_money(chain, system, orders, trader, side, timing):
    system.set_price(ETH, START_PRICE)
    deposit(system, trader, 10_000)
    start = holdings(system, trader)
    new_price = START_PRICE + side * MOVE
    bound = 2**256 - 1 if side > 0 else 0
    t0 = int(chain.blocks.head.timestamp) + 1

    if timing == "after_update_same_second":
        pin(chain, t0)
        system.set_price(ETH, new_price)  # the update lands; the trader sees it ...
        pin(chain, t0)
        order_id, _ = orders.commit(ETH, side * wad(SIZE), bound, trader)  # ... same second
    else:
        pin(chain, t0)
        order_id, _ = orders.commit(ETH, side * wad(SIZE), bound, trader)
        if timing == "same_second":
            pin(chain, t0)  # the update in the commit's own block, ordered after it
        elif timing == "next_block":
            pin(chain, t0 + 1)
        else:
            for i in range(5):
                pin(chain, t0 + 1 + i)
                chain.mine()
            pin(chain, t0 + 12)
        system.set_price(ETH, new_price)

    opened = settle_at_next_round(system, orders, order_id, trader, new_price)
    # the known update is the entry price, never the price before it
    assert opened.price == wad(new_price)

    # close as soon as possible: the market stays at the new price
    close_id, _ = orders.close(ETH, 0 if side > 0 else 2**256 - 1, trader)
    closed = settle_at_next_round(system, orders, close_id, trader, new_price)
    assert closed.price == wad(new_price)
    assert system.engine.position(trader, ETH)[0] == 0

    lost = start - holdings(system, trader)
    assert lost > 0, f"the front-run gained {-lost} token units"


@pytest.mark.parametrize("side", [1, -1], ids=["long", "short"])
def test_closing_before_a_known_adverse_update_fills_at_that_update(
    chain, system, orders, trader, side
):
    """The reverse leak: a holder who sees an adverse update coming cannot close ahead of it."""
    system.set_price(ETH, START_PRICE)
    deposit(system, trader, 10_000)
    bound = 2**256 - 1 if side > 0 else 0
    order_id, _ = orders.commit(ETH, side * wad(SIZE), bound, trader)
    settle_at_next_round(system, orders, order_id, trader, START_PRICE)
    before = holdings(system, trader)

    adverse = START_PRICE - side * MOVE
    close_id, _ = orders.close(ETH, 0 if side > 0 else 2**256 - 1, trader)
    pin(chain, int(chain.blocks.head.timestamp) + 1)
    system.set_price(ETH, adverse)  # the known update lands right after the commit
    closed = settle_at_next_round(system, orders, close_id, trader, adverse)

    assert closed.price == wad(adverse)
    lost = before - holdings(system, trader)
    assert lost >= SIZE * MOVE * system.unit, "the close escaped the adverse update"
