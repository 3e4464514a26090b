"""What happened on chain, measured from events and historical state alone.

The demo's report and the end-to-end tests use this instead of trusting the
keeper's own counters: every figure comes from the engine's logs, and the
keeper's delay is measured against the chain's history.

Eligibility. An account is *eligible after block b* when a keeper's
transaction in block b+1 would succeed on it: its state after block b
(`check_margins` at b), evaluated at block b+1's timestamp t(b+1), the one
that transaction carries (`keeper.logic.state_at`): CALLABLE for a call;
for a liquidation CRITICAL, BANKRUPT, or LIQUIDATABLE with the tranche
interval elapsed by t(b+1), a CALLED account whose deadline is at or before
t(b+1) counting as LIQUIDATABLE (and as CALLABLE once its call has lapsed,
one grace period after the deadline). This is the definition the keeper
decides with (`keeper.logic.decide` with `now` = the next block's timestamp).
When block b+1 is not mined yet, t(b+1) is estimated as t(b) plus the last
block interval. Not modelled: the per-market liquidation window cap (an
account it holds back counts as eligible; the tests' caps never bind) and a
price that goes stale between b and b+1.

Delay. For an action (a `MarginCall` or a `Liquidation`) mined in block B,
the account's *eligibility block* is the first block E of the unbroken run of
blocks before B after which the action was already possible, the run not
reaching back past the block of the previous action on the same account (a
tranche followed by a full close in the next block has delay 1, not 2). The
delay is B - E: 1 means the keeper acted in the first block after the one
that made the account eligible, the best any keeper can do (a transaction
cannot react to a price set in its own block unless it is ordered right
behind it); 0 means the action needed a transaction of its own block.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from margincall.constants import State
from margincall.keeper.logic import Snapshot, state_at

ENGINE_EVENTS = (
    "MarginCall",
    "MarginCallCleared",
    "Liquidation",
    "BadDebt",
    "PositionChanged",
    "CallRewardPaid",
    "CallRewardReturned",
)


@dataclass(frozen=True)
class Action:
    """A keeper action on one account, from its event."""

    kind: str  # "call" or "liquidation"
    account: str
    block: int
    keeper: str
    full_close: bool = False


@dataclass
class History:
    """The engine's events over a block range, decoded and grouped."""

    logs: list[Any] = field(default_factory=list)

    def of(self, name: str) -> list[Any]:
        return [log for log in self.logs if log.event_name == name]

    @property
    def actions(self) -> list[Action]:
        out = []
        for log in self.logs:
            if log.event_name == "MarginCall":
                out.append(Action("call", str(log.account), int(log.block_number), str(log.caller)))
            elif log.event_name == "Liquidation":
                out.append(
                    Action(
                        "liquidation",
                        str(log.account),
                        int(log.block_number),
                        str(log.keeper),
                        bool(log.full_close),
                    )
                )
        return out

    def summary(self) -> dict[str, int]:
        """Counts and token totals (token units) of the range."""
        liqs = self.of("Liquidation")
        debts = self.of("BadDebt")
        cleared = self.of("MarginCallCleared")
        return {
            "margin_calls": len(self.of("MarginCall")),
            "calls_cleared": len(cleared),
            "accounts_cleared": len({str(e.account) for e in cleared}),
            "tranches": sum(1 for e in liqs if not e.full_close),
            "full_liquidations": sum(1 for e in liqs if e.full_close),
            "accounts_liquidated": len({str(e.account) for e in liqs}),
            "penalties": sum(int(e.penalty) for e in liqs),
            # a call's reward counts when the engine pays it (parked until the call ends;
            # returned to the account by a close below ratio 1)
            "keeper_rewards": sum(int(e.keeper_reward) for e in liqs)
            + sum(int(e.amount) for e in self.of("CallRewardPaid")),
            "call_rewards_issued": sum(int(e.reward) for e in self.of("MarginCall")),
            "call_rewards_paid": sum(int(e.amount) for e in self.of("CallRewardPaid")),
            "call_rewards_returned": sum(int(e.amount) for e in self.of("CallRewardReturned")),
            "fund_fees": sum(int(e.fund_fee) for e in liqs),
            "bad_debt": sum(int(e.amount) for e in debts),
            "bad_debt_paid_by_fund": sum(int(e.paid_by_fund) for e in debts),
            "socialised": sum(int(e.socialised) for e in debts),
        }

    def keepers(self) -> Counter:
        """Actions per keeper address."""
        return Counter(a.keeper for a in self.actions)


def read_history(client: Any, start: int, stop: int, chunk: int = 5_000) -> History:
    """The engine's events of blocks `start..stop`, in log order (through the SDK client)."""
    logs: list[Any] = []
    for lo in range(start, stop + 1, chunk):
        logs.extend(client.events(lo, min(stop, lo + chunk - 1), ENGINE_EVENTS))
    return History(logs)


def _stamp(provider: Any, block: int, cache: dict[int, int]) -> int:
    if block not in cache:
        cache[block] = int(provider.web3.eth.get_block(block)["timestamp"])
    return cache[block]


def next_timestamp(provider: Any, block: int, cache: dict[int, int]) -> int:
    """t(block + 1): that block's timestamp, or, while it is not mined, t(block) plus the
    interval before `block` (at least 1 s)."""
    if block + 1 in cache:
        return cache[block + 1]
    try:
        return _stamp(provider, block + 1, cache)
    except Exception:  # noqa: BLE001 - BlockNotFound: not mined yet
        now = _stamp(provider, block, cache)
        before = _stamp(provider, block - 1, cache) if block > 0 else now - 1
        return now + max(1, now - before)


def grace_period_of(client: Any) -> int:
    return int(client.risk_params().grace_period)


def eligible(status: Any, kind: str, now: int, grace_period: int | None = None) -> bool:
    """Whether a `kind` action ("call" or "liquidation") carrying timestamp `now` succeeds
    on the account of `status` (taken at an earlier block, same prices): see the module's
    docstring. Profit plays no part."""
    s = Snapshot.from_status(status)
    state = state_at(s, now, grace_period)
    if kind == "call":
        # a call needs every price; a liquidation values an unpriced leg at its worst case
        return s.priced and state == State.CALLABLE
    if state in (State.CRITICAL, State.BANKRUPT):
        return True
    return state == State.LIQUIDATABLE and now >= s.next_tranche_time


def _floors(actions: Sequence[Action]) -> dict[Action, int]:
    """For each action, the block of the previous action on the same account (-1: none);
    another action in the same block counts as previous."""
    blocks: dict[str, list[int]] = defaultdict(list)
    for a in actions:
        blocks[a.account].append(a.block)
    out: dict[Action, int] = {}
    for a in actions:
        others = sorted(blocks[a.account])
        others.remove(a.block)
        out[a] = max((b for b in others if b <= a.block), default=-1)
    return out


def action_delays(
    client: Any,
    provider: Any,
    actions: Iterable[Action],
    lookback: int = 50,
    grace_period: int | None = None,
) -> dict[Action, int]:
    """Blocks from eligibility to each action (see the module's docstring).

    A delay equal to `lookback` means "at least that many". Reads `check_margins` at
    past blocks (an archive node, or Anvil, keeps them). `grace_period` defaults to the
    engine's.
    """
    actions = list(dict.fromkeys(actions))
    grace = grace_period_of(client) if grace_period is None else grace_period
    floor = _floors(actions)
    pending: dict[Action, int] = {a: a.block for a in actions}  # action -> earliest eligible
    open_: set[Action] = set(pending)
    stamps: dict[int, int] = {}
    for back in range(1, lookback + 1):
        by_block: dict[int, list[Action]] = defaultdict(list)
        for a in open_:
            b = a.block - back
            if b >= 0 and b >= floor[a]:
                by_block[b].append(a)
        if not by_block:
            break
        still: set[Action] = set()
        for b, group in by_block.items():
            now = _stamp(provider, b + 1, stamps)
            accounts = sorted({a.account for a in group})
            statuses = client.statuses(accounts, block_id=b)
            by_account = {str(s.account): s for s in statuses}
            for a in group:
                s = by_account.get(a.account)
                if s is not None and eligible(s, a.kind, now, grace):
                    pending[a] = b
                    still.add(a)
        open_ = still
        if not open_:
            break
    return {a: a.block - first for a, first in pending.items()}


def eligible_kinds(
    client: Any,
    provider: Any,
    accounts: Sequence[str],
    block: int,
    stamps: dict[int, int],
    grace_period: int | None = None,
) -> dict[str, str]:
    """For each of `accounts` that a keeper could call or liquidate in the block after
    `block` (its state after `block`, at the next block's timestamp), which action:
    "call" or "liquidation"."""
    if not accounts:
        return {}
    grace = grace_period_of(client) if grace_period is None else grace_period
    now = next_timestamp(provider, block, stamps)
    out = {}
    for s in client.statuses(list(accounts), block_id=block):
        for kind in ("call", "liquidation"):
            if eligible(s, kind, now, grace):
                out[str(s.account)] = kind
    return out


def eligible_at(
    client: Any,
    provider: Any,
    accounts: Sequence[str],
    block: int,
    stamps: dict[int, int],
    grace_period: int | None = None,
) -> set[str]:
    """The `accounts` a keeper could call or liquidate in the block after `block` (their
    state after `block`, at the next block's timestamp)."""
    return set(eligible_kinds(client, provider, accounts, block, stamps, grace_period))


def unattended(
    client: Any,
    provider: Any,
    accounts: Sequence[str],
    start: int,
    stop: int,
    actions: Iterable[Action],
) -> list[tuple[str, int]]:
    """`(account, b)` for every block `b` in `start..stop-1` after which the account was
    eligible for an action, was not acted on in block `b + 1`, and was still eligible for
    the same action after it.

    Empty means: every account that became eligible was called or liquidated in the next
    block, or stopped being eligible for that action in that block: by itself (a rebound,
    a cure), or because a transaction of that block ordered before the keeper's moved it
    on (a price update that turns a CALLABLE account LIQUIDATABLE: a new eligibility,
    judged from that block on).
    """
    acted = {(a.account, a.block) for a in actions}
    stamps: dict[int, int] = {}
    grace = grace_period_of(client)
    missing = []
    before = eligible_kinds(client, provider, accounts, start, stamps, grace)
    for b in range(start, stop):
        after = eligible_kinds(client, provider, accounts, b + 1, stamps, grace)
        missing.extend(
            (a, b) for a in sorted(before) if (a, b + 1) not in acted and after.get(a) == before[a]
        )
        before = after
    return missing


def delay_stats(delays: Sequence[int]) -> dict[str, float]:
    """max, mean, p50 and p99 of block delays (0 for none)."""
    if not delays:
        return {"count": 0, "max": 0, "mean": 0.0, "p50": 0, "p99": 0}
    ordered = sorted(delays)

    def pct(p: float) -> int:
        return ordered[min(len(ordered) - 1, int(p * (len(ordered) - 1) + 0.5))]

    return {
        "count": len(ordered),
        "max": ordered[-1],
        "mean": sum(ordered) / len(ordered),
        "p50": pct(0.5),
        "p99": pct(0.99),
    }


__all__ = [
    "Action",
    "History",
    "action_delays",
    "delay_stats",
    "eligible",
    "eligible_at",
    "eligible_kinds",
    "next_timestamp",
    "read_history",
    "unattended",
]
