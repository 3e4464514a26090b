"""The benchmark suite's markdown: the simulator's table against the baseline and the
sensitivity tables, from the runs' results (no chain, no file).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from collections import Counter
from collections.abc import Callable
from typing import Any

from margincall.report import cpu_model, tool_version

TARGET_TRADERS = 500  # PROTOCOL.md section 7: crash replay with 500 traders
SPEED_TARGET = 600  # seconds: 500 traders through Black Thursday
FUND_SCENARIO = "flash_crash"


def machine_line() -> str:
    cpu = cpu_model()
    version = tool_version(["anvil", "--version"], "anvil Version: ")
    return (
        f"Machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()},"
        f" Anvil {version}; measured {dt.date.today().isoformat()}."
    )


def tok(x: float) -> str:
    return f"{x:,.0f}"


def pct(x: float) -> str:
    return f"{x:+.1%}"


def share(x: float) -> str:
    """A fraction as a percentage without needless decimals: 0.2 -> 20%, 0.0025 -> 0.25%."""
    return f"{x * 100:.2f}".rstrip("0").rstrip(".") + "%"


def hours_text(h: float) -> str:
    """14 -> '14 h', 2.25 -> '2.25 h'."""
    return f"{h:.2f}".rstrip("0").rstrip(".") + " h"


def ratio_text(wad: int) -> str:
    return f"{wad / 10**18:g}"


def _met(ok: bool) -> str:
    return "ok" if ok else "MISS"


def _by_value(values: dict[str, Any], fmt: Callable[[Any], str]) -> str:
    """'20% (broken_correlation: 100%)': the most common value, then the exceptions."""
    common, _ = Counter(values.values()).most_common(1)[0]
    odd = [f"{n}: {fmt(v)}" for n, v in values.items() if v != common]
    return fmt(common) + (f" ({', '.join(odd)})" if odd else "")


def population_text(results: dict, seed: int) -> str:
    """The population, keeper and chain of a set of results, from the results themselves."""
    first = next(iter(results.values()))
    pop, chain = first["population"], first["chain"]
    cross = _by_value({n: r["population"]["cross_share"] for n, r in results.items()}, share)
    params = first["runs"]["phased"]["params"]
    tail, grace = chain["tail_seconds"], chain["grace_period"]
    tail_text = (
        f"one grace period ({grace:,} s) plus {tail - grace:,} s"
        if tail >= grace
        else f"{tail:,} s (less than the grace period of {grace:,} s)"
    )
    return (
        f"Population (seed {seed}): {pop['traders']} traders, leverage {pop['leverage_dist']}"
        f" {pop['leverage'][0]:g}-{pop['leverage'][1]:g}x (opened at most at"
        f" {pop['max_opened_leverage']:.2f}x, the engine's initial-margin limit),"
        f" {share(pop['long_share'])} long, cross-margin (two markets) {cross}, collateral"
        f" log-uniform {pop['collateral'][0]:,.0f}-{pop['collateral'][1]:,.0f} tokens. Curing is"
        f" a trait drawn once per trader: {pop['traders_curing']} of the {pop['traders']}"
        f" traders ({share(pop['cure_probability'])} expected) cure every margin call they get,"
        f" each after a delay of its own drawn in {pop['cure_delay'][0]}-{pop['cure_delay'][1]}"
        f" s (inside the {params['grace_period']:,} s grace period),"
        f" {share(1 - pop['reduce_share'])} of them by deposit (if their wallet allows), the"
        f" others by reducing, to ratio {pop['cure_target']:g}; the rest never cure."
        f" {pop['lps']} LPs with {share(pop['lp_liquidity'])} of the opening notional; insurance"
        f" fund seeded with {share(pop['fund_seed'])} of the opening notional (in"
        f" {first['scenario']}: {pop['opening_notional']:,.0f} tokens of notional, a fund of"
        f" {pop['fund_seed_tokens']:,.0f}). Keeper: `keeper.logic.decide` with the keeper bot's"
        f" cost model at {chain['gas_price_gwei']:g} gwei, one scan per block, its transactions"
        f" in the next block; {chain['block_time']} s blocks; after the last price the chain runs"
        f" {tail_text}."
    )


def sim_markdown(results: dict, traders: int, seed: int) -> str:
    from margincall.sim.metrics import PENALTY_GUARD, PENALTY_TARGET

    lines = [
        f"Reproduce: `make bench`, or one scenario: `margincall simulate --scenario NAME"
        f" --baseline --seed {seed}` (add `--out DIR` for JSON, CSV and plots). Each run"
        " starts an Anvil of its own, deploys the system, opens the population and replays"
        " the path; the baseline replays the same path and population from the same chain"
        " snapshot (see *How the baseline is emulated* below).",
        "",
        machine_line(),
        "",
        population_text(results, seed),
        "",
        f"### Targets (PROTOCOL.md section 7: zero socialised loss; penalties paid by traders"
        f" at least {PENALTY_TARGET:.0%} below the baseline)",
        "",
        "| scenario | path (end, largest fall) | bad debt phased / baseline | paid by the fund"
        " phased / baseline | socialised phased / baseline | penalties paid by traders phased /"
        " baseline | change | all-in change | status | left open at the end, phased: accounts"
        " (liquidatable, their notional) | traders' PnL phased / baseline |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for name, r in results.items():
        p, b = r["runs"]["phased"]["metrics"], r["runs"]["baseline"]["metrics"]
        c = r["comparison"]
        moves = ", ".join(
            f"{m} {v:+.0%} ({r['path']['drawdowns'][m]:+.0%})"
            for m, v in r["path"]["moves"].items()
        )
        status = f"socialised {_met(c['socialised_zero'])}; penalties {c['penalty_status']}"
        lines.append(
            f"| {name} | {hours_text(r['path']['hours'])}, {moves} | {tok(p['bad_debt'])} /"
            f" {tok(b['bad_debt'])} | {tok(p['paid_by_fund'])} / {tok(b['paid_by_fund'])} |"
            f" {tok(p['socialised'])} / {tok(b['socialised'])} |"
            f" {tok(p['paid_by_traders'])} / {tok(b['paid_by_traders'])} |"
            f" {pct(-c['penalty_cut'])} | {pct(-c['all_in_cut'])} | {status} |"
            f" {p['left_open']} ({p['left_liquidatable']}, {tok(p['left_liquidatable_notional'])})"
            f" | {tok(p['trader_pnl'])} / {tok(b['trader_pnl'])} |"
        )
    lines += [
        "",
        "Penalties paid by traders = liquidation penalties + margin-call rewards (both come out"
        " of the trader's collateral): the section 7 figure, `change` against the baseline."
        " Status: "
        + PENALTY_GUARD
        + " (see *How the penalty target is judged*). Traders' PnL: every trader's equity at"
        " the end (collateral plus unrealised PnL; a closed bankrupt account counts 0) less"
        " at the start, less what cures deposited: the whole outcome for traders, market"
        " moves included.",
        "",
        "### Every figure",
        "",
        "| scenario | mode | fund start | fund max drawdown | paid by the fund | fund end |"
        " notional liquidated | liquidations (full) | accounts liquidated | tranches per account"
        " mean / max | calls / accounts cured (deposit, reduce) | delay p50 / p99 / max"
        " (blocks) | keeper gas | keeper profit | traders' PnL | pool assets change | open at"
        " the end (notional) | wall s (load) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += _figure_rows(results)
    lines += [
        "",
        "Delay: the block of a tranche (or full close) less the first block in which it was"
        " possible, plus one (1 = in that first block): the state after block b is evaluated"
        " at the timestamp of block b + 1, with the engine's rules (a called account whose"
        " deadline has come is liquidatable; a tranche waits for its interval).",
    ]
    bt = results.get("black_thursday")
    if bt is not None:
        lines += _speed_lines(bt, traders)
    lines += ["", "### Plots", ""]
    for name in results:
        lines.append(f"![{name}](img/sim-{name}.png)")
        lines.append("")
    return "\n".join(lines)


def _figure_rows(results: dict) -> list[str]:
    """One row of every figure per scenario and mode."""
    rows: list[str] = []
    for name, r in results.items():
        for mode in ("phased", "baseline"):
            m = r["runs"][mode]["metrics"]
            t = r["runs"][mode]["timing"]
            rows.append(
                f"| {name} | {mode} | {tok(m['fund_start'])} | {tok(m['fund_drawdown'])} |"
                f" {tok(m['paid_by_fund'])} | {tok(m['fund_end'])} |"
                f" {tok(m['notional_liquidated'])} |"
                f" {m['liquidations']:,} ({m['full_closes']:,}) | {m['accounts_liquidated']} |"
                f" {m['tranches_per_account_mean']:.1f} / {m['tranches_per_account_max']} |"
                f" {m['margin_calls']:,} / {m['accounts_cured']}"
                f" ({m['accounts_cured_by_deposit']}, {m['accounts_cured_by_reduce']}) |"
                f" {m['delay_p50']} / {m['delay_p99']} / {m['delay_max']} |"
                f" {m['keeper_gas']:,} | {tok(m['keeper_profit'])} | {tok(m['trader_pnl'])} |"
                f" {tok(m['lp_pnl'])} | {m['left_open']} ({tok(m['left_open_notional'])}) |"
                f" {t['wall_seconds']:.0f} ({t['load_avg']:.1f}) |"
            )
    return rows


def _speed_lines(bt: dict, traders: int) -> list[str]:
    """The speed section: Black Thursday's setup and replay times."""
    setup = bt["timing"]["setup_seconds"]
    phased = bt["runs"]["phased"]["timing"]["wall_seconds"]
    base = bt["runs"]["baseline"]["timing"]["wall_seconds"]
    total = bt["timing"]["total_seconds"]
    single = total - base
    pm = bt["runs"]["phased"]["metrics"]
    return [
        "",
        f"### Speed (target: {TARGET_TRADERS} traders through Black Thursday in at most"
        f" {SPEED_TARGET // 60} minutes)",
        "",
        f"Black Thursday, {traders} traders: deploy and opening the population"
        f" {setup:.0f} s, phased replay {phased:.0f} s ({pm['blocks_mined']:,}"
        f" blocks mined of {pm['blocks']:,} slots), baseline"
        f" replay {base:.0f} s; `margincall simulate --scenario black_thursday` (phased"
        f" only, Anvil and Ape start included) about {single:.0f} s, with `--baseline`"
        f" {total:.0f} s: " + speed_status(single, traders),
    ]


def speed_status(seconds: float, traders: int) -> str:
    if traders != TARGET_TRADERS:
        return f"not the target's population ({traders} traders, the target asks {TARGET_TRADERS})."
    if seconds <= SPEED_TARGET:
        return f"**ok**, {SPEED_TARGET - seconds:.0f} s under the target."
    return f"**MISS** by {seconds - SPEED_TARGET:.0f} s."


def fund_row(seed_share: float, m: dict, base: dict) -> dict[str, Any]:
    keys = ("fund_start", "bad_debt", "paid_by_fund", "socialised", "fund_drawdown", "fund_end")
    return {
        "fund_seed": seed_share,
        **{k: m[k] for k in keys},
        **{f"baseline_{k}": base[k] for k in keys},
    }


SENSITIVITY_TITLES = {
    ("black_thursday", "cure"): "**Black Thursday**: how many traders cure their margin calls",
    ("black_thursday", "params"): "**Black Thursday**: earlier or larger margin calls and tranches",
    ("flash_crash", "params"): "**Flash crash**: `critical_ratio` (below it one `liquidate`"
    " closes the whole account, exempt from the tranche interval), the shortest tranche"
    " interval, or tranches of up to the whole account",
}


def _gas_lines(out: dict) -> list[str]:
    """The keeper gas price table of the sensitivity runs (none when not run)."""
    gas_rows = [r for t in out["tables"].values() for r in t.get("gas", [])]
    if not gas_rows:
        return []
    lines = [
        "",
        "**Keeper gas price**: the keeper's profit rule (`keeper_logic`, the bot's cost "
        "model) expects, per account, a lower bound of the tranche's keeper reward (from "
        "its `check_margins` status) and the call reward as the engine cuts it, against "
        "measured gas per account, and sends only what pays its gas times the margin; "
        "CRITICAL and BANKRUPT accounts are liquidated whatever the price. `missed`: "
        "tranches that were possible and never sent before the account recovered; `left`:"
        " accounts still liquidatable at the end (their notional); delay: counted from "
        "the first block in which a tranche was possible, whatever its profit, so a "
        "keeper that waits for an account to become CRITICAL shows it here.",
        "",
        "| scenario | gas price | calls | liquidations (full) | accounts liquidated |"
        " missed | left (notional) | delay p50 / max | bad debt | paid by the fund |"
        " socialised | keeper profit | penalties change | all-in change | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in gas_rows:
        lines.append(
            f"| {r['scenario']} | {r['variant']} | {r['margin_calls']:,} |"
            f" {r['liquidations']:,} ({r['full_closes']:,}) | {r['accounts_liquidated']} |"
            f" {r['tranches_missed']:,} | {r['left_liquidatable']}"
            f" ({tok(r['left_liquidatable_notional'])}) |"
            f" {r['delay_p50']} / {r['delay_max']} | {tok(r['bad_debt'])} |"
            f" {tok(r['paid_by_fund'])} | {tok(r['socialised'])} |"
            f" {tok(r['keeper_profit'])} | {pct(-r['cut'])} | {pct(-r['all_in_cut'])} |"
            f" {r['status']} |"
        )
    return lines


def sensitivity_markdown(out: dict, traders: int, seed: int) -> str:
    from margincall.sim.metrics import PENALTY_TARGET

    d = next(iter(out["defaults"].values()))
    p = d["params"]
    lines = [
        f"Reproduce: `python scripts/bench.py --only sensitivity` ({traders} traders, seed"
        f" {seed}). Each variant is a phased run that changes one thing against the defaults"
        f" above (cure probability {d['cure_probability']:g}, keeper gas price"
        f" {d['gas_price_gwei']:g} gwei, insurance fund seed {share(d['fund_seed'])}; engine"
        f" defaults: call_ratio {ratio_text(p['call_ratio'])}, critical_ratio"
        f" {ratio_text(p['critical_ratio'])}, close_factor {ratio_text(p['close_factor'])},"
        f" tranche_interval {p['tranche_interval']} s) and replays from the same chain snapshot"
        " as its baseline; a risk parameter is set with `set_risk_params`, within the engine's"
        f" bounds. Status: the penalty target ({PENALTY_TARGET:.0%} below the baseline) with the"
        " all-in guard of the stress-simulator section.",
    ]
    for name, tables in out["tables"].items():
        for table, rows in tables.items():
            if table == "gas" or not rows:
                continue
            lines += [
                "",
                SENSITIVITY_TITLES.get((name, table), f"**{name}**: {table}"),
                "",
                "| variant | penalties paid by traders (baseline) | change | all-in change |"
                " status | bad debt (baseline) | paid by the fund | socialised | liquidations |"
                " accounts liquidated | accounts cured | traders' PnL (baseline) |",
                "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for r in rows:
                lines.append(
                    f"| {r['variant']} | {tok(r['paid_by_traders'])} ({tok(r['baseline_paid'])})"
                    f" | {pct(-r['cut'])} | {pct(-r['all_in_cut'])} | {r['status']} |"
                    f" {tok(r['bad_debt'])} ({tok(r['baseline_bad_debt'])}) |"
                    f" {tok(r['paid_by_fund'])} | {tok(r['socialised'])} |"
                    f" {r['liquidations']:,} | {r['accounts_liquidated']} |"
                    f" {r['accounts_cured']} |"
                    f" {tok(r['trader_pnl'])} ({tok(r['baseline_trader_pnl'])}) |"
                )
    lines += _gas_lines(out)
    if out["fund"]:
        lines += [
            "",
            f"**Insurance fund seed** ({FUND_SCENARIO}): the same population and path with the"
            " fund seeded at setup with a share of the opening notional; penalties flow in"
            " during the run. Zero socialised loss depends on what the fund holds when the"
            " deficits come.",
            "",
            "| fund seed | mode | fund start | bad debt | paid by the fund | socialised |"
            " fund max drawdown | fund end |",
            "|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in out["fund"]:
            for mode, pre in (("phased", ""), ("baseline", "baseline_")):
                lines.append(
                    f"| {share(r['fund_seed'])} | {mode} | {tok(r[pre + 'fund_start'])} |"
                    f" {tok(r[pre + 'bad_debt'])} | {tok(r[pre + 'paid_by_fund'])} |"
                    f" {tok(r[pre + 'socialised'])} | {tok(r[pre + 'fund_drawdown'])} |"
                    f" {tok(r[pre + 'fund_end'])} |"
                )
    return "\n".join(lines)
