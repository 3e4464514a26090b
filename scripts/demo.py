"""margincall demo: a crash with real keeper and notifier processes on the embedded Anvil.

Run with `make demo` (or `ape run demo`). Ape starts its own Anvil (`host: auto`);
the demo then

1. deploys the system from config/deploy-local.yaml (deployment record under
   .margincall/demo/), funds two LPs and seeds the insurance fund;
2. opens ~50 traders at 2x-9.9x, long and short, on ETH and BTC (seeded);
3. starts the keeper and the notifier as real Silverback processes (`silverback run`,
   logs in .margincall/demo/), with a local webhook receiving the notifier's messages;
4. switches Anvil to interval mining (one block a second, many transactions per block);
5. replays a crash: ETH -45% and BTC -35% over 30 steps of 5 minutes of chain time,
   with rebounds; traders who get a margin call cure it with a deposit half of the
   time (seeded), the others are liquidated tranche by tranche;
6. lets the clock run until no account is left to act on, stops the bots, and prints
   the report: calls issued and cured, tranches, full liquidations, bad debt and who
   paid it, the fund, keeper rewards and gas, the keeper's delay measured from the
   chain's history, and the notifications delivered.

It fails (exit code 1) when tokens are not conserved, a bot dies, or a notification
arrives twice. Nothing is left running: the bots are stopped within a bounded time and
Ape stops Anvil.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
import warnings
from pathlib import Path

import yaml
from ape import accounts, chain, project
from ape.logging import logger
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from margincall.audit import action_delays, delay_stats, read_history
from margincall.constants import WAD, State
from margincall.deployment import DeployConfig, deploy_from_config, write_record
from margincall.population import crash_path, open_crowd, plan_crowd
from margincall.procs import BotProcess
from margincall.report import fmt_tokens, kv_table
from margincall.tx import TxSender
from margincall.webhook_sink import WebhookServer

warnings.filterwarnings("ignore", message="Field 'import_remapping'")

N_TRADERS = 50
SEED = 2026
STEPS = 30
STEP_SECONDS = 300  # chain time per price step
CURE_PROBABILITY = 0.5
LP_DEPOSIT = 2_500_000  # whole tokens, per LP
FUND_SEED = 150_000
WORKDIR = Path(".margincall/demo")
NETWORK = "ethereum:local:foundry"

console = Console(highlight=False, width=None if Console().is_terminal else 120)


def _table(title: str, rows: list[tuple[str, str]]):
    return kv_table(rows, title=title)


class DemoFailure(Exception):
    """The run broke an invariant the demo checks."""


class CrashDemo:
    def __init__(self) -> None:
        test = accounts.test_accounts
        self.owner, self.lp1, self.lp2, self.keeper = test[0], test[1], test[2], test[3]
        self.traders: list = []
        self.rng = random.Random(SEED)
        self.bots: list[BotProcess] = []
        self.webhook = WebhookServer()
        self.cured: set[str] = set()
        self.called_seen: set[str] = set()

    # --- helpers ---

    def rpc(self, method: str, params: list) -> object:
        return chain.provider.make_request(method, params)

    def tok(self, units: int) -> str:
        return fmt_tokens(units, self.decimals, 0) + " mUSD"

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
        self.client = deployed.record.client(project)
        self.decimals = int(self.record.collateral_decimals)
        self.start_block = int(self.record.block)
        token, pool, fund = self.system.token, self.system.pool, self.system.fund
        for lp in (self.lp1, self.lp2):
            amount = self.client.tokens(LP_DEPOSIT)
            token.mint(lp.address, amount, sender=lp)
            token.approve(pool.address, amount, sender=lp)
            pool.deposit(amount, lp.address, sender=lp)
        seed = self.client.tokens(FUND_SEED)
        token.mint(self.owner.address, seed, sender=self.owner)
        token.approve(fund.address, seed, sender=self.owner)
        fund.donate(seed, sender=self.owner)
        self.fund_before = int(fund.fund_balance())
        console.print(
            f"  deployed: engine {self.record.engine}, {len(self.record.markets)} markets;"
            f" pool {self.tok(int(pool.totalAssets()))}, fund {self.tok(self.fund_before)}"
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
                self.client, self.traders, plans, progress=lambda i: bar.update(task, completed=i)
            )
        # every trader keeps a reserve to cure a call with one deposit transaction
        token, engine = self.system.token, self.system.engine
        for trader, plan in zip(self.traders, plans, strict=True):
            reserve = self.client.tokens(plan.deposit)
            token.mint(trader.address, reserve, sender=trader)
            token.approve(engine.address, reserve, sender=trader)
        self.plans = dict(zip((t.address for t in self.traders), plans, strict=True))
        lev = sorted(float(p.leverage) for p in plans)
        longs = sum(p.long for p in plans)
        console.print(
            f"  {len(plans)} traders, leverage {lev[0]:.1f}x..{lev[-1]:.1f}x"
            f" (median {lev[len(lev) // 2]:.1f}x), {longs} long / {len(plans) - longs} short"
        )

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
        for bot in self.bots:
            bot.start()
        t0 = time.monotonic()
        for bot in self.bots:
            bot.wait_ready(180)
        console.print(
            f"  keeper and notifier running (pids {', '.join(str(b.pid) for b in self.bots)};"
            f" ready in {time.monotonic() - t0:.0f} s; logs in {WORKDIR}/)"
        )

    def interval_mining(self, on: bool) -> None:
        if on:
            self.rpc("evm_setAutomine", [False])
            self.rpc("evm_setIntervalMining", [1])
        else:
            self.rpc("evm_setIntervalMining", [0])
            self.rpc("evm_setAutomine", [True])

    def cure_calls(self, since: int, until: int) -> int:
        """Traders who got a call since `since` cure it (deposit) with CURE_PROBABILITY."""
        history = read_history(self.client.engine, chain.provider, since, until)
        sent = 0
        for ev in history.of("MarginCall"):
            who = str(ev.account)
            if who in self.called_seen:
                continue
            self.called_seen.add(who)
            if self.rng.random() >= CURE_PROBABILITY:
                continue
            trader = next(t for t in self.traders if t.address == who)
            status = self.client.status(who)
            call_ratio = int(self.record.risk_params["call_ratio"])
            need_wad = status.maintenance * call_ratio * 13 // (10 * WAD) - status.equity
            amount = min(
                self.client.to_tokens(max(need_wad, 0), round_up=True) + 1,
                self.client.tokens(self.plans[who].deposit),
            )
            sender = TxSender(trader, chain.provider)
            sender.send_call(self.client.engine.deposit, (amount, who), "cure", (), until)
            self.cured.add(who)
            sent += 1
            self.settle(sender)
        return sent

    def crash(self) -> None:
        feeds = self.system.feeds
        eth = crash_path(2_000.0, fall=0.45, steps=STEPS, seed=SEED)
        btc = crash_path(60_000.0, fall=0.35, steps=STEPS, seed=SEED + 1)
        owner = TxSender(self.owner, chain.provider)
        self.crash_block = chain.blocks.head.number + 1
        mark = self.crash_block
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
                self.rpc("evm_increaseTime", [STEP_SECONDS])
                head = chain.blocks.head.number
                owner.send_call(
                    feeds[0].set_answer, (self.system.feed_answer(0, p_eth),), "price", (), head
                )
                owner.send_call(
                    feeds[1].set_answer, (self.system.feed_answer(1, p_btc),), "price", (), head
                )
                self.settle(owner)
                now = self.wait_blocks(2)
                self.cure_calls(mark, now)
                mark = now + 1
                self.check_bots()
                s = read_history(
                    self.client.engine, chain.provider, self.crash_block, now
                ).summary()
                line = (
                    f"ETH {p_eth:>8,.0f}  BTC {p_btc:>8,.0f} · calls {s['margin_calls']}"
                    f" · tranches {s['tranches']} · closed {s['full_liquidations']}"
                )
                bar.update(task, completed=k, line=line)
                if not console.is_terminal and k % 5 == 0:  # CI logs get a line now and then
                    console.print(f"  step {k}/{STEPS}: {line}")

    def aftermath(self, max_rounds: int = 40) -> int:
        """Lets chain time run (deadlines, tranche intervals) until nothing is actionable."""
        quiet = 0
        rounds = 0
        mark = chain.blocks.head.number
        while rounds < max_rounds:
            rounds += 1
            self.rpc("evm_increaseTime", [STEP_SECONDS])
            now = self.wait_blocks(3)
            self.cure_calls(mark, now)
            mark = now + 1
            self.check_bots()
            statuses = self.client.statuses([t.address for t in self.traders])
            busy = [
                s
                for s in statuses
                if s.priced
                and s.positions
                and s.state
                in (
                    State.CALLABLE,
                    State.CALLED,
                    State.LIQUIDATABLE,
                    State.CRITICAL,
                    State.BANKRUPT,
                )
            ]
            quiet = quiet + 1 if not busy else 0
            if quiet >= 2:
                break
        self.wait_blocks(2)
        return rounds

    def stop_bots(self) -> None:
        for bot in self.bots:
            bot.stop(timeout=10)
        self.webhook.stop()

    # --- report ---

    def report(self) -> bool:
        engine, fund = self.client.engine, self.system.fund
        end = chain.blocks.head.number
        history = read_history(engine, chain.provider, self.crash_block, end)
        s = history.summary()
        delays = action_delays(engine, chain.provider, history.actions)
        d = delay_stats(list(delays.values()))
        metrics = json.loads((WORKDIR / "keeper.json").read_text())
        fund_after = int(fund.fund_balance())
        cured_by_trader = len(
            self.cured & {str(e.account) for e in history.of("MarginCallCleared")}
        )
        deliveries = self.webhook.received()
        keys = [x.key for x in deliveries]
        kinds: dict[str, int] = {}
        for x in deliveries:
            kinds[str(x.body.get("kind"))] = kinds.get(str(x.body.get("kind")), 0) + 1

        outcome = _table(
            "Crash outcome (from the engine's events)",
            [
                ("traders", str(len(self.traders))),
                ("margin calls issued", str(s["margin_calls"])),
                ("calls cured by the trader (deposit)", str(cured_by_trader)),
                (
                    "calls cleared in all",
                    f"{s['calls_cleared']} ({s['accounts_cleared']} accounts)",
                ),
                ("partial tranches", str(s["tranches"])),
                ("full liquidations", str(s["full_liquidations"])),
                ("accounts liquidated", str(s["accounts_liquidated"])),
                ("penalties paid by traders", self.tok(s["penalties"])),
                ("bad debt", self.tok(s["bad_debt"])),
                ("  paid by the insurance fund", self.tok(s["bad_debt_paid_by_fund"])),
                ("  socialised to LPs", self.tok(s["socialised"])),
                (
                    "insurance fund before / after",
                    f"{self.tok(self.fund_before)} / {self.tok(fund_after)}",
                ),
            ],
        )
        keeper = _table(
            "Keeper (its metrics file, checked against the chain)",
            [
                ("calls made / sent", f"{metrics['calls_made']} / {metrics['calls_sent']}"),
                (
                    "tranches made / sent",
                    f"{metrics['tranches_made']} / {metrics['tranches_sent']}",
                ),
                (
                    "skipped: recovered / lost races",
                    f"{metrics['skipped_recovered']} / {metrics['races_lost']}",
                ),
                ("rewards earned", self.tok(metrics["rewards_earned"])),
                ("gas spent", f"{metrics['gas_spent']:,}"),
                (
                    "delay, keeper's view (max / mean)",
                    f"{metrics['max_delay_blocks']} / {metrics['mean_delay_blocks']:.2f} blocks",
                ),
                (
                    "delay, from chain history",
                    f"max {d['max']} · p50 {d['p50']} · p99 {d['p99']} blocks"
                    f" over {d['count']} actions",
                ),
            ],
        )
        notes = _table(
            "Notifications (webhook)",
            [
                ("delivered", str(len(deliveries))),
                ("distinct", str(len(set(keys)))),
                *((f"  {k}", str(v)) for k, v in sorted(kinds.items())),
            ],
        )
        for table in (outcome, keeper, notes):
            console.print(table)

        ok = True
        held = int(self.system.token.balanceOf(engine.address))
        ledgers = sum(int(engine.collateral_of(t.address)) for t in self.traders)
        if held != ledgers:
            console.print(f"[red]conservation broken: engine holds {held}, ledgers {ledgers}[/]")
            ok = False
        if len(keys) != len(set(keys)):
            console.print("[red]a notification was delivered twice[/]")
            ok = False
        if s["margin_calls"] == 0 or s["tranches"] + s["full_liquidations"] == 0:
            console.print(
                "[red]the crash produced no call or no liquidation: the story did not happen[/]"
            )
            ok = False
        if not deliveries:
            console.print("[red]no notification arrived[/]")
            ok = False
        console.print(
            f"  conservation: engine holds {self.tok(held)} = sum of {len(self.traders)} ledgers"
            if held == ledgers
            else ""
        )
        return ok

    # --- run ---

    def run(self) -> bool:
        console.rule("[bold]1 · deploy[/]", style="cyan")
        self.deploy()
        console.rule("[bold]2 · traders[/]", style="cyan")
        self.open_traders()
        console.rule("[bold]3 · bots[/]", style="cyan")
        self.start_bots()
        try:
            self.interval_mining(True)
            console.rule("[bold]4 · crash[/] (interval mining: 1 block/s)", style="cyan")
            self.crash()
            rounds = self.aftermath()
            console.print(f"  aftermath: {rounds} more steps of {STEP_SECONDS} s until quiet")
        finally:
            self.stop_bots()
            self.interval_mining(False)
        console.rule("[bold]5 · report[/]", style="cyan")
        return self.report()


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
    try:
        ok = demo.run()
    except DemoFailure as err:
        console.print(f"[bold red]demo failed:[/] {err}")
        ok = False
    finally:
        for bot in demo.bots:
            if bot.running:
                bot.stop(timeout=5)
    console.print(f"  done in {time.monotonic() - start:.0f} s")
    if not ok:
        sys.exit(1)
