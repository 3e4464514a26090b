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
deadline, a tranche interval; `keeper.logic.decide` returns it). Slots where
nothing can happen are not mined (Anvil takes ~5 ms per empty block), so
delays are counted in slots: the block numbers of a chain that has a block
every `block_time` seconds.

The keeper is the project's keeper logic: after every mined block it scans
every open account with `check_margins`, turns the statuses into
`keeper.logic.Snapshot`s, calls `keeper.logic.decide` with the cost model
the keeper bot uses (`margincall.keeper.config.KeeperConfig` defaults: profit margin,
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

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from margincall.deploy import MarketSpec, deploy_system
from margincall.keeper.config import KeeperConfig
from margincall.keeper.orders import commit_time_of  # noqa: F401 - re-exported for sim.orders
from margincall.keeper.step import split_reverted
from margincall.math import RiskParams
from margincall.sdk import MarginEngineClient, chunks
from margincall.sim.chain import (
    Abi,
    Rpc,
    RpcError,
    check_status_layout,
    hexint,
)
from margincall.sim.paths import PricePath
from margincall.sim.population import (
    Population,
    PopulationConfig,
    Trader,
    build_population,
)

MAX_UINT = 2**256 - 1
FALLBACK_ETH_PRICE = 2_000.0  # for the keeper's gas cost when the path has no ETH market
HEARTBEAT = 30 * 86_400  # feeds are posted every step; a CSV may have long gaps
GAS = {
    "deposit": 200_000,
    "commit_order": 250_000,
    "clear_margin_call": 200_000,
    "set_answer": 120_000,
}
ORDER_WINDOW = 3_000  # seconds a simulated order may wait for its round (the book allows 3,600)
GAS_PER_FILL = 400_000  # gas limit per order of a `settle_orders` (a fill uses well under it)
FILL_HEADROOM = 500_000  # the book's `_FILL_GAS`: left before each fill, or the batch stops
SETTLE_BATCH = 50  # OrderBook._MAX_BATCH
# the settlement fee of the simulated book (millionths of a token): 0.5 token pays the
# keeper's profit rule (57,050 gas per order, x1.2) at the simulator's 1 gwei up to an ETH
# price of ~7,000; the deployer's default (0.1 token) only pays it under ~1,450
SETTLEMENT_FEE_MICRO = 500_000


def settle_gas(n: int) -> int:
    """The gas limit of a `settle_orders` of `n` orders (given, not estimated: the batch
    stops early instead of reverting when gas runs short, so an estimate settles nothing)."""
    return min(GAS_PER_FILL * n + FILL_HEADROOM, 29_000_000)


SETUP_CHUNK = 600  # transactions per JSON-RPC batch during setup
STALL_BLOCKS = 50  # blocks in a row without one of the setup's transactions: a dropped one
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


KEEPER_BATCHES = ("liquidate_many", "margin_call_many")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _wad(x: float) -> int:
    return int(round(x * 10**9)) * 10**9


class SimSetup:
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
        self.reverted_alone: list[str] = []  # accounts whose own keeper call reverted
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
        Returns the transactions sent; one that fails its estimate is dropped, except a
        keeper batch, which is split as the bot splits it (`_estimate`).

        With `timestamp` (the block the transactions will be mined in), estimates run on the
        latest state at that time (a block override): a tranche that only becomes possible
        at the next block's time (a call deadline, a tranche interval) is a no-op at the
        head's time, and an estimate made there would starve it of gas."""
        if not txs:
            return []
        txs = self._estimate(list(txs), timestamp)
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

    def _estimate(self, txs: list[Tx], timestamp: int | None) -> list[Tx]:
        """Gas for each transaction without one, all estimated in one RPC batch. A keeper
        batch whose estimate reverts is cut in halves and estimated again, as the bot does
        (`margincall.keeper.step.split_reverted`); an account that reverts alone is left in
        `reverted_alone` (the replay backs it off). Any other failed estimate is dropped."""
        at: list[Any] = [] if timestamp is None else [{}, {"time": hex(timestamp)}]
        need = [tx for tx in txs if tx.gas == 0]
        while need:
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
            instead: dict[int, list[Tx]] = {}
            for tx, est in zip(need, estimates, strict=True):
                if not isinstance(est, RpcError):
                    tx.gas = min(int(hexint(est) * 1.3) + 50_000, 29_000_000)
                    continue
                instead[id(tx)] = []
                if tx.label not in KEEPER_BATCHES:
                    self.log(f"{tx.label} not sent: {est}")
                    continue
                again, bad = split_reverted([(tx.accounts, True)])
                self.reverted_alone += bad
                instead[id(tx)] = [
                    Tx(
                        tx.sender,
                        tx.to,
                        self.engine_abi.encode(tx.label, list(b)),
                        tx.label,
                        accounts=b,
                    )
                    for b in again
                ]
            txs = [new for tx in txs for new in instead.get(id(tx), [tx])]
            need = [new for group in instead.values() for new in group]
        return txs

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
            self.project,
            self.owner,
            decimals=self.config.decimals,
            markets=self.market_specs(),
            settlement_fee_micro=SETTLEMENT_FEE_MICRO,
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
        self.lens_abi = Abi.of(s.lens)  # check_margins, preview_liquidation: the MarginLens
        check_status_layout(self.lens_abi)
        self.token_abi = Abi.of(s.token)
        self.pool_abi = Abi.of(s.pool)
        self.fund_abi = Abi.of(s.fund)
        self.feed_abi = Abi.of(s.feeds[0])
        self.book_abi = Abi.of(s.book)
        self.book = str(s.book.address)
        self.engine = str(s.engine.address)
        self.lens = str(s.lens.address)
        self.token = str(s.token.address)
        self.pool = str(s.pool.address)
        self.fund = str(s.fund.address)
        self.feeds = [str(f.address) for f in s.feeds]
        self.feed_index = {f.lower(): i for i, f in enumerate(self.feeds)}
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
        self.expiry = ts + ORDER_WINDOW
        for t in pop.traders:
            txs += self._open_txs(t)
        ts = self._setup_blocks(txs, ts)
        ts = self._settle_opening(ts)
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
            out.append(
                Tx(
                    who,
                    self.book,
                    self.book_abi.encode("commit_order", m, delta, bound, self.expiry, False),
                    "commit_order",
                    GAS["commit_order"],
                )
            )
        return out

    def _settle_opening(self, ts: int) -> int:
        """Settles the opening orders: a round at the same prices on every feed, published
        after the commits, then `settle_orders` batches at it; every order must fill."""
        pop = self.population
        posts = [
            Tx(
                pop.oracle,
                feed,
                self.feed_abi.encode("set_answer", self.feed_answer(i, self.path.start(m))),
                "set_answer",
                GAS["set_answer"],
            )
            for i, (m, feed) in enumerate(zip(self.markets, self.feeds, strict=True))
        ]
        self.send(posts)
        ts += 1
        self.mine(ts)
        calls = [self.eth_call(f, self.feed_abi.encode("latestRoundData")) for f in self.feeds]
        rounds = [
            int(self.feed_abi.decode("latestRoundData", out)[0]) for out in self.rpc.batch(calls)
        ]
        txs = []
        for part in chunks(self.opening_orders, SETTLE_BATCH):
            ids = [oid for oid, _ in part]
            hints = [rounds[m] for _, m in part]
            data = self.book_abi.encode("settle_orders", ids, hints)
            txs.append(Tx(pop.oracle, self.book, data, "settle_orders", settle_gas(len(ids))))
        filled, refused = 0, []
        # one batch per block: each takes most of a block's gas (Anvil once dropped the
        # last of twelve batches sent at once, at 500 traders, and the setup mined forever)
        for tx in txs:
            self.send([tx])
            ts, mined = self._mine_out(ts)
            for _, receipt in mined:
                for log in receipt.get("logs", []):
                    decoded = self.book_abi.decode_log(log)
                    if decoded is None:
                        continue
                    if decoded[0] == "OrderSettled":
                        filled += 1
                    elif decoded[0] == "OrderCancelled":
                        refused.append(str(decoded[1]["reason"]))
        if filled != len(self.opening_orders):
            raise SimulationError(
                f"setup: {filled} of {len(self.opening_orders)} opening orders filled"
                f" ({len(refused)} refused, first: {refused[:1]})"
            )
        return ts

    def _setup_blocks(self, txs: list[Tx], ts: int) -> int:
        """Sends `txs` a chunk at a time and mines each chunk out before the next (Anvil
        slows down with tens of thousands of transactions waiting in its pool)."""
        failed = []
        self.opening_orders: list[tuple[int, int]] = []  # (order id, market index)
        for part in chunks(txs, SETUP_CHUNK):
            self.send(part)
            ts, mined = self._mine_out(ts)
            for tx, receipt in mined:
                if hexint(receipt["status"]) != 1:
                    failed.append(tx)
                elif tx.label == "commit_order":
                    self._note_commit(receipt)
        if failed:
            tx = failed[0]
            raise SimulationError(
                f"setup: {len(failed)} transactions reverted, first {tx.label} from {tx.sender}"
            )
        return ts

    def _mine_out(self, ts: int) -> tuple[int, list[tuple[Tx, dict]]]:
        """Mines a block a second after `ts` until every pending transaction is in one;
        returns the last timestamp and the (tx, receipt) pairs. Raises SimulationError when
        `STALL_BLOCKS` blocks in a row include none of them (the node dropped one: Anvil
        keeps no receipt of it and the loop would mine forever)."""
        mined: list[tuple[Tx, dict]] = []
        idle = 0
        while self.pending:
            ts += 1
            done = self.mine(ts)[0]
            mined += done
            idle = 0 if done else idle + 1
            if idle >= STALL_BLOCKS:
                labels = sorted({tx.label for tx in self.pending.values()})
                raise SimulationError(
                    f"setup: {len(self.pending)} transactions ({', '.join(labels)}) not mined"
                    f" in {STALL_BLOCKS} blocks: dropped by the node"
                )
        return ts, mined

    def _note_commit(self, receipt: dict) -> None:
        for log in receipt.get("logs", []):
            decoded = self.book_abi.decode_log(log)
            if decoded is not None and decoded[0] == "OrderCommitted":
                ev = decoded[1]
                self.opening_orders.append((int(ev["order_id"]), int(ev["market_id"])))
