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
next block. `decide` gets the timestamp those transactions will carry: the
next slot's, not the mined block's.

Delay (`eligible_slot`): the state after block b is evaluated at the
timestamp of slot b + 1, the first block that can act on it, with the
engine's rules (a CALLED account whose deadline has come is LIQUIDATABLE; a
tranche waits for `next_tranche_time`); when the action only becomes possible
at a later time (a deadline, a tranche interval) the first slot whose
timestamp reaches it counts, whether or not the simulator mined that slot.
The delay of a tranche (or call) is its block less that first possible block,
plus one: 1 = in the first block where the action was possible. Profit is
ignored here (the bot's rule), so a keeper that declines unprofitable
tranches shows up as accounts left liquidatable, not as delays.

Traders cure margin calls as `population` describes (a per-trader trait: a
trader cures every call, after its own delay, or never); they act on the last
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
from margincall.keeper_logic import CostModel, Snapshot, decide
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
)

MAX_UINT = 2**256 - 1
FALLBACK_ETH_PRICE = 2_000.0  # for the keeper's gas cost when the path has no ETH market
HEARTBEAT = 30 * 86_400  # feeds are posted every step; a CSV may have long gaps
GAS = {"deposit": 200_000, "trade": 400_000, "clear_margin_call": 200_000, "set_answer": 120_000}
SETUP_CHUNK = 600  # transactions per JSON-RPC batch during setup
TAIL_MARGIN = 600  # seconds replayed after the last price on top of one grace period


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
    tail: int | None = None  # seconds replayed after the last price (default: grace + TAIL_MARGIN)
    csv: Path | None = None  # a CSV path instead of the named scenario
    decimals: int = 18  # collateral token decimals
    mmr: float = 0.05
    imr: float = 0.10
    fee: float = 0.0005


@dataclass(frozen=True)
class Variant:
    """A phased run with something changed, on the same setup: the cure probability, the
    keeper's gas price, or risk parameters (raw engine units, e.g.
    `("critical_ratio", 8 * 10**17)`; the engine checks their bounds)."""

    name: str
    cure_probability: float | None = None
    gas_price_gwei: float | None = None
    params: tuple[tuple[str, int], ...] = ()


def tail_seconds(config: SimConfig, params: RiskParams) -> int:
    """Seconds replayed after the path's last price: `config.tail`, or one grace period
    plus `TAIL_MARGIN`."""
    return config.tail if config.tail is not None else params.grace_period + TAIL_MARGIN


def first_slot_at(timestamp: int, t0: int, block_time: int) -> int:
    """The first slot (block `k` at `t0 + k * block_time`) whose timestamp is at least
    `timestamp`."""
    return max(_ceil_div(timestamp - t0, block_time), 0)


def eligible_slot(
    s: Snapshot, slot: int, t0: int, block_time: int, params: RiskParams, calls: bool = True
) -> tuple[str, int] | None:
    """What can be done to the account of `s` (the state after block `slot`) and the first
    slot in which it can be done: `("liquidate", k)`, `("call", k)` or None; profit ignored.

    The state after block `slot` is evaluated at the timestamp of slot `slot + 1`, with the
    engine's rules: CRITICAL/BANKRUPT close at once; LIQUIDATABLE waits for
    `next_tranche_time`; a CALLED account (ratio in [1, call_ratio)) becomes LIQUIDATABLE
    when its deadline comes, and its call lapses one grace period later (then it is
    CALLABLE again); CALLABLE can be called at once (when `calls`)."""
    nxt = slot + 1
    if not s.priced:
        return None
    if s.state in (State.CRITICAL, State.BANKRUPT):
        return ("liquidate", nxt)
    if s.state == State.LIQUIDATABLE:
        at = max(nxt, first_slot_at(s.next_tranche_time, t0, block_time))
        if s.ratio >= WAD and s.call_deadline:  # liquidatable only while its call is live
            lapse = first_slot_at(s.call_deadline + params.grace_period, t0, block_time)
            if at >= lapse:
                return ("call", max(nxt, lapse)) if calls else None
        return ("liquidate", at)
    if s.state == State.CALLED and s.call_deadline:
        lapse = first_slot_at(s.call_deadline + params.grace_period, t0, block_time)
        at = max(nxt, first_slot_at(s.call_deadline, t0, block_time))
        at = max(at, first_slot_at(s.next_tranche_time, t0, block_time))
        if at < lapse:
            return ("liquidate", at)
        return ("call", max(nxt, lapse)) if calls else None
    if s.state == State.CALLABLE and calls:
        return ("call", nxt)
    return None


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
    # blocks from the first block where it was possible (1 = that block), per tranche or
    # full close, and per margin call
    delays: list[int] = field(default_factory=list)
    call_delays: list[int] = field(default_factory=list)
    keeper_gas: int = 0
    keeper_txs: int = 0
    keeper_fee_tokens: float = 0.0
    keeper_skipped: int = 0  # accounts sent to a batch that the engine skipped
    keeper_reverts: int = 0  # keeper transactions that reverted (out of gas, ...)
    trader_txs: int = 0
    trader_reverts: int = 0
    cures_planned: int = 0
    cures_sent: int = 0
    cures_by_deposit: int = 0  # cure transactions sent, by kind
    cures_by_reduce: int = 0
    gas_price_gwei: float = 0.0  # the keeper's gas price in this run
    # eligible accounts that stopped being eligible before anyone acted (the keeper declined:
    # unprofitable, or no time), after the action had been possible
    liq_missed: int = 0
    call_missed: int = 0
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

    def send(self, txs: Sequence[Tx], timestamp: int | None = None) -> list[Tx]:
        """Estimates what needs it, signs nothing (Anvil impersonates), sends in one batch.
        Returns the transactions sent; one that fails its estimate is dropped.

        With `timestamp` (the block the transactions will be mined in), estimates run on the
        latest state at that time (a block override): a tranche that only becomes possible
        at the next block's time (a call deadline, a tranche interval) is a no-op at the
        head's time, and an estimate made there would starve it of gas."""
        if not txs:
            return []
        txs = list(txs)
        need = [tx for tx in txs if tx.gas == 0]
        if need:
            at: list[Any] = [] if timestamp is None else [{}, {"time": hex(timestamp)}]
            estimates = self.rpc.batch(
                [
                    (
                        "eth_estimateGas",
                        [{"from": tx.sender, "to": tx.to, "data": tx.data}, "latest", *at],
                    )
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
        late = self.config.population.cure_delay[1]
        if late >= self.params.grace_period:
            raise SimulationError(
                f"cure delays up to {late} s do not fit the grace period"
                f" ({self.params.grace_period} s): a cure must come before the deadline"
            )
        self.engine_abi = Abi.of(s.engine)
        self.lens_abi = Abi.of(s.lens)  # check_margins is on the engine's MarginLens
        check_status_layout(self.lens_abi)
        self.token_abi = Abi.of(s.token)
        self.pool_abi = Abi.of(s.pool)
        self.fund_abi = Abi.of(s.fund)
        self.feed_abi = Abi.of(s.feeds[0])
        self.engine = str(s.engine.address)
        self.lens = str(s.lens.address)
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
        gas_price_gwei = self.config.gas_price_gwei
        if variant is not None:
            params = replace(params, **dict(variant.params))
            if variant.cure_probability is not None:
                population = replace(population, cure_probability=variant.cure_probability)
            if variant.gas_price_gwei is not None:
                gas_price_gwei = variant.gas_price_gwei
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
        replay = Replay(
            self, mode, params, self.t_setup_end + 1 + self.config.block_time, gas_price_gwei
        )
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

    def __init__(
        self,
        sim: Simulation,
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
            int(self.gas_price_gwei * 10**9),
        )

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
        self._scan(slot, t, views)

    # --- receipts and events ---

    def _receipt(self, slot: int, t: int, tx: Tx, receipt: Mapping[str, Any]) -> None:
        sim, rec = self.sim, self.record
        ok = hexint(receipt["status"]) == 1
        keeper_tx = tx.label in ("liquidate_many", "margin_call_many", "clear_margin_call")
        if keeper_tx:
            self.in_flight.difference_update(tx.accounts)
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
                acted.add(account)
                rec.calls.append(
                    {"slot": slot, "t": t, "account": account, "reward": int(ev["reward"])}
                )
                since = self.call_since.pop(account, None)
                if since is not None:
                    rec.call_delays.append(slot - since + 1)
                self._plan_cure(account, t)
            elif name == "MarginCallCleared":
                caller = self._name(ev["caller"])
                by_trader = caller == account
                rec.clears.append(
                    {
                        "slot": slot,
                        "t": t,
                        "account": account,
                        "by_trader": by_trader,
                        # how the trader cured: deposit, trade (a reduction) or clear_margin_call
                        "how": tx.label if by_trader else "",
                    }
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
                sim.lens_abi.encode("check_margins", part) for part in chunks(self.open, MAX_SCAN)
            ]
        calls = [sim.eth_call(sim.lens, data) for data in self._scan_data]
        return calls + [
            sim.eth_call(sim.token, sim.token_abi.encode("balanceOf", sim.fund)),
            sim.eth_call(sim.pool, sim.pool_abi.encode("totalAssets")),
        ]

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
        # the keeper: its transactions go into the next slot and carry that slot's timestamp
        snaps = [Snapshot.from_status(s) for s in open_now if s.account not in self.in_flight]
        self._mark_eligible(snaps, slot)
        now = self.t0 + (slot + 1) * self.bt
        decision = decide(snaps, now, self._costs_now(), max_batch=sim.keeper_config.max_batch)
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
        # to act in the first slot at or after `wake_at`, scan in the slot before it
        self.wake_slot = (
            None
            if decision.wake_at is None
            else first_slot_at(decision.wake_at, self.t0, self.bt) - 1
        )

    def _mark_eligible(self, snaps: list[Snapshot], slot: int) -> None:
        """The first slot in which each account's next tranche (or call) was possible, from
        the state after block `slot` (`eligible_slot`; profit ignored, the bot's rule). An
        account that stops being eligible before anyone acted, after the action had been
        possible, counts as missed."""
        rec = self.record
        seen: dict[str, set[str]] = {"liquidate": set(), "call": set()}
        since = {"liquidate": self.liq_since, "call": self.call_since}
        for s in snaps:
            e = eligible_slot(s, slot, self.t0, self.bt, self.params, self.mode == PHASED)
            if e is None:
                continue
            kind, at = e
            seen[kind].add(s.account)
            prev = since[kind].get(s.account)
            since[kind][s.account] = at if prev is None else min(prev, at)
        for kind, table in since.items():
            for a in [a for a in table if a not in seen[kind] and a not in self.in_flight]:
                if table.pop(a) <= slot:
                    if kind == "liquidate":
                        rec.liq_missed += 1
                    else:
                        rec.call_missed += 1

    # --- traders ---

    def _plan_cure(self, account: str, t: int) -> None:
        trader = self.traders.get(account)
        if trader is None:
            return
        plan = cure_plan(self.population, trader)
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
            self.record.cures_by_deposit += 1
            return [
                Tx(
                    account,
                    sim.engine,
                    enc("deposit", need, account),
                    "deposit",
                    GAS["deposit"],
                    amount=need,
                )
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
        if out:
            self.record.cures_by_reduce += 1
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
        }

    def _notional(self, account: str) -> int:
        """The account's open notional (wad) at the last posted prices."""
        total = 0
        for i, m in enumerate(self.sim.markets):
            size = self.sizes.get((account, i), self._initial_size(account, i))
            total += abs(size) * _wad(self.prices[m]) // WAD
        return total
