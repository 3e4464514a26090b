"""Unit tests of the MarginEngine's trader functions: deposit, withdraw, trade, close.

Collateral decimals are parametrised (6 and 18) through the shared `system` fixture;
amounts are written in token units (`system.unit` per whole token) and values in wad.
Markets: 0 ETH-USD at 2,000 (imr 10%, mmr 5%), 1 BTC-USD at 60,000, 2 SOL-USD at 150
(imr 20%, mmr 10%); fee 5 bps of traded notional; dust below 10 tokens of notional.
"""

from __future__ import annotations

import ape
import pytest

from margincall.constants import WAD, State
from margincall.math import div_ceil, mul_up
from tests.utils.helpers import assert_conserved, close_position, held, settle_or_raise
from tests.utils.helpers import deposit_units as deposit
from tests.utils.helpers import fund_units as fund
from tests.utils.helpers import trade as trade_order
from tests.utils.helpers import trade_unbounded as trade

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
MAX_UINT = 2**256 - 1
FEE = 5 * WAD // 10_000
ETH, BTC, SOL = 0, 1, 2


# --- helpers ------------------------------------------------------------------------------


def fee_units(system, traded_notional: int) -> int:
    """The engine's trading fee in token units: both roundings up."""
    return div_ceil(mul_up(traded_notional, FEE), 10 ** (18 - system.decimals))


def one(tx, event):
    logs = tx.decode_logs(event)
    assert len(logs) == 1, f"expected one {event.name}, got {len(logs)}"
    return logs[0]


def assert_fields(log, **expected):
    for name, value in expected.items():
        assert getattr(log, name) == value, f"{name}: {getattr(log, name)} != {value}"


def open_interest_of(system, accounts) -> int:
    total = 0
    for a in accounts:
        for m in range(system.engine.market_count()):
            total += abs(system.engine.position(a.address, m)[1])
    return total


# --- deposit -------------------------------------------------------------------------------


def test_deposit_credits_caller_and_emits_event(system, trader):
    engine, unit = system.engine, system.unit
    fund(system, trader, 1_500 * unit)

    tx = engine.deposit(1_000 * unit, sender=trader)
    assert_fields(
        one(tx, engine.Deposit),
        account=trader.address,
        sender=trader.address,
        amount=1_000 * unit,
        collateral=1_000 * unit,
    )
    tx = engine.deposit(500 * unit, trader.address, sender=trader)
    assert_fields(one(tx, engine.Deposit), amount=500 * unit, collateral=1_500 * unit)
    assert engine.collateral_of(trader.address) == 1_500 * unit
    assert system.token.balanceOf(engine.address) == 1_500 * unit
    assert system.token.balanceOf(trader.address) == 0


def test_deposit_by_third_party_credits_the_named_account(system, trader, stranger):
    engine, unit = system.engine, system.unit
    fund(system, stranger, 300 * unit)

    tx = engine.deposit(300 * unit, trader.address, sender=stranger)
    assert_fields(
        one(tx, engine.Deposit),
        account=trader.address,
        sender=stranger.address,
        amount=300 * unit,
        collateral=300 * unit,
    )
    assert engine.collateral_of(trader.address) == 300 * unit
    assert engine.collateral_of(stranger.address) == 0
    assert system.token.balanceOf(stranger.address) == 0


def test_deposit_zero_amount_reverts(system, trader):
    fund(system, trader, system.unit)
    with ape.reverts("engine: zero amount"):
        system.engine.deposit(0, sender=trader)


def test_deposit_to_zero_account_reverts(system, trader):
    fund(system, trader, system.unit)
    with ape.reverts("engine: zero account"):
        system.engine.deposit(system.unit, ZERO_ADDRESS, sender=trader)


def test_deposit_works_while_feed_reverts_even_under_margin_call(system, owner, trader, keeper):
    engine, unit = system.engine, system.unit
    deposit(system, trader, 1_000 * unit)
    trade(system, trader, ETH, 4 * WAD)  # 8,000 notional, fee 4
    system.set_price(ETH, 1_850)  # equity 396, maintenance 370: CALLABLE
    engine.margin_call(trader.address, sender=keeper)
    deadline = engine.account_info(trader.address)[2]
    assert deadline != 0
    system.feeds[ETH].set_reverting(True, sender=owner)
    with ape.reverts("oracle: feed reverted"):
        engine.check_margin(trader.address, skip_trace=True)

    before = engine.collateral_of(trader.address)
    fund(system, trader, 2_000 * unit)
    tx = engine.deposit(2_000 * unit, sender=trader)
    assert_fields(one(tx, engine.Deposit), amount=2_000 * unit, collateral=before + 2_000 * unit)
    # the call cannot be evaluated without a price: it stays recorded
    assert tx.decode_logs(engine.MarginCallCleared) == []
    assert engine.account_info(trader.address)[2] == deadline
    assert_conserved(system, [trader, keeper])


# --- token edge cases ------------------------------------------------------------------------


@pytest.fixture
def deployer(accounts):
    """A brand-new account: its deployments never reuse an address that Ape has cached from
    a reverted test (Ape then mis-decodes later traces at that address)."""
    account = accounts.generate_test_account()
    account.balance = 10**21
    return account


def _deploy_engine_on(project, deployer, guardian, token):
    """An engine with its own pool and fund on `token`, mirroring `deploy_system`."""
    pool = deployer.deploy(project.LiquidityPool, token.address, "margincall LP", "mcLP")
    fund_ = deployer.deploy(project.InsuranceFund, token.address, pool.address)
    engine = deployer.deploy(
        project.MarginEngine,
        token.address,
        pool.address,
        fund_.address,
        guardian.address,
        deployer.deploy(project.MarginParams).address,
        deployer.address,  # no order book: these engines never trade
    )
    pool.set_engine(engine.address, sender=deployer)
    fund_.set_engine(engine.address, sender=deployer)
    return engine


def test_fee_on_transfer_token_is_refused(project, deployer, guardian, trader):
    token = deployer.deploy(project.MockFeeToken, "Fee USD", "fUSD", 18)
    engine = _deploy_engine_on(project, deployer, guardian, token)
    token.mint(trader.address, 100 * WAD, sender=trader)
    token.approve(engine.address, MAX_UINT, sender=trader)

    with ape.reverts("engine: token transfer short"):
        engine.deposit(100 * WAD, sender=trader)
    assert engine.collateral_of(trader.address) == 0


def test_token_returning_false_is_refused(project, deployer, guardian, trader):
    token = deployer.deploy(project.MockFalseToken, "False USD", "xUSD", 18)
    engine = _deploy_engine_on(project, deployer, guardian, token)
    token.mint(trader.address, 100 * WAD, sender=trader)
    token.approve(engine.address, MAX_UINT, sender=trader)

    with ape.reverts("engine: transfer failed"):
        engine.deposit(100 * WAD + 1, sender=trader)  # more than the balance
    engine.deposit(100 * WAD, sender=trader)
    assert engine.collateral_of(trader.address) == 100 * WAD


# --- withdraw -------------------------------------------------------------------------------


def test_withdraw_pays_out_and_emits_event(system, trader):
    engine, unit = system.engine, system.unit
    deposit(system, trader, 1_000 * unit)

    tx = engine.withdraw(400 * unit, sender=trader)
    assert_fields(
        one(tx, engine.Withdraw), account=trader.address, amount=400 * unit, collateral=600 * unit
    )
    assert engine.collateral_of(trader.address) == 600 * unit
    assert system.token.balanceOf(trader.address) == 400 * unit
    assert_conserved(system, [trader])


def test_withdraw_zero_amount_reverts(system, trader):
    deposit(system, trader, system.unit)
    with ape.reverts("engine: zero amount"):
        system.engine.withdraw(0, sender=trader)


def test_withdraw_above_collateral_reverts(system, trader):
    deposit(system, trader, 10 * system.unit)
    with ape.reverts("engine: amount exceeds collateral"):
        system.engine.withdraw(10 * system.unit + 1, sender=trader)


def test_withdraw_only_down_to_initial_margin(system, trader):
    engine, unit = system.engine, system.unit
    deposit(system, trader, 1_000 * unit)
    trade(system, trader, ETH, 4 * WAD)  # 8,000 notional: initial 800, fee 4
    assert engine.collateral_of(trader.address) == 996 * unit

    with ape.reverts("engine: insufficient margin"):
        engine.withdraw(196 * unit + 1, sender=trader)
    tx = engine.withdraw(196 * unit, sender=trader)
    assert_fields(one(tx, engine.Withdraw), amount=196 * unit, collateral=800 * unit)
    status = engine.check_margin(trader.address)
    assert status.equity == status.initial == 800 * WAD


def test_withdraw_without_positions_needs_no_oracle(system, owner, trader):
    for feed in system.feeds:
        feed.set_reverting(True, sender=owner)
    deposit(system, trader, 50 * system.unit)

    tx = system.engine.withdraw(50 * system.unit, sender=trader)
    assert_fields(one(tx, system.engine.Withdraw), amount=50 * system.unit, collateral=0)


def test_withdraw_with_position_and_reverting_feed_bubbles_oracle_reason(system, owner, trader):
    deposit(system, trader, 1_000 * system.unit)
    trade(system, trader, ETH, WAD)
    system.feeds[ETH].set_reverting(True, sender=owner)

    with ape.reverts("oracle: feed reverted"):
        system.engine.withdraw(system.unit, sender=trader)


# --- trade: open, increase, reduce, flip, close --------------------------------------------------


@pytest.mark.parametrize("side", [1, -1], ids=["long", "short"])
def test_open_position_records_size_cost_fee_and_event(system, trader, side):
    engine, unit = system.engine, system.unit
    deposit(system, trader, 1_000 * unit)
    pool_before = held(system, system.pool)

    tx = trade(system, trader, ETH, side * WAD)
    fee = unit  # 5 bps of 2,000
    assert_fields(
        one(tx, engine.PositionChanged),
        account=trader.address,
        market_id=ETH,
        size=side * WAD,
        open_notional=side * 2_000 * WAD,
        price=2_000 * WAD,
        size_delta=side * WAD,
        realized_pnl=0,
        fee=fee,
        collateral=999 * unit,
    )
    assert engine.position(trader.address, ETH) == (side * WAD, side * 2_000 * WAD)
    assert engine.account_info(trader.address)[1] == 1 << ETH
    assert engine.collateral_of(trader.address) == 999 * unit
    assert held(system, system.pool) - pool_before == fee
    assert engine.open_interest() == 2_000 * WAD
    assert_conserved(system, [trader])


def test_trading_fee_goes_to_the_pool_rounded_up(system, trader):
    engine, unit = system.engine, system.unit
    deposit(system, trader, 1_000 * unit)
    pool_before = held(system, system.pool)

    size = WAD + 10**11  # 1.0000001 ETH: 2,000.0002 notional, fee 1.0000001 tokens
    tx = trade(system, trader, ETH, size)
    fee_wad = mul_up(mul_up(size, 2_000 * WAD), FEE)
    scale = 10 ** (18 - system.decimals)
    fee = one(tx, engine.PositionChanged).fee
    assert fee == fee_units(system, mul_up(size, 2_000 * WAD))
    assert 0 <= fee * scale - fee_wad < scale  # rounded up, by less than one unit
    assert held(system, system.pool) - pool_before == fee
    assert engine.collateral_of(trader.address) == 1_000 * unit - fee


@pytest.mark.parametrize("side", [1, -1], ids=["long", "short"])
def test_increase_averages_entry_through_open_notional(system, trader, side):
    engine, unit = system.engine, system.unit
    deposit(system, trader, 1_000 * unit)
    trade(system, trader, ETH, side * WAD)  # at 2,000
    system.set_price(ETH, 2_100)

    tx = trade(system, trader, ETH, side * WAD)  # at 2,100: average 2,050
    fee = unit * 105 // 100
    assert_fields(
        one(tx, engine.PositionChanged),
        size=side * 2 * WAD,
        open_notional=side * 4_100 * WAD,
        price=2_100 * WAD,
        size_delta=side * WAD,
        realized_pnl=0,
        fee=fee,
        collateral=999 * unit - fee,
    )
    size, cost = engine.position(trader.address, ETH)
    assert cost * WAD // size == 2_050 * WAD  # average entry
    assert engine.open_interest() == 4_100 * WAD


@pytest.mark.parametrize("side", [1, -1], ids=["long", "short"])
def test_reduce_realises_pnl_into_collateral(system, trader, other_trader, side):
    engine, unit = system.engine, system.unit
    deposit(system, trader, 1_000 * unit)
    trade(system, trader, ETH, side * 2 * WAD)  # at 2,000, fee 2
    system.set_price(ETH, 2_100)  # long +100 per unit, short -100
    pool_before = held(system, system.pool)

    tx = trade(system, trader, ETH, -side * WAD)
    pnl = side * 100 * unit
    fee = unit * 105 // 100
    collateral = 998 * unit + pnl - fee
    assert_fields(
        one(tx, engine.PositionChanged),
        account=trader.address,
        market_id=ETH,
        size=side * WAD,
        open_notional=side * 2_000 * WAD,  # the remaining half keeps its entry price
        price=2_100 * WAD,
        size_delta=-side * WAD,
        realized_pnl=pnl,
        fee=fee,
        collateral=collateral,
    )
    assert engine.collateral_of(trader.address) == collateral
    assert held(system, system.pool) - pool_before == fee - pnl
    assert engine.open_interest() == 2_000 * WAD
    assert_conserved(system, [trader, other_trader])


def test_flip_realises_old_side_and_opens_new_at_price(system, trader):
    engine, unit = system.engine, system.unit
    deposit(system, trader, 1_000 * unit)
    trade(system, trader, ETH, WAD)  # long 1 at 2,000, fee 1
    system.set_price(ETH, 2_100)

    tx = trade(system, trader, ETH, -3 * WAD)  # to short 2 at 2,100
    fee = fee_units(system, 6_300 * WAD)
    assert fee == unit * 315 // 100
    assert_fields(
        one(tx, engine.PositionChanged),
        size=-2 * WAD,
        open_notional=-4_200 * WAD,
        price=2_100 * WAD,
        size_delta=-3 * WAD,
        realized_pnl=100 * unit,
        fee=fee,
        collateral=999 * unit + 100 * unit - fee,
    )
    assert engine.position(trader.address, ETH) == (-2 * WAD, -4_200 * WAD)
    assert engine.open_interest() == 4_200 * WAD
    assert_conserved(system, [trader])


def test_close_position_clears_position_and_returns_net_pnl(system, trader):
    engine, unit = system.engine, system.unit
    deposit(system, trader, 1_000 * unit)
    trade(system, trader, ETH, WAD)
    system.set_price(ETH, 1_900)

    before = engine.collateral_of(trader.address)
    tx = close_position(system, trader, ETH, 1_900 * WAD)
    fee = unit * 95 // 100
    log = one(tx, engine.PositionChanged)
    assert_fields(
        log,
        size=0,
        open_notional=0,
        price=1_900 * WAD,
        size_delta=-WAD,
        realized_pnl=-100 * unit,
        fee=fee,
        collateral=999 * unit - 100 * unit - fee,
    )
    # the change of collateral: realised PnL net of the fee
    assert engine.collateral_of(trader.address) - before == -100 * unit - fee
    assert engine.position(trader.address, ETH) == (0, 0)
    assert engine.account_info(trader.address)[1] == 0
    assert engine.open_interest() == 0
    assert_conserved(system, [trader])


def test_reduce_only_close_without_position_is_cancelled(system, trader):
    deposit(system, trader, 1_000 * system.unit)
    with ape.reverts("book: nothing to reduce"):
        settle_or_raise(system, trade_order(system, trader, ETH, -WAD, 0, reduce_only=True))


# --- trade: input checks ---------------------------------------------------------------------


def test_buy_above_acceptable_price_reverts(system, trader):
    deposit(system, trader, 1_000 * system.unit)
    with ape.reverts("book: price above acceptable"):
        settle_or_raise(system, trade_order(system, trader, ETH, WAD, 2_000 * WAD - 1))
    # the bound itself is fine
    settle_or_raise(system, trade_order(system, trader, ETH, WAD, 2_000 * WAD))


def test_sell_below_acceptable_price_reverts(system, trader):
    deposit(system, trader, 1_000 * system.unit)
    with ape.reverts("book: price below acceptable"):
        settle_or_raise(system, trade_order(system, trader, ETH, -WAD, 2_000 * WAD + 1))
    settle_or_raise(system, trade_order(system, trader, ETH, -WAD, 2_000 * WAD))


def test_close_position_checks_slippage_on_the_closing_side(system, trader):
    deposit(system, trader, 1_000 * system.unit)
    trade(system, trader, ETH, WAD)  # closing a long sells
    with ape.reverts("book: price below acceptable"):
        close_position(system, trader, ETH, 2_000 * WAD + 1)
    trade(system, trader, BTC, -(10**16))  # closing a short buys
    with ape.reverts("book: price above acceptable"):
        close_position(system, trader, BTC, 60_000 * WAD - 1)


def test_zero_size_reverts(system, trader):
    deposit(system, trader, 1_000 * system.unit)
    with ape.reverts("book: zero size"):
        trade_order(system, trader, ETH, 0, MAX_UINT)


def test_unknown_market_reverts(system, trader):
    deposit(system, trader, 1_000 * system.unit)
    with ape.reverts("book: unknown market"):
        trade_order(system, trader, 3, WAD, MAX_UINT)


def test_open_needs_initial_margin_after_fee(system, trader, other_trader):
    unit = system.unit
    # 0.5 ETH = 1,000 notional: initial 100, fee 0.5
    deposit(system, trader, 100 * unit + unit // 2 - 1)
    with ape.reverts("engine: insufficient margin"):
        trade(system, trader, ETH, WAD // 2)
    deposit(system, other_trader, 100 * unit + unit // 2)
    trade(system, other_trader, ETH, WAD // 2)
    status = system.engine.check_margin(other_trader.address)
    assert status.equity == status.initial == 100 * WAD


def test_position_below_minimum_notional_reverts(system, trader):
    deposit(system, trader, 1_000 * system.unit)
    with ape.reverts("engine: position below minimum"):
        trade(system, trader, ETH, 5 * 10**15 - 1)  # 9.999... notional
    trade(system, trader, ETH, 5 * 10**15)  # exactly 10
    trade(system, trader, ETH, WAD - 5 * 10**15)  # to 1 ETH
    with ape.reverts("engine: position below minimum"):
        trade(system, trader, ETH, -(WAD - 4 * 10**15))  # a reduction may not leave dust
    trade(system, trader, ETH, -WAD)  # closing fully is fine


def test_max_positions_per_account(system, owner, trader):
    engine = system.engine
    eth = engine.markets(ETH)
    for market_id in (3, 4, 5):  # more ETH-priced markets
        engine.set_market(
            market_id, eth.oracle, eth.imr, eth.mmr, eth.fee, eth.window_cap, True, sender=owner
        )
    deposit(system, trader, 10_000 * system.unit)
    for market_id, size in ((0, WAD), (1, WAD // 10), (2, 10 * WAD), (3, WAD), (4, WAD)):
        trade(system, trader, market_id, size)
    assert engine.account_info(trader.address)[1] == 0b11111

    with ape.reverts("engine: too many positions"):
        trade(system, trader, 5, WAD)
    trade(system, trader, 4, WAD)  # increasing an existing position is fine
    close_position(system, trader, 4)
    trade(system, trader, 5, WAD)  # a slot freed by a close can be reused
    assert engine.account_info(trader.address)[1] == 0b101111


# --- pause and inactive markets --------------------------------------------------------------


def test_pause_blocks_new_exposure(system, guardian, trader):
    deposit(system, trader, 1_000 * system.unit)
    trade(system, trader, ETH, WAD)
    system.engine.set_paused(True, sender=guardian)

    with ape.reverts("engine: paused"):
        trade(system, trader, BTC, WAD // 100)  # open
    with ape.reverts("engine: paused"):
        trade(system, trader, ETH, WAD)  # increase
    with ape.reverts("engine: paused"):
        trade(system, trader, ETH, -2 * WAD)  # flip
    system.engine.set_paused(False, sender=guardian)
    trade(system, trader, BTC, WAD // 100)


def test_pause_allows_reductions_deposits_and_withdrawals(system, guardian, trader):
    engine, unit = system.engine, system.unit
    deposit(system, trader, 1_000 * unit)
    trade(system, trader, ETH, 2 * WAD)
    engine.set_paused(True, sender=guardian)

    tx = deposit(system, trader, 100 * unit)
    assert one(tx, engine.Deposit).amount == 100 * unit
    tx = engine.withdraw(50 * unit, sender=trader)
    assert one(tx, engine.Withdraw).amount == 50 * unit
    tx = trade(system, trader, ETH, -WAD)
    assert one(tx, engine.PositionChanged).size == WAD
    tx = close_position(system, trader, ETH)
    assert one(tx, engine.PositionChanged).size == 0
    assert_conserved(system, [trader])


def test_inactive_market_blocks_new_exposure_but_not_reductions(system, owner, trader):
    engine = system.engine
    deposit(system, trader, 1_000 * system.unit)
    trade(system, trader, ETH, 2 * WAD)
    m = engine.markets(ETH)
    engine.set_market(ETH, m.oracle, m.imr, m.mmr, m.fee, m.window_cap, False, sender=owner)

    with ape.reverts("engine: market not active"):
        trade(system, trader, ETH, WAD)
    with ape.reverts("engine: market not active"):
        trade(system, trader, ETH, -3 * WAD)  # a flip is new exposure
    tx = trade(system, trader, ETH, -WAD)
    assert one(tx, engine.PositionChanged).size == WAD
    close_position(system, trader, ETH)
    assert engine.position(trader.address, ETH) == (0, 0)
    trade(system, trader, BTC, WAD // 100)  # other markets still trade


# --- margin calls and bad prices --------------------------------------------------------------


def _called_with_two_markets(system, trader, keeper):
    """Long 4 ETH and 5 SOL, ETH down to 1,880 (ratio about 1.14) and a recorded call."""
    deposit(system, trader, 1_000 * system.unit)
    trade(system, trader, ETH, 4 * WAD)
    trade(system, trader, SOL, 5 * WAD)
    system.set_price(ETH, 1_880)
    system.engine.margin_call(trader.address, sender=keeper)
    assert system.engine.account_info(trader.address)[2] != 0


def test_margin_call_blocks_new_exposure_but_not_reductions(system, trader, keeper):
    engine, unit = system.engine, system.unit
    _called_with_two_markets(system, trader, keeper)

    with ape.reverts("engine: under margin call"):
        trade(system, trader, ETH, WAD // 10)
    with ape.reverts("engine: under margin call"):
        trade(system, trader, BTC, WAD // 100)
    tx = trade(system, trader, ETH, -(WAD // 20))  # ratio 1.14 -> 1.15: the call stays
    assert one(tx, engine.PositionChanged).size == 4 * WAD - WAD // 20
    assert tx.decode_logs(engine.MarginCallCleared) == []
    tx = trade(system, trader, ETH, -WAD)  # ratio 1.44: cured, the call clears itself
    cleared = one(tx, engine.MarginCallCleared)
    assert cleared.account == trader.address
    assert cleared.ratio >= engine.risk_params().call_ratio
    assert engine.account_info(trader.address)[2] == 0
    deposit(system, trader, 500 * unit)
    trade(system, trader, ETH, WAD // 10)  # new exposure is allowed again
    assert_conserved(system, [trader, keeper])


# the call reward on 7,400 of notional: 0.025% (close_factor x the tranche penalty, a third
# of liquidation_penalty, x keeper share: 0.25 x 0.5% x 20%)
CALL_REWARD_7400 = 1_850  # thousandths of a token


def _called_long_eth(system, trader, keeper):
    """Long 4 ETH at 2,000 on 1,000 tokens, ETH down to 1,850 and a recorded call: collateral
    994.15 after the fee (4) and the call reward (1.85, scaled with the 7,400 of notional),
    equity 394.15, maintenance 370, ratio 1.065."""
    engine, unit = system.engine, system.unit
    deposit(system, trader, 1_000 * unit)
    trade(system, trader, ETH, 4 * WAD)
    system.set_price(ETH, 1_850)
    tx = engine.margin_call(trader.address, sender=keeper)
    called = one(tx, engine.MarginCall)
    assert called.reward == CALL_REWARD_7400 * unit // 1_000
    assert (called.equity, called.maintenance) == (
        396 * WAD - CALL_REWARD_7400 * WAD // 1_000,
        370 * WAD,
    )
    assert engine.collateral_of(trader.address) == _CALLED_COLLATERAL * unit // 1_000
    status = engine.check_margin(trader.address)
    assert status.state == State.CALLED
    assert status.call_deadline == called.deadline == engine.account_info(trader.address)[2]
    return called.deadline


_CALLED_COLLATERAL = 996_000 - CALL_REWARD_7400  # thousandths of a token


def test_curing_flip_under_margin_call_clears_the_call(system, trader, keeper):
    """A flip is new exposure, but under a call the engine lets it through when the account's
    ratio after the trade is at least call_ratio; the call then clears in the same transaction."""
    engine, unit = system.engine, system.unit
    _called_long_eth(system, trader, keeper)

    tx = trade(system, trader, ETH, -5 * WAD)  # long 4 -> short 1 at 1,850
    fee = fee_units(system, 9_250 * WAD)
    assert fee == unit * 4_625 // 1_000
    collateral = _CALLED_COLLATERAL * unit // 1_000 - 600 * unit - fee  # realises -600
    assert_fields(
        one(tx, engine.PositionChanged),
        account=trader.address,
        market_id=ETH,
        size=-WAD,
        open_notional=-1_850 * WAD,
        price=1_850 * WAD,
        size_delta=-5 * WAD,
        realized_pnl=-600 * unit,
        fee=fee,
        collateral=collateral,
    )
    # equity 385.825, maintenance 92.5 (5% of 1,850): ratio 4.17 >= 1.25
    equity = collateral * 10 ** (18 - system.decimals)
    maintenance = 1_850 * WAD * 5 // 100
    assert_fields(
        one(tx, engine.MarginCallCleared),
        account=trader.address,
        caller=system.book.address,  # the fill's caller
        equity=equity,
        maintenance=maintenance,
        ratio=equity * WAD // maintenance,
    )
    assert equity * WAD // maintenance >= engine.risk_params().call_ratio
    assert engine.position(trader.address, ETH) == (-WAD, -1_850 * WAD)
    assert engine.collateral_of(trader.address) == collateral
    assert engine.account_info(trader.address)[2] == 0
    status = engine.check_margin(trader.address)
    assert status.state == State.HEALTHY
    assert status.call_deadline == 0
    assert (status.equity, status.maintenance) == (equity, maintenance)
    assert_conserved(system, [trader, keeper])


def test_flip_under_margin_call_that_does_not_cure_reverts(system, trader, keeper):
    """A flip to a smaller opposite position (short 3.5 against long 4) that leaves the ratio
    under call_ratio is refused with the margin-call reason, and nothing changes."""
    engine, unit = system.engine, system.unit
    deadline = _called_long_eth(system, trader, keeper)
    open_interest = engine.open_interest()

    # short 3.5 at 1,850: equity 394.15 - 6.9375 (fee) = 387.21, maintenance 323.75: ratio 1.196
    with ape.reverts("engine: under margin call"):
        trade(system, trader, ETH, -7 * WAD - WAD // 2)
    assert engine.position(trader.address, ETH) == (4 * WAD, 8_000 * WAD)
    assert engine.collateral_of(trader.address) == _CALLED_COLLATERAL * unit // 1_000
    assert engine.account_info(trader.address)[2] == deadline
    assert engine.open_interest() == open_interest
    status = engine.check_margin(trader.address)
    assert status.state == State.CALLED
    assert status.call_deadline == deadline
    assert_conserved(system, [trader, keeper])


def test_reduction_works_while_another_markets_feed_is_down(system, owner, trader):
    deposit(system, trader, 1_000 * system.unit)
    trade(system, trader, ETH, 2 * WAD)
    trade(system, trader, SOL, 2 * WAD)
    system.feeds[SOL].set_reverting(True, sender=owner)

    with ape.reverts("oracle: feed reverted"):
        trade(system, trader, ETH, WAD)  # new exposure needs every price
    tx = trade(system, trader, ETH, -WAD)
    assert one(tx, system.engine.PositionChanged).size == WAD


def test_reduction_under_margin_call_works_while_another_markets_feed_is_down(
    system, owner, trader, keeper
):
    _called_with_two_markets(system, trader, keeper)
    system.feeds[SOL].set_reverting(True, sender=owner)

    tx = trade(system, trader, ETH, -WAD)
    assert one(tx, system.engine.PositionChanged).size == 3 * WAD
    assert system.engine.account_info(trader.address)[2] != 0  # not evaluated: still called


# --- losses and open interest ------------------------------------------------------------------


def test_reduction_with_loss_above_collateral_reverts(system, trader):
    unit = system.unit
    deposit(system, trader, 101 * unit)
    trade(system, trader, ETH, WAD // 2)  # 1,000 notional at 10x, collateral 100.5
    system.set_price(ETH, 1_700)  # loss 150

    with ape.reverts("engine: loss exceeds collateral"):
        close_position(system, trader, ETH)
    with ape.reverts("engine: loss exceeds collateral"):
        trade(system, trader, ETH, -(WAD * 4 // 10))  # realises 120
    assert system.engine.position(trader.address, ETH) == (WAD // 2, 1_000 * WAD)


def test_open_interest_tracks_absolute_open_notional(system, trader, other_trader):
    engine, unit = system.engine, system.unit
    actors = [trader, other_trader]
    deposit(system, trader, 5_000 * unit)
    deposit(system, other_trader, 5_000 * unit)

    steps = [
        (trader, ETH, WAD, None),
        (other_trader, ETH, -2 * WAD, None),
        (other_trader, SOL, 10 * WAD, None),
        (trader, ETH, WAD, 2_100),  # increase at a new price
        (other_trader, ETH, WAD, None),  # reduce a short
        (trader, ETH, -3 * WAD, 1_950),  # flip a long
        (other_trader, ETH, WAD, None),  # close
        (other_trader, SOL, -10 * WAD, None),
        (trader, ETH, WAD, None),  # close
    ]
    expected = [2_000, 6_000, 7_500, 9_600, 7_600, 5_450, 3_450, 1_950, 0]
    for (who, market_id, size, price), oi in zip(steps, expected, strict=True):
        if price is not None:
            system.set_price(market_id, price)
        trade(system, who, market_id, size)
        assert engine.open_interest() == open_interest_of(system, actors)
        assert engine.open_interest() == oi * WAD
    assert_conserved(system, actors)


def test_lifecycle_conserves_tokens(system, trader, other_trader, stranger):
    """Deposits, trades at moving prices, a third-party top-up and withdrawals: the engine's
    balance always equals the sum of the collateral ledgers."""
    engine, unit = system.engine, system.unit
    actors = [trader, other_trader, stranger]
    deposit(system, trader, 3_000 * unit)
    deposit(system, other_trader, 2_000 * unit)
    trade(system, trader, ETH, 3 * WAD)
    trade(system, other_trader, BTC, -(WAD // 10))
    trade(system, trader, SOL, -7 * WAD - 123)
    assert_conserved(system, actors)
    for eth, btc, sol in ((2_013.37, 59_111.11, 151.7), (1_987.65, 61_234.5, 149.99)):
        system.set_price(ETH, eth)
        system.set_price(BTC, btc)
        system.set_price(SOL, sol)
        trade(system, trader, ETH, -WAD - 7)
        trade(system, other_trader, BTC, 10**16 + 3)
        assert_conserved(system, actors)
    fund(system, stranger, 123 * unit + 7)
    engine.deposit(123 * unit + 7, other_trader.address, sender=stranger)
    for who in (trader, other_trader):
        for market_id in (ETH, BTC, SOL):
            size = engine.position(who.address, market_id)[0]
            if size != 0:
                close_position(system, who, market_id)
        engine.withdraw(engine.collateral_of(who.address), sender=who)
    assert_conserved(system, actors)
    # what is left is the pool's lazily settled credit; anyone hands it over
    credit = engine.claimable(system.pool.address)
    assert system.token.balanceOf(engine.address) == credit
    engine.claim_rewards(system.pool.address, sender=stranger)
    assert system.token.balanceOf(engine.address) == 0
    assert engine.open_interest() == 0
