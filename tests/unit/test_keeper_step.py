"""One keeper step for the bot and the simulator (src/margincall/keeper/step.py): the bot's
`Keeper.plan` and the simulator's `Replay.plan` run the same `plan_block` over the same
block's statuses and decide the same actions, with the bot's caps, window holds and backoffs.
No chain: the statuses are the SDK's `MarginStatus`es a scan returns."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from margincall.constants import WAD, State
from margincall.keeper.bot import Keeper, KeeperState
from margincall.keeper.config import KeeperConfig
from margincall.keeper.orders import OrderTracker, PendingOrder, Round, order_tag
from margincall.keeper.step import (
    REVERT_BACKOFF,
    Caps,
    Memory,
    isolate,
    plan_block,
    split_reverted,
)
from margincall.math import RiskParams
from margincall.sdk import MarginStatus
from margincall.sim.replay import Replay

T0 = 1_700_000_000
BLOCK_TIME = 12
SLOT = 40
HEAD = T0 + SLOT * BLOCK_TIME  # the head's timestamp (the simulator's slot)
NOW = HEAD + BLOCK_TIME  # what the block's transactions carry
PARAMS = RiskParams()
MMRS = [5 * WAD // 100, 10 * WAD // 100]
MAINTENANCE = 1_000 * WAD


def _account(i: int) -> str:
    return "0x" + f"{i:02x}" * 20


def _status(i: int, state: State, ratio: int, **kw) -> MarginStatus:
    fields = {
        "account": _account(i),
        "collateral": 10_000 * WAD,
        "equity": ratio * MAINTENANCE // WAD,
        "maintenance": MAINTENANCE,
        "initial": 2 * MAINTENANCE,
        "ratio": ratio,
        "state": state,
        "call_deadline": 0,
        "next_tranche_time": 0,
        "positions": 1,
        "priced": True,
    }
    fields.update(kw)
    return MarginStatus(**fields)


# one block's statuses: tranches (plain, critical, bankrupt), calls, recovered calls, an
# account held by a full window, one backed off, one in flight, one not yet due
STATUSES = [
    _status(1, State.LIQUIDATABLE, 95 * WAD // 100),
    _status(2, State.CRITICAL, 40 * WAD // 100),
    _status(3, State.BANKRUPT, 0, equity=-5 * WAD),
    _status(4, State.LIQUIDATABLE, 90 * WAD // 100),  # market 1: its window is full
    _status(5, State.LIQUIDATABLE, 92 * WAD // 100),  # backed off (too large)
    _status(6, State.LIQUIDATABLE, 93 * WAD // 100),  # a transaction in flight
    _status(7, State.CALLABLE, 110 * WAD // 100),
    _status(8, State.CALLABLE, 105 * WAD // 100),
    _status(9, State.CALLABLE, 115 * WAD // 100),
    _status(10, State.HEALTHY, 140 * WAD // 100, call_deadline=HEAD + 600),  # recovered
    _status(11, State.HEALTHY, 150 * WAD // 100, call_deadline=HEAD + 600),  # recovered
    _status(12, State.LIQUIDATABLE, 96 * WAD // 100, next_tranche_time=NOW + 120),
    _status(13, State.HEALTHY, 300 * WAD // 100),
]
MARKETS = {_account(i): {1 if i == 4 else 0} for i in range(1, 14)}
FULL_UNTIL = {1: NOW + 200}
BACKOFF = {_account(5): SLOT + 10}
IN_FLIGHT = {_account(6)}
CONFIG = KeeperConfig(deployment=Path("unused.json"), max_batch=2, max_clears=1)


def _costs():
    return CONFIG.cost_model(PARAMS, MMRS, 18, gas_price=0)


def _bot() -> Keeper:
    """The bot with the state its logs and receipts built (no chain: only the step's inputs)."""
    keeper = Keeper.__new__(Keeper)
    keeper.config = CONFIG
    keeper.state = KeeperState()
    for account, markets in MARKETS.items():
        for m in markets:
            keeper.state.book.apply({"account": account, "market_id": m, "size": 10**18})
    keeper.state.window_full_until.update(FULL_UNTIL)
    keeper.state.backoff.update(BACKOFF)
    keeper.costs = _costs()
    keeper.call_ratio = PARAMS.call_ratio
    keeper.mmrs = MMRS
    return keeper


def _simulator() -> Replay:
    """The simulator's replay after block `SLOT` with the same memory (no chain)."""
    replay = Replay.__new__(Replay)
    replay.t0, replay.bt, replay.params, replay.mmrs = T0, BLOCK_TIME, PARAMS, MMRS
    replay.caps = Caps.of(CONFIG)
    replay.memory = Memory({a: set(m) for a, m in MARKETS.items()}, dict(FULL_UNTIL), dict(BACKOFF))
    replay.in_flight = set(IN_FLIGHT)
    replay._costs_now = _costs  # the bot's cost model (the simulator converts at its ETH price)
    replay.orders, replay.rounds, replay.settling = OrderTracker(), {}, set()
    return replay


def test_bot_and_simulator_decide_the_same_actions_on_the_same_block():
    bot = _bot().plan(STATUSES, SLOT, HEAD, NOW, {a.lower() for a in IN_FLIGHT})
    sim = _simulator().plan(STATUSES, SLOT, NOW)
    assert bot.actions() == sim.actions()
    assert bot.due_next == sim.due_next and bot.wake_at == sim.wake_at
    # and the actions are the shipped keeper's: most urgent first, in batches of `max_batch`
    assert bot.decision.liquidations == ((_account(3), _account(2)), (_account(1),))
    assert bot.decision.margin_calls == ((_account(8), _account(7)), (_account(9),))
    assert bot.held_window == (_account(4),)
    assert bot.backed_off == (_account(5),)
    assert bot.busy == (_account(6),)
    assert bot.clears == (_account(10),) and bot.clears_capped == 1  # max_clears = 1
    assert bot.wake_at == NOW + 120  # account 12's next tranche


def test_the_step_differs_without_the_bots_caps_and_memory():
    """The comparison above can fail: the simulator's old keeper (no caps, no window holds,
    no backoff: `decide` over every account) plans another block."""
    bare = plan_block(
        STATUSES,
        number=SLOT,
        head_timestamp=HEAD,
        now=NOW,
        costs=_costs(),
        caps=Caps(),
        memory=Memory(),
        call_ratio=PARAMS.call_ratio,
        busy=IN_FLIGHT,
    )
    shipped = _bot().plan(STATUSES, SLOT, HEAD, NOW, {a.lower() for a in IN_FLIGHT})
    assert bare.actions() != shipped.actions()
    assert _account(4) in bare.liquidated and _account(5) in bare.liquidated
    assert bare.clears == (_account(10), _account(11))


def test_a_backoff_ends_and_a_window_reopens_at_their_time():
    later = SLOT + 10
    memory = Memory(MARKETS, dict(FULL_UNTIL), dict(BACKOFF))
    plan = plan_block(
        STATUSES,
        number=later,
        head_timestamp=FULL_UNTIL[1],
        now=FULL_UNTIL[1] + BLOCK_TIME,
        costs=_costs(),
        caps=Caps.of(CONFIG),
        memory=memory,
        call_ratio=PARAMS.call_ratio,
    )
    assert plan.backed_off == () and plan.held_window == ()
    assert {_account(4), _account(5)} <= set(plan.liquidated)


def test_a_due_call_that_cleared_itself_is_called_afresh_by_bot_and_simulator():
    """The bot and the simulator pass `calls_cleared`'s answer to the same step."""
    called = _status(20, State.CALLED, 11 * WAD // 10, call_deadline=NOW)
    busy = {a.lower() for a in IN_FLIGHT}
    plain = _bot().plan([called], SLOT, HEAD, NOW, busy)
    assert plain.liquidated == [_account(20)] and plain.calls == []
    cleared = {_account(20)}
    bot = _bot().plan([called], SLOT, HEAD, NOW, busy, cleared=cleared)
    sim = _simulator().plan([called], SLOT, NOW, cleared)
    assert bot.calls == sim.calls == [_account(20)] and bot.liquidated == sim.liquidated == []


def test_the_bot_asks_the_lens_only_about_due_calls():
    """`Keeper._cleared` asks `calls_cleared` at the scanned block about the calls due by
    `now` only (a scan of feed rounds each), none when no call is due."""
    asked = []

    class Client:
        def calls_cleared(self, accounts, block_id=None):
            asked.append((list(accounts), block_id))
            return {accounts[0]}

    keeper = _bot()
    keeper.client = Client()
    due = _status(20, State.CALLED, 11 * WAD // 10, call_deadline=NOW)
    later = _status(21, State.CALLED, 11 * WAD // 10, call_deadline=NOW + 1)
    assert keeper._cleared([*STATUSES, due, later], SLOT, NOW) == {_account(20)}
    assert asked == [([_account(20)], SLOT)]
    assert keeper._cleared(STATUSES, SLOT, NOW) == set() and len(asked) == 1


def test_the_baseline_keeper_sends_no_calls_and_no_clears():
    plan = plan_block(
        STATUSES,
        number=SLOT,
        head_timestamp=HEAD,
        now=NOW,
        costs=_costs(),
        caps=Caps.of(CONFIG, margin_calls=False),
        memory=Memory(),
        call_ratio=PARAMS.call_ratio,
    )
    assert plan.decision.margin_calls == () and plan.clears == ()
    assert plan.liquidated


@pytest.mark.parametrize("base_fee, tip", [(0, 0), (7 * 10**9, 10**9)])
def test_the_bot_charges_the_price_its_transactions_pay(base_fee, tip):
    from margincall.keeper.gas import block_fees, gas_price

    max_fee, sent_tip = block_fees(base_fee, tip)
    assert sent_tip == tip and max_fee == 2 * base_fee + tip
    assert gas_price(base_fee, tip) == base_fee + tip <= max_fee


# --- a batch jammed by accounts that revert -------------------------------------------------


def test_split_reverted_halves_a_reverted_batch_and_names_an_account_that_reverts_alone():
    again, bad = split_reverted([(("a", "b", "c"), True), (("d",), True), (("e", "f"), False)])
    assert again == [("a", "b"), ("c",)]
    assert bad == ["d"]


@pytest.mark.parametrize(
    ("n", "poisoned"), [(1, {0}), (2, {1}), (100, {37}), (100, {0, 99}), (33, {3, 4, 5, 30})]
)
def test_isolate_sends_every_account_but_the_poisoned_ones_in_few_rounds(n, poisoned):
    accounts = [_account(i) for i in range(n)]
    bad_accounts = {accounts[i] for i in poisoned}
    rounds: list[int] = []

    def reverts(batches):
        rounds.append(len(batches))
        return [any(a in bad_accounts for a in b) for b in batches]

    good, bad = isolate(
        [tuple(accounts[:50]), tuple(accounts[50:])] if n > 50 else [accounts], reverts
    )
    assert sorted(bad) == sorted(bad_accounts)
    assert sorted(a for b in good for a in b) == sorted(set(accounts) - bad_accounts)
    assert all(not (set(b) & bad_accounts) for b in good)
    # at most ceil(log2 n) rounds after the first, two estimates per bad account a round
    assert len(rounds) <= 1 + math.ceil(math.log2(n)) if n > 1 else len(rounds) == 1
    assert sum(rounds) <= 2 + 2 * len(poisoned) * max(1, math.ceil(math.log2(n)))


def test_the_bot_and_the_simulator_back_off_an_account_that_reverts_alone_for_the_same_blocks():
    memory = Memory(MARKETS, {}, {_account(1): SLOT + REVERT_BACKOFF})
    plan = plan_block(
        STATUSES[:3],
        number=SLOT,
        head_timestamp=HEAD,
        now=NOW,
        costs=_costs(),
        caps=Caps.of(CONFIG),
        memory=memory,
        call_ratio=PARAMS.call_ratio,
        mmrs=MMRS,
    )
    assert plan.backed_off == (_account(1),)
    assert _account(1) not in plan.liquidated and _account(2) in plan.liquidated


def test_the_simulator_bisects_a_jammed_keeper_batch_as_the_bot_does():
    """`SimSetup._estimate` (the simulator's sending path) on a fake node where any
    `liquidate_many` naming the poisoned account reverts."""
    from margincall.sim.chain import RpcError
    from margincall.sim.setup import SimSetup, Tx

    crowd = tuple(_account(i) for i in range(1, 10))
    poisoned = _account(5)

    class Node:
        def batch(self, calls, allow_errors=False):
            out = []
            for _method, (call, *_rest) in calls:
                names = set(call["data"].split(","))
                out.append(
                    RpcError("eth_estimateGas", {"message": "reverted"})
                    if poisoned in names
                    else "0x10"
                )
            return out

    sim = object.__new__(SimSetup)
    sim.rpc, sim.log, sim.reverted_alone = Node(), lambda _m: None, []
    sim.engine_abi = type("Abi", (), {"encode": staticmethod(lambda _l, a: ",".join(a))})()
    price = Tx("oracle", "feed", "price", "set_answer", gas=50_000)
    batch = Tx("keeper", "engine", ",".join(crowd), "liquidate_many", accounts=crowd)

    txs = sim._estimate([price, batch], timestamp=None)

    assert txs[0] is price
    assert all(tx.label == "liquidate_many" and tx.gas > 0 for tx in txs[1:])
    assert sorted(a for tx in txs[1:] for a in tx.accounts) == sorted(set(crowd) - {poisoned})
    assert sim.reverted_alone == [poisoned]


# pending orders of the same block: settled (a round after the commit exists), waiting (none
# yet), expired, and one with its settlement in flight; the feed's rounds as both know them
ROUNDS = [Round(1, HEAD - 100), Round(2, HEAD - 20), Round(3, HEAD)]
ORDERS = [
    PendingOrder(1, _account(7), 0, 10**18, 2_100 * WAD, HEAD - 50, HEAD + 600, fee=10**18),
    PendingOrder(2, _account(8), 0, -(10**18), 1_900 * WAD, HEAD - 10, HEAD + 600, fee=10**18),
    PendingOrder(3, _account(9), 0, 10**18, 2_100 * WAD, HEAD, HEAD + 600, fee=10**18),
    PendingOrder(4, _account(9), 0, 10**18, 2_100 * WAD, HEAD - 200, HEAD - 1, fee=10**18),
    PendingOrder(5, _account(13), 0, 10**18, 2_100 * WAD, HEAD - 60, HEAD + 600, fee=10**18),
]


def test_bot_and_simulator_settle_the_same_orders_on_the_same_block():
    from margincall.keeper.orders import RoundCache

    bot = _bot()
    for o in ORDERS:
        bot.state.orders.commit(o)
    cache = RoundCache({r.round_id: r for r in ROUNDS}.get)
    hints = {o.order_id: cache.first_round_after(ROUNDS[-1], o.committed_at) for o in ORDERS}
    sim = _simulator()
    for o in ORDERS:
        sim.orders.commit(o)
    sim.rounds[0] = list(ROUNDS)
    sim.settling = {5}
    busy = {a.lower() for a in IN_FLIGHT} | {order_tag(5)}  # in flight: account 6, order 5
    got_bot = bot.plan(STATUSES, SLOT, HEAD, NOW, busy, hints)
    got_sim = sim.plan(STATUSES, SLOT, NOW)
    assert got_bot.actions() == got_sim.actions()
    # order 1 settles at round 2 (the first after its commit), order 2 at round 3; order 3
    # was committed at round 3's own timestamp: it waits for round 4
    assert got_bot.settlements.batches == (((1, 2), (2, 3)),)  # max_batch = 2
    assert got_bot.settlements.waiting == (3,) and got_bot.settlements.expired == (4,)
