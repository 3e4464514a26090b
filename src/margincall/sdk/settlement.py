"""`SettlementClient`: what a settler (the keeper bot) needs of the order book: its raw event
readers, its logs by block range, and `settle_orders` calls built for a bot to sign.

`OrderBook.settle_orders(order_ids, round_ids)` settles each order at its round (the first
round of its market's primary feed published strictly after its commit) and skips, without
reverting, the orders that cannot settle with that round (unknown, expired, round not valid);
it stops early when less than the book's fill gas is left, so a batch's gas limit is its
measured use plus that headroom (`margincall.keeper.settle.FILL_HEADROOM`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from margincall.sdk.errors import InvalidRequest
from margincall.sdk.events import RawEvent, get_logs
from margincall.sdk.types import Call

MAX_SETTLE_BATCH = 50  # OrderBook._MAX_BATCH


def order_tag(order_id: int) -> str:
    """How a `settle_orders` call names its orders in `Call.accounts` (the keeper's
    in-flight bookkeeping; `margincall.keeper.orders.settling` reads them back)."""
    return f"order:{int(order_id)}"


class SettlementClient:
    """The order book, for settlers."""

    def __init__(self, book: Any):
        self.book = book

    @property
    def address(self) -> str:
        return str(self.book.address)

    def raw_event(self, name: str) -> RawEvent:
        """A fast reader of the book's event `name` (`margincall.sdk.events.RawEvent`)."""
        return RawEvent(getattr(self.book, name).abi)

    def logs(self, start: int, stop: int, topics: Sequence[Any] | None = None) -> list[Any]:
        """The book's raw logs of blocks start..stop."""
        return get_logs(self.book.provider.web3, self.address, start, stop, topics)

    def outcome_of(self, order_id: int, since_block: int) -> tuple[Any, Any] | None:
        """The `OrderSettled` or `OrderCancelled` log of an order (Ape's decoded log) since
        `since_block` (its commit block), and the receipt of the transaction that logged it;
        None while the order is pending."""
        from ape import chain

        head = int(chain.blocks.head.number)
        topic = {"order_id": int(order_id)}
        for event in (self.book.OrderSettled, self.book.OrderCancelled):
            for log in event.range(since_block, head + 1, search_topics=topic):
                return log, chain.provider.get_receipt(str(log.transaction_hash))
        return None

    def events(self, start: int, stop: int, names: Sequence[str]) -> list[Any]:
        """The book's events `names` of blocks start..stop, fully decoded (Ape's
        `ContractLog`s): one `eth_getLogs` over the range."""
        from eth_utils import keccak

        abis = [getattr(self.book, name).abi for name in names]
        topics = [["0x" + keccak(text=abi.selector).hex() for abi in abis]]
        provider = self.book.provider
        query = {"address": self.address, "fromBlock": hex(start), "toBlock": hex(stop)}
        raw = provider.make_request("eth_getLogs", [{**query, "topics": topics}])
        return list(provider.network.ecosystem.decode_logs(list(raw), *abis))

    def commit_call(
        self,
        market_id: int,
        size_delta: int,
        acceptable_price: int,
        expiry: int,
        reduce_only: bool = False,
    ) -> Call:
        """`commit_order(...)` for a sender that does not wait for its receipt (a trader
        under interval mining, `TxSender.send_call`); `OrderBookClient.check_commit` first."""
        data = self.book.commit_order.encode_input(
            int(market_id), int(size_delta), int(acceptable_price), int(expiry), bool(reduce_only)
        )
        return Call(self.address, bytes(data), "commit_order")

    def configure(self, settlement_fee_micro: int, max_window: int, owner: Any) -> Any:
        """`set_config`: the settlement fee of new orders (millionths of a token, at most 100
        tokens) and their longest window (seconds). The book's owner only."""
        return self.book.set_config(int(settlement_fee_micro), int(max_window), sender=owner)

    def build_settle(self, order_ids: Sequence[int], round_ids: Sequence[int]) -> Call:
        """`settle_orders(order_ids, round_ids)` for a bot to sign and send."""
        if len(order_ids) != len(round_ids):
            raise InvalidRequest("settle_orders: one round per order")
        if not 0 < len(order_ids) <= MAX_SETTLE_BATCH:
            raise InvalidRequest(
                f"settle_orders: 1 to {MAX_SETTLE_BATCH} orders, not {len(order_ids)}"
            )
        ids, rounds = [int(o) for o in order_ids], [int(r) for r in round_ids]
        data = self.book.settle_orders.encode_input(ids, rounds)
        return Call(self.address, bytes(data), "settle_orders", tuple(order_tag(o) for o in ids))


__all__ = ["MAX_SETTLE_BATCH", "SettlementClient", "order_tag"]
