"""The keeper's order settlement as pure functions: no chain, no I/O.

An order (PROTOCOL.md section 5b) is committed at a block's timestamp and settles at the
first round of its market's feed published strictly after that timestamp (`updatedAt >
committed_at`); the keeper passes that round's id as a hint, so the engine checks one
round and its predecessor instead of searching. Here:

- `PendingOrder`: what the keeper knows of one order, from its `OrderCommitted` log;
- `OrderTracker`: the pending orders, kept current from the order events (committed,
  settled, cancelled), as `PositionBook` keeps positions;
- `RoundCache`: the feed rounds read so far (a round never changes once published), and
  `first_round_after`, the hint: the first round with `updatedAt > t`, found by walking
  back from the latest round (a handful of reads at most: orders are settled within a
  round or two of their commit, and each read is cached);
- `plan_settlements`: which orders to settle now, in batches, within the profit rule (the
  settlement fee, converted to wei, must cover the gas per order times the margin);
- `settle_delays`: blocks from the first valid price after each commit to its settlement,
  from chain history (the demo's and the e2e test's latency figure).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from margincall.constants import MAX_BATCH
from margincall.keeper.logic import batches, covers
from margincall.sdk.settlement import order_tag

# Gas charged to one order inside `settle_orders` (the profit rule), measured from receipts on
# Anvil (one-market orders, a fresh round, batches of 10 and 50: 570,500 and 2,638,219 gas,
# so 51,700 per further order and ~53,500 per transaction): the marginal gas plus a tenth of
# a transaction's fixed gas, as the tranches are charged (`keeper.logic.GAS_PER_TRANCHE`).
GAS_SETTLE_MARGINAL = 51_700
GAS_SETTLE_FIXED = 53_500
GAS_PER_SETTLE = GAS_SETTLE_MARGINAL + GAS_SETTLE_FIXED // 10  # 57,050
MAX_ROUNDS_BACK = 64  # feed rounds walked back from the latest before giving up on a hint
PHASE_MASK = 2**64 - 1  # a Chainlink round id: phase << 64 | round in the phase
COMMIT_TIME_MASK = 2**40 - 1  # an order id: account << 96 | commit time << 8 | slot


def min_settlement_fee(
    gas_price: int,
    wei_per_token: int,
    margin_bps: int = 12_000,
    gas_per_order: int = GAS_PER_SETTLE,
) -> int:
    """The smallest settlement fee (millionths of a token, the book's unit) that a keeper
    with this cost model settles at: `gas_per_order * gas_price` wei times the margin, at
    `wei_per_token` wei per whole token, rounded up. The deploy config's
    `orders.settlement_fee` should be at least this at the chain's usual gas price."""
    if wei_per_token <= 0:
        raise ValueError("wei_per_token must be positive")
    need = gas_per_order * gas_price * margin_bps * 10**6
    return -(-need // (wei_per_token * 10_000))


def fee_guide(
    gas_prices_gwei: Sequence[float] = (0.01, 0.1, 0.58, 1, 5, 30, 50),
    native_per_token: float = 0.0004,
) -> str:
    """A markdown table of `min_settlement_fee` by gas price (docs/parameters.md):
    `python -c "from margincall.keeper.orders import fee_guide; print(fee_guide())"`."""
    wei_per_token = round(native_per_token * 10**18)
    rows = [
        f"| gas price (gwei) | smallest fee a keeper settles at (tokens, {native_per_token:g}"
        " native coin per token, 1.2x margin) |",
        "|---|---|",
    ]
    for gwei in gas_prices_gwei:
        micro = min_settlement_fee(round(gwei * 10**9), wei_per_token)
        rows.append(f"| {gwei:g} | {micro / 10**6:,.6g} |")
    return "\n".join(rows)


def commit_time_of(order_id: int) -> int:
    """The commit block's timestamp, read from the order id (`OrderBook.commit_order`)."""
    return (int(order_id) >> 8) & COMMIT_TIME_MASK


@dataclass(frozen=True)
class PendingOrder:
    """One committed order (token amounts in token units, times in unix seconds)."""

    order_id: int
    account: str
    market_id: int
    size_delta: int  # wad of base asset, signed
    acceptable_price: int  # wad
    committed_at: int  # the commit block's timestamp
    expiry: int  # the last timestamp it may settle at
    fee: int = 0  # settlement fee paid to the settler (token units)
    reduce_only: bool = False
    block: int = 0  # the commit block


@dataclass(frozen=True)
class Round:
    """One feed round: its id and when it was published (`updatedAt`)."""

    round_id: int
    updated_at: int


@dataclass
class OrderTracker:
    """Pending orders by id, kept from the order events."""

    pending: dict[int, PendingOrder] = field(default_factory=dict)
    settled: int = 0
    cancelled: int = 0

    def commit(self, order: PendingOrder) -> None:
        self.pending[order.order_id] = order

    def close(self, order_id: int, settled: bool) -> PendingOrder | None:
        """An order left the book (settled, or cancelled/refused); returns it if known."""
        order = self.pending.pop(int(order_id), None)
        if settled:
            self.settled += 1
        else:
            self.cancelled += 1
        return order

    def of(self, account: str) -> list[PendingOrder]:
        want = account.lower()
        return [o for o in self.pending.values() if o.account.lower() == want]

    def __len__(self) -> int:
        return len(self.pending)


class RoundCache:
    """A feed's rounds read so far (`get_round(round_id) -> Round | None`, None when the feed
    has no such round or cannot be read): published rounds never change, so each is read
    once."""

    def __init__(self, get_round: Callable[[int], Round | None]):
        self._get = get_round
        self._rounds: dict[int, Round | None] = {}
        self.reads = 0

    def note(self, r: Round) -> None:
        """A round learnt another way (the latest round, an `AnswerUpdated` log)."""
        self._rounds[r.round_id] = r

    def get(self, round_id: int) -> Round | None:
        if round_id not in self._rounds:
            self.reads += 1
            self._rounds[round_id] = self._get(round_id)
        return self._rounds[round_id]

    def first_round_after(self, latest: Round, t: int, until: int | None = None) -> int | None:
        """The id of the round an order committed at `t` settles at: the first round
        published strictly after `t` (`updatedAt > t`), walking back from `latest`. None
        when no round after `t` exists yet, when that round came after `until` (the
        order's expiry: it can no longer settle), when it is the first round of its
        aggregator phase (low 64 bits 1: no previous round proves it is the first after
        `t`, and the adapter refuses it), or when it lies more than `MAX_ROUNDS_BACK`
        rounds back or behind a round that cannot be read."""
        if latest.updated_at <= t:
            return None
        self.note(latest)
        first: Round = latest
        for _ in range(MAX_ROUNDS_BACK):
            if first.round_id & PHASE_MASK <= 1:
                return None
            prev = self.get(first.round_id - 1)
            if prev is None:
                return None
            if prev.updated_at <= t:
                break
            first = prev
        else:
            return None
        if until is not None and first.updated_at > until:
            return None
        return first.round_id


def first_round_after(rounds: Sequence[Round], t: int, until: int | None = None) -> int | None:
    """`RoundCache.first_round_after` over a list of every round of a feed (rising ids), as
    the simulator knows the rounds it posted."""
    if not rounds:
        return None
    by_id = {r.round_id: r for r in rounds}
    return RoundCache(by_id.get).first_round_after(rounds[-1], t, until)


@dataclass(frozen=True)
class SettlePlan:
    """Which orders to settle this block (batches of (order id, round hint)), which wait for
    a round published after their commit, which expired (only a cancel is left for them)
    and which were declined by the profit rule."""

    batches: tuple[tuple[tuple[int, int], ...], ...] = ()
    waiting: tuple[int, ...] = ()
    expired: tuple[int, ...] = ()
    declined: tuple[int, ...] = ()

    @property
    def order_ids(self) -> list[int]:
        return [oid for batch in self.batches for oid, _ in batch]


def plan_settlements(
    orders: Iterable[PendingOrder],
    hints: Mapping[int, int | None],
    now: int,
    *,
    gas_price: int,
    wei_per_token: int,
    decimals: int,
    gas_per_order: int = GAS_PER_SETTLE,
    margin_bps: int = 12_000,
    max_batch: int = MAX_BATCH,
    busy: Iterable[int] = (),
) -> SettlePlan:
    """The settlements of a block whose transactions carry timestamp `now`.

    `hints`: each order's first round after its commit (None: none yet). An order is
    settled when it has a hint, is not expired at `now` (`now <= expiry`), is not in
    flight (`busy`), and its fee (token units, converted at `wei_per_token` wei per whole
    token) covers `gas_per_order * gas_price` times the margin; oldest first."""
    in_flight = set(busy)
    go: list[tuple[int, int]] = []
    waiting: list[int] = []
    expired: list[int] = []
    declined: list[int] = []
    for o in sorted(orders, key=lambda o: (o.committed_at, o.order_id)):
        if o.order_id in in_flight:
            continue
        if now > o.expiry:
            expired.append(o.order_id)
            continue
        hint = hints.get(o.order_id)
        if hint is None:
            waiting.append(o.order_id)
            continue
        reward = o.fee * wei_per_token // 10**decimals
        if not covers(reward, gas_per_order, gas_price, margin_bps):
            declined.append(o.order_id)
            continue
        go.append((o.order_id, hint))
    return SettlePlan(
        batches=batches(go, max_batch) if go else (),
        waiting=tuple(waiting),
        expired=tuple(expired),
        declined=tuple(declined),
    )


# --- orders in flight ----------------------------------------------------------------------
# A `settle_orders` call names its orders as `order:<id>` in its accounts (the SDK's
# `order_tag`), so the keeper's in-flight bookkeeping (`TxSender.in_flight`) covers them too.
ORDER_TAG = "order:"


def settling(names: Iterable[str]) -> set[int]:
    """The order ids among in-flight names (`order_tag`); accounts are ignored."""
    return {int(n[len(ORDER_TAG) :]) for n in names if str(n).startswith(ORDER_TAG)}


# --- latency from chain history -------------------------------------------------------------


@dataclass(frozen=True)
class RoundSeen:
    """A feed round as the chain shows it: its market, when it was published and the block
    that published it."""

    market_id: int
    updated_at: int
    block: int


def settle_delays(
    commits: Iterable[PendingOrder],
    settled: Mapping[int, int],
    rounds: Iterable[RoundSeen],
) -> dict[int, int]:
    """Blocks from the first price after each order's commit to its settlement: for each
    settled order (`settled`: order id -> settlement block), the settlement block less the
    block that published the first round of its market with `updatedAt > committed_at`
    (1: settled in the block right after the price landed; 0: in the same block). Orders
    without such a round (settled by some other rule) are left out."""
    by_market: dict[int, list[RoundSeen]] = {}
    for r in rounds:
        by_market.setdefault(r.market_id, []).append(r)
    for rs in by_market.values():
        rs.sort(key=lambda r: (r.block, r.updated_at))
    out: dict[int, int] = {}
    for o in commits:
        block = settled.get(o.order_id)
        if block is None:
            continue
        first = next(
            (r for r in by_market.get(o.market_id, ()) if r.updated_at > o.committed_at), None
        )
        if first is not None:
            out[o.order_id] = block - first.block
    return out


def percentile(values: Sequence[int], q: float) -> int:
    """The nearest-rank percentile (`q` in 0..100) of integers; 0 for none."""
    if not values:
        return 0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


__all__ = [
    "GAS_PER_SETTLE",
    "MAX_ROUNDS_BACK",
    "COMMIT_TIME_MASK",
    "ORDER_TAG",
    "OrderTracker",
    "PendingOrder",
    "Round",
    "RoundCache",
    "RoundSeen",
    "SettlePlan",
    "commit_time_of",
    "first_round_after",
    "order_tag",
    "percentile",
    "plan_settlements",
    "settle_delays",
    "settling",
]
