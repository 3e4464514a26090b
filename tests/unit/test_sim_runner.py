"""The simulator's eligibility rule (src/margincall/sim/replay.py): the state after block b,
evaluated at the timestamp of block b + 1, with the engine's rules; no chain needed."""

from __future__ import annotations

from dataclasses import replace

import pytest

from margincall.constants import WAD, State
from margincall.keeper.logic import Snapshot
from margincall.math import RiskParams
from margincall.sim.replay import eligible_slot, first_slot_at

T0, BT = 1_000, 12  # slot k is at T0 + 12 k
PARAMS = RiskParams()  # grace period 3,600 s
RATIO = 11 * WAD // 10  # between maintenance (1) and the call ratio (1.25)


def at(slot: int) -> int:
    return T0 + slot * BT


def snap(state: State, **kw: int) -> Snapshot:
    return Snapshot("0xtrader", state, ratio=kw.pop("ratio", RATIO), **kw)


def test_first_slot_at_rounds_up_to_the_grid():
    assert first_slot_at(at(5), T0, BT) == 5
    assert first_slot_at(at(5) + 1, T0, BT) == 6
    assert first_slot_at(T0 - 100, T0, BT) == 0


@pytest.mark.parametrize("state", [State.CRITICAL, State.BANKRUPT])
def test_critical_and_bankrupt_accounts_close_in_the_next_block(state):
    assert eligible_slot(snap(state, ratio=WAD // 4), 7, T0, BT, PARAMS) == ("liquidate", 8)


def test_a_tranche_waits_for_its_interval_on_the_block_grid():
    ready = snap(State.LIQUIDATABLE, ratio=WAD * 9 // 10, next_tranche_time=at(8))
    assert eligible_slot(ready, 7, T0, BT, PARAMS) == ("liquidate", 8)
    waiting = snap(State.LIQUIDATABLE, ratio=WAD * 9 // 10, next_tranche_time=at(10) + 1)
    assert eligible_slot(waiting, 7, T0, BT, PARAMS) == ("liquidate", 11)


def test_a_called_account_is_liquidatable_in_the_block_that_reaches_its_deadline():
    # the deadline falls exactly on the next block: that block can liquidate (engine:
    # CALLED only while block.timestamp < deadline)
    due = snap(State.CALLED, call_deadline=at(8))
    assert eligible_slot(due, 7, T0, BT, PARAMS) == ("liquidate", 8)
    # a deadline between two blocks: the first block at or after it
    later = snap(State.CALLED, call_deadline=at(20) + 5)
    assert eligible_slot(later, 7, T0, BT, PARAMS) == ("liquidate", 21)


def test_a_lapsed_call_makes_the_account_callable_again():
    lapsed = snap(State.CALLED, call_deadline=at(8) - PARAMS.grace_period)
    assert eligible_slot(lapsed, 7, T0, BT, PARAMS) == ("call", 8)
    assert eligible_slot(lapsed, 7, T0, BT, PARAMS, calls=False) is None
    # liquidatable after the deadline (ratio >= 1) only while the call is live
    overdue = snap(
        State.LIQUIDATABLE, call_deadline=at(3), next_tranche_time=at(3) + PARAMS.grace_period
    )
    assert eligible_slot(overdue, 7, T0, BT, PARAMS)[0] == "call"


def test_callable_accounts_are_called_in_the_next_block_and_healthy_ones_wait():
    assert eligible_slot(snap(State.CALLABLE), 7, T0, BT, PARAMS) == ("call", 8)
    assert eligible_slot(snap(State.CALLABLE), 7, T0, BT, PARAMS, calls=False) is None
    assert eligible_slot(snap(State.HEALTHY, ratio=2 * WAD), 7, T0, BT, PARAMS) is None
    # an unpriced leg (issue 14, stale-leg shield): liquidated at its worst-case state, never
    # called (a call needs every price)
    unpriced = Snapshot("0xtrader", State.CRITICAL, priced=False)
    assert eligible_slot(unpriced, 7, T0, BT, PARAMS) == ("liquidate", 8)
    assert eligible_slot(replace(unpriced, state=State.CALLABLE), 7, T0, BT, PARAMS) is None
