"""Issue 14's liquidation rules at the default parameters (docs/design.md, "Fast markets").

- Decisive below maintenance: `critical_ratio` defaults to 1, so an account whose ratio falls
  below 1 is CRITICAL and one `liquidate` closes all of it at the full penalty, as the
  liquidate-at-maintenance baseline would (no close-factor cap, no interval, no window cap).
- Gentle above it: a tranche in the call band (a called account past its deadline, ratio in
  [1, call_ratio)) pays a third of `liquidation_penalty`.
- Sliver tranche: a window-capped tranche under a quarter of the fraction it wants (or under
  `min_position_notional`) is refused as WINDOW_FULL and stamps no tranche interval.

The standard account is 1,000 tokens of collateral and a 4 ETH long opened at 2,000 (8x; the
fee leaves 996): at 1,860 its ratio is ~1.17 (call band), at 1,830 ~0.86 (below 1).
"""

from __future__ import annotations

import ape
import pytest

from margincall.constants import WAD, PlanCode, State
from margincall.math import TRANCHE_PENALTY_DIV, div_ceil, mul_up
from tests.utils.helpers import (
    deposit,
    open_position,
    pin_next_tx,
    reference_tranche,
    risk_params_model,
    scale_of,
    set_window_cap,
    travel,
    travel_to,
    tx_time,
)

ETH = 0


@pytest.fixture(scope="module", autouse=True)
def _actors_first(owner, guardian, keeper, rival_keeper, trader, other_trader, stranger):
    """Builds the actors before any test, so Ape's isolation never rebases."""


def open_account(system, who, collateral: float = 1_000, size: float = 4.0):
    deposit(system, who, collateral)
    open_position(system, who, ETH, size)
    return who


def one(tx, event):
    logs = tx.decode_logs(event)
    assert len(logs) == 1, f"expected one {event.name}, got {len(logs)}"
    return logs[0]


def call_and_wait(system, chain, keeper, *who):
    """Calls every account (in the call band) and travels to the last deadline."""
    deadline = 0
    for account in who:
        tx = system.engine.margin_call(account, sender=keeper)
        deadline = max(deadline, one(tx, system.engine.MarginCall).deadline)
    travel_to(chain, deadline)


def test_default_critical_ratio_is_one(system):
    assert system.engine.risk_params().critical_ratio == WAD


def test_ratio_below_one_closes_the_whole_account_at_once(system, chain, trader, keeper):
    engine = system.engine
    params = risk_params_model(engine)
    open_account(system, trader)
    system.set_price(ETH, 1_830)
    now = pin_next_tx(chain)
    st = engine.check_margin(trader)
    assert st.state == State.CRITICAL and params.critical_ratio // 2 < st.ratio < WAD
    ref = reference_tranche(system, trader, now)

    tx = engine.liquidate(trader, sender=keeper)

    liq = one(tx, engine.Liquidation)
    assert liq.full_close and liq.state == State.CRITICAL and liq.fraction == WAD
    assert (liq.closed_notional, liq.penalty) == (ref.closed_notional, ref.penalty)
    # the full penalty, as the baseline charges
    pen = div_ceil(mul_up(liq.closed_notional, params.liquidation_penalty), scale_of(system))
    assert liq.penalty == pen
    assert engine.position(trader, ETH) == (0, 0)


def test_call_band_tranche_pays_a_third_of_the_penalty(system, chain, trader, keeper):
    engine = system.engine
    params = risk_params_model(engine)
    open_account(system, trader)
    system.set_price(ETH, 1_860)
    call_and_wait(system, chain, keeper, trader)
    assert engine.check_margin(trader).state == State.LIQUIDATABLE
    ref = reference_tranche(system, trader, pin_next_tx(chain))

    tx = engine.liquidate(trader, sender=keeper)

    liq = one(tx, engine.Liquidation)
    assert not liq.full_close and liq.state == State.LIQUIDATABLE
    rate = params.liquidation_penalty // TRANCHE_PENALTY_DIV
    assert liq.penalty == div_ceil(mul_up(liq.closed_notional, rate), scale_of(system))
    assert liq.penalty < div_ceil(
        mul_up(liq.closed_notional, params.liquidation_penalty), scale_of(system)
    )
    assert (liq.fraction, liq.penalty, liq.keeper_reward, liq.ratio_after) == (
        ref.fraction,
        ref.penalty,
        ref.keeper_reward,
        ref.ratio_after,
    )
    assert liq.ratio_after >= params.call_ratio
    preview_after = system.lens.preview_liquidation(trader)
    assert not preview_after.liquidatable and preview_after.reason == PlanCode.NOT_LIQUIDATABLE


def test_sliver_tranche_is_refused_and_stamps_no_interval(
    system, chain, trader, other_trader, stranger, keeper
):
    """The attack (issue 14): a window-capped tranche leaves a few wei of window room; the
    attacker "liquidates" another account with a tranche of ~1e-14 of its size, which would
    stamp its `last_tranche` and hold its real tranche back by `tranche_interval`. Refused:
    WINDOW_FULL, no state written, and the real tranche goes through as soon as the window
    rolls over, without waiting an interval."""
    engine = system.engine
    params = risk_params_model(engine)
    open_account(system, trader)
    open_account(system, other_trader)
    system.set_price(ETH, 1_860)
    call_and_wait(system, chain, keeper, trader, other_trader)
    first = reference_tranche(system, trader, pin_next_tx(chain))
    # the window admits the first tranche and 10,000 wei of notional more
    set_window_cap(system, ETH, first.closed_notional + 10_000)
    tx = engine.liquidate(trader, sender=keeper)
    assert one(tx, engine.Liquidation).closed_notional == first.closed_notional
    before = engine.check_margin(other_trader)
    info_before = engine.account_info(other_trader)
    assert before.state == State.LIQUIDATABLE and info_before[3] == 0  # no tranche yet

    now = pin_next_tx(chain)
    assert reference_tranche(system, other_trader, now) is None
    preview = system.lens.preview_liquidation(other_trader)
    assert not preview.liquidatable and preview.reason == PlanCode.WINDOW_FULL
    with ape.reverts("engine: liquidation window cap reached"):
        engine.liquidate(other_trader, sender=stranger)
    assert engine.liquidate_many([other_trader], sender=stranger).return_value == 0
    assert engine.account_info(other_trader) == info_before  # last_tranche not stamped
    assert engine.check_margin(other_trader) == before

    # the window rolls over: the real tranche, at once (no interval was started)
    travel(chain, params.liquidation_window)
    tx = engine.liquidate(other_trader, sender=keeper)
    liq = one(tx, engine.Liquidation)
    assert liq.tranche == 1 and liq.ratio_after >= params.call_ratio
    assert engine.account_info(other_trader)[3] == tx_time(chain, tx)
