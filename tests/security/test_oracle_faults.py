"""Security tests: what every MarginEngine operation does when a market's oracle is faulty.

The fault matrix puts market 0 (ETH) on an adapter of this module (8-decimal feed, heartbeat
1 h, bounds [1,500, 2,500], a sequencer uptime feed with a 1 h grace period). The trader holds
1,000 tokens, 4 ETH (long, or short for the above-max fault) and 0.01 BTC (a healthy market),
is under a margin call, and the feed then moves to a price at which the account is
liquidatable (checked) before the fault is injected: so every "reverts with the oracle's
reason" / "is skipped" assertion fails if the engine accepted the faulty answer, and every
"works" assertion fails if the engine needed a price it does not need.

Collateral decimals 6 only (see the `decimals` override below), to keep the file fast.
"""

from __future__ import annotations

import ape
import pytest

from margincall.constants import WAD, State
from tests.utils.helpers import assert_conserved, commit, pin_next_tx
from tests.utils.helpers import deposit_units as deposit
from tests.utils.helpers import fund_units as fund
from tests.utils.helpers import trade_unbounded as trade

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
MAX_UINT = 2**256 - 1
ETH, BTC = 0, 1
HEARTBEAT = 3_600
GRACE = 3_600
MIN_PRICE, MAX_PRICE = 1_500 * WAD, 2_500 * WAD
E8 = 10**8

REASONS = {
    "stale": "oracle: stale price",
    "zero": "oracle: non-positive price",
    "negative": "oracle: non-positive price",
    "above_max": "oracle: price out of bounds",
    "below_min": "oracle: price out of bounds",
    "reverting": "oracle: feed reverted",
    "future": "oracle: future timestamp",
    "sequencer_down": "oracle: sequencer down",
    "sequencer_grace": "oracle: sequencer grace period",
}
# Why an order committed under the fault cannot settle at the first round of the primary feed
# after the commit (OracleAdapter.round_price; docs/design.md, Orders). The round's own faults
# carry the price's reason: a round published after the commit with a non-positive or
# out-of-bounds answer, the future-dated round itself, any round while the sequencer is down
# or in grace. A stale feed publishes no round after the commit (its latest is before it); a
# reverting feed has no readable round.
SETTLE_REASONS = {
    **REASONS,
    "stale": "oracle: round not after commit",
    "reverting": "oracle: no such round",
}


# --- helpers ---------------------------------------------------------------------------------


def _addr(who) -> str:
    return getattr(who, "address", who)


def one(tx, event):
    logs = tx.decode_logs(event)
    assert len(logs) == 1, f"expected one {event.name}, got {len(logs)}"
    return logs[0]


def point_market(system, market_id: int, adapter):
    """Moves a market to `adapter`, keeping its risk settings."""
    m = system.engine.markets(market_id)
    system.engine.set_market(
        market_id, adapter.address, m.imr, m.mmr, m.fee, m.window_cap, True, sender=system.owner
    )


def expected_equity(system, who, prices: dict[int, int]) -> int:
    """collateral + sum(floor(size * price) - open_notional), wad, at `prices`."""
    engine = system.engine
    equity = engine.collateral_of(_addr(who)) * 10 ** (18 - system.decimals)
    for m, price in prices.items():
        size, cost = engine.position(_addr(who), m)
        equity += size * price // WAD - cost
    return equity


def head(chain) -> int:
    return chain.blocks.head.timestamp


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[6], ids=["usdc6"])
def decimals(request):
    """Overrides conftest's 6/18 pair: the oracle paths do not depend on the collateral's
    decimals, and 6 (one token unit = 10**12 wei) is the case where roundings show."""
    return request.param


@pytest.fixture(scope="module")
def rig(project, owner, system, chain):
    """Feeds and adapters of this module, deployed once per system (no address reuse)."""
    r = type("Rig", (), {})()
    r.feed = owner.deploy(project.MockAggregator, 8, 2_000 * E8)
    r.seq = owner.deploy(project.MockAggregator, 0, 0)
    now = head(chain)
    r.seq.set_round(0, now - 10 * GRACE, now - 10 * GRACE, sender=owner)  # up for long
    r.faulty = owner.deploy(
        project.OracleAdapter,
        r.feed.address,
        HEARTBEAT,
        ZERO_ADDRESS,
        0,
        r.seq.address,
        GRACE,
        MIN_PRICE,
        MAX_PRICE,
    )
    # fallback rig: 8-decimal primary, 18-decimal backup
    r.primary = owner.deploy(project.MockAggregator, 8, 2_000 * E8)
    r.backup = owner.deploy(project.MockAggregator, 18, 1_990 * WAD)
    r.with_fallback = owner.deploy(
        project.OracleAdapter,
        r.primary.address,
        HEARTBEAT,
        r.backup.address,
        HEARTBEAT,
        ZERO_ADDRESS,
        0,
        MIN_PRICE,
        MAX_PRICE,
    )
    # decimals rig: the same USD price on an 8- and an 18-decimal feed
    r.feed8 = owner.deploy(project.MockAggregator, 8, 123_456_789_012)  # 1,234.56789012
    r.feed18 = owner.deploy(project.MockAggregator, 18, 1_234_567_890_120_000_000_000)
    r.adapter8, r.adapter18 = (
        owner.deploy(
            project.OracleAdapter,
            f.address,
            HEARTBEAT,
            ZERO_ADDRESS,
            0,
            ZERO_ADDRESS,
            0,
            1,
            10**12 * WAD,
        )
        for f in (r.feed8, r.feed18)
    )
    return r


# --- the fault matrix ------------------------------------------------------------------------


def inject(fault: str, rig, owner, chain) -> None:
    feed, seq = rig.feed, rig.seq
    now = head(chain)
    if fault == "stale":
        old = now - HEARTBEAT - 60
        feed.set_round(1_500 * E8, old, old, sender=owner)
    elif fault == "zero":
        feed.set_answer(0, sender=owner)
    elif fault == "negative":
        feed.set_answer(-1_500 * E8, sender=owner)
    elif fault == "above_max":
        feed.set_answer(2_501 * E8, sender=owner)
    elif fault == "below_min":
        feed.set_answer(1_499 * E8, sender=owner)
    elif fault == "reverting":
        feed.set_reverting(True, sender=owner)
    elif fault == "future":
        future = now + 100_000
        feed.set_round(1_500 * E8, future, future, sender=owner)
    elif fault == "sequencer_down":
        seq.set_answer(1, sender=owner)
    elif fault == "sequencer_grace":
        seq.set_round(0, now, now, sender=owner)  # back up just now
    else:  # pragma: no cover
        raise AssertionError(fault)


def publish_fault_round(fault: str, rig, owner, chain, last_round: int) -> int:
    """The round a settler names for orders committed under `fault`: the first one published
    after the commits, carrying the fault (strictly later: the next block gets a later second),
    or the feed's last round when the fault publishes none."""
    if chain.pending_timestamp <= head(chain):
        chain.pending_timestamp = head(chain) + 1
    if fault in ("zero", "negative", "above_max", "below_min"):
        rig.feed.set_answer(rig.feed.latestRoundData()[1], sender=owner)  # the same bad answer
    elif fault.startswith("sequencer"):
        rig.feed.set_answer(1_500 * E8, sender=owner)  # a good answer; the sequencer blocks it
    elif fault == "reverting":
        return last_round + 1  # the id the next round would get; unreadable while it reverts
    # "stale": none published (the latest is before the commits); "future": the fault's round
    # itself is dated after them
    return int(rig.feed.latestRoundData()[0])


def recover(fault: str, rig, owner, chain, answer: int) -> None:
    if fault == "reverting":
        rig.feed.set_reverting(False, sender=owner)
    if fault.startswith("sequencer"):
        now = head(chain)
        rig.seq.set_round(0, now - 10 * GRACE, now - 10 * GRACE, sender=owner)
    rig.feed.set_answer(answer, sender=owner)


@pytest.mark.parametrize("fault", list(REASONS))
def test_every_operation_under_oracle_fault(
    system, rig, accounts, owner, trader, other_trader, stranger, keeper, chain, fault
):
    engine, unit, reason = system.engine, system.unit, REASONS[fault]
    side = -1 if fault == "above_max" else 1  # the fault price must hurt the position
    rig.feed.set_answer(2_000 * E8, sender=owner)
    point_market(system, ETH, rig.faulty)
    # the default settlement fee, 0.1 token (conftest's system has none): the escrow shows
    book = system.book
    book.set_config(100_000, book.max_window(), sender=system.owner)

    deposit(system, trader, 1_000 * unit)
    trade(system, trader, ETH, side * 4 * WAD)
    trade(system, trader, BTC, WAD // 100)
    deposit(system, other_trader, 1_000 * unit)  # BTC only
    trade(system, other_trader, BTC, WAD // 100)

    # CALLABLE (ratio ~1.13 / ~1.14), then called
    rig.feed.set_answer((1_865 if side > 0 else 2_120) * E8, sender=owner)
    assert engine.check_margin(trader.address).state == State.CALLABLE
    engine.margin_call(trader.address, sender=keeper)
    # at the last valid price (bound) the account is liquidatable: a fault answer near it
    # that were accepted would let liquidations through
    rig.feed.set_answer((1_500 if side > 0 else 2_500) * E8, sender=owner)
    assert system.lens.preview_liquidation(trader.address).liquidatable
    info = engine.account_info(trader.address)
    eth_pos = engine.position(trader.address, ETH)
    assert info[2] != 0  # call deadline

    last_round = int(rig.feed.latestRoundData()[0])
    inject(fault, rig, owner, chain)
    assert rig.faulty.reason() == reason
    assert rig.faulty.try_price() == (0, False)

    # deposit works and credits (the live call cannot be evaluated: it stays)
    fund(system, trader, 50 * unit)
    tx = engine.deposit(50 * unit, sender=trader)
    assert one(tx, engine.Deposit).collateral == info[0] + 50 * unit
    assert engine.collateral_of(trader.address) == info[0] + 50 * unit
    assert engine.account_info(trader.address)[2] == info[2]

    # withdraw with positions needs the price
    with ape.reverts(reason):
        engine.withdraw(1, sender=trader)

    # trading in the faulty market: an order (increase or reduction) commits (no price needed:
    # the settlement fee is escrowed from collateral, docs/design.md "Fee and escrow") but
    # cannot settle: the first round after the commit is not a valid one
    fee = system.unit // 10  # 100_000 millionths of a token
    assert book.settlement_fee() == fee
    collateral = engine.collateral_of(trader.address)
    orders = []
    for delta in (side * WAD // 10, -side * WAD):
        order_id, tx = commit(system, trader, ETH, delta, MAX_UINT if delta > 0 else 0)
        assert one(tx, system.book.OrderCommitted).fee == fee
        orders.append(order_id)
    assert engine.collateral_of(trader.address) == collateral - 2 * fee
    settle_round = publish_fault_round(fault, rig, owner, chain, last_round)
    for order_id in orders:
        with ape.reverts(SETTLE_REASONS[fault]):
            system.book.settle_order(order_id, settle_round, sender=keeper)
    # a batch skips them (no fill, no cancel: the orders wait, their fees stay escrowed)
    rounds = [settle_round] * len(orders)
    assert system.book.settle_orders.call(orders, rounds, sender=keeper) == 0
    tx = system.book.settle_orders(orders, rounds, sender=keeper)
    assert not tx.decode_logs(system.book.OrderSettled)
    assert not tx.decode_logs(system.book.OrderCancelled)
    assert list(system.book.pending_orders(trader.address)) == orders
    assert system.book.escrowed_of(trader.address) == 2 * fee
    assert engine.position(trader.address, ETH) == eth_pos
    # new exposure in the healthy market needs every price of the account
    with ape.reverts(reason):
        trade(system, trader, BTC, WAD // 1_000)
    # a reduction in the healthy market works (best effort on the call, no revert)
    tx = trade(system, trader, BTC, -WAD // 200)
    assert one(tx, engine.PositionChanged).size == WAD // 200
    assert engine.position(trader.address, BTC)[0] == WAD // 200

    # keepers: single calls revert with the reason, batches skip the account
    with ape.reverts(reason):
        engine.margin_call(trader.address, sender=keeper)
    if not fault.startswith("sequencer"):
        # no stale-leg shield: the unpriced ETH leg is valued at its worst case (here the
        # bound: the account is BANKRUPT), the priced BTC leg is closed in full and ETH stays
        # open; the collateral covers the BTC close, so nothing is carried (no bad debt while
        # a leg is unpriced: tests/security/test_stale_leg_shield.py)
        oi_before = engine.open_interest()
        btc_cost = engine.position(trader.address, BTC)[1]
        tx = engine.liquidate(trader.address, sender=keeper)
        liq = one(tx, engine.Liquidation)
        assert liq.full_close and liq.state == State.BANKRUPT and liq.collateral > 0
        assert not tx.decode_logs(engine.BadDebt)
        assert engine.position(trader.address, BTC) == (0, 0)
        assert engine.position(trader.address, ETH) == eth_pos
        assert engine.open_interest() == oi_before - abs(btc_cost)
    # (an account whose every leg is unpriced, or while the sequencer blocks prices)
    with ape.reverts(reason):
        engine.liquidate(trader.address, sender=keeper)
    # (the full close of the priced leg ended the call)
    with ape.reverts(reason if fault.startswith("seq") else "engine: no margin call"):
        engine.clear_margin_call(trader.address, sender=keeper)
    # ... while the other accounts of the batch are still processed: a victim in the healthy
    # market is called, then liquidated, behind the unpriceable account
    victim = accounts.generate_test_account()
    victim.balance = 10**21
    deposit(system, victim, 400 * unit)
    trade(system, victim, BTC, 5 * WAD // 100)
    system.set_price(BTC, 55_000)  # victim CALLABLE (ratio ~1.08)
    batch = [trader.address, victim.address, other_trader.address]
    assert engine.margin_call_many.call(batch, sender=keeper) == 1
    tx = engine.margin_call_many(batch, sender=keeper)
    assert one(tx, engine.MarginCall).account == victim.address
    system.set_price(BTC, 53_000)  # victim LIQUIDATABLE
    assert engine.liquidate_many.call(batch, sender=keeper) == 1
    tx = engine.liquidate_many(batch, sender=keeper)
    assert one(tx, engine.Liquidation).account == victim.address
    assert engine.position(trader.address, ETH) == eth_pos
    assert engine.position(victim.address, BTC) == (0, 0)

    # views
    with ape.reverts(reason):
        engine.check_margin(trader.address, skip_trace=True)
    with ape.reverts(reason):
        system.lens.preview_liquidation(trader.address, skip_trace=True)
    faulty_status, _, healthy_status = system.lens.check_margins(batch)
    assert not faulty_status.priced
    assert faulty_status.state == State.HEALTHY
    assert healthy_status.priced
    assert healthy_status.equity == expected_equity(system, other_trader, {BTC: 53_000 * WAD})

    # accounts that do not need the faulty price are unaffected
    tx = engine.withdraw(unit, sender=other_trader)
    assert one(tx, engine.Withdraw).amount == unit
    deposit(system, stranger, 10 * unit)
    engine.withdraw(10 * unit, sender=stranger)
    assert engine.collateral_of(stranger.address) == 0

    # a full close (the priced leg) ends the call
    assert engine.account_info(trader.address)[2] == (info[2] if fault.startswith("seq") else 0)

    # the fault cleared, the same account is liquidated at the recovered price
    recover(fault, rig, owner, chain, (1_500 if side > 0 else 2_500) * E8)
    assert rig.faulty.reason() == ""
    # the recovery round is the orders' settlement round only if no round was published after
    # their commit (stale, reverting): a round published under the fault was their one round
    # (docs/design.md: a settlement at round r is unique), so they wait for their expiry
    recovery_round = int(rig.feed.latestRoundData()[0])
    for order_id in orders:
        o = system.book.order(order_id)
        expected = (
            (1_500 if side > 0 else 2_500) * WAD if fault in ("stale", "reverting") else 0,
            0 if fault in ("stale", "reverting") else 12,  # 12: round not first after commit
        )
        assert rig.faulty.try_round_price(recovery_round, o.commit_time, o.expiry) == expected
    assert rig.faulty.reason_of(12) == "oracle: round not first after commit"
    tx = engine.liquidate(trader.address, sender=keeper)
    assert one(tx, engine.Liquidation).account == trader.address
    assert engine.position(trader.address, ETH)[0] == 0

    # the engine holds the collateral, the pending orders' escrowed fees and what accrued in
    # it (the keeper's rewards, the fund's share, the pool's credit: docs/design.md "Money flows")
    assert system.book.escrowed_of(trader.address) == 2 * fee
    assert_conserved(system, [trader, other_trader, stranger, victim, keeper])


# --- decimals, jumps, fallback ---------------------------------------------------------------


def test_8_and_18_decimal_feeds_value_positions_identically(system, rig, owner, trader):
    engine = system.engine
    price = 1_234_567_890_120_000_000_000  # 1,234.56789012 in wad
    assert rig.adapter8.price() == rig.adapter18.price() == price

    point_market(system, ETH, rig.adapter8)
    deposit(system, trader, 1_000 * system.unit)
    tx = trade(system, trader, ETH, 3 * WAD + 7)  # odd size: roundings show
    assert one(tx, engine.PositionChanged).price == price
    s8 = engine.check_margin(trader.address)
    point_market(system, ETH, rig.adapter18)
    s18 = engine.check_margin(trader.address)
    assert s8 == s18
    assert s8.equity == expected_equity(system, trader, {ETH: price})
    before = s8.equity

    # a new common price, at the 8-decimal feed's last digit
    rig.feed8.set_answer(111_111_111_111, sender=owner)
    rig.feed18.set_answer(1_111_111_111_110_000_000_000, sender=owner)
    s18 = engine.check_margin(trader.address)
    point_market(system, ETH, rig.adapter8)
    s8 = engine.check_margin(trader.address)
    assert s8 == s18
    assert s8.equity == expected_equity(system, trader, {ETH: 1_111_111_111_110_000_000_000})
    assert s8.equity < before


@pytest.mark.parametrize("factor", [10.0, 0.1], ids=["x10", "div10"])
def test_huge_jump_is_applied_and_liquidated_at_new_price(system, trader, keeper, chain, factor):
    """The system's own ETH adapter (bounds 1 .. 10**12): no smoothing of a 10x move."""
    engine = system.engine
    side = -1 if factor > 1 else 1
    deposit(system, trader, 1_000 * system.unit)
    trade(system, trader, ETH, side * 4 * WAD)
    new = int(round(2_000 * factor)) * WAD

    system.set_price(ETH, 2_000 * factor)
    assert system.oracles[ETH].price() == new
    status = engine.check_margin(trader.address)
    assert status.equity == expected_equity(system, trader, {ETH: new})
    assert status.state == State.BANKRUPT

    pin_next_tx(chain)
    tx = engine.liquidate(trader.address, sender=keeper)
    changed = one(tx, engine.PositionChanged)
    assert changed.price == new
    assert changed.size == 0
    assert one(tx, engine.Liquidation).full_close
    assert engine.position(trader.address, ETH) == (0, 0)


def make_primary_invalid(failure: str, rig, owner, chain) -> None:
    if failure == "stale":
        old = head(chain) - HEARTBEAT - 60
        rig.primary.set_round(2_000 * E8, old, old, sender=owner)
    elif failure == "reverting":
        rig.primary.set_reverting(True, sender=owner)
    elif failure == "out_of_bounds":
        rig.primary.set_answer(3_000 * E8, sender=owner)
    else:  # pragma: no cover
        raise AssertionError(failure)


@pytest.mark.parametrize("failure", ["stale", "reverting", "out_of_bounds"])
def test_fallback_price_is_used_then_primary_again(
    system, rig, owner, trader, keeper, chain, failure
):
    engine, adapter = system.engine, rig.with_fallback
    rig.primary.set_answer(2_000 * E8, sender=owner)
    rig.backup.set_answer(1_990 * WAD, sender=owner)
    point_market(system, ETH, adapter)
    deposit(system, trader, 1_000 * system.unit)
    trade(system, trader, ETH, 2 * WAD)
    primary_reason = {
        "stale": "oracle: stale price",
        "reverting": "oracle: feed reverted",
        "out_of_bounds": "oracle: price out of bounds",
    }[failure]

    make_primary_invalid(failure, rig, owner, chain)
    assert adapter.status() == (1_990 * WAD, True, True)
    status = engine.check_margin(trader.address)
    assert status.priced
    assert status.equity == expected_equity(system, trader, {ETH: 1_990 * WAD})
    assert system.lens.check_margins([trader.address])[0].equity == status.equity
    # orders settle on the primary's rounds only (docs/design.md, Orders): no fill at the
    # fallback price; the order waits for a valid primary round
    order_id, _ = commit(system, trader, ETH, WAD // 10, MAX_UINT)
    with ape.reverts():
        system.book.settle_order(order_id, rig.primary.latestRoundData()[0], sender=keeper)
    assert engine.position(trader.address, ETH)[0] == 2 * WAD

    # both invalid: the primary's reason
    rig.backup.set_answer(0, sender=owner)
    with ape.reverts(primary_reason):
        engine.check_margin(trader.address, skip_trace=True)
    rig.backup.set_answer(1_990 * WAD, sender=owner)

    # the primary recovers: its price again
    rig.primary.set_reverting(False, sender=owner)
    rig.primary.set_answer(2_010 * E8, sender=owner)
    assert adapter.status() == (2_010 * WAD, True, False)
    status = engine.check_margin(trader.address)
    assert status.equity == expected_equity(system, trader, {ETH: 2_010 * WAD})
    tx = trade(system, trader, ETH, -WAD // 10)
    assert one(tx, engine.PositionChanged).price == 2_010 * WAD
