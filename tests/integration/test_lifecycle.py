"""Whole margin-call lifecycles (PROTOCOL.md sections 2, 3 and 5).

Every scenario starts from one leveraged trader: 1,000 tokens of collateral and a 4 ETH long
opened at 2,000 (8,000 notional, 8x; the 5 bps fee leaves 996 tokens). At ETH = 1,860 the
account is CALLABLE (ratio ~1.17), after a call's deadline it is LIQUIDATABLE, and a price back
at 1,900 makes it HEALTHY again. Numbers are checked against the reference math of
`margincall.math`, and every scenario ends with a `FlowLedger` check: the engine holds exactly
the accounts' collateral, and the pool, the fund and the keepers received exactly what the
events say.
"""

from __future__ import annotations

import ape
import pytest
from eth_utils import to_checksum_address

from margincall.constants import WAD, PlanCode, State
from margincall.math import call_reward as ref_call_reward
from margincall.math import ratio as ref_ratio
from tests.utils.helpers import (
    FlowLedger,
    account_model,
    deposit,
    held,
    mint_and_approve,
    open_position,
    pin_next_tx,
    reference_status,
    reference_tranche,
    risk_params_model,
    scale_of,
    set_risk_params,
    settle_or_raise,
    tokens,
    trade,
    travel,
    travel_to,
    tx_time,
    wad,
)

ETH, BTC = 0, 1
ZERO_ADDRESS = to_checksum_address("0x" + "00" * 20)
CALLABLE_PRICE = 1_860.0  # ratio ~1.17: between 1 and call_ratio
RECOVERED_PRICE = 1_900.0  # ratio ~1.57: HEALTHY


@pytest.fixture
def ledger(system, trader, other_trader, keeper, rival_keeper):
    return FlowLedger(system, [trader, other_trader], watch=[keeper, rival_keeper])


@pytest.fixture
def leveraged(system, ledger, trader):
    """The trader's 8x ETH long, still HEALTHY at 2,000."""
    ledger.send(deposit, system, trader, 1_000)
    ledger.send(open_position, system, trader, ETH, 4.0)
    return trader


@pytest.fixture
def called(system, ledger, leveraged, keeper, chain):
    """The leveraged trader after ETH fell to 1,860 and the keeper called the account.

    Returns the call's deadline.
    """
    system.set_price(ETH, CALLABLE_PRICE)
    tx = ledger.send(system.engine.margin_call, leveraged, sender=keeper)
    return tx.decode_logs(system.engine.MarginCall)[0].deadline


def assert_status_matches_reference(system, who, now):
    """check_margin equals the reference `evaluate`/`classify`; returns the status."""
    st = system.engine.check_margin(who)
    account, v, state = reference_status(system, who, now)
    assert st.equity == v.equity
    assert st.maintenance == v.maintenance
    assert st.initial == v.initial
    assert st.ratio == v.ratio
    assert st.state == state
    assert st.collateral == account.collateral * scale_of(system)
    return st


def assert_no_call(system, who):
    assert system.engine.account_info(who)[2] == 0
    assert system.engine.check_margin(who).call_deadline == 0


# --- HEALTHY -> CALLABLE -> CALLED -----------------------------------------------------------


def test_price_fall_makes_account_callable_and_margin_call_records_deadline(
    system, chain, ledger, leveraged, keeper
):
    engine = system.engine
    now = pin_next_tx(chain)
    assert assert_status_matches_reference(system, leveraged, now).state == State.HEALTHY

    system.set_price(ETH, CALLABLE_PRICE)
    st = assert_status_matches_reference(system, leveraged, now)
    assert st.state == State.CALLABLE
    assert WAD <= st.ratio < engine.risk_params().call_ratio
    assert st.call_deadline == 0

    params = risk_params_model(engine)
    reward = ref_call_reward(account_model(system, leveraged), params, scale_of(system))
    keeper_before = held(system, keeper)
    tx = ledger.send(engine.margin_call, leveraged, sender=keeper)

    deadline = tx_time(chain, tx) + params.grace_period
    [ev] = tx.decode_logs(engine.MarginCall)
    equity_after = st.equity - reward * scale_of(system)
    assert ev.account == leveraged.address
    assert ev.caller == keeper.address
    assert ev.deadline == deadline
    assert ev.reward == reward > 0
    assert ev.equity == equity_after
    assert ev.maintenance == st.maintenance
    assert ev.ratio == ref_ratio(equity_after, st.maintenance)
    assert (
        ev.collateral
        == engine.collateral_of(leveraged)
        == st.collateral // scale_of(system) - reward
    )
    # issue 14: the reward is parked in the engine until the call ends, not paid yet
    assert held(system, keeper) - keeper_before == 0
    assert system.lens.call_reward_of(leveraged) == (keeper.address, reward)
    assert account_model(system, leveraged).parked_reward == reward

    st = assert_status_matches_reference(system, leveraged, tx_time(chain, tx))
    assert st.state == State.CALLED
    assert st.call_deadline == deadline
    assert engine.account_info(leveraged)[2] == deadline
    ledger.check()


def test_margin_call_on_healthy_account_reverts(system, ledger, leveraged, keeper, stranger):
    assert system.engine.check_margin(leveraged).state == State.HEALTHY
    with ape.reverts("engine: account not callable"):
        system.engine.margin_call(leveraged, sender=keeper)
    # an account without positions is HEALTHY too
    with ape.reverts("engine: account not callable"):
        system.engine.margin_call(stranger, sender=keeper)
    assert_no_call(system, leveraged)
    ledger.check()


def test_margin_call_twice_reverts_before_and_after_the_deadline(
    system, chain, ledger, called, keeper, rival_keeper, trader
):
    rival_before = system.token.balanceOf(rival_keeper)
    with ape.reverts("engine: account not callable"):
        system.engine.margin_call(trader, sender=rival_keeper)
    travel_to(chain, called)  # deadline passed: LIQUIDATABLE, not callable again
    assert system.engine.check_margin(trader).state == State.LIQUIDATABLE
    with ape.reverts("engine: account not callable"):
        system.engine.margin_call(trader, sender=rival_keeper)
    assert system.engine.account_info(trader)[2] == called
    assert system.token.balanceOf(rival_keeper) == rival_before
    ledger.check()


# --- CALLED: what the trader may and may not do ----------------------------------------------


def test_called_account_cannot_withdraw_or_add_exposure(system, ledger, called, trader):
    engine = system.engine
    price = system.oracles[ETH].price()
    with ape.reverts("engine: under margin call"):
        engine.withdraw(tokens(system, 1), sender=trader)
    with ape.reverts("engine: under margin call"):
        settle_or_raise(system, trade(system, trader, ETH, wad(0.1), price * 2))  # increase
    with ape.reverts("engine: under margin call"):
        # flip to a 4 ETH short
        settle_or_raise(system, trade(system, trader, ETH, -wad(8), price // 2))
    btc = system.oracles[BTC].price()
    with ape.reverts("engine: under margin call"):
        settle_or_raise(system, trade(system, trader, BTC, wad(0.001), btc * 2))  # new market
    assert engine.position(trader, ETH)[0] == wad(4)
    assert engine.check_margin(trader).state == State.CALLED
    ledger.check()


def test_called_account_may_reduce_and_the_call_stays_while_not_cured(
    system, chain, ledger, called, trader
):
    engine = system.engine
    price = system.oracles[ETH].price()
    tx = ledger.send(trade, system, trader, ETH, -wad(0.1), price // 2)
    [ev] = tx.decode_logs(engine.PositionChanged)
    assert ev.size == wad(3.9) and ev.size_delta == -wad(0.1)
    assert ev.realized_pnl == tokens(system, -14)  # 0.1 * (1,860 - 2,000)
    assert tx.decode_logs(engine.MarginCallCleared) == []
    st = assert_status_matches_reference(system, trader, tx_time(chain, tx))
    assert st.state == State.CALLED
    assert st.call_deadline == called
    ledger.check()


# --- cures -------------------------------------------------------------------------------------


def test_deposit_cures_call_and_anyone_may_deposit_for_the_trader(
    system, chain, ledger, called, trader, stranger
):
    engine = system.engine
    # not enough: the call stays
    tx = ledger.send(deposit, system, trader, 10)
    assert tx.decode_logs(engine.MarginCallCleared) == []
    assert engine.check_margin(trader).state == State.CALLED

    # a third party tops the trader up: the call clears
    before = engine.collateral_of(trader)
    amount = tokens(system, 100)
    mint_and_approve(system, stranger, 100)
    tx = ledger.send(engine.deposit, amount, trader, sender=stranger)
    [dep] = tx.decode_logs(engine.Deposit)
    assert dep.account == trader.address and dep.sender == stranger.address
    assert dep.amount == amount
    assert dep.collateral == before + amount == engine.collateral_of(trader)
    [cleared] = tx.decode_logs(engine.MarginCallCleared)
    st = assert_status_matches_reference(system, trader, tx_time(chain, tx))
    assert cleared.account == trader.address
    assert cleared.caller == stranger.address
    assert cleared.equity == st.equity
    assert cleared.maintenance == st.maintenance
    assert cleared.ratio == st.ratio >= engine.risk_params().call_ratio
    assert st.state == State.HEALTHY
    assert_no_call(system, trader)
    assert engine.account_info(trader)[4] == 0  # tranche count reset
    ledger.check()


def test_reduction_cures_call(system, chain, ledger, called, trader):
    engine = system.engine
    price = system.oracles[ETH].price()
    tx = ledger.send(trade, system, trader, ETH, -wad(0.5), price // 2)
    [pc] = tx.decode_logs(engine.PositionChanged)
    assert pc.size == wad(3.5)
    [cleared] = tx.decode_logs(engine.MarginCallCleared)
    st = assert_status_matches_reference(system, trader, tx_time(chain, tx))
    assert cleared.caller == system.book.address  # the fill is the book's call
    assert cleared.equity == st.equity and cleared.ratio == st.ratio
    assert st.ratio >= engine.risk_params().call_ratio
    assert st.state == State.HEALTHY
    assert_no_call(system, trader)
    ledger.check()


def test_clear_margin_call_by_anyone_after_price_recovery(
    system, chain, ledger, leveraged, keeper, stranger
):
    engine = system.engine
    with ape.reverts("engine: no margin call"):
        engine.clear_margin_call(leveraged, sender=stranger)
    system.set_price(ETH, CALLABLE_PRICE)
    ledger.send(engine.margin_call, leveraged, sender=keeper)
    with ape.reverts("engine: still under-margined"):
        engine.clear_margin_call(leveraged, sender=stranger)

    system.set_price(ETH, RECOVERED_PRICE)
    st = engine.check_margin(leveraged)
    assert st.state == State.HEALTHY and st.call_deadline != 0  # recorded until cleared
    tx = ledger.send(engine.clear_margin_call, leveraged, sender=stranger)
    [cleared] = tx.decode_logs(engine.MarginCallCleared)
    st = assert_status_matches_reference(system, leveraged, tx_time(chain, tx))
    assert cleared.account == leveraged.address
    assert cleared.caller == stranger.address
    assert (cleared.equity, cleared.maintenance, cleared.ratio) == (
        st.equity,
        st.maintenance,
        st.ratio,
    )
    assert_no_call(system, leveraged)
    with ape.reverts("engine: no margin call"):
        engine.clear_margin_call(leveraged, sender=stranger)
    ledger.check()


# --- uncured call --------------------------------------------------------------------------------


def test_uncured_call_is_liquidatable_only_from_its_deadline(
    system, chain, ledger, called, trader, keeper, fund
):
    engine = system.engine
    travel_to(chain, called - 1)
    assert engine.check_margin(trader).state == State.CALLED
    pin_next_tx(chain)  # one second before the deadline
    with ape.reverts("engine: account not liquidatable"):
        engine.liquidate(trader, sender=keeper)
    preview = system.lens.preview_liquidation(trader)
    assert not preview.liquidatable and preview.reason == PlanCode.NOT_LIQUIDATABLE

    now = pin_next_tx(chain, travel_to(chain, called))
    st = assert_status_matches_reference(system, trader, now)
    assert st.state == State.LIQUIDATABLE
    assert st.ratio >= WAD  # liquidatable because of the call, not the ratio
    ref = reference_tranche(system, trader, now)
    before = account_model(system, trader)
    keeper_before = held(system, keeper)
    fund_before = held(system, fund)

    tx = ledger.send(engine.liquidate, trader, sender=keeper)

    [liq] = tx.decode_logs(engine.Liquidation)
    assert liq.account == trader.address and liq.keeper == keeper.address
    assert liq.tranche == 1
    assert liq.state == State.LIQUIDATABLE
    assert not liq.full_close
    assert 0 < liq.fraction == ref.fraction <= engine.risk_params().close_factor
    assert liq.closed_notional == ref.closed_notional
    assert (liq.penalty, liq.keeper_reward, liq.fund_fee) == (
        ref.penalty,
        ref.keeper_reward,
        ref.fund_fee,
    )
    assert liq.collateral == ref.collateral_after == engine.collateral_of(trader)
    assert (liq.equity_after, liq.ratio_after) == (ref.equity_after, ref.ratio_after)
    assert tx.return_value == ref.closed_notional

    # pro rata: the position shrank by the planned size, at the oracle price
    [pc] = tx.decode_logs(engine.PositionChanged)
    closed = ref.closed_sizes[0]
    assert closed == before.positions[0].size * liq.fraction // WAD
    assert pc.size_delta == -closed
    assert pc.size == before.positions[0].size - closed == engine.position(trader, ETH)[0]
    assert pc.price == system.oracles[ETH].price()

    # a tranche at ratio >= 1 also pays the caller (here the same keeper) its parked reward
    [paid] = tx.decode_logs(engine.CallRewardPaid)
    assert (paid.account, paid.caller) == (trader.address, keeper.address) and paid.amount > 0
    assert system.lens.call_reward_of(trader) == (ZERO_ADDRESS, 0)
    assert held(system, keeper) - keeper_before == liq.keeper_reward + paid.amount
    assert liq.keeper_reward > 0
    assert held(system, fund) - fund_before == liq.fund_fee > 0
    assert liq.penalty == liq.keeper_reward + liq.fund_fee
    # the tranche aimed at call_ratio; the call is cleared exactly when it got there
    # (test_liquidation.py::test_restoring_tranche_reaches_call_ratio_and_clears_call)
    restored = liq.ratio_after >= engine.risk_params().call_ratio
    assert len(tx.decode_logs(engine.MarginCallCleared)) == int(restored)
    assert engine.account_info(trader)[2] == (0 if restored else called)
    ledger.check()


def test_lapsed_call_makes_account_callable_again_not_liquidatable(
    system, chain, ledger, called, trader, keeper
):
    engine = system.engine
    grace = engine.risk_params().grace_period
    # still enforceable during one grace period after the deadline
    now = travel_to(chain, called + grace - 1)
    st = assert_status_matches_reference(system, trader, now)
    assert st.state == State.LIQUIDATABLE and st.call_deadline == called
    assert system.lens.preview_liquidation(trader).liquidatable

    now = travel_to(chain, called + grace)
    st = assert_status_matches_reference(system, trader, now)
    assert st.state == State.CALLABLE
    assert st.call_deadline == 0
    with ape.reverts("engine: account not liquidatable"):
        engine.liquidate(trader, sender=keeper)
    assert system.lens.preview_liquidation(trader).reason == PlanCode.NOT_LIQUIDATABLE

    # a fresh notice is needed, with a fresh deadline
    tx = ledger.send(engine.margin_call, trader, sender=keeper)
    [ev] = tx.decode_logs(engine.MarginCall)
    assert ev.deadline == tx_time(chain, tx) + grace > called
    assert engine.check_margin(trader).state == State.CALLED
    ledger.check()


# --- a call clears itself (PROTOCOL.md section 2, issue 14) -----------------------------------


def test_a_call_that_recovered_without_a_transaction_needs_a_fresh_notice(
    system, chain, ledger, called, trader, keeper, rival_keeper
):
    """Called at 1,860; ETH back at 1,900 (HEALTHY) before the deadline with no transaction
    to the engine; after the deadline back at 1,860 (ratio ~1.17, under call_ratio): the call
    has cleared itself, so the account is CALLABLE, not liquidatable, until a fresh call and a
    fresh grace period (on e53bbbe it was liquidated at once, without a new notice)."""
    engine = system.engine
    grace = engine.risk_params().grace_period
    _, first = system.lens.call_reward_of(trader)
    travel_to(chain, called - grace // 2)
    system.set_price(ETH, RECOVERED_PRICE)  # the feed moves, nobody tells the engine
    assert engine.check_margin(trader).state == State.HEALTHY
    travel_to(chain, called + 60)
    system.set_price(ETH, CALLABLE_PRICE)
    now = pin_next_tx(chain)
    st = assert_status_matches_reference(system, trader, now)
    assert st.state == State.CALLABLE and WAD <= st.ratio < engine.risk_params().call_ratio
    assert st.call_deadline == 0  # the cleared call shows no deadline
    assert system.lens.check_margins([trader])[0].state == State.CALLABLE
    preview = system.lens.preview_liquidation(trader)
    assert not preview.liquidatable and preview.reason == PlanCode.NOT_LIQUIDATABLE
    with ape.reverts("engine: account not liquidatable"):
        engine.liquidate(trader, sender=keeper)
    assert engine.liquidate_many([trader], sender=keeper).return_value == 0

    # a fresh notice: it pays the first caller (the account stayed solvent), new deadline
    tx = ledger.send(engine.margin_call, trader, sender=rival_keeper)
    [paid] = tx.decode_logs(engine.CallRewardPaid)
    assert (paid.caller, paid.amount) == (keeper.address, first)
    [ev] = tx.decode_logs(engine.MarginCall)
    assert ev.deadline == tx_time(chain, tx) + grace
    assert engine.check_margin(trader).state == State.CALLED
    with ape.reverts("engine: account not liquidatable"):
        engine.liquidate(trader, sender=keeper)

    # no recovery since the fresh call: liquidatable after its deadline
    now = travel_to(chain, ev.deadline)
    st = assert_status_matches_reference(system, trader, now)
    assert st.state == State.LIQUIDATABLE and st.call_deadline == ev.deadline
    assert system.lens.preview_liquidation(trader).liquidatable
    tx = ledger.send(engine.liquidate, trader, sender=keeper)
    assert len(tx.decode_logs(engine.Liquidation)) == 1
    ledger.check()


def test_a_recovery_before_the_call_does_not_clear_it(system, chain, ledger, leveraged, keeper):
    """Only prices published since the call count: ETH at 1,900 before the call, at 1,860 from
    the call on: liquidatable after the deadline, as before."""
    engine = system.engine
    system.set_price(ETH, RECOVERED_PRICE)
    travel(chain, 60)
    system.set_price(ETH, CALLABLE_PRICE)
    travel(chain, 60)
    tx = ledger.send(engine.margin_call, leveraged, sender=keeper)
    [ev] = tx.decode_logs(engine.MarginCall)
    now = travel_to(chain, ev.deadline)
    st = assert_status_matches_reference(system, leveraged, now)
    assert st.state == State.LIQUIDATABLE
    ledger.send(engine.liquidate, leveraged, sender=keeper)
    ledger.check()


def test_a_recovery_beyond_the_scan_bound_is_not_seen(system, chain, ledger, called, trader):
    """`best_since` reads at most 32 rounds: a recovery followed by 32 rounds at 1,860 before
    the deadline is not seen (the account stays LIQUIDATABLE, as before the rule: no proof,
    bounded gas); one round fewer and it is."""
    engine = system.engine
    grace = engine.risk_params().grace_period
    travel_to(chain, called - grace + 10)
    system.set_price(ETH, RECOVERED_PRICE)
    for _ in range(31):
        travel(chain, 10)
        system.set_price(ETH, CALLABLE_PRICE)
    now = travel_to(chain, called)
    assert assert_status_matches_reference(system, trader, now).state == State.CALLABLE
    system.set_price(ETH, CALLABLE_PRICE)  # the 32nd: the recovery is now 33 rounds back
    now = pin_next_tx(chain)
    assert assert_status_matches_reference(system, trader, now).state == State.LIQUIDATABLE
    assert system.lens.preview_liquidation(trader).liquidatable


# --- the parked call reward (issue 14) ---------------------------------------------------------


def test_margin_call_parks_its_reward_and_credits_no_one(system, ledger, leveraged, keeper):
    engine = system.engine
    system.set_price(ETH, CALLABLE_PRICE)
    collateral = engine.collateral_of(leveraged)
    claimable = engine.claimable(keeper)
    tx = ledger.send(engine.margin_call, leveraged, sender=keeper)
    [ev] = tx.decode_logs(engine.MarginCall)
    assert ev.reward > 0
    # out of the collateral as before (every view sees the same equity), into no claimable
    assert engine.collateral_of(leveraged) == collateral - ev.reward
    assert engine.claimable(keeper) == claimable
    assert engine.parked_reward(leveraged) == (int(keeper.address, 16) << 96) | ev.reward
    assert system.lens.call_reward_of(leveraged) == (keeper.address, ev.reward)
    assert tx.decode_logs(engine.CallRewardPaid) == []
    ledger.check()


def test_cure_by_deposit_pays_the_parked_reward_to_the_caller(
    system, ledger, called, trader, keeper
):
    engine = system.engine
    _, reward = system.lens.call_reward_of(trader)
    assert reward > 0 and engine.claimable(keeper) == 0
    tx = ledger.send(deposit, system, trader, 200)
    assert len(tx.decode_logs(engine.MarginCallCleared)) == 1
    [paid] = tx.decode_logs(engine.CallRewardPaid)
    assert (paid.account, paid.caller, paid.amount) == (trader.address, keeper.address, reward)
    assert engine.claimable(keeper) == reward
    assert system.lens.call_reward_of(trader) == (ZERO_ADDRESS, 0)
    # the caller bits stay (the next call writes a nonzero word), the amount is gone
    assert engine.parked_reward(trader) == int(keeper.address, 16) << 96
    assert_no_call(system, trader)
    ledger.check()


@pytest.mark.parametrize("price", [1_800.0, 1_700.0], ids=["critical", "bankrupt"])
def test_close_below_ratio_one_returns_the_parked_reward_before_the_deficit(
    system, chain, ledger, called, trader, keeper, price
):
    """A called account that the market takes below ratio 1 is closed with its caller's
    reward back in its collateral: a CRITICAL close leaves exactly that much more collateral,
    a BANKRUPT close's deficit is smaller by exactly that much."""
    import dataclasses

    from margincall.math import plan_tranche

    engine = system.engine
    _, reward = system.lens.call_reward_of(trader)
    assert reward > 0
    system.set_price(ETH, price)
    now = pin_next_tx(chain)
    st = engine.check_margin(trader)
    expected = State.CRITICAL if price == 1_800.0 else State.BANKRUPT
    assert st.state == expected and st.ratio < WAD
    params = risk_params_model(engine)
    account = account_model(system, trader)
    assert account.parked_reward == reward
    ref = reference_tranche(system, trader, now)
    # the same close without the return: what the call's reward would have cost
    without = plan_tranche(
        dataclasses.replace(account, parked_reward=0), params, scale_of(system), now
    )
    assert ref.returned == reward and without.returned == 0
    preview = system.lens.preview_liquidation(trader)
    assert preview.deficit == ref.deficit
    keeper_claimable = engine.claimable(keeper)

    tx = ledger.send(engine.liquidate, trader, sender=keeper)

    [liq] = tx.decode_logs(engine.Liquidation)
    assert liq.state == expected and liq.full_close
    [back] = tx.decode_logs(engine.CallRewardReturned)
    assert (back.account, back.caller, back.amount) == (trader.address, keeper.address, reward)
    assert tx.decode_logs(engine.CallRewardPaid) == []
    # the keeper gets the liquidation's reward only: the call's is forfeited
    assert engine.claimable(keeper) - keeper_claimable == liq.keeper_reward
    assert system.lens.call_reward_of(trader) == (ZERO_ADDRESS, 0)
    if expected == State.BANKRUPT:
        [bad] = tx.decode_logs(engine.BadDebt)
        assert bad.amount == ref.deficit == without.deficit - reward > 0
    else:
        assert tx.decode_logs(engine.BadDebt) == []
        assert without.deficit == ref.deficit == 0
        assert liq.penalty == without.penalty
        assert liq.collateral == ref.collateral_after == without.collateral_after + reward
    ledger.check()


def test_second_call_after_a_cure_parks_anew(
    system, chain, ledger, called, trader, keeper, rival_keeper
):
    engine = system.engine
    _, first = system.lens.call_reward_of(trader)
    ledger.send(deposit, system, trader, 200)
    assert engine.claimable(keeper) == first
    system.set_price(ETH, 1_800.0)  # ratio ~1.09: CALLABLE again
    assert engine.check_margin(trader).state == State.CALLABLE
    tx = ledger.send(engine.margin_call, trader, sender=rival_keeper)
    [ev] = tx.decode_logs(engine.MarginCall)
    assert ev.reward > 0 and tx.decode_logs(engine.CallRewardPaid) == []
    assert system.lens.call_reward_of(trader) == (rival_keeper.address, ev.reward)
    assert engine.claimable(rival_keeper) == 0 and engine.claimable(keeper) == first
    ledger.check()


def test_a_lapsed_call_called_anew_pays_the_first_caller(
    system, chain, ledger, called, trader, keeper, rival_keeper
):
    engine = system.engine
    _, first = system.lens.call_reward_of(trader)
    travel_to(chain, called + engine.risk_params().grace_period)
    assert engine.check_margin(trader).state == State.CALLABLE
    tx = ledger.send(engine.margin_call, trader, sender=rival_keeper)
    [paid] = tx.decode_logs(engine.CallRewardPaid)
    assert (paid.caller, paid.amount) == (keeper.address, first)
    [ev] = tx.decode_logs(engine.MarginCall)
    assert system.lens.call_reward_of(trader) == (rival_keeper.address, ev.reward)
    assert engine.claimable(keeper) == first and engine.claimable(rival_keeper) == 0
    ledger.check()


# --- cross margin ----------------------------------------------------------------------------


def test_cross_margin_tranche_closes_same_fraction_of_every_position(
    system, chain, ledger, trader, keeper
):
    engine = system.engine
    set_risk_params(system, critical_ratio=WAD // 2)  # a tranche below ratio 1
    ledger.send(deposit, system, trader, 1_500)
    ledger.send(open_position, system, trader, ETH, 4.0)  # long 8,000
    ledger.send(open_position, system, trader, BTC, -0.1)  # short 6,000
    assert engine.check_margin(trader).state == State.HEALTHY
    system.set_price(ETH, 1_800)
    system.set_price(BTC, 61_000)  # both legs lose
    now = pin_next_tx(chain)
    st = assert_status_matches_reference(system, trader, now)
    assert st.state == State.LIQUIDATABLE and st.ratio < WAD
    ref = reference_tranche(system, trader, now)

    tx = ledger.send(engine.liquidate, trader, sender=keeper)

    [liq] = tx.decode_logs(engine.Liquidation)
    f = liq.fraction
    assert f == ref.fraction == engine.risk_params().close_factor
    changes = {ev.market_id: ev for ev in tx.decode_logs(engine.PositionChanged)}
    assert set(changes) == {ETH, BTC}
    for m, size in ((ETH, wad(4)), (BTC, -wad(0.1))):
        closed = -changes[m].size_delta
        assert closed == int(size * f / WAD) == size * f // WAD  # exact at 25%
        assert closed * WAD == size * f  # the same fraction of both
        assert changes[m].size == size - closed == engine.position(trader, m)[0]
        assert changes[m].fee == 0
        assert changes[m].collateral == liq.collateral
    assert [-changes[m].size_delta for m in (ETH, BTC)] == ref.closed_sizes
    assert liq.closed_notional == ref.closed_notional
    assert (liq.penalty, liq.keeper_reward, liq.fund_fee) == (
        ref.penalty,
        ref.keeper_reward,
        ref.fund_fee,
    )
    assert (liq.collateral, liq.ratio_after) == (ref.collateral_after, ref.ratio_after)
    assert liq.ratio_after > st.ratio
    ledger.check()


def test_lifecycle_called_then_tranches_then_full_close_conserves_tokens(
    system, chain, ledger, called, trader, other_trader, keeper, rival_keeper
):
    """A call left uncured, a partial tranche, a further crash and a critical full close
    (critical_ratio 0.5: the tranche below ratio 1 is the owner's gentler setting)."""
    engine = system.engine
    set_risk_params(system, critical_ratio=WAD // 2)
    # a second, healthy account shares the engine and must be untouched
    ledger.send(deposit, system, other_trader, 500)
    travel_to(chain, called)
    system.set_price(ETH, 1_830)  # ratio < 1 now; tranche capped at close_factor
    tx = ledger.send(engine.liquidate, trader, sender=keeper)
    [liq] = tx.decode_logs(engine.Liquidation)
    assert liq.fraction == engine.risk_params().close_factor and not liq.full_close
    assert engine.account_info(trader)[2] == called  # not restored: call stays

    system.set_price(ETH, 1_765)  # ratio ~0.42: CRITICAL
    now = pin_next_tx(chain)
    assert engine.check_margin(trader).state == State.CRITICAL
    ref = reference_tranche(system, trader, now)
    tx = ledger.send(engine.liquidate, trader, sender=rival_keeper)  # no interval: critical
    [liq] = tx.decode_logs(engine.Liquidation)
    assert liq.full_close and liq.tranche == 2
    assert liq.penalty == ref.penalty and liq.collateral == ref.collateral_after
    assert engine.position(trader, ETH) == (0, 0)
    info = engine.account_info(trader)
    assert info[1] == 0 and info[2] == 0 and info[4] == 0  # no markets, no call
    assert engine.check_margin(trader).state == State.HEALTHY
    assert engine.collateral_of(other_trader) == tokens(system, 500)

    # the trader can take the rest home
    rest = engine.collateral_of(trader)
    ledger.send(engine.withdraw, rest, sender=trader)
    assert engine.collateral_of(trader) == 0
    ledger.check()
