"""The keeper's order settlement rules (src/margincall/keeper/orders.py), without a chain: the
round hint (first round published strictly after the commit), the profit rule on the
settlement fee, expiry, batching, and the settlement latency read from chain history."""

from __future__ import annotations

import pytest

from margincall.keeper.orders import (
    GAS_PER_SETTLE,
    MAX_ROUNDS_BACK,
    OrderTracker,
    PendingOrder,
    Round,
    RoundCache,
    RoundSeen,
    fee_guide,
    first_round_after,
    min_settlement_fee,
    percentile,
    plan_settlements,
    settle_delays,
)

T = 1_700_000_000
GWEI = 10**9
TRADER = "0x" + "ab" * 20


def _order(oid: int, committed_at: int = T, fee: int = 2 * 10**6, **kw) -> PendingOrder:
    fields = {
        "order_id": oid,
        "account": TRADER,
        "market_id": 0,
        "size_delta": 10**18,
        "acceptable_price": 2_100 * 10**18,
        "committed_at": committed_at,
        "expiry": committed_at + 600,
        "fee": fee,
    }
    fields.update(kw)
    return PendingOrder(**fields)


def _feed(times: list[int]) -> dict[int, Round]:
    return {i + 1: Round(i + 1, t) for i, t in enumerate(times)}


def test_hint_is_the_first_round_published_strictly_after_the_commit():
    rounds = _feed([T - 30, T, T + 5, T + 12])
    cache = RoundCache(rounds.get)
    # a round stamped at the commit's own timestamp could be seen by the trader: not it
    assert cache.first_round_after(rounds[4], T) == 3
    assert cache.first_round_after(rounds[4], T - 1) == 2
    assert cache.first_round_after(rounds[4], T + 11) == 4
    assert first_round_after(list(rounds.values()), T) == 3
    assert first_round_after(list(rounds.values()), T + 12) is None


def test_no_hint_before_a_round_after_the_commit_exists():
    rounds = _feed([T - 30, T])
    cache = RoundCache(rounds.get)
    assert cache.first_round_after(rounds[2], T) is None
    assert cache.reads == 0  # the latest round alone says so


def test_round_reads_are_cached_across_orders():
    rounds = _feed([T - 50, T - 30, T - 10, T + 5])
    calls: list[int] = []

    def get(rid: int) -> Round | None:
        calls.append(rid)
        return rounds.get(rid)

    cache = RoundCache(get)
    assert cache.first_round_after(rounds[4], T - 20) == 3
    assert cache.first_round_after(rounds[4], T - 40) == 2
    assert calls == [3, 2, 1]  # each round read once


def test_hint_gives_up_beyond_the_walk_bound_or_an_unreadable_round():
    many = _feed([T + i for i in range(1, MAX_ROUNDS_BACK + 3)])
    latest = many[max(many)]
    assert RoundCache(many.get).first_round_after(latest, T) is None
    rounds = _feed([T - 30, T + 5, T + 10])
    del rounds[2]
    assert RoundCache(rounds.get).first_round_after(Round(3, T + 10), T) is None


def test_no_hint_at_a_phase_first_round_or_after_the_expiry():
    # round 1 has no previous round to prove it is the first after the commit: the adapter
    # refuses it (the order expires and is refunded)
    rounds = _feed([T + 1, T + 2])
    assert RoundCache(rounds.get).first_round_after(rounds[2], T) is None
    phased = {
        (2 << 64) + 1: Round((2 << 64) + 1, T + 5),
        (2 << 64) + 2: Round((2 << 64) + 2, T + 9),
    }
    assert RoundCache(phased.get).first_round_after(phased[(2 << 64) + 2], T + 5) == (2 << 64) + 2
    assert RoundCache(phased.get).first_round_after(phased[(2 << 64) + 2], T) is None
    # a first round after the order's expiry: it can no longer settle
    rounds = _feed([T - 30, T + 700])
    assert RoundCache(rounds.get).first_round_after(rounds[2], T, until=T + 600) is None
    assert RoundCache(rounds.get).first_round_after(rounds[2], T, until=T + 700) == 2


def test_plan_settles_orders_with_a_hint_oldest_first_in_batches():
    orders = [_order(3, T + 2), _order(1, T), _order(2, T + 1), _order(4, T + 3)]
    hints = {1: 7, 2: 7, 3: 8, 4: None}
    plan = plan_settlements(
        orders, hints, T + 12, gas_price=GWEI, wei_per_token=4 * 10**14, decimals=6, max_batch=2
    )
    assert plan.batches == (((1, 7), (2, 7)), ((3, 8),))
    assert plan.waiting == (4,)
    assert plan.order_ids == [1, 2, 3]


def test_plan_skips_expired_in_flight_and_unprofitable_orders():
    # 2 tokens at 0.0004 ETH each pay 8e14 wei; 57,050 gas at 10 gwei cost 5.7e14 (x1.2 = 6.8e14)
    cheap = _order(2, fee=10**6)  # 1 token: 4e14 wei < 6.8e14
    orders = [_order(1), cheap, _order(3, expiry=T + 5), _order(4)]
    hints = {1: 2, 2: 2, 3: 2, 4: 2}
    plan = plan_settlements(
        orders,
        hints,
        T + 12,
        gas_price=10 * GWEI,
        wei_per_token=4 * 10**14,
        decimals=6,
        busy=[4],
    )
    assert plan.order_ids == [1]
    assert plan.declined == (2,)
    assert plan.expired == (3,)
    assert GAS_PER_SETTLE * 10 * GWEI * 12_000 // 10_000 <= 8 * 10**14


@pytest.mark.parametrize("gwei", [0.01, 0.58, 1, 30, 50])
@pytest.mark.parametrize("decimals", [6, 18])
def test_the_minimum_settlement_fee_is_the_keepers_own_break_even(gwei, decimals):
    """`min_settlement_fee` (the deploy guide's figure) is exactly where the keeper's profit
    rule turns: at it the order settles, one millionth of a token less is declined."""
    gas_price, wei_per_token = round(gwei * GWEI), 4 * 10**14
    micro = min_settlement_fee(gas_price, wei_per_token)
    kw = {"gas_price": gas_price, "wei_per_token": wei_per_token, "decimals": decimals}
    unit = 10 ** (decimals - 6)
    assert plan_settlements([_order(1, fee=micro * unit)], {1: 2}, T + 12, **kw).order_ids == [1]
    assert plan_settlements([_order(1, fee=(micro - 1) * unit)], {1: 2}, T + 12, **kw).declined
    assert f"| {gwei:g} | {micro / 10**6:,.6g} |" in fee_guide()


def test_an_order_settles_at_its_expiry_but_not_after():
    order = _order(1, expiry=T + 12)
    kw = {"gas_price": 0, "wei_per_token": 0, "decimals": 6}
    assert plan_settlements([order], {1: 2}, T + 12, **kw).order_ids == [1]
    assert plan_settlements([order], {1: 2}, T + 13, **kw).expired == (1,)


def test_tracker_follows_commits_settlements_and_cancels():
    tracker = OrderTracker()
    tracker.commit(_order(1))
    tracker.commit(_order(2, account="0x" + "cd" * 20))
    assert len(tracker) == 2
    assert [o.order_id for o in tracker.of(TRADER.upper().replace("0X", "0x"))] == [1]
    assert tracker.close(1, settled=True).order_id == 1
    assert tracker.close(2, settled=False) is not None
    assert tracker.close(9, settled=False) is None
    assert (len(tracker), tracker.settled, tracker.cancelled) == (0, 1, 2)


def test_settle_delay_counts_blocks_from_the_first_round_after_the_commit():
    commits = [_order(1, T, block=10), _order(2, T + 20, block=12), _order(3, T, market_id=1)]
    rounds = [
        RoundSeen(0, T, 10),  # stamped at the commit: not after it
        RoundSeen(0, T + 12, 11),
        RoundSeen(0, T + 24, 13),
        RoundSeen(1, T + 30, 15),
    ]
    delays = settle_delays(commits, {1: 12, 2: 14, 3: 15}, rounds)
    assert delays == {1: 1, 2: 1, 3: 0}
    assert settle_delays(commits, {}, rounds) == {}


@pytest.mark.parametrize(
    ("values", "q", "want"),
    [([], 50, 0), ([1], 99, 1), ([1, 2, 3, 4], 50, 2), ([1] * 99 + [5], 99, 1), ([1, 9], 99, 9)],
)
def test_percentile_is_nearest_rank(values, q, want):
    assert percentile(values, q) == want


def test_in_flight_settlements_are_read_back_from_their_tags():
    from margincall.keeper.orders import order_tag, settling

    assert settling({order_tag(7), order_tag(12), TRADER}) == {7, 12}


def test_the_commit_time_is_read_from_the_order_id():
    from margincall.keeper.orders import commit_time_of

    oid = (int(TRADER, 16) << 96) | (T << 8) | 3  # OrderBook.commit_order's id
    assert commit_time_of(oid) == T
