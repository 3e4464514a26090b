"""The keeper's decisions as pure functions: no chain, no I/O.

The bot feeds these with `check_margins` snapshots taken at the head block,
the timestamp its transactions are expected to carry (the next block's:
`BlockClock`) and a gas price, and sends what `decide` returns through the
SDK's `margin_call_many` / `liquidate_many`. Everything is a plain integer:
gas in gas units, prices and rewards in wei of the native coin (the bot
converts collateral rewards at its own exchange rate), times in seconds.

Rules (PROTOCOL.md section 5, design.md "Account states"):

- CRITICAL and BANKRUPT accounts are always liquidated: a delay only grows
  the bad debt, and the fund pays the keeper of a bankrupt account.
- LIQUIDATABLE accounts are liquidated once their tranche interval has
  elapsed and when the expected keeper reward covers the gas times the
  profit margin. The expected reward is a lower bound of the engine's
  reward for that account's tranche, from its `check_margins` status
  (`tranche_reward_floor`), when the cost model carries a `RewardModel`.
- A snapshot is projected to `now` (`state_at`): prices do not move with
  time, but a CALLED account whose deadline has passed (`call_deadline <=
  now`) is LIQUIDATABLE at `now`, since its ratio is under `call_ratio` and
  its call stays enforceable for one grace period after the deadline. So a
  keeper scanning block b with `now = t(b+1)` sends the tranche that the
  engine accepts in block b+1, not one block later.
- A call past its deadline that cleared itself (the account was back at
  `call_ratio` since the call, with no transaction: PROTOCOL.md section 2)
  makes the account CALLABLE, not LIQUIDATABLE: the scan shows it so from the
  deadline on, and for the block ahead the bot asks `calls_cleared` about the
  due calls (`due_calls`, `project_cleared`), so it sends a fresh call, not a
  liquidation the engine would refuse.
- CALLABLE accounts are called when the call reward covers the gas times
  the profit margin (the reward the engine pays for that call, which it cuts
  to keep equity at or above maintenance: `call_reward_floor`).
- An account with a leg whose price is invalid (`priced = False`) is never
  called (a call needs every price), but it is liquidated: `check_margins`
  values the leg at its worst case as `liquidate` does (no stale-leg shield,
  docs/design.md), and reports HEALTHY when the engine cannot act on it
  (no priced leg, or the L2 sequencer down).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from statistics import median
from typing import Any

from margincall.constants import MAX_BATCH, WAD, State
from margincall.math import TRANCHE_PENALTY_DIV, RiskParams, div_ceil, mul_up, scaled_call_reward

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
    # what bounds the reward (`RewardModel`); all wad, as `check_margins` returns them;
    # maintenance 0: unknown (the cost model's flat rewards are used)
    collateral: int = 0
    equity: int = 0
    maintenance: int = 0
    positions: int = 0
    mmr: int = 0  # the largest mmr of the account's markets (wad); 0: unknown (all markets')

    @classmethod
    def from_status(cls, status: Any, mmr: int = 0) -> Snapshot:
        """From an SDK `MarginStatus`, an engine struct or a dict with the same fields
        (`mmr`, which no status carries, is given by the caller)."""

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
            collateral=int(get("collateral", 0)),
            equity=int(get("equity", 0)),
            maintenance=int(get("maintenance", 0)),
            positions=int(get("positions", 0)),
            mmr=mmr,
        )


# Gas per account, measured from receipts on Anvil (scripts/bench_gas.py's steady state; one
# `liquidate_many` / `margin_call_many` of n accounts, n = 1, 10, 50, with one market or three
# each; docs/bots.md): total gas = fixed + n * marginal.
GAS_TRANCHE_MARGINAL = 38_708  # per one-market account inside `liquidate_many`
GAS_TRANCHE_FIXED = 82_873  # per `liquidate_many` transaction (21,000 base included)
GAS_CALL_MARGINAL = 39_865  # per one-market account inside `margin_call_many` (first call:
# its parked-reward word is written fresh; a later call on the same account costs ~17,100 less)
GAS_CALL_FIXED = 41_873  # per `margin_call_many` transaction (21,000 base included)
GAS_EXTRA_MARKET = 17_836  # per further market of an account, inside `liquidate_many`
GAS_CALL_EXTRA_MARKET = 4_751  # per further market of an account, inside `margin_call_many`
GAS_SHARE_OF = 10  # the profit rule charges each account 1/10 of a transaction's fixed gas
GAS_PER_TRANCHE = GAS_TRANCHE_MARGINAL + GAS_TRANCHE_FIXED // GAS_SHARE_OF  # 46,995
GAS_PER_CALL = GAS_CALL_MARGINAL + GAS_CALL_FIXED // GAS_SHARE_OF  # 44,052


@dataclass(frozen=True)
class RewardModel:
    """What bounds the reward of a call or a tranche from a `check_margins` status: the
    engine's risk parameters, the largest `mmr` of its markets (wad), the collateral's
    decimals and the keeper's exchange rate (wei of native coin per whole token)."""

    params: RiskParams
    max_mmr: int
    decimals: int = 18
    wei_per_token: int = 0

    def __post_init__(self) -> None:
        if self.max_mmr <= 0:
            raise ValueError("max_mmr must be positive (every market's mmr is)")
        if not 0 <= self.decimals <= 18:
            raise ValueError("decimals must be in 0..18")
        if self.wei_per_token < 0:
            raise ValueError("wei_per_token must be non-negative")

    @property
    def scale(self) -> int:
        """Wad per token unit."""
        return 10 ** (18 - self.decimals)

    def to_wei(self, units: int) -> int:
        """Token units in wei of native coin (rounded down)."""
        return units * self.wei_per_token // 10**self.decimals


@dataclass(frozen=True)
class CostModel:
    """Gas costs, expected rewards and the profit margin (rewards in wei of native coin).

    `gas_per_call` / `gas_per_tranche`: gas charged to one (one-market) account, the
    measured marginal gas inside a batch plus a tenth of a transaction's fixed gas;
    `gas_per_extra_market` (`gas_per_call_extra_market`) is added for each further market
    of a tranche's (a call's) account.
    `rewards`: with it, each account's reward is bounded from its snapshot
    (`call_reward_floor`, `tranche_reward_floor`); `call_reward` and `tranche_reward`
    are the flat fallbacks for snapshots without margins."""

    gas_price: int  # wei per gas
    gas_per_call: int = GAS_PER_CALL  # per account in `margin_call_many`
    gas_per_tranche: int = GAS_PER_TRANCHE  # per account in `liquidate_many`
    call_reward: int = 0  # expected `call_reward`, in wei (fallback)
    tranche_reward: int = 0  # expected keeper reward of a tranche, in wei (fallback)
    margin_bps: int = 12_000  # reward must be >= cost * margin_bps / 10_000
    gas_per_extra_market: int = GAS_EXTRA_MARKET  # per market of a tranche beyond the first
    rewards: RewardModel | None = None
    gas_per_call_extra_market: int = GAS_CALL_EXTRA_MARKET  # per market of a call beyond one

    def __post_init__(self) -> None:
        if min(self.gas_price, self.gas_per_call, self.gas_per_tranche) < 0:
            raise ValueError("gas price and gas per action must be non-negative")
        if min(self.gas_per_extra_market, self.gas_per_call_extra_market) < 0:
            raise ValueError("gas per extra market must be non-negative")
        if self.margin_bps < 0:
            raise ValueError("margin_bps must be non-negative")

    def tranche_gas(self, s: Snapshot) -> int:
        """Gas charged for the tranche of the account of `s`."""
        return self.gas_per_tranche + self.gas_per_extra_market * max(s.positions - 1, 0)

    def call_gas(self, s: Snapshot) -> int:
        """Gas charged for the margin call of the account of `s`."""
        return self.gas_per_call + self.gas_per_call_extra_market * max(s.positions - 1, 0)


# --- reward bounds -------------------------------------------------------------------------
# The engine's reward of an action, bounded from below from what `check_margins` returns
# (equity, maintenance, collateral, positions) without reading the positions: the keeper
# decides in the block it scanned, with no round trip between its scan and its send.


def call_reward_floor(s: Snapshot, model: RewardModel) -> int:
    """What `margin_call` pays for the account of `s` (token units), at the snapshot's
    prices: `call_reward`, cut so that equity stays at or above maintenance and to the
    collateral (the engine's rule, `margincall.math.call_reward`). The reward scales with
    the notional, which the snapshot does not carry: it is bounded from below by
    `(maintenance - k) / max_mmr` as in `tranche_reward_floor` (exact for the flat part)."""
    scale, k = model.scale, max(s.positions, 1)
    room, need = s.equity // scale, div_ceil(s.maintenance, scale)
    if room <= need:
        return 0
    notional = max(s.maintenance - k, 0) * WAD // (s.mmr or model.max_mmr)
    reward = scaled_call_reward(notional, model.params) // scale
    return min(reward, room - need, s.collateral // scale)


def tranche_reward_floor(s: Snapshot, model: RewardModel) -> int:
    """A lower bound of the keeper reward (token units) of the next plain tranche of the
    account of `s` (LIQUIDATABLE, or CALLED past its deadline), at the snapshot's prices,
    never above what the engine pays (`margincall.math.plan_tranche`):

    - notional: `maintenance = sum(mul_up(notional_i, mmr_i)) <= notional * max_mmr + k`
      (k positions), so `notional >= (maintenance - k) / max_mmr`, `max_mmr` being the
      largest mmr of the account's markets when the snapshot knows it (`Snapshot.mmr`),
      else of all markets (`RewardModel.max_mmr`);
    - fraction: the engine's `tranche_fraction` with that notional (its denominator
      `call_ratio * maintenance - penalty * notional` only grows as the notional
      shrinks, so the fraction only shrinks), capped by `close_factor`;
    - closed notional: `fraction * notional`, less each position's truncation (one size
      wei times the price: under notional / 1e9 for positions of at least 1e-9 base units);
    - penalty and keeper share as the engine rounds them, the penalty capped by the
      balance after the close, which lies between the collateral and the equity (less
      the same rounding allowance), at the tranche penalty
      (`liquidation_penalty // TRANCHE_PENALTY_DIV`);
    - reward `min(max(share, min_keeper_reward), max_keeper_reward, penalty)`: monotone in
      share and penalty, so bounds in give a bound out.

    A BANKRUPT account (equity <= 0) pays exactly `min_keeper_reward`, whatever the fund
    holds (the pool pays what the fund cannot).

    Not modelled: a market whose liquidation window has room for only part of the
    tranche (the engine then closes less; `held_by_window` holds full windows back), and
    prices that move between the scan and the block."""
    p, scale, k = model.params, model.scale, max(s.positions, 1)
    if s.maintenance <= 0:
        return 0
    if s.equity <= 0:  # BANKRUPT: the engine pays min_keeper_reward out of the deficit
        return p.min_keeper_reward // scale
    notional = max(s.maintenance - k, 0) * WAD // (s.mmr or model.max_mmr)
    equity = s.equity - (2 * scale + 8 * k + 8)
    cm = p.call_ratio * s.maintenance
    num = cm - equity * WAD
    rate = p.liquidation_penalty // TRANCHE_PENALTY_DIV  # a tranche's penalty
    den = cm - rate * notional
    if num <= 0:
        return 0
    f = p.close_factor if den <= 0 else min(div_ceil(num * WAD, den), p.close_factor)
    slack = notional // 10**9 + k + 1
    closed = notional * f // WAD - slack
    if closed <= 0:
        return 0
    share = closed * rate // WAD * p.keeper_share // WAD // scale
    balance = (min(s.collateral, s.equity) - slack - 8 * k - 8) // scale - 1
    penalty = min(div_ceil(mul_up(closed, rate), scale), balance)
    reward = min(max(share, p.min_keeper_reward // scale), p.max_keeper_reward // scale, penalty)
    return max(reward, 0)


def covers(reward: int, gas: int, gas_price: int, margin_bps: int) -> bool:
    """Whether `reward` (wei) pays `gas * gas_price` times the margin."""
    return reward * 10_000 >= gas * gas_price * margin_bps


def state_at(s: Snapshot, now: int, grace_period: int | None = None) -> State:
    """The state the engine gives the account of snapshot `s` at time `now` (prices as in
    the snapshot, no transaction in between).

    Only a recorded call moves with time: a CALLED account (1 <= ratio < call_ratio) whose
    `call_deadline` is at or before `now` is LIQUIDATABLE, its call being enforceable for
    one grace period after the deadline. With `grace_period` given, a call whose
    enforceable period is over at `now` has lapsed and the account is CALLABLE again;
    without it (the keeper, which looks one block ahead) the call is taken as live.
    Not modelled: a tranche that would leave dust makes the engine say CRITICAL instead
    of LIQUIDATABLE (both are liquidated; only the tranche interval differs).
    """
    if s.state != State.CALLED or s.call_deadline == 0 or now < s.call_deadline:
        return s.state
    if grace_period is not None and now >= s.call_deadline + grace_period:
        return State.CALLABLE
    return State.LIQUIDATABLE


def due_calls(snapshots: Iterable[Snapshot], now: int) -> list[str]:
    """The accounts whose call `state_at` projects to LIQUIDATABLE at `now` (CALLED, priced,
    the deadline at or before `now`): the ones to ask `calls_cleared` about, since a call
    that cleared itself (the account was back at `call_ratio` since the call, with no
    transaction) makes them CALLABLE instead."""
    return [
        s.account
        for s in snapshots
        if s.priced and s.state == State.CALLED and s.call_deadline and s.call_deadline <= now
    ]


def project_cleared(
    snapshots: Iterable[Snapshot], now: int, cleared: Iterable[str]
) -> tuple[Snapshot, ...]:
    """`snapshots` with the due calls that cleared themselves (`cleared`, from
    `MarginLens.calls_cleared`) shown as the engine shows them at `now`: CALLABLE without a
    deadline. So the keeper sends a fresh call (a fresh notice) instead of a liquidation the
    engine would refuse."""
    snaps = tuple(snapshots)
    done = {str(a).lower() for a in cleared}
    due = {a.lower() for a in due_calls(snaps, now)} & done
    return tuple(
        replace(s, state=State.CALLABLE, call_deadline=0) if s.account.lower() in due else s
        for s in snaps
    )


def call_reward_wei(s: Snapshot, costs: CostModel) -> int:
    """The reward (wei) the profit rule counts for calling the account of `s`:
    `call_reward_floor` with `costs.rewards` and the snapshot's margins, else the flat
    `costs.call_reward`."""
    model = costs.rewards
    if model is not None and s.maintenance > 0:
        return model.to_wei(call_reward_floor(s, model))
    return costs.call_reward


def tranche_reward_wei(s: Snapshot, costs: CostModel) -> int:
    """The reward (wei) the profit rule counts for a tranche of the account of `s`:
    `tranche_reward_floor` with `costs.rewards` and the snapshot's margins, else the flat
    `costs.tranche_reward`."""
    model = costs.rewards
    if model is not None and s.maintenance > 0:
        return model.to_wei(tranche_reward_floor(s, model))
    return costs.tranche_reward


def can_call(s: Snapshot, costs: CostModel, reward: int | None = None) -> bool:
    """A CALLABLE, priced account whose call reward pays for the call (`reward`, wei,
    overrides `call_reward_wei`)."""
    if not s.priced or s.state != State.CALLABLE:
        return False
    r = call_reward_wei(s, costs) if reward is None else reward
    return covers(r, costs.call_gas(s), costs.gas_price, costs.margin_bps)


def can_liquidate(s: Snapshot, now: int, costs: CostModel, reward: int | None = None) -> bool:
    """Whether a `liquidate` carrying timestamp `now` should be sent for the account of `s`:
    CRITICAL/BANKRUPT always; LIQUIDATABLE at `now` (`state_at`: including a CALLED account
    whose deadline is at or before `now`) when the tranche interval has elapsed by `now`
    and the reward (`reward`, wei, else `tranche_reward_wei`) pays for the gas
    (`CostModel.tranche_gas`) times the margin. An unpriced account (`priced` False) is
    judged on its worst-case state, as the engine liquidates it."""
    state = state_at(s, now)
    if state in (State.CRITICAL, State.BANKRUPT):
        return True
    if state != State.LIQUIDATABLE:
        return False
    if now < s.next_tranche_time:
        return False
    r = tranche_reward_wei(s, costs) if reward is None else reward
    return covers(r, costs.tranche_gas(s), costs.gas_price, costs.margin_bps)


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

    `now` is the timestamp the transactions are expected to carry: for a keeper that
    scanned block b, the timestamp of block b+1 (`BlockClock.next_timestamp`); for the
    simulator, its next slot's time. Snapshots are projected to `now` (`state_at`).
    Each account's reward is `call_reward_wei` / `tranche_reward_wei` (from its snapshot
    when `costs.rewards` is set); `rewards` optionally overrides it per account (wei), e.g.
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
        elif not s.priced:
            continue
        elif state_at(s, now) == State.LIQUIDATABLE and now < s.next_tranche_time:
            wake = s.next_tranche_time if wake is None else min(wake, s.next_tranche_time)
        elif s.state == State.CALLED and s.call_deadline > now:
            wake = s.call_deadline if wake is None else min(wake, s.call_deadline)
    liq.sort(key=lambda s: (-int(state_at(s, now)), s.ratio))
    call.sort(key=lambda s: s.ratio)
    return Decision(
        margin_calls=batches([s.account for s in call], max_batch),
        liquidations=batches([s.account for s in liq], max_batch),
        wake_at=wake,
    )


# --- time ---------------------------------------------------------------------


@dataclass
class BlockClock:
    """Estimates the timestamp the next block will carry, from the heads seen.

    `interval()` is `fixed` when set (`MARGINCALL_BLOCK_TIME`), else the median of the
    per-block timestamp deltas between the last `window` heads observed (a gap of k
    blocks counts as k blocks), at least 1 s: robust to one odd block (a time jump on a
    test chain, a missed slot), and 1 s when nothing has been observed yet.
    """

    fixed: int | None = None
    window: int = 8
    heads: list[tuple[int, int]] = field(default_factory=list)  # (number, timestamp), rising

    def __post_init__(self) -> None:
        if self.fixed is not None and self.fixed < 1:
            raise ValueError("a fixed block time must be at least 1 s")
        if self.window < 2:
            raise ValueError("the window needs at least 2 heads")

    def observe(self, number: int, timestamp: int) -> None:
        """Records a head; older or repeated numbers are ignored."""
        if self.heads and number <= self.heads[-1][0]:
            return
        self.heads.append((number, timestamp))
        del self.heads[: -self.window]

    def interval(self) -> int:
        if self.fixed is not None:
            return self.fixed
        deltas = [
            (t1 - t0) / (n1 - n0)
            for (n0, t0), (n1, t1) in zip(self.heads, self.heads[1:], strict=False)
        ]
        if not deltas:
            return 1
        return max(1, round(median(deltas)))

    def next_timestamp(self, timestamp: int) -> int:
        """The expected timestamp of the block after a head stamped `timestamp`."""
        return timestamp + self.interval()


# --- cascade window ----------------------------------------------------------------


def window_reopens(start: int, used: int, cap: int, window: int) -> int | None:
    """When a market's liquidation window has room again: `None` if it has room now
    (`used < cap`), else the time it restarts (`start + window`). Inputs are the engine's
    `window_state(market_id)`, the market's `window_cap` and `liquidation_window`."""
    return None if used < cap else start + window


def held_by_window(
    snapshots: Iterable[Snapshot],
    now: int,
    markets_of: Mapping[str, Iterable[int]],
    full_until: Mapping[int, int],
) -> tuple[list[Snapshot], list[Snapshot]]:
    """Splits `snapshots` into (to decide on, held back): an account is held back when it
    would be a plain tranche at `now` (LIQUIDATABLE, not CRITICAL/BANKRUPT, which the cap
    exempts) and one of its markets' windows is full until after `now`
    (`full_until[market] > now`). The engine would skip it: no point sending it."""
    keep: list[Snapshot] = []
    held: list[Snapshot] = []
    for s in snapshots:
        if state_at(s, now) == State.LIQUIDATABLE and any(
            full_until.get(m, 0) > now for m in markets_of.get(s.account, ())
        ):
            held.append(s)
        else:
            keep.append(s)
    return keep, held


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


__all__ = [
    "BlockClock",
    "CostModel",
    "Decision",
    "RewardModel",
    "Snapshot",
    "batches",
    "call_reward_floor",
    "call_reward_wei",
    "can_call",
    "can_liquidate",
    "covers",
    "decide",
    "held_by_window",
    "shard",
    "shard_of",
    "state_at",
    "tranche_reward_floor",
    "tranche_reward_wei",
    "window_reopens",
]
