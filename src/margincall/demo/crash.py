"""margincall demo: a crash with real keeper and notifier processes on the embedded Anvil.

Run with `make demo` (or `ape run demo`). Ape starts its own Anvil (`host: auto`);
the demo then

1. deploys the system from config/deploy-local.yaml (deployment record under
   .margincall/demo/), funds two LPs and seeds the insurance fund;
2. starts the keeper and the notifier as real Silverback processes (`silverback run`,
   logs in .margincall/demo/), with a local webhook receiving the notifier's messages;
3. opens ~50 traders at 2x-9.9x, long and short, on ETH and BTC (seeded): each commits
   an order, a round is published, and the keeper process settles them;
4. switches Anvil to interval mining (one block a second, many transactions per block);
5. replays a crash: ETH -45% and BTC -35% over 30 steps of 5 minutes of chain time,
   with rebounds; traders who get a margin call cure it with a deposit half of the
   time (seeded), the others are liquidated tranche by tranche;
6. lets the clock run until no account is left to act on, stops the keeper once it
   has nothing pending, waits (bounded) for the notifier's outbox to drain, stops the
   notifier, and prints the report: calls issued and cured, tranches, full
   liquidations, bad debt and who paid it, the fund, the keeper's rewards and gas, its
   delay measured from the chain's history, and the notifications delivered.

The report checks its figures against the chain: the keeper's rewards (its metrics
file) against the `MarginCall`/`Liquidation` events it caused and its token balance plus
what it has accrued in the engine; the webhook's deliveries against
the engine's events (exactly one message per `MarginCall`, `MarginCallCleared`,
`Liquidation` and `BadDebt`). It fails (exit code 1) when one of them does not match,
tokens are not conserved, or a bot dies.

Every transaction to the engine, the pool and the fund goes through the SDK's checks
(`margincall.sdk`); the mock feeds' prices are posted through the deployer's `System`.
Nothing is left running. The bots die with the demo even when it is killed outright
(they ask the kernel for SIGTERM when their parent dies); SIGTERM and SIGHUP to the demo
stop it in order (the bots within a bounded time, then Anvil) and exit with 128 + the
signal.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from ape import accounts, chain, project
from ape.logging import logger
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from margincall.constants import WAD, State
from margincall.demo.checks import (
    DemoFailure,
    DemoReport,
    console,
    expected_messages,
)
from margincall.deploy.record import DeployConfig, deploy_from_config, write_record
from margincall.keeper.audit import History, read_history
from margincall.keeper.procs import BotProcess
from margincall.keeper.settle import order_history
from margincall.keeper.tx import TxSender
from margincall.notify.outbox import outbox_progress
from margincall.notify.webhook_sink import WebhookServer
from margincall.report import fmt_tokens
from margincall.sdk import Clients, MarginCallError
from margincall.sdk.settlement import SettlementClient
from margincall.sim.crowd import crash_path, open_crowd, plan_crowd, publish_round
from margincall.web.process import DashboardProcess

warnings.filterwarnings("ignore", message="Field 'import_remapping'")

N_TRADERS = 50
SEED = 2026
STEPS = 30
# The chain's clock moves by whole, regular blocks, like a real chain's slots (a block a
# second of wall time, each BLOCK_SECONDS of chain time after the one before): a keeper
# decides for the timestamp its transactions will carry, head + block interval, so the clock
# never jumps inside a block.
BLOCK_SECONDS = 100
BLOCKS_PER_STEP = 3
STEP_SECONDS = BLOCK_SECONDS * BLOCKS_PER_STEP  # chain time per price step
CURE_PROBABILITY = 0.5
REDUCE_SHARE = 0.5  # of the curing traders, those who cure by a reduce-only order
SETTLEMENT_FEE_MICRO = 1_000_000  # the book's settlement fee in the demo: 1 token
LP_DEPOSIT = 2_500_000  # whole tokens, per LP
FUND_SEED = 150_000
WORKDIR = Path(".margincall/demo")
NETWORK = "ethereum:local:foundry"


class Terminated(BaseException):
    """SIGTERM or SIGHUP: unwinds like Ctrl-C (no `except Exception` swallows it), so every
    `finally` on the way stops what it started."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def orderly_signals() -> Iterator[None]:
    """Turns the first SIGTERM or SIGHUP into `Terminated`; later ones are ignored while the
    shutdown (bounded) runs."""

    def handler(signum: int, frame: Any) -> None:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        raise Terminated(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class CrashDemo(DemoReport):
    def __init__(self) -> None:
        test = accounts.test_accounts
        self.owner, self.lp1, self.lp2, self.keeper = test[0], test[1], test[2], test[3]
        self.traders: list = []
        self.rng = random.Random(SEED)
        self.bots: list[BotProcess] = []
        self.webhook = WebhookServer()
        self.cured: set[str] = set()
        self.called_seen: set[str] = set()
        self.reduced: set[str] = set()  # cured by a reduce-only order
        self.last_prices: tuple[float, float] = (0.0, 0.0)
        self.end_block = 0
        self.keeper_metrics: dict[str, Any] = {}
        self.keeper_balance_start = 0

    # --- helpers ---

    def rpc(self, method: str, params: list) -> object:
        return chain.provider.make_request(method, params)

    def tok(self, units: int) -> str:
        return fmt_tokens(units, self.decimals, 0) + " mUSD"

    def tok2(self, units: int) -> str:
        return fmt_tokens(units, self.decimals, 2) + " mUSD"

    def wait_blocks(self, n: int, timeout: float = 30.0) -> int:
        target = chain.blocks.head.number + n
        deadline = time.monotonic() + timeout
        while chain.blocks.head.number < target:
            if time.monotonic() > deadline:
                raise DemoFailure(f"no new block within {timeout:.0f} s (is Anvil mining?)")
            time.sleep(0.1)
        return chain.blocks.head.number

    def settle(self, sender: TxSender, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while sender.pending:
            if time.monotonic() > deadline:
                raise DemoFailure(f"{len(sender.pending)} transactions not mined in {timeout} s")
            time.sleep(0.1)
            sender.poll(chain.blocks.head.number)

    def check_bots(self) -> None:
        for bot in self.bots:
            if not bot.running:
                raise DemoFailure(f"the {bot.bot} process died:\n{bot.tail()}")

    def bot(self, name: str) -> BotProcess:
        return next(b for b in self.bots if b.bot == name)

    def read_metrics(self) -> dict[str, Any]:
        try:
            return json.loads((WORKDIR / "keeper.json").read_text())
        except (OSError, ValueError):
            return {}

    # --- phases ---

    def deploy(self) -> None:
        raw = yaml.safe_load(Path("config/deploy-local.yaml").read_text())
        config = DeployConfig.parse(raw, "config/deploy-local.yaml")
        deployed = deploy_from_config(project, self.owner, config, NETWORK, chain)
        shutil.rmtree(WORKDIR, ignore_errors=True)
        WORKDIR.mkdir(parents=True)
        self.record_path = write_record(deployed.record, WORKDIR / "record.json", force=True)
        self.record = deployed.record
        self.system = deployed.system
        self.clients = Clients.from_record(deployed.record, project)
        self.client = self.clients.engine
        self.decimals = int(self.record.collateral_decimals)
        self.start_block = int(self.record.block)
        pool, fund = self.clients.pool, self.clients.fund
        for lp in (self.lp1, self.lp2):
            amount = self.client.tokens(LP_DEPOSIT)
            self.client.mint(amount, sender=lp)  # the mock token's faucet
            pool.approve(amount, sender=lp)
            pool.deposit(amount, sender=lp)
        seed = self.client.tokens(FUND_SEED)
        self.client.mint(seed, sender=self.owner)
        fund.approve(seed, sender=self.owner)
        fund.donate(seed, sender=self.owner)
        self.fund_before = fund.balance()
        # a settlement fee that pays the keeper's profit rule at Anvil's 1 gwei tip (57,050
        # gas per order, x1.2, at the keeper's 0.0004 ETH per token: 1 token covers up to
        # ~5.8 gwei; the deployer's default 0.1 token does not)
        self.book = SettlementClient(self.client.orders.book)
        self.book.configure(SETTLEMENT_FEE_MICRO, self.client.orders.max_window(), self.owner)
        console.print(
            f"  deployed: engine {self.record.engine}, {len(self.record.markets)} markets;"
            f" pool {self.tok(pool.total_assets())}, fund {self.tok(self.fund_before)}"
        )

    def open_traders(self) -> None:
        plans = plan_crowd(N_TRADERS, SEED)
        for _ in plans:
            trader = accounts.test_accounts.generate_test_account()
            trader.balance = 10**21
            self.traders.append(trader)
        with Progress(
            TextColumn("  opening positions"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("open", total=len(plans))
            open_crowd(
                self.client,
                self.traders,
                plans,
                lambda m: publish_round(self.system, chain, self.client, m),
                progress=lambda i: bar.update(task, completed=i),
                settle=self.keeper_settles,
            )
        # every trader keeps a reserve to cure a call with one deposit transaction
        for trader, plan in zip(self.traders, plans, strict=True):
            reserve = self.client.tokens(plan.deposit)
            self.client.mint(reserve, sender=trader)
            self.client.approve(reserve, sender=trader)
        self.plans = dict(zip((t.address for t in self.traders), plans, strict=True))
        lev = sorted(float(p.leverage) for p in plans)
        longs = sum(p.long for p in plans)
        console.print(
            f"  {len(plans)} traders, leverage {lev[0]:.1f}x..{lev[-1]:.1f}x"
            f" (median {lev[len(lev) // 2]:.1f}x), {longs} long / {len(plans) - longs} short"
        )

    def keeper_settles(self, orders: list[int], timeout: float = 60.0) -> list[str]:
        """Waits until the keeper process has settled (or refused) every order of `orders`
        (automine: its batch lands as soon as it is sent); the reasons of those refused."""
        first = chain.blocks.head.number
        deadline = time.monotonic() + timeout
        while any(self.client.orders.order(o) is not None for o in orders):
            self.check_bots()
            if time.monotonic() > deadline:
                left = sum(self.client.orders.order(o) is not None for o in orders)
                raise DemoFailure(
                    f"the keeper left {left} of {len(orders)} opening orders unsettled for"
                    f" {timeout:.0f} s after their round (see {WORKDIR}/keeper.log)"
                )
            time.sleep(0.25)
        h = order_history(self.book, first, chain.blocks.head.number)
        return [f"{h.refused} refused at settlement"] if h.refused else []

    def start_bots(self) -> None:
        self.webhook.start()
        url = chain.provider.uri
        common = {"MARGINCALL_DEPLOYMENT": str(self.record_path.resolve())}
        self.bots = [
            BotProcess(
                "keeper",
                WORKDIR / "keeper.log",
                node_url=url,
                account="TEST::3",
                env={
                    **common,
                    "MARGINCALL_KEEPER_METRICS": str((WORKDIR / "keeper.json").resolve()),
                    # the chain's block interval once the crash starts (automine before it)
                    "MARGINCALL_BLOCK_TIME": str(BLOCK_SECONDS),
                },
            ),
            BotProcess(
                "notifier",
                WORKDIR / "notifier.log",
                node_url=url,
                env={
                    **common,
                    "MARGINCALL_WEBHOOK_URL": self.webhook.url,
                    "MARGINCALL_OUTBOX": str((WORKDIR / "outbox.sqlite").resolve()),
                },
            ),
        ]
        # its wallet plus its rewards accrued in the engine (claimed later)
        self.keeper_balance_start = self.client.token_balance(self.keeper) + self.client.claimable(
            self.keeper
        )
        for bot in self.bots:
            bot.start()
        if os.environ.get("MARGINCALL_DEMO_DASHBOARD"):  # a port: the dashboard, live all along
            extra = ["--keeper-metrics", str((WORKDIR / "keeper.json").resolve())]
            extra += ["--notifier-outbox", str((WORKDIR / "outbox.sqlite").resolve())]
            port = int(os.environ["MARGINCALL_DEMO_DASHBOARD"])
            self.dashboard = DashboardProcess(
                self.record_path, url, WORKDIR / "dashboard.log", port, extra
            ).start()
        t0 = time.monotonic()
        for bot in self.bots:
            bot.wait_ready(180)
        console.print(
            f"  keeper and notifier running (pids {', '.join(str(b.pid) for b in self.bots)};"
            f" ready in {time.monotonic() - t0:.0f} s; logs in {WORKDIR}/)"
        )
        if getattr(self, "dashboard", None) is not None:
            console.print(f"  dashboard: {self.dashboard.wait_ready().url}/ (live until the end)")

    def interval_mining(self, on: bool) -> None:
        if on:
            self.rpc("anvil_setBlockTimestampInterval", [BLOCK_SECONDS])
            self.rpc("evm_setAutomine", [False])
            self.rpc("evm_setIntervalMining", [1])
        else:
            self.rpc("evm_setIntervalMining", [0])
            self.rpc("evm_setAutomine", [True])
            self.rpc("anvil_removeBlockTimestampInterval", [])

    def cure_calls(self, history: History) -> int:
        """Traders called in `history` (the blocks since the last look) cure their call (a
        deposit) with CURE_PROBABILITY."""
        sent = 0
        for ev in history.of("MarginCall"):
            who = str(ev.account)
            if who in self.called_seen:
                continue
            self.called_seen.add(who)
            if self.rng.random() >= CURE_PROBABILITY:
                continue
            trader = next(t for t in self.traders if t.address == who)
            if self.rng.random() < REDUCE_SHARE:
                sent += self.cure_by_order(trader)
                continue
            status = self.client.status(who)
            call_ratio = int(self.record.risk_params["call_ratio"])
            need_wad = status.maintenance * call_ratio * 13 // (10 * WAD) - status.equity
            amount = min(
                self.client.to_tokens(max(need_wad, 0), round_up=True) + 1,
                self.client.tokens(self.plans[who].deposit),
            )
            try:  # the SDK's checks; the send itself does not wait (interval mining)
                method, args = self.client.deposit_call(amount, trader, who)
            except MarginCallError as err:
                raise DemoFailure(f"the cure of {who} was refused: {err}") from None
            sender = TxSender(trader, chain.provider)
            sender.send_call(method, args, "cure", (), chain.blocks.head.number)
            self.cured.add(who)
            sent += 1
            self.settle(sender)
        return sent

    def cure_by_order(self, trader: Any) -> int:
        """A called trader cures by a reduce-only order for half its position, which the
        keeper settles at the next round (sent without waiting: interval mining)."""
        who = trader.address
        m = self.plans[who].market_id
        size = int(self.client.position(who, m)[0])
        if size == 0:
            return 0
        delta = -size // 2
        bound = self.client.acceptable_price(m, delta, 300)
        expiry = self.client.now + self.client.orders.max_window()
        try:
            self.client.orders.check_commit(m, delta, bound, expiry, who, reduce_only=True)
        except MarginCallError as err:  # e.g. equity under maintenance already
            console.print(f"  the reduction of {who} was refused before sending: {err}")
            return 0
        sender = TxSender(trader, chain.provider)
        call = self.book.commit_call(m, delta, bound, expiry, reduce_only=True)
        try:  # its gas estimate runs the commit: the chain may refuse what the checks allowed
            sender.send_call(call, (), "cure", (), chain.blocks.head.number)
        except Exception as err:  # noqa: BLE001 - a refused cure is part of the story
            console.print(f"  the reduction of {who} was refused: {err}")
            return 0
        self.cured.add(who)
        self.reduced.add(who)
        self.settle(sender)
        return 1

    def crash(self) -> None:
        eth = crash_path(2_000.0, fall=0.45, steps=STEPS, seed=SEED)
        btc = crash_path(60_000.0, fall=0.35, steps=STEPS, seed=SEED + 1)
        owner = TxSender(self.owner, chain.provider)
        self.crash_block = chain.blocks.head.number + 1
        mark = self.crash_block
        seen = History()
        with Progress(
            TextColumn("  crash"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[line]}"),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("crash", total=STEPS, line="")
            for k, (p_eth, p_btc) in enumerate(zip(eth, btc, strict=True), start=1):
                head = chain.blocks.head.number
                owner.send_call(self.system.price_call(0, p_eth), (), "price", (), head)
                owner.send_call(self.system.price_call(1, p_btc), (), "price", (), head)
                self.settle(owner)
                self.last_prices = (p_eth, p_btc)
                now = self.wait_blocks(BLOCKS_PER_STEP - 1)
                # only the new blocks are read: the machine's two cores are the bots' too
                new = read_history(self.client, mark, now)
                seen.logs.extend(new.logs)
                self.cure_calls(new)
                mark = now + 1
                self.check_bots()
                s = seen.summary()
                line = (
                    f"ETH {p_eth:>8,.0f}  BTC {p_btc:>8,.0f} · calls {s['margin_calls']}"
                    f" · tranches {s['tranches']} · closed {s['full_liquidations']}"
                )
                bar.update(task, completed=k, line=line)
                if not console.is_terminal and k % 5 == 0:  # CI logs get a line now and then
                    console.print(f"  step {k}/{STEPS}: {line}")

    def aftermath(self, max_rounds: int = 40) -> int:
        """Lets chain time run (deadlines, tranche intervals) until nothing is left to do: no
        account CALLABLE, CALLED, CRITICAL or BANKRUPT, and the LIQUIDATABLE ones untouched by
        the keeper for two rounds (their next tranche would not pay its gas: the keeper
        declines it, as its metrics count)."""
        quiet = 0
        rounds = 0
        mark = chain.blocks.head.number
        owner = TxSender(self.owner, chain.provider)
        while rounds < max_rounds:
            rounds += 1
            # the feeds' heartbeat: a round at the last prices (orders committed since the
            # last one settle at it)
            head = chain.blocks.head.number
            for market, price in enumerate(self.last_prices):
                owner.send_call(self.system.price_call(market, price), (), "heartbeat", (), head)
            self.settle(owner)
            now = self.wait_blocks(BLOCKS_PER_STEP)
            new = read_history(self.client, mark, now)
            self.cure_calls(new)
            mark = now + 1
            self.check_bots()
            statuses = self.client.statuses([t.address for t in self.traders])
            busy = [
                s
                for s in statuses
                if s.priced
                and s.positions
                and s.state in (State.CALLABLE, State.CALLED, State.CRITICAL, State.BANKRUPT)
            ]
            quiet = quiet + 1 if not busy and not new.actions else 0
            if quiet >= 2:
                break
        self.wait_blocks(2)
        return rounds

    def stop_keeper(self, timeout: float = 30.0) -> None:
        """Stops the keeper once it has scanned the head with nothing pending, so its
        metrics file holds every receipt it will ever count."""
        keeper = self.bot("keeper")
        deadline = time.monotonic() + timeout
        while True:
            head = chain.blocks.head.number
            m = self.read_metrics()
            if m and m.get("pending") == 0 and int(m.get("block") or 0) >= head:
                break
            if time.monotonic() > deadline:
                console.print(
                    f"[red]the keeper did not settle in {timeout:.0f} s"
                    f" (pending {m.get('pending')}, block {m.get('block')}, head {head})[/]"
                )
                break
            self.check_bots()
            time.sleep(0.2)
        keeper.stop(timeout=10)
        self.keeper_metrics = self.read_metrics()

    def drain_notifier(self, timeout: float = 60.0) -> None:
        """Waits until the notifier has read past `end_block`, its outbox holds nothing
        undelivered, and every expected message has reached the webhook (bounded: a
        shortfall is reported, and fails the demo, in `report`)."""
        history = read_history(self.client, self.start_block, self.end_block)
        expected = set(expected_messages(history, chain.chain_id))
        outbox = WORKDIR / "outbox.sqlite"
        deadline = time.monotonic() + timeout
        while True:
            got = {d.key for d in self.webhook.received()}
            progress = outbox_progress(outbox)
            if expected <= got and progress and progress[0] >= self.end_block and not progress[1]:
                return
            if time.monotonic() > deadline:
                console.print(
                    f"[red]the notifier did not drain in {timeout:.0f} s: outbox {progress}"
                    f" (cursor, undelivered), {len(expected - got)} expected messages missing[/]"
                )
                return
            if not self.bot("notifier").running:
                raise DemoFailure(f"the notifier process died:\n{self.bot('notifier').tail()}")
            time.sleep(0.2)

    def stop_bots(self) -> None:
        for bot in self.bots:
            bot.stop(timeout=10)
        self.webhook.stop()

    # --- report ---

    def run(self) -> bool:
        console.rule("[bold]1 · deploy[/]", style="cyan")
        self.deploy()
        try:
            console.rule("[bold]2 · bots[/]", style="cyan")
            self.start_bots()
            console.rule(
                "[bold]3 · traders[/] (each commits an order; the keeper settles them at the"
                " next round)",
                style="cyan",
            )
            self.open_traders()
            self.interval_mining(True)
            console.rule(
                f"[bold]4 · crash[/] (interval mining: 1 block/s, {BLOCK_SECONDS} s of chain"
                f" time each, a price every {BLOCKS_PER_STEP} blocks)",
                style="cyan",
            )
            self.crash()
            rounds = self.aftermath()
            console.print(f"  aftermath: {rounds} more steps of {STEP_SECONDS} s until quiet")
            self.stop_keeper()
            self.end_block = self.wait_blocks(2)  # anything the keeper sent is mined by now
            self.drain_notifier()
        finally:
            self.stop_bots()
            if chain.provider.is_connected:
                self.interval_mining(False)
        console.rule("[bold]5 · report[/]", style="cyan")
        return self.report()

    def shutdown(self) -> None:
        """Stops every bot still running (bounded) and the webhook; safe to repeat."""
        for bot in self.bots:
            if bot.running:
                bot.stop(timeout=5)
        if getattr(self, "dashboard", None) is not None:
            self.dashboard.stop(timeout=5)
        self.webhook.stop()


def stop_node() -> None:
    """Stops Ape's Anvil now, instead of on Ape's way out (which a signal may cut short)."""
    try:
        chain.provider.disconnect()
    except Exception as err:  # noqa: BLE001 - report and go on exiting
        console.print(f"[red]could not stop the node: {type(err).__name__}: {err}[/]")


def main() -> None:
    start = time.monotonic()
    logger.set_level("WARNING")
    console.print(
        Panel.fit(
            "[bold]margincall[/] demo: a crash, with the keeper and the notifier as processes\n"
            f"[dim]{chain.provider.network.choice} · chain id {chain.chain_id}"
            f" · {chain.provider.uri}[/]",
            border_style="cyan",
        )
    )
    demo = CrashDemo()
    code = 0
    with orderly_signals():
        try:
            ok = demo.run()
        except DemoFailure as err:
            console.print(f"[bold red]demo failed:[/] {err}")
            ok = False
        except Terminated as sig:
            console.print(f"[bold red]demo stopped by {sig}:[/] stopping the bots and Anvil")
            ok, code = False, 128 + sig.signum
        finally:
            demo.shutdown()
            if code:
                stop_node()
    console.print(f"  done in {time.monotonic() - start:.0f} s")
    if code:
        sys.exit(code)
    if not ok:
        sys.exit(1)
