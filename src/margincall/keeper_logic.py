"""The keeper's decisions as pure functions: no chain, no I/O.

The bot (issue 3) feeds these with `check_margins` snapshots, the head
timestamp and a gas estimate, and sends what `decide` returns through the
SDK's `margin_call_many` / `liquidate_many`. Everything is a plain integer:
gas in gas units, prices and rewards in wei of the native coin (the bot
converts collateral rewards at its own exchange rate), times in seconds.

Rules (PROTOCOL.md section 5, design.md "Account states"):

- CRITICAL and BANKRUPT accounts are always liquidated: a delay only grows
  the bad debt, and the fund pays the keeper of a bankrupt account.
- LIQUIDATABLE accounts are liquidated once their tranche interval has
  elapsed and when the expected keeper reward covers the gas times the
  profit margin.
- CALLABLE accounts are called when the call reward covers the gas times
  the profit margin.
- Accounts whose prices are invalid (`priced = False`) are skipped: the
  engine would skip them too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from margincall.constants import MAX_BATCH, State

# --- inputs ---------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """What the keeper knows of one account at one block."""

    account: str
    state: State
    next_tranche_time: int = 0  # 0 before the first tranche
    call_deadline: int = 0
    ratio: int = 2**256 - 1
    priced: bool = True

    @classmethod
    def from_status(cls, status: Any) -> Snapshot:
        """From an SDK `MarginStatus`, an engine struct or a dict with the same fields."""

        def get(name: str, default: Any) -> Any:
            if isinstance(status, Mapping):
                return status.get(name, default)
            return getattr(status, name, default)

        return cls(
            account=str(get("account", "")),
            state=State(int(get("state", 0))),
            next_tranche_time=int(get("next_tranche_time", 0)),
            call_deadline=int(get("call_deadline", 0)),
            ratio=int(get("ratio", 2**256 - 1)),
            priced=bool(get("priced", True)),
        )


@dataclass(frozen=True)
class CostModel:
    """Gas costs, expected rewards and the profit margin (rewards in wei of native coin)."""

    gas_price: int  # wei per gas
    gas_per_call: int = 80_000  # per account in `margin_call_many`
    gas_per_tranche: int = 250_000  # per account in `liquidate_many`
    call_reward: int = 0  # expected `call_reward`, in wei
    tranche_reward: int = 0  # expected keeper reward of a tranche, in wei
    margin_bps: int = 12_000  # reward must be >= cost * margin_bps / 10_000

    def __post_init__(self) -> None:
        if self.gas_price < 0 or self.gas_per_call < 0 or self.gas_per_tranche < 0:
            raise ValueError("gas price and gas per action must be non-negative")
        if self.margin_bps < 0:
            raise ValueError("margin_bps must be non-negative")


def covers(reward: int, gas: int, gas_price: int, margin_bps: int) -> bool:
    """Whether `reward` (wei) pays `gas * gas_price` times the margin."""
    return reward * 10_000 >= gas * gas_price * margin_bps


def can_call(s: Snapshot, costs: CostModel, reward: int | None = None) -> bool:
    """A CALLABLE, priced account whose call reward pays for the call."""
    if not s.priced or s.state != State.CALLABLE:
        return False
    r = costs.call_reward if reward is None else reward
    return covers(r, costs.gas_per_call, costs.gas_price, costs.margin_bps)


def can_liquidate(s: Snapshot, now: int, costs: CostModel, reward: int | None = None) -> bool:
    """CRITICAL/BANKRUPT always; LIQUIDATABLE when the interval allows and it pays."""
    if not s.priced:
        return False
    if s.state in (State.CRITICAL, State.BANKRUPT):
        return True
    if s.state != State.LIQUIDATABLE:
        return False
    if now < s.next_tranche_time:
        return False
    r = costs.tranche_reward if reward is None else reward
    return covers(r, costs.gas_per_tranche, costs.gas_price, costs.margin_bps)


# --- decision ---------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What to send this block, in batches of at most `MAX_BATCH` accounts."""

    margin_calls: tuple[tuple[str, ...], ...] = ()
    liquidations: tuple[tuple[str, ...], ...] = ()
    wake_at: int | None = None  # earliest time something may become actionable

    @property
    def calls(self) -> list[str]:
        return [a for batch in self.margin_calls for a in batch]

    @property
    def liquidated(self) -> list[str]:
        return [a for batch in self.liquidations for a in batch]

    @property
    def empty(self) -> bool:
        return not self.margin_calls and not self.liquidations


def batches(accounts: Sequence[str], size: int = MAX_BATCH) -> tuple[tuple[str, ...], ...]:
    """Consecutive batches of at most `size` accounts."""
    if size <= 0:
        raise ValueError("batch size must be positive")
    return tuple(tuple(accounts[i : i + size]) for i in range(0, len(accounts), size))


def decide(
    snapshots: Iterable[Snapshot],
    now: int,
    costs: CostModel,
    rewards: Mapping[str, int] | None = None,
    max_batch: int = MAX_BATCH,
) -> Decision:
    """Which accounts to `margin_call_many` and which to `liquidate_many` at `now`.

    `now` is the timestamp the transactions are expected to carry.
    `rewards` optionally overrides the expected reward per account (wei), e.g.
    from `preview_liquidation(...).keeper_reward`. Liquidations come most
    urgent first (BANKRUPT, CRITICAL, then by ratio); calls by ratio.
    Each account appears at most once.
    """
    if not 0 < max_batch <= MAX_BATCH:
        raise ValueError(f"max_batch must be in 1..{MAX_BATCH} (the engine's batch bound)")
    rewards = rewards or {}
    seen: set[str] = set()
    liq: list[Snapshot] = []
    call: list[Snapshot] = []
    wake: int | None = None
    for s in snapshots:
        if s.account in seen:
            continue
        seen.add(s.account)
        reward = rewards.get(s.account)
        if can_liquidate(s, now, costs, reward):
            liq.append(s)
        elif can_call(s, costs, reward):
            call.append(s)
        elif s.priced and s.state == State.LIQUIDATABLE and now < s.next_tranche_time:
            wake = s.next_tranche_time if wake is None else min(wake, s.next_tranche_time)
        elif s.priced and s.state == State.CALLED and s.call_deadline:
            wake = s.call_deadline if wake is None else min(wake, s.call_deadline)
    liq.sort(key=lambda s: (-int(s.state), s.ratio))
    call.sort(key=lambda s: s.ratio)
    return Decision(
        margin_calls=batches([s.account for s in call], max_batch),
        liquidations=batches([s.account for s in liq], max_batch),
        wake_at=wake,
    )


# --- sharding ---------------------------------------------------------------


def shard_of(account: str, n: int) -> int:
    """A stable shard index in `0..n-1` for an address (case-insensitive)."""
    if n <= 0:
        raise ValueError("shard count must be positive")
    digest = hashlib.sha256(account.lower().encode()).digest()
    return int.from_bytes(digest[:8], "big") % n


def shard(accounts: Iterable[str], i: int, n: int) -> list[str]:
    """The accounts of shard `i` of `n`, in their order: the n shards partition the input."""
    if not 0 <= i < n:
        raise ValueError(f"shard index {i} not in 0..{n - 1}")
    return [a for a in accounts if shard_of(a, n) == i]


# --- accounts from events ---------------------------------------------------------------


def _event_field(event: Any, name: str) -> Any:
    if isinstance(event, Mapping):
        if name in event:
            return event[name]
        return event.get("event_arguments", event.get("args", {}))[name]
    return getattr(event, name)


def _event_name(event: Any) -> str | None:
    if isinstance(event, Mapping):
        return event.get("event_name") or event.get("event")
    return getattr(event, "event_name", None)


@dataclass
class PositionBook:
    """Accounts with open positions, rebuilt from `PositionChanged` events.

    An account is open while it holds a non-zero size in any market; a
    `PositionChanged` with size 0 removes that market, and the account leaves
    the book when no market is left. Feed events in log order.
    """

    markets: dict[str, set[int]] = field(default_factory=dict)

    def apply(self, event: Any) -> None:
        name = _event_name(event)
        if name is not None and name != "PositionChanged":
            return
        account = str(_event_field(event, "account"))
        market_id = int(_event_field(event, "market_id"))
        size = int(_event_field(event, "size"))
        held = self.markets.setdefault(account, set())
        if size != 0:
            held.add(market_id)
        else:
            held.discard(market_id)
        if not held:
            del self.markets[account]

    def apply_all(self, events: Iterable[Any]) -> PositionBook:
        for event in events:
            self.apply(event)
        return self

    @property
    def accounts(self) -> list[str]:
        return sorted(self.markets)

    def __contains__(self, account: object) -> bool:
        return account in self.markets

    def __len__(self) -> int:
        return len(self.markets)


def open_accounts(events: Iterable[Any]) -> list[str]:
    """The accounts with an open position after `events` (PositionChanged, in log order)."""
    return PositionBook().apply_all(events).accounts


# --- metrics ---------------------------------------------------------------


@dataclass
class Metrics:
    """The keeper's counters, exported by the bot and the simulator."""

    accounts_tracked: int = 0
    calls_sent: int = 0  # accounts put in `margin_call_many`
    calls_made: int = 0  # accounts actually called
    tranches_sent: int = 0  # accounts put in `liquidate_many`
    tranches_made: int = 0  # accounts actually liquidated
    races_lost: int = 0  # sent but skipped by the engine: a rival acted first
    skipped_recovered: int = 0  # sent but skipped: no longer eligible (price moved back)
    rewards_earned: int = 0  # token units
    delays: list[int] = field(default_factory=list)  # blocks from eligible to acted

    def track(self, accounts: int) -> None:
        self.accounts_tracked = accounts

    def record_calls(self, sent: int, made: int, reward: int = 0) -> None:
        self._record(sent, made)
        self.calls_sent += sent
        self.calls_made += made
        self.rewards_earned += reward

    def record_tranches(self, sent: int, made: int, reward: int = 0) -> None:
        self._record(sent, made)
        self.tranches_sent += sent
        self.tranches_made += made
        self.rewards_earned += reward

    def record_delay(self, eligible_block: int, acted_block: int) -> None:
        if acted_block < eligible_block:
            raise ValueError("acted before the account was eligible")
        self.delays.append(acted_block - eligible_block)

    def _record(self, sent: int, made: int) -> None:
        if not 0 <= made <= sent:
            raise ValueError(f"made {made} of {sent} sent")
        self.races_lost += sent - made

    def record_skips(self, raced: int, recovered: int) -> None:
        """Accounts the engine skipped: `raced` because a rival acted first in or before the
        block, `recovered` because they were no longer eligible."""
        if raced < 0 or recovered < 0:
            raise ValueError("skip counts must be non-negative")
        self.races_lost += raced
        self.skipped_recovered += recovered

    @property
    def max_delay(self) -> int:
        return max(self.delays, default=0)

    @property
    def mean_delay(self) -> float:
        return sum(self.delays) / len(self.delays) if self.delays else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["delays"]
        out["max_delay_blocks"] = self.max_delay
        out["mean_delay_blocks"] = self.mean_delay
        return out


__all__ = [
    "CostModel",
    "Decision",
    "Metrics",
    "PositionBook",
    "Snapshot",
    "batches",
    "can_call",
    "can_liquidate",
    "covers",
    "decide",
    "open_accounts",
    "shard",
    "shard_of",
]
