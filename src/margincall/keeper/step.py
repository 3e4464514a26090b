"""One keeper step: everything one block needs, decided from that block's statuses.

`plan_block` is pure: it takes one block's statuses, the clock (the head's number and
timestamp, and the timestamp the transactions will carry), the costs (`CostModel`, its gas
price from `margincall.keeper.gas`), the keeper's caps (`Caps`) and the part of its state the
decision reads (`Memory`: the open markets of each account, the markets whose liquidation
window is full and until when, the accounts backed off), and returns a `Plan`: the margin
calls and tranches in batches, the recovered calls to clear, what is due only at the next
block's timestamp, the earliest time something else becomes actionable, and which accounts
were held by a full window, backed off or already in flight.

The keeper bot (`Keeper.on_block`) and the simulator (`Replay`) both call it, so the
simulator measures the keeper that ships (tests/unit/test_keeper_step.py runs both on the
same statuses). `margincall.keeper.audit` judges a run with the same eligibility rules
(`can_call`, `can_liquidate`, `state_at`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from margincall.constants import MAX_BATCH, State
from margincall.keeper.logic import (
    CostModel,
    Decision,
    Snapshot,
    can_call,
    can_liquidate,
    decide,
    held_by_window,
    project_cleared,
)
from margincall.keeper.orders import PendingOrder, SettlePlan, plan_settlements

WINDOW_PREVIEWS = 20  # skipped accounts per receipt checked for a full liquidation window
REASON_WINDOW_FULL = 3  # `preview_liquidation(...).reason` when the window cap is reached
# blocks an account whose own liquidation (or call) reverts is left out of the batches: e.g. its
# profitable leg needs a payout the pool cannot make now. Short: the pool may refill at once.
REVERT_BACKOFF = 3


@dataclass(frozen=True)
class Caps:
    """The keeper's limits per block (`KeeperConfig`): accounts per batch, recovered calls
    cleared per block, whether it clears them at all, and whether it sends margin calls
    (the simulator's liquidate-at-maintenance baseline sends none)."""

    max_batch: int = MAX_BATCH
    max_clears: int = 20
    clear_calls: bool = True
    margin_calls: bool = True

    @classmethod
    def of(cls, config: Any, margin_calls: bool = True) -> Caps:
        """From a `KeeperConfig`."""
        return cls(
            max_batch=int(config.max_batch),
            max_clears=int(config.max_clears),
            clear_calls=bool(config.clear_calls),
            margin_calls=margin_calls,
        )


@dataclass
class Memory:
    """What the keeper remembers between blocks and the step reads: each account's open
    markets (the position book), each market whose liquidation window is full and the time
    it restarts, and each account backed off and the first block it is retried in."""

    markets_of: Mapping[str, Iterable[int]] = field(default_factory=dict)
    window_full_until: dict[int, int] = field(default_factory=dict)
    backoff: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """What one block needs (see the module's docstring)."""

    decision: Decision
    clears: tuple[str, ...] = ()
    due_next: frozenset[str] = frozenset()
    snapshots: tuple[Snapshot, ...] = ()  # every account scanned
    kept: tuple[Snapshot, ...] = ()  # those decided on: not busy, backed off or held
    held_window: tuple[str, ...] = ()
    backed_off: tuple[str, ...] = ()
    busy: tuple[str, ...] = ()
    clears_capped: int = 0  # recovered calls left for a later block by `max_clears`
    settlements: SettlePlan = field(default_factory=SettlePlan)  # orders to settle

    @property
    def calls(self) -> list[str]:
        return self.decision.calls

    @property
    def liquidated(self) -> list[str]:
        return self.decision.liquidated

    @property
    def wake_at(self) -> int | None:
        return self.decision.wake_at

    def actions(self) -> dict[str, tuple]:
        """The block's actions, comparable across a bot and a simulator run."""
        return {
            "margin_call_many": self.decision.margin_calls,
            "liquidate_many": self.decision.liquidations,
            "clear_margin_call": self.clears,
            "held_window": self.held_window,
            "backed_off": self.backed_off,
            "settle_orders": self.settlements.batches,
        }


def mmr_of(account: str, markets_of: Mapping[str, Iterable[int]], mmrs: Sequence[int]) -> int:
    """The largest mmr of the account's markets, 0 if unknown: a tighter reward bound than
    all markets' largest mmr (`Snapshot.mmr`)."""
    held = list(markets_of.get(account, ()))
    if not held or max(held) >= len(mmrs):
        return 0
    return max(mmrs[m] for m in held)


def recovered(status: Any, call_ratio: int) -> bool:
    """HEALTHY with a margin call still recorded: `clear_margin_call` removes the record."""
    return bool(
        status.priced
        and status.state == State.HEALTHY
        and status.call_deadline
        and status.ratio >= call_ratio
    )


def plan_block(
    statuses: Sequence[Any],
    *,
    number: int,
    head_timestamp: int,
    now: int,
    costs: CostModel,
    caps: Caps,
    memory: Memory,
    call_ratio: int,
    mmrs: Sequence[int] = (),
    busy: Iterable[str] = (),
    orders: Iterable[PendingOrder] = (),
    hints: Mapping[int, int | None] | None = None,
    busy_orders: Iterable[int] = (),
    cleared: Iterable[str] = (),
) -> Plan:
    """The plan of block `number` (stamped `head_timestamp`) from its `statuses` (SDK
    `MarginStatus`es); `now` is the timestamp the transactions are expected to carry (the
    next block's). `busy`: accounts with a transaction in flight (left alone).

    `orders`: the pending orders, `hints` each one's first feed round published after its
    commit (`margincall.keeper.orders.RoundCache.first_round_after`; None: none yet),
    `busy_orders` those with a settlement in flight: the plan's `settlements`, within the
    profit rule with the cost model's gas price and exchange rate. `cleared`: the accounts
    whose call cleared itself (`MarginLens.calls_cleared` of `due_calls`): CALLABLE at
    `now`, not LIQUIDATABLE (`project_cleared`)."""
    in_flight = {str(a).lower() for a in busy}
    snaps = project_cleared(
        (Snapshot.from_status(s, mmr_of(s.account, memory.markets_of, mmrs)) for s in statuses),
        now,
        cleared,
    )
    busy_now = tuple(s.account for s in snaps if s.account.lower() in in_flight)
    backed = tuple(
        s.account
        for s in snaps
        if s.account.lower() not in in_flight and memory.backoff.get(s.account, -1) > number
    )
    skip = set(busy_now) | set(backed)
    free = [s for s in snaps if s.account not in skip]
    kept, held = held_by_window(free, now, memory.markets_of, memory.window_full_until)
    decision = decide(kept, now, costs, max_batch=caps.max_batch)
    if not caps.margin_calls:
        decision = replace(decision, margin_calls=())
    chosen = set(decision.liquidated)
    free_costs = replace(costs, gas_price=0)
    due_next = frozenset(
        s.account
        for s in kept
        if s.account in chosen and not can_liquidate(s, head_timestamp, free_costs)
    )
    clears: list[str] = []
    if caps.clear_calls and caps.margin_calls:
        clears = [
            s.account
            for s in statuses
            if recovered(s, call_ratio) and str(s.account).lower() not in in_flight
        ]
    settlements = settle_step(orders, hints or {}, now, costs, caps, busy_orders)
    return Plan(
        decision=decision,
        settlements=settlements,
        clears=tuple(clears[: caps.max_clears]),
        due_next=due_next,
        snapshots=snaps,
        kept=tuple(kept),
        held_window=tuple(s.account for s in held),
        backed_off=backed,
        busy=busy_now,
        clears_capped=max(0, len(clears) - caps.max_clears),
    )


def split_reverted(
    tried: Iterable[tuple[tuple[str, ...], bool]],
) -> tuple[list[tuple[str, ...]], list[str]]:
    """One round of isolating the accounts that make a batch revert, the rule the bot and
    the simulator share. `tried`: each batch with whether its estimate reverted. Returns the
    batches to estimate next, in the same block (each reverted batch of two or more
    accounts cut in two halves, in order), and the accounts whose batch of one reverted:
    those are the bad ones (back them off for `REVERT_BACKOFF` blocks). The batches that did
    not revert are sent as they are. A batch of `n` accounts with `k` bad ones is isolated
    in at most `ceil(log2 n)` further rounds, `2 k ceil(log2 n)` estimates at most."""
    again: list[tuple[str, ...]] = []
    bad: list[str] = []
    for batch, reverted in tried:
        if not reverted:
            continue
        if len(batch) > 1:
            mid = (len(batch) + 1) // 2
            again += [tuple(batch[:mid]), tuple(batch[mid:])]
        else:
            bad += list(batch)
    return again, bad


def isolate(
    batches: Iterable[tuple[str, ...]],
    reverts: Callable[[list[tuple[str, ...]]], list[bool]],
) -> tuple[list[tuple[str, ...]], list[str]]:
    """`split_reverted` round after round until nothing reverts: `reverts(batches)` estimates
    a round (each batch: did it revert?). Returns the batches that did not revert (to send)
    and the accounts that revert on their own. Used where a round's estimates come back
    together (the simulator); the bot interleaves rounds with its sends."""
    todo = [tuple(b) for b in batches]
    good: list[tuple[str, ...]] = []
    bad: list[str] = []
    while todo:
        flags = reverts(todo)
        good += [b for b, r in zip(todo, flags, strict=True) if not r]
        todo, alone = split_reverted(zip(todo, flags, strict=True))
        bad += alone
    return good, bad


def settle_step(
    orders: Iterable[PendingOrder],
    hints: Mapping[int, int | None],
    now: int,
    costs: CostModel,
    caps: Caps,
    busy_orders: Iterable[int] = (),
) -> SettlePlan:
    """The block's settlements (`plan_settlements`) with the keeper's cost model: its gas
    price, its exchange rate and collateral decimals (`costs.rewards`; without them every
    fee counts as zero, so only a zero gas price settles) and its margin."""
    orders = list(orders)
    if not orders:
        return SettlePlan()
    model = costs.rewards
    return plan_settlements(
        orders,
        hints,
        now,
        gas_price=costs.gas_price,
        wei_per_token=model.wei_per_token if model is not None else 0,
        decimals=model.decimals if model is not None else 18,
        margin_bps=costs.margin_bps,
        max_batch=caps.max_batch,
        busy=busy_orders,
    )


def actionable(snaps: Iterable[Snapshot], now: int, costs: CostModel) -> set[str]:
    """The accounts a keeper could act on at `now`, profit ignored (the delay metrics)."""
    free = replace(costs, gas_price=0)
    return {s.account for s in snaps if can_liquidate(s, now, free) or can_call(s, free)}


__all__ = [
    "REASON_WINDOW_FULL",
    "REVERT_BACKOFF",
    "WINDOW_PREVIEWS",
    "Caps",
    "Memory",
    "Plan",
    "actionable",
    "isolate",
    "mmr_of",
    "plan_block",
    "recovered",
    "split_reverted",
    "settle_step",
]
