"""The stress simulator's engine room: deploy, open the population, replay a path.

`Simulation` drives the real contracts on a local Anvil:

1. deploys a system with `margincall.deploy.deploy_system` (through Ape), one
   market per market of the path, at the path's first prices;
2. funds the LPs, seeds the insurance fund and opens every trader's
   positions (mint, approve, deposit, trade), with raw transactions from
   impersonated addresses, many per block; then takes a chain snapshot;
3. `run(mode)` reverts to that snapshot, sets the mode's risk parameters and
   replays the path block by block.

Time and blocks: blocks sit on a grid of `block_time` seconds from the
run's start (slot k at `t0 + k * block_time`). A slot is mined when
something happens in it: a price point of the path (posted to the mock
feeds in the first slot at or after its time), a trader's cure, the
keeper's transactions, or a time the keeper asked to wake at (a call
deadline, a tranche interval; `keeper_logic.decide` returns it). Slots where
nothing can happen are not mined (Anvil takes ~5 ms per empty block), so
delays are counted in slots: the block numbers of a chain that has a block
every `block_time` seconds.

The keeper is the project's keeper logic: after every mined block it scans
every open account with `check_margins`, turns the statuses into
`keeper_logic.Snapshot`s, calls `keeper_logic.decide` with the cost model
the keeper bot uses (`margincall.keeper.KeeperConfig` defaults: profit margin,
gas per call and per tranche, batch size, clearing recovered calls), and
sends `liquidate_many` / `margin_call_many` / `clear_margin_call` for the
next block. Its delay metric is the bot's: blocks from the first block an
account was seen eligible to the block of its tranche (1 = the next block).

Traders cure margin calls as `population` describes; they act on the last
status they saw, so a cure can fall short when the price moved meanwhile.
"""

from __future__ import annotations

import heapq
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from margincall.constants import MAX_SCAN, WAD, State
from margincall.deploy import MarketSpec, deploy_system
from margincall.keeper import KeeperConfig
from margincall.keeper_logic import CostModel, Snapshot, can_call, can_liquidate, decide
from margincall.math import RiskParams
from margincall.sdk import MarginEngineClient, MarginStatus, chunks
from margincall.sim.baseline import PHASED, params_for
from margincall.sim.chain import (
    Abi,
    Rpc,
    RpcError,
    check_status_layout,
    decode_statuses,
    hexint,
)
from margincall.sim.paths import ETH, PricePath
from margincall.sim.population import (
    Population,
    PopulationConfig,
    Trader,
    build_population,
    cure_plan,
    deposit_to_cure,
    reduce_to_cure,
    trader_rng,
)

MAX_UINT = 2**256 - 1
FALLBACK_ETH_PRICE = 2_000.0  # for the keeper's gas cost when the path has no ETH market
HEARTBEAT = 30 * 86_400  # feeds are posted every step; a CSV may have long gaps
GAS = {"deposit": 200_000, "trade": 400_000, "clear_margin_call": 200_000, "set_answer": 120_000}
SETUP_CHUNK = 600  # transactions per JSON-RPC batch during setup


class SimulationError(RuntimeError):
    """The simulation could not set up or replay (a setup transaction failed, ...)."""


@dataclass(frozen=True)
class SimConfig:
    """One simulation: a scenario (or CSV path), a seed, the population and the chain."""

    scenario: str = "black_thursday"
    seed: int = 1
    population: PopulationConfig = field(default_factory=PopulationConfig)
    block_time: int = 12
    gas_price_gwei: float = 1.0  # the keeper's gas price, for its profit rule and its profit
    tail: int | None = None  # seconds replayed after the last price (default: grace + 10 min)
    csv: Path | None = None  # a CSV path instead of the named scenario
    decimals: int = 18  # collateral token decimals
    mmr: float = 0.05
    imr: float = 0.10
    fee: float = 0.0005


@dataclass(frozen=True)
class Variant:
    """A phased run with something changed, on the same setup: the cure probability, or
    risk parameters (raw engine units, e.g. `("critical_ratio", 8 * 10**17)`; the engine
    checks their bounds)."""

    name: str
    cure_probability: float | None = None
    params: tuple[tuple[str, int], ...] = ()


@dataclass
class Tx:
    """A transaction to send in the next block (gas 0: estimate it)."""

    sender: str
    to: str
    data: str
    label: str
    gas: int = 0
    accounts: tuple[str, ...] = ()
    amount: int = 0  # token units a trader deposits


@dataclass
class RunRecord:
    """Everything one run observed; `margincall.sim.metrics` turns it into figures."""

    mode: str
    params: RiskParams
    block_time: int
    decimals: int
    markets: tuple[str, ...]
    duration: int  # seconds of the path
    end: int  # seconds replayed (path + tail)
    fund_start: int = 0
    pool_start: int = 0
    # one row per mined block: (slot, seconds, prices..., fund, pool, open, state counts x6,
    # ratio p5, p25, p50, p75, p95)
    samples: list[tuple] = field(default_factory=list)
    liquidations: list[dict[str, Any]] = field(default_factory=list)
    bad_debts: list[dict[str, Any]] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    clears: list[dict[str, Any]] = field(default_factory=list)
    keeper_paid: list[dict[str, Any]] = field(default_factory=list)
    delays: list[int] = field(default_factory=list)  # blocks, per tranche or full close
    call_delays: list[int] = field(default_factory=list)
    keeper_gas: int = 0
    keeper_txs: int = 0
    keeper_fee_tokens: float = 0.0
    keeper_skipped: int = 0  # accounts sent to a batch that the engine skipped
    trader_txs: int = 0
    trader_reverts: int = 0
    cures_planned: int = 0
    cures_sent: int = 0
    trader_equity_start: int = 0  # wad, every trader's equity at the first block
    trader_equity_end: int = 0
    trader_deposits: int = 0  # token units deposited by cures
    blocks_mined: int = 0
    slots: int = 0
    rpc_requests: int = 0
    wall_seconds: float = 0.0
    load_avg: float = 0.0  # the machine's 1-minute load average at the end of the run
    variant: str = ""
    final: dict[str, Any] = field(default_factory=dict)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _wad(x: float) -> int:
    return int(round(x * 10**9)) * 10**9


class Simulation:
    """One deployed system with its population; `run(mode)` replays the path on it."""

    def __init__(
        self,
        rpc: Rpc,
        project: Any,
        owner: Any,
        path: PricePath,
        config: SimConfig,
        log: Callable[[str], None] | None = None,
    ):
        self.rpc = rpc
        self.project = project
        self.owner = owner
        self.path = path
        self.config = config
        self.log = log or (lambda _msg: None)
        self.population: Population = build_population(config.population, config.seed, path.markets)
        self.markets = path.markets
        self.keeper_config = KeeperConfig(deployment=Path("simulation"))
        self.nonces: dict[str, int] = {}
        self.pending: dict[str, Tx] = {}
        self.snapshot_id: str | None = None
        self.setup_seconds = 0.0
        self.t_setup_end = 0

    # --- chain helpers -------------------------------------------------------------

    def head(self) -> tuple[int, int]:
        block = self.rpc.call("eth_getBlockByNumber", "latest", False)
        return hexint(block["number"]), hexint(block["timestamp"])

    def _fetch_nonces(self, senders: Sequence[str]) -> None:
        new = [s for s in dict.fromkeys(senders) if s not in self.nonces]
        counts = self.rpc.batch([("eth_getTransactionCount", [s, "pending"]) for s in new])
        for s, n in zip(new, counts, strict=True):
            self.nonces[s] = hexint(n)

    def send(self, txs: Sequence[Tx]) -> list[Tx]:
        """Estimates what needs it, signs nothing (Anvil impersonates), sends in one batch.
        Returns the transactions sent; one that fails its estimate is dropped."""
        if not txs:
            return []
        txs = list(txs)
        need = [tx for tx in txs if tx.gas == 0]
        if need:
            estimates = self.rpc.batch(
                [
                    ("eth_estimateGas", [{"from": tx.sender, "to": tx.to, "data": tx.data}])
                    for tx in need
                ],
                allow_errors=True,
            )
            dropped = set()
            for tx, est in zip(need, estimates, strict=True):
                if isinstance(est, RpcError):
                    self.log(f"{tx.label} not sent: {est}")
                    dropped.add(id(tx))
                else:
                    tx.gas = min(int(hexint(est) * 1.3) + 50_000, 29_000_000)
            txs = [tx for tx in txs if id(tx) not in dropped]
        self._fetch_nonces([tx.sender for tx in txs])
        calls = []
        for tx in txs:
            nonce = self.nonces[tx.sender]
            self.nonces[tx.sender] = nonce + 1
            calls.append(
                (
                    "eth_sendTransaction",
                    [
                        {
                            "from": tx.sender,
                            "to": tx.to,
                            "data": tx.data,
                            "gas": hex(tx.gas),
                            "gasPrice": "0x0",
                            "nonce": hex(nonce),
                        }
                    ],
                )
            )
        sent = []
        for tx, h in zip(txs, self.rpc.batch(calls, allow_errors=True), strict=True):
            if isinstance(h, RpcError):
                raise SimulationError(f"{tx.label} from {tx.sender} refused: {h}")
            self.pending[h] = tx
            sent.append(tx)
        return sent

    def mine(
        self, timestamp: int | None = None, extra: Sequence[tuple[str, list]] = ()
    ) -> tuple[list[tuple[Tx, dict]], list[Any]]:
        """Mines one block (at `timestamp`); returns the (tx, receipt) pairs of our
        transactions it included, in block order, and the results of `extra` requests
        (views), read in the same batch as the block's receipts (`eth_getBlockReceipts`)."""
        self.rpc.call("evm_mine", *([timestamp] if timestamp is not None else []))
        out = self.rpc.batch([("eth_getBlockReceipts", ["latest"])] + list(extra))
        receipts, results = out[0] or [], out[1:]
        done = []
        for r in receipts:
            tx = self.pending.pop(r["transactionHash"], None)
            if tx is not None:
                done.append((tx, r))
        return done, results

    def eth_call(self, to: str, data: str) -> tuple[str, list]:
        return ("eth_call", [{"to": to, "data": data, "gas": hex(10**9)}, "latest"])

    # --- setup -----------------------------------------------------------------------

    def market_specs(self) -> tuple[MarketSpec, ...]:
        c = self.config
        return tuple(
            MarketSpec(
                m,
                self.path.start(m),
                imr=_wad(c.imr),
                mmr=_wad(c.mmr),
                fee=_wad(c.fee),
                heartbeat=HEARTBEAT,
            )
            for m in self.markets
        )

    def deploy(self) -> None:
        self.system = deploy_system(
            self.project, self.owner, decimals=self.config.decimals, markets=self.market_specs()
        )
        s = self.system
        self.client = MarginEngineClient.from_system(s)
        self.params: RiskParams = self.client.risk_params()
        self.engine_abi = Abi.of(s.engine)
        check_status_layout(self.engine_abi)
        self.token_abi = Abi.of(s.token)
        self.pool_abi = Abi.of(s.pool)
        self.fund_abi = Abi.of(s.fund)
        self.feed_abi = Abi.of(s.feeds[0])
        self.engine = str(s.engine.address)
        self.token = str(s.token.address)
        self.pool = str(s.pool.address)
        self.fund = str(s.fund.address)
        self.feeds = [str(f.address) for f in s.feeds]
        self.unit = 10**self.config.decimals
        self.scale = 10 ** (18 - self.config.decimals)
        self.names = {bytes.fromhex(t.address[2:]): t.address for t in self.population.traders}

    def tokens(self, whole: float) -> int:
        return int(round(whole * 100)) * self.unit // 100

    def feed_answer(self, market_index: int, price: float) -> int:
        return self.system.feed_answer(market_index, price)

    def setup(self) -> None:
        """Deploys, opens the population, takes the snapshot every run starts from."""
        started = time.monotonic()
        self.deploy()
        rpc, pop = self.rpc, self.population
        rpc.call("anvil_autoImpersonateAccount", True)
        rpc.call("evm_setAutomine", False)
        _, ts = self.head()
        actors = [t.address for t in pop.traders] + pop.lps + [pop.keeper, pop.oracle]
        rpc.batch([("anvil_setBalance", [a, hex(10**24)]) for a in actors])

        enc, tok = self.token_abi.encode, self.token
        txs: list[Tx] = []
        lp_each = self.tokens(pop.lp_liquidity / len(pop.lps))
        for lp in pop.lps:
            txs += [
                Tx(lp, tok, enc("mint", lp, lp_each), "mint", 100_000),
                Tx(lp, tok, enc("approve", self.pool, MAX_UINT), "approve", 100_000),
                Tx(lp, self.pool, self.pool_abi.encode("deposit", lp_each, lp), "lp", 300_000),
            ]
        seed = self.tokens(pop.fund_seed)
        if seed > 0:
            donor = pop.oracle
            txs += [
                Tx(donor, tok, enc("mint", donor, seed), "mint", 100_000),
                Tx(donor, tok, enc("approve", self.fund, MAX_UINT), "approve", 100_000),
                Tx(donor, self.fund, self.fund_abi.encode("donate", seed), "donate", 200_000),
            ]
        for t in pop.traders:
            txs += self._open_txs(t)
        ts = self._setup_blocks(txs, ts)
        self.t_setup_end = ts
        self.snapshot_id = rpc.call("evm_snapshot")
        self.setup_seconds = time.monotonic() - started

    def max_leverage(self) -> float:
        """The engine admits new exposure up to equity >= initial: notional <= collateral /
        (imr + fee); traders open at 99.5% of that at most."""
        return 0.995 / (self.config.imr + self.config.fee)

    def opened_leverage(self, t: Trader) -> float:
        return min(t.leverage, self.max_leverage())

    def _open_txs(self, t: Trader) -> list[Tx]:
        enc = self.engine_abi.encode
        who = t.address
        collateral = self.tokens(t.collateral)
        wallet = collateral + self.tokens(t.reserve)
        out = [
            Tx(who, self.token, self.token_abi.encode("mint", who, wallet), "mint", 100_000),
            Tx(
                who,
                self.token,
                self.token_abi.encode("approve", self.engine, MAX_UINT),
                "approve",
                100_000,
            ),
            Tx(who, self.engine, enc("deposit", collateral, who), "deposit", GAS["deposit"]),
        ]
        notional = t.collateral * self.opened_leverage(t)
        for leg in t.legs:
            m = self.markets.index(leg.market)
            price = self.path.start(leg.market)
            size = int(notional * leg.share / price * 1e9) * 10**9
            bound = _wad(price * (1.01 if leg.long else 0.99))
            delta = size if leg.long else -size
            out.append(Tx(who, self.engine, enc("trade", m, delta, bound), "trade", GAS["trade"]))
        return out

    def _setup_blocks(self, txs: list[Tx], ts: int) -> int:
        """Sends `txs` a chunk at a time and mines each chunk out before the next (Anvil
        slows down with tens of thousands of transactions waiting in its pool)."""
        failed = []
        for part in chunks(txs, SETUP_CHUNK):
            self.send(part)
            while self.pending:
                ts += 1
                for tx, receipt in self.mine(ts)[0]:
                    if hexint(receipt["status"]) != 1:
                        failed.append(tx)
        if failed:
            tx = failed[0]
            raise SimulationError(
                f"setup: {len(failed)} transactions reverted, first {tx.label} from {tx.sender}"
            )
        return ts

    # --- run ---------------------------------------------------------------------------

    def run(
        self,
        mode: str,
        progress: Callable[[int, int, str], None] | None = None,
        variant: Variant | None = None,
    ) -> RunRecord:
        """Replays the path in `mode` (`phased` or `baseline`) from the setup snapshot,
        optionally with a `variant` of the cure probability or the risk parameters."""
        if self.snapshot_id is None:
            raise SimulationError("setup() first")
        started = time.monotonic()
        rpc = self.rpc
        rpc.call("evm_revert", self.snapshot_id)
        self.snapshot_id = rpc.call("evm_snapshot")
        self.nonces.clear()
        self.pending.clear()
        requests_before = rpc.requests
        rpc.call("anvil_autoImpersonateAccount", True)
        rpc.call("evm_setAutomine", False)
        params = params_for(mode, self.params)
        population = self.config.population
        if variant is not None:
            params = replace(params, **dict(variant.params))
            if variant.cure_probability is not None:
                population = replace(population, cure_probability=variant.cure_probability)
        # the same configuration block in both modes, so both replay the same block grid
        owner = str(self.owner.address)
        self.send(
            [
                Tx(
                    owner,
                    self.engine,
                    self.engine_abi.encode("set_risk_params", params.as_tuple()),
                    "set_risk_params",
                    300_000,
                )
            ]
        )
        pop = self.population
        self._fetch_nonces([owner, pop.keeper, pop.oracle] + [t.address for t in pop.traders])
        for tx, r in self.mine(self.t_setup_end + 1)[0]:
            if hexint(r["status"]) != 1:
                raise SimulationError(f"{tx.label} reverted: the engine refused {mode} params")
        replay = Replay(self, mode, params, self.t_setup_end + 1 + self.config.block_time)
        replay.population = population
        replay.record.variant = variant.name if variant is not None else ""
        try:
            record = replay.run(progress)
        finally:
            self.pending.clear()
        record.rpc_requests = rpc.requests - requests_before
        record.wall_seconds = time.monotonic() - started
        record.load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        return record

    def restore(self) -> None:
        """Back to automine without impersonation (for a chain shared with other users)."""
        self.rpc.call("evm_setAutomine", True)
        self.rpc.call("anvil_autoImpersonateAccount", False)


class Replay:
    """One run: the block loop, the keeper and the traders."""

    def __init__(self, sim: Simulation, mode: str, params: RiskParams, t0: int):
        self.sim = sim
        self.mode = mode
        self.params = params
        self.t0 = t0
        self.bt = sim.config.block_time
        path = sim.path
        tail = sim.config.tail
        if tail is None:
            tail = sim.params.grace_period + 600
        self.end = path.duration + tail
        self.record = RunRecord(
            mode=mode,
            params=params,
            block_time=self.bt,
            decimals=sim.config.decimals,
            markets=sim.markets,
            duration=path.duration,
            end=self.end,
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
        self.cure_rng = {
            t.address: trader_rng(sim.config.seed, t.index, "cure") for t in sim.population.traders
        }
        self.cure_mode: dict[str, bool] = {}  # account -> deposit (True) or reduce
        self.price_index = 0
        self.prices = sim.path.at(0)
        self.keeper_txs: list[Tx] = []
        self.wake_at: int | None = None
        self.liq_since: dict[str, int] = {}
        self.call_since: dict[str, int] = {}
        self.in_flight: set[str] = set()
        cfg = sim.keeper_config
        self.costs = CostModel(
            gas_price=int(sim.config.gas_price_gwei * 10**9),
            gas_per_call=cfg.gas_per_call,
            gas_per_tranche=cfg.gas_per_tranche,
            margin_bps=cfg.margin_bps,
        )
        self.free = replace(self.costs, gas_price=0)

    # --- prices and the keeper's exchange rate ---

    def eth_price(self) -> float:
        return self.prices.get(ETH, FALLBACK_ETH_PRICE)

    def _costs_now(self) -> CostModel:
        """The bot's cost model, with rewards converted at the current ETH price."""
        wei_per_unit = 10**18 / self.eth_price() / 10**self.sim.config.decimals
        call = self.params.call_reward // self.sim.scale
        tranche = self.params.min_keeper_reward // self.sim.scale
        return replace(
            self.costs,
            call_reward=int(call * wei_per_unit),
            tranche_reward=int(tranche * wei_per_unit),
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
                if self.wake_at is not None:
                    nxt.append(self.wake_at)
                k = max(slot + 1, _ceil_div(min(nxt), self.bt))
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
        sent = sim.send(txs)
        for tx in sent:
            if tx.label in ("liquidate_many", "margin_call_many", "clear_margin_call"):
                rec.keeper_txs += 1
                self.in_flight.update(tx.accounts)
            elif tx.sender in self.traders:
                rec.trader_txs += 1
        mined, views = sim.mine(ts, self._scan_calls())
        rec.blocks_mined += 1
        for tx, receipt in mined:
            self._receipt(slot, t, tx, receipt)
        self._scan(slot, t, ts, views)

    # --- receipts and events ---

    def _receipt(self, slot: int, t: int, tx: Tx, receipt: Mapping[str, Any]) -> None:
        sim, rec = self.sim, self.record
        ok = hexint(receipt["status"]) == 1
        keeper_tx = tx.label in ("liquidate_many", "margin_call_many", "clear_margin_call")
        if keeper_tx:
            self.in_flight.difference_update(tx.accounts)
            gas = hexint(receipt["gasUsed"])
            rec.keeper_gas += gas
            rec.keeper_fee_tokens += gas * sim.config.gas_price_gwei * 1e-9 * self.eth_price()
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
                continue
            if decoded is None:
                continue
            name, ev = decoded
            account = self._name(ev.get("account"))
            if name == "PositionChanged":
                self.sizes[(account, int(ev["market_id"]))] = int(ev["size"])
            elif name == "Liquidation":
                acted.add(account)
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
                    rec.delays.append(slot - since)
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
                acted.add(account)
                rec.calls.append(
                    {"slot": slot, "t": t, "account": account, "reward": int(ev["reward"])}
                )
                since = self.call_since.pop(account, None)
                if since is not None:
                    rec.call_delays.append(slot - since)
                self._plan_cure(account, t)
            elif name == "MarginCallCleared":
                caller = self._name(ev["caller"])
                rec.clears.append(
                    {"slot": slot, "t": t, "account": account, "by_trader": caller == account}
                )
            elif name == "KeeperPaid":
                rec.keeper_paid.append({"slot": slot, "t": t, "amount": int(ev["amount"])})
        if tx.label in ("liquidate_many", "margin_call_many"):
            skipped = [a for a in tx.accounts if a not in acted]
            rec.keeper_skipped += len(skipped)

    def _name(self, raw: Any) -> str:
        if raw is None:
            return ""
        text = str(raw)
        return self.sim.names.get(bytes.fromhex(text[2:].lower()), text)

    # --- scan, keeper ---

    def _balances(self) -> tuple[int, int]:
        sim = self.sim
        fund, pool = sim.rpc.batch(
            [
                sim.eth_call(sim.token, sim.token_abi.encode("balanceOf", sim.fund)),
                sim.eth_call(sim.pool, sim.pool_abi.encode("totalAssets")),
            ]
        )
        return hexint(fund), hexint(pool)

    def _scan_calls(self) -> list[tuple[str, list]]:
        """The views read after every block: the open accounts, the fund and the pool."""
        sim = self.sim
        if self.open != self._scan_for:
            self._scan_for = list(self.open)
            self._scan_data = [
                sim.engine_abi.encode("check_margins", part) for part in chunks(self.open, MAX_SCAN)
            ]
        calls = [sim.eth_call(sim.engine, data) for data in self._scan_data]
        return calls + [
            sim.eth_call(sim.token, sim.token_abi.encode("balanceOf", sim.fund)),
            sim.eth_call(sim.pool, sim.pool_abi.encode("totalAssets")),
        ]

    def _scan(self, slot: int, t: int, ts: int, out: list[Any]) -> None:
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
        # the keeper
        snaps = [Snapshot.from_status(s) for s in open_now if s.account not in self.in_flight]
        self._mark_eligible(snaps, slot, ts)
        decision = decide(snaps, ts, self._costs_now(), max_batch=sim.keeper_config.max_batch)
        enc = sim.engine_abi.encode
        txs = [
            Tx(
                sim.population.keeper,
                sim.engine,
                enc("liquidate_many", list(b)),
                "liquidate_many",
                accounts=b,
            )
            for b in decision.liquidations
        ]
        if self.mode == PHASED:
            txs += [
                Tx(
                    sim.population.keeper,
                    sim.engine,
                    enc("margin_call_many", list(b)),
                    "margin_call_many",
                    accounts=b,
                )
                for b in decision.margin_calls
            ]
            if sim.keeper_config.clear_calls:
                for s in open_now:
                    if (
                        s.priced
                        and s.state == State.HEALTHY
                        and s.call_deadline
                        and s.ratio >= self.params.call_ratio
                        and s.account not in self.in_flight
                    ):
                        txs.append(
                            Tx(
                                sim.population.keeper,
                                sim.engine,
                                enc("clear_margin_call", s.account),
                                "clear_margin_call",
                                GAS["clear_margin_call"],
                                (s.account,),
                            )
                        )
        self.keeper_txs = txs
        self.wake_at = None if decision.wake_at is None else decision.wake_at - self.t0

    def _mark_eligible(self, snaps: list[Snapshot], slot: int, now: int) -> None:
        """First slot each account was seen eligible, ignoring profit (the bot's rule)."""
        liq, call = set(), set()
        for s in snaps:
            if can_liquidate(s, now, self.free):
                liq.add(s.account)
                self.liq_since.setdefault(s.account, slot)
            elif self.mode == PHASED and can_call(s, self.free):
                call.add(s.account)
                self.call_since.setdefault(s.account, slot)
        for since, now_set in ((self.liq_since, liq), (self.call_since, call)):
            for a in [a for a in since if a not in now_set and a not in self.in_flight]:
                del since[a]

    # --- traders ---

    def _plan_cure(self, account: str, t: int) -> None:
        trader = self.traders.get(account)
        if trader is None:
            return
        plan = cure_plan(self.population, self.cure_rng[account])
        if not plan.cures:
            return
        self.record.cures_planned += 1
        self.cure_mode[account] = plan.deposit
        self.cure_seq += 1
        heapq.heappush(self.cures, (t + plan.delay, self.cure_seq, account))

    def _cure(self, account: str) -> list[Tx]:
        """The trader's transactions for a cure, from the last status the trader saw."""
        sim = self.sim
        s = self.status.get(account)
        if s is None or s.positions == 0 or not s.priced:
            return []
        if s.state == State.BANKRUPT:
            return []
        enc = sim.engine_abi.encode
        target = self.population.cure_target
        if s.ratio >= self.params.call_ratio:
            if not s.call_deadline:
                return []
            self.record.cures_sent += 1
            return [
                Tx(
                    account,
                    sim.engine,
                    enc("clear_margin_call", account),
                    "clear_margin_call",
                    GAS["clear_margin_call"],
                )
            ]
        self.record.cures_sent += 1
        need = _ceil_div(deposit_to_cure(s.equity, s.maintenance, target), sim.scale)
        if self.cure_mode.get(account, True) and 0 < need <= self.wallet[account]:
            self.wallet[account] -= need
            return [
                Tx(account, sim.engine, enc("deposit", need, account), "deposit", GAS["deposit"])
            ]
        fraction = reduce_to_cure(s.equity, s.maintenance, target)
        out = []
        for i, m in enumerate(sim.markets):
            size = self.sizes.get((account, i), self._initial_size(account, i))
            if size == 0:
                continue
            delta = -size if fraction >= 0.98 else -int(size * fraction)
            if delta == 0:
                continue
            price = self.prices[m]
            bound = _wad(price * (0.95 if size > 0 else 1.05))
            out.append(
                Tx(account, sim.engine, enc("trade", i, delta, bound), "trade", GAS["trade"])
            )
        return out

    def _initial_size(self, account: str, market_index: int) -> int:
        """The opening size, before any PositionChanged of this run was seen."""
        sim = self.sim
        t = self.traders[account]
        notional = t.collateral * sim.opened_leverage(t)
        m = sim.markets[market_index]
        for leg in t.legs:
            if leg.market == m:
                size = int(notional * leg.share / sim.path.start(m) * 1e9) * 10**9
                return size if leg.long else -size
        return 0

    # --- end ---

    def _equity(self) -> int:
        """Every trader's equity (wad): collateral plus unrealised PnL; a bankrupt account's
        negative equity counts (its deficit is the fund's or the LPs' loss, not a gain)."""
        total = 0
        for s in self.status.values():
            total += s.equity if s.positions > 0 else s.collateral
        return total

    def _final(self) -> None:
        sim, rec = self.sim, self.record
        traders = [t.address for t in sim.population.traders]
        calls = [sim.eth_call(sim.token, sim.token_abi.encode("balanceOf", sim.engine))]
        calls += [
            sim.eth_call(sim.engine, sim.engine_abi.encode("collateral_of", a)) for a in traders
        ]
        out = sim.rpc.batch(calls)
        held = hexint(out[0])
        ledger = sum(hexint(x) for x in out[1:])
        fund, pool = self._balances()
        left = [
            s
            for s in self.status.values()
            if s.positions > 0 and s.priced and s.state >= State.LIQUIDATABLE
        ]
        now = self.t0 + (rec.slots - 1) * self.bt  # the last block mined
        # eligible now, not just waiting for its tranche interval: the keeper left it
        unserved = [s for s in left if can_liquidate(Snapshot.from_status(s), now, self.free)]
        rec.trader_equity_end = self._equity()
        rec.final = {
            "engine_holds": held,
            "collateral_sum": ledger,
            "conserved": held == ledger,
            "fund_end": fund,
            "pool_end": pool,
            "open_accounts": len(self.open),
            "left_liquidatable": len(left),
            "left_unserved": len(unserved),
            "cures_pending": len(self.cures),
        }
