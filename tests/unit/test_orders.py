"""Orders (PROTOCOL.md 5b): commit, settle at the first round after the commit, cancel.

The shared `system` (6- and 18-decimal collateral) gets a settlement fee of 0.1 token here, so
escrow, payment and refund are visible. Markets: 0 ETH-USD at 2,000 (imr 10%, mmr 5%), fee
5 bps; feeds with 8 decimals.
"""

from __future__ import annotations

import ape
import pytest

from margincall.constants import WAD, State
from margincall.keeper.settle import order_history
from margincall.sdk.settlement import SettlementClient
from tests.utils.helpers import (
    assert_conserved,
    commit,
    deposit,
    publish_round,
    travel,
    wad,
)

ETH = 0
FEE_MICRO = 100_000  # 0.1 token
MAX_UINT = 2**256 - 1


@pytest.fixture(scope="module", autouse=True)
def _settlement_fee(system, owner):
    system.book.set_config(FEE_MICRO, 3_600, sender=owner)


def fee_units(system) -> int:
    return FEE_MICRO * 10 ** (system.decimals - 6)


def one(tx, event):
    logs = tx.decode_logs(event)
    assert len(logs) == 1, f"expected one {event.name}, got {len(logs)}"
    return logs[0]


def head_time(chain) -> int:
    return int(chain.blocks.head.timestamp)


def price_wad(system, market_id: int, price: float) -> int:
    return system.feed_answer(market_id, price) * 10 ** (
        18 - system.markets[market_id].feed_decimals
    )


# --- commit ---------------------------------------------------------------------------


def test_commit_escrows_the_fee_and_logs_the_order(chain, system, trader):
    book, engine = system.book, system.engine
    deposit(system, trader, 1_000)
    before = engine.collateral_of(trader)
    order_id, tx = commit(system, trader, ETH, wad(1), 2_100 * WAD)

    log = one(tx, book.OrderCommitted)
    assert log.account == trader.address
    assert log.market_id == ETH
    assert log.size_delta == wad(1)
    assert log.acceptable_price == 2_100 * WAD  # a round bound is stored exactly
    assert log.fee == fee_units(system)
    assert engine.collateral_of(trader) == before - fee_units(system)
    assert book.escrowed_of(trader) == fee_units(system)
    assert list(book.pending_orders(trader)) == [order_id]
    o = book.order(order_id)
    assert o.commit_time == head_time(chain)
    assert o.commit_time < o.expiry <= o.commit_time + 3_600
    assert_conserved(system, [trader])


def test_commit_refuses_bad_requests(chain, system, trader):
    book = system.book
    deposit(system, trader, 1_000)
    expiry = head_time(chain) + 600
    with ape.reverts("book: zero size"):
        book.commit_order(ETH, 0, MAX_UINT, expiry, False, sender=trader)
    with ape.reverts("book: unknown market"):
        book.commit_order(3, wad(1), MAX_UINT, expiry, False, sender=trader)
    with ape.reverts("book: expiry not in the future"):
        book.commit_order(ETH, wad(1), MAX_UINT, head_time(chain) - 1, False, sender=trader)
    with ape.reverts("book: window too long"):
        book.commit_order(ETH, wad(1), MAX_UINT, head_time(chain) + 7_200, False, sender=trader)


def test_pending_orders_are_capped_at_four_per_account(system, trader):
    deposit(system, trader, 1_000)
    for _ in range(4):
        commit(system, trader, ETH, wad(0.1), MAX_UINT)
    with ape.reverts("book: too many pending orders"):
        commit(system, trader, ETH, wad(0.1), MAX_UINT)
    assert len(system.book.pending_orders(trader)) == 4


def test_commit_fee_cannot_exceed_collateral(system, trader):
    with ape.reverts("engine: fee exceeds collateral"):
        commit(system, trader, ETH, wad(1), MAX_UINT)


def test_only_the_book_moves_positions_and_fees(system, trader, stranger):
    engine = system.engine
    deposit(system, trader, 1_000)
    with ape.reverts("engine: only order book"):
        engine.fill(trader, ETH, wad(1), 1, sender=stranger)
    with ape.reverts("engine: only order book"):
        engine.escrow_fee(trader, -(10**6), sender=stranger)
    with ape.reverts("engine: only order book"):
        engine.pay_fills(-(10**6), stranger, 0, sender=stranger)
    functions = {m.name for m in engine.contract_type.abi if m.type == "function"}
    assert "trade" not in functions and "close_position" not in functions


# --- settle ---------------------------------------------------------------------------


def test_settle_fills_at_the_first_round_after_the_commit_and_pays_the_settler(
    chain, system, trader, keeper
):
    book, engine, token = system.book, system.engine, system.token
    deposit(system, trader, 1_000)
    order_id, _ = commit(system, trader, ETH, wad(1), 2_100 * WAD)
    round_id = publish_round(system, ETH, price=2_050)
    keeper_before = token.balanceOf(keeper)

    tx = book.settle_order(order_id, round_id, sender=keeper)

    settled = one(tx, book.OrderSettled)
    assert settled.order_id == order_id and settled.settler == keeper.address
    assert settled.price == price_wad(system, ETH, 2_050) and settled.round_id == round_id
    assert settled.size_delta == wad(1) and settled.fee == fee_units(system)
    changed = one(tx, engine.PositionChanged)
    assert changed.price == settled.price and changed.size == wad(1)
    assert token.balanceOf(keeper) - keeper_before == fee_units(system)
    assert list(book.pending_orders(trader)) == [] and book.escrowed_of(trader) == 0
    assert_conserved(system, [trader])


def test_no_round_but_the_first_after_the_commit_can_settle(chain, system, trader, keeper):
    """Every other round (before, in the commit's own second, later) is refused, by
    settle_order (with the reason) and by settle_orders (skipped)."""
    book = system.book
    deposit(system, trader, 1_000)
    before_commit = publish_round(system, ETH, price=1_990)
    order_id, tx = commit(system, trader, ETH, wad(1), MAX_UINT)
    t = system.book.order(order_id).commit_time
    chain.pending_timestamp = t  # a round in the commit's own second (same block on a chain)
    system.set_price(ETH, 1_995)
    same_second = int(system.feeds[ETH].latestRoundData()[0])
    assert int(system.feeds[ETH].getRoundData(same_second)[3]) == t
    first = publish_round(system, ETH, price=2_000)
    later = publish_round(system, ETH, price=2_005)

    for round_id, reason in (
        (before_commit, "oracle: round not after commit"),
        (same_second, "oracle: round not after commit"),
        (later, "oracle: round not first after commit"),
        (later + 1, "oracle: no such round"),
    ):
        with ape.reverts(reason):
            book.settle_order(order_id, round_id, sender=keeper)
        tx = book.settle_orders([order_id], [round_id], sender=keeper)
        assert tx.decode_logs(book.OrderSettled) == [] == tx.decode_logs(book.OrderCancelled)
    assert book.order(order_id).commit_time == t  # still pending

    tx = book.settle_order(order_id, first, sender=keeper)
    settled = one(tx, book.OrderSettled)
    assert settled.price == price_wad(system, ETH, 2_000)
    assert int(system.feeds[ETH].getRoundData(settled.round_id)[3]) > t


def test_settle_after_expiry_reverts_and_cancel_refunds(chain, system, trader, stranger):
    book, engine = system.book, system.engine
    deposit(system, trader, 1_000)
    collateral = engine.collateral_of(trader)
    expiry = head_time(chain) + 60
    tx = book.commit_order(ETH, wad(1), MAX_UINT, expiry, False, sender=trader)
    order_id = one(tx, book.OrderCommitted).order_id
    with ape.reverts("book: order not expired"):
        book.cancel_order(order_id, sender=trader)
    travel(chain, 61)
    round_id = publish_round(system, ETH)
    with ape.reverts("book: order expired"):
        book.settle_order(order_id, round_id, sender=stranger)

    tx = book.cancel_order(order_id, sender=stranger)  # anyone, once expired
    log = one(tx, book.OrderCancelled)
    assert log.reason == "book: expired" and log.refund == fee_units(system)
    assert log.caller == stranger.address and log.account == trader.address
    assert engine.collateral_of(trader) == collateral
    with ape.reverts("book: no such order"):
        book.cancel_order(order_id, sender=trader)
    assert_conserved(system, [trader])


def test_order_breaching_initial_margin_is_cancelled_with_reason_and_refund(system, trader, keeper):
    book, engine = system.book, system.engine
    deposit(system, trader, 100)  # 100 tokens: at most ~1,000 of notional at 10% imr
    collateral = engine.collateral_of(trader)
    order_id, _ = commit(system, trader, ETH, wad(1), MAX_UINT)  # 2,000 of notional
    round_id = publish_round(system, ETH)

    tx = book.settle_order(order_id, round_id, sender=keeper)
    log = one(tx, book.OrderCancelled)
    assert log.order_id == order_id and log.reason == "engine: insufficient margin"
    assert log.refund == fee_units(system)
    assert tx.decode_logs(engine.PositionChanged) == []
    assert engine.position(trader, ETH)[0] == 0
    assert engine.collateral_of(trader) == collateral
    assert list(book.pending_orders(trader)) == []
    assert_conserved(system, [trader])


def test_slippage_beyond_the_acceptable_price_cancels_with_refund(system, trader, keeper):
    book = system.book
    deposit(system, trader, 1_000)
    order_id, _ = commit(system, trader, ETH, wad(1), 2_010 * WAD)
    round_id = publish_round(system, ETH, price=2_020)
    tx = book.settle_order(order_id, round_id, sender=keeper)
    log = one(tx, book.OrderCancelled)
    assert log.reason == "book: price above acceptable" and log.refund == fee_units(system)

    order_id, _ = commit(system, trader, ETH, -wad(1), 2_010 * WAD)
    round_id = publish_round(system, ETH, price=2_000)
    tx = book.settle_order(order_id, round_id, sender=keeper)
    assert one(tx, book.OrderCancelled).reason == "book: price below acceptable"


def test_settle_orders_fills_the_eligible_and_skips_the_rest(chain, system, accounts, keeper):
    book, token = system.book, system.token
    traders = accounts[5:9]
    ids = []
    for who in traders:
        deposit(system, who, 1_000)
        ids.append(commit(system, who, ETH, wad(0.5), MAX_UINT)[0])
    round_id = publish_round(system, ETH)
    late, _ = commit(system, traders[0], ETH, wad(0.5), MAX_UINT)  # after the round
    book.settle_order(ids[3], round_id, sender=keeper)  # already settled by a rival
    before = token.balanceOf(keeper)

    tx = book.settle_orders([ids[0], late, ids[1], ids[3], ids[2]], [round_id] * 5, sender=keeper)
    settled = [log.order_id for log in tx.decode_logs(book.OrderSettled)]
    assert settled == [ids[0], ids[1], ids[2]]
    assert tx.decode_logs(book.OrderCancelled) == []
    assert book.order(late).commit_time != 0  # still pending, settles at the next round
    assert token.balanceOf(keeper) - before == 3 * fee_units(system)
    with ape.reverts("book: length mismatch"):
        book.settle_orders([late], [], sender=keeper)
    assert_conserved(system, traders)


def test_one_traders_orders_in_one_batch_each_refund_or_fill_on_top_of_the_last(
    system, trader, keeper
):
    """Three orders of one trader in one `settle_orders`: two cancelled by their bounds, one
    filled. Both refunds reach the collateral and the settler is paid for the fill only (the
    stateful machine once booked only the last refund of a batch; the contract was right)."""
    book, engine, token = system.book, system.engine, system.token
    deposit(system, trader, 1_000)
    cheap, _ = commit(system, trader, ETH, wad(0.2), 1_990 * WAD)  # a buy below the price
    filled, _ = commit(system, trader, ETH, wad(0.2), MAX_UINT)
    rich, _ = commit(system, trader, ETH, -wad(0.1), 2_010 * WAD)  # a sell above the price
    round_id = publish_round(system, ETH)
    collateral, paid = engine.collateral_of(trader), token.balanceOf(keeper)

    tx = book.settle_orders([cheap, filled, rich], [round_id] * 3, sender=keeper)
    assert [(log.order_id, log.reason) for log in tx.decode_logs(book.OrderCancelled)] == [
        (cheap, "book: price above acceptable"),
        (rich, "book: price below acceptable"),
    ]
    (settled,) = tx.decode_logs(book.OrderSettled)
    assert settled.order_id == filled
    assert token.balanceOf(keeper) - paid == fee_units(system)
    trade_fee = engine.collateral_of(trader) - collateral - 2 * fee_units(system)
    assert -trade_fee == wad(0.2) * 2_000 * 5 // 10_000 // 10 ** (18 - system.decimals)
    assert engine.position(trader, ETH)[0] == wad(0.2)
    assert list(book.pending_orders(trader)) == []
    assert_conserved(system, [trader])


# --- margin calls, reduce-only, liquidation ---------------------------------------------


def _called_trader(system, trader, keeper):
    """A trader long 4 ETH from 2,000 on 1,000 tokens, called at 1,855 (ratio ~1.12)."""
    from tests.utils.helpers import open_position

    deposit(system, trader, 1_000)
    open_position(system, trader, ETH, 4)
    system.set_price(ETH, 1_855)
    system.engine.margin_call(trader, sender=keeper)
    assert system.engine.check_margin(trader).state == State.CALLED


def test_called_trader_cures_by_committing_a_reduction(system, trader, keeper):
    book, engine = system.book, system.engine
    _called_trader(system, trader, keeper)
    with ape.reverts("engine: under margin call"):
        # an increase is committed (the fee fits) but refused at settlement
        from tests.utils.helpers import trade_unbounded

        trade_unbounded(system, trader, ETH, wad(1))
    order_id, _ = commit(system, trader, ETH, -wad(2), 0, reduce_only=True)
    round_id = publish_round(system, ETH)
    tx = book.settle_order(order_id, round_id, sender=keeper)

    assert one(tx, book.OrderSettled).size_delta == -wad(2)
    one(tx, engine.MarginCallCleared)
    status = engine.check_margin(trader)
    assert status.state == State.HEALTHY and status.ratio >= 125 * 10**16


def test_reduce_only_order_is_clamped_to_what_is_left(chain, system, trader, keeper):
    book, engine = system.book, system.engine
    from tests.utils.helpers import open_position

    deposit(system, trader, 1_000)
    open_position(system, trader, ETH, 1)
    start = chain.blocks.head.number + 1
    clamped, _ = commit(system, trader, ETH, -wad(3), 0, reduce_only=True)
    round_id = publish_round(system, ETH)
    tx = book.settle_order(clamped, round_id, sender=keeper)
    assert one(tx, book.OrderSettled).size_delta == -wad(1)
    assert engine.position(trader, ETH)[0] == 0

    order_id, _ = commit(system, trader, ETH, -wad(1), 0, reduce_only=True)
    round_id = publish_round(system, ETH)
    tx = book.settle_order(order_id, round_id, sender=keeper)
    log = one(tx, book.OrderCancelled)
    assert log.reason == "book: nothing to reduce" and log.refund == fee_units(system)

    # the book's history, as the demo's report and the e2e tests read it
    h = order_history(SettlementClient(book), start, chain.blocks.head.number)
    assert [o.order_id for o in h.commits] == [clamped, order_id]
    assert h.settled_by == {clamped: keeper.address.lower()}
    assert h.fees == {keeper.address.lower(): fee_units(system)}
    assert h.refused == 1 and h.reasons == {"book: nothing to reduce": 1}


def test_liquidation_since_the_commit_shrinks_a_reduce_only_order(system, trader, keeper):
    book, engine = system.book, system.engine
    from tests.utils.helpers import open_position, set_risk_params

    # a partial tranche below ratio 1 (the default critical_ratio 1 closes fully)
    set_risk_params(system, critical_ratio=wad(0.5))
    deposit(system, trader, 1_000)
    open_position(system, trader, ETH, 4)
    order_id, _ = commit(system, trader, ETH, -wad(4), 0, reduce_only=True)
    # ratio ~0.8: liquidatable, at the round after the commit
    round_id = publish_round(system, ETH, price=1_825)
    engine.liquidate(trader, sender=keeper)
    left = int(engine.position(trader, ETH)[0])
    assert 0 < left < wad(4)

    tx = book.settle_order(order_id, round_id, sender=keeper)
    assert one(tx, book.OrderSettled).size_delta == -left
    assert engine.position(trader, ETH)[0] == 0
