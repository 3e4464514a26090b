"""The keeper's order desk (`OrderDesk`, mixed into `Keeper`): pending orders from the order
book's events, each one's settlement round (the first round of its market's primary feed
published strictly after its commit) read from the feed at the head block, `settle_orders`
batches sent in the block after the round lands, and what their receipts say (orders filled,
cancelled by the engine's rules, fees earned, races lost).

The decision (which orders, which rounds, within the profit rule) is the step's
(`margincall.keeper.step.plan_block`, `margincall.keeper.orders.plan_settlements`); this
module does the I/O around it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ape.logging import logger

from margincall.keeper.orders import (
    OrderTracker,
    PendingOrder,
    Round,
    RoundCache,
    SettlePlan,
    commit_time_of,
    settling,
)
from margincall.sdk.rounds import FeedRounds

ORDER_EVENTS = ("OrderCommitted", "OrderSettled", "OrderCancelled")
# gas the order book wants left before each fill (`_FILL_GAS` in OrderBook.vy): a batch's gas
# limit is its measured use plus this, or its last orders are left pending
FILL_HEADROOM = 500_000


class OrderDesk:
    """The keeper's orders side (its `book`, `client`, `provider`, `sender`, `state`,
    `metrics`)."""

    book: Any
    _order_raw: dict[str, Any]

    def _init_orders(self, book: Any) -> None:
        """`book`: the SDK's order book client, or None (a deployment without orders)."""
        self.book = book
        self._order_raw = {}
        self._feeds: dict[int, FeedRounds] = {}
        self._round_cache: dict[int, RoundCache] = {}
        self.orders_sent = 0
        self.orders_filled = 0
        self.orders_refused = 0  # cancelled at settlement by the engine's rules
        self.orders_raced = 0  # settled or cancelled by someone else first
        self.settle_fees = 0  # token units earned
        self._declined: set[int] = set()  # orders the profit rule declined at the last block
        if book is None:
            return
        self._order_raw = {name: book.raw_event(name) for name in ORDER_EVENTS}
        self._book = str(book.address).lower()

    # --- events ---

    def _read_order_logs(self, start: int, stop: int) -> list[Any]:
        if self.book is None or stop < start:
            return []
        topics = ["0x" + self._order_raw[n].topic0.hex() for n in ORDER_EVENTS]
        return self.book.logs(start, stop, [topics])

    def _apply_orders(self, logs: Iterable[Any]) -> None:
        """Applies the book's logs: commits add pending orders, settlements and cancels
        remove them."""
        tracker: OrderTracker = self.state.orders
        committed, settled, cancelled = (self._order_raw[n] for n in ORDER_EVENTS)
        for log in logs:
            if committed.matches(log):
                oid = committed.field(log, "order_id")
                tracker.commit(
                    PendingOrder(
                        order_id=oid,
                        account=committed.field(log, "account"),
                        market_id=committed.field(log, "market_id"),
                        size_delta=committed.field(log, "size_delta"),
                        acceptable_price=committed.field(log, "acceptable_price"),
                        committed_at=commit_time_of(oid),
                        expiry=committed.field(log, "expiry"),
                        fee=committed.field(log, "fee"),
                        reduce_only=committed.field(log, "reduce_only"),
                        block=_int(log["blockNumber"]),
                    )
                )
            elif settled.matches(log):
                tracker.close(settled.field(log, "order_id"), settled=True)
            elif cancelled.matches(log):
                tracker.close(cancelled.field(log, "order_id"), settled=False)

    # --- rounds ---

    def _feed(self, market_id: int) -> FeedRounds:
        if market_id not in self._feeds:
            from margincall.sdk.oracle import OracleClient

            primary = OracleClient(self.client.oracle(market_id), market_id).settings().primary
            self._feeds[market_id] = FeedRounds(self.provider.web3, primary)
            self._round_cache[market_id] = RoundCache(
                lambda rid, feed=self._feeds[market_id]: _round(feed.round(rid))
            )
        return self._feeds[market_id]

    def _hints(self, number: int) -> dict[int, int | None]:
        """Each pending order's settlement round as block `number` shows its feed (None:
        no round after its commit yet)."""
        orders = list(self.state.orders.pending.values())
        latest: dict[int, Round | None] = {}
        for m in {o.market_id for o in orders}:
            latest[m] = _round(self._feed(m).latest(number))
        hints: dict[int, int | None] = {}
        for o in orders:
            head = latest.get(o.market_id)
            cache = self._round_cache[o.market_id]
            hints[o.order_id] = (
                None if head is None else cache.first_round_after(head, o.committed_at, o.expiry)
            )
        return hints

    # --- sends ---

    def _send_settlements(
        self, plan: SettlePlan, number: int, gas_limit: int | None, mined: int | None
    ) -> None:
        """One `settle_orders` per batch of the plan, sent after the block's tranches."""
        declined = set(plan.declined)
        if declined and declined != self._declined:
            logger.warning(
                f"block {number}: {len(declined)} orders ready but declined: their settlement"
                " fee does not cover the gas at this price times the profit margin"
            )
        self._declined = declined
        if self.book is None or not plan.batches:
            return
        calls = [self.book.build_settle([o for o, _ in b], [r for _, r in b]) for b in plan.batches]
        results = self.sender.send_many(
            calls,
            number,
            gas_budget=gas_limit,
            tx_gas_cap=self.config.tx_gas_cap,
            extra_gas=[FILL_HEADROOM] * len(calls),
            mined=mined,
        )
        for batch, tx in zip(plan.batches, results, strict=True):
            if isinstance(tx, Exception):
                logger.warning(f"block {number}: settle_orders of {len(batch)} not sent: {tx}")
                continue
            self.orders_sent += len(batch)
            logger.info(
                f"block {number}: sent settle_orders for {len(batch)} orders"
                f" ({tx.txn_hash[:10]}, nonce {tx.nonce})"
            )

    # --- receipts ---

    def _settled_receipt(self, mined: Any) -> None:
        """What a mined `settle_orders` did: fills (fees earned), refusals, races lost."""
        if not mined.ok:
            logger.error(f"settle_orders {mined.tx.txn_hash} reverted in block {mined.block}")
            return
        settled, cancelled = self._order_raw["OrderSettled"], self._order_raw["OrderCancelled"]
        mine = str(self.sender.address).lower()
        done: set[int] = set()
        for log in settled.select(mined.logs, self._book):
            if str(settled.field(log, "settler")).lower() != mine:
                continue
            oid = settled.field(log, "order_id")
            done.add(oid)
            self.orders_filled += 1
            self.settle_fees += settled.field(log, "fee")
        for log in cancelled.select(mined.logs, self._book):
            oid = cancelled.field(log, "order_id")
            done.add(oid)
            self.orders_refused += 1
            logger.info(f"order {oid:#x} refused at settlement: {cancelled.field(log, 'reason')}")
        sent = settling(mined.tx.accounts)
        self.orders_raced += sum(1 for oid in sent if oid not in done)

    def order_snapshot(self) -> dict[str, Any]:
        """The order desk's counters, for the keeper's metrics."""
        return {
            "orders_pending": len(self.state.orders),
            "orders_sent": self.orders_sent,
            "orders_filled": self.orders_filled,
            "orders_refused": self.orders_refused,
            "orders_raced": self.orders_raced,
            "orders_declined": len(self._declined),
            "settle_fees": self.settle_fees,
        }


@dataclass
class OrderHistory:
    """The book's orders in a block range, from its logs: commits, the block each settled
    order was settled in, how many were refused (cancelled at settlement or expired), and
    the settlement fees earned by each settler (lower-case address -> token units) and who
    settled each order (order id -> lower-case address)."""

    commits: list[PendingOrder] = field(default_factory=list)
    settled: dict[int, int] = field(default_factory=dict)
    refused: int = 0
    fees: dict[str, int] = field(default_factory=dict)
    settled_by: dict[int, str] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)  # refusals by reason


def order_history(book: Any, start: int, stop: int) -> OrderHistory:
    """`OrderHistory` of blocks start..stop (`book`: the SDK's `SettlementClient`)."""
    raw = {name: book.raw_event(name) for name in ORDER_EVENTS}
    committed, settled, cancelled = (raw[n] for n in ORDER_EVENTS)
    out = OrderHistory()
    for log in book.logs(start, stop, [["0x" + raw[n].topic0.hex() for n in ORDER_EVENTS]]):
        oid = committed.field(log, "order_id") if log["topics"] else 0
        if committed.matches(log):
            out.commits.append(
                PendingOrder(
                    order_id=oid,
                    account=committed.field(log, "account"),
                    market_id=committed.field(log, "market_id"),
                    size_delta=committed.field(log, "size_delta"),
                    acceptable_price=committed.field(log, "acceptable_price"),
                    committed_at=commit_time_of(oid),
                    expiry=committed.field(log, "expiry"),
                    fee=committed.field(log, "fee"),
                    reduce_only=committed.field(log, "reduce_only"),
                    block=_int(log["blockNumber"]),
                )
            )
        elif settled.matches(log):
            out.settled[oid] = _int(log["blockNumber"])
            who = str(settled.field(log, "settler")).lower()
            out.settled_by[oid] = who
            out.fees[who] = out.fees.get(who, 0) + settled.field(log, "fee")
        elif cancelled.matches(log):
            out.refused += 1
            why = str(cancelled.field(log, "reason"))
            out.reasons[why] = out.reasons.get(why, 0) + 1
    return out


def _round(r: Any) -> Round | None:
    return None if r is None else Round(int(r.round_id), int(r.updated_at))


def _int(value: Any) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


__all__ = [
    "FILL_HEADROOM",
    "ORDER_EVENTS",
    "OrderDesk",
    "OrderHistory",
    "order_history",
]
