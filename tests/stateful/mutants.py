"""Checks that the state machine can fail: runs it (titanoboa) against mutants of the engine,
each of which removes or bends one protection that the machine's pause, market and oracle
rules, or its core invariants (I1 conservation, calls only on CALLABLE accounts, no
withdrawal under initial margin, the tranche interval, I4 the ratio after a tranche, I6/I7
the fund before socialisation, I8 views equal to the reference, the call reward cap) are
there to check, and reports which mutants the machine kills.

    python -m tests.stateful.mutants [NAME ...] [--examples N] [--jobs 2] [--budget S]

Mutants run `--jobs` at a time (default 2, one per core), each in a process of its own that
stops at the machine's first failure (no shrinking) or after `--budget` seconds (a TIMEOUT,
which fails the run like a survivor or a mutant that does not deploy, an ERROR). A line is
printed as each mutant starts and ends (its time, and the wall clock since the start), then a
table of every mutant. Exit 1 unless every mutant is killed.

Each mutant is a copy of contracts/ in .build/mutants/<name>/ with one edit to MarginEngine.vy
or one of its modules under contracts/modules/ (contracts/ itself is never written); the
deployables that import no module load from contracts/, compiled once for every mutant. A
mutant must fit EIP-170 like the engine (titanoboa enforces it; the engine keeps 3 kB free).
Not part of `make test` or `make fuzz` (`make mutants`): it takes minutes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import queue
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import boa
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

import tests.stateful.boa_system as boa_system
from tests.stateful.machine import Campaign, EngineMachine

ROOT = Path(__file__).resolve().parents[2]
ENGINE = "MarginEngine.vy"
RISK = "modules/risk.vy"
MARGIN = "modules/margin.vy"
LIQUIDATION = "modules/liquidation.vy"
LEDGER = "modules/ledger.vy"
PAUSED = '            fixed_point._fail("engine: paused")\n'
PAUSE_BLOCK = "    if increases:\n        if risk.paused:\n" + PAUSED
ACTIVE = "        if not (risk._m_active(mword)):"
ORACLE = "staticcall IOracle(self._m_oracle(self._market[m]))"
# name -> (what the machine must notice, file under contracts/, source replaced, replacement)
MUTANTS: dict[str, tuple[str, str, str, str]] = {
    "pause_ignored": ("new exposure while paused", ENGINE, PAUSED, "            pass\n"),
    "pause_blocks_reductions": (
        "reductions refused while paused",
        ENGINE,
        PAUSE_BLOCK,
        PAUSE_BLOCK.replace("if increases", "if True") + "    if increases:\n",
    ),
    "pause_blocks_liquidations": (
        "liquidations refused while paused",
        ENGINE,
        "        if plan.code != liquidation._OK:\n",
        "        if plan.code != liquidation._OK or risk.paused:\n",
    ),
    "anyone_pauses": (
        "a stranger pauses",
        RISK,
        "    if not (msg.sender == self.guardian or msg.sender == ownable.owner):",
        "    if False:",
    ),
    "inactive_ignored": (
        "new exposure on an inactive market",
        ENGINE,
        '            fixed_point._fail("engine: market not active")\n',
        "            pass\n",
    ),
    "inactive_blocks_reductions": (
        "reductions refused on an inactive market",
        ENGINE,
        PAUSE_BLOCK + ACTIVE,
        PAUSE_BLOCK + "    if True:\n" + ACTIVE,
    ),
    "prices_unchecked": (
        "an invalid price used by views, calls, liquidations, withdrawals",
        RISK,
        f"            prices[m] = {ORACLE}.price()",
        f"            prices[m] = ({ORACLE}.try_price())[0]",
    ),
    # the fill's own price is the order book's (the first valid round after the commit: the
    # book and the adapter check it, tests/unit/test_orders.py); the other legs are the engine's
    "fill_other_prices_unchecked": (
        "new exposure valued with another market's invalid price",
        ENGINE,
        "        prices: uint256[_MAX_MARKETS] = risk._prices(acct.markets & ~bit)",
        "        prices: uint256[_MAX_MARKETS] = empty(uint256[_MAX_MARKETS])\n"
        "        ok: bool = True\n"
        "        unpriced: uint256 = 0\n"
        "        prices, unpriced, ok = ledger._try_prices(\n"
        "            account, acct.markets & ~bit, prices, 0, False\n"
        "        )",
    ),
    "deposit_needs_prices": (
        "a deposit refused on an invalid price",
        ENGINE,
        "        # best effort: a deposit must never fail on a bad price\n"
        "        acct = self._cure(account, acct, False)",
        "        acct = self._cure(account, acct, True)",
    ),
    # the core invariants (I2, I5, the tranche interval)
    "healthy_callable": (
        "a margin call on a HEALTHY or CALLED account",
        ENGINE,
        "        if margin._classify(ev, acct, p, SCALE) != margin._CALLABLE:\n"
        "            if strict:",
        "        if margin._classify(ev, acct, p, SCALE) > margin._CALLED:\n            if strict:",
    ),
    "withdraw_below_initial": (
        "a withdrawal that leaves equity under initial margin",
        ENGINE,
        "        if not (ev.equity >= convert(ev.initial, int256)):\n"
        '            fixed_point._fail("engine: insufficient margin")\n'
        "    ledger._store(msg.sender, acct)",
        '        if False:\n            fixed_point._fail("engine: insufficient margin")\n'
        "    ledger._store(msg.sender, acct)",
    ),
    "tranche_interval_ignored": (
        "a second tranche before the tranche interval",
        LIQUIDATION,
        "        if acct.last_tranche != 0 and block.timestamp < acct.last_tranche"
        " + p.tranche_interval:",
        "        if False:",
    ),
    "liquidate_many_ignores_validity": (
        "a batch liquidation at an invalid price",
        ENGINE,
        "        if not ok:\n            if strict:",
        "        if False:\n            if strict:",
    ),
    # the stale-leg shield (issue 14): an unpriced leg valued at its worst case, never a shield
    "stale_leg_shield": (
        "an account with an unpriced leg not liquidated in its priced legs",
        LEDGER,
        "                if not worst or price == 0:",
        "                if True:",
    ),
    "bad_debt_while_unpriced": (
        "a deficit booked while an unpriced leg is still open",
        LIQUIDATION,
        "        if unpriced != 0:\n            # no bad debt while a leg is unpriced",
        "        if False:\n            # no bad debt while a leg is unpriced",
    ),
    # I1: token conservation
    "fund_fee_kept": (
        "the fund's share of a penalty kept in the engine, owed to nobody (tokens not where the"
        " ledgers say)",
        ENGINE,
        "    if fund_fee > 0:\n        self.claimable[FUND.address] += fund_fee",
        "    pass",
    ),
    # I4: a tranche never lowers the ratio (6-decimal collateral: see MUTANT_DECIMALS)
    "sliver_guard_removed": (
        "a window-capped sliver whose penalty rounding lowers the ratio",
        LIQUIDATION,
        "    if capped and plan.ratio_after < fixed_point._ratio(ev.equity, ev.maintenance):",
        "    if False:",
    ),
    # I6/I7: the fund pays before anything is socialised
    "fund_skipped": (
        "a deficit socialised while the fund holds tokens",
        ENGINE,
        "        paid: uint256 = extcall FUND.cover(plan.deficit, account)",
        "        paid: uint256 = 0",
    ),
    # I8: the views equal the reference math (check_margin on the engine, check_margins on
    # the lens: both through `margin._status`)
    "view_ratio_off_by_one": (
        "check_margin(s) reporting a ratio one wei off",
        MARGIN,
        "    s.ratio = fixed_point._ratio(ev.equity, ev.maintenance)",
        "    s.ratio = fixed_point._ratio(ev.equity + 1, ev.maintenance)",
    ),
    # a call is a notice: it never makes the account liquidatable
    "call_reward_uncapped": (
        "a call reward that takes equity below maintenance",
        ENGINE,
        "                min(min(max(scaled, p.call_reward), p.max_keeper_reward) // SCALE,"
        " room - need),",
        "                min(max(scaled, p.call_reward), p.max_keeper_reward) // SCALE,",
    ),
    # the parked call reward (issue 14): paid only when the call ends solvent,
    # returned to the collateral by a liquidation below ratio 1
    "call_reward_paid_when_insolvent": (
        "a parked call reward paid to its caller by a close below ratio 1",
        ENGINE,
        "        self._release(account, parked, plan.returned == 0)\n",
        "        self._release(account, parked, True)\n",
    ),
    "call_reward_kept_when_insolvent": (
        "a parked call reward not returned to the collateral below ratio 1",
        LIQUIDATION,
        "    if parked != 0 and fixed_point._ratio(ev.equity, ev.maintenance) < _WAD:\n",
        "    if False:\n",
    ),
    # a call clears itself (PROTOCOL.md section 2): a recovered account is never liquidated
    # on the stale call (the machine's feeds keep every round; the model reads them)
    "call_never_clears_itself": (
        "a call past its deadline enforced although the account was back at call_ratio",
        MARGIN,
        "        if staticcall IRecovery(ev.oracle[0]).recovered(ev, acct, p, scale):\n",
        "        if False:\n",
    ),
}
# collateral decimals per mutant (default 18): token-unit roundings show with 6 decimals
MUTANT_DECIMALS = {"sliver_guard_removed": 6, "call_reward_uncapped": 6}
EXAMPLES = 300  # at most per mutant; a kill ends the mutant's run at its first failure
STEPS = 30  # steps per example, at most
BUDGET = 1_800.0  # seconds per mutant, compile included (900 was short at load 10)
WORKDIR = ROOT / ".build" / "mutants"  # one copy of contracts/ per mutant (git-ignored)


def run_mutant(name: str, examples: int, workdir: Path, steps: int = STEPS) -> tuple[bool, str]:
    """(killed, what failed or how long it survived). Stops at the first failure: no
    shrinking, no replay of earlier failures (no example database)."""
    _, relpath, old, new = MUTANTS[name]
    source = (ROOT / "contracts" / relpath).read_text()
    assert source.count(old) == 1, f"{name}: the code to mutate is not found once in {relpath}"
    contracts = workdir / name / "contracts"
    shutil.rmtree(contracts, ignore_errors=True)
    shutil.copytree(ROOT / "contracts", contracts)
    (contracts / relpath).write_text(source.replace(old, new))
    boa_system.CONTRACTS = contracts
    boa_system._deployer.cache_clear()
    boa.interpret.set_search_paths([str(contracts), str(ROOT)])
    driver = boa_system.deploy_funded_boa_system(MUTANT_DECIMALS.get(name, 18))

    class Machine(EngineMachine):
        pass

    Machine.driver = driver
    Machine.campaign = Campaign(name)
    try:
        run_state_machine_as_test(
            Machine,
            settings=settings(
                max_examples=examples,
                stateful_step_count=steps,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
                phases=[Phase.generate],  # the first failure is enough; no shrinking
                print_blob=False,
            ),
        )
    except Exception as e:  # the machine failed: the mutant is killed
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return True, f"after {Machine.campaign.examples + 1} examples: {type(e).__name__} {first}"
    return False, f"survived {Machine.campaign.examples} examples"


def _child(name: str, examples: int, steps: int, out: Any) -> None:
    """One mutant in a process of its own (titanoboa's compiler caches and the module-level
    contract folder are per process): puts (name, verdict, detail) on `out`. A mutant that
    does not even deploy is an ERROR, not a kill: the run must say so."""
    try:
        # a folder that stays: titanoboa's disk cache is keyed by file name, so a second run
        # of the same mutant does not compile it again
        killed, detail = run_mutant(name, examples, WORKDIR, steps)
        out.put((name, "killed" if killed else "SURVIVED", detail))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which exits 1
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        out.put((name, "ERROR", f"{type(e).__name__}: {text}"))


def run_all(names: list[str], examples: int, steps: int, jobs: int, budget: float) -> int:
    """Every mutant, `jobs` at a time, each in a process of its own and stopped after
    `budget` seconds (TIMEOUT: not killed in time). One line per mutant as it starts and as
    it ends, with its time and the wall clock since the start; then a table. Returns the
    number of mutants not killed (survived, timed out or in error)."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    todo, running, done = list(names), {}, {}
    t0 = time.monotonic()

    def clock() -> str:
        return f"[{time.monotonic() - t0:6.0f} s]"

    def finish(name: str, verdict: str, detail: str) -> None:
        proc, started = running.pop(name)
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
        took = time.monotonic() - started
        done[name] = (verdict, detail, took)
        print(
            f"{clock()} {len(done)}/{len(names)} {name}: {verdict} in {took:.0f} s {detail[:140]}",
            flush=True,
        )

    while todo or running:
        while todo and len(running) < jobs:
            name = todo.pop(0)
            proc = ctx.Process(target=_child, args=(name, examples, steps, out), daemon=True)
            proc.start()
            running[name] = (proc, time.monotonic())
            print(f"{clock()} start {name} ({MUTANTS[name][0]})", flush=True)
        try:
            name, verdict, detail = out.get(timeout=1.0)
            finish(name, verdict, detail)
        except queue.Empty:
            pass
        for name, (proc, started) in list(running.items()):
            if time.monotonic() - started > budget:
                proc.kill()
                finish(name, "TIMEOUT", f"not killed in {budget:.0f} s")
            elif not proc.is_alive() and out.empty():
                finish(name, "ERROR", f"the process died (exit {proc.exitcode})")
    print(f"\n{'mutant':32} {'verdict':9} {'seconds':>8}  detail")
    for name in names:
        verdict, detail, took = done[name]
        print(f"{name:32} {verdict:9} {took:8.0f}  {detail[:100]}")
    bad = [n for n in names if done[n][0] != "killed"]
    print(
        f"\n{len(names) - len(bad)}/{len(names)} killed in {time.monotonic() - t0:.0f} s"
        f" ({jobs} at a time)" + (f"; not killed: {', '.join(bad)}" if bad else "")
    )
    return len(bad)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(MUTANTS))
    parser.add_argument("--examples", type=int, default=EXAMPLES, help="at most, per mutant")
    parser.add_argument("--steps", type=int, default=STEPS, help="steps per example, at most")
    parser.add_argument("--jobs", type=int, default=2, help="mutants at once (one per core)")
    parser.add_argument(
        "--budget", type=float, default=BUDGET, help="seconds per mutant before TIMEOUT"
    )
    args = parser.parse_args()
    unknown = set(args.names) - set(MUTANTS)
    if unknown:
        parser.error(f"unknown mutants: {', '.join(sorted(unknown))}")
    names = args.names or list(MUTANTS)
    return 1 if run_all(names, args.examples, args.steps, args.jobs, args.budget) else 0


if __name__ == "__main__":
    sys.exit(main())
