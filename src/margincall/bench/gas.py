"""Gas benchmark of the margin engine, measured from receipts on a local Anvil.

Run with `make bench-gas` (that is, `ape run bench_gas`: Ape starts its own
Anvil, per ape-config.yaml). Prints a table and rewrites the block between
`<!-- gas:begin -->` and `<!-- gas:end -->` in docs/benchmarks.md.

Every measured operation is its own transaction, so every storage slot and
every address it touches starts cold (EIP-2929), as in production. The state
around it is a steady state: the accounts exist, the engine, pool, fund and
keeper already hold tokens, and every market has been liquidated before (its
rolling window slot is nonzero). Token approvals are unlimited, so
`transferFrom` does not write the allowance. `gas` is `receipt.gas_used`:
the 21,000 base, calldata and refunds included.

Views are measured with contracts/testing/GasProbe.vy: the `gasleft()`
difference around a static call, which is what a contract caller pays
(shown with the engine's address warm, and cold, i.e. +2,600); and, as a
cross-check, `eth_estimateGas` minus the intrinsic cost (21,000 + 16 per
nonzero and 4 per zero calldata byte).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from decimal import Decimal
from typing import Any

from ape import accounts, chain, project
from ape.logging import logger
from eth_utils import keccak

from margincall.bench.gas_breakdown import Breakdowns
from margincall.bench.gas_report import (
    ANCHOR_BATCH,
    ANCHOR_LIQUIDATE,
    ANCHOR_ORDERS,
    ANCHOR_SUPPLY,
    ANCHOR_VIEW,
    ANCHOR_WITHDRAW,
    BATCH_SIZES,
    DOC,
    MAX_UINT,
    ROOT,
    TARGET_CHECK_MARGIN,
    TARGET_COMMIT,
    TARGET_DEPOSIT,
    TARGET_LIQUIDATE,
    TARGET_SETTLE_BATCH,
    TARGET_WITHDRAW,
    Breakdown,
    Row,
    calldata_gas,
    machine,
    markdown,
    print_table,
    whole,
    write_doc,
)
from margincall.constants import WAD, State
from margincall.deploy import deploy_system
from margincall.sdk import MarginEngineClient

# tranches per claim of each accrued balance, for the amortised row: the keeper bot claims
# at MARGINCALL_CLAIM_AT = 100 tokens and earns at least min_keeper_reward = 1 token a tranche
CLAIM_EVERY = 100


@contextmanager
def isolated() -> Iterator[None]:
    """Runs a scenario on a snapshot and rolls the chain back afterwards."""
    snap = chain.snapshot()
    try:
        yield
    finally:
        chain.restore(snap)


class Bench(Breakdowns):
    """One deployed system in its steady state, and the scenarios measured on it."""

    def __init__(self, decimals: int, traders: list, probe: Any):
        test = accounts.test_accounts
        self.owner, self.guardian, self.lp, self.keeper = test[0], test[1], test[2], test[3]
        self.trader, self.veteran = test[5], test[6]
        self.traders = traders
        self.probe = probe
        self.decimals = decimals
        self.s = deploy_system(project, self.owner, self.guardian, decimals=decimals)
        self.engine = self.s.engine
        self.book = self.s.book
        self.token = self.s.token
        self.unit = 10**decimals
        self.rows: list[Row] = []
        self.breakdowns: list[Breakdown] = []
        self._names = self._address_book()
        self._slots: dict[int, str] | None = None
        self.probe_overhead: int | None = None
        self.scan_rows: list[Row] = []  # batched view rows, listed after check_margin
        self._steady_state()

    # --- setup -------------------------------------------------------------

    def _address_book(self) -> dict[str, tuple[str, dict[str, str]]]:
        """address (lowercase) -> (name, selector -> function name)."""
        book = {}
        named = [
            ("engine", self.engine),
            ("book", self.s.book),
            ("token", self.token),
            ("pool", self.s.pool),
            ("fund", self.s.fund),
        ]
        for spec, oracle, feed in zip(self.s.markets, self.s.oracles, self.s.feeds, strict=True):
            named.append((f"oracle {spec.name}", oracle))
            named.append((f"feed {spec.name}", feed))
        for name, contract in named:
            selectors = {}
            for abi in contract.contract_type.abi:
                if abi.type == "function":
                    selectors["0x" + keccak(text=abi.selector)[:4].hex()] = abi.name
            book[contract.address.lower()] = (name, selectors)
        return book

    def amount(self, x: float) -> int:
        return int(Decimal(str(x)) * self.unit)

    def _steady_state(self) -> None:
        s, o, u = self.s, self.owner, self.unit
        # LP liquidity, an insurance fund, a keeper that has been paid before
        s.token.mint(self.lp.address, 1_000_000 * u, sender=self.lp)
        s.token.approve(s.pool.address, MAX_UINT, sender=self.lp)
        s.pool.deposit(1_000_000 * u, self.lp.address, sender=self.lp)
        s.token.mint(o.address, 10**9 * u, sender=o)
        s.token.approve(s.fund.address, MAX_UINT, sender=o)
        s.fund.donate(100_000 * u, sender=o)
        s.token.approve(self.engine.address, MAX_UINT, sender=o)  # deposits on behalf
        # critical_ratio 0.5 (the default 1 closes every account below ratio 1 whole): the
        # scenarios below take tranches at ratio 0.56, the same code path as in the call band
        params = MarginEngineClient.from_system(s).risk_params()
        self.engine.set_risk_params(replace(params, critical_ratio=WAD // 2).as_tuple(), sender=o)
        s.token.mint(self.keeper.address, 10 * u, sender=self.keeper)
        s.token.mint(self.trader.address, 1_000_000 * u, sender=self.trader)
        s.token.approve(self.engine.address, MAX_UINT, sender=self.trader)
        # A veteran account, liquidated once in every market: the markets'
        # window slots, the open interest and every token balance are
        # nonzero, as on a chain that has been running for a while.
        self.engine.deposit(self.amount(1_700), self.veteran.address, sender=o)
        self.open_three(self.veteran)
        self.move_all(0.91)
        self.engine.liquidate(self.veteran.address, sender=self.keeper)
        self.move_all(1.0)

    # --- helpers ---------------------------------------------------------------

    def set_price(self, market_id: int, price: float) -> None:
        self.s.set_price(market_id, price)

    def move_all(self, factor: float) -> None:
        for m, spec in enumerate(self.s.markets):
            self.set_price(m, spec.price * factor)

    def commit(self, who, market_id: int, size: float | str, expiry: int | None = None):
        """Commits an order with a 5% slippage bound; returns (order id, receipt)."""
        p = self.s.oracles[market_id].price()
        delta = whole(size)
        bound = p * 105 // 100 if delta > 0 else p * 95 // 100
        if expiry is None:
            expiry = int(chain.blocks.head.timestamp) + int(self.book.max_window())
        r = self.book.commit_order(market_id, delta, bound, expiry, False, sender=who)
        return int(self.book.OrderCommitted.from_receipt(r)[0].order_id), r

    def next_round(self, market_id: int) -> int:
        """Publishes the market's next round at its current answer, a second after the head
        (a round in the commit's own second is not after it); returns its id."""
        feed = self.s.feeds[market_id]
        chain.pending_timestamp = int(chain.blocks.head.timestamp) + 1
        feed.set_answer(int(feed.latestRoundData()[1]), sender=self.owner)
        return int(feed.latestRoundData()[0])

    def trade(self, who, market_id: int, size: float | str):
        """A position change: commit, the next round, settle (by the keeper); returns the
        settlement receipt."""
        order_id, _ = self.commit(who, market_id, size)
        r = self.book.settle_order(order_id, self.next_round(market_id), sender=self.keeper)
        assert self.book.OrderSettled.from_receipt(r), "order not filled"
        return r

    def open_three(self, who) -> None:
        """2 ETH (4,000), 0.1 BTC (6,000), 20 SOL (3,000): initial margin 1,600."""
        self.trade(who, 0, 2)
        self.trade(who, 1, "0.1")
        self.trade(who, 2, 20)

    def expect(self, who, state: State) -> None:
        got = State(self.engine.check_margin(who.address).state)
        assert got == state, f"{who.address}: expected {state.name}, got {got.name}"

    def record(self, op: str, gas: int, target: int | None = None, anchor: str = "") -> None:
        twin = ""
        if self.decimals != 18:
            twin, op = op, f"{op} [{self.decimals}-decimal token]"
        self.rows.append(Row(op, gas, target, anchor, twin))

    # --- scenarios ---------------------------------------------------------------

    def deposit_withdraw(self, full: bool) -> None:
        e, t = self.engine, self.trader
        with isolated():
            r = e.deposit(self.amount(1_000), sender=t)
            if full:
                self.record("deposit, first (fresh account)", r.gas_used, None, ANCHOR_SUPPLY)
            r = e.deposit(self.amount(4_000), sender=t)
            self.record(
                "deposit, existing account (steady state)",
                r.gas_used,
                TARGET_DEPOSIT,
                ANCHOR_SUPPLY,
            )
            if full:
                self.breakdown("deposit, existing account", receipt=r)
            r = e.withdraw(self.amount(100), sender=t)
            if full:
                self.record(
                    "withdraw, no open position", r.gas_used, TARGET_WITHDRAW, ANCHOR_WITHDRAW
                )
            self.trade(t, 0, 4)
            r = e.withdraw(self.amount(100), sender=t)
            self.record(
                "withdraw, one position (steady state)",
                r.gas_used,
                TARGET_WITHDRAW,
                ANCHOR_WITHDRAW,
            )
            if full:
                self.breakdown("withdraw, one position", receipt=r)
                self.trade(t, 1, "0.1")
                self.trade(t, 2, 20)
                r = e.withdraw(self.amount(100), sender=t)
                self.record("withdraw, three positions", r.gas_used, None, ANCHOR_WITHDRAW)

    def trades(self) -> None:
        e, t = self.engine, self.trader
        with isolated():
            e.deposit(self.amount(5_000), sender=t)
            self.record("settle_order, open (new position)", self.trade(t, 0, 2).gas_used)
            self.record("settle_order, increase", self.trade(t, 0, 1).gas_used)
            self.record("settle_order, reduce", self.trade(t, 0, -1).gas_used)
            self.record("settle_order, close (to zero)", self.trade(t, 0, -2).gas_used)

    def orders(self) -> None:
        """commit (a fresh slot), settle alone, settle in batches, cancel after expiry."""
        e, t, k = self.engine, self.trader, self.keeper
        with isolated():
            e.deposit(self.amount(5_000), sender=t)
            order_id, r = self.commit(t, 0, 2)
            self.record("commit_order, open (fresh slot)", r.gas_used, TARGET_COMMIT, ANCHOR_ORDERS)
            r = self.book.settle_order(order_id, self.next_round(0), sender=k)
            self.record("settle_order alone, open", r.gas_used, None, ANCHOR_ORDERS)
            order_id, r = self.commit(t, 0, -1)
            self.record(
                "commit_order, reduce (one position)", r.gas_used, TARGET_COMMIT, ANCHOR_ORDERS
            )
            self.book.settle_order(order_id, self.next_round(0), sender=k)
            expiry = int(chain.blocks.head.timestamp) + 60
            order_id, _ = self.commit(t, 0, 1, expiry)
            chain.pending_timestamp = expiry + 1
            r = self.book.cancel_order(order_id, sender=t)
            self.record("cancel_order (expired, refund)", r.gas_used, None, ANCHOR_ORDERS)
        for n in BATCH_SIZES:
            with isolated():
                ids = []
                for who in self.traders[:n]:
                    e.deposit(self.amount(1_000), who.address, sender=self.owner)
                    ids.append(self.commit(who, 0, 2)[0])
                round_id = self.next_round(0)
                r = self.book.settle_orders(ids, [round_id] * n, sender=k)
                done = len(self.book.OrderSettled.from_receipt(r))
                assert done == n, f"settle_orders filled {done} of {n}"
                self.record(
                    f"settle_orders, {n} opens: per order (total {r.gas_used:,})",
                    r.gas_used // n,
                    TARGET_SETTLE_BATCH if n == 10 else None,
                    ANCHOR_ORDERS,
                )

    def margin_call(self) -> None:
        e, t = self.engine, self.trader
        with isolated():
            e.deposit(self.amount(1_000), sender=t)
            self.trade(t, 0, 4)
            self.set_price(0, 1_860)  # ratio 440 / 372 = 1.18
            self.expect(t, State.CALLABLE)
            r = e.margin_call(t.address, sender=self.keeper)
            self.record("margin_call", r.gas_used)

    def liquidations(self, full: bool) -> None:
        e, t, k = self.engine, self.trader, self.keeper
        with isolated():
            e.deposit(self.amount(1_000), sender=t)
            self.trade(t, 0, 4)  # 8,000 notional on 1,000: 8x
            self.set_price(0, 1_800)  # ratio 200 / 360 = 0.56
            self.expect(t, State.LIQUIDATABLE)
            r = e.liquidate(t.address, sender=k)
            self.record(
                "liquidate, one tranche, one market",
                r.gas_used,
                TARGET_LIQUIDATE,
                ANCHOR_LIQUIDATE,
            )
            if full:
                self.breakdown("liquidate, one tranche, one market", receipt=r)
                # what the tranche accrued leaves later, once per CLAIM_EVERY tranches: the
                # keeper's claim, the fund's sweep and the pool's collection (anyone may send
                # the last two; the engine sweeps before a cover, the pool collects before a
                # withdrawal that needs it)
                claims = 0
                for label, owner in (
                    ("claim_rewards(keeper) (the keeper's accrued rewards)", k.address),
                    ("claim_rewards(fund) (the fund's sweep)", self.s.fund.address),
                    ("claim_rewards(pool) (the pool's collection)", self.s.pool.address),
                ):
                    c = e.claim_rewards(owner, sender=k)
                    assert e.RewardsClaimed.from_receipt(c), f"{label}: nothing claimed"
                    self.record(label, c.gas_used)
                    claims += c.gas_used
                self.record(
                    f"liquidate, one tranche, one market, with its claims amortised"
                    f" (one claim of each per {CLAIM_EVERY} tranches)",
                    r.gas_used + claims // CLAIM_EVERY,
                    TARGET_LIQUIDATE,
                    ANCHOR_LIQUIDATE,
                )
        if not full:
            return
        with isolated():
            e.deposit(self.amount(1_700), sender=t)
            self.open_three(t)
            self.move_all(0.91)  # ratio 530 / 728 = 0.73
            self.expect(t, State.LIQUIDATABLE)
            r = e.liquidate(t.address, sender=k)
            self.record("liquidate, one tranche, three markets", r.gas_used, None, ANCHOR_LIQUIDATE)
        for label, price, state in (
            ("liquidate, CRITICAL (full close, one market)", 1_760, State.CRITICAL),
            ("liquidate, BANKRUPT (full close, bad debt)", 1_700, State.BANKRUPT),
        ):
            with isolated():
                e.deposit(self.amount(1_000), sender=t)
                self.trade(t, 0, 4)
                self.set_price(0, price)
                self.expect(t, state)
                r = e.liquidate(t.address, sender=k)
                self.record(label, r.gas_used, None, ANCHOR_LIQUIDATE)
                if state == State.BANKRUPT:
                    assert e.BadDebt.from_receipt(r), "no BadDebt event"

    def batches(self) -> None:
        e, o = self.engine, self.owner
        for n in BATCH_SIZES:
            with isolated():
                batch = self.traders[:n]
                for who in batch:
                    e.deposit(self.amount(1_000), who.address, sender=o)
                    self.trade(who, 0, 4)
                lens = self.s.lens  # check_margins is on the engine's MarginLens
                data = bytes(lens.check_margins.encode_input([who.address for who in batch]))
                request = {
                    "from": self.keeper.address,
                    "to": lens.address,
                    "data": "0x" + data.hex(),
                }
                estimate = int(chain.provider.make_request("eth_estimateGas", [request]), 16)
                execution = estimate - 21_000 - calldata_gas(data)
                self.scan_rows.append(
                    Row(
                        f"check_margins, {n} accounts, one position each: per account"
                        f" (eth_estimateGas - intrinsic; total {execution:,})",
                        execution // n,
                        None,
                        ANCHOR_VIEW,
                    )
                )
                self.set_price(0, 1_800)
                r = e.liquidate_many([who.address for who in batch], sender=self.keeper)
                done = len(e.Liquidation.from_receipt(r))
                assert done == n, f"liquidate_many closed {done} of {n}"
                self.record(
                    f"liquidate_many, {n} accounts: per account (total {r.gas_used:,})",
                    r.gas_used // n,
                    None,
                    ANCHOR_BATCH,
                )

    def views(self) -> None:
        e, t = self.engine, self.trader
        with isolated():
            e.deposit(self.amount(2_000), sender=t)
            self.view_row("check_margin, no position", t, None)
            self.trade(t, 0, 4)
            self.view_row("check_margin, one position", t, TARGET_CHECK_MARGIN, breakdown=True)
            self.trade(t, 1, "0.05")
            self.trade(t, 2, 10)
            self.view_row("check_margin, three positions", t, None)
            self.rows += self.scan_rows
            feed, oracle = self.s.feeds[0], self.s.oracles[0]
            data = feed.latestRoundData.encode_input()
            self.record(
                "  component: feed.latestRoundData (MockAggregator)", self.measure(feed, data)
            )
            data = oracle.price.encode_input()
            self.record("  component: oracle.price (adapter + feed)", self.measure(oracle, data))
            self.breakdown("oracle.price (adapter frame)", call=(oracle.address, bytes(data)))
            # the probe's own share: a static call to an address without code
            spent, _ = self.probe.measure(self.keeper.address, data, True)
            self.probe_overhead = spent

    def measure(self, target, data: bytes, warm: bool = True) -> int:
        spent, ok = self.probe.measure(target.address, data, warm)
        assert ok, "probed call reverted"
        return spent

    def view_row(self, op: str, who, target: int | None, breakdown: bool = False) -> None:
        data = bytes(self.engine.check_margin.encode_input(who.address))
        warm = self.measure(self.engine, data, True)
        cold = self.measure(self.engine, data, False)
        request = {
            "from": self.keeper.address,
            "to": self.engine.address,
            "data": "0x" + data.hex(),
        }
        estimate = int(chain.provider.make_request("eth_estimateGas", [request]), 16)
        est_exec = estimate - 21_000 - calldata_gas(data)
        self.record(f"{op} (contract caller, engine address warm)", warm, target, ANCHOR_VIEW)
        self.record(f"{op} (contract caller, engine address cold)", cold, None, ANCHOR_VIEW)
        self.record(f"{op} (eth_estimateGas - intrinsic)", est_exec, None, ANCHOR_VIEW)
        if breakdown:
            self.breakdown(op, call=(self.engine.address, data))

    def run(self, full: bool = True) -> None:
        self.deposit_withdraw(full)
        if full:
            self.trades()
            self.orders()
            self.margin_call()
        self.liquidations(full)
        if full:
            self.batches()
            self.views()


def main() -> None:
    logger.set_level("WARNING")
    owner = accounts.test_accounts[0]
    probe = owner.deploy(project.GasProbe)
    traders = []
    for _ in range(max(BATCH_SIZES)):
        who = accounts.test_accounts.generate_test_account()
        chain.set_balance(who.address, 10**21)
        traders.append(who)

    rows: list[Row] = []
    breakdowns: list[Breakdown] = []
    probe_overhead = 0
    for decimals, full in ((18, True), (6, False)):
        with isolated():
            bench = Bench(decimals, traders, probe)
            bench.run(full)
        rows += bench.rows
        breakdowns += bench.breakdowns
        if bench.probe_overhead is not None:
            probe_overhead = bench.probe_overhead

    # each 6-decimal row right after its 18-decimal counterpart
    rows = [r for r in rows if not r.twin] + [r for r in rows if r.twin]
    for twin in [r for r in rows if r.twin]:
        rows.remove(twin)
        at = next(i for i, r in enumerate(rows) if r.op == twin.twin)
        rows.insert(at + 1, twin)
    print_table(rows)
    info = machine()
    info["probe_overhead"] = f"{probe_overhead:,}"
    write_doc(markdown(rows, breakdowns, info))
    print(f"wrote {DOC.relative_to(ROOT)}")
