"""`margincall simulate`: replay a stress scenario against the real contracts.

    margincall simulate --scenario black_thursday --baseline
    margincall simulate --scenario random --seed 7 --traders 200 --out out/random-7
    margincall simulate --csv prices.csv --baseline --json > result.json

Starts an Anvil node of its own (and stops it, also on errors and Ctrl-C),
deploys the system, opens the population, replays the path block by block
with the project's keeper logic and prints the figures. `--baseline` adds a
run of the same paths and population with liquidate-everything-at-
maintenance parameters, side by side. Curing is a trait drawn once per trader
from the seed: a `--cure-probability` share of the traders cure every margin
call they get (by depositing or reducing, each after a delay of its own within
the grace period), the others never do. `--out DIR` writes result.json,
metrics.csv, samples-<mode>.csv (one row per mined block), liquidations-<mode>.csv
(one row per tranche) and PNG plots. The same seed gives the same
figures. `--check` (with `--baseline`) checks the issue-14 targets
(`margincall.sim.metrics.check_misses`: no socialised loss, phased bad debt
at most the baseline's, all-in cost to traders at least 30% below the
baseline's, liquidation delay p99 at most 2 blocks) and lists every miss.
Exit codes: 0 done (also when a target is missed, unless `--check`), 1
failed or `--check` found a miss, 2 bad input (also `--check` without
`--baseline`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from margincall.sim.baseline import BASELINE, PHASED
from margincall.sim.paths import SCENARIOS, PathError
from margincall.sim.population import LEVERAGE_DISTS, PopulationError, scenario_population


def _range(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in value.split(":"))
    except ValueError:
        raise click.BadParameter(f"expected LOW:HIGH, e.g. 2:10, not {value!r}") from None
    if lo > hi:
        raise click.BadParameter(f"{value}: LOW above HIGH")
    return lo, hi


def write_outputs(outcome, out: Path) -> list[Path]:  # noqa: ANN001 - Outcome, imported lazily
    from margincall.sim import metrics, plots

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "result.json", out / "metrics.csv"]
    written[0].write_text(metrics.to_json(outcome.result))
    written[1].write_text(metrics.metrics_csv(outcome.result))
    for mode, record in outcome.records.items():
        p = out / f"samples-{mode}.csv"
        p.write_text(metrics.samples_csv(record))
        q = out / f"liquidations-{mode}.csv"
        q.write_text(metrics.liquidations_csv(record))
        written += [p, q]
    if outcome.path is not None:
        written += plots.write_all(outcome.records, outcome.path, out)
    return written


def _writable_dir(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Creates `--out` (and checks it takes a file) before the simulation runs, not after."""
    if value is None:
        return None
    try:
        value.mkdir(parents=True, exist_ok=True)
        probe = value / ".margincall-write-check"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise click.BadParameter(f"{value}: cannot write there ({err.strerror})") from None
    return value


@click.command("simulate")
@click.option(
    "--scenario",
    type=click.Choice(sorted(SCENARIOS)),
    default="black_thursday",
    show_default=True,
    help="Named price path (ignored with --csv).",
)
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Replay a CSV of prices instead: a 'timestamp' column and one per market (ETH-USD, "
    "BTC-USD) or a single 'price' column.",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of path and traders.")
@click.option("--traders", type=click.IntRange(1, 5_000), default=500, show_default=True)
@click.option("--baseline", is_flag=True, help="Also run the liquidate-at-maintenance baseline.")
@click.option(
    "--leverage",
    default="2:10",
    show_default=True,
    callback=_range,
    help="Leverage range LOW:HIGH (opened at most at the engine's initial-margin limit, 9.9x).",
)
@click.option(
    "--leverage-dist", type=click.Choice(LEVERAGE_DISTS), default="uniform", show_default=True
)
@click.option("--long-share", type=click.FloatRange(0, 1), default=0.6, show_default=True)
@click.option(
    "--cross-share",
    type=click.FloatRange(0, 1),
    default=None,
    help="Share of cross-margin traders (two markets) [default: 0.2; broken_correlation: 1].",
)
@click.option(
    "--cure-probability",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Fraction of traders who cure their margin calls: a trait drawn once per trader from"
    " the seed (a curing trader cures every call, after a delay of its own within the grace"
    " period, by depositing or reducing); the others never cure.",
)
@click.option(
    "--fund-seed",
    type=click.FloatRange(0),
    default=0.01,
    show_default=True,
    help="Insurance fund seed, as a fraction of the opening notional.",
)
@click.option("--block-time", type=click.IntRange(1, 600), default=12, show_default=True)
@click.option(
    "--gas-price-gwei",
    type=click.FloatRange(0),
    default=1.0,
    show_default=True,
    help="The keeper's gas price (profit rule and keeper profit).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    callback=_writable_dir,
    help="Write result.json, metrics.csv, samples-/liquidations-<mode>.csv and PNG plots here.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--check",
    is_flag=True,
    help="With --baseline: exit 1 listing every miss of socialised loss 0, phased bad debt <="
    " the baseline's, all-in cost to traders >= 30% below the baseline's, delay p99 <= 2 blocks.",
)
def simulate(
    scenario: str,
    csv_path: Path | None,
    seed: int,
    traders: int,
    baseline: bool,
    leverage: tuple[float, float],
    leverage_dist: str,
    long_share: float,
    cross_share: float | None,
    cure_probability: float,
    fund_seed: float,
    block_time: int,
    gas_price_gwei: float,
    out: Path | None,
    as_json: bool,
    quiet: bool,
    check: bool,
) -> None:
    """Replay a stress scenario on a local Anvil (phased liquidation; --baseline to compare).

    Traders act only on margin calls: a --cure-probability share of them (drawn once per
    trader from --seed) cure every call after a delay of their own within the grace
    period, by depositing or reducing; the rest never cure. The keeper is the project's
    keeper logic at --gas-price-gwei, one scan per block, acting in the next block.
    """
    from margincall.sim.setup import SimConfig
    from margincall.sim.simulate import load_path

    if check and not baseline:
        raise click.UsageError("--check compares with the baseline: add --baseline")
    try:
        population = scenario_population(
            "csv" if csv_path is not None else scenario,
            traders=traders,
            leverage=leverage,
            leverage_dist=leverage_dist,
            long_share=long_share,
            cross_share=cross_share,
            cure_probability=cure_probability,
            fund_seed=fund_seed,
        )
        config = SimConfig(
            scenario=scenario,
            seed=seed,
            population=population,
            block_time=block_time,
            gas_price_gwei=gas_price_gwei,
            csv=csv_path,
        )
        load_path(config)
    except (PopulationError, PathError) as err:
        raise click.UsageError(str(err)) from None

    modes = (PHASED, BASELINE) if baseline else (PHASED,)
    outcome = _run(config, modes, quiet)
    _report(outcome, as_json, out, check)


def _run(config: Any, modes: tuple[str, ...], quiet: bool) -> Any:
    """The simulation of `modes`, with a progress bar per mode on stderr (unless `quiet`)."""
    from margincall.sim.setup import SimulationError
    from margincall.sim.simulate import simulate as run_simulation

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=Console(stderr=True),
        transient=True,
        disable=quiet,
    )
    tasks: dict[str, int] = {}

    def on_progress(mode: str, done: int, total: int, text: str) -> None:
        if mode not in tasks:
            tasks[mode] = progress.add_task(mode, total=total, info="")
        progress.update(tasks[mode], completed=done, info=text)

    try:
        with progress:
            return run_simulation(config, modes, progress=on_progress)
    except SimulationError as err:
        raise click.ClickException(str(err)) from None


def _report(outcome: Any, as_json: bool, out: Path | None, check: bool) -> None:
    """The result as a table (or JSON) on stdout, the files under `out`, and with `check`
    a non-zero exit listing every missed target."""
    from margincall.sim.metrics import check_misses, table, to_json

    if as_json:
        sys.stdout.write(to_json(outcome.result))
    else:
        Console().print(table(outcome.result))
    if out is not None:
        for p in write_outputs(outcome, out):
            Console(stderr=True).print(f"wrote {p}", highlight=False)
    if check:
        misses = check_misses(outcome.result)
        if misses:
            raise click.ClickException(
                f"{len(misses)} target(s) missed:\n" + "\n".join(f"  - {m}" for m in misses)
            )


__all__ = ["simulate", "write_outputs"]
