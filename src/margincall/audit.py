"""What happened on chain, measured from events and historical state alone.

The demo's report and the end-to-end tests use this instead of trusting the
keeper's own counters: every figure comes from the engine's logs, and the
keeper's delay is measured against the chain's history.

Delay. For an action (a `MarginCall` or a `Liquidation`) mined in block B,
the account's *eligibility block* is the first block E of the unbroken run of
blocks before B at the end of which the action was already possible:
`check_margin` at block b (its state after block b, at block b's timestamp)
says CALLABLE for a call; CRITICAL, BANKRUPT, or LIQUIDATABLE with the
tranche interval elapsed for a liquidation. The delay is B - E: 1 means the
keeper acted in the first block after the one that made the account
eligible, the best any keeper can do (a transaction cannot react to a
price set in its own block unless it is ordered right behind it).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from margincall.constants import State

ENGINE_EVENTS = ("MarginCall", "MarginCallCleared", "Liquidation", "BadDebt", "PositionChanged")


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
            "keeper_rewards": sum(int(e.keeper_reward) for e in liqs)
            + sum(int(e.reward) for e in self.of("MarginCall")),
            "fund_fees": sum(int(e.fund_fee) for e in liqs),
            "bad_debt": sum(int(e.amount) for e in debts),
            "bad_debt_paid_by_fund": sum(int(e.paid_by_fund) for e in debts),
            "socialised": sum(int(e.socialised) for e in debts),
        }

    def keepers(self) -> Counter:
        """Actions per keeper address."""
        return Counter(a.keeper for a in self.actions)


def read_history(engine: Any, provider: Any, start: int, stop: int, chunk: int = 5_000) -> History:
    """The engine's events of blocks `start..stop`, in log order."""
    abis = [getattr(engine, name).abi for name in ENGINE_EVENTS]
    ecosystem = provider.network.ecosystem
    logs: list[Any] = []
    for lo in range(start, stop + 1, chunk):
        hi = min(stop, lo + chunk - 1)
        raw = provider.web3.eth.get_logs(
            {"address": str(engine.address), "fromBlock": lo, "toBlock": hi}
        )
        if raw:
            logs.extend(ecosystem.decode_logs(raw, *abis))
    return History(logs)


def _eligible(status: Any, kind: str, timestamp: int) -> bool:
    state = State(int(status.state))
    if kind == "call":
        return state == State.CALLABLE
    if state in (State.CRITICAL, State.BANKRUPT):
        return True
    return state == State.LIQUIDATABLE and timestamp >= int(status.next_tranche_time)


def action_delays(
    engine: Any,
    provider: Any,
    actions: Iterable[Action],
    lookback: int = 50,
) -> dict[Action, int]:
    """Blocks from eligibility to each action (see the module's docstring).

    A delay equal to `lookback` means "at least that many". Reads
    `check_margins` at past blocks (an archive node, or Anvil, keeps them).
    """
    pending: dict[Action, int] = {a: a.block for a in actions}  # action -> earliest eligible
    open_: set[Action] = set(pending)
    stamps: dict[int, int] = {}
    for back in range(1, lookback + 1):
        by_block: dict[int, list[Action]] = defaultdict(list)
        for a in open_:
            b = a.block - back
            if b >= 0:
                by_block[b].append(a)
        if not by_block:
            break
        still: set[Action] = set()
        for b, group in by_block.items():
            if b not in stamps:
                stamps[b] = int(provider.web3.eth.get_block(b)["timestamp"])
            accounts = sorted({a.account for a in group})
            statuses = engine.check_margins(accounts, block_id=b)
            by_account = {str(s.account): s for s in statuses}
            for a in group:
                s = by_account.get(a.account)
                if s is not None and _eligible(s, a.kind, stamps[b]):
                    pending[a] = b
                    still.add(a)
        open_ = still
        if not open_:
            break
    return {a: a.block - first for a, first in pending.items()}


def _stamp(provider: Any, block: int, cache: dict[int, int]) -> int:
    if block not in cache:
        cache[block] = int(provider.web3.eth.get_block(block)["timestamp"])
    return cache[block]


def eligible_at(
    engine: Any, provider: Any, accounts: Sequence[str], block: int, stamps: dict[int, int]
) -> set[str]:
    """The `accounts` a keeper could call or liquidate after `block` (its state and time)."""
    if not accounts:
        return set()
    now = _stamp(provider, block, stamps)
    out = set()
    for s in engine.check_margins(list(accounts), block_id=block):
        if _eligible(s, "call", now) or _eligible(s, "liquidation", now):
            out.add(str(s.account))
    return out


def unattended(
    engine: Any,
    provider: Any,
    accounts: Sequence[str],
    start: int,
    stop: int,
    actions: Iterable[Action],
) -> list[tuple[str, int]]:
    """`(account, b)` for every block `b` in `start..stop-1` after which the account was
    eligible, was not acted on in block `b + 1`, and was still eligible after it.

    Empty means: every account that became eligible was called or liquidated in the next
    block (or stopped being eligible by itself, e.g. a rebound or a cure, in that block).
    """
    acted = {(a.account, a.block) for a in actions}
    stamps: dict[int, int] = {}
    missing = []
    before = eligible_at(engine, provider, accounts, start, stamps)
    for b in range(start, stop):
        after = eligible_at(engine, provider, accounts, b + 1, stamps)
        missing.extend((a, b) for a in sorted(before) if (a, b + 1) not in acted and a in after)
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
    "eligible_at",
    "read_history",
    "unattended",
]
