"""`margincall.keeper.audit` without a chain: eligibility judged at the next block's timestamp,
delays that stop at the account's previous action, and misses judged per action kind.

`History` is a fake engine and provider: per block, a timestamp and each account's
`check_margins` status after that block.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from margincall.constants import WAD, State
from margincall.keeper.audit import (
    Action,
    action_delays,
    eligible,
    eligible_at,
    next_timestamp,
    unattended,
)

GRACE = 300
ACCOUNT = "0x" + "01" * 20


def status(state: State, **kw: Any) -> SimpleNamespace:
    fields = {
        "account": ACCOUNT,
        "state": int(state),
        "next_tranche_time": 0,
        "call_deadline": 0,
        "ratio": WAD,
        "priced": True,
    }
    fields.update(kw)
    return SimpleNamespace(**fields)


class History:
    """blocks[b] = (timestamp, {account: status after block b})."""

    def __init__(self, blocks: dict[int, tuple[int, dict[str, SimpleNamespace]]]):
        self.blocks = blocks
        self.reads: list[int] = []
        self.web3 = SimpleNamespace(eth=self)

    # provider
    def get_block(self, b: int) -> dict:
        if b not in self.blocks:
            raise LookupError(f"block {b} not found")
        return {"timestamp": self.blocks[b][0]}

    # the engine's SDK client
    def statuses(self, accounts: list[str], block_id: int) -> list[SimpleNamespace]:
        self.reads.append(block_id)
        states = self.blocks[block_id][1]
        return [states.get(a, status(State.HEALTHY, account=a)) for a in accounts]

    def risk_params(self) -> SimpleNamespace:
        return SimpleNamespace(grace_period=GRACE)


def chain(statuses: list[SimpleNamespace], t0: int = 1_000, dt: int = 12) -> History:
    return History({b: (t0 + b * dt, {ACCOUNT: s}) for b, s in enumerate(statuses)})


# --- eligibility ------------------------------------------------------------------------


def test_eligibility_is_judged_at_the_timestamp_the_next_block_carries():
    tranche = status(State.LIQUIDATABLE, next_tranche_time=1_010)
    assert not eligible(tranche, "liquidation", 1_009)
    assert eligible(tranche, "liquidation", 1_010)
    called = status(State.CALLED, call_deadline=1_010)
    assert not eligible(called, "liquidation", 1_009, GRACE)
    assert eligible(called, "liquidation", 1_010, GRACE)  # deadline <= t(b+1)
    assert not eligible(called, "call", 1_010, GRACE)
    assert eligible(called, "call", 1_010 + GRACE, GRACE)  # the call has lapsed
    # an unpriced leg is valued at its worst case: liquidated, never called
    assert eligible(status(State.CRITICAL, priced=False), "liquidation", 1_010)
    assert not eligible(status(State.CALLABLE, priced=False), "call", 1_010)


def test_eligible_at_uses_the_next_block_and_estimates_it_before_it_is_mined():
    # block 0 at t=1000, block 1 at t=1012: deadline 1005 passes between them
    h = chain([status(State.CALLED, call_deadline=1_005)] * 2)
    assert eligible_at(h, h, [ACCOUNT], 0, {}, GRACE) == {ACCOUNT}
    # block 2 is not mined: t(2) is estimated as t(1) + (t(1) - t(0)) = 1024
    assert next_timestamp(h, 1, {}) == 1_024
    h2 = chain([status(State.CALLED, call_deadline=1_020)] * 2)
    assert eligible_at(h2, h2, [ACCOUNT], 1, {}, GRACE) == {ACCOUNT}
    assert eligible_at(h2, h2, [ACCOUNT], 0, {}, GRACE) == set()


# --- delays ---------------------------------------------------------------------------------


def test_a_tranche_due_between_two_blocks_counts_from_the_block_before():
    # after block 2 (t=1024) the tranche is due at 1030 <= t(3) = 1036: eligible after 2
    due = status(State.LIQUIDATABLE, next_tranche_time=1_030)
    h = chain([status(State.HEALTHY), status(State.HEALTHY), due, due, due])
    act = Action("liquidation", ACCOUNT, 4, "keeper")
    assert action_delays(h, h, [act])[act] == 2
    act3 = Action("liquidation", ACCOUNT, 3, "keeper")
    assert action_delays(h, h, [act3])[act3] == 1


def test_the_delay_walk_stops_at_the_previous_action_on_the_account():
    crit = status(State.CRITICAL, ratio=WAD // 3)
    h = chain([crit] * 6)  # eligible after every block
    tranche = Action("liquidation", ACCOUNT, 4, "keeper")
    close = Action("liquidation", ACCOUNT, 5, "keeper", full_close=True)
    other = Action("liquidation", "0x" + "02" * 20, 5, "keeper")
    delays = action_delays(h, h, [tranche, close, other], grace_period=GRACE)
    assert delays[close] == 1  # not 2: the walk does not pass the tranche of block 4
    assert delays[tranche] == 4  # eligible since block 0
    assert delays[other] == 0  # never eligible before its own block


def test_a_call_and_a_liquidation_are_measured_separately():
    callable_ = status(State.CALLABLE, ratio=11 * WAD // 10)
    liq = status(State.LIQUIDATABLE, ratio=9 * WAD // 10)
    h = chain([callable_, callable_, liq, liq])
    act = Action("liquidation", ACCOUNT, 3, "keeper")
    assert action_delays(h, h, [act], grace_period=GRACE)[act] == 1


# --- misses ---------------------------------------------------------------------------------


def test_unattended_flags_an_account_left_eligible_for_the_same_action():
    liq = status(State.LIQUIDATABLE, ratio=9 * WAD // 10)
    h = chain([status(State.HEALTHY), liq, liq, liq, status(State.HEALTHY)])
    acted_late = [Action("liquidation", ACCOUNT, 3, "keeper")]
    assert unattended(h, h, [ACCOUNT], 0, 3, acted_late) == [(ACCOUNT, 1)]
    acted_in_time = [Action("liquidation", ACCOUNT, 2, "keeper")]
    assert unattended(h, h, [ACCOUNT], 0, 2, acted_in_time) == []


def test_unattended_does_not_flag_a_call_overtaken_by_a_price_in_the_next_block():
    # callable after block 1; a price update in block 2, ordered before the keeper's call,
    # makes it liquidatable: the call could not succeed in block 2, the liquidation is new
    callable_ = status(State.CALLABLE, ratio=11 * WAD // 10)
    liq = status(State.LIQUIDATABLE, ratio=9 * WAD // 10)
    h = chain([status(State.HEALTHY), callable_, liq, status(State.HEALTHY)])
    actions = [Action("liquidation", ACCOUNT, 3, "keeper")]
    assert unattended(h, h, [ACCOUNT], 0, 3, actions) == []


@pytest.mark.parametrize("lookback", [1, 3])
def test_the_walk_is_bounded_by_the_lookback(lookback):
    crit = status(State.CRITICAL, ratio=WAD // 3)
    h = chain([crit] * 10)
    act = Action("liquidation", ACCOUNT, 9, "keeper")
    assert action_delays(h, h, [act], lookback=lookback, grace_period=GRACE)[act] == lookback
