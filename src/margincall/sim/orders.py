"""Orders in the simulator (`OrderFlow`, mixed into `Replay`): traders' reductions are
committed orders, and the shipped keeper's step settles them at the first round the replay
posts after their commit, in the block after that round (PROTOCOL.md section 5b).

The replay knows every round it posts (the feeds' `AnswerUpdated` logs in its receipts), so
the step's round hints come from `keeper.orders.first_round_after` over those rounds, with
the latest round of the setup as each feed's first known round. The latency of each
settlement (blocks from the block that posted its round to the block that settled it) and
the orders refused at settlement (with their reasons) go into the run's record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from margincall.keeper.orders import PendingOrder, Round, order_tag, settling
from margincall.keeper.step import Plan
from margincall.sim.setup import Tx, commit_time_of, settle_gas


class OrderFlow:
    """The order side of a `Replay` (its `sim`, `orders`, `rounds`, `settling`, `record`)."""

    def _seed_rounds(self) -> None:
        """Each feed's latest round before the run: the predecessor the first round of the run
        needs to be proven first after a commit."""
        sim = self.sim
        calls = [sim.eth_call(f, sim.feed_abi.encode("latestRoundData")) for f in sim.feeds]
        for i, out in enumerate(sim.rpc.batch(calls)):
            rid, _, _, updated, _ = sim.feed_abi.decode("latestRoundData", out)
            self.rounds[i] = [Round(int(rid), int(updated))]
        self._round_block: dict[tuple[int, int], int] = {}  # (market, round) -> slot posted

    def _order_log(self, slot: int, log: Mapping[str, Any]) -> bool:
        """Applies one log of a mined block if it is the book's or a feed's; True if it was."""
        sim = self.sim
        address = str(log["address"]).lower()
        if address == sim.book.lower():
            decoded = sim.book_abi.decode_log(log)
            if decoded is not None:
                self._book_event(slot, *decoded)
            return True
        market = sim.feed_index.get(address)
        if market is None:
            return False
        decoded = sim.feed_abi.decode_log(log)
        if decoded is not None and decoded[0] == "AnswerUpdated":
            r = Round(int(decoded[1]["roundId"]), int(decoded[1]["updatedAt"]))
            self.rounds.setdefault(market, []).append(r)
            self._round_block[(market, r.round_id)] = slot
        return True

    def _book_event(self, slot: int, name: str, ev: Mapping[str, Any]) -> None:
        rec = self.record
        oid = int(ev["order_id"])
        if name == "OrderCommitted":
            rec.orders_committed += 1
            self.orders.commit(
                PendingOrder(
                    order_id=oid,
                    account=self._name(ev["account"]),
                    market_id=int(ev["market_id"]),
                    size_delta=int(ev["size_delta"]),
                    acceptable_price=int(ev["acceptable_price"]),
                    committed_at=commit_time_of(oid),
                    expiry=int(ev["expiry"]),
                    fee=int(ev["fee"]),
                    reduce_only=bool(ev["reduce_only"]),
                    block=slot,
                )
            )
        elif name == "OrderSettled":
            self.orders.close(oid, settled=True)
            rec.orders_settled += 1
            posted = self._round_block.get((int(ev["market_id"]), int(ev["round_id"])))
            if posted is not None:
                rec.order_delays.append(slot - posted)
        elif name == "OrderCancelled":
            self.orders.close(oid, settled=False)
            reason = str(ev["reason"])
            rec.orders_cancelled[reason] = rec.orders_cancelled.get(reason, 0) + 1

    def _settle_txs(self, plan: Plan) -> list[Tx]:
        """The step's `settle_orders` batches, from the keeper, gas given (the book's batch
        stops early when less than its fill gas is left, so an estimate would starve it)."""
        sim = self.sim
        out = []
        for batch in plan.settlements.batches:
            ids, rounds = [o for o, _ in batch], [r for _, r in batch]
            out.append(
                Tx(
                    sim.population.keeper,
                    sim.book,
                    sim.book_abi.encode("settle_orders", ids, rounds),
                    "settle_orders",
                    settle_gas(len(ids)),
                    tuple(order_tag(o) for o in ids),
                )
            )
            self.settling.update(ids)
        return out

    def _settle_receipt(self, tx: Tx) -> None:
        self.settling.difference_update(settling(tx.accounts))


__all__ = ["OrderFlow"]
