"""The stress simulator's replay: `Simulation.run(mode)` reverts to the setup snapshot, sets
the mode's risk parameters and replays the path block by block (`Replay`).

The keeper is the shipped keeper's step (`margincall.keeper.step.plan_block`, the function
`Keeper.on_block` calls): after every mined block it scans every open account with
`check_margins`, and the step decides the block's calls, tranches and clears with the bot's
cost model, caps (batch size, clears per block), liquidation-window holds and backoffs; the
transactions go into the next slot and carry that slot's timestamp.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from margincall.constants import MAX_SCAN, WAD
from margincall.keeper.gas import gwei
from margincall.keeper.logic import CostModel, Snapshot, due_calls
from margincall.keeper.orders import OrderTracker, Round, first_round_after
from margincall.keeper.step import (
    REVERT_BACKOFF,
    Caps,
    Memory,
    Plan,
    plan_block,
)
from margincall.math import RiskParams
from margincall.sdk import MarginStatus, PositionBook, chunks
from margincall.sim.baseline import PHASED
from margincall.sim.chain import (
    decode_statuses,
    hexint,
)
from margincall.sim.keeping import KeeperMoves, eligible_slot, first_slot_at
from margincall.sim.orders import OrderFlow
from margincall.sim.paths import ETH
from margincall.sim.population import (
    PopulationConfig,
)
from margincall.sim.record import RunRecord
from margincall.sim.setup import (
    FALLBACK_ETH_PRICE,
    GAS,
    MAX_UINT,
    ORDER_WINDOW,
    SimSetup,
    Tx,
    _ceil_div,
    tail_seconds,
)
from margincall.sim.traders import TraderMoves

CURE_OF = {"settle_orders": "trade"}  # a settled reduce order cures as a trade did
KEEPER_TXS = ("liquidate_many", "margin_call_many", "clear_margin_call", "settle_orders")


class Replay(TraderMoves, OrderFlow, KeeperMoves):
    """One run: the block loop, the keeper and the traders."""

    def __init__(
        self,
        sim: SimSetup,
        mode: str,
        params: RiskParams,
        t0: int,
        gas_price_gwei: float | None = None,
    ):
        self.sim = sim
        self.mode = mode
        self.params = params
        self.t0 = t0
        self.bt = sim.config.block_time
        self.gas_price_gwei = (
            sim.config.gas_price_gwei if gas_price_gwei is None else gas_price_gwei
        )
        path = sim.path
        self.end = path.duration + tail_seconds(sim.config, sim.params)
        self.record = RunRecord(
            mode=mode,
            params=params,
            block_time=self.bt,
            decimals=sim.config.decimals,
            markets=sim.markets,
            duration=path.duration,
            end=self.end,
            gas_price_gwei=self.gas_price_gwei,
        )
        self.traders = sim.population.by_address()
        self.population: PopulationConfig = sim.config.population
        self.open = [t.address for t in sim.population.traders]
        self._scan_for: list[str] = []
        self._scan_data: list[str] = []
        self.status: dict[str, MarginStatus] = {}
        self.sizes: dict[tuple[str, int], int] = {}
        self.wallet: dict[str, int] = {
            t.address: sim.tokens(t.reserve) for t in sim.population.traders
        }
        self.cures: list[tuple[int, int, str]] = []  # (time, seq, account)
        self.cure_seq = 0
        self.cure_mode: dict[str, bool] = {}  # account -> deposit (True) or reduce
        self.price_index = 0
        self.prices = sim.path.at(0)
        self.keeper_txs: list[Tx] = []
        self.wake_slot: int | None = None  # the slot to scan in so the keeper can act on time
        # account -> first slot in which its next tranche (or call) was possible
        self.liq_since: dict[str, int] = {}
        self.call_since: dict[str, int] = {}
        self.in_flight: set[str] = set()
        # the bot's cost model (`KeeperConfig.cost_model`): its gas figures and margin, each
        # account's reward bounded from its status with this run's parameters and mmrs
        self.costs: CostModel = sim.keeper_config.cost_model(
            params,
            [spec.mmr for spec in sim.market_specs()],
            sim.config.decimals,
            gwei(self.gas_price_gwei),
        )
        # the shipped keeper's step: its caps, and its memory (the position book, full
        # liquidation windows, backoffs), kept as the bot keeps them
        self.caps = Caps.of(sim.keeper_config, margin_calls=mode == PHASED)
        self.mmrs = [spec.mmr for spec in sim.market_specs()]
        self.book = PositionBook()
        for trader in sim.population.traders:
            for i in range(len(sim.markets)):
                size = self._initial_size(trader.address, i)
                if size:
                    self.book.apply({"account": trader.address, "market_id": i, "size": size})
        self.memory = Memory(self.book.markets, {}, {})
        # orders: the pending ones (from the order book's events), the feed rounds this
        # replay posted (market index -> rounds, rising), the orders with a settlement in
        # flight
        self.orders = OrderTracker()
        self.rounds: dict[int, list[Round]] = {}
        self.settling: set[int] = set()
        self.expiry = 0  # the expiry of the orders committed in the block being built
        self._seed_rounds()

    # --- prices and the keeper's exchange rate ---

    def eth_price(self) -> float:
        return self.prices.get(ETH, FALLBACK_ETH_PRICE)

    def _costs_now(self) -> CostModel:
        """The bot's cost model, with rewards converted at the current ETH price."""
        assert self.costs.rewards is not None
        rewards = replace(self.costs.rewards, wei_per_token=int(10**18 / self.eth_price()))
        scale = self.sim.scale
        return replace(
            self.costs,
            rewards=rewards,
            call_reward=rewards.to_wei(self.params.call_reward // scale),
            tranche_reward=rewards.to_wei(self.params.min_keeper_reward // scale),
        )

    # --- loop ---

    def run(self, progress: Callable[[int, int, str], None] | None) -> RunRecord:
        sim, rec = self.sim, self.record
        fund0, pool0 = self._balances()
        rec.fund_start, rec.pool_start = fund0, pool0
        slot = -1
        times = sim.path.times
        while True:
            if self.keeper_txs or sim.pending:
                k = slot + 1
            else:
                nxt = [self.end]
                if self.price_index < len(times):
                    nxt.append(times[self.price_index])
                if self.cures:
                    nxt.append(self.cures[0][0])
                slots = [_ceil_div(x, self.bt) for x in nxt]
                if self.wake_slot is not None:
                    slots.append(self.wake_slot)
                k = max(slot + 1, min(slots))
            t = k * self.bt
            if t > self.end:
                break
            slot = k
            self._block(slot, t)
            if progress is not None:
                progress(min(t, self.end), self.end, self._progress_text())
        rec.slots = slot + 1
        self._final()
        return rec

    def _progress_text(self) -> str:
        r = self.record
        return (
            f"{self.mode}: {len(r.liquidations)} liquidations, {len(r.calls)} calls,"
            f" {len(self.open)} open"
        )

    def _block(self, slot: int, t: int) -> None:
        sim, rec = self.sim, self.record
        ts = self.t0 + t
        self.expiry = ts + ORDER_WINDOW
        txs = list(self.keeper_txs)
        self.keeper_txs = []
        # the path's points due by this slot: post the latest of each market
        due = None
        while self.price_index < len(sim.path.times) and sim.path.times[self.price_index] <= t:
            due = self.price_index
            self.price_index += 1
        if due is not None:
            self.prices = sim.path.at(due)
            for i, m in enumerate(sim.markets):
                answer = sim.feed_answer(i, self.prices[m])
                txs.append(
                    Tx(
                        sim.population.oracle,
                        sim.feeds[i],
                        sim.feed_abi.encode("set_answer", answer),
                        "set_answer",
                        GAS["set_answer"],
                    )
                )
        while self.cures and self.cures[0][0] <= t:
            _, _, account = heapq.heappop(self.cures)
            txs += self._cure(account)
        sent = sim.send(txs, ts)
        for account in sim.reverted_alone:  # its own tranche or call reverts: as the bot
            self.memory.backoff[account] = slot + REVERT_BACKOFF
            rec.keeper_reverted_alone += 1
        sim.reverted_alone.clear()
        for tx in sent:
            if tx.label in KEEPER_TXS:
                rec.keeper_txs += 1
                self.in_flight.update(tx.accounts)
            elif tx.sender in self.traders:
                rec.trader_txs += 1
        mined, views = sim.mine(ts, self._scan_calls())
        rec.blocks_mined += 1
        for tx, receipt in mined:
            self._receipt(slot, t, tx, receipt)
        self._scan(slot, t, views)

    # --- receipts and events ---

    def _receipt(self, slot: int, t: int, tx: Tx, receipt: Mapping[str, Any]) -> None:
        sim, rec = self.sim, self.record
        ok = hexint(receipt["status"]) == 1
        keeper_tx = tx.label in KEEPER_TXS
        if keeper_tx:
            self.in_flight.difference_update(tx.accounts)
            self._settle_receipt(tx)
            gas = hexint(receipt["gasUsed"])
            rec.keeper_gas += gas
            rec.keeper_fee_tokens += gas * self.gas_price_gwei * 1e-9 * self.eth_price()
            if not ok:
                rec.keeper_reverts += 1
        elif tx.sender in self.traders:
            if not ok:
                rec.trader_reverts += 1
            elif tx.label == "deposit":
                rec.trader_deposits += tx.amount
        if not ok:
            return
        acted: set[str] = set()
        for log in receipt.get("logs", []):
            address = log["address"].lower()
            if address == sim.engine.lower():
                decoded = sim.engine_abi.decode_log(log)
            elif address == sim.fund.lower():
                decoded = sim.fund_abi.decode_log(log)
            else:
                self._order_log(slot, log)
                continue
            if decoded is None:
                continue
            if self._event(slot, t, tx, *decoded):
                acted.add(self._name(decoded[1].get("account")))
        if tx.label in ("liquidate_many", "margin_call_many"):
            skipped = [a for a in tx.accounts if a not in acted]
            rec.keeper_skipped += len(skipped)
            if skipped and tx.label == "liquidate_many":
                self._window_full(skipped)

    def _event(self, slot: int, t: int, tx: Tx, name: str, ev: Mapping[str, Any]) -> bool:
        """Records one event of a mined transaction; True for an action on its account (a
        tranche or a margin call)."""
        rec = self.record
        account = self._name(ev.get("account"))
        acted = False
        if name == "PositionChanged":
            self.sizes[(account, int(ev["market_id"]))] = int(ev["size"])
            self.book.apply(
                {"account": account, "market_id": int(ev["market_id"]), "size": int(ev["size"])}
            )
        elif name == "Liquidation":
            acted = True
            rec.liquidations.append(
                {
                    "slot": slot,
                    "t": t,
                    "account": account,
                    "tranche": int(ev["tranche"]),
                    "state": int(ev["state"]),
                    "fraction": int(ev["fraction"]),
                    "closed_notional": int(ev["closed_notional"]),
                    "penalty": int(ev["penalty"]),
                    "keeper_reward": int(ev["keeper_reward"]),
                    "fund_fee": int(ev["fund_fee"]),
                    "full": bool(ev["full_close"]),
                    "ratio_after": int(ev["ratio_after"]),
                }
            )
            since = self.liq_since.pop(account, None)
            if since is not None:
                rec.delays.append(slot - since + 1)
        elif name == "BadDebt":
            rec.bad_debts.append(
                {
                    "slot": slot,
                    "t": t,
                    "account": account,
                    "amount": int(ev["amount"]),
                    "paid_by_fund": int(ev["paid_by_fund"]),
                    "socialised": int(ev["socialised"]),
                }
            )
        elif name == "MarginCall":
            acted = True
            rec.calls.append(
                {"slot": slot, "t": t, "account": account, "reward": int(ev["reward"])}
            )
            since = self.call_since.pop(account, None)
            if since is not None:
                rec.call_delays.append(slot - since + 1)
            self._plan_cure(account, t)
        elif name in ("CallRewardPaid", "CallRewardReturned"):
            ends = rec.call_rewards_paid if name == "CallRewardPaid" else rec.call_rewards_returned
            ends.append({"slot": slot, "t": t, "account": account, "amount": int(ev["amount"])})
        elif name == "MarginCallCleared":
            caller = self._name(ev["caller"])
            # a reduction the trader committed clears the call when the keeper settles it
            by_trader = caller == account or tx.label == "settle_orders"
            rec.clears.append(
                {
                    "slot": slot,
                    "t": t,
                    "account": account,
                    "by_trader": by_trader,
                    # how the trader cured: deposit, trade (a reduction) or clear_margin_call
                    "how": ("trade" if tx.label == "settle_orders" else tx.label)
                    if by_trader
                    else "",
                }
            )
        return acted

    def _name(self, raw: Any) -> str:
        if raw is None:
            return ""
        text = str(raw)
        return self.sim.names.get(bytes.fromhex(text[2:].lower()), text)

    # --- scan, keeper ---

    def _fund_and_pool_calls(self) -> list[Any]:
        """The fund's holdings (`fund_balance`: its balance plus its share accrued in the
        engine) and the pool's totalAssets (its credit included)."""
        sim = self.sim
        return [
            sim.eth_call(sim.fund, sim.fund_abi.encode("fund_balance")),
            sim.eth_call(sim.pool, sim.pool_abi.encode("totalAssets")),
        ]

    def _balances(self) -> tuple[int, int]:
        fund, pool = self.sim.rpc.batch(self._fund_and_pool_calls())
        return hexint(fund), hexint(pool)

    def _scan_calls(self) -> list[tuple[str, list]]:
        """The views read after every block: the open accounts, the fund and the pool."""
        sim = self.sim
        if self.open != self._scan_for:
            self._scan_for = list(self.open)
            self._scan_data = [
                sim.lens_abi.encode("check_margins", part) for part in chunks(self.open, MAX_SCAN)
            ]
        calls = [sim.eth_call(sim.lens, data) for data in self._scan_data]
        return calls + self._fund_and_pool_calls()

    def _scan(self, slot: int, t: int, out: list[Any]) -> None:
        sim, rec = self.sim, self.record
        statuses: list[MarginStatus] = []
        for data in out[:-2]:
            statuses.extend(decode_statuses(data, sim.names))
        fund, pool = hexint(out[-2]), hexint(out[-1])
        open_now = [s for s in statuses if s.positions > 0]
        self.open = [s.account for s in open_now]
        for s in statuses:
            self.status[s.account] = s
        if not rec.samples:
            rec.trader_equity_start = self._equity()
        # the sample of this block
        counts = [0] * 6
        ratios = []
        for s in open_now:
            counts[int(s.state)] += 1
            if s.priced:
                ratios.append(s.ratio / WAD if s.ratio < MAX_UINT else math.inf)
        pct = (
            tuple(float(x) for x in np.percentile(ratios, (5, 25, 50, 75, 95)))
            if ratios
            else (math.nan,) * 5
        )
        rec.samples.append(
            (
                slot,
                t,
                *(self.prices[m] for m in sim.markets),
                fund,
                pool,
                len(open_now),
                *counts,
                *pct,
            )
        )
        # the keeper: the shipped keeper's step; its transactions go into the next slot and
        # carry that slot's timestamp
        now = self.t0 + (slot + 1) * self.bt
        self._mark_eligible(
            [Snapshot.from_status(s) for s in open_now if s.account not in self.in_flight], slot
        )
        plan = self.plan(open_now, slot, now, self._cleared(open_now, now))
        rec.keeper_held_window += len(plan.held_window)
        rec.keeper_backed_off += len(plan.backed_off)
        rec.keeper_clears_capped += plan.clears_capped
        txs = self._keeper_txs(plan)
        self.keeper_txs = txs
        # to act in the first slot at or after `wake_at`, scan in the slot before it
        self.wake_slot = (
            None if plan.wake_at is None else first_slot_at(plan.wake_at, self.t0, self.bt) - 1
        )

    def _cleared(self, statuses: list[MarginStatus], now: int) -> set[str]:
        """The due calls (`due_calls`) that cleared themselves (`MarginLens.calls_cleared`),
        as the bot asks (`Keeper._cleared`)."""
        due = due_calls((Snapshot.from_status(s) for s in statuses), now)
        if not due:
            return set()
        sim = self.sim
        calls = [
            sim.eth_call(sim.lens, sim.lens_abi.encode("calls_cleared", p))
            for p in chunks(due, MAX_SCAN)
        ]
        flags = [
            f for out in sim.rpc.batch(calls) for f in sim.lens_abi.decode("calls_cleared", out)[0]
        ]
        return {a for a, cleared in zip(due, flags, strict=True) if cleared}

    def plan(
        self, statuses: list[MarginStatus], slot: int, now: int, cleared: set[str] | None = None
    ) -> Plan:
        """The keeper step after block `slot` (`margincall.keeper.step.plan_block`, the one
        `Keeper.on_block` runs), with the bot's cost model, caps and memory, over the
        pending orders (each one's hint: the first round its market's feed published after
        its commit, from the rounds this replay posted); `cleared`: the due calls that
        cleared themselves."""
        orders = list(self.orders.pending.values())
        hints = {
            o.order_id: first_round_after(self.rounds.get(o.market_id, ()), o.committed_at)
            for o in orders
        }
        return plan_block(
            statuses,
            number=slot,
            head_timestamp=self.t0 + slot * self.bt,
            now=now,
            costs=self._costs_now(),
            caps=self.caps,
            memory=self.memory,
            call_ratio=self.params.call_ratio,
            mmrs=self.mmrs,
            busy=self.in_flight,
            orders=orders,
            hints=hints,
            busy_orders=self.settling,
            cleared=cleared or (),
        )

    def _final(self) -> None:
        sim, rec = self.sim, self.record
        traders = [t.address for t in sim.population.traders]
        calls = [sim.eth_call(sim.token, sim.token_abi.encode("balanceOf", sim.engine))]
        calls += [
            sim.eth_call(sim.engine, sim.engine_abi.encode("collateral_of", a)) for a in traders
        ]
        # the settlement fees of pending orders stay in the engine, escrowed for the book
        calls += [sim.eth_call(sim.book, sim.book_abi.encode("escrowed_of", a)) for a in traders]
        # and so do the accruals: the keeper's rewards, the fund's share, the pool's credit
        owners = (sim.population.keeper, sim.fund, sim.pool)
        calls += [sim.eth_call(sim.engine, sim.engine_abi.encode("claimable", a)) for a in owners]
        # and the margin-call rewards parked until their calls end (caller << 96 | amount)
        parked = [
            sim.eth_call(sim.engine, sim.engine_abi.encode("parked_reward", a)) for a in traders
        ]
        out = sim.rpc.batch(calls + parked)
        held = hexint(out[0])
        mask = 2**96 - 1
        ledger = sum(hexint(x) for x in out[1 : len(calls)])
        ledger += sum(hexint(x) & mask for x in out[len(calls) :])
        fund, pool = self._balances()
        last = rec.slots - 1  # the last block mined
        open_now = [s for s in self.status.values() if s.positions > 0]
        left, unserved = [], []
        for s in open_now:
            e = eligible_slot(
                Snapshot.from_status(s), last, self.t0, self.bt, self.params, self.mode == PHASED
            )
            if e is not None and e[0] == "liquidate":
                left.append(s)
                # possible in the next block, not just waiting for its tranche interval or
                # its deadline: the keeper left it
                if e[1] == last + 1:
                    unserved.append(s)
        rec.trader_equity_end = self._equity()
        rec.final = {
            "engine_holds": held,
            "collateral_sum": ledger,
            "conserved": held == ledger,
            "fund_end": fund,
            "pool_end": pool,
            "open_accounts": len(open_now),
            "open_notional": sum(self._notional(s.account) for s in open_now),
            "left_liquidatable": len(left),
            "left_liquidatable_notional": sum(self._notional(s.account) for s in left),
            "left_unserved": len(unserved),
            # what open accounts with negative equity owe: bad debt not yet realised
            "open_deficit": sum(-s.equity for s in open_now if s.equity < 0),
            "cures_pending": len(self.cures),
            "orders_pending": len(self.orders),
        }
