"""`OrderBookClient`: orders that cannot be front-run (PROTOCOL.md section 5b).

A position changes in two steps: the trader commits an order (`commit`), and anyone settles it
(`settle`, `settle_many`) at the first valid round of the market's primary feed published
strictly after the commit block (`settlement_round` finds it from the feed's round data; the
adapter checks it). An order that cannot fill at that price is cancelled on chain with its
reason and its fee refunded; an order not settled by its expiry can be cancelled by anyone
(`cancel`). Senders check first and raise the SDK's typed errors, as the engine client does;
the commit's checks are made at the current price, the fill's own at the settlement price.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from margincall.sdk.errors import InsufficientMargin, InvalidRequest, SlippageExceeded
from margincall.sdk.types import _addr, chunks, in_tokens

SLOTS = 4  # pending orders per account (OrderBook._SLOTS)
MAX_SETTLE_BATCH = 50  # OrderBook._MAX_BATCH
FILL_GAS = 500_000  # OrderBook._FILL_GAS: the gas a settlement keeps for each fill
ROUND_SCAN = 256  # rounds `settlement_round` walks back from the latest at most
LOCAL_CHAIN_IDS = (1337, 31337)


@dataclass(frozen=True)
class PendingOrder:
    """An order waiting for its settlement round (`OrderBook.order`)."""

    order_id: int
    account: str
    market_id: int
    size_delta: int  # wad, signed
    acceptable_price: int  # wad, as stored (never looser than asked)
    commit_time: int
    expiry: int
    reduce_only: bool
    fee: int  # token units, escrowed


@dataclass(frozen=True)
class OrderOutcome:
    """What a settlement transaction did to one order."""

    order_id: int
    settled: bool
    price: int = 0  # wad, when settled
    size_delta: int = 0  # wad, filled (a reduce-only order may be clamped)
    reason: str = ""  # why it was cancelled
    refund: int = 0  # token units, when cancelled


def order_account(order_id: int) -> str:
    """The account an order id belongs to (`account << 96 | commit_time << 8 | slot`)."""
    from eth_utils import to_checksum_address

    return to_checksum_address((int(order_id) >> 96).to_bytes(20, "big"))


def order_commit_time(order_id: int) -> int:
    return (int(order_id) >> 8) & (2**40 - 1)


class OrderBookClient:
    """The OrderBook of an engine; `engine` is its `MarginEngineClient` (prices, margin)."""

    def __init__(self, book: Any, engine: Any):
        self.book = book
        self.engine = engine
        self._feeds: dict[int, Any] = {}

    @classmethod
    def of(cls, engine: Any) -> OrderBookClient:
        """The book the engine names (`engine.ORDER_BOOK()`)."""
        from ape import project

        return cls(project.OrderBook.at(str(engine.engine.ORDER_BOOK())), engine)

    # --- reads ---

    @property
    def address(self) -> str:
        return _addr(self.book)

    def settlement_fee(self) -> int:
        """The fee escrowed per new order, token units."""
        return int(self.book.settlement_fee())

    def max_window(self) -> int:
        return int(self.book.max_window())

    def order(self, order_id: int) -> PendingOrder | None:
        o = self.book.order(int(order_id))
        if int(o.commit_time) == 0:
            return None
        return PendingOrder(
            int(order_id),
            str(o.account),
            int(o.market_id),
            int(o.size_delta),
            int(o.acceptable_price),
            int(o.commit_time),
            int(o.expiry),
            bool(o.reduce_only),
            int(o.fee),
        )

    def pending(self, account: Any) -> list[PendingOrder]:
        """The account's pending orders (expired ones included until cancelled)."""
        out = []
        for order_id in self.book.pending_orders(_addr(account)):
            o = self.order(int(order_id))
            if o is not None:
                out.append(o)
        return out

    def feed(self, market_id: int) -> Any:
        """The market's primary Chainlink feed (where settlement rounds come from)."""
        if market_id not in self._feeds:
            from ape import project

            oracle = self.engine.oracle(market_id)
            self._feeds[market_id] = project.MockAggregator.at(str(oracle.primary()))
        return self._feeds[market_id]

    def settlement_round(self, order: PendingOrder) -> int | None:
        """The id of the first round of the market's primary feed published strictly after
        the order's commit, or None while there is none yet (or it is beyond the order's
        window, or more than `ROUND_SCAN` rounds back). The adapter checks the same rule."""
        feed = self.feed(order.market_id)
        latest = feed.latestRoundData()
        round_id, updated = int(latest[0]), int(latest[3])
        if updated <= order.commit_time:
            return None
        first = round_id
        for _ in range(ROUND_SCAN):
            if (first & (2**64 - 1)) <= 1:
                return None  # the first round of a feed phase: no previous to prove it
            prev = feed.getRoundData(first - 1)
            if int(prev[3]) <= order.commit_time:
                break
            first -= 1
        else:
            return None
        when = int(feed.getRoundData(first)[3])
        return first if when <= order.expiry else None

    # --- checks ---

    def check_commit(
        self,
        market_id: int,
        size_delta: int,
        acceptable_price: int,
        expiry: int,
        account: Any,
        reduce_only: bool = False,
    ) -> None:
        """The book's checks, then the engine's trade checks at the current price (the fill's
        own checks run at the settlement price, which is not known yet)."""
        if size_delta == 0:
            raise InvalidRequest("order: zero size")
        if abs(size_delta) >= 2**106:
            raise InvalidRequest("order: size out of range")
        if not 0 <= market_id < self.engine.market_count():
            raise InvalidRequest(f"order: unknown market {market_id}")
        now = self.engine.now
        if expiry <= now:
            raise InvalidRequest(f"order: expiry {expiry} not after now ({now})")
        if expiry - now > self.max_window():
            raise InvalidRequest(f"order: window {expiry - now} s above {self.max_window()} s")
        if len(self.book.pending_orders(_addr(account))) >= SLOTS:
            raise InvalidRequest(f"order: {SLOTS} orders already pending (settle or cancel)")
        fee = self.settlement_fee()
        if fee > self.engine.collateral(account):
            raise InsufficientMargin(
                f"order: the settlement fee {in_tokens(fee, self.engine.decimals)} exceeds "
                "the collateral (deposit first)"
            )
        if reduce_only:
            size = int(self.engine.position(account, market_id)[0])
            if size == 0 or (size > 0) == (size_delta > 0):
                raise InvalidRequest("order: reduce-only with nothing to reduce")
            size_delta = -size if abs(size_delta) > abs(size) else size_delta
        self.engine.check_trade(market_id, size_delta, acceptable_price, account)

    # --- senders ---

    def commit(
        self,
        market_id: int,
        size_delta: int,
        acceptable_price: int,
        sender: Any,
        expiry: int | None = None,
        reduce_only: bool = False,
        **txn: Any,
    ) -> tuple[int, Any]:
        """Commits an order (expiry: the longest window by default); returns (order id,
        receipt)."""
        if expiry is None:
            expiry = self.engine.now + self.max_window()
        self.check_commit(market_id, size_delta, acceptable_price, expiry, sender, reduce_only)
        receipt = self.book.commit_order(
            market_id, size_delta, acceptable_price, expiry, reduce_only, sender=sender, **txn
        )
        logs = receipt.decode_logs(self.book.OrderCommitted)
        if not logs:  # returned before it was mined (a chain that does not automine): wait
            receipt = self.book.provider.get_receipt(receipt.txn_hash, timeout=120)
            logs = receipt.decode_logs(self.book.OrderCommitted)
        return int(logs[0].order_id), receipt

    def close(
        self, market_id: int, acceptable_price: int, sender: Any, **txn: Any
    ) -> tuple[int, Any]:
        """Commits a reduce-only order for the whole position in one market."""
        size = int(self.engine.position(sender, market_id)[0])
        if size == 0:
            raise InvalidRequest(f"close: no position in market {market_id}")
        return self.commit(market_id, -size, acceptable_price, sender, reduce_only=True, **txn)

    def check_settle(self, order_id: int) -> tuple[PendingOrder, int]:
        """The order and its settlement round; raises if it cannot be settled now."""
        o = self.order(order_id)
        if o is None:
            raise InvalidRequest(f"settle: no pending order {order_id}")
        if self.engine.now > o.expiry:
            raise InvalidRequest(f"settle: order {order_id} expired at {o.expiry} (cancel it)")
        round_id = self.settlement_round(o)
        if round_id is None:
            raise InvalidRequest(f"settle: no round after the commit of order {order_id} yet")
        return o, round_id

    def settle(self, order_id: int, sender: Any, round_id: int | None = None, **txn: Any) -> Any:
        """Settles one order (finding its round unless given); the receipt's `outcomes`
        (`outcomes(receipt)`) tell whether it filled or was cancelled and why."""
        if round_id is None:
            _, round_id = self.check_settle(order_id)
        return self.book.settle_order(int(order_id), int(round_id), sender=sender, **txn)

    def settleable(self, order_ids: Sequence[int]) -> list[tuple[int, int]]:
        """(order id, round id) of the orders that can be settled now."""
        out = []
        now = self.engine.now
        for order_id in order_ids:
            o = self.order(order_id)
            if o is None or now > o.expiry:
                continue
            round_id = self.settlement_round(o)
            if round_id is not None:
                out.append((int(order_id), round_id))
        return out

    def settle_many(self, order_ids: Sequence[int], sender: Any, **txn: Any) -> list[Any]:
        """Settles the settleable orders of the list in batches of `MAX_SETTLE_BATCH`."""
        receipts = []
        for part in chunks(self.settleable(order_ids), MAX_SETTLE_BATCH):
            ids, rounds = [p[0] for p in part], [p[1] for p in part]
            receipts.append(self.book.settle_orders(ids, rounds, sender=sender, **txn))
        return receipts

    def cancel(self, order_id: int, sender: Any, **txn: Any) -> Any:
        """Cancels an expired order (refunding its fee to the trader's collateral)."""
        o = self.order(order_id)
        if o is None:
            raise InvalidRequest(f"cancel: no pending order {order_id}")
        if self.engine.now <= o.expiry:
            raise InvalidRequest(
                f"cancel: order {order_id} may still settle until {o.expiry} (now "
                f"{self.engine.now}); no one can cancel it before"
            )
        return self.book.cancel_order(int(order_id), sender=sender, **txn)

    def outcomes(self, receipt: Any) -> list[OrderOutcome]:
        """Every order a settlement or cancel receipt settled or cancelled."""
        out = []
        for log in receipt.decode_logs([self.book.OrderSettled, self.book.OrderCancelled]):
            if log.event_name == "OrderSettled":
                out.append(
                    OrderOutcome(
                        int(log.order_id),
                        True,
                        price=int(log.price),
                        size_delta=int(log.size_delta),
                    )
                )
            else:
                out.append(
                    OrderOutcome(
                        int(log.order_id), False, reason=str(log.reason), refund=int(log.refund)
                    )
                )
        return out

    # --- local chains only ---

    def fill_now_local(
        self,
        market_id: int,
        size_delta: int,
        acceptable_price: int,
        sender: Any,
        reduce_only: bool = False,
    ) -> OrderOutcome:
        """Dev convenience for a local chain with mock feeds: commits, publishes the next
        round of the market's mock feed at its current answer, settles. Refused on any
        other chain (a real feed's rounds are not ours to publish)."""
        from ape import chain

        if int(chain.chain_id) not in LOCAL_CHAIN_IDS:
            raise InvalidRequest("fill_now_local: only on a local chain (use commit + settle)")
        order_id, _ = self.commit(
            market_id, size_delta, acceptable_price, sender, None, reduce_only
        )
        feed = self.feed(market_id)
        if chain.pending_timestamp <= chain.blocks.head.timestamp:
            chain.pending_timestamp = chain.blocks.head.timestamp + 1
        feed.set_answer(int(feed.latestRoundData()[1]), sender=sender)
        receipt = self.settle(order_id, sender)
        (outcome,) = [o for o in self.outcomes(receipt) if o.order_id == order_id]
        return outcome

    @staticmethod
    def is_local() -> bool:
        from ape import chain

        return int(chain.chain_id) in LOCAL_CHAIN_IDS


def raise_for(outcome: OrderOutcome) -> OrderOutcome:
    """Raises the typed error of a cancelled order's reason; returns a settled outcome."""
    if outcome.settled:
        return outcome
    if "acceptable" in outcome.reason:
        raise SlippageExceeded(f"order {outcome.order_id} cancelled: {outcome.reason}")
    if "margin" in outcome.reason or "collateral" in outcome.reason:
        raise InsufficientMargin(f"order {outcome.order_id} cancelled: {outcome.reason}")
    raise InvalidRequest(f"order {outcome.order_id} cancelled: {outcome.reason}")
