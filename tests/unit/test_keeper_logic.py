"""The keeper's pure decision logic: no chain, plain pytest functions."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from margincall.constants import MAX_BATCH, WAD, State
from margincall.keeper.logic import (
    GAS_CALL_FIXED,
    GAS_CALL_MARGINAL,
    GAS_PER_CALL,
    GAS_PER_TRANCHE,
    GAS_TRANCHE_FIXED,
    GAS_TRANCHE_MARGINAL,
    BlockClock,
    CostModel,
    RewardModel,
    Snapshot,
    batches,
    call_reward_floor,
    can_call,
    can_liquidate,
    covers,
    decide,
    due_calls,
    held_by_window,
    project_cleared,
    shard,
    shard_of,
    state_at,
    tranche_reward_floor,
    window_reopens,
)
from margincall.keeper.metrics import (
    Metrics,
)
from margincall.math import (
    Account,
    Position,
    RiskParams,
    call_reward,
    classify,
    evaluate,
    plan_tranche,
)
from margincall.sdk.book import (
    PositionBook,
    open_accounts,
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


def test_unpriced_accounts_are_liquidated_but_never_called():
    """No stale-leg shield: `check_margins` values an unpriced leg at its worst case, as
    `liquidate` does, so its liquidation states are acted on; a call needs every price."""
    assert not can_call(snap(1, State.CALLABLE, priced=False), COSTS)
    for state in (State.LIQUIDATABLE, State.CRITICAL, State.BANKRUPT):
        s = snap(1, state, priced=False)
        assert not can_call(s, COSTS) and can_liquidate(s, NOW, COSTS)
    assert not can_liquidate(snap(1, State.HEALTHY, priced=False), NOW, COSTS)


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
    # an unpriced account's expired call: liquidated at its worst case, as the engine does
    assert can_liquidate(snap(3, State.CALLED, call_deadline=T_B, priced=False), T_NEXT, COSTS)


def test_a_called_snapshot_without_deadline_is_left_alone():
    s = snap(1, State.CALLED, call_deadline=0)
    assert state_at(s, T_NEXT) == State.CALLED and not can_liquidate(s, T_NEXT, COSTS)


def test_a_lapsed_call_is_callable_again_when_the_grace_period_is_known():
    s = snap(1, State.CALLED, call_deadline=T_B)
    grace = 300
    assert state_at(s, T_B + grace - 1, grace) == State.LIQUIDATABLE
    assert state_at(s, T_B + grace, grace) == State.CALLABLE
    assert state_at(s, T_B + grace) == State.LIQUIDATABLE  # the keeper's view: one block on


def test_a_due_call_that_cleared_itself_gets_a_fresh_call_not_a_doomed_liquidation():
    """PROTOCOL.md section 2: a call clears itself when the account was back at call_ratio
    since the call. The scan at block b still says CALLED; `calls_cleared` says the call has
    cleared, so at the deadline the account is CALLABLE: the keeper sends a fresh call."""
    due = snap(1, State.CALLED, call_deadline=T_B + 5, ratio=11 * WAD // 10)
    stays = snap(2, State.CALLED, call_deadline=T_B + 5, ratio=11 * WAD // 10)
    later = snap(3, State.CALLED, call_deadline=T_NEXT + 60, ratio=11 * WAD // 10)
    snaps = [due, stays, later, snap(4, State.CALLED, call_deadline=T_B, priced=False)]
    assert due_calls(snaps, T_NEXT) == [addr(1), addr(2)]  # priced, deadline by `now`
    assert due_calls(snaps, T_B) == []
    # the lens answers in checksum case; the later call's flag does not count before its time
    projected = project_cleared(snaps, T_NEXT, {addr(1).upper().replace("0X", "0x"), addr(3)})
    assert projected[0] == replace(due, state=State.CALLABLE, call_deadline=0)
    assert projected[1:] == tuple(snaps[1:])
    d = decide(projected, T_NEXT, COSTS)
    # the unpriced account (4) is liquidated at its worst case (stale-leg rule): the lens
    # cannot tell whether its call cleared without every price, so the engine decides
    assert d.calls == [addr(1)] and sorted(d.liquidated) == [addr(2), addr(4)]
    # without the answer the keeper would have sent the liquidation the engine refuses
    assert sorted(decide(snaps, T_NEXT, COSTS).liquidated) == [addr(1), addr(2), addr(4)]


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
    markets = {addr(i): {0} for i in (1, 3, 5, 6)} | {addr(2): {1}, addr(4): {0, 1}}
    snaps = [
        snap(1, State.LIQUIDATABLE),
        snap(2, State.LIQUIDATABLE),
        snap(3, State.CRITICAL),
        snap(4, State.CALLED, call_deadline=T_B),  # a tranche at T_NEXT
        snap(5, State.CALLABLE),
        snap(6, State.LIQUIDATABLE, priced=False),  # an unpriced leg: a tranche all the same
    ]
    full = {0: T_NEXT + 1}
    keep, held = held_by_window(snaps, T_NEXT, markets, full)
    assert [s.account for s in held] == [addr(1), addr(4), addr(6)]
    assert [s.account for s in keep] == [addr(2), addr(3), addr(5)]
    keep, held = held_by_window(snaps, T_NEXT + 1, markets, full)  # the window restarted
    assert held == [] and len(keep) == 6


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
    assert s == Snapshot(addr(9), State.LIQUIDATABLE, NOW, 0, WAD // 2, True, equity=1)
    assert (s.collateral, s.maintenance, s.positions) == (0, 0, 0)  # absent: unknown
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


# --- reward-aware profit rule -----------------------------------------------------------------
# 18-decimal collateral worth 1/2,500 of the native coin (4e14 wei a token), the engine's
# default parameters, one market at mmr 5%, 50 gwei.

TOKEN = 10**18
PARAMS = RiskParams()
MMR = 5 * 10**16
REWARDS = RewardModel(params=PARAMS, max_mmr=MMR, decimals=18, wei_per_token=4 * 10**14)
AT_50_GWEI = CostModel(
    gas_price=50 * GWEI,
    call_reward=REWARDS.to_wei(1),
    tranche_reward=REWARDS.to_wei(1),
    rewards=REWARDS,
)


def margined(i: int, state: State, notional: int, ratio_pct: int, **kw) -> Snapshot:
    """An account of `notional` whole tokens on one market at mmr 5%, at ratio `ratio_pct`%,
    with equity equal to its collateral (no unrealised PnL)."""
    maintenance = notional * TOKEN * MMR // WAD
    equity = maintenance * ratio_pct // 100
    return Snapshot(
        account=addr(i),
        state=state,
        ratio=equity * WAD // maintenance,
        collateral=equity,
        equity=equity,
        maintenance=maintenance,
        positions=1,
        **kw,
    )


def test_gas_defaults_are_the_measured_marginal_gas_plus_a_tenth_of_the_fixed_gas():
    assert GAS_PER_TRANCHE == GAS_TRANCHE_MARGINAL + GAS_TRANCHE_FIXED // 10
    assert GAS_PER_CALL == GAS_CALL_MARGINAL + GAS_CALL_FIXED // 10
    assert 40_000 < GAS_PER_TRANCHE < 50_000 and 40_000 < GAS_PER_CALL < 50_000
    c = CostModel(gas_price=1)
    assert (c.gas_per_tranche, c.gas_per_call) == (GAS_PER_TRANCHE, GAS_PER_CALL)
    three = Snapshot(addr(1), State.LIQUIDATABLE, positions=3)
    assert c.tranche_gas(three) == GAS_PER_TRANCHE + 2 * c.gas_per_extra_market
    assert c.call_gas(three) == GAS_PER_CALL + 2 * c.gas_per_call_extra_market
    assert c.tranche_gas(Snapshot(addr(1), State.LIQUIDATABLE)) == GAS_PER_TRANCHE


def test_a_tranche_whose_reward_covers_the_gas_at_50_gwei_is_sent_a_small_one_is_not():
    # 100,000 tokens of notional at ratio 0.9: a 25% tranche at the tranche penalty (a third
    # of 1.5%), penalty 125, keeper 25 tokens
    big = margined(1, State.LIQUIDATABLE, 100_000, 90)
    assert tranche_reward_floor(big, REWARDS) >= 24 * TOKEN
    # 1,000 tokens: 0.75 token of share, so the 1-token floor, worth 4e14 wei < 2.8e15
    small = margined(2, State.LIQUIDATABLE, 1_000, 90)
    assert tranche_reward_floor(small, REWARDS) == TOKEN
    cost = GAS_PER_TRANCHE * 50 * GWEI * 12_000 // 10_000
    assert REWARDS.to_wei(tranche_reward_floor(big, REWARDS)) >= cost
    assert REWARDS.to_wei(TOKEN // TOKEN) < cost
    d = decide([small, big], NOW, AT_50_GWEI)
    assert d.liquidated == [addr(1)]
    # the same accounts, CRITICAL or BANKRUPT, are always liquidated
    broke = [margined(3, State.CRITICAL, 1_000, 40), margined(4, State.BANKRUPT, 1_000, 0)]
    assert decide([small, *broke], NOW, AT_50_GWEI).liquidated == [addr(4), addr(3)]
    # the flat reward of the old rule (1 token) would have refused both
    flat = CostModel(gas_price=50 * GWEI, tranche_reward=REWARDS.to_wei(1))
    assert decide([small, big], NOW, flat).liquidated == []


def test_an_expired_call_is_valued_as_a_tranche():
    called = margined(1, State.CALLED, 100_000, 110, call_deadline=T_B)
    assert not can_liquidate(called, T_B - 1, AT_50_GWEI)
    assert decide([called], T_NEXT, AT_50_GWEI).liquidated == [addr(1)]
    # close to the call ratio a tranche is a sliver: its reward does not pay
    sliver = margined(2, State.CALLED, 1_000, 124, call_deadline=T_B)
    assert decide([sliver], T_NEXT, AT_50_GWEI).empty


def test_more_markets_cost_more_gas():
    costs = replace_gas(AT_50_GWEI, gas_per_extra_market=10**6)
    one = margined(1, State.LIQUIDATABLE, 100_000, 90)
    three = Snapshot(**{**one.__dict__, "account": addr(2), "positions": 3})
    assert decide([one, three], NOW, costs).liquidated == [addr(1)]


def replace_gas(costs: CostModel, **kw) -> CostModel:
    return replace(costs, **kw)


def test_a_call_is_valued_at_what_the_engine_pays_for_it():
    # 2,000 tokens of notional at ratio 1.2: equity 120, maintenance 100; the full reward
    callable_ = margined(1, State.CALLABLE, 2_000, 120)
    assert call_reward_floor(callable_, REWARDS) == TOKEN
    # at ratio 1.005 of a 100-token maintenance, the engine pays 0.5 token, not 1
    brink = margined(2, State.CALLABLE, 2_000, 100)
    brink = Snapshot(**{**brink.__dict__, "equity": brink.maintenance + TOKEN // 2})
    assert call_reward_floor(brink, REWARDS) == TOKEN // 2
    at_maintenance = margined(3, State.CALLABLE, 2_000, 100)
    assert call_reward_floor(at_maintenance, REWARDS) == 0
    # 1 token = 4e14 wei pays 44.1k gas at 5 gwei (2.6e14 with the margin), not half a token
    at_5 = replace_gas(AT_50_GWEI, gas_price=5 * GWEI)
    assert decide([callable_, brink, at_maintenance], NOW, at_5).calls == [addr(1)]
    assert decide([callable_], NOW, AT_50_GWEI).calls == []  # 1 token does not pay 50 gwei
    # the reward scales with the notional (0.025% at the defaults: the keeper's share of
    # the penalty of the close_factor tranche the call stands in for, 0.25 x 0.5% x 20%):
    # a large account's call pays 50 gwei (issue 14)
    large = margined(4, State.CALLABLE, 100_000, 120, mmr=MMR)
    assert call_reward_floor(large, REWARDS) >= 24 * TOKEN
    assert decide([callable_, large], NOW, AT_50_GWEI).calls == [addr(4)]


def test_per_account_rewards_override_the_estimate():
    small = margined(1, State.LIQUIDATABLE, 1_000, 90)
    big = margined(2, State.LIQUIDATABLE, 100_000, 90)
    d = decide([small, big], NOW, AT_50_GWEI, rewards={addr(1): 10**17, addr(2): 0})
    assert d.liquidated == [addr(1)]


def test_snapshots_without_margins_fall_back_to_the_flat_rewards():
    bare = snap(1, State.LIQUIDATABLE)  # maintenance 0: unknown
    rich = replace_gas(AT_50_GWEI, tranche_reward=10**17, call_reward=10**17)
    assert decide([bare], NOW, rich).liquidated == [addr(1)]
    assert decide([bare], NOW, AT_50_GWEI).liquidated == []
    assert decide([snap(2, State.CALLABLE)], NOW, rich).calls == [addr(2)]


def test_reward_model_rejects_impossible_inputs():
    with pytest.raises(ValueError):
        RewardModel(params=PARAMS, max_mmr=0)
    with pytest.raises(ValueError):
        RewardModel(params=PARAMS, max_mmr=MMR, decimals=19)
    with pytest.raises(ValueError):
        RewardModel(params=PARAMS, max_mmr=MMR, wei_per_token=-1)
    with pytest.raises(ValueError):
        CostModel(gas_price=1, gas_per_extra_market=-1)
    assert (
        RewardModel(params=PARAMS, max_mmr=MMR, decimals=6, wei_per_token=4 * 10**14).to_wei(10**6)
        == 4 * 10**14
    )


# --- the bound against the engine's reference math -----------------------------------------
# Random accounts of 1 to 3 markets (sizes, entry prices, prices, mmrs) among more markets
# (the bound knows the largest mmr of them all, or of the account's own), collateral drawn
# so that the ratio lands under the call ratio, random risk parameters within the engine's
# bounds, 6/8/18 decimals: whenever `plan_tranche` would run a tranche, the bound is at or
# under its keeper reward; for callable accounts the call floor is the engine's call reward.

MMRS = st.integers(1, 200).map(lambda x: x * 10**15)  # 0.1% .. 20%, in steps of 1e-9


@st.composite
def risk_params(draw, min_mmr: int) -> RiskParams:
    critical = draw(st.integers(1, 9)) * 10**17  # 0.1 .. 0.9
    # the engine: liquidation_penalty < mmr * critical_ratio for every market
    top = min(10**17, min_mmr * critical // WAD - 1)
    max_reward = draw(st.integers(0, 10**6)) * 10**18 // 1_000
    return RiskParams(
        call_ratio=draw(st.integers(101, 300)) * 10**16,
        critical_ratio=critical,
        close_factor=draw(st.integers(5, 100)) * 10**16,
        liquidation_penalty=draw(st.integers(0, max(top, 0))),
        keeper_share=draw(st.integers(0, 100)) * 10**16,
        min_keeper_reward=draw(st.integers(0, max_reward)),
        max_keeper_reward=max_reward,
        call_reward=draw(st.integers(0, max_reward)),
        min_position_notional=draw(st.sampled_from([0, 10 * 10**18])),
    )


@st.composite
def accounts(draw):
    decimals = draw(st.sampled_from([6, 8, 18]))
    scale = 10 ** (18 - decimals)
    k = draw(st.integers(1, 3))
    mmrs = [draw(MMRS) for _ in range(k)]
    other = draw(MMRS)  # a market the account does not hold
    params = draw(risk_params(min(*mmrs, other)))
    positions = []
    for m in range(k):
        price = draw(st.integers(10**15, 10**23))  # 0.001 .. 100,000 tokens a unit
        notional = draw(st.integers(10, 10**8)) * 10**18  # 10 .. 1e8 tokens
        size = notional * WAD // price * draw(st.sampled_from([1, -1]))
        assume(abs(size) >= 10**9)
        entry = price * draw(st.integers(50, 200)) // 100
        positions.append(Position(m, size, size * entry // WAD, price, mmrs[m], 2 * mmrs[m]))
    v = evaluate(Account(collateral=0, positions=tuple(positions)), scale)
    lo, hi = params.critical_ratio * 10_000 // WAD, params.call_ratio * 10_000 // WAD
    ratio_bps = draw(st.integers(lo, hi))
    target = v.maintenance * ratio_bps // 10_000
    collateral = (target - v.equity) // scale  # equity = collateral + unrealised PnL
    assume(collateral > 0)
    called = draw(st.booleans())
    now = NOW
    # a call past its deadline (still enforceable) makes a ratio in [1, call_ratio) liquidatable
    account = Account(collateral, tuple(positions), deadline=now - 1 if called else 0)
    return account, params, scale, decimals, max(*mmrs, other), now


def as_snapshot(account: Account, scale: int, state: State, mmr: int = 0) -> Snapshot:
    v = evaluate(account, scale)
    return Snapshot(
        account=addr(1),
        state=state,
        ratio=v.ratio,
        collateral=account.collateral * scale,
        equity=v.equity,
        maintenance=v.maintenance,
        positions=len(account.positions),
        mmr=mmr,
    )


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
@given(accounts())
def test_the_tranche_reward_bound_never_exceeds_the_engines_reward(case):
    account, params, scale, decimals, max_mmr, now = case
    v = evaluate(account, scale)
    state = classify(account, v, params, now, scale)
    model = RewardModel(params=params, max_mmr=max_mmr, decimals=decimals)
    s = as_snapshot(account, scale, state)
    if state == State.CALLABLE:
        # exact while the flat floor binds; a lower bound of the scaled reward (the snapshot
        # bounds the notional from below by its maintenance)
        assert 0 <= call_reward_floor(s, model) <= call_reward(account, params, scale)
        return
    tranche = plan_tranche(account, params, scale, now)
    bound = tranche_reward_floor(s, model)
    # knowing the account's own markets (the keeper's position book) gives a tighter bound
    own = as_snapshot(account, scale, state, max(p.mmr for p in account.positions))
    tighter = tranche_reward_floor(own, model)
    assert 0 <= bound <= tighter
    if tranche is None:
        return
    assert tighter <= tranche.keeper_reward, (tighter, tranche)


def test_paid_delay_counts_from_when_the_action_was_worth_its_gas():
    m = Metrics()
    m.record_delay(10, 14)  # eligible at 10, declined as unprofitable until 13
    m.record_paid_delay(13, 14)
    m.declined += 3
    out = m.as_dict()
    assert (out["max_delay_blocks"], out["max_paid_delay_blocks"], out["declined"]) == (4, 1, 3)
    with pytest.raises(ValueError, match="worth"):
        m.record_paid_delay(15, 14)
