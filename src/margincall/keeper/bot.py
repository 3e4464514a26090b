"""The keeper: tracks accounts from events, scans every block, calls and liquidates.

`bots/keeper.py` (Silverback) is a thin shell around `Keeper`; the demo and
the tests run that bot as a real process. Decisions are the pure functions
of `margincall.keeper.logic`; this module does the I/O around them:

1. at start, rebuild the set of accounts with open positions from the
   engine's `PositionChanged` logs since the deployment block (one
   `eth_getLogs` per chunk of blocks);
2. on every block, first what the first transaction needs, then the rest:
   - at once, in three threads: the new logs (same rule, so a restart or a
     skipped block never loses an account), the scan of its shard with the
     batched `check_margins` at that block, and its own nonce at that block
     (which of its transactions are mined, without reading their receipts);
   - decide with the timestamp the transactions are expected to carry (the
     head's plus the block interval, `keeper.logic.BlockClock`), and send
     `liquidate_many` / `margin_call_many` batches without waiting, one nonce
     after the other, with the fees fixed once per block from the head's base
     fee (`margincall.keeper.tx.TxSender`);
   - then: read the receipts of its mined transactions (calls and tranches
     made, races lost, rewards, delays), clear recorded margin calls of
     accounts that recovered (`clear_margin_call`, no reward: it protects
     traders from the call record gap described in docs/design.md), replace
     its stuck transactions, and write its metrics.

Every price update lands in a block, and every block is scanned, so an
oracle update is acted on in the block after it: the keeper reads prices
through the engine (the adapters read the feeds), never from a cache.

Errors: an RPC error inside a block is logged and counted by the bot, and
the next block is handled from scratch; a transaction the engine skips for
an account (a rival was first, the account recovered, the market's
liquidation window was full) is counted, never fatal.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from ape.logging import logger

from margincall.constants import MAX_SCAN
from margincall.keeper.config import KeeperConfig
from margincall.keeper.gas import gas_price
from margincall.keeper.logic import (
    BlockClock,
    CostModel,
    Decision,
    Snapshot,
    can_call,
    can_liquidate,
    due_calls,
    shard,
)
from margincall.keeper.metrics import (
    Metrics,
)
from margincall.keeper.orders import OrderTracker, settling
from margincall.keeper.receipts import Receipts, _lower
from margincall.keeper.settle import OrderDesk
from margincall.keeper.step import (
    REVERT_BACKOFF,
    Caps,
    Memory,
    Plan,
    mmr_of,
    plan_block,
    split_reverted,
)
from margincall.keeper.tx import Deferred, Reverted, TooLarge, TxSender
from margincall.keeper.upkeep import Upkeep
from margincall.report import fmt_tokens
from margincall.sdk.book import (
    PositionBook,
)
from margincall.sdk.types import chunks

# --- keeper -------------------------------------------------------------------


@dataclass
class KeeperState:
    """What the keeper remembers between blocks (rebuilt from logs on restart)."""

    book: PositionBook = field(default_factory=PositionBook)
    cursor: int = -1  # last block whose logs are applied
    eligible_since: dict[str, int] = field(default_factory=dict)  # account -> first block seen
    worth_since: dict[str, int] = field(default_factory=dict)  # ... seen worth the gas
    last_scanned: int = -1
    rpc_errors: int = 0
    gas_spent: int = 0
    clears_sent: int = 0
    clears_made: int = 0
    claims_sent: int = 0  # claim_rewards transactions (accrued rewards to the wallet)
    last_claim: int = -1  # block of the last claim sent
    too_large: int = 0  # single accounts whose tranche does not fit in one transaction
    reverted: int = 0  # single accounts whose own call or tranche reverted (backed off)
    held_window: int = 0  # accounts held back this block: their market's window is full
    window_full_until: dict[int, int] = field(default_factory=dict)  # market -> time
    backoff: dict[str, int] = field(default_factory=dict)  # account -> first block to retry
    started_at: float = field(default_factory=time.time)
    orders: OrderTracker = field(default_factory=OrderTracker)  # pending orders, from events


def _head_seen(number: int) -> float | None:
    """When the bot's runner first saw head `number` (latency logs), if a runner runs here;
    never imports Silverback for other users of this module (the simulator)."""
    runner = sys.modules.get("margincall.keeper.runtime")
    return runner.head_seen(number) if runner is not None else None


# gas limit added per account whose tranche falls due only at the next block's timestamp (the
# estimate skips it): a tranche of an account with the most markets, with room; a limit,
# not what is paid (a tranche inside a batch measured 38.7k gas with one market, 74.4k with
# three; docs/bots.md)
DUE_NEXT_GAS = 250_000
TOO_LARGE_BACKOFF = 50  # blocks before an account too large for one transaction is retried


ENGINE_EVENTS = (
    "PositionChanged",
    "MarginCall",
    "Liquidation",
    "MarketSet",
    "RiskParamsSet",
    "CallRewardPaid",
)


class Keeper(Receipts, OrderDesk, Upkeep):
    """One keeper (or one shard of it) over a deployed system."""

    def __init__(
        self,
        client: Any,
        record: Any,
        sender: TxSender,
        config: KeeperConfig,
        provider: Any,
        book: Any = None,
    ):
        """`client`: the engine's SDK client; `book`: the order book's (the keeper settles
        its orders; None: no orders)."""
        self.client = client
        self.record = record
        self.sender = sender
        self.config = config
        self.provider = provider
        self.metrics = Metrics()
        self.state = KeeperState()
        self.clock = BlockClock(fixed=config.block_time)
        self._t0 = time.monotonic()
        self._io = ThreadPoolExecutor(max_workers=4, thread_name_prefix="keeper-io")
        self._wanted: set[str] = set()  # accounts worth a transaction at the last scan
        self._actionable: set[str] = set()  # accounts eligible at the last scan (delays)
        self.decimals = int(record.collateral_decimals)
        self.rate = config.wei_per_token_unit(self.decimals)
        self.costs = CostModel(gas_price=0)
        self.mmrs: list[int] = []  # per market id
        self.call_ratio = 0
        self.liquidation_window = 0
        self._load_params()
        self._params_changed = False  # a MarketSet or RiskParamsSet log since the last load
        self._raw = {name: client.raw_event(name) for name in ENGINE_EVENTS}
        # a margin call's reward is parked until the call ends; it is earned when the
        # engine pays it (`CallRewardPaid`, often in a trader's cure): counted from the logs
        # read after `start`'s rebuild, not from the call's receipt
        self._earning = True
        self._engine = client.address
        self._me = _lower(sender.address)
        self._init_orders(book)

    # --- parameters ---

    def _load_params(self, block_id: int | None = None) -> None:
        """Reads the risk parameters and every market's `mmr` (at `block_id`, default the
        head) into the cost model (its reward bounds) and the keeper's settings. At start,
        and again after a block with a `MarketSet` or `RiskParamsSet` log."""
        params, mmrs = self.client.params_at(block_id)
        self.costs = self.config.cost_model(params, mmrs, self.decimals, self.costs.gas_price)
        self.mmrs = mmrs
        self.call_ratio = params.call_ratio
        self.liquidation_window = params.liquidation_window
        self.params = params

    def _mmr_of(self, account: str) -> int:
        """The largest mmr of the account's markets (from the position book), 0 if unknown."""
        return mmr_of(account, self.state.book.markets, self.mmrs)

    # --- startup ---

    def start(self) -> None:
        """Rebuilds the account book from the engine's logs since its deployment, then scans."""
        latest = self.provider.get_block("latest")
        head = int(latest.number)
        t0 = time.monotonic()
        self._earning = False  # the rebuild's history: paid before this run
        n = self._ingest(int(self.record.block), head)
        self._earning = True
        self._apply_orders(self._read_order_logs(int(self.record.block), head))
        self._params_changed = False  # read at construction, from the head
        self.metrics.track(len(self._mine(self.state.book.accounts)))
        logger.success(
            f"keeper {self.sender.address}"
            f" shard {self.config.shard_index}/{self.config.shard_count}:"
            f" {len(self.state.book)} accounts with open positions from {n} PositionChanged logs,"
            f" {len(self.state.orders)} pending orders"
            f" (blocks {self.record.block}..{head}, {time.monotonic() - t0:.2f} s);"
            f" {self.metrics.accounts_tracked} in this shard"
        )
        # the block interval from the last few heads, before the first decision needs it
        for number in range(max(0, head - self.clock.window + 1), head):
            self.clock.observe(number, int(self.provider.web3.eth.get_block(number)["timestamp"]))
        # a first scan at once: eligible accounts are acted on without waiting for a block,
        # and every code path is warm before the first block arrives
        self.on_block(
            head,
            int(latest.timestamp),
            base_fee=int(getattr(latest, "base_fee", 0) or 0),
            gas_limit=int(latest.gas_limit) if getattr(latest, "gas_limit", None) else None,
        )
        logger.info(
            f"block interval {self.clock.interval()} s (from {len(self.clock.heads)} heads)"
        )

    # --- logs ---

    def _read_logs(self, start: int, stop: int) -> list[Any]:
        """The engine's raw `PositionChanged`, `MarketSet`, `RiskParamsSet` and
        `CallRewardPaid` logs of blocks start..stop (one filter: any of the four topics)."""
        topic = [
            "0x" + self._raw[name].topic0.hex()
            for name in ("PositionChanged", "MarketSet", "RiskParamsSet", "CallRewardPaid")
        ]
        return self.client.logs(start, stop, [topic])

    def _apply(self, logs: Iterable[Any], stop: int) -> int:
        """Applies raw PositionChanged logs read up to block `stop`; returns how many. A
        `MarketSet` or `RiskParamsSet` log marks the parameters for a reload."""
        ev = self._raw["PositionChanged"]
        paid = self._raw["CallRewardPaid"]
        n = 0
        for log in logs:
            if paid.matches(log):
                if self._earning and _lower(paid.field(log, "caller")) == self._me:
                    self.metrics.rewards_earned += paid.field(log, "amount")
                continue
            if not ev.matches(log):
                self._params_changed = True
                continue
            self.state.book.apply(
                {
                    "account": ev.field(log, "account"),
                    "market_id": ev.field(log, "market_id"),
                    "size": ev.field(log, "size"),
                }
            )
            n += 1
        self.state.cursor = max(self.state.cursor, stop)
        return n

    def _ingest(self, start: int, stop: int) -> int:
        """Applies PositionChanged logs of blocks start..stop; returns how many."""
        if stop < start:
            return 0
        return self._apply(self._read_logs(start, stop), stop)

    def _mine(self, accounts: list[str]) -> list[str]:
        """This keeper's shard of `accounts`."""
        if self.config.shard_count == 1:
            return accounts
        return shard(accounts, self.config.shard_index, self.config.shard_count)

    def _scan(self, accounts: list[str], number: int) -> list[Any]:
        if not accounts:
            return []
        return self.client.statuses(accounts, chunk=self.config.scan_chunk, block_id=number)

    # --- block ---

    def on_block(
        self,
        number: int,
        timestamp: int,
        *,
        base_fee: int | None = None,
        gas_limit: int | None = None,
    ) -> Decision | None:
        """Everything the keeper does for head `number` (stamped `timestamp`, with
        `base_fee` and `gas_limit`: read from the node when not given). Raises on RPC
        errors; the bot logs them and handles the next block from scratch."""
        state = self.state
        if number <= state.last_scanned:
            return None
        self._t0 = time.monotonic()
        seen = _head_seen(number)
        self.clock.observe(number, timestamp)
        now = self.clock.next_timestamp(timestamp)  # what the transactions will carry
        gas_limit = self._begin_block(number, base_fee, gas_limit)

        # the three reads the decision needs, at once, all at block `number`
        known = self._mine(state.book.accounts)
        f_logs = self._io.submit(self._read_logs, state.cursor + 1, number)
        f_mined = self._io.submit(self.sender.mined_count, number) if self.sender.pending else None
        f_scan = self._io.submit(self._scan, known, number)
        f_orders = self._io.submit(self._read_order_logs, state.cursor + 1, number)
        self._apply(f_logs.result(), number)
        self._apply_orders(f_orders.result())
        if self._params_changed:  # the owner changed a market or the risk parameters: rare
            self._load_params(number)
            self._params_changed = False
        statuses = f_scan.result()
        mined = f_mined.result() if f_mined is not None else None
        seen_before = set(known)
        mine = self._mine(state.book.accounts)
        new = [a for a in mine if a not in seen_before]
        if new:  # opened in this block: scanned too, a price may have fallen in the same block
            statuses = statuses + self._scan(new, number)
        self.metrics.track(len(mine))
        for a in [a for a, until in state.backoff.items() if until <= number]:
            del state.backoff[a]
        scanned_ms = 1000 * (time.monotonic() - self._t0)

        busy = {_lower(a) for a in self.sender.in_flight(mined)}
        hints = self._hints(number) if len(state.orders) else {}
        cleared = self._cleared(statuses, number, now)
        plan = self.plan(statuses, number, timestamp, now, busy, hints, cleared)
        decision = plan.decision
        state.held_window = len(plan.held_window)
        self._mark_eligible(list(plan.kept), number, now)
        self._mark_worth(decision, number)
        due_next = plan.due_next
        first = self._send(decision, number, gas_limit, due_next, mined)
        self._send_settlements(plan.settlements, number, gas_limit, mined)
        if first is not None:
            after = f", {1000 * (first - seen):.0f} ms after the head was seen" if seen else ""
            logger.info(
                f"block {number}: scanned {len(statuses)} accounts in {scanned_ms:.0f} ms,"
                f" sent in {1000 * (first - self._t0):.0f} ms{after};"
                f" all {len(decision.margin_calls) + len(decision.liquidations)} batches in"
                f" {1000 * (time.monotonic() - self._t0):.0f} ms"
                f" (head timestamp {timestamp}, decided for {now})"
            )

        # the rest does not hold up the first transaction
        self._wanted = self._worth_sending(list(plan.snapshots), now)
        if mined is not None:  # else nothing was pending before this block's sends
            self._collect(number, mined)
        if plan.clears:
            self._clear_recovered(plan.clears, number, gas_limit)
        if not decision.calls and not decision.liquidated:  # a quiet block: claim then
            self._claim_rewards(number, gas_limit)
        self.sender.unstick(number, self._still_useful, mined)
        state.last_scanned = number
        if decision.calls or decision.liquidated or number % self.config.log_every == 0:
            self._log_summary(number, decision)
        self.write_metrics()
        return decision

    def _begin_block(self, number: int, base_fee: int | None, gas_limit: int | None) -> int:
        """Fixes the fees of block `number`'s transactions and the profit rule's gas price
        from its `base_fee`; returns its `gas_limit` (both read from the node when not
        given)."""
        if base_fee is None or gas_limit is None:
            block = self.provider.web3.eth.get_block(number)
            base_fee = int(block.get("baseFeePerGas", 0) or 0)
            gas_limit = int(block["gasLimit"])
        _, tip = self.sender.begin_block(number, base_fee)
        self.costs = replace(self.costs, gas_price=gas_price(base_fee, tip))
        return gas_limit

    def _cleared(self, statuses: list[Any], number: int, now: int) -> set[str]:
        """The accounts whose call is due by `now` (`due_calls`) and has cleared itself
        (`calls_cleared` at block `number`): a fresh call for them, not a liquidation. Rare
        (a deadline in the next block), so asked only then."""
        due = due_calls((Snapshot.from_status(s) for s in statuses), now)
        cleared: set[str] = set()
        for part in chunks(due, MAX_SCAN):
            cleared |= self.client.calls_cleared(part, block_id=number)
        return cleared

    def plan(
        self,
        statuses: list[Any],
        number: int,
        timestamp: int,
        now: int,
        busy: set[str],
        hints: dict[int, int | None] | None = None,
        cleared: set[str] | None = None,
    ) -> Plan:
        """The keeper step of block `number` (`margincall.keeper.step.plan_block`, the one
        the simulator runs) over its statuses and pending orders (`hints`: each order's
        first feed round after its commit), with this keeper's costs, caps and memory."""
        state = self.state
        return plan_block(
            statuses,
            number=number,
            head_timestamp=timestamp,
            now=now,
            costs=self.costs,
            caps=Caps.of(self.config),
            memory=Memory(state.book.markets, state.window_full_until, state.backoff),
            call_ratio=self.call_ratio,
            mmrs=self.mmrs,
            busy=busy,
            orders=list(state.orders.pending.values()),
            hints=hints or {},
            busy_orders=settling(busy),  # `order:<id>` names of settle_orders in flight
            cleared=cleared or (),
        )

    def _mark_eligible(self, snaps: list[Snapshot], number: int, now: int) -> None:
        """First block after which each account was seen actionable (for the delay metric);
        ignores profit."""
        free = replace(self.costs, gas_price=0)
        actionable = set()
        for s in snaps:
            if can_liquidate(s, now, free) or can_call(s, free):
                actionable.add(s.account)
                self.state.eligible_since.setdefault(s.account, number)
        self._actionable = actionable
        in_flight = self.sender.in_flight()
        for a in [a for a in self.state.eligible_since if a not in actionable]:
            if a not in in_flight:
                del self.state.eligible_since[a]

    def _mark_worth(self, decision: Decision, number: int) -> None:
        """First block after which each eligible account was also worth its gas (it is in
        the decision); eligible accounts left out were declined as unprofitable."""
        chosen = set(decision.calls) | set(decision.liquidated)
        for a in chosen:
            self.state.worth_since.setdefault(a, number)
        self.metrics.declined += len(self._actionable - chosen)
        in_flight = self.sender.in_flight()
        for a in [a for a in self.state.worth_since if a not in self._actionable]:
            if a not in in_flight:
                del self.state.worth_since[a]

    def _send(
        self,
        decision: Decision,
        number: int,
        gas_limit: int | None = None,
        due_next: frozenset[str] = frozenset(),
        mined: int | None = None,
    ) -> float | None:
        """All batches of the block at once (gas estimated concurrently), most urgent first.
        `gas_limit`: block `number`'s (read from the node when not given). `due_next`: the
        accounts liquidatable at the next block's timestamp but not at the head's. Returns
        when the first transaction went out (monotonic), or None."""
        calls = [self.client.build("liquidate_many", b) for b in decision.liquidations] + [
            self.client.build("margin_call_many", b) for b in decision.margin_calls
        ]
        if not calls:
            return None
        if gas_limit is None:
            gas_limit = self._block_gas_limit(number)
        first: float | None = None
        deferred = 0
        while calls:
            # the estimate runs at the head's timestamp, where a tranche due only at the next
            # block's is skipped: count `DUE_NEXT_GAS` for each of those
            extra = [DUE_NEXT_GAS * sum(1 for a in c.accounts if a in due_next) for c in calls]
            results = self.sender.send_many(
                calls,
                number,
                gas_budget=gas_limit,
                tx_gas_cap=self.config.tx_gas_cap,
                extra_gas=extra,
                mined=mined,
            )
            halves = []
            for call, tx in zip(calls, results, strict=True):
                label, batch = call.label, call.accounts
                if isinstance(tx, Reverted):
                    halves += self._split_reverted(label, tuple(batch), number, tx)
                    continue
                if isinstance(tx, Deferred):
                    deferred += len(batch)
                    continue
                if isinstance(tx, TooLarge):
                    if len(batch) > 1:
                        logger.info(f"block {number}: {tx}; sent as two batches")
                        mid = (len(batch) + 1) // 2
                        halves += [self.client.build(label, b) for b in (batch[:mid], batch[mid:])]
                    else:  # nothing smaller to send: not an RPC error, and not every block
                        self.state.too_large += 1
                        self.state.backoff[batch[0]] = number + TOO_LARGE_BACKOFF
                        logger.warning(
                            f"block {number}: {label} for {batch[0]} alone does not fit in one"
                            f" transaction ({tx}); retried in {TOO_LARGE_BACKOFF} blocks"
                        )
                    continue
                if isinstance(tx, Exception):
                    self.state.rpc_errors += 1
                    logger.error(
                        f"block {number}: {label} for {len(batch)} accounts not sent: {tx}"
                    )
                    continue
                if first is None:
                    first = time.monotonic()
                if label == "liquidate_many":
                    self.metrics.tranches_sent += len(batch)
                else:
                    self.metrics.calls_sent += len(batch)
                logger.info(
                    f"block {number}: sent {label} for {len(batch)} accounts"
                    f" ({tx.txn_hash[:10]}, nonce {tx.nonce},"
                    f" {1000 * (time.monotonic() - self._t0):.0f} ms into the block)"
                )
            calls = halves
        if deferred:
            logger.info(f"block {number}: {deferred} accounts wait for the next block (gas limit)")
        return first

    def _split_reverted(
        self, label: str, batch: tuple[str, ...], number: int, err: Reverted
    ) -> list[Any]:
        """A batch whose estimate reverted (`margincall.keeper.step.split_reverted`, the
        simulator's rule too): its two halves, estimated again in this block; an account
        that reverts alone is backed off for `REVERT_BACKOFF` blocks."""
        again, bad = split_reverted([(batch, True)])
        if again:
            logger.info(f"block {number}: {label} for {len(batch)} accounts reverts; split")
        for account in bad:
            self.state.reverted += 1
            self.state.backoff[account] = number + REVERT_BACKOFF
            logger.warning(
                f"block {number}: {label} for {account} reverts on its own ({err.cause});"
                f" retried in {REVERT_BACKOFF} blocks"
            )
        return [self.client.build(label, b) for b in again]

    def _block_gas_limit(self, number: int) -> int | None:
        try:
            return int(self.provider.web3.eth.get_block(number)["gasLimit"])
        except Exception:  # noqa: BLE001 - no budget rather than no keeper
            return None

    # --- reporting ---

    def snapshot(self) -> dict[str, Any]:
        out = self.metrics.as_dict()
        out.update(
            keeper=self.sender.address,
            shard=f"{self.config.shard_index}/{self.config.shard_count}",
            block=self.state.last_scanned,
            delays=list(self.metrics.delays),
            paid_delays=list(self.metrics.paid_delays),
            gas_spent=self.sender.gas_spent,
            fees_paid_wei=self.sender.fees_paid,
            pending=len(self.sender.pending),
            replacements=self.sender.replacements,
            cancels=self.sender.cancels,
            rpc_errors=self.state.rpc_errors,
            clears_sent=self.state.clears_sent,
            claims_sent=self.state.claims_sent,
            clears_made=self.state.clears_made,
            too_large=self.state.too_large,
            reverted=self.state.reverted,
            held_window=self.state.held_window,
            block_interval_s=self.clock.interval(),
            uptime_s=round(time.time() - self.state.started_at, 1),
            **self.order_snapshot(),
        )
        return out

    def write_metrics(self) -> None:
        path = self.config.metrics_path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.snapshot(), indent=1) + "\n")
        tmp.replace(path)

    def _log_summary(self, number: int, decision: Decision) -> None:
        m = self.metrics
        logger.info(
            f"block {number}: tracking {m.accounts_tracked};"
            f" this block {len(decision.calls)} calls,"
            f" {len(decision.liquidated)} tranches; total calls {m.calls_made}/{m.calls_sent},"
            f" tranches {m.tranches_made}/{m.tranches_sent}, races lost {m.races_lost},"
            f" skipped (recovered) {m.skipped_recovered}, skipped (window) {m.skipped_window},"
            f" rewards {fmt_tokens(m.rewards_earned, self.client.decimals, 6)} tokens,"
            f" max delay {m.max_delay} blocks"
        )


__all__ = ["Keeper", "KeeperState"]
