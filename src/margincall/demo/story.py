"""margincall demo: a scripted margin-call story on the embedded Anvil.

Run with `make story` (or `ape run story`): Ape starts its own Anvil through
the foundry provider (`host: auto` in ape-config.yaml), deploys a fresh
system, plays the story below and stops Anvil again.

1. deploy; an LP funds the pool, the insurance fund gets a donation;
2. traders A (3x), B (8x) and C (cross: long ETH, short BTC) open positions,
   D deposits and waits (at 9.5x from the start D would be liquidatable at
   ETH 1,884, before 8x B is even callable at 1,867);
3. ETH slides in steps, BTC creeps up; status of every trader after each;
4. a keeper margin-calls the CALLABLE accounts (B and C);
5. C cures with a deposit; B cannot withdraw nor be liquidated yet;
6. B does not cure: past the deadline the keeper liquidates one tranche, the
   smallest fraction that restores call_ratio (under the close factor: in the
   call band a tranche pays a third of the penalty), which clears the call;
   B then closes the rest;
7. D buys the dip at 9.5x; a crash makes D CRITICAL, then BANKRUPT before
   a keeper acts: one liquidation closes everything, the fund pays the debt;
8. final report and conservation check.

Every state the story relies on is asserted: a regression in the engine
stops the demo with a clear message and a nonzero exit code. Figures of
actions come from the events of their receipts. Every transaction goes through
the SDK (`margincall.sdk.Clients`), which checks it before sending; the reverts
the story shows are simulated with `eth_call`, to show the engine's own reasons.
"""

from __future__ import annotations

import sys
import time
import warnings
from decimal import Decimal

from ape import accounts, chain, project
from ape.logging import logger
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from web3.exceptions import ContractLogicError as Web3ContractLogicError

from margincall.constants import WAD, State
from margincall.deploy import deploy_system
from margincall.math import RiskParams
from margincall.report import (
    fmt_deadline,
    fmt_pct,
    fmt_ratio,
    fmt_tokens,
    fmt_wad,
    kv_table,
    positions_text,
    state_text,
    status_table,
)
from margincall.sdk import Clients, MarginCallError

# noise from a dependency's settings model, unrelated to the demo
warnings.filterwarnings("ignore", message="Field 'import_remapping'")

ETH, BTC = 0, 1
LP_DEPOSIT = 1_000_000
DONATION = 5_000
GRACE_SKIP = 3_601  # past a one-hour margin-call deadline

# piped output (CI, `make demo | tee`) gets a width that fits the status tables
console = Console(highlight=False, width=None if Console().is_terminal else 120)


class DemoFailure(Exception):
    """A step did not reach the state the story needs."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise DemoFailure(message)


def units(x: float | int | str, decimals: int = 18) -> int:
    """A decimal number as a fixed-point integer, exactly."""
    return int(Decimal(str(x)) * 10**decimals)


class Demo:
    def __init__(self) -> None:
        test = accounts.test_accounts
        self.owner, self.guardian, self.lp, self.keeper = test[0], test[1], test[2], test[3]
        self.traders = {
            "A": test[5],
            "B": test[6],
            "C": test[7],
            "D": test[8],
        }
        self.prices = {ETH: 2_000, BTC: 60_000}
        self.liquidations: list = []
        self.calls: list = []
        self.rewards_paid: list = []  # CallRewardPaid: parked call rewards paid to the caller
        self.bad_debts: list = []
        self.settle_fees = 0  # the orders' settlement fees paid to the keeper

    # --- helpers -------------------------------------------------------------

    @property
    def engine(self):
        return self.system.engine

    def tok(self, amount: int, places: int = 2) -> str:
        return fmt_tokens(amount, self.decimals, places) + " mUSD"

    def now(self) -> int:
        return chain.blocks.head.timestamp

    def header(self, number: int | str, title: str) -> None:
        console.print()
        console.rule(f"[bold]Step {number}[/] · {title}", style="cyan")

    def say(self, text: str) -> None:
        console.print(f"  {text}")

    def mint_approve(self, who, whole: float, client) -> int:
        """Mints from the mock token's faucet and approves the `client`'s contract."""
        amount = units(whole, self.decimals)
        self.system.token.mint(who.address, amount, sender=who)
        client.approve(amount, sender=who)
        return amount

    def deposit(self, name: str, whole: float):
        trader = self.traders[name]
        amount = self.mint_approve(trader, whole, self.client)
        receipt = self.client.deposit(amount, sender=trader)
        ev = receipt.decode_logs(self.engine.Deposit)[0]
        self.say(f"{name} deposits {self.tok(ev.amount, 0)} (collateral {self.tok(ev.collateral)})")
        return receipt

    def fill(self, trader, market: int, delta: int, bound: int, reduce_only: bool = False):
        """An order: committed, then filled at the next round published after the commit
        (both feeds, same prices), which the keeper settles (PROTOCOL.md section 5b).
        Returns the commit and settlement receipts."""
        orders = self.client.orders
        order_id, commit = orders.commit(market, delta, bound, trader, reduce_only=reduce_only)
        if chain.pending_timestamp <= chain.blocks.head.timestamp:
            chain.pending_timestamp = chain.blocks.head.timestamp + 1
        self.set_prices()
        receipt = orders.settle(order_id, self.keeper)
        (outcome,) = [o for o in orders.outcomes(receipt) if o.order_id == order_id]
        expect(outcome.settled, f"order {order_id:#x} refused: {outcome.reason}")
        self.settle_fees += sum(e.fee for e in receipt.decode_logs(orders.book.OrderSettled))
        return commit, receipt

    def trade(self, name: str, market: int, size: float | str):
        trader = self.traders[name]
        price = self.system.oracles[market].price()
        delta = units(size)
        bound = price * 101 // 100 if delta > 0 else price * 99 // 100
        commit, receipt = self.fill(trader, market, delta, bound)
        ev = receipt.decode_logs(self.engine.PositionChanged)[-1]
        side = "buys" if delta > 0 else "sells"
        base = self.system.markets[market].name.split("-")[0]
        self.say(
            f"{name} {side} {abs(Decimal(str(size)))} {base}"
            f" at {fmt_wad(ev.price)} (order committed in block {commit.block_number},"
            f" settled by the keeper in block {receipt.block_number} at the next round):"
            f" fee {self.tok(ev.fee)}, collateral {self.tok(ev.collateral)}"
        )
        return receipt

    def set_prices(self, eth: float | None = None, btc: float | None = None) -> None:
        """Posts a new round on both feeds (refreshing the unchanged one too)."""
        if eth is not None:
            self.prices[ETH] = eth
        if btc is not None:
            self.prices[BTC] = btc
        for market in (ETH, BTC):
            self.system.set_price(market, self.prices[market])

    def statuses(self) -> dict:
        names = list(self.traders)
        result = self.system.lens.check_margins([self.traders[n].address for n in names])
        return dict(zip(names, result, strict=True))

    def state(self, name: str) -> State:
        return State(int(self.engine.check_margin(self.traders[name].address).state))

    def positions(self, name: str) -> str:
        address = self.traders[name].address
        sizes = []
        for market in range(len(self.system.markets)):
            size, _ = self.engine.position(address, market)
            sizes.append((self.system.markets[market].name.split("-")[0], size))
        return positions_text(sizes)

    def show(self, title: str) -> dict:
        statuses = self.statuses()
        rows = [(f"trader {n}", s, self.positions(n)) for n, s in statuses.items()]
        prices = f"ETH {self.prices[ETH]:,} · BTC {self.prices[BTC]:,}"
        console.print(status_table(rows, title=f"{title}  [dim]({prices})[/]", now=self.now()))
        return {n: State(int(s.state)) for n, s in statuses.items()}

    def expect_states(self, states: dict, wanted: dict, when: str) -> None:
        for name, state in wanted.items():
            expect(
                states[name] == state,
                f"{when}: trader {name} is {states[name].name}, the story needs {state.name}",
            )

    def expect_revert(self, reason: str, method, *args, sender) -> str:
        """Simulates a transaction that must revert, as a keeper does before sending.

        A plain eth_call through web3: Ape would print a call trace for it.
        """
        tx = {"from": sender.address, "to": self.engine.address, "data": method.encode_input(*args)}
        try:
            chain.provider.web3.eth.call(tx)
        except Web3ContractLogicError as err:
            message = str(err.message or err).removeprefix("execution reverted: ")
            expect(reason in message, f"expected revert '{reason}', got '{message}'")
            return message
        raise DemoFailure(f"expected a revert '{reason}', the call went through")

    # --- story -----------------------------------------------------------------

    def step1_deploy(self) -> None:
        self.header(1, "deploy the system, fund the pool and the insurance fund")
        self.system = deploy_system(project, self.owner, self.guardian, decimals=18)
        self.clients = Clients.from_system(self.system)
        self.client = self.clients.engine
        self.decimals = self.system.decimals
        s = self.system
        addresses = [
            ("collateral token (mUSD, 18 decimals)", s.token.address),
            ("LiquidityPool", s.pool.address),
            ("InsuranceFund", s.fund.address),
            ("MarginEngine", s.engine.address),
        ]
        for market, spec in enumerate(s.markets):
            addresses.append((f"oracle {spec.name}", s.oracles[market].address))
        console.print(kv_table(addresses, title="Contracts"))

        p = self.engine.risk_params()
        params = []
        for name in RiskParams.__dataclass_fields__:
            value = int(getattr(p, name))
            if name in ("grace_period", "tranche_interval", "liquidation_window"):
                text = f"{value:,} s"
            elif name in ("call_ratio", "critical_ratio"):
                text = fmt_ratio(value, 2)
            elif name in ("close_factor", "liquidation_penalty", "keeper_share"):
                text = fmt_pct(value)
            else:
                text = fmt_wad(value) + " mUSD"
            params.append((name, text))
        console.print(kv_table(params, title="Risk parameters (engine.risk_params())"))

        markets = Table(title="Markets", title_justify="left", header_style="bold cyan")
        for col in ("id", "market", "price", "imr", "mmr", "fee"):
            markets.add_column(col, justify="right" if col != "market" else "left")
        for market, spec in enumerate(s.markets):
            cfg = self.engine.markets(market)
            markets.add_row(
                str(market),
                spec.name,
                fmt_wad(s.oracles[market].price()),
                fmt_pct(cfg.imr),
                fmt_pct(cfg.mmr),
                fmt_pct(cfg.fee, 3),
            )
        console.print(markets)

        pool, fund = self.clients.pool, self.clients.fund
        amount = self.mint_approve(self.lp, LP_DEPOSIT, pool)
        pool.deposit(amount, sender=self.lp)
        self.say(f"LP deposits {self.tok(amount, 0)} into the pool")
        amount = self.mint_approve(self.owner, DONATION, fund)
        receipt = fund.donate(amount, sender=self.owner)
        ev = receipt.decode_logs(s.fund.Donation)[0]
        self.say(
            f"the insurance fund receives a donation of {self.tok(ev.amount, 0)}"
            f" (balance {self.tok(ev.balance_after, 0)})"
        )
        expect(pool.total_assets() == units(LP_DEPOSIT, self.decimals), "pool not funded")
        self.pool_start = pool.total_assets()
        # the keeper's wallet plus its rewards accrued in the engine (claimed when it likes)
        self.keeper_start = s.token.balanceOf(self.keeper.address) + s.engine.claimable(
            self.keeper.address
        )

    def step2_open(self) -> None:
        self.header(2, "traders deposit and open leveraged positions")
        self.deposit("A", 20_000)
        self.trade("A", ETH, 30)  # 60,000 notional: 3x
        self.deposit("B", 10_000)
        self.trade("B", ETH, 40)  # 80,000 notional: 8x
        self.deposit("C", 9_500)
        self.trade("C", ETH, 25)  # cross margin: 50,000 long ETH ...
        self.trade("C", BTC, "-0.5")  # ... and 30,000 short BTC: 8.4x gross
        self.deposit("D", 2_000)
        self.say("D waits for a dip")
        states = self.show("After opening")
        self.expect_states(
            states, {n: State.HEALTHY for n in self.traders}, "after opening positions"
        )

    def step3_slide(self) -> None:
        self.header(3, "ETH slides, BTC creeps up")
        path = [
            (1_900, 61_000, {"B": State.HEALTHY, "C": State.HEALTHY}),
            (1_860, 61_500, {"B": State.CALLABLE, "C": State.HEALTHY}),
            (1_844, 62_000, {"B": State.CALLABLE, "C": State.CALLABLE}),
        ]
        for eth, btc, wanted in path:
            self.set_prices(eth, btc)
            states = self.show(f"ETH {eth:,}")
            self.expect_states(states, {"A": State.HEALTHY, **wanted}, f"at ETH {eth}")

    def step4_calls(self) -> None:
        self.header(4, "a keeper margin-calls the CALLABLE accounts")
        callable_ = [n for n, s in self.statuses().items() if int(s.state) == State.CALLABLE]
        expect(callable_ == ["B", "C"], f"expected B and C callable, found {callable_}")
        for name in callable_:
            receipt = self.client.margin_call(self.traders[name].address, sender=self.keeper)
            ev = receipt.decode_logs(self.engine.MarginCall)[0]
            self.calls.append(ev)
            self.say(
                f"[dark_orange]MarginCall[/] on {name}:"
                f" deadline {fmt_deadline(ev.deadline, self.now())} (t={ev.deadline}),"
                f" ratio {fmt_ratio(ev.ratio)},"
                f" equity {fmt_wad(ev.equity)}, maintenance {fmt_wad(ev.maintenance)},"
                f" keeper reward {self.tok(ev.reward)} (parked until the call ends)"
            )
        states = self.show("After the margin calls")
        self.expect_states(
            states, {"A": State.HEALTHY, "B": State.CALLED, "C": State.CALLED}, "after the calls"
        )

    def step5_cure(self) -> None:
        self.header(5, "C cures with a deposit; B does nothing")
        receipt = self.deposit("C", 5_000)
        cleared = receipt.decode_logs(self.engine.MarginCallCleared)
        expect(len(cleared) == 1, "C's deposit did not clear its margin call")
        ev = cleared[0]
        self.say(
            f"[green]MarginCallCleared[/] on C: ratio {fmt_ratio(ev.ratio)},"
            f" equity {fmt_wad(ev.equity)}, maintenance {fmt_wad(ev.maintenance)}"
        )
        self.note_rewards_paid(receipt, "C's cure")
        b = self.traders["B"]
        msg = self.expect_revert(
            "under margin call", self.engine.withdraw, units(100, self.decimals), sender=b
        )
        self.say(f"B wants to withdraw 100 mUSD: the engine refuses ({msg})")
        msg = self.expect_revert(
            "not liquidatable", self.engine.liquidate, b.address, sender=self.keeper
        )
        self.say(f"liquidating B before the deadline would revert ({msg})")
        states = self.show("After C's cure")
        self.expect_states(
            states, {"A": State.HEALTHY, "B": State.CALLED, "C": State.HEALTHY}, "after the cure"
        )

    def note_rewards_paid(self, receipt, what: str) -> None:
        """Books and tells the parked call rewards that `receipt` paid to their callers."""
        for paid in receipt.decode_logs(self.engine.CallRewardPaid):
            self.rewards_paid.append(paid)
            self.say(
                f"[green]CallRewardPaid[/]: {what} ended the call solvent; the caller gets"
                f" its parked reward {self.tok(paid.amount)}"
            )

    def liquidate(self, name: str):
        address = self.traders[name].address
        preview = self.client.preview_liquidation(address)
        expect(preview.liquidatable, f"trader {name} is not liquidatable ({preview.reason.name})")
        receipt = self.client.liquidate(address, sender=self.keeper)
        ev = receipt.decode_logs(self.engine.Liquidation)[0]
        self.liquidations.append(ev)
        self.note_rewards_paid(receipt, f"{name}'s liquidation")
        expect(
            ev.penalty == preview.penalty and ev.closed_notional == preview.closed_notional,
            "liquidation differs from its preview",
        )
        kind = "full close" if ev.full_close else f"tranche {ev.tranche}"
        self.say(
            f"[red]Liquidation[/] of {name} ({kind}, state {state_text(ev.state)}):"
            f" fraction {fmt_pct(ev.fraction)}, closed notional {fmt_wad(ev.closed_notional)},"
            f" penalty {self.tok(ev.penalty)} = keeper {self.tok(ev.keeper_reward)}"
            f" + fund {self.tok(ev.fund_fee)}; ratio after {fmt_ratio(ev.ratio_after)}"
        )
        return receipt, ev

    def step6_liquidate(self) -> None:
        self.header(6, "B does not cure: past the deadline, a tranche")
        params = self.engine.risk_params()
        chain.pending_timestamp += GRACE_SKIP
        self.set_prices()  # fresh rounds at the same prices, mined past the deadline
        self.say(f"{GRACE_SKIP:,} s later, prices unchanged:")
        states = self.show("Deadline passed")
        status = self.engine.check_margin(self.traders["B"].address)
        self.expect_states(states, {"B": State.LIQUIDATABLE}, "after the deadline")
        expect(status.ratio >= WAD, "B should be liquidatable by its deadline, not by ratio < 1")

        # one tranche at the same prices: the smallest fraction that restores call_ratio. In
        # the call band (ratio >= critical_ratio) a tranche pays a third of the full penalty,
        # so from any ratio >= 1 it takes less than the close factor at the defaults.
        receipt, ev = self.liquidate("B")
        expect(not ev.full_close, "B should not be closed in one go (it is not CRITICAL)")
        expect(
            0 < ev.fraction <= params.close_factor,
            "the tranche should close at most the close factor",
        )
        expect(
            ev.ratio_after >= params.call_ratio,
            "the tranche should restore call_ratio (the smallest fraction that does)",
        )
        cleared = receipt.decode_logs(self.engine.MarginCallCleared)
        expect(len(cleared) == 1, "B's tranche did not clear the margin call")
        self.say(
            f"[green]MarginCallCleared[/] on B by the tranche: ratio {fmt_ratio(cleared[0].ratio)}"
            f" ({fmt_pct(ev.fraction)} closed; the close factor caps a tranche at"
            f" {fmt_pct(params.close_factor)})"
        )
        msg = self.expect_revert(
            "not liquidatable", self.engine.liquidate, self.traders["B"].address, sender=self.keeper
        )
        self.say(f"a second tranche right away would revert cleanly ({msg})")
        states = self.show("After B's tranche")
        self.expect_states(states, {"B": State.HEALTHY}, "after B's tranche")

        b = self.traders["B"]
        left = int(self.client.position(b, ETH)[0])
        _, receipt = self.fill(b, ETH, -left, units(1, 18), reduce_only=True)
        ev = receipt.decode_logs(self.engine.PositionChanged)[-1]
        self.say(
            f"B closes what is left ({fmt_wad(-ev.size_delta, 4)} ETH at {fmt_wad(ev.price)}):"
            f" realised PnL {self.tok(ev.realized_pnl)}, collateral {self.tok(ev.collateral)}"
        )

    def step7_crash(self) -> None:
        self.header(7, "D buys the dip at 9.5x, then a crash")
        self.trade("D", ETH, "10.45")  # about 19,000 notional on 2,000 mUSD
        states = self.show("D opens")
        self.expect_states(states, {"D": State.HEALTHY}, "after D opens")

        self.set_prices(1_680, 58_000)
        states = self.show("Crash: ETH 1,680")
        self.expect_states(
            states,
            {"A": State.HEALTHY, "C": State.HEALTHY, "D": State.CRITICAL},
            "at ETH 1,680",
        )
        self.set_prices(1_590, 57_500)
        self.say("the next oracle round lands before any keeper transaction")
        states = self.show("Crash: ETH 1,590")
        self.expect_states(
            states,
            {"A": State.HEALTHY, "B": State.HEALTHY, "C": State.HEALTHY, "D": State.BANKRUPT},
            "at ETH 1,590",
        )

        before = self.clients.fund.balance()
        receipt, ev = self.liquidate("D")
        expect(ev.full_close, "a BANKRUPT account must close in one liquidation")
        bad = receipt.decode_logs(self.engine.BadDebt)
        expect(len(bad) == 1, "D's liquidation emitted no BadDebt")
        debt = bad[0]
        self.bad_debts.append(debt)
        after = self.clients.fund.balance()
        self.say(
            f"[magenta]BadDebt[/] of D: {self.tok(debt.amount)},"
            f" paid by the fund {self.tok(debt.paid_by_fund)},"
            f" socialised {self.tok(debt.socialised)}"
        )
        self.say(f"insurance fund: {self.tok(before)} -> {self.tok(after)}")
        expect(debt.socialised == 0, "the fund should cover D's deficit in full")
        expect(
            before - after == debt.paid_by_fund,
            "fund balance change does not match its payments",
        )
        expect(self.engine.collateral_of(self.traders["D"].address) == 0, "D keeps collateral")
        states = self.show("After the crash")
        self.expect_states(states, {"D": State.HEALTHY}, "after D's liquidation (flat)")

    def step8_report(self) -> bool:
        self.header(8, "final report")
        s = self.system
        keeper_earned = (
            s.token.balanceOf(self.keeper.address)
            + s.engine.claimable(self.keeper.address)
            - self.keeper_start
        )
        from_events = (
            sum(e.amount for e in self.rewards_paid)
            + sum(e.keeper_reward for e in self.liquidations)
            + self.settle_fees
        )
        penalties = sum(e.penalty for e in self.liquidations)
        fund_fees = sum(e.fund_fee for e in self.liquidations)
        pool_assets = self.clients.pool.total_assets()
        held = s.token.balanceOf(s.engine.address)
        ledgers = sum(s.engine.collateral_of(t.address) for t in self.traders.values())
        # and the margin-call rewards still parked (caller << 96 | amount)
        ledgers += sum(
            s.engine.parked_reward(t.address) & (2**96 - 1) for t in self.traders.values()
        )
        # what the engine holds for others: accrued rewards (keeper), the fund's share, the
        # pool's credit; and the settlement fees escrowed for pending orders
        owners = (self.keeper.address, s.fund.address, s.pool.address)
        accrued = sum(s.engine.claimable(a) for a in owners)
        escrowed = sum(s.book.escrowed_of(t.address) for t in self.traders.values())
        conserved = held == ledgers + accrued + escrowed
        rows = [
            ("insurance fund balance", self.tok(self.clients.fund.balance())),
            ("  donation", self.tok(units(DONATION, self.decimals))),
            ("  + liquidation fees", self.tok(fund_fees)),
            ("  - bad debt paid", self.tok(sum(d.paid_by_fund for d in self.bad_debts))),
            ("pool assets", self.tok(pool_assets)),
            ("  change since the LP deposit", self.tok(pool_assets - self.pool_start)),
            ("socialised loss", self.tok(sum(d.socialised for d in self.bad_debts))),
            ("margin calls", str(len(self.calls))),
            ("liquidations", str(len(self.liquidations))),
            ("total penalties", self.tok(penalties)),
            ("keeper earnings", self.tok(keeper_earned)),
            ("  of which order settlement fees", self.tok(self.settle_fees)),
            ("engine token balance", self.tok(held)),
            ("collateral_of(traders) + parked call rewards", self.tok(ledgers)),
            ("  + accrued (keeper, fund, pool)", self.tok(accrued)),
            ("  + escrowed order fees", self.tok(escrowed)),
        ]
        console.print(kv_table(rows, title="Totals"))
        expect(keeper_earned == from_events, "keeper earnings differ from the events' rewards")
        if conserved:
            console.print(
                "[bold green]conservation check OK[/]: engine balance == ledgers + accrued"
                " + escrowed"
            )
        else:
            console.print(
                "[bold red]conservation check FAILED[/]:"
                f" engine holds {held}, ledgers {ledgers} + accrued {accrued}"
                f" + escrowed {escrowed}"
            )
        return conserved

    def run(self) -> bool:
        self.step1_deploy()
        self.step2_open()
        self.step3_slide()
        self.step4_calls()
        self.step5_cure()
        self.step6_liquidate()
        self.step7_crash()
        return self.step8_report()


def main() -> None:
    start = time.monotonic()
    logger.set_level("WARNING")  # the story prints its own lines, not one per transaction
    console.print(
        Panel.fit(
            "[bold]margincall[/] demo: margin calls, phased liquidation and the insurance fund\n"
            f"[dim]network: {chain.provider.network.choice}:{chain.provider.name}"
            f" · chain id {chain.chain_id}[/]",
            border_style="cyan",
        )
    )
    try:
        ok = Demo().run()
    except (DemoFailure, MarginCallError) as err:  # a step the SDK refused fails the story
        console.print(f"\n[bold red]demo failed:[/] {err}")
        sys.exit(1)
    console.print(f"\n[dim]finished in {time.monotonic() - start:.1f} s[/]")
    if not ok:
        sys.exit(1)
