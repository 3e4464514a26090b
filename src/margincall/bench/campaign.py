"""The crash campaign (issue 14): every crash path x seeds 1, 2 and 3, phased liquidation
against the liquidate-at-maintenance baseline, each run checked against the targets.

    python -m margincall.bench.campaign --write docs/benchmarks.md    # `make bench-campaign`
    python -m margincall.bench.campaign --traders 20 --scenarios flash_crash,oracle_gap \\
        --seeds 1                                                     # a smoke run

Each run is the CLI a reader would type, `margincall simulate --scenario NAME --seed S
--traders N --baseline --check --json --quiet`, in a process of its own (it starts and stops an
Anvil of its own); its exit code is the check's verdict (0 every target met, 1 a miss or a
failure) and its JSON the figures. The `campaign` block of docs/benchmarks.md gets the worst
case of each path over the seeds (each target's worst value and the seed it came from), then
every run, then every miss (`margincall.sim.metrics.check_misses`, the same lines
`--check` prints). Exit status: 1 if any run missed a target or failed, so `make bench`
fails on a miss; the block is written either way (a failed run is shown as failed, never
replaced by an older figure).

`--jobs 2` runs two simulations at once (one per core: faster, but each run's wall time is
then inflated by the other); the default is one at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from margincall.bench.markdown import TARGET_TRADERS, machine_line, tok
from margincall.sim.metrics import DELAY_TARGET, PENALTY_TARGET, check_misses
from margincall.sim.paths import SCENARIOS

SEEDS = (1, 2, 3)
BLOCK = "campaign"


@dataclass
class Run:
    """One `margincall simulate --baseline --check` run and what it printed."""

    scenario: str
    seed: int
    exit_code: int
    seconds: float
    result: dict[str, Any] | None = None
    error: str = ""  # the tail of stderr of a run that failed (no JSON)
    misses: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.result is not None and not self.misses

    def figures(self) -> dict[str, float]:
        """The targets' figures: socialised loss, phased and baseline bad debt (realised +
        negative equity left open), all-in cut (1 - phased / baseline cost), delay p99."""
        assert self.result is not None
        ph = self.result["runs"]["phased"]["metrics"]
        base = self.result["runs"]["baseline"]["metrics"]
        cost, base_cost = ph["all_in_cost"], base["all_in_cost"]
        return {
            "socialised": ph["socialised"],
            "bad_debt": ph["bad_debt"] + ph.get("left_deficit", 0.0),
            "base_bad_debt": base["bad_debt"] + base.get("left_deficit", 0.0),
            # both 0: nothing to cut, the target holds (`check_misses`); counted as a full cut
            "all_in_cut": 1 - cost / base_cost if base_cost > 0 else (0.0 if cost else 1.0),
            "all_in_cost": cost,
            "base_all_in_cost": base_cost,
            "delay_p99": ph["delay_p99"],
        }


def command(scenario: str, seed: int, traders: int, extra: Sequence[str] = ()) -> list[str]:
    """The CLI call of one run."""
    here = Path(sys.executable).parent / "margincall"  # the CLI of this environment
    return [
        str(here) if here.exists() else "margincall",
        "simulate",
        "--scenario",
        scenario,
        "--seed",
        str(seed),
        "--traders",
        str(traders),
        "--baseline",
        "--check",
        "--json",
        "--quiet",
        *extra,
    ]


def run_one(scenario: str, seed: int, traders: int, extra: Sequence[str] = ()) -> Run:
    """One run through the CLI; the misses are recomputed from its JSON (the CLI's exit
    code says the same; both are kept)."""
    started = time.monotonic()
    done = subprocess.run(
        command(scenario, seed, traders, extra), capture_output=True, text=True, check=False
    )
    run = Run(scenario, seed, done.returncode, round(time.monotonic() - started, 1))
    try:
        run.result = json.loads(done.stdout)
    except json.JSONDecodeError:
        run.error = (done.stderr or done.stdout).strip()[-600:] or f"exit {done.returncode}"
        return run
    run.misses = check_misses(run.result)
    if done.returncode != 0 and not run.misses:
        run.error = done.stderr.strip()[-600:]
    return run


def run_campaign(
    scenarios: Sequence[str],
    seeds: Sequence[int],
    traders: int,
    jobs: int = 1,
    extra: Sequence[str] = (),
    keep: Path | None = None,
) -> list[Run]:
    """Every (scenario, seed), `jobs` at a time, in that order; progress on stderr. With
    `keep`, each run's JSON (the whole `simulate --json` record: penalties, keeper rewards,
    fund flows, ...) is saved there as SCENARIO-SEED.json."""
    todo = [(s, seed) for s in scenarios for seed in seeds]
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)

    def one(item: tuple[str, int]) -> Run:
        run = run_one(item[0], item[1], traders, extra)
        if keep is not None and run.result is not None:
            (keep / f"{run.scenario}-{run.seed}.json").write_text(json.dumps(run.result))
        verdict = "ok" if run.ok else ("FAILED" if run.result is None else "MISS")
        print(f"  {run.scenario} seed {run.seed}: {verdict} in {run.seconds:.0f} s", flush=True)
        return run

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, todo))


# --- markdown --------------------------------------------------------------------------------


def _cut(f: dict[str, float]) -> str:
    """The all-in change (phased vs baseline), or "both 0" when neither cost anything."""
    if f["base_all_in_cost"] == 0 and f["all_in_cost"] == 0:
        return "both 0"
    return f"{-f['all_in_cut']:+.1%}"


def worst_rows(runs: Sequence[Run]) -> list[str]:
    """Per path, each target's worst value over the seeds, with that seed."""
    rows = []
    for scenario in dict.fromkeys(r.scenario for r in runs):
        mine = [r for r in runs if r.scenario == scenario]
        measured = [(r.seed, r.figures()) for r in mine if r.result is not None]
        failed = [str(r.seed) for r in mine if r.result is None]
        if not measured:
            rows.append(f"| {scenario} | - | - | - | - | FAILED (seeds {', '.join(failed)}) |")
            continue
        soc = max(measured, key=lambda m: m[1]["socialised"])
        debt = max(measured, key=lambda m: m[1]["bad_debt"] - m[1]["base_bad_debt"])
        cut = min(measured, key=lambda m: m[1]["all_in_cut"])
        delay = max(measured, key=lambda m: m[1]["delay_p99"])
        misses = sum(len(r.misses) for r in mine)
        status = "ok" if misses == 0 and not failed else f"{misses} miss(es)"
        if failed:
            status += f"; FAILED seeds {', '.join(failed)}"
        rows.append(
            f"| {scenario} | {tok(soc[1]['socialised'])} (seed {soc[0]})"
            f" | {tok(debt[1]['bad_debt'])} / {tok(debt[1]['base_bad_debt'])} (seed {debt[0]})"
            f" | {_cut(cut[1])} (seed {cut[0]})"
            f" | {delay[1]['delay_p99']} (seed {delay[0]}) | {status} |"
        )
    return rows


def every_row(run: Run) -> str:
    if run.result is None:
        return f"| {run.scenario} | {run.seed} | - | - | - | - | FAILED: {run.error[-120:]!r} |"
    f = run.figures()
    return (
        f"| {run.scenario} | {run.seed} | {tok(f['socialised'])}"
        f" | {tok(f['bad_debt'])} / {tok(f['base_bad_debt'])} | {_cut(f)}"
        f" | {f['delay_p99']} | {'ok' if run.ok else f'{len(run.misses)} miss(es)'} |"
    )


def markdown(runs: Sequence[Run], traders: int, seeds: Sequence[int], extra: Sequence[str]) -> str:
    """The `campaign` block: how to reproduce it, the worst case per path, every run, every
    miss."""
    n_miss = sum(len(r.misses) for r in runs)
    n_failed = sum(1 for r in runs if r.result is None)
    extra_text = (" " + " ".join(extra)) if extra else ""
    who = f"{traders} traders" + (
        "" if traders == TARGET_TRADERS else f" (target {TARGET_TRADERS})"
    )
    head = "| path | socialised | bad debt phased / baseline | all-in change | delay p99 | status |"
    lines = [
        "Reproduce: `make bench-campaign` (part of `make bench`), or one run:"
        f" `margincall simulate --scenario NAME --seed S --traders {traders} --baseline"
        f" --check{extra_text}`. Every path of `margincall.sim.paths.SCENARIOS` x seeds"
        f" {', '.join(map(str, seeds))}, {who}, default parameters; each run exits 1 on a miss"
        " of the issue-14 targets: socialised loss 0, phased bad debt (realised + negative"
        " equity left open) at most the baseline's, all-in cost to traders at least"
        f" {PENALTY_TARGET:.0%} below the baseline's, liquidation delay p99 at most"
        f" {DELAY_TARGET} blocks.",
        "",
        machine_line() + f" Wall time of the campaign: {sum(r.seconds for r in runs):,.0f} s"
        f" of runs; 1-minute load average at the end: {os.getloadavg()[0]:.1f}.",
        "",
        f"**{len(runs)} runs: {len(runs) - n_failed - sum(1 for r in runs if r.misses)} met"
        f" every target, {n_miss} miss(es), {n_failed} failed.**",
        "",
        "### Worst case per path (each target's worst value over the seeds)",
        "",
        head,
        "|---|---:|---:|---:|---:|---|",
        *worst_rows(runs),
        "",
        "### Every run",
        "",
        "| path | seed | socialised | bad debt phased / baseline | all-in change | delay p99"
        " | status |",
        "|---|---:|---:|---:|---:|---:|---|",
        *(every_row(r) for r in runs),
    ]
    misses = [m for r in runs for m in r.misses]
    if misses:
        lines += ["", "### Misses", "", *(f"- {m}" for m in misses)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traders", type=int, default=TARGET_TRADERS)
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--jobs", type=int, default=1, help="simulations at once")
    parser.add_argument(
        "--gas-price-gwei", type=float, default=None, help="passed to every run (default: its)"
    )
    parser.add_argument("--write", type=Path, default=None, help="the document to update")
    parser.add_argument("--keep", type=Path, default=None, help="a folder for each run's JSON")
    args = parser.parse_args(argv)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    bad = set(scenarios) - set(SCENARIOS)
    if bad:
        parser.error(f"unknown scenario(s) {', '.join(sorted(bad))}; choose from {SCENARIOS}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    extra = [] if args.gas_price_gwei is None else ["--gas-price-gwei", f"{args.gas_price_gwei:g}"]
    print(
        f"campaign: {len(scenarios)} paths x seeds {seeds}, {args.traders} traders,"
        f" {args.jobs} at a time",
        flush=True,
    )
    runs = run_campaign(scenarios, seeds, args.traders, args.jobs, extra, args.keep)
    text = markdown(runs, args.traders, seeds, extra)
    print(text)
    if args.write is not None:
        from margincall.bench.suite import write_block

        title = "Crash campaign" + (f" at {args.gas_price_gwei:g} gwei" if extra else "")
        name = BLOCK + (f"-{args.gas_price_gwei:g}gwei" if extra else "")
        write_block(name, text, title, args.write)
        print(f"wrote the {name} block of {args.write}")
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
