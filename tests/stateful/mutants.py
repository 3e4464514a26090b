"""Checks that the state machine can fail: runs it (titanoboa) against mutants of the engine,
each of which removes or bends one protection that the machine's pause, market and oracle
rules, or its core invariants (I1 conservation, calls only on CALLABLE accounts, no
withdrawal under initial margin, the tranche interval, I4 the ratio after a tranche, I6/I7
the fund before socialisation, I8 views equal to the reference, the call reward cap) are
there to check, and reports which mutants the machine kills.

    python -m tests.stateful.mutants [NAME ...] [--examples N]

Each mutant is a copy of contracts/ in a temporary folder with one edit to MarginEngine.vy or
one of its modules under contracts/modules/ (contracts/ itself is never written). A mutant must
fit EIP-170 like the engine (titanoboa enforces it; the engine keeps 3 kB free). Not part of
`make test` or `make fuzz`: it takes minutes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

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
PAUSED = '            fixed_point._fail("engine: paused")\n'
PAUSE_BLOCK = "    if increases:\n        if risk.paused:\n" + PAUSED
ACTIVE = "        if not (risk._m_active(mword)):"
ORACLE = "staticcall IOracle(self._m_oracle(self._market[m]))"
DEPOSIT_CLEAR = (  # the deposit's best-effort call clearing (the trade's uses p.call_ratio)
    "        if ok:\n            ev: margin.Eval = ledger._evaluate(account, acct, prices, SCALE)\n"
    "            if fixed_point._ratio(ev.equity, ev.maintenance) >= risk._p_call_ratio():"
)
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
    "trade_price_unchecked": (
        "a trade at an invalid price",
        ENGINE,
        "    price: uint256 = staticcall IOracle(risk._m_oracle(mword)).price()",
        "    price: uint256 = (staticcall IOracle(risk._m_oracle(mword)).try_price())[0]",
    ),
    "deposit_needs_prices": (
        "a deposit refused on an invalid price",
        ENGINE,
        "        prices, ok = risk._try_prices(acct.markets, prices, 0)\n" + DEPOSIT_CLEAR,
        "        prices = risk._prices(acct.markets)\n        ok = True\n" + DEPOSIT_CLEAR,
    ),
    # the core invariants (I2, I5, the tranche interval)
    "healthy_callable": (
        "a margin call on a HEALTHY or CALLED account",
        ENGINE,
        "    if margin._classify(ev, acct, p, SCALE) != margin._CALLABLE:\n        return False, 0",
        "    if margin._classify(ev, acct, p, SCALE) > margin._CALLED:\n        return False, 0",
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
        "            if not ok:\n                continue\n            have |= acct.markets\n"
        "        ev: margin.Eval",
        "            have |= acct.markets\n        ev: margin.Eval",
    ),
    # I1: token conservation
    "fund_fee_kept": (
        "the fund's share of a penalty kept in the engine (tokens not where the ledgers say)",
        ENGINE,
        "    if fund_fee > 0:\n        self._push(FUND.address, fund_fee)",
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
        "        reward = min(min(p.call_reward // SCALE, room - need), acct.collateral)",
        "        reward = min(p.call_reward // SCALE, acct.collateral)",
    ),
}
# collateral decimals per mutant (default 18): token-unit roundings show with 6 decimals
MUTANT_DECIMALS = {"sliver_guard_removed": 6, "call_reward_uncapped": 6}


def run_mutant(name: str, examples: int, workdir: Path) -> tuple[bool, str]:
    """(killed, what failed or how long it survived)."""
    _, relpath, old, new = MUTANTS[name]
    source = (ROOT / "contracts" / relpath).read_text()
    assert source.count(old) == 1, f"{name}: the code to mutate is not found once in {relpath}"
    contracts = workdir / name / "contracts"
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
                stateful_step_count=30,
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(MUTANTS))
    parser.add_argument("--examples", type=int, default=500)
    args = parser.parse_args()
    unknown = set(args.names) - set(MUTANTS)
    if unknown:
        parser.error(f"unknown mutants: {', '.join(sorted(unknown))}")
    survived = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.names or MUTANTS:
            start = time.time()
            killed, detail = run_mutant(name, args.examples, Path(tmp))
            survived += not killed
            verdict = "killed" if killed else "SURVIVED"
            took = time.time() - start
            print(f"{name} ({MUTANTS[name][0]}): {verdict} {detail[:160]} [{took:.0f} s]")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
