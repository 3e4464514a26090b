"""The keeper's pure decision logic: no chain, plain pytest functions."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from margincall.constants import MAX_BATCH, WAD, State
from margincall.keeper_logic import (
    BlockClock,
    CostModel,
    Metrics,
    PositionBook,
    Snapshot,
    batches,
    can_call,
    can_liquidate,
    covers,
    decide,
    held_by_window,
    open_accounts,
    shard,
    shard_of,
    state_at,
    window_reopens,
)

NOW = 1_800_000_000
GWEI = 10**9
# 1 gwei, 100k gas per call and 200k per tranche, rewards well above the cost
COSTS = CostModel(
    gas_price=GWEI,
    gas_per_call=100_000,
    gas_per_tranche=200_000,
    call_reward=10**15,
    tranche_reward=10**15,
    margin_bps=12_000,
)


def addr(i: int) -> str:
    return "0x" + f"{i:040x}"


def snap(i: int, state: State, **kw) -> Snapshot:
    return Snapshot(account=addr(i), state=state, **kw)


# --- predicates ---------------------------------------------------------------------------


def test_covers_applies_the_margin_exactly():
    # cost 100k gas * 1 gwei = 1e14 wei; with a 1.2x margin the reward must be >= 1.2e14
    assert covers(12 * 10**13, 100_000, GWEI, 12_000)
    assert not covers(12 * 10**13 - 1, 100_000, GWEI, 12_000)
    assert covers(0, 100_000, 0, 12_000)  # free gas: anything pays


def test_critical_and_bankrupt_are_liquidated_even_when_unprofitable():
    broke = CostModel(gas_price=10**12, tranche_reward=0, call_reward=0)
    for state in (State.CRITICAL, State.BANKRUPT):
        s = snap(1, state, next_tranche_time=NOW + 1_000)
        assert can_liquidate(s, NOW, broke)


def test_liquidatable_waits_for_the_tranche_interval():
    s = snap(1, State.LIQUIDATABLE, next_tranche_time=NOW + 1)
    assert not can_liquidate(s, NOW, COSTS)
    assert can_liquidate(s, NOW + 1, COSTS)
    assert can_liquidate(snap(1, State.LIQUIDATABLE), NOW, COSTS)  # no tranche yet


def test_liquidatable_needs_the_reward_to_cover_gas_times_margin():
    s = snap(1, State.LIQUIDATABLE)
    cost = COSTS.gas_per_tranche * COSTS.gas_price
    assert can_liquidate(s, NOW, COSTS, reward=cost * 12 // 10)
    assert not can_liquidate(s, NOW, COSTS, reward=cost * 12 // 10 - 1)


def test_callable_needs_the_call_reward_to_cover_gas_times_margin():
    s = snap(1, State.CALLABLE)
    assert can_call(s, COSTS)
    assert not can_call(s, CostModel(gas_price=10**12, call_reward=10**15))
    assert not can_call(snap(1, State.CALLED), COSTS)
    assert not can_call(snap(1, State.HEALTHY), COSTS)


def test_unpriced_accounts_are_never_acted_on():
    for state in (State.CALLABLE, State.LIQUIDATABLE, State.CRITICAL, State.BANKRUPT):
        s = snap(1, state, priced=False)
        assert not can_call(s, COSTS) and not can_liquidate(s, NOW, COSTS)


def test_cost_model_rejects_negative_inputs():
    with pytest.raises(ValueError):
        CostModel(gas_price=-1)
    with pytest.raises(ValueError):
        CostModel(gas_price=1, margin_bps=-1)


# --- the next block's timestamp ---------------------------------------------------------
# The keeper scans block b (timestamp t_b) and decides for t_{b+1}, the timestamp its
# transactions carry: what the engine accepts in block b+1 is what it sends.

T_B, T_NEXT = NOW, NOW + 12  # the scanned block and the next one


def test_a_tranche_due_between_the_scanned_block_and_the_next_is_sent_now():
    s = snap(1, State.LIQUIDATABLE, next_tranche_time=T_B + 5)  # t_b < next <= t_{b+1}
    assert not can_liquidate(s, T_B, COSTS)  # what deciding at the scanned block did
    assert can_liquidate(s, T_NEXT, COSTS)
    assert decide([s], T_NEXT, COSTS).liquidated == [addr(1)]
    assert can_liquidate(snap(1, State.LIQUIDATABLE, next_tranche_time=T_NEXT), T_NEXT, COSTS)
    assert not can_liquidate(
        snap(1, State.LIQUIDATABLE, next_tranche_time=T_NEXT + 1), T_NEXT, COSTS
    )


def test_a_called_account_is_liquidatable_once_its_deadline_is_reached():
    called = snap(1, State.CALLED, call_deadline=T_B + 5, ratio=11 * WAD // 10)
    assert state_at(called, T_B) == State.CALLED
    assert state_at(called, T_B + 5) == State.LIQUIDATABLE  # deadline <= now
    assert not can_liquidate(called, T_B, COSTS)
    assert can_liquidate(called, T_NEXT, COSTS)
    d = decide([called], T_NEXT, COSTS)
    assert d.liquidated == [addr(1)] and d.calls == []
    # before the deadline: nothing to send, wake at the deadline
    early = decide([called], T_B, COSTS)
    assert early.empty and early.wake_at == T_B + 5


def test_an_expired_call_still_waits_for_the_tranche_interval_and_the_profit_rule():
    waits = snap(1, State.CALLED, call_deadline=T_B, next_tranche_time=T_NEXT + 30)
    assert not can_liquidate(waits, T_NEXT, COSTS)
    d = decide([waits], T_NEXT, COSTS)
    assert d.empty and d.wake_at == T_NEXT + 30
    expired = snap(2, State.CALLED, call_deadline=T_B)
    cost = COSTS.gas_per_tranche * COSTS.gas_price
    assert can_liquidate(expired, T_NEXT, COSTS, reward=cost * 12 // 10)
    assert not can_liquidate(expired, T_NEXT, COSTS, reward=cost * 12 // 10 - 1)
    assert not can_liquidate(snap(3, State.CALLED, call_deadline=T_B, priced=False), T_NEXT, COSTS)


def test_a_called_snapshot_without_deadline_is_left_alone():
    s = snap(1, State.CALLED, call_deadline=0)
    assert state_at(s, T_NEXT) == State.CALLED and not can_liquidate(s, T_NEXT, COSTS)


def test_a_lapsed_call_is_callable_again_when_the_grace_period_is_known():
    s = snap(1, State.CALLED, call_deadline=T_B)
    grace = 300
    assert state_at(s, T_B + grace - 1, grace) == State.LIQUIDATABLE
    assert state_at(s, T_B + grace, grace) == State.CALLABLE
    assert state_at(s, T_B + grace) == State.LIQUIDATABLE  # the keeper's view: one block on


def test_expired_calls_sort_with_the_liquidatable_accounts_by_ratio():
    snaps = [
        snap(1, State.LIQUIDATABLE, ratio=9 * WAD // 10),
        snap(2, State.CALLED, call_deadline=T_B, ratio=11 * WAD // 10),
        snap(3, State.CRITICAL, ratio=4 * WAD // 10),
    ]
    assert decide(snaps, T_NEXT, COSTS).liquidated == [addr(3), addr(1), addr(2)]


def test_block_clock_predicts_the_next_timestamp_from_the_median_interval():
    clock = BlockClock()
    assert clock.next_timestamp(T_B) == T_B + 1  # nothing seen: 1 s
    for n, t in [(10, 1_000), (11, 1_012), (12, 1_024), (13, 1_324), (14, 1_336)]:
        clock.observe(n, t)  # one 300 s jump among 12 s slots
    assert clock.interval() == 12
    assert clock.next_timestamp(1_336) == 1_348
    clock.observe(14, 9_999)  # a head seen twice changes nothing
    clock.observe(17, 1_372)  # three blocks skipped: 12 s each
    assert clock.interval() == 12


def test_block_clock_is_at_least_one_second_and_can_be_fixed():
    fast = BlockClock()
    for n in range(10):
        fast.observe(n, 1_000)  # sub-second blocks share a timestamp
    assert fast.interval() == 1
    fixed = BlockClock(fixed=12)
    fixed.observe(1, 100)
    fixed.observe(2, 101)
    assert fixed.next_timestamp(101) == 113
    short = BlockClock(window=3)
    for n in range(10):
        short.observe(n, 10 * n)
    assert len(short.heads) == 3
    with pytest.raises(ValueError):
        BlockClock(fixed=0)
    with pytest.raises(ValueError):
        BlockClock(window=1)


# --- liquidation window ------------------------------------------------------------------


def test_window_reopens_when_it_restarts_and_only_when_full():
    assert window_reopens(start=1_000, used=5, cap=10, window=300) is None
    assert window_reopens(start=1_000, used=10, cap=10, window=300) == 1_300


def test_accounts_in_a_full_window_are_held_back_but_critical_ones_are_not():
    markets = {addr(1): {0}, addr(2): {1}, addr(3): {0}, addr(4): {0, 1}, addr(5): {0}}
    snaps = [
        snap(1, State.LIQUIDATABLE),
        snap(2, State.LIQUIDATABLE),
        snap(3, State.CRITICAL),
        snap(4, State.CALLED, call_deadline=T_B),  # a tranche at T_NEXT
        snap(5, State.CALLABLE),
    ]
    full = {0: T_NEXT + 1}
    keep, held = held_by_window(snaps, T_NEXT, markets, full)
    assert [s.account for s in held] == [addr(1), addr(4)]
    assert [s.account for s in keep] == [addr(2), addr(3), addr(5)]
    keep, held = held_by_window(snaps, T_NEXT + 1, markets, full)  # the window restarted
    assert held == [] and len(keep) == 5


# --- decide ---------------------------------------------------------------------------------


def test_decide_sorts_each_state_into_its_action():
    snaps = [
        snap(1, State.HEALTHY),
        snap(2, State.CALLABLE, ratio=11 * WAD // 10),
        snap(3, State.CALLED, call_deadline=NOW + 600),
        snap(4, State.LIQUIDATABLE, ratio=7 * WAD // 10),
        snap(5, State.LIQUIDATABLE, next_tranche_time=NOW + 30),
        snap(6, State.CRITICAL, ratio=3 * WAD // 10),
        snap(7, State.BANKRUPT, ratio=0),
        snap(8, State.CALLABLE, ratio=WAD, priced=False),
    ]
    d = decide(snaps, NOW, COSTS)
    assert d.calls == [addr(2)]
    # most urgent first: BANKRUPT, CRITICAL, then LIQUIDATABLE
    assert d.liquidated == [addr(7), addr(6), addr(4)]
    # the earliest thing to wake up for: account 5's next tranche
    assert d.wake_at == NOW + 30
    assert not d.empty


def test_decide_wakes_at_the_call_deadline_when_nothing_else_waits():
    d = decide([snap(3, State.CALLED, call_deadline=NOW + 600)], NOW, COSTS)
    assert d.empty and d.wake_at == NOW + 600


def test_decide_uses_per_account_rewards_over_the_default():
    snaps = [snap(1, State.LIQUIDATABLE), snap(2, State.LIQUIDATABLE)]
    d = decide(snaps, NOW, COSTS, rewards={addr(1): 0})
    assert d.liquidated == [addr(2)]


def test_decide_orders_calls_and_liquidations_by_ratio_and_dedupes():
    snaps = [
        snap(1, State.CALLABLE, ratio=12 * WAD // 10),
        snap(2, State.CALLABLE, ratio=WAD),
        snap(1, State.CALLABLE, ratio=12 * WAD // 10),
        snap(3, State.LIQUIDATABLE, ratio=9 * WAD // 10),
        snap(4, State.LIQUIDATABLE, ratio=6 * WAD // 10),
    ]
    d = decide(snaps, NOW, COSTS)
    assert d.calls == [addr(2), addr(1)]
    assert d.liquidated == [addr(4), addr(3)]


def test_decide_splits_into_batches_of_max_batch():
    snaps = [snap(i, State.CRITICAL, ratio=i) for i in range(1, 2 * MAX_BATCH + 51)]
    d = decide(snaps, NOW, COSTS)
    assert [len(b) for b in d.liquidations] == [MAX_BATCH, MAX_BATCH, 50]
    assert d.liquidated == [addr(i) for i in range(1, 2 * MAX_BATCH + 51)]
    assert [len(b) for b in decide(snaps, NOW, COSTS, max_batch=120 // 2).liquidations] == [
        60,
        60,
        60,
        60,
        10,
    ]
    with pytest.raises(ValueError):
        decide(snaps, NOW, COSTS, max_batch=MAX_BATCH + 1)


def test_batches_rejects_a_non_positive_size():
    assert batches([], 3) == ()
    with pytest.raises(ValueError):
        batches([addr(1)], 0)


def test_snapshot_from_status_accepts_structs_and_dicts():
    status = SimpleNamespace(
        account=addr(9),
        state=3,
        next_tranche_time=NOW,
        call_deadline=0,
        ratio=WAD // 2,
        priced=True,
        equity=1,
    )
    s = Snapshot.from_status(status)
    assert s == Snapshot(addr(9), State.LIQUIDATABLE, NOW, 0, WAD // 2, True)
    assert Snapshot.from_status({"account": addr(9), "state": 1}).state == State.CALLABLE


# --- sharding ---------------------------------------------------------------------------------


def test_shards_partition_the_accounts_stably():
    accounts = [addr(i) for i in range(1_000)]
    parts = [shard(accounts, i, 4) for i in range(4)]
    assert sorted(a for p in parts for a in p) == sorted(accounts)
    assert all(150 < len(p) < 350 for p in parts)  # roughly even
    # stable: case-insensitive and independent of the rest of the list
    a = accounts[17]
    assert shard_of(a, 4) == shard_of(a.upper().replace("0X", "0x"), 4)
    assert a in shard([a], shard_of(a, 4), 4)
    assert shard(accounts, 0, 1) == accounts


def test_shard_rejects_bad_indices():
    with pytest.raises(ValueError):
        shard([addr(1)], 4, 4)
    with pytest.raises(ValueError):
        shard_of(addr(1), 0)


# --- accounts from events ---------------------------------------------------------------


def pc(i: int, market_id: int, size: int) -> dict:
    return {
        "event_name": "PositionChanged",
        "account": addr(i),
        "market_id": market_id,
        "size": size,
    }


def test_open_accounts_follow_position_changed_events():
    events = [
        pc(1, 0, WAD),
        pc(2, 0, -WAD),
        pc(2, 1, WAD),
        {"event_name": "Deposit", "account": addr(3), "amount": 5},
        pc(2, 0, 0),  # account 2 still holds market 1
        pc(1, 0, 0),  # account 1 closed everything
        pc(3, 2, WAD),
    ]
    assert open_accounts(events) == [addr(2), addr(3)]


def test_position_book_accepts_log_objects_and_nested_arguments():
    log = SimpleNamespace(event_name="PositionChanged", account=addr(4), market_id=1, size=WAD)
    nested = {"event_name": "PositionChanged", "event_arguments": {"account": addr(5)}}
    nested["event_arguments"].update(market_id=0, size=WAD)
    book = PositionBook().apply_all([log, nested])
    assert addr(4) in book and addr(5) in book and len(book) == 2
    book.apply(SimpleNamespace(event_name="PositionChanged", account=addr(4), market_id=1, size=0))
    assert book.accounts == [addr(5)]


# --- metrics ---------------------------------------------------------------------------------


def test_metrics_count_sends_races_rewards_and_delays():
    m = Metrics()
    m.track(250)
    m.record_calls(sent=10, made=8, reward=8_000)
    m.record_tranches(sent=5, made=5, reward=1_000)
    m.record_tranches(sent=3, made=1, reward=100)
    m.record_delay(100, 101)
    m.record_delay(100, 104)
    m.record_skips(raced=1, recovered=2, window=3)
    assert (m.skipped_recovered, m.skipped_window) == (2, 3)
    m.races_lost -= 1
    assert (m.calls_sent, m.calls_made, m.tranches_sent, m.tranches_made) == (10, 8, 8, 6)
    assert m.races_lost == 2 + 2
    assert m.rewards_earned == 9_100
    assert (m.max_delay, m.mean_delay) == (4, 2.5)
    d = m.as_dict()
    assert d["accounts_tracked"] == 250 and d["max_delay_blocks"] == 4 and "delays" not in d


def test_metrics_reject_impossible_records():
    m = Metrics()
    with pytest.raises(ValueError):
        m.record_calls(sent=1, made=2)
    with pytest.raises(ValueError):
        m.record_delay(10, 9)
    assert m.mean_delay == 0.0 and m.max_delay == 0
