"""Phased liquidation (PROTOCOL.md sections 2 and 3, `liquidate`/`preview_liquidation` of 5).

The standard account is 1,000 tokens of collateral and a 4 ETH long opened at 2,000 (8x; the
fee leaves 996). With ETH at 1,830 its ratio is ~0.86 (LIQUIDATABLE without a call, tranche
capped at the 25% close factor), at 1,815 ~0.71 (two tranches needed), at 1,780 ~0.33
(CRITICAL) and at 1,700 its equity is -204 (BANKRUPT). Every tranche is compared with the
reference math of `margincall.math.plan_tranche`, built from on-chain state.

These tests exercise the tranche mechanics below ratio 1, so every test here runs with
`critical_ratio` 0.5 (the owner's gentler setting; the default 1 closes every account below
ratio 1 in full, tested in tests/integration/test_fast_market_rules.py).
"""

from __future__ import annotations

import dataclasses

import ape
import pytest

from margincall.constants import WAD, PlanCode, State
from margincall.math import TRANCHE_PENALTY_DIV, div_ceil, div_floor
from margincall.math import call_reward as ref_call_reward
from tests.utils.helpers import (
    FlowLedger,
    account_model,
    deposit,
    donate_to_fund,
    held,
    open_position,
    pin_next_tx,
    reference_status,
    reference_tranche,
    risk_params_model,
    scale_of,
    set_risk_params,
    set_window_cap,
    settle_or_raise,
    tokens,
    trade,
    travel,
    travel_to,
    tx_time,
    wad,
)

ETH, BTC, SOL = 0, 1, 2


@pytest.fixture(scope="module")
def third_trader(accounts):
    return accounts[8]


@pytest.fixture(scope="module")
def fourth_trader(accounts):
    return accounts[9]


@pytest.fixture(scope="module", autouse=True)
def _actors_first(
    owner, guardian, keeper, rival_keeper, trader, other_trader, stranger, third_trader
):
    """Builds the actors before any test, so Ape's isolation never rebases."""


@pytest.fixture(autouse=True)
def _tranches_below_one(system):
    """critical_ratio 0.5: accounts between 0.5 and 1 are LIQUIDATABLE (tranches)."""
    set_risk_params(system, critical_ratio=WAD // 2)


def open_account(system, who, collateral: float, market_id: int = ETH, size: float = 4.0):
    deposit(system, who, collateral)
    open_position(system, who, market_id, size)
    return who


def one(tx, event):
    logs = tx.decode_logs(event)
    assert len(logs) == 1, f"expected one {event.name}, got {len(logs)}"
    return logs[0]


def assert_matches_reference(liq, ref):
    """A Liquidation event equals the reference tranche, field by field."""
    assert liq.state == ref.state
    assert bool(liq.full_close) == ref.full
    assert liq.fraction == ref.fraction
    assert liq.closed_notional == ref.closed_notional
    assert liq.penalty == ref.penalty
    assert liq.keeper_reward == ref.keeper_reward
    assert liq.fund_fee == ref.fund_fee
    assert liq.collateral == ref.collateral_after
    assert liq.equity_after == ref.equity_after
    assert liq.ratio_after == ref.ratio_after


def closed_sizes(tx, engine):
    """market id -> size closed by the tranche, from the PositionChanged events."""
    return {ev.market_id: -ev.size_delta for ev in tx.decode_logs(engine.PositionChanged)}


# --- when liquidation starts ---------------------------------------------------------------


def test_ratio_below_one_liquidates_at_once_without_a_call(system, chain, trader, keeper, fund):
    engine = system.engine
    open_account(system, trader, 1_000)
    system.set_price(ETH, 1_830)
    now = pin_next_tx(chain)
    st = engine.check_margin(trader)
    assert st.state == State.LIQUIDATABLE and st.ratio < WAD
    assert engine.account_info(trader)[2] == 0  # no call recorded
    with ape.reverts("engine: account not callable"):
        engine.margin_call(trader, sender=keeper)
    ref = reference_tranche(system, trader, now)
    keeper_before = held(system, keeper)
    fund_before = held(system, fund)

    tx = engine.liquidate(trader, sender=keeper)

    liq = one(tx, engine.Liquidation)
    assert_matches_reference(liq, ref)
    assert liq.account == trader.address and liq.keeper == keeper.address and liq.tranche == 1
    assert liq.state == State.LIQUIDATABLE and not liq.full_close
    assert closed_sizes(tx, engine) == {ETH: ref.closed_sizes[0]}
    assert held(system, keeper) - keeper_before == liq.keeper_reward > 0
    assert held(system, fund) - fund_before == liq.fund_fee > 0
    assert tx.decode_logs(engine.MarginCall) == []
    assert engine.account_info(trader)[3] == tx_time(chain, tx)  # last tranche time


def test_tranche_interval_between_two_tranches(system, chain, trader, keeper):
    engine = system.engine
    params = risk_params_model(engine)
    open_account(system, trader, 1_000)
    system.set_price(ETH, 1_815)
    tx = engine.liquidate(trader, sender=keeper)
    t1 = tx_time(chain, tx)
    st = engine.check_margin(trader)
    assert st.state == State.LIQUIDATABLE  # still below 1 after a 25% tranche
    assert st.next_tranche_time == t1 + params.tranche_interval

    pin_next_tx(chain, t1)  # the same second
    with ape.reverts("engine: tranche interval not elapsed"):
        engine.liquidate(trader, sender=keeper)
    preview = system.lens.preview_liquidation(trader)
    assert not preview.liquidatable and preview.reason == PlanCode.TOO_SOON
    assert reference_tranche(system, trader, t1) is None

    pin_next_tx(chain, travel_to(chain, t1 + params.tranche_interval - 1))
    with ape.reverts("engine: tranche interval not elapsed"):
        engine.liquidate(trader, sender=keeper)

    now = pin_next_tx(chain, travel_to(chain, t1 + params.tranche_interval))
    ref = reference_tranche(system, trader, now)
    tx = engine.liquidate(trader, sender=keeper)
    assert tx_time(chain, tx) == now
    liq = one(tx, engine.Liquidation)
    assert liq.tranche == 2
    assert_matches_reference(liq, ref)
    assert engine.check_margin(trader).next_tranche_time == now + params.tranche_interval


# --- how much a tranche closes ----------------------------------------------------------------


@pytest.fixture
def past_deadline(system, chain, trader, keeper):
    """The standard account called at 1,860 (ratio ~1.17) and left uncured past the deadline."""
    open_account(system, trader, 1_000)
    system.set_price(ETH, 1_860)
    tx = system.engine.margin_call(trader, sender=keeper)
    deadline = one(tx, system.engine.MarginCall).deadline
    travel_to(chain, deadline)
    assert system.engine.check_margin(trader).state == State.LIQUIDATABLE
    return deadline


def test_restoring_tranche_is_the_smallest_fraction_for_call_ratio(
    system, chain, past_deadline, trader, keeper
):
    """The fraction is the reference's, below the close factor, and no smaller one would do."""
    engine = system.engine
    params = risk_params_model(engine)
    now = pin_next_tx(chain)
    ref = reference_tranche(system, trader, now)
    assert 0 < ref.fraction < params.close_factor  # the cap does not bind
    # one part in a million less falls short of call_ratio by far more than rounding
    smaller = dataclasses.replace(params, close_factor=ref.fraction - 10**12)
    short = reference_tranche(system, trader, now, params=smaller)
    assert short.fraction == ref.fraction - 10**12
    assert short.ratio_after < params.call_ratio - 10**11
    # at call_ratio up to a few token units of rounding (see the next test)
    assert ref.ratio_after > params.call_ratio - 10**10
    tx = engine.liquidate(trader, sender=keeper)
    liq = one(tx, engine.Liquidation)
    assert_matches_reference(liq, ref)


def test_restoring_tranche_reaches_call_ratio_and_clears_call(
    system, chain, request, decimals, past_deadline, trader, keeper
):
    engine = system.engine
    call_ratio = engine.risk_params().call_ratio
    tx = engine.liquidate(trader, sender=keeper)
    liq = one(tx, engine.Liquidation)
    assert liq.fraction < engine.risk_params().close_factor
    assert liq.ratio_after >= call_ratio
    cleared = one(tx, engine.MarginCallCleared)
    assert cleared.account == trader.address and cleared.caller == keeper.address
    assert (cleared.equity, cleared.ratio) == (liq.equity_after, liq.ratio_after)
    st = engine.check_margin(trader)
    assert st.state == State.HEALTHY and st.call_deadline == 0
    assert engine.account_info(trader)[2] == 0
    with ape.reverts("engine: account not liquidatable"):
        engine.liquidate(trader, sender=keeper)


def test_capped_tranche_closes_close_factor_and_improves_ratio(system, chain, trader, keeper):
    engine = system.engine
    params = risk_params_model(engine)
    open_account(system, trader, 1_000)
    system.set_price(ETH, 1_830)
    before = engine.check_margin(trader)
    # the smallest restoring fraction is above the cap
    uncapped = reference_tranche(
        system,
        trader,
        pin_next_tx(chain),
        params=dataclasses.replace(params, close_factor=WAD),
    )
    assert uncapped.fraction > params.close_factor
    tx = engine.liquidate(trader, sender=keeper)
    liq = one(tx, engine.Liquidation)
    assert liq.fraction == params.close_factor
    assert closed_sizes(tx, engine)[ETH] == wad(1)  # 25% of 4 ETH
    assert before.ratio < liq.ratio_after < params.call_ratio
    after = engine.check_margin(trader)
    assert after.ratio == liq.ratio_after and after.equity == liq.equity_after
    assert after.state == State.CALLABLE  # ratio >= 1 again, no call recorded


SCENARIOS = {
    # name: (collateral, [(market, size)], [(market, price)])
    "eth-long": (1_000, [(ETH, 4.0)], [(ETH, 1_815)]),
    "btc-short": (800, [(BTC, -0.1)], [(BTC, 65_000)]),
    "sol-long-mmr10": (1_000, [(SOL, 30.0)], [(SOL, 125)]),
    "cross-both-losing": (1_500, [(ETH, 4.0), (BTC, -0.1)], [(ETH, 1_790), (BTC, 61_500)]),
    # the BTC short gains: the pool pays that leg's profit into the engine
    "cross-hedged": (1_500, [(ETH, 4.0), (BTC, -0.1)], [(ETH, 1_760), (BTC, 59_000)]),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_tranche_never_makes_ratio_worse(system, chain, trader, keeper, scenario):
    engine = system.engine
    ledger = FlowLedger(system, [trader], watch=[keeper])
    collateral, positions, prices = SCENARIOS[scenario]
    ledger.send(deposit, system, trader, collateral)
    for m, size in positions:
        ledger.send(open_position, system, trader, m, size)
    for m, price in prices:
        system.set_price(m, price)
    tranches = 0
    while True:
        st = engine.check_margin(trader)
        if st.state < State.LIQUIDATABLE:
            break
        assert st.state == State.LIQUIDATABLE, "scenario should stay non-critical"
        ref = reference_tranche(system, trader, pin_next_tx(chain))
        tx = ledger.send(engine.liquidate, trader, sender=keeper)
        liq = one(tx, engine.Liquidation)
        assert_matches_reference(liq, ref)
        assert not liq.full_close
        assert liq.ratio_after >= st.ratio
        assert engine.check_margin(trader).ratio == liq.ratio_after
        tranches += 1
        travel(chain, engine.risk_params().tranche_interval)
    assert tranches >= 1
    ledger.check()


# --- full closes -------------------------------------------------------------------------------


def test_critical_account_closes_fully_even_right_after_a_tranche(system, chain, trader, keeper):
    engine = system.engine
    open_account(system, trader, 1_000)
    system.set_price(ETH, 1_815)
    tx = engine.liquidate(trader, sender=keeper)
    t1 = tx_time(chain, tx)
    system.set_price(ETH, 1_775)  # same second: the interval has not elapsed
    now = pin_next_tx(chain)
    assert now < t1 + engine.risk_params().tranche_interval
    st = engine.check_margin(trader)
    assert st.state == State.CRITICAL and 0 < st.ratio < engine.risk_params().critical_ratio
    ref = reference_tranche(system, trader, now)
    keeper_before = held(system, keeper)

    tx = engine.liquidate(trader, sender=keeper)

    liq = one(tx, engine.Liquidation)
    assert_matches_reference(liq, ref)
    assert liq.full_close and liq.state == State.CRITICAL and liq.fraction == WAD
    assert liq.tranche == 2 and liq.ratio_after == 2**256 - 1
    assert closed_sizes(tx, engine) == {ETH: wad(3)}
    assert engine.position(trader, ETH) == (0, 0)
    info = engine.account_info(trader)
    assert info[0] == liq.collateral > 0 and info[1] == 0
    assert held(system, keeper) - keeper_before == liq.keeper_reward
    assert tx.decode_logs(engine.BadDebt) == []
    with ape.reverts("engine: account not liquidatable"):
        engine.liquidate(trader, sender=keeper)


def test_critical_close_never_takes_more_than_the_account_holds(
    system, chain, trader, keeper, fund
):
    engine = system.engine
    ledger = FlowLedger(system, [trader], watch=[keeper])
    ledger.send(deposit, system, trader, 1_000)
    ledger.send(open_position, system, trader, ETH, 4.0)
    system.set_price(ETH, 1_760)  # equity 36 > 0, but the 1.5% penalty is 105.6
    st = engine.check_margin(trader)
    assert st.state == State.CRITICAL and st.equity > 0
    ref = reference_tranche(system, trader, pin_next_tx(chain))
    balance = engine.collateral_of(trader) - tokens(system, 960)  # after the realised loss
    tx = ledger.send(engine.liquidate, trader, sender=keeper)
    liq = one(tx, engine.Liquidation)
    assert_matches_reference(liq, ref)
    assert liq.penalty == balance == tokens(system, 36)  # capped at what is left
    assert liq.penalty < liq.closed_notional * engine.risk_params().liquidation_penalty // (
        WAD * scale_of(system)
    )
    assert liq.collateral == 0 and liq.equity_after == 0
    assert liq.keeper_reward + liq.fund_fee == liq.penalty
    assert tx.decode_logs(engine.BadDebt) == []
    ledger.check()


def test_tranche_that_would_leave_dust_closes_everything(system, chain, trader, keeper):
    engine = system.engine
    params = risk_params_model(engine)
    open_account(system, trader, 2, size=0.006)  # 12 tokens of notional
    system.set_price(ETH, 1_740)
    now = pin_next_tx(chain)
    account, v, state = reference_status(system, trader, now)
    st = engine.check_margin(trader)
    # not critical by ratio, only by what a tranche would leave
    assert params.critical_ratio <= st.ratio < WAD
    assert v.notional - v.notional * params.close_factor // WAD < params.min_position_notional
    assert st.state == state == State.CRITICAL
    preview = system.lens.preview_liquidation(trader)
    assert preview.liquidatable and preview.full_close and preview.fraction == WAD
    ref = reference_tranche(system, trader, now)

    tx = engine.liquidate(trader, sender=keeper)

    liq = one(tx, engine.Liquidation)
    assert_matches_reference(liq, ref)
    assert liq.full_close
    assert closed_sizes(tx, engine) == {ETH: wad(0.006)}
    assert engine.position(trader, ETH) == (0, 0)


@pytest.mark.parametrize("donation", [1_000, 100, 0], ids=["funded", "part-funded", "empty"])
def test_bankrupt_close_pays_the_keeper_its_minimum_reward_fund_first_then_pool(
    system, chain, trader, keeper, stranger, pool, fund, donation
):
    """Issue 14: closing a BANKRUPT account pays the keeper `min_keeper_reward` whatever the
    fund holds. The reward is part of the deficit: the engine keeps it out of the collateral
    it owes the pool, the fund covers the deficit as far as it can, the pool bears the rest."""
    engine = system.engine
    ledger = FlowLedger(system, [trader], watch=[keeper])
    ledger.send(deposit, system, trader, 1_000)
    ledger.send(open_position, system, trader, ETH, 4.0)
    if donation:
        ledger.send(donate_to_fund, system, stranger, donation)
    system.set_price(ETH, 1_700)
    now = pin_next_tx(chain)
    st = engine.check_margin(trader)
    assert st.state == State.BANKRUPT and st.equity < 0
    ref = reference_tranche(system, trader, now)
    loss = -st.equity // scale_of(system)  # whole here: prices are round
    reward = risk_params_model(engine).min_keeper_reward // scale_of(system)
    assert loss == tokens(system, 204) and reward == tokens(system, 1)
    deficit = loss + reward
    assert (ref.deficit, ref.keeper_reward) == (deficit, reward)
    preview = system.lens.preview_liquidation(trader)
    assert preview.full_close and preview.deficit == deficit and preview.penalty == 0
    assert preview.keeper_reward == reward
    collateral = engine.collateral_of(trader)
    pool_before, fund_before = held(system, pool), held(system, fund)
    keeper_before = held(system, keeper)

    tx = ledger.send(engine.liquidate, trader, sender=keeper)

    liq = one(tx, engine.Liquidation)
    assert_matches_reference(liq, ref)
    assert liq.state == State.BANKRUPT and liq.full_close
    assert (liq.penalty, liq.keeper_reward, liq.fund_fee, liq.collateral) == (0, reward, 0, 0)
    paid = min(deficit, tokens(system, donation))
    bad = one(tx, engine.BadDebt)
    assert bad.account == trader.address
    assert (bad.amount, bad.paid_by_fund, bad.socialised) == (deficit, paid, deficit - paid)
    # the keeper is paid in full, also by an empty fund (accrued, claimed later)
    assert held(system, keeper) - keeper_before == engine.claimable(keeper) == reward > 0
    assert fund_before - held(system, fund) == paid
    # the pool got the collateral less the keeper's reward, and what the fund paid: the
    # trader's whole loss (1,200) plus the keeper's reward, less what was socialised
    assert held(system, pool) - pool_before == collateral - reward + paid
    assert collateral + paid + bad.socialised == tokens(system, 1_200) + reward
    assert engine.account_info(trader)[:2] == (0, 0)
    assert engine.position(trader, ETH) == (0, 0)
    ledger.check()
    # and the keeper claims it
    before = system.token.balanceOf(keeper)
    claim = engine.claim_rewards(keeper, sender=keeper)
    [ev] = claim.decode_logs(engine.RewardsClaimed)
    assert (ev.keeper, ev.caller, ev.amount) == (keeper.address, keeper.address, reward)
    assert system.token.balanceOf(keeper) - before == reward and engine.claimable(keeper) == 0


# --- penalty split -----------------------------------------------------------------------------


PENALTY_CASES = {
    # name: (collateral, size, price, max_keeper_reward or None, which bound binds)
    "share": (1_000, 4.0, 1_830.123457, None),
    "min-reward": (300, 1.2, 1_830.123457, None),
    "capped-at-penalty": (2, 0.006, 1_740.123457, None),
    "max-reward": (1_000, 4.0, 1_830.123457, 3 * WAD // 2),
}


@pytest.mark.parametrize("case", list(PENALTY_CASES))
def test_penalty_split_between_keeper_and_fund(system, chain, trader, keeper, fund, case):
    engine = system.engine
    collateral, size, price, max_reward = PENALTY_CASES[case]
    if max_reward is not None:
        set_risk_params(system, max_keeper_reward=max_reward)
    params = risk_params_model(engine)
    scale = scale_of(system)
    open_account(system, trader, collateral, size=size)
    system.set_price(ETH, price)
    ref = reference_tranche(system, trader, pin_next_tx(chain))
    before = account_model(system, trader)
    keeper_before = held(system, keeper)
    fund_before = held(system, fund)

    tx = engine.liquidate(trader, sender=keeper)

    liq = one(tx, engine.Liquidation)
    assert_matches_reference(liq, ref)
    # a tranche pays a third of liquidation_penalty, a full close all of it
    pen = params.liquidation_penalty // (1 if liq.full_close else TRANCHE_PENALTY_DIV)
    n, share = liq.closed_notional, params.keeper_share
    exact_share = n * pen * share  # keeper share of the penalty, in wad * WAD**2
    lo, hi = params.min_keeper_reward // scale, params.max_keeper_reward // scale
    expected = min(max(n * pen // WAD * share // WAD // scale, lo), hi, liq.penalty)
    assert liq.keeper_reward == expected
    binds = {
        "share": lo < liq.keeper_reward < hi,
        "min-reward": liq.keeper_reward == lo < liq.penalty,
        "capped-at-penalty": liq.keeper_reward == liq.penalty < lo,
        "max-reward": liq.keeper_reward == hi,
    }
    assert binds[case]
    assert liq.fund_fee == liq.penalty - liq.keeper_reward
    # rounding: the penalty never rounds down (against the account) and the keeper's share
    # never rounds up (against the keeper)
    assert liq.penalty * scale * WAD >= n * pen
    if case == "share":
        assert liq.keeper_reward * scale * WAD * WAD <= exact_share
        assert (liq.keeper_reward + 1) * scale * WAD * WAD > exact_share
    # the account paid the realised loss rounded up, plus the penalty
    realized_wad = sum(
        div_floor(closed * p.price, WAD) - div_ceil(p.cost * closed, p.size)
        for closed, p in zip(ref.closed_sizes, before.positions, strict=True)
    )
    assert realized_wad < 0
    assert before.collateral - liq.collateral == liq.penalty + div_ceil(-realized_wad, scale)
    assert held(system, keeper) - keeper_before == liq.keeper_reward
    assert held(system, fund) - fund_before == liq.fund_fee


# --- races and batches -------------------------------------------------------------------------


def test_rival_keeper_loses_race_for_a_tranche_cleanly(system, chain, trader, keeper, rival_keeper):
    engine = system.engine
    open_account(system, trader, 1_000)
    system.set_price(ETH, 1_815)
    tx = engine.liquidate(trader, sender=keeper)
    one(tx, engine.Liquidation)
    size_after = engine.position(trader, ETH)
    info = engine.account_info(trader)
    rival_before = system.token.balanceOf(rival_keeper)

    pin_next_tx(chain, tx_time(chain, tx))  # the rival's transaction lands in the same second
    with ape.reverts("engine: tranche interval not elapsed"):
        engine.liquidate(trader, sender=rival_keeper)

    assert system.token.balanceOf(rival_keeper) == rival_before
    assert engine.position(trader, ETH) == size_after
    assert engine.account_info(trader) == info
    # batched, the rival's attempt is skipped rather than reverted
    tx = engine.liquidate_many([trader], sender=rival_keeper)
    assert tx.return_value == 0
    assert tx.decode_logs(engine.Liquidation) == []
    assert system.token.balanceOf(rival_keeper) == rival_before
    assert engine.position(trader, ETH) == size_after


def test_rival_keeper_loses_race_for_a_full_close_cleanly(
    system, chain, trader, keeper, rival_keeper
):
    engine = system.engine
    open_account(system, trader, 1_000)
    system.set_price(ETH, 1_780)
    tx = engine.liquidate(trader, sender=keeper)
    assert one(tx, engine.Liquidation).full_close
    rival_before = system.token.balanceOf(rival_keeper)
    with ape.reverts("engine: account not liquidatable"):
        engine.liquidate(trader, sender=rival_keeper)
    assert system.token.balanceOf(rival_keeper) == rival_before
    assert engine.position(trader, ETH) == (0, 0)


def test_window_capped_sliver_never_lowers_the_ratio(system, chain, trader, keeper, decimals):
    """A tranche shrunk by the window cap to a few wei of size would still pay a penalty
    rounded up to one token unit: with 6-decimal collateral that outweighs what it closes and
    the ratio would fall. Such a sliver waits for room (WINDOW_FULL) instead; with 18-decimal
    collateral it is refused as a sliver (under a quarter of the tranche it wants)."""
    engine = system.engine
    open_account(system, trader, 1_000)
    system.set_price(ETH, 1_830)
    set_window_cap(system, ETH, 12_000)  # 12,000 wei of notional: a sliver of 4 ETH
    before = engine.check_margin(trader)
    assert before.state == State.LIQUIDATABLE
    now = pin_next_tx(chain)
    assert reference_tranche(system, trader, now) is None
    preview = system.lens.preview_liquidation(trader)
    assert not preview.liquidatable and preview.reason == PlanCode.WINDOW_FULL
    with ape.reverts("engine: liquidation window cap reached"):
        engine.liquidate(trader, sender=keeper)
    assert engine.liquidate_many([trader], sender=keeper).return_value == 0
    assert engine.check_margin(trader) == before


def test_batch_listing_an_account_twice_acts_once_at_the_shortest_interval(
    system, chain, trader, keeper
):
    """`tranche_interval` is at least 1 s, so two tranches of one account never share a
    block: a batch that repeats an account runs one tranche, also at the shortest interval."""
    engine = system.engine
    set_risk_params(system, tranche_interval=1)
    open_account(system, trader, 1_000)
    system.set_price(ETH, 1_815)  # ratio ~0.71: one 25% tranche leaves it LIQUIDATABLE
    tx = engine.liquidate_many([trader] * 5, sender=keeper)
    assert tx.return_value == 1
    liq = one(tx, engine.Liquidation)
    assert not liq.full_close and liq.ratio_after < WAD  # a second tranche would be due...
    assert engine.check_margin(trader).state == State.LIQUIDATABLE  # ...one second later
    chain.pending_timestamp = tx_time(chain, tx) + 1
    assert one(engine.liquidate(trader, sender=keeper), engine.Liquidation).tranche == 2


def test_window_cap_shrinks_tranches_and_exempts_critical_accounts(
    system, chain, trader, other_trader, third_trader, stranger, keeper
):
    engine = system.engine
    window = engine.risk_params().liquidation_window
    for who in (trader, other_trader, third_trader):
        open_account(system, who, 1_000)  # ratio ~0.86 at 1,830: a 25% tranche each
    open_account(system, stranger, 820)  # ratio ~0.37 at 1,830: CRITICAL
    system.set_price(ETH, 1_830)
    # room for one full 25% tranche (1,830) and half of another (915)
    cap = wad(1_830 + 915)
    set_window_cap(system, ETH, cap)
    assert engine.markets(ETH).window_cap == cap

    now = pin_next_tx(chain)
    ref = reference_tranche(system, trader, now)
    tx = engine.liquidate(trader, sender=keeper)
    liq = one(tx, engine.Liquidation)
    assert_matches_reference(liq, ref)
    assert liq.fraction == engine.risk_params().close_factor  # not shrunk
    start = tx_time(chain, tx)
    assert engine.window_state(ETH) == (start, wad(1_830))

    ref = reference_tranche(system, other_trader, now)
    assert system.lens.preview_liquidation(other_trader).fraction == ref.fraction == WAD // 8
    tx = engine.liquidate(other_trader, sender=keeper)
    liq = one(tx, engine.Liquidation)
    assert_matches_reference(liq, ref)
    assert liq.closed_notional == wad(915)  # shrunk to the room left
    assert closed_sizes(tx, engine) == {ETH: wad(0.5)}
    assert engine.window_state(ETH) == (start, cap)

    with ape.reverts("engine: liquidation window cap reached"):
        engine.liquidate(third_trader, sender=keeper)
    preview = system.lens.preview_liquidation(third_trader)
    assert not preview.liquidatable and preview.reason == PlanCode.WINDOW_FULL
    assert reference_tranche(system, third_trader, now) is None

    # a CRITICAL account in the same market is exempt, and does not use the cap
    assert engine.check_margin(stranger).state == State.CRITICAL
    tx = engine.liquidate(stranger, sender=keeper)
    liq = one(tx, engine.Liquidation)
    assert liq.full_close and liq.state == State.CRITICAL
    assert engine.position(stranger, ETH) == (0, 0)
    assert engine.window_state(ETH) == (start, cap)

    pin_next_tx(chain, travel_to(chain, start + window - 1))
    with ape.reverts("engine: liquidation window cap reached"):
        engine.liquidate(third_trader, sender=keeper)
    now = pin_next_tx(chain, travel_to(chain, start + window))
    ref = reference_tranche(system, third_trader, now)
    tx = engine.liquidate(third_trader, sender=keeper)
    liq = one(tx, engine.Liquidation)
    assert_matches_reference(liq, ref)
    assert liq.fraction == engine.risk_params().close_factor
    assert engine.window_state(ETH) == (now, wad(1_830))


@pytest.fixture
def mixed_accounts(system, trader, other_trader, third_trader, fourth_trader, stranger):
    """Five accounts in five states once ETH is at `price` (set by the test)."""

    def make(price):
        collateral = {
            1_860: (1_000, 2_000, 1_000, 1_000, 930),  # callable, healthy, .., .., ratio < 1
            1_815: (1_000, 2_000, 1_000, 820, None),
        }[price]
        who = (trader, other_trader, third_trader, fourth_trader, stranger)
        for actor, c in zip(who, collateral, strict=True):
            if c is not None:
                open_account(system, actor, c)
        system.set_price(ETH, price)

    return make


def test_margin_call_many_calls_the_callable_and_skips_the_rest(
    system,
    chain,
    mixed_accounts,
    trader,
    other_trader,
    third_trader,
    fourth_trader,
    stranger,
    keeper,
    rival_keeper,
):
    engine = system.engine
    mixed_accounts(1_860)
    # trader and fourth_trader CALLABLE, other_trader HEALTHY, stranger LIQUIDATABLE
    # (ratio < 1: no call needed), third_trader already CALLED by the rival
    engine.margin_call(third_trader, sender=rival_keeper)
    third_deadline = engine.account_info(third_trader)[2]
    states = {
        a.address: engine.check_margin(a).state
        for a in (trader, other_trader, third_trader, fourth_trader, stranger)
    }
    assert states == {
        trader.address: State.CALLABLE,
        other_trader.address: State.HEALTHY,
        third_trader.address: State.CALLED,
        fourth_trader.address: State.CALLABLE,
        stranger.address: State.LIQUIDATABLE,
    }
    batch = [trader, other_trader, third_trader, stranger, fourth_trader, trader, keeper]
    assert engine.margin_call_many.call(batch, sender=keeper) == 2
    keeper_before = held(system, keeper)
    params, scale = risk_params_model(engine), scale_of(system)
    expected = {
        a.address: ref_call_reward(account_model(system, a), params, scale)
        for a in (trader, fourth_trader)
    }

    tx = engine.margin_call_many(batch, sender=keeper)

    assert tx.return_value == 2
    calls = tx.decode_logs(engine.MarginCall)
    assert [c.account for c in calls] == [trader.address, fourth_trader.address]
    deadline = tx_time(chain, tx) + engine.risk_params().grace_period
    assert all(c.caller == keeper.address and c.deadline == deadline for c in calls)
    assert {c.account: c.reward for c in calls} == expected  # scaled with each notional
    # each reward is parked for its account until the call ends (issue 14): none paid yet
    assert held(system, keeper) - keeper_before == 0
    payouts = [t for t in tx.decode_logs(system.token.Transfer) if t.receiver == keeper.address]
    assert payouts == []
    for c in calls:
        assert system.lens.call_reward_of(c.account) == (keeper.address, c.reward)
    assert engine.account_info(third_trader)[2] == third_deadline
    assert engine.account_info(other_trader)[2] == 0
    assert engine.account_info(stranger)[2] == 0


def test_liquidate_many_liquidates_the_eligible_and_skips_the_rest(
    system,
    chain,
    mixed_accounts,
    trader,
    other_trader,
    third_trader,
    fourth_trader,
    stranger,
    keeper,
    rival_keeper,
    pool,
    fund,
):
    engine = system.engine
    mixed_accounts(1_815)
    # trader LIQUIDATABLE, other_trader HEALTHY, fourth_trader CRITICAL, stranger without
    # positions, third_trader just liquidated by the rival (interval not elapsed)
    engine.liquidate(third_trader, sender=rival_keeper)
    third_position = engine.position(third_trader, ETH)
    batch = [trader, other_trader, third_trader, stranger, fourth_trader, trader, fourth_trader]
    statuses = system.lens.check_margins(batch)
    for st, who in zip(statuses, batch, strict=True):
        single = engine.check_margin(who)
        assert st == single and st.priced
    assert [st.state for st in statuses[:5]] == [
        State.LIQUIDATABLE,
        State.HEALTHY,
        State.LIQUIDATABLE,
        State.HEALTHY,
        State.CRITICAL,
    ]
    now = pin_next_tx(chain)
    refs = {who.address: reference_tranche(system, who, now) for who in (trader, fourth_trader)}
    # the rival's reward for third_trader's tranche is held by the engine too
    everyone = [trader, other_trader, third_trader, fourth_trader, stranger, rival_keeper]
    ledger = FlowLedger(system, everyone, watch=[keeper])
    keeper_accrued, fund_accrued = engine.claimable(keeper), engine.claimable(fund)

    tx = ledger.send(engine.liquidate_many, batch, sender=keeper)

    assert tx.return_value == 2
    liqs = tx.decode_logs(engine.Liquidation)
    assert [liq.account for liq in liqs] == [trader.address, fourth_trader.address]
    for liq in liqs:
        assert liq.keeper == keeper.address
        assert_matches_reference(liq, refs[liq.account])
    assert liqs[0].tranche == 1 and not liqs[0].full_close
    assert liqs[1].full_close
    # accrued, netted: no token transfer; one write each for the keeper and the fund
    transfers = tx.decode_logs(system.token.Transfer)
    assert [t for t in transfers if t.receiver in (keeper.address, fund.address)] == []
    assert engine.claimable(keeper) - keeper_accrued == sum(liq.keeper_reward for liq in liqs)
    assert engine.claimable(fund) - fund_accrued == sum(liq.fund_fee for liq in liqs)
    assert engine.position(third_trader, ETH) == third_position
    assert engine.position(trader, ETH)[0] == wad(3)
    assert engine.position(fourth_trader, ETH) == (0, 0)
    ledger.check()


# --- preview --------------------------------------------------------------------------------


@pytest.mark.parametrize("price", [1_830.0, 1_815.5, 1_780.0, 1_700.0])
def test_preview_liquidation_equals_what_liquidate_does(
    system, chain, trader, keeper, stranger, price
):
    engine = system.engine
    donate_to_fund(system, stranger, 500)
    open_account(system, trader, 1_000)
    open_position(system, trader, BTC, -0.01)  # a second market: two closed sizes
    system.set_price(ETH, price)
    preview = system.lens.preview_liquidation(trader)
    ref = reference_tranche(system, trader, pin_next_tx(chain))
    assert preview.liquidatable and preview.reason == PlanCode.OK
    assert list(preview.market_ids) == [ETH, BTC]
    assert list(preview.closed_sizes) == ref.closed_sizes
    assert preview.deficit == ref.deficit

    tx = engine.liquidate(trader, sender=keeper)

    liq = one(tx, engine.Liquidation)
    assert_matches_reference(liq, ref)
    assert preview.state == liq.state
    assert preview.full_close == liq.full_close
    assert preview.fraction == liq.fraction
    assert preview.closed_notional == liq.closed_notional == tx.return_value
    assert preview.penalty == liq.penalty
    assert preview.keeper_reward == liq.keeper_reward
    assert preview.fund_fee == liq.fund_fee
    assert preview.equity_after == liq.equity_after
    assert preview.ratio_after == liq.ratio_after
    assert closed_sizes(tx, engine) == dict(
        zip(preview.market_ids, preview.closed_sizes, strict=True)
    )
    bad = tx.decode_logs(engine.BadDebt)
    assert [b.amount for b in bad] == ([preview.deficit] if preview.deficit else [])


def test_preview_liquidation_reason_codes(system, chain, trader, keeper):
    engine = system.engine
    preview = system.lens.preview_liquidation(trader)  # no positions
    assert (preview.liquidatable, preview.reason) == (False, PlanCode.NOT_LIQUIDATABLE)
    open_account(system, trader, 1_000)
    preview = system.lens.preview_liquidation(trader)
    assert (preview.state, preview.reason) == (State.HEALTHY, PlanCode.NOT_LIQUIDATABLE)
    assert preview.penalty == 0 and list(preview.closed_sizes) == []
    system.set_price(ETH, 1_860)
    preview = system.lens.preview_liquidation(trader)
    assert (preview.state, preview.reason) == (State.CALLABLE, PlanCode.NOT_LIQUIDATABLE)
    engine.margin_call(trader, sender=keeper)
    preview = system.lens.preview_liquidation(trader)
    assert (preview.state, preview.reason) == (State.CALLED, PlanCode.NOT_LIQUIDATABLE)
    system.set_price(ETH, 1_815)
    assert system.lens.preview_liquidation(trader).reason == PlanCode.OK
    engine.liquidate(trader, sender=keeper)
    preview = system.lens.preview_liquidation(trader)
    assert (preview.state, preview.liquidatable) == (State.LIQUIDATABLE, False)
    assert preview.reason == PlanCode.TOO_SOON


# --- events ------------------------------------------------------------------------------------


def test_liquidation_position_changed_reports_realized_pnl_in_token_units_like_trades(
    system, chain, request, decimals, trader, keeper
):
    """`PositionChanged.realized_pnl` is in token units when a trade emits it; a liquidation
    must use the same unit, or an indexer rebuilding PnL from logs mixes units."""
    engine = system.engine
    open_account(system, trader, 1_000)
    system.set_price(ETH, 1_830)
    # a trade's realised PnL: token units
    tx = settle_or_raise(system, trade(system, trader, ETH, -wad(0.4), 0))
    assert one(tx, engine.PositionChanged).realized_pnl == tokens(system, -68)  # 0.4 * -170
    before = engine.collateral_of(trader)
    tx = engine.liquidate(trader, sender=keeper)
    liq = one(tx, engine.Liquidation)
    pc = one(tx, engine.PositionChanged)
    assert pc.realized_pnl == liq.collateral - before + liq.penalty
