"""Money flows of engine v2 (issues 14 and 15): what the engine keeps for others.

- keepers' rewards (tranches and margin calls) accrue in `claimable(keeper)` and leave with
  `claim_rewards(keeper)`; the fund's share of the penalties accrues too and anyone can sweep it
  (`claim_rewards(fund)`); the fund counts it in `fund_balance` meanwhile;
- the pool is settled lazily: trader losses and fees accrue as its credit
  (`claimable(pool)`), counted in its `totalAssets`; trader profit comes out of that credit
  first, then from `pool.pay`;
- the margin-call reward scales with the account's notional, so that a call on a large
  account is worth sending at 50 gwei (the closing of a BANKRUPT account is in
  test_liquidation.py: its keeper is paid also when the fund is empty).
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from margincall.constants import WAD, State
from margincall.keeper.config import KeeperConfig
from margincall.math import TRANCHE_PENALTY_DIV, scaled_call_reward
from margincall.math import call_reward as ref_call_reward
from tests.utils.helpers import (
    account_model,
    close_position,
    deposit,
    held,
    open_position,
    risk_params_model,
    scale_of,
    tokens,
)

ETH = 0
GWEI = 10**9


def _net(system, tx) -> int:
    """A settlement's change of the trader's collateral (token units): realised PnL less
    the trading fee, from its PositionChanged event (what `close_position` used to return)."""
    (changed,) = tx.decode_logs(system.engine.PositionChanged)
    return int(changed.realized_pnl) - int(changed.fee)


@pytest.fixture(scope="module", autouse=True)
def _actors_first(owner, guardian, keeper, rival_keeper, trader, other_trader, stranger):
    """Builds the actors before any test, so Ape's isolation never rebases."""


def one(tx, event):
    logs = tx.decode_logs(event)
    assert len(logs) == 1, f"expected one {event.name}, got {len(logs)}"
    return logs[0]


def test_tranche_accrues_keeper_reward_and_fund_share_without_token_transfers(
    system, trader, keeper, stranger, fund
):
    engine = system.engine
    deposit(system, trader, 1_000)
    open_position(system, trader, ETH, 4.0)
    system.set_price(ETH, 1_800)
    assert engine.check_margin(trader).state >= State.LIQUIDATABLE
    fund_balance = fund.fund_balance()

    tx = engine.liquidate(trader, sender=keeper)

    liq = one(tx, engine.Liquidation)
    assert liq.keeper_reward > 0 and liq.fund_fee > 0
    # no token moves to the keeper, the fund or the pool: all three accrue in the engine
    assert tx.decode_logs(system.token.Transfer) == []
    assert engine.claimable(keeper) == liq.keeper_reward
    assert engine.claimable(fund) == liq.fund_fee
    assert fund.fund_balance() == fund_balance + liq.fund_fee  # the fund counts its share

    # anyone sweeps the fund's share to it; the fund's assets do not change
    sweep = engine.claim_rewards(fund, sender=stranger)
    ev = one(sweep, engine.RewardsClaimed)
    assert (ev.keeper, ev.caller, ev.amount) == (fund.address, stranger.address, liq.fund_fee)
    assert engine.claimable(fund) == 0
    assert fund.fund_balance() == fund_balance + liq.fund_fee

    # the keeper claims its own; a second claim pays nothing and logs nothing
    before = system.token.balanceOf(keeper)
    assert engine.claim_rewards.call(keeper, sender=keeper) == liq.keeper_reward
    claim = engine.claim_rewards(keeper, sender=keeper)
    assert one(claim, engine.RewardsClaimed).amount == liq.keeper_reward
    assert system.token.balanceOf(keeper) - before == liq.keeper_reward
    again = engine.claim_rewards(keeper, sender=keeper)
    assert again.decode_logs(engine.RewardsClaimed) == []


def test_pool_is_settled_lazily_and_counts_its_credit_in_total_assets(
    system, trader, other_trader, stranger, pool
):
    engine = system.engine
    token = system.token
    balance, total = token.balanceOf(pool), pool.totalAssets()
    # a losing round trip: the loss and both fees accrue as the pool's credit
    deposit(system, trader, 1_000)
    open_position(system, trader, ETH, 2.0)
    fee = engine.claimable(pool)
    assert fee > 0  # the opening fee
    system.set_price(ETH, 1_900)
    close = close_position(system, trader, ETH, 1_800 * WAD)
    loss = -_net(system, close)
    assert loss > 0
    assert token.balanceOf(pool) == balance  # no token moved
    credit = engine.claimable(pool)
    assert credit == fee + loss
    assert pool.totalAssets() == total + credit  # share prices already count it

    # a winner is paid out of that credit first: no `pool.pay`, no ProfitPaid
    deposit(system, other_trader, 1_000)
    open_position(system, other_trader, ETH, 0.1)
    opened_credit = engine.claimable(pool)
    system.set_price(ETH, 1_950)
    win = close_position(system, other_trader, ETH, 1_900 * WAD)
    gain = _net(system, win)
    assert gain > 0
    assert win.decode_logs(pool.ProfitPaid) == []
    assert engine.claimable(pool) == opened_credit - gain
    assert token.balanceOf(pool) == balance

    # anyone moves the credit to the pool; its total assets do not change
    total = pool.totalAssets()
    credit = engine.claimable(pool)
    engine.claim_rewards(pool, sender=stranger)
    assert engine.claimable(pool) == 0
    assert token.balanceOf(pool) == balance + credit
    assert pool.totalAssets() == total


def test_margin_call_reward_scales_with_notional_and_pays_its_gas_at_50_gwei(
    system, chain, trader, other_trader, keeper
):
    """Issue 14: a margin call is worth sending at 50 gwei on a large account. The reward is
    the keeper's share of the penalty of the close_factor tranche it stands in for, at the
    tranche rate (a third of liquidation_penalty: 0.25 x 0.5% x 20% = 0.025% of the notional
    at the defaults), at least `call_reward`, at most `max_keeper_reward`.
    The gas is priced as the keeper bot prices it (`MARGINCALL_NATIVE_PER_TOKEN`, default
    0.0004 native coin per token: ETH at 2,500 tokens)."""
    engine = system.engine
    params, scale = risk_params_model(engine), scale_of(system)
    # the same leverage on a small and on a large account: 8x, CALLABLE at 1,860
    deposit(system, trader, 100)
    open_position(system, trader, ETH, 0.4)
    deposit(system, other_trader, 12_500)
    open_position(system, other_trader, ETH, 50.0)
    system.set_price(ETH, 1_860)
    small, large = account_model(system, trader), account_model(system, other_trader)
    expected = [ref_call_reward(a, params, scale) for a in (small, large)]
    assert expected[0] == params.call_reward // scale  # 744 of notional: the floor binds
    notional = 50 * 1_860 * WAD
    assert expected[1] == scaled_call_reward(notional, params) // scale > expected[0]

    rewards, gas = [], []
    for who in (trader, other_trader):
        assert engine.check_margin(who).state == State.CALLABLE
        tx = engine.margin_call(who, sender=keeper)
        rewards.append(one(tx, engine.MarginCall).reward)
        gas.append(tx.gas_used)
    assert rewards == expected
    # parked until each call ends (issue 14), then paid if the account ends it solvent
    assert engine.claimable(keeper) == 0
    assert [system.lens.call_reward_of(w)[1] for w in (trader, other_trader)] == rewards

    native_per_token = KeeperConfig.native_per_token
    assert native_per_token == Decimal("0.0004")

    def cost(gas_used: int) -> int:  # token units the gas costs at 50 gwei
        native = Decimal(gas_used * 50 * GWEI) / Decimal(10**18)
        return int(native / native_per_token * tokens(system, 1))

    # the flat reward does not pay a call at 50 gwei; the scaled one does, with the bot's
    # default 20% margin
    assert rewards[0] < cost(gas[0])
    assert rewards[1] * 10_000 >= cost(gas[1]) * KeeperConfig.margin_bps
    # the notional from which a call pays its gas: cost / 0.025%
    rate = params.liquidation_penalty // TRANCHE_PENALTY_DIV
    share = params.close_factor * rate * params.keeper_share // WAD**2
    break_even = cost(gas[1]) * scale * WAD // share
    assert break_even < notional


def test_bankrupt_batch_pays_each_keeper_reward_with_an_empty_fund(
    system, trader, other_trader, keeper, fund
):
    engine = system.engine
    assert fund.fund_balance() == 0
    for who in (trader, other_trader):
        deposit(system, who, 1_000)
        open_position(system, who, ETH, 4.0)
    system.set_price(ETH, 1_700)
    reward = risk_params_model(engine).min_keeper_reward // scale_of(system)
    before = held(system, keeper)

    tx = engine.liquidate_many([trader, other_trader], sender=keeper)

    liqs = tx.decode_logs(engine.Liquidation)
    assert [(e.state, e.keeper_reward) for e in liqs] == [(State.BANKRUPT, reward)] * 2
    bad = tx.decode_logs(engine.BadDebt)
    assert [e.paid_by_fund for e in bad] == [0, 0]
    assert all(e.socialised == e.amount for e in bad)
    assert held(system, keeper) - before == 2 * reward


def test_lp_redemption_collects_the_pool_credit_it_needs(system, chain, trader, lp, pool):
    engine, token = system.engine, system.token
    deposit(system, trader, 1_000)
    open_position(system, trader, ETH, 2.0)
    system.set_price(ETH, 1_900)
    close_position(system, trader, ETH, 1_800 * WAD)
    credit = engine.claimable(pool)
    assert credit > 0
    chain.pending_timestamp += 1_000  # past the LP's deposit cooldown
    chain.mine()
    shares = pool.maxRedeem(lp)
    assets = pool.previewRedeem(shares)
    balance = token.balanceOf(pool)
    assert assets > balance  # the redemption needs the credit
    wallet = token.balanceOf(lp)

    tx = pool.redeem(shares, lp, lp, sender=lp)

    [ev] = tx.decode_logs(engine.RewardsClaimed)
    assert (ev.keeper, ev.caller, ev.amount) == (pool.address, pool.address, credit)
    assert engine.claimable(pool) == 0
    assert token.balanceOf(lp) - wallet == assets
    assert token.balanceOf(pool) == balance + credit - assets
