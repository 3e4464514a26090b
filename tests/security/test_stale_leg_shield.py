"""Security test: the stale-leg shield (issue 14; SECURITY.md, docs/design.md "Unpriced legs").

The attack: a trader adds a tiny position in a market whose feed goes stale and rides a large
ETH position down. Before the fix, `liquidate` needed every price of the account, so the stale
leg shielded the ETH position: `liquidate_many` skipped the account, which ended BANKRUPT with
bad debt, while an identical account without the tiny leg was closed cleanly. Now the unpriced
leg is valued at its worst case (`OracleAdapter.worst_price`: the last answer moved against the
holder by 2% per heartbeat of age), stays open, and the priced legs are liquidated as usual.

Markets of the shared `system` (heartbeat 30 days, adapter bounds [1 wei, 1e12]): 0 ETH-USD at
2,000 (mmr 5%), 2 SOL-USD at 150 (mmr 10%). Both accounts hold 1,000 tokens and 4 ETH long
opened at 2,000; the shielded one also 0.1 SOL long (15 of notional). With the default
critical_ratio 1, ETH at 1,830 puts both below ratio 1: one liquidation closes ETH in full.
"""

from __future__ import annotations

import ape
import pytest

from margincall.constants import WAD, State
from tests.utils.helpers import (
    assert_conserved,
    deposit,
    held,
    open_position,
    travel,
)

ETH, SOL = 0, 2
MONTH = 30 * 86_400


@pytest.fixture(scope="module")
def shielded(accounts):
    return accounts[8]


@pytest.fixture(scope="module", autouse=True)
def _actors_first(owner, guardian, keeper, trader, other_trader, stranger, shielded):
    """Builds the actors before any test, so Ape's isolation never rebases."""


def one(tx, event):
    logs = tx.decode_logs(event)
    assert len(logs) == 1, f"expected one {event.name}, got {len(logs)}"
    return logs[0]


def open_pair(system, plain, shielded):
    for who in (plain, shielded):
        deposit(system, who, 1_000)
        open_position(system, who, ETH, 4.0)
    open_position(system, shielded, SOL, 0.1)


def go_stale(system, chain, price: float = 150.0) -> int:
    """SOL's feed stops answering: its last round is one heartbeat and an hour old."""
    old = chain.blocks.head.timestamp - MONTH - 3_600
    system.feeds[SOL].set_round(system.feed_answer(SOL, price), old, old, sender=system.owner)
    assert system.oracles[SOL].reason() == "oracle: stale price"
    return old


def open_interest_of(system, who_all) -> int:
    total = 0
    for who in who_all:
        for m in range(3):
            total += abs(system.engine.position(who.address, m)[1])
    return total


def test_stale_leg_does_not_shield_a_crashing_account(
    system, chain, trader, shielded, keeper, stranger
):
    engine = system.engine
    open_pair(system, trader, shielded)
    go_stale(system, chain)
    sol_before = engine.position(shielded.address, SOL)
    system.set_price(ETH, 1_830)

    tx = engine.liquidate_many([trader.address, shielded.address], sender=keeper)

    liqs = tx.decode_logs(engine.Liquidation)
    assert [e.account for e in liqs] == [trader.address, shielded.address]
    assert all(e.full_close for e in liqs)
    assert not tx.decode_logs(engine.BadDebt)
    assert engine.position(trader.address, ETH) == (0, 0)
    assert engine.position(shielded.address, ETH) == (0, 0)
    # the unpriced leg stays open, untouched
    assert engine.position(shielded.address, SOL) == sol_before

    # the crash goes on: nothing of the shielded account rides it
    system.set_price(ETH, 1_700)
    travel(chain, 120)
    tx = engine.liquidate_many([trader.address, shielded.address], sender=keeper)
    assert not tx.decode_logs(engine.Liquidation)
    # an account left with only unpriced legs has nothing to close: refused, no reward
    with ape.reverts("oracle: stale price"):
        engine.liquidate(shielded.address, sender=keeper)

    # the feed answers again: the account is healthy, its SOL leg as it was
    system.set_price(SOL, 150)
    assert engine.check_margin(shielded.address).state == State.HEALTHY
    assert engine.open_interest() == open_interest_of(system, [trader, shielded])
    assert_conserved(system, [trader, shielded, keeper, stranger])


def test_keeper_scan_and_preview_value_the_unpriced_leg_at_its_worst_case(
    system, chain, trader, shielded, keeper
):
    engine = system.engine
    open_pair(system, trader, shielded)
    go_stale(system, chain)
    # the stale leg's worst case: the last answer less 2% (one whole heartbeat of age)
    assert system.oracles[SOL].worst_price() == (147 * WAD, 153 * WAD, False)
    system.set_price(ETH, 1_830)
    statuses = system.lens.check_margins([trader.address, shielded.address])
    assert statuses[0].priced and statuses[0].state == State.CRITICAL
    # the keeper's scan shows the shielded account too, valued at the worst case
    assert not statuses[1].priced and statuses[1].state == State.CRITICAL
    preview = system.lens.preview_liquidation(shielded.address)
    assert preview.liquidatable and preview.full_close
    assert dict(zip(preview.market_ids, preview.closed_sizes, strict=True)) == {
        ETH: 4 * WAD,
        SOL: 0,
    }
    # the engine's own view keeps needing every price
    with ape.reverts("oracle: stale price"):
        engine.check_margin(shielded.address)
    liq = one(engine.liquidate(shielded.address, sender=keeper), engine.Liquidation)
    assert (liq.closed_notional, liq.keeper_reward, liq.equity_after, liq.ratio_after) == (
        preview.closed_notional,
        preview.keeper_reward,
        preview.equity_after,
        preview.ratio_after,
    )


def test_bankrupt_shielded_account_books_its_bad_debt_when_the_leg_is_priced(
    system, chain, trader, shielded, keeper, stranger
):
    """ETH gaps to 1,700: both accounts are BANKRUPT. The plain one books its deficit at
    once; the shielded one has ETH closed too, but its deficit (and the keeper's minimum
    reward) is carried into the open SOL leg's open notional: no bad debt while a leg is
    unpriced. When SOL is priced again the account is closed and the same deficit booked."""
    engine = system.engine
    open_pair(system, trader, shielded)
    go_stale(system, chain)
    system.set_price(ETH, 1_700)
    keeper_before = held(system, keeper)
    sol_size, sol_cost = engine.position(shielded.address, SOL)

    tx = engine.liquidate_many([trader.address, shielded.address], sender=keeper)

    liqs = tx.decode_logs(engine.Liquidation)
    assert [e.account for e in liqs] == [trader.address, shielded.address]
    assert [e.state for e in liqs] == [State.BANKRUPT, State.BANKRUPT]
    debts = tx.decode_logs(engine.BadDebt)
    assert [e.account for e in debts] == [trader.address]
    assert engine.position(shielded.address, ETH) == (0, 0)
    assert engine.collateral_of(shielded.address) == 0
    size, cost = engine.position(shielded.address, SOL)
    carried = cost - sol_cost
    assert size == sol_size and carried > 0
    # both keepers' rewards: the minimum, twice
    assert held(system, keeper) - keeper_before == 2 * liqs[0].keeper_reward
    # the carried debt is the plain account's deficit less the SOL leg's cost (its fee
    # came out of the shielded account's collateral), to a token unit
    scale = 10 ** (18 - system.decimals)
    assert abs(carried - debts[0].amount * scale) <= 2 * 10**18
    assert engine.open_interest() == open_interest_of(system, [trader, shielded])
    assert_conserved(system, [trader, shielded, keeper, stranger])

    # SOL answers again: BANKRUPT (the carried debt), closed in full, the deficit booked now
    system.set_price(SOL, 150)
    assert engine.check_margin(shielded.address).state == State.BANKRUPT
    tx = engine.liquidate(shielded.address, sender=keeper)
    debt = one(tx, engine.BadDebt)
    assert debt.account == shielded.address
    assert debt.amount * scale >= carried
    assert engine.position(shielded.address, SOL) == (0, 0)
    assert engine.open_interest() == 0
    assert_conserved(system, [trader, shielded, keeper, stranger])
