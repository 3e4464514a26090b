"""Security tests: hostile callers, hostile tokens and extreme values against the MarginEngine.

Each test is built so that it fails if the protection it covers were removed: the callbacks of
the reentrant token are proven valid on their own (`fire()` succeeds once the engine's lock is
free), the dust and range checks are probed on both sides of their bound, and every scenario
ends with the engine holding exactly the sum of its collateral ledgers and of what it holds for
others (keepers' accrued rewards, the fund's share, the pool's credit, escrowed order fees).
Keepers' rewards accrue in the engine (`claimable`), so a keeper's gain is read as its wallet
plus its accrued balance (`held`).

Markets of the shared `system` (collateral decimals 6 and 18): 0 ETH-USD at 2,000 (imr 10%,
mmr 5%, 8-decimal feed) and 2 SOL-USD (imr 20%, mmr 10%, 18-decimal feed), fee 5 bps, dust
below 10 tokens of notional, adapter bounds [1 wei, 1e12]. The standard distressed account: 1,000
tokens of collateral, long 4 ETH at 2,000 (fee 4): at 1,850 equity 396 / maintenance 370 is
CALLABLE, at 1,840 equity 356 / maintenance 368 (ratio 0.967) is LIQUIDATABLE.
"""

from __future__ import annotations

import dataclasses

import ape
import pytest

from margincall.constants import WAD, State
from margincall.deploy import DEFAULT_MARKETS, System
from margincall.math import (
    call_reward,
    div_ceil,
    div_floor,
    evaluate,
    mul_up,
    scaled_call_reward,
)
from tests.utils.helpers import (
    account_model,
    assert_conserved,
    close_position,
    held,
    pin_next_tx,
    reference_tranche,
    risk_params_model,
    scale_of,
    set_risk_params,
    skip_revert_source_traceback,
    trade_unbounded,
    travel_to,
    tx_time,
)

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
MAX_UINT = 2**256 - 1
ETH = 0
SOL = 2  # its feed has 18 decimals: an answer of 1 is a price of 1 wei
BIAS = 2**127
ORDER_MAX = 2**106  # |size delta| of one order (OrderBook._SIZE_BIAS)
MASK112 = 2**112 - 1
MAX_PRICE = 10**12 * WAD  # the adapters' max_price (deploy.MarketSpec)
HEARTBEAT = 30 * 86_400
ETH_SPEC = dataclasses.replace(DEFAULT_MARKETS[0], heartbeat=HEARTBEAT)


@pytest.fixture(scope="module", autouse=True)
def _actors_first(owner, guardian, lp, keeper, trader, other_trader, stranger):
    """Builds the session-scoped actors before any test, so Ape's isolation never rebases."""


@pytest.fixture(autouse=True)
def _fast_reverts(monkeypatch):
    skip_revert_source_traceback(monkeypatch)


@pytest.fixture
def deployer(accounts):
    """A brand-new account per test: its deployments never reuse a cached address."""
    account = accounts.generate_test_account()
    account.balance = 10**21
    return account


# --- helpers ---------------------------------------------------------------------------------


def _addr(who) -> str:
    return getattr(who, "address", who)


def fund(system, who, amount: int, spender=None) -> int:
    system.token.mint(who.address, amount, sender=who)
    system.token.approve(_addr(spender or system.engine), MAX_UINT, sender=who)
    return amount


def deposit(system, who, amount: int, account=None):
    fund(system, who, amount)
    return system.engine.deposit(amount, _addr(account or who), sender=who)


def trade(system, who, size: int, market_id: int = ETH):
    """A position change through an order (commit, next round, settle); a cancelled order
    raises with its reason."""
    return trade_unbounded(system, who, market_id, size)


def one(tx, event):
    logs = tx.decode_logs(event)
    assert len(logs) == 1, f"expected one {event.name}, got {len(logs)}"
    return logs[0]


def assert_intact(system, holders) -> None:
    """Nothing lost: the engine holds exactly the listed accounts' collateral, what it keeps for
    them (their accrued rewards, `claimable`, and their pending orders' escrowed fees) and the
    fund's and the pool's accrued balances (`claimable(fund)`, `claimable(pool)`)."""
    assert_conserved(system, holders)


def distressed(system, who):
    """1,000 tokens, long 4 ETH at 2,000: CALLABLE at 1,850, LIQUIDATABLE at 1,840 (with
    critical_ratio 0.5, set here: the default 1 would close it in full below ratio 1)."""
    if system.engine.risk_params().critical_ratio != WAD // 2:
        set_risk_params(system, critical_ratio=WAD // 2)
    deposit(system, who, 1_000 * system.unit)
    trade(system, who, 4 * WAD)


def snapshot(system, who):
    e = system.engine
    return (e.account_info(_addr(who)), e.position(_addr(who), ETH))


# --- 1. reentrant collateral token ----------------------------------------------------------

ON_TRANSFER, ON_TRANSFER_FROM = 1, 2


def deploy_reentrant_system(project, deployer, guardian) -> System:
    """A one-market system (ETH-USD) on MockReentrantToken (18 decimals)."""
    token = deployer.deploy(project.MockReentrantToken, "Reentrant USD", "rUSD", 18)
    pool = deployer.deploy(project.LiquidityPool, token.address, "margincall LP", "mcLP")
    fund_ = deployer.deploy(project.InsuranceFund, token.address, pool.address)
    book = deployer.deploy(project.OrderBook, 18, 0, 3_600)
    engine = deployer.deploy(
        project.MarginEngine,
        token.address,
        pool.address,
        fund_.address,
        guardian.address,
        deployer.deploy(project.MarginParams).address,
        book.address,
    )
    book.set_engine(engine.address, sender=deployer)
    pool.set_engine(engine.address, sender=deployer)
    fund_.set_engine(engine.address, sender=deployer)
    s = System(project, deployer, token, pool, fund_, engine, book=book, markets=(ETH_SPEC,))
    feed = deployer.deploy(project.MockAggregator, 8, s.feed_answer(ETH, ETH_SPEC.price))
    oracle = deployer.deploy(
        project.OracleAdapter,
        feed.address,
        HEARTBEAT,
        ZERO_ADDRESS,
        0,
        ZERO_ADDRESS,
        0,
        1,
        MAX_PRICE,
    )
    spec = ETH_SPEC
    engine.set_market(
        ETH, oracle.address, spec.imr, spec.mmr, spec.fee, spec.window_cap, True, sender=deployer
    )
    s.feeds.append(feed)
    s.oracles.append(oracle)
    return s


@pytest.fixture
def rsys(project, deployer, guardian, lp, trader, other_trader, stranger):
    """Reentrant-token system: two LIQUIDATABLE traders (at 1,840); the token contract itself
    holds 100 tokens of engine collateral, 1,000 tokens of its own and an engine allowance, so
    each callback (withdraw, deposit, liquidate; not `fill`, the book's alone) would succeed
    on its own; the stranger holds 500 tokens of collateral. The hook is disarmed during this
    setup."""
    s = deploy_reentrant_system(project, deployer, guardian)
    unit, token, engine = s.unit, s.token, s.engine
    token.mint(lp.address, 1_000_000 * unit, sender=lp)
    token.approve(s.pool.address, MAX_UINT, sender=lp)
    s.pool.deposit(1_000_000 * unit, lp.address, sender=lp)
    distressed(s, trader)
    distressed(s, other_trader)
    deposit(s, stranger, 500 * unit)
    deposit(s, stranger, 100 * unit, account=token)
    token.mint(token.address, 1_000 * unit, sender=stranger)
    token.self_approve(engine.address, MAX_UINT, sender=stranger)
    s.set_price(ETH, 1_840)
    assert engine.check_margin(trader.address).state == State.LIQUIDATABLE
    assert engine.check_margin(other_trader.address).state == State.LIQUIDATABLE
    return s


def _callback(s, name: str, other_trader):
    engine, unit = s.engine, s.unit
    if name == "withdraw":
        return engine.withdraw.encode_input(10 * unit)
    if name == "deposit":
        return engine.deposit.encode_input(10 * unit, s.token.address)
    if name == "trade":
        # the engine's position entry point (only the order book may call it)
        return engine.fill.encode_input(s.token.address, ETH, WAD // 100, 1_840 * WAD)
    if name == "liquidate":
        return engine.liquidate.encode_input(other_trader.address)
    raise ValueError(name)


REENTRY_CASES = [
    ("deposit", "withdraw"),
    ("deposit", "deposit"),
    ("deposit", "trade"),
    ("deposit", "liquidate"),
    ("withdraw", "withdraw"),
    ("withdraw", "liquidate"),
    # a bankrupt close: the hook fires on the fund's accrued share, swept to it first
    ("liquidate", "withdraw"),
    ("liquidate", "deposit"),
    ("liquidate", "liquidate"),
    # a tranche, a fill's trading fee and a margin call move no tokens (the keeper's reward, the
    # fund's share and the pool's credit accrue in the engine), so the outer calls below are the
    # ones that still send tokens: the hook fires on the first transfer of each
    ("trade", "withdraw"),  # ... on the settlement fee paid to the settler (`pay_fills`)
    ("claim_rewards", "withdraw"),  # ... on the accrued call reward paid to the keeper
]


@pytest.mark.parametrize("outer,inner", REENTRY_CASES, ids=[f"{o}->{i}" for o, i in REENTRY_CASES])
def test_reentrant_token_callback_is_refused(
    rsys, outer, inner, keeper, trader, other_trader, stranger
):
    s, token, engine, unit = rsys, rsys.token, rsys.engine, rsys.unit
    holders = [trader, other_trader, stranger, keeper, token]
    # the setup of each outer call, while the hook is disarmed
    fee = 0
    if outer == "liquidate":
        # a first tranche of the trader accrues the fund's share of its penalty in the engine;
        # at 1,700 the trader (what is left of it) and the victim are bankrupt, and the close
        # sweeps that share to the fund before the fund covers the deficit
        first = one(engine.liquidate(trader.address, sender=keeper), engine.Liquidation)
        assert first.fund_fee > 0 and engine.claimable(s.fund.address) == first.fund_fee
        s.set_price(ETH, 1_700)
        assert engine.check_margin(trader.address).state == State.BANKRUPT
        assert engine.check_margin(other_trader.address).state == State.BANKRUPT
    elif outer == "trade":
        fee = unit // 10  # a settlement fee of 0.1 token (the book's config is in millionths)
        s.book.set_config(100_000, s.book.max_window(), sender=s.owner)
    elif outer == "claim_rewards":
        s.set_price(ETH, 1_850)  # CALLABLE (no token moves)
        # the reward scales with the notional (4 ETH at 1,850: 1.85 tokens), under the room
        # above maintenance (equity 396 - maintenance 370)
        reward = call_reward(account_model(s, trader), risk_params_model(engine), scale_of(s))
        assert reward == 185 * unit // 100
        call = one(engine.margin_call(trader.address, sender=keeper), engine.MarginCall)
        assert call.reward == reward and engine.claimable(keeper.address) == 0  # parked
        # the price recovers and the call is cleared: the parked reward is paid to the keeper
        s.set_price(ETH, 2_000)
        paid = one(engine.clear_margin_call(trader.address, sender=keeper), engine.CallRewardPaid)
        assert paid.amount == reward and engine.claimable(keeper.address) == reward
    hook = ON_TRANSFER_FROM if outer == "deposit" else ON_TRANSFER
    token.set_callback(engine.address, _callback(s, inner, other_trader), hook, sender=stranger)
    token_before = snapshot(s, token)
    victim_before = snapshot(s, other_trader)
    token_wallet = token.balanceOf(token.address)

    if outer == "deposit":
        fund(s, stranger, 50 * unit)
        tx = engine.deposit(50 * unit, sender=stranger)
        one(tx, engine.Deposit)
    elif outer == "withdraw":
        tx = engine.withdraw(10 * unit, sender=stranger)
        one(tx, engine.Withdraw)
    elif outer == "trade":
        # opens 1 ETH: the trading fee accrues to the pool, the one transfer is the settlement
        # fee to the settler (here the trader itself), from the engine's `pay_fills`
        tx = trade(s, stranger, WAD)
        assert one(tx, engine.PositionChanged).fee == 92 * unit // 100
        assert one(tx, s.book.OrderSettled).fee == fee
    elif outer == "claim_rewards":
        tx = engine.claim_rewards(keeper.address, sender=stranger)
        assert one(tx, engine.RewardsClaimed).amount == reward
        assert engine.claimable(keeper.address) == 0
    else:
        tx = engine.liquidate(trader.address, sender=keeper)
        assert one(tx, engine.Liquidation).state == State.BANKRUPT
        assert one(tx, engine.RewardsClaimed).keeper == s.fund.address

    # the hook ran inside the outer call, and the engine's lock refused the reentry: Vyper's
    # @nonreentrant reverts with no reason (empty returndata)
    assert token.attempts() == 1
    assert token.callback_ok() is False
    assert bytes(token.callback_return()) == b""
    assert len(tx.decode_logs(engine.Liquidation)) == (1 if outer == "liquidate" else 0)
    assert snapshot(s, token) == token_before
    assert snapshot(s, other_trader) == victim_before
    assert token.balanceOf(token.address) == token_wallet
    assert_intact(s, holders)

    # the same callback succeeds outside the lock: only @nonreentrant stopped it (the
    # engine's `fill` is refused outside too: only the order book may call it)
    token.fire(sender=stranger)
    assert token.attempts() == 2
    if inner == "trade":
        assert token.callback_ok() is False
        assert snapshot(s, token) == token_before
        return
    assert token.callback_ok() is True
    assert snapshot(s, token) != token_before or snapshot(s, other_trader) != victim_before
    assert_intact(s, holders)


def test_reentrant_callback_into_the_pool_inside_pool_pay_is_refused(
    rsys, trader, other_trader, stranger
):
    """The pool has its own lock: a callback into `pool.redeem` from the token transfer of
    `pool.pay` (the engine paying out a trader's profit) is refused; the same call succeeds
    outside. (The engine's lock does not cover the pool: it is a separate contract.)"""
    s, token, engine, pool, unit = rsys, rsys.token, rsys.engine, rsys.pool, rsys.unit
    holders = [trader, other_trader, stranger, token]
    token.mint(stranger.address, 100 * unit, sender=stranger)
    token.approve(pool.address, MAX_UINT, sender=stranger)
    pool.deposit(100 * unit, token.address, sender=stranger)
    travel_to(ape.chain, pool.unlock_time(token.address))  # past the deposit cooldown
    shares = pool.balanceOf(token.address)
    trade(s, stranger, WAD)  # 1 ETH at 1,840
    s.set_price(ETH, 1_900)
    token.set_callback(
        pool.address,
        pool.redeem.encode_input(shares, token.address, token.address),
        ON_TRANSFER,
        sender=stranger,
    )
    assets0, wallet0 = pool.totalAssets(), token.balanceOf(token.address)
    collateral0 = engine.collateral_of(stranger.address)
    # what the engine owes the pool (the fees of the three opens: 4 + 4 + 0.92) pays the
    # profit first; `pool.pay` the rest
    credit0 = engine.claimable(pool.address)
    assert credit0 == 892 * unit // 100

    tx = close_position(s, stranger, ETH)  # profit 60, fee 0.95: the credit, then pool.pay
    log = one(tx, engine.PositionChanged)
    assert (log.realized_pnl, log.fee) == (60 * unit, 95 * unit // 100)
    assert one(tx, pool.ProfitPaid).amount == 60 * unit - 95 * unit // 100 - credit0
    assert engine.claimable(pool.address) == 0
    assert token.attempts() == 1
    assert token.callback_ok() is False
    assert bytes(token.callback_return()) == b""  # @nonreentrant: no reason
    assert pool.balanceOf(token.address) == shares
    assert token.balanceOf(token.address) == wallet0
    assert pool.totalAssets() == assets0 - 60 * unit + 95 * unit // 100
    assert engine.collateral_of(stranger.address) == collateral0 + 60 * unit - 95 * unit // 100
    assert_intact(s, holders)

    # outside pool.pay, the same redeem goes through: only the pool's lock stopped it
    expected = pool.convertToAssets(shares)
    token.fire(sender=stranger)
    assert token.callback_ok() is True
    assert pool.balanceOf(token.address) == 0
    assert token.balanceOf(token.address) == wallet0 + expected
    assert_intact(s, holders)


def test_reentrant_callback_into_the_pool_during_a_bankrupt_close_gets_less_never_more(
    rsys, keeper, trader, other_trader, stranger
):
    """A callback into `pool.redeem` during a liquidation runs (the pool's lock is free and the
    engine's does not cover the pool), and gains nothing. A tranche moves no tokens at all now
    (the pool's share accrues in the engine), so the only transfers of a liquidation are a
    bankrupt close's: the fund's `cover` pays the pool before the account's collateral is
    credited to the pool (`claimable(pool)`, at the end of the transaction). A redeem from
    inside the fund's transfer is priced on the pool's assets with the fund's payment but
    without that collateral: the redeemer gets less than its shares are worth after the
    transaction, never more (the remaining LPs keep the difference), and the engine's own
    accounting is untouched (SECURITY.md, Reentrancy)."""
    s, token, engine, pool, unit = rsys, rsys.token, rsys.engine, rsys.pool, rsys.unit
    holders = [trader, other_trader, stranger, keeper, token]
    token.mint(stranger.address, 100 * unit, sender=stranger)
    token.approve(pool.address, MAX_UINT, sender=stranger)
    pool.deposit(100 * unit, token.address, sender=stranger)
    travel_to(ape.chain, pool.unlock_time(token.address))  # past the deposit cooldown
    shares = pool.balanceOf(token.address)
    token.mint(s.fund.address, 300 * unit, sender=stranger)  # the fund's balance (a donation)
    s.set_price(ETH, 1_700)  # bankrupt: equity 996 - 1,200 = -204
    st = engine.check_margin(trader.address)
    assert st.state == State.BANKRUPT and st.equity == -204 * WAD
    assert engine.claimable(s.fund.address) == 0  # no sweep: the fund's cover is the transfer
    token.set_callback(
        pool.address,
        pool.redeem.encode_input(shares, token.address, token.address),
        ON_TRANSFER,
        sender=stranger,
    )
    pool_balance0, credit0 = token.balanceOf(pool.address), engine.claimable(pool.address)
    supply0 = pool.totalSupply()
    wallet0 = token.balanceOf(token.address)
    collateral0 = engine.collateral_of(trader.address)
    assert collateral0 == 996 * unit

    tx = engine.liquidate(trader.address, sender=keeper)
    liq = one(tx, engine.Liquidation)
    assert (liq.state, liq.collateral, liq.keeper_reward) == (State.BANKRUPT, 0, unit)
    # the deficit: the negative equity plus the keeper's min_keeper_reward, all from the fund
    bad = one(tx, engine.BadDebt)
    assert (bad.amount, bad.paid_by_fund, bad.socialised) == (205 * unit, 205 * unit, 0)
    assert token.attempts() == 1
    assert token.callback_ok() is True
    redeemed = token.balanceOf(token.address) - wallet0
    assert pool.balanceOf(token.address) == 0
    assert token.balanceOf(pool.address) == pool_balance0 + 205 * unit - redeemed
    # the collateral less the keeper's reward reached the pool as the engine's credit, after
    # the callback
    to_pool = collateral0 - unit
    assert engine.claimable(pool.address) == credit0 + to_pool
    # priced with the fund's 205 but before the credit (erc4626: virtual share offset 6) ...
    assert redeemed == shares * (pool_balance0 + credit0 + 205 * unit + 1) // (supply0 + 10**6)
    # ... so below what the shares are worth once the whole liquidation has landed
    final = shares * (pool_balance0 + credit0 + 205 * unit + to_pool + 1) // (supply0 + 10**6)
    assert redeemed < final
    assert engine.claimable(keeper.address) == unit
    assert_intact(s, holders)


# --- 2. self-liquidation ----------------------------------------------------------------------


def test_self_liquidation_costs_more_than_the_reward(system, trader):
    """A trader that keeps its own keeper reward still pays the whole penalty: no profit."""
    engine = system.engine
    scale = 10 ** (18 - system.decimals)
    distressed(system, trader)
    system.set_price(ETH, 1_840)
    before = engine.check_margin(trader.address)
    assert before.state == State.LIQUIDATABLE
    # the trader's tokens outside its account: its wallet and what the engine holds for it
    # (a keeper's reward accrues in `claimable`, paid by `claim_rewards`)
    held0 = held(system, trader)

    tx = engine.liquidate(trader.address, sender=trader)
    log = one(tx, engine.Liquidation)
    assert log.keeper == trader.address
    assert 0 < log.keeper_reward < log.penalty
    after = engine.check_margin(trader.address)
    held1 = held(system, trader)
    assert held1 - held0 == log.keeper_reward
    assert engine.claimable(trader.address) == log.keeper_reward

    # wealth = wallet + accrued + equity (wad): it drops by at least penalty - reward
    gained = (held1 - held0) * scale + after.equity - before.equity
    assert gained <= -(log.penalty - log.keeper_reward) * scale
    assert gained < 0
    assert_intact(system, [trader])


def test_self_liquidation_of_a_small_account_is_at_best_free(system, trader):
    """When the penalty is below min_keeper_reward, the reward is capped at the penalty: the
    self-liquidator gets back at most what it paid (without the cap it would pocket 1 token)."""
    engine = system.engine
    scale = 10 ** (18 - system.decimals)
    set_risk_params(system, critical_ratio=WAD // 2)  # a tranche below ratio 1
    deposit(system, trader, 21 * system.unit // 2)
    trade(system, trader, 5 * WAD // 100)  # 100 tokens of notional, fee 0.05
    system.set_price(ETH, 1_880)  # equity 4.45, maintenance 4.7: ratio 0.95
    before = engine.check_margin(trader.address)
    assert before.state == State.LIQUIDATABLE
    held0 = held(system, trader)  # wallet + accrued rewards

    log = one(engine.liquidate(trader.address, sender=trader), engine.Liquidation)
    assert not log.full_close
    assert 0 < log.penalty < engine.risk_params().min_keeper_reward // scale
    assert log.keeper_reward == log.penalty
    assert engine.claimable(trader.address) == log.keeper_reward  # accrued, not sent
    after = engine.check_margin(trader.address)
    gained = (held(system, trader) - held0) * scale + after.equity - before.equity
    assert -2 * scale <= gained <= 0
    assert_intact(system, [trader])


def test_self_margin_call_is_zero_sum(system, trader):
    """Calling oneself moves the call reward from one's collateral into the engine's parked
    reward, then (the call cured) to one's accrued rewards and, by `claim_rewards`, to one's
    wallet: no gain."""
    engine, token = system.engine, system.token
    distressed(system, trader)
    system.set_price(ETH, 1_850)
    collateral0, wallet0 = engine.collateral_of(trader.address), token.balanceOf(trader.address)
    # the reward scales with the notional: 4 ETH at 1,850, 1.85 tokens (room above maintenance 26)
    expected = call_reward(
        account_model(system, trader), risk_params_model(engine), scale_of(system)
    )
    assert expected == 185 * system.unit // 100
    tx = engine.margin_call(trader.address, sender=trader)
    reward = one(tx, engine.MarginCall).reward
    assert reward == expected
    assert engine.collateral_of(trader.address) == collateral0 - reward
    assert engine.claimable(trader.address) == 0
    assert system.lens.call_reward_of(trader.address) == (trader.address, reward)  # parked
    assert token.balanceOf(trader.address) == wallet0
    assert engine.account_info(trader.address)[2] != 0  # and the call is now on record
    assert_intact(system, [trader])
    system.set_price(ETH, 2_000)  # recovered: the cure pays the parked reward to the caller
    one(engine.clear_margin_call(trader.address, sender=trader), engine.CallRewardPaid)
    assert engine.claimable(trader.address) == reward
    engine.claim_rewards(trader.address, sender=trader)
    assert engine.claimable(trader.address) == 0
    assert token.balanceOf(trader.address) == wallet0 + reward
    assert engine.collateral_of(trader.address) + token.balanceOf(trader.address) == (
        collateral0 + wallet0
    )
    assert_intact(system, [trader])


def test_margin_call_reward_never_makes_the_account_liquidatable(
    system, chain, trader, stranger, keeper
):
    """An account just above maintenance (equity 368.5, maintenance 368): the full call reward
    (scaled with the notional: 1.84 tokens for 4 ETH at 1,840) would take it below ratio 1,
    LIQUIDATABLE at once, and a keeper could call and liquidate in one block. The reward is
    cut to what keeps equity at maintenance (0.5): the account is CALLED, with its whole grace
    period, and no tranche goes through."""
    engine, unit = system.engine, system.unit
    distressed(system, trader)
    system.set_price(ETH, 1_840)
    deposit(system, stranger, 25 * unit // 2, account=trader)  # equity 368.5 / maintenance 368
    st = engine.check_margin(trader.address)
    assert (st.equity, st.maintenance) == (3_685 * WAD // 10, 368 * WAD)
    assert st.state == State.CALLABLE
    accrued = engine.claimable(keeper.address)
    # what an uncapped call would take: the keeper's share of a close_factor tranche's penalty
    # of the 7,360 notional (7,360 * 0.25 * 0.005 * 0.2 = 1.84 tokens), above the 0.5 of room
    notional = evaluate(account_model(system, trader), scale_of(system)).notional
    assert notional == 7_360 * WAD
    uncapped = scaled_call_reward(notional, risk_params_model(engine))
    assert uncapped == 184 * WAD // 100
    assert uncapped > st.equity - st.maintenance

    tx = engine.margin_call(trader.address, sender=keeper)
    call = one(tx, engine.MarginCall)
    assert call.reward == unit // 2
    assert (call.equity, call.ratio) == (368 * WAD, WAD)
    assert engine.claimable(keeper.address) == accrued  # parked until the call ends
    assert system.lens.call_reward_of(trader.address) == (keeper.address, unit // 2)
    after = engine.check_margin(trader.address)
    assert after.state == State.CALLED and after.ratio == WAD
    with ape.reverts("engine: account not liquidatable"):
        engine.liquidate(trader.address, sender=keeper)
    assert engine.liquidate_many([trader.address], sender=keeper).return_value == 0
    assert_intact(system, [trader, stranger, keeper])


def test_margin_call_at_exactly_maintenance_pays_no_reward(system, trader, stranger, keeper):
    engine, unit = system.engine, system.unit
    distressed(system, trader)
    system.set_price(ETH, 1_840)
    deposit(system, stranger, 12 * unit, account=trader)  # equity 368 = maintenance 368
    assert engine.check_margin(trader.address).state == State.CALLABLE
    call = one(engine.margin_call(trader.address, sender=keeper), engine.MarginCall)
    assert call.reward == 0 and call.ratio == WAD
    assert engine.check_margin(trader.address).state == State.CALLED


# --- 3. front-running a tranche with a deposit ---------------------------------------------


def test_one_unit_deposit_does_not_block_the_tranche(system, trader, stranger, keeper):
    engine = system.engine
    distressed(system, trader)
    system.set_price(ETH, 1_840)
    deposit(system, stranger, 1, account=trader)
    assert engine.check_margin(trader.address).state == State.LIQUIDATABLE
    tx = engine.liquidate(trader.address, sender=keeper)
    log = one(tx, engine.Liquidation)
    assert log.closed_notional > 0 and log.keeper_reward > 0
    assert_intact(system, [trader, stranger, keeper])


def test_deposit_lifting_ratio_above_one_forces_a_call_then_the_tranche(
    system, chain, trader, stranger, keeper
):
    """A deposit front-running the tranche of an account with no call on record, lifting its
    ratio from 0.967 to just above 1 (below call_ratio 1.25), makes it CALLABLE: the tranche
    reverts and the keeper must call it; once the grace period has passed, the tranche goes
    through (the front-run buys the trader one grace period, not an escape)."""
    engine, unit = system.engine, system.unit
    holders = [trader, stranger, keeper]
    distressed(system, trader)
    system.set_price(ETH, 1_840)
    assert engine.check_margin(trader.address).state == State.LIQUIDATABLE
    deposit(system, stranger, 13 * unit, account=trader)  # equity 369 / maintenance 368
    st = engine.check_margin(trader.address)
    assert (st.equity, st.maintenance) == (369 * WAD, 368 * WAD)
    assert st.ratio == 369 * WAD // 368 and WAD < st.ratio < 125 * WAD // 100
    assert st.state == State.CALLABLE and st.call_deadline == 0
    before = snapshot(system, trader)
    keeper_held = held(system, keeper)  # wallet + accrued rewards
    keeper_accrued = engine.claimable(keeper.address)
    with ape.reverts("engine: account not liquidatable"):
        engine.liquidate(trader.address, sender=keeper)
    assert engine.liquidate_many([trader.address], sender=keeper).return_value == 0
    assert snapshot(system, trader) == before
    assert held(system, keeper) == keeper_held

    # the call reward: the scaled reward (1.84 tokens for 7,360 of notional) cut to the room
    # above maintenance (369 - 368 = 1 token), as the reference math says
    expected = call_reward(
        account_model(system, trader), risk_params_model(engine), scale_of(system)
    )
    assert expected == unit
    tx = engine.margin_call(trader.address, sender=keeper)
    call = one(tx, engine.MarginCall)
    deadline = tx_time(chain, tx) + 3_600
    assert (call.deadline, call.reward, call.equity, call.ratio) == (deadline, unit, 368 * WAD, WAD)
    assert held(system, keeper) == keeper_held  # parked until the call ends
    assert engine.claimable(keeper.address) == keeper_accrued
    assert system.lens.call_reward_of(trader.address) == (keeper.address, unit)
    assert engine.account_info(trader.address)[2] == deadline
    # during the grace period (ratio exactly 1: still CALLED), no tranche
    travel_to(chain, deadline - 1)
    assert engine.check_margin(trader.address).state == State.CALLED
    pin_next_tx(chain)
    with ape.reverts("engine: account not liquidatable"):
        engine.liquidate(trader.address, sender=keeper)
    # from the deadline on, the tranche goes through, as the reference math says
    travel_to(chain, deadline)
    assert engine.check_margin(trader.address).state == State.LIQUIDATABLE
    now = pin_next_tx(chain)
    ref = reference_tranche(system, trader, now)
    tx = engine.liquidate(trader.address, sender=keeper)
    assert tx_time(chain, tx) == deadline
    liq = one(tx, engine.Liquidation)
    assert (liq.state, liq.tranche, liq.full_close) == (State.LIQUIDATABLE, 1, False)
    assert (liq.fraction, liq.closed_notional, liq.penalty) == (
        ref.fraction,
        ref.closed_notional,
        ref.penalty,
    )
    assert (liq.keeper_reward, liq.collateral, liq.ratio_after) == (
        ref.keeper_reward,
        ref.collateral_after,
        ref.ratio_after,
    )
    assert liq.closed_notional > 0 and liq.keeper_reward > 0
    # a tranche at ratio >= 1 ends the call solvent: the parked reward is paid with it
    assert one(tx, engine.CallRewardPaid).amount == unit
    assert held(system, keeper) == keeper_held + unit + liq.keeper_reward
    assert_intact(system, holders)


def test_deposit_short_of_call_ratio_does_not_block_an_overdue_call(
    system, chain, trader, stranger, keeper
):
    """Past the deadline, a deposit that lifts the ratio above 1 but not to call_ratio is no
    cure: the tranche still goes through (and the deposit is kept, not lost)."""
    engine, unit = system.engine, system.unit
    distressed(system, trader)
    system.set_price(ETH, 1_850)
    engine.margin_call(trader.address, sender=keeper)
    chain.pending_timestamp += 3_601
    chain.mine()
    assert engine.check_margin(trader.address).state == State.LIQUIDATABLE
    deposit(system, stranger, 40 * unit, account=trader)  # equity 435 < 1.25 * 370
    status = engine.check_margin(trader.address)
    assert WAD < status.ratio < 125 * WAD // 100
    assert status.state == State.LIQUIDATABLE
    one(engine.liquidate(trader.address, sender=keeper), engine.Liquidation)
    assert_intact(system, [trader, stranger, keeper])


def test_deposit_that_restores_call_ratio_blocks_the_tranche(system, trader, stranger, keeper):
    engine, unit = system.engine, system.unit
    distressed(system, trader)
    system.set_price(ETH, 1_840)
    deposit(system, stranger, 110 * unit, account=trader)  # equity 466 >= 1.25 * 368 = 460
    assert engine.check_margin(trader.address).state == State.HEALTHY
    before = snapshot(system, trader)
    keeper_held = held(system, keeper)  # wallet + accrued rewards: no reward either way
    with ape.reverts("engine: account not liquidatable"):
        engine.liquidate(trader.address, sender=keeper)
    assert engine.liquidate_many([trader.address], sender=keeper).return_value == 0
    assert snapshot(system, trader) == before
    assert held(system, keeper) == keeper_held
    assert_intact(system, [trader, stranger, keeper])


def test_batches_with_repeated_accounts_act_once(system, trader, other_trader, keeper):
    """A keeper repeating an account in a batch gets one call (one reward, parked) and one
    tranche (one reward, accrued in the engine: `claimable`)."""
    engine = system.engine
    distressed(system, trader)
    distressed(system, other_trader)
    system.set_price(ETH, 1_850)
    accrued0 = engine.claimable(keeper.address)
    tx = engine.margin_call_many([other_trader.address] * 10, sender=keeper)
    assert tx.return_value == 1
    reward = one(tx, engine.MarginCall).reward
    # the scaled reward of 4 ETH at 1,850: 1.85 tokens, once
    assert reward == 185 * system.unit // 100
    assert engine.claimable(keeper.address) == accrued0  # parked until the call ends
    assert system.lens.call_reward_of(other_trader.address) == (keeper.address, reward)

    system.set_price(ETH, 1_840)
    tx = engine.liquidate_many([trader.address] * 10, sender=keeper)
    assert tx.return_value == 1
    log = one(tx, engine.Liquidation)
    assert engine.claimable(keeper.address) == accrued0 + log.keeper_reward
    assert_intact(system, [trader, other_trader, keeper])


# --- 4. dust -------------------------------------------------------------------------------


def test_dust_positions_cannot_be_opened_or_left(system, trader):
    engine, unit = system.engine, system.unit
    deposit(system, trader, 1_000 * unit)
    with ape.reverts("engine: position below minimum"):
        trade(system, trader, 4 * WAD // 1_000)  # 8 tokens of notional
    with ape.reverts("engine: position below minimum"):
        trade(system, trader, -4 * WAD // 1_000)
    assert engine.position(trader.address, ETH) == (0, 0)
    trade(system, trader, 5 * WAD // 1_000)  # exactly 10: the minimum is allowed
    trade(system, trader, WAD - 5 * WAD // 1_000)  # now 1 ETH
    before = snapshot(system, trader)
    with ape.reverts("engine: position below minimum"):
        trade(system, trader, -(WAD - 4 * WAD // 1_000))  # partial close leaving 0.004 ETH
    with ape.reverts("engine: position below minimum"):
        trade(system, trader, -(WAD + 4 * WAD // 1_000))  # flip to a 0.004 ETH short
    assert snapshot(system, trader) == before
    trade(system, trader, -(WAD - 5 * WAD // 1_000))  # leaving exactly the minimum
    assert engine.position(trader.address, ETH)[0] == 5 * WAD // 1_000
    close_position(system, trader, ETH)
    assert engine.position(trader.address, ETH) == (0, 0)
    assert_intact(system, [trader])


# --- 5. extreme sizes and prices -------------------------------------------------------------


def test_size_beyond_an_orders_range_is_refused_at_commit(system, owner, trader):
    """An order's size delta is below 2**106 (it fits the order's storage word), far under the
    engine's 2**127 packing bound, which stays behind it; int256 extremes are refused too."""
    engine, unit = system.engine, system.unit
    deposit(system, trader, 1_000 * unit)
    before = snapshot(system, trader)
    oi = engine.open_interest()
    for size in (BIAS, -BIAS, ORDER_MAX, -ORDER_MAX, 2**255 - 1):
        with ape.reverts("book: size out of range"):
            trade(system, trader, size)
    with ape.reverts():
        trade(system, trader, -(2**255))  # abs() overflows before any state changes
    assert snapshot(system, trader) == before
    assert system.book.pending_orders(trader) == []
    assert engine.open_interest() == oi
    assert_intact(system, [trader])


def test_collateral_above_112_bits_reverts(system, trader, stranger):
    engine, token = system.engine, system.token
    fund(system, trader, MASK112 + 1)
    with ape.reverts("engine: collateral overflow"):
        engine.deposit(MASK112 + 1, sender=trader)
    assert engine.collateral_of(trader.address) == 0
    assert token.balanceOf(trader.address) == MASK112 + 1
    engine.deposit(MASK112, sender=trader)
    assert engine.collateral_of(trader.address) == MASK112
    # a third party's top-up cannot wrap the packed word either
    fund(system, stranger, 1)
    with ape.reverts("engine: collateral overflow"):
        engine.deposit(1, trader.address, sender=stranger)
    assert engine.collateral_of(trader.address) == MASK112
    assert engine.account_info(trader.address)[1:] == (0, 0, 0, 0)
    assert token.balanceOf(stranger.address) == 1
    assert_intact(system, [trader, stranger])


def test_price_at_max_bound_values_correctly(system, owner, trader):
    engine, unit = system.engine, system.unit
    scale = 10 ** (18 - system.decimals)
    system.set_price(ETH, 1e12)
    assert system.oracles[ETH].price() == MAX_PRICE
    deposit(system, trader, 2_000 * unit)
    size = 10**10  # 1e-8 ETH: 10,000 tokens of notional at 1e12
    tx = trade(system, trader, size)
    assert one(tx, engine.PositionChanged).price == MAX_PRICE
    fee = -(-mul_up(10_000 * WAD, 5 * WAD // 10_000) // scale)
    collateral = 2_000 * unit - fee
    assert engine.position(trader.address, ETH) == (size, 10_000 * WAD)
    st = engine.check_margin(trader.address)
    assert st.collateral == collateral * scale
    assert st.equity == collateral * scale
    assert st.maintenance == 500 * WAD and st.initial == 1_000 * WAD
    assert st.state == State.HEALTHY

    # one wei above the bound: no price, no valuation; deposits still work
    system.feeds[ETH].set_answer(10**20 + 1, sender=owner)
    with ape.reverts("oracle: price out of bounds"):
        engine.check_margin(trader.address, skip_trace=True)
    deposit(system, trader, unit)
    collateral += unit

    # 5% below the bound: PnL -500 exactly
    price = 95 * MAX_PRICE // 100
    system.feeds[ETH].set_answer(95 * 10**18, sender=owner)
    assert system.oracles[ETH].price() == price
    st = engine.check_margin(trader.address)
    pnl = div_floor(size * price, WAD) - 10_000 * WAD
    assert pnl == -500 * WAD
    assert st.equity == collateral * scale + pnl
    assert st.maintenance == mul_up(mul_up(size, price), 5 * WAD // 100) == 475 * WAD
    close_position(system, trader, ETH)
    assert engine.position(trader.address, ETH) == (0, 0)
    assert_intact(system, [trader])


MIN_PRICE_CASES = {
    # market: (market id, price of a feed answer of 1: the smallest valid price). SOL's
    # 18-decimal feed (price 1 wei) is gone since orders: the largest order there is worth
    # 8e13 wei, under the minimum position notional, so no such position can open.
    "eth-8-decimal-feed": (ETH, 10**10),
}


@pytest.mark.parametrize("case", list(MIN_PRICE_CASES))
def test_price_at_min_bound_with_size_at_packed_max(system, owner, trader, case):
    """At the smallest price the adapter gives (min_price is 1 wei; an 8-decimal feed cannot
    go below 1e10 wei), the largest order (one below 2**106: an order is one storage word)
    opens a correct position, valued as the reference math says; a larger order (or a flip of
    2**107) is refused at commit. (The engine's own packing check at 2**127 stays behind it.)"""
    market, price = MIN_PRICE_CASES[case]
    engine, unit = system.engine, system.unit
    oracle, feed = system.oracles[market], system.feeds[market]
    scale = 10 ** (18 - system.decimals)
    assert oracle.min_price() == 1
    feed.set_answer(0, sender=owner)  # the only answer below: refused
    with ape.reverts("oracle: non-positive price"):
        oracle.price()
    feed.set_answer(1, sender=owner)
    assert oracle.price() == price

    size = ORDER_MAX - 1
    cfg = engine.markets(market)
    notional = mul_up(size, price)
    cost = div_ceil(size * price, WAD)
    fee = div_ceil(mul_up(notional, cfg.fee), scale)
    collateral = div_ceil(mul_up(notional, cfg.imr), scale) + unit
    deposit(system, trader, collateral + fee)
    oi = engine.open_interest()
    tx = trade(system, trader, size, market)
    log = one(tx, engine.PositionChanged)
    assert (log.size, log.open_notional, log.price, log.fee) == (size, cost, price, fee)
    assert engine.position(trader.address, market) == (size, cost)
    assert engine.open_interest() == oi + cost
    assert engine.collateral_of(trader.address) == collateral

    for answer in (1, 2):  # at the bound and at twice it: valued as the reference math does
        feed.set_answer(answer, sender=owner)
        account = account_model(system, trader)
        assert account.positions[0].notional == mul_up(size, answer * price)
        v = evaluate(account, scale)
        st = engine.check_margin(trader.address)
        assert (st.equity, st.maintenance, st.initial) == (v.equity, v.maintenance, v.initial)
        assert st.equity == collateral * scale + div_floor(size * answer * price, WAD) - cost
        assert st.state == State.HEALTHY
    feed.set_answer(1, sender=owner)

    info = engine.account_info(trader.address)
    with ape.reverts("book: size out of range"):
        trade(system, trader, ORDER_MAX, market)
    with ape.reverts("book: size out of range"):
        trade(system, trader, -2 * ORDER_MAX, market)  # a flip beyond an order's range
    assert engine.account_info(trader.address) == info
    assert engine.position(trader.address, market) == (size, cost)
    assert engine.open_interest() == oi + cost

    tx = close_position(system, trader, market)
    log = one(tx, engine.PositionChanged)
    realized = div_floor(div_floor(size * price, WAD) - cost, scale)
    assert (log.size, log.realized_pnl, log.fee) == (0, realized, fee)
    assert engine.position(trader.address, market) == (0, 0)
    assert engine.open_interest() == oi
    assert engine.collateral_of(trader.address) == collateral + realized - fee
    assert_intact(system, [trader])


# --- 6. pause -------------------------------------------------------------------------------


def test_pause_blocks_only_new_exposure(system, guardian, trader, other_trader, stranger, keeper):
    engine, unit = system.engine, system.unit
    holders = [trader, other_trader, stranger, keeper]
    distressed(system, trader)
    distressed(system, other_trader)
    deposit(system, stranger, 1_000 * unit)

    with ape.reverts("engine: only guardian or owner"):
        engine.set_paused(True, sender=stranger)
    engine.set_paused(True, sender=guardian)
    assert engine.paused()

    with ape.reverts("engine: paused"):
        trade(system, stranger, WAD)
    with ape.reverts("engine: paused"):
        trade(system, trader, WAD)  # increase
    with ape.reverts("engine: paused"):
        trade(system, trader, -5 * WAD)  # a flip is new exposure
    assert engine.position(stranger.address, ETH) == (0, 0)

    deposit(system, stranger, 100 * unit)
    engine.withdraw(50 * unit, sender=stranger)
    system.set_price(ETH, 1_850)
    one(engine.margin_call(trader.address, sender=keeper), engine.MarginCall)
    trade(system, trader, -WAD)  # reduction while CALLED and paused
    assert engine.position(trader.address, ETH)[0] == 3 * WAD
    system.set_price(ETH, 1_840)
    one(engine.liquidate(other_trader.address, sender=keeper), engine.Liquidation)
    assert_intact(system, holders)

    with ape.reverts("engine: only guardian or owner"):
        engine.set_paused(False, sender=stranger)
    engine.set_paused(False, sender=guardian)
    assert not engine.paused()
    trade(system, stranger, WAD)
    assert engine.position(stranger.address, ETH)[0] == WAD
    assert_intact(system, holders)


# --- 7. ownership -----------------------------------------------------------------------------


def test_ownership_cannot_be_taken_or_used_early(system, owner, guardian, trader, stranger):
    engine = system.engine
    with ape.reverts("ownable_2step: caller is not the new owner"):
        engine.accept_ownership(sender=stranger)
    with ape.reverts("ownable: caller is not the owner"):
        engine.transfer_ownership(stranger.address, sender=stranger)

    engine.transfer_ownership(trader.address, sender=owner)
    assert engine.pending_owner() == trader.address
    assert engine.owner() == owner.address
    # the pending owner has no power yet
    with ape.reverts("ownable: caller is not the owner"):
        engine.set_guardian(trader.address, sender=trader)
    params = engine.risk_params()
    with ape.reverts("ownable: caller is not the owner"):
        engine.set_risk_params(params, sender=trader)
    m = engine.markets(ETH)
    with ape.reverts("ownable: caller is not the owner"):
        engine.set_market(ETH, m.oracle, m.imr, m.mmr, m.fee, m.window_cap, False, sender=trader)
    with ape.reverts("engine: only guardian or owner"):
        engine.set_paused(True, sender=trader)
    with ape.reverts("ownable_2step: caller is not the new owner"):
        engine.accept_ownership(sender=stranger)

    engine.accept_ownership(sender=trader)
    assert engine.owner() == trader.address
    assert engine.pending_owner() == ZERO_ADDRESS
    with ape.reverts("ownable: caller is not the owner"):
        engine.set_guardian(owner.address, sender=owner)
    engine.set_guardian(guardian.address, sender=trader)


def test_nothing_admin_works_after_renounce(system, owner, guardian, stranger):
    engine = system.engine
    engine.transfer_ownership(stranger.address, sender=owner)
    engine.renounce_ownership(sender=owner)
    assert engine.owner() == ZERO_ADDRESS
    assert engine.pending_owner() == ZERO_ADDRESS  # the pending transfer died with it
    with ape.reverts("ownable_2step: caller is not the new owner"):
        engine.accept_ownership(sender=stranger)
    m = engine.markets(ETH)
    params = engine.risk_params()
    for who in (owner, stranger):
        with ape.reverts("ownable: caller is not the owner"):
            engine.set_guardian(who.address, sender=who)
        with ape.reverts("ownable: caller is not the owner"):
            engine.set_risk_params(params, sender=who)
        with ape.reverts("ownable: caller is not the owner"):
            engine.set_market(ETH, m.oracle, m.imr, m.mmr, m.fee, m.window_cap, False, sender=who)
        with ape.reverts("ownable: caller is not the owner"):
            engine.transfer_ownership(who.address, sender=who)
        with ape.reverts("ownable: caller is not the owner"):
            engine.renounce_ownership(sender=who)
        with ape.reverts("engine: only guardian or owner"):
            engine.set_paused(True, sender=who)
    # by design the guardian keeps its (pause-only) power: documented, not a bug
    engine.set_paused(True, sender=guardian)
    assert engine.paused()
    assert engine.markets(ETH) == m


# --- 8. token returning False -----------------------------------------------------------------


def _false_token_engine(project, deployer, guardian):
    token = deployer.deploy(project.MockFalseToken, "False USD", "xUSD", 18)
    pool = deployer.deploy(project.LiquidityPool, token.address, "margincall LP", "mcLP")
    fund_ = deployer.deploy(project.InsuranceFund, token.address, pool.address)
    engine = deployer.deploy(
        project.MarginEngine,
        token.address,
        pool.address,
        fund_.address,
        guardian.address,
        deployer.deploy(project.MarginParams).address,
        deployer.address,  # no order book: this engine never trades
    )
    return token, engine


def test_false_returning_token_credits_nothing(project, deployer, guardian, trader):
    token, engine = _false_token_engine(project, deployer, guardian)
    token.mint(trader.address, 100 * WAD, sender=trader)
    token.approve(engine.address, 50 * WAD, sender=trader)

    with ape.reverts("engine: transfer failed"):
        engine.deposit(60 * WAD, sender=trader)  # allowance too low: returns False
    token.approve(engine.address, MAX_UINT, sender=trader)
    with ape.reverts("engine: transfer failed"):
        engine.deposit(100 * WAD + 1, sender=trader)  # balance too low: returns False
    assert engine.collateral_of(trader.address) == 0
    assert token.balanceOf(trader.address) == 100 * WAD
    assert token.balanceOf(engine.address) == 0
    engine.deposit(100 * WAD, sender=trader)
    engine.withdraw(40 * WAD, sender=trader)
    assert engine.collateral_of(trader.address) == 60 * WAD
    assert token.balanceOf(engine.address) == 60 * WAD


def test_false_returning_outgoing_transfer_reverts_withdraw(project, deployer, guardian, trader):
    """The engine's own balance always covers what it sends, so only its check of the returned
    flag (`_push`) stops a withdrawal whose transfer returned False and moved nothing."""
    token, engine = _false_token_engine(project, deployer, guardian)
    token.mint(trader.address, 110 * WAD, sender=trader)
    token.approve(engine.address, MAX_UINT, sender=trader)
    engine.deposit(100 * WAD, sender=trader)
    token.set_fail(True, sender=trader)
    assert token.balanceOf(engine.address) == 100 * WAD  # enough: the flag alone fails it

    with ape.reverts("engine: transfer failed"):
        engine.withdraw(40 * WAD, sender=trader)
    assert engine.account_info(trader.address) == (100 * WAD, 0, 0, 0, 0)
    assert token.balanceOf(engine.address) == 100 * WAD
    assert token.balanceOf(trader.address) == 10 * WAD
    # incoming too: the flag, not the balance-difference check ("token transfer short")
    with ape.reverts("engine: transfer failed"):
        engine.deposit(10 * WAD, sender=trader)
    assert engine.collateral_of(trader.address) == 100 * WAD
    assert token.balanceOf(trader.address) == 10 * WAD

    token.set_fail(False, sender=trader)
    engine.withdraw(40 * WAD, sender=trader)
    assert engine.collateral_of(trader.address) == 60 * WAD
    assert token.balanceOf(engine.address) == 60 * WAD
    assert token.balanceOf(trader.address) == 50 * WAD


# --- 9. donations -----------------------------------------------------------------------------


def test_donation_to_pool_moves_only_lp_share_price(system, lp, trader, stranger):
    engine, pool, token, unit = system.engine, system.pool, system.token, system.unit
    distressed(system, trader)
    system.set_price(ETH, 1_900)
    status0 = engine.check_margin(trader.address)
    state0, oi0 = snapshot(system, trader), engine.open_interest()
    shares = pool.balanceOf(lp.address)
    lp_assets0 = pool.convertToAssets(shares)
    donation = 10_000 * unit

    token.mint(stranger.address, donation, sender=stranger)
    token.transfer(pool.address, donation, sender=stranger)

    assert engine.check_margin(trader.address) == status0
    assert snapshot(system, trader) == state0
    assert engine.open_interest() == oi0
    assert pool.balanceOf(lp.address) == shares
    gain = pool.convertToAssets(shares) - lp_assets0
    assert donation - 1 <= gain <= donation  # the one virtual share keeps a sliver
    assert_intact(system, [trader])


def test_donations_to_the_fund_move_nothing_else_and_cover_bad_debt(
    system, lp, trader, other_trader, stranger, keeper
):
    """The fund's balance is its token balance: a plain transfer counts as much as `donate`
    (which alone logs a Donation). Neither moves the LP share price, a collateral ledger or
    an account's margin; a later bad debt of 204 is covered in full only with both (150 + 100
    from an empty fund), and the keeper of the bankrupt account is paid from the rest."""
    engine, pool, fund_, token, unit = (
        system.engine,
        system.pool,
        system.fund,
        system.token,
        system.unit,
    )
    holders = [trader, other_trader, stranger, keeper]
    distressed(system, trader)
    deposit(system, other_trader, 300 * unit)
    assert fund_.fund_balance() == token.balanceOf(fund_.address) == 0
    one_share = 10 ** pool.decimals()
    share_price0, assets0 = pool.convertToAssets(one_share), pool.totalAssets()
    collateral0 = [engine.collateral_of(h.address) for h in holders]
    status0, oi0 = engine.check_margin(trader.address), engine.open_interest()

    token.mint(stranger.address, 150 * unit, sender=stranger)
    tx = token.transfer(fund_.address, 150 * unit, sender=stranger)
    assert tx.decode_logs(fund_.Donation) == []
    assert fund_.fund_balance() == 150 * unit
    fund(system, stranger, 100 * unit, spender=fund_)
    with ape.reverts("fund: zero amount"):
        fund_.donate(0, sender=stranger)
    log = one(fund_.donate(100 * unit, sender=stranger), fund_.Donation)
    assert (log.donor, log.amount, log.balance_after) == (stranger.address, 100 * unit, 250 * unit)
    assert fund_.fund_balance() == token.balanceOf(fund_.address) == 250 * unit
    assert token.balanceOf(stranger.address) == 0

    assert pool.convertToAssets(one_share) == share_price0
    assert pool.totalAssets() == assets0
    assert [engine.collateral_of(h.address) for h in holders] == collateral0
    assert engine.check_margin(trader.address) == status0
    assert engine.open_interest() == oi0
    assert_intact(system, holders)

    # bankrupt at 1,700: equity 996 - 1,200 = -204
    system.set_price(ETH, 1_700)
    st = engine.check_margin(trader.address)
    assert st.state == State.BANKRUPT and st.equity == -204 * WAD
    collateral = engine.collateral_of(trader.address)
    assert collateral == 996 * unit
    pool_balance0, keeper_accrued = token.balanceOf(pool.address), engine.claimable(keeper)
    pool_credit0 = engine.claimable(pool.address)
    supply = pool.totalSupply()
    assert engine.claimable(fund_.address) == 0  # nothing of the fund's to sweep first

    tx = engine.liquidate(trader.address, sender=keeper)
    liq = one(tx, engine.Liquidation)
    assert (liq.state, liq.full_close, liq.collateral) == (State.BANKRUPT, True, 0)
    # the deficit is the negative equity plus the keeper's min_keeper_reward (1 token)
    assert liq.keeper_reward == unit
    bad = one(tx, engine.BadDebt)
    assert (bad.amount, bad.paid_by_fund, bad.socialised) == (205 * unit, 205 * unit, 0)
    covered = one(tx, fund_.DeficitCovered)
    assert (covered.account, covered.requested, covered.paid, covered.balance_after) == (
        trader.address,
        205 * unit,
        205 * unit,
        45 * unit,
    )
    assert fund_.fund_balance() == 45 * unit
    assert engine.claimable(keeper) == keeper_accrued + unit
    # the pool got the whole loss (996 + 204): the fund's 205 in tokens, the collateral less
    # the keeper's reward (995) as the engine's credit; the LPs lose nothing to the bad debt
    assert token.balanceOf(pool.address) == pool_balance0 + 205 * unit
    assert engine.claimable(pool.address) == pool_credit0 + 995 * unit
    assert pool.totalSupply() == supply
    assert pool.convertToAssets(one_share) == one_share * (assets0 + 1_200 * unit + 1) // (
        supply + 10**6
    )
    assert engine.account_info(trader.address)[:2] == (0, 0)
    assert [engine.collateral_of(h.address) for h in holders[1:]] == collateral0[1:]
    assert_intact(system, holders)


def test_donation_to_engine_credits_nobody(system, trader, stranger):
    engine, token, unit = system.engine, system.token, system.unit
    deposit(system, trader, 100 * unit)
    token.mint(stranger.address, 7 * unit, sender=stranger)
    token.transfer(engine.address, 7 * unit, sender=stranger)
    assert engine.collateral_of(trader.address) == 100 * unit
    assert engine.collateral_of(stranger.address) == 0
    # the balance-difference check of deposit is not fooled by the surplus
    tx = deposit(system, trader, 5 * unit)
    assert one(tx, engine.Deposit).collateral == 105 * unit
    engine.withdraw(105 * unit, sender=trader)
    assert engine.collateral_of(trader.address) == 0
    assert token.balanceOf(engine.address) == 7 * unit


def _fresh_pool(project, deployer, guardian):
    token = deployer.deploy(project.MockERC20, "Mock USD", "mUSD", 18)
    pool = deployer.deploy(project.LiquidityPool, token.address, "margincall LP", "mcLP")
    fund_ = deployer.deploy(project.InsuranceFund, token.address, pool.address)
    engine = deployer.deploy(
        project.MarginEngine,
        token.address,
        pool.address,
        fund_.address,
        guardian.address,
        deployer.deploy(project.MarginParams).address,
        deployer.address,  # no order book: this engine never trades
    )
    pool.set_engine(engine.address, sender=deployer)
    return token, pool


def _inflation(project, deployer, guardian, attacker, victim, donation: int, deposit_: int):
    """First LP deposits 1 wei and donates `donation`; the second deposits `deposit_`.
    Returns (victim's shares, victim's redeemable assets, attacker's redeemable assets)."""
    token, pool = _fresh_pool(project, deployer, guardian)
    for who, amount in ((attacker, donation + 1), (victim, deposit_)):
        token.mint(who.address, amount, sender=who)
        token.approve(pool.address, MAX_UINT, sender=who)
    pool.deposit(1, attacker.address, sender=attacker)
    token.transfer(pool.address, donation, sender=attacker)
    pool.deposit(deposit_, victim.address, sender=victim)
    victim_shares = pool.balanceOf(victim.address)
    victim_assets = pool.convertToAssets(victim_shares)
    attacker_assets = pool.convertToAssets(pool.balanceOf(attacker.address))
    return victim_shares, victim_assets, attacker_assets


def test_inflation_attack_loses_the_second_lp_at_most_a_millionth(
    project, deployer, guardian, stranger, other_trader
):
    """The first LP deposits 1 wei and donates as much as (or twice) the second LP deposits.
    With the pool's decimals offset of 6 (10**6 virtual shares per token unit) the second LP
    still gets shares worth all but about a millionth of its deposit; the attacker loses
    its donation. (With offset 0 the second LP lost 33%, or everything at twice the size.)"""
    v = 1_000 * WAD
    for donation in (v, 2 * v):
        shares, victim_assets, attacker_assets = _inflation(
            project, deployer, guardian, stranger, other_trader, donation, v
        )
        assert shares > 0
        assert victim_assets >= v - v // 10**5
        assert attacker_assets < donation + 1


def test_inflation_attack_second_lp_keeps_its_deposit(
    project, deployer, guardian, stranger, other_trader
):
    v = 1_000 * WAD
    _, victim_assets, _ = _inflation(project, deployer, guardian, stranger, other_trader, v, v)
    assert victim_assets >= v * 99 // 100
