"""Figures of a simulation run, the phased-vs-baseline comparison, and their renderings.

`summarize(record)` turns a `RunRecord` into plain numbers (whole tokens of
the collateral, 1 token = 1 USD; delays in blocks). `compare` puts the two
modes side by side with the PROTOCOL.md section 7 targets. Renderings: a
rich table, JSON, CSV.

Definitions:

- penalties paid by traders: liquidation penalties plus margin-call rewards
  (both come out of the trader's collateral; the baseline has no calls). A
  call's reward is parked until the call ends: returned to the collateral when
  the account is closed at ratio < 1, so the call rewards counted are those
  issued less those returned (paid to the caller, or still parked at the end);
- bad debt: deficits of bankrupt accounts (`BadDebt.amount`); paid by fund:
  the part the insurance fund paid; socialised: the part it could not pay;
- left open at the end: accounts still holding positions when the replay
  stops, their notional, those still liquidatable (and their notional), and
  the deficit of those with negative equity (bad debt not yet realised);
- all-in cost: penalties paid by traders + bad debt + the open deficit + the
  penalty the liquidatable notional left open would still pay. A bankrupt
  account pays no penalty and unliquidated notional pays none yet, so the
  penalty figure alone can improve when the outcome is worse; the all-in cost
  cannot;
- fund drawdown: the largest fall of the fund's balance from a running peak;
- liquidation delay: the block of a tranche (or full close) less the first
  block in which it was possible, plus one (1 = in that first block, the
  target); see `margincall.sim.replay.eligible_slot`;
- pool assets change: the pool's `totalAssets` at the end less at the start: realised
  trader losses and trading fees in, realised profits and socialised loss out; what open
  positions owe (or are owed) is not in it;
- keeper profit: rewards (tranche share, call rewards actually paid, the fund's pay for
  bankrupt accounts) minus gas at the simulated gas price, converted at the
  ETH price of the moment.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table

from margincall.constants import WAD, State
from margincall.sim.baseline import BASELINE, PHASED
from margincall.sim.record import RunRecord

PENALTY_TARGET = 0.30  # PROTOCOL.md section 7: at least 30% below the baseline
DELAY_TARGET = 2  # issue 14: liquidation delay p99 at most 2 blocks
PENALTY_GUARD = (
    "the penalty target counts as met only when the all-in cost (penalties paid by traders"
    " + bad debt + the negative equity of accounts left open + the penalty their liquidatable"
    " notional would still pay) is also at least 30% below the baseline's: a bankruptcy or an"
    " unliquidated account pays no penalty, so the penalty figure alone can improve when the"
    " outcome is worse"
)
SAMPLE_FIXED = ("slot", "t")
SAMPLE_TAIL = (
    "fund",
    "pool",
    "open",
    *(f"n_{s.name.lower()}" for s in State),
    "ratio_p5",
    "ratio_p25",
    "ratio_p50",
    "ratio_p75",
    "ratio_p95",
)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0
    ordered = sorted(values)
    rank = max(math.ceil(p / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def sample_columns(markets: Sequence[str]) -> tuple[str, ...]:
    return (*SAMPLE_FIXED, *(f"price_{m}" for m in markets), *SAMPLE_TAIL)


def samples_as_dicts(record: RunRecord) -> list[dict[str, Any]]:
    cols = sample_columns(record.markets)
    return [dict(zip(cols, row, strict=True)) for row in record.samples]


def _fund_path(record: RunRecord) -> tuple[list[int], int, int]:
    """The fund's balance after each block (from its start), its largest drawdown and low."""
    at = sample_columns(record.markets).index("fund")
    fund_series = [record.fund_start] + [row[at] for row in record.samples]
    peak, drawdown, fund_min = fund_series[0], 0, fund_series[0]
    for v in fund_series:
        peak = max(peak, v)
        drawdown = max(drawdown, peak - v)
        fund_min = min(fund_min, v)
    return fund_series, drawdown, fund_min


def _keeper_figures(record: RunRecord, rewards: float) -> dict[str, Any]:
    """The keeper's figures of one run: delays, misses, gas, its step's holds and caps,
    rewards (`rewards`, whole tokens) and profit."""
    delays = record.delays
    return {
        "delay_p50": percentile(delays, 50),
        "delay_p99": percentile(delays, 99),
        "delay_max": max(delays, default=0),
        "delay_mean": (sum(delays) / len(delays)) if delays else 0.0,
        "delays_counted": len(delays),
        "call_delay_p50": percentile(record.call_delays, 50),
        "call_delay_max": max(record.call_delays, default=0),
        "tranches_missed": record.liq_missed,
        "calls_missed": record.call_missed,
        "gas_price_gwei": record.gas_price_gwei,
        "keeper_gas": record.keeper_gas,
        "keeper_txs": record.keeper_txs,
        "keeper_skipped": record.keeper_skipped,
        "keeper_reverts": record.keeper_reverts,
        "keeper_reverted_alone": record.keeper_reverted_alone,
        "keeper_held_window": record.keeper_held_window,
        "keeper_backed_off": record.keeper_backed_off,
        "keeper_clears_capped": record.keeper_clears_capped,
        "keeper_windows_full": record.keeper_windows_full,
        "keeper_rewards": rewards,
        "keeper_gas_cost": record.keeper_fee_tokens,
        "keeper_profit": rewards - record.keeper_fee_tokens,
        # orders (reductions): settled within how many blocks of the round they settle at
        "orders_committed": record.orders_committed,
        "orders_settled": record.orders_settled,
        "orders_refused": sum(record.orders_cancelled.values()),
        "order_delay_p50": percentile(record.order_delays, 50),
        "order_delay_p99": percentile(record.order_delays, 99),
        "order_delay_max": max(record.order_delays, default=0),
    }


def _call_rewards(record: RunRecord) -> tuple[int, int, int]:
    """The margin-call rewards of a run, token units: issued less returned (paid to the
    callers or still parked; a close below ratio 1 returns a parked reward to the account's
    collateral), paid to the callers, returned."""
    returned = sum(e["amount"] for e in record.call_rewards_returned)
    paid = sum(e["amount"] for e in record.call_rewards_paid)
    return sum(e["reward"] for e in record.calls) - returned, paid, returned


def summarize(record: RunRecord) -> dict[str, Any]:
    """The figures of one run (tokens are whole tokens, floats)."""
    unit = 10**record.decimals
    tok = lambda x: x / unit  # noqa: E731
    liq = record.liquidations
    per_account = Counter(e["account"] for e in liq)
    fund_series, drawdown, fund_min = _fund_path(record)
    penalties = sum(e["penalty"] for e in liq)
    call_rewards, paid_calls, returned = _call_rewards(record)
    keeper_rewards = sum(e["keeper_reward"] for e in liq) + paid_calls
    cured = {e["account"] for e in record.clears if e["by_trader"]}
    cured_by = {
        how: {e["account"] for e in record.clears if e["by_trader"] and e.get("how") == how}
        for how in ("deposit", "trade", "clear_margin_call")
    }
    final = record.final
    wad_tok = lambda x: x / WAD  # noqa: E731
    left_penalty = (
        final.get("left_liquidatable_notional", 0) * record.params.liquidation_penalty // WAD
    )
    called = {e["account"] for e in record.calls}
    bankrupt = {e["account"] for e in liq if e["state"] == State.BANKRUPT}
    bad_debt = tok(sum(e["amount"] for e in record.bad_debts))
    open_deficit = wad_tok(final.get("open_deficit", 0))
    return {
        "bad_debt": bad_debt,
        "socialised": tok(sum(e["socialised"] for e in record.bad_debts)),
        "paid_by_fund": tok(sum(e["paid_by_fund"] for e in record.bad_debts)),
        "accounts_bankrupt": len(bankrupt),
        "fund_start": tok(record.fund_start),
        "fund_end": tok(record.final.get("fund_end", fund_series[-1])),
        "fund_min": tok(fund_min),
        "fund_drawdown": tok(drawdown),
        "fund_inflow": tok(sum(e["fund_fee"] for e in liq)),
        "penalties": tok(penalties),
        "call_rewards": tok(call_rewards),
        "call_rewards_paid": tok(paid_calls),
        "call_rewards_returned": tok(returned),
        "call_rewards_parked": tok(call_rewards - paid_calls),
        "paid_by_traders": tok(penalties + call_rewards),
        "notional_liquidated": sum(e["closed_notional"] for e in liq) / WAD,
        "liquidations": len(liq),
        "full_closes": sum(1 for e in liq if e["full"]),
        "accounts_liquidated": len(per_account),
        "tranches_per_account_mean": (len(liq) / len(per_account)) if per_account else 0.0,
        "tranches_per_account_p50": percentile(list(per_account.values()), 50),
        "tranches_per_account_max": max(per_account.values(), default=0),
        "tranches_histogram": dict(sorted(Counter(per_account.values()).items())),
        "margin_calls": len(record.calls),
        "accounts_called": len(called),
        "accounts_cured": len(cured),
        "accounts_cured_by_deposit": len(cured_by["deposit"]),
        "accounts_cured_by_reduce": len(cured_by["trade"]),
        "cures_sent": record.cures_sent,
        "cures_sent_deposit": record.cures_by_deposit,
        "cures_sent_reduce": record.cures_by_reduce,
        "cures_planned": record.cures_planned,
        **_keeper_figures(record, tok(keeper_rewards)),
        "trader_txs": record.trader_txs,
        "trader_reverts": record.trader_reverts,
        "lp_pnl": tok(record.final.get("pool_end", 0) - record.pool_start),
        "trader_deposits": tok(record.trader_deposits),
        "trader_pnl": (record.trader_equity_end - record.trader_equity_start) / WAD
        - tok(record.trader_deposits),
        "blocks": record.slots,
        "blocks_mined": record.blocks_mined,
        "hours": record.end / 3600,
        "conserved": bool(record.final.get("conserved", False)),
        "left_open": final.get("open_accounts", 0),
        "left_open_notional": wad_tok(final.get("open_notional", 0)),
        "left_liquidatable": final.get("left_liquidatable", 0),
        "left_liquidatable_notional": wad_tok(final.get("left_liquidatable_notional", 0)),
        "left_unserved": final.get("left_unserved", 0),
        "left_deficit": open_deficit,
        "left_penalty": wad_tok(left_penalty),
        "all_in_cost": tok(penalties + call_rewards)
        + bad_debt
        + open_deficit
        + wad_tok(left_penalty),
    }


TIMING_KEYS = ("wall_seconds", "rpc_requests")


def timing(record: RunRecord) -> dict[str, Any]:
    return {
        "wall_seconds": round(record.wall_seconds, 2),
        "rpc_requests": record.rpc_requests,
        "load_avg": round(record.load_avg, 2),
    }


def _cut(phased: float, baseline: float) -> float:
    return (1 - phased / baseline) if baseline > 0 else 0.0


def compare(phased: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> dict[str, Any]:
    """The section 7 targets for a scenario: zero socialised loss (phased); penalties paid
    by traders at least 30% below the baseline, guarded by the all-in cost (`PENALTY_GUARD`).

    `penalty_cut` is the section 7 figure; `penalty_cut_met` is True only when it reaches
    the target and `all_in_cut` does too. The bad-debt figures of both modes ride along so
    that no rendering shows the penalty cut without them."""
    out: dict[str, Any] = {
        "socialised_zero": phased["socialised"] == 0,
    }
    if baseline is not None:
        base = baseline["paid_by_traders"]
        cut = _cut(phased["paid_by_traders"], base)
        all_in = _cut(phased.get("all_in_cost", 0.0), baseline.get("all_in_cost", 0.0))
        bad = phased["bad_debt"] + phased.get("left_deficit", 0.0)
        base_bad = baseline["bad_debt"] + baseline.get("left_deficit", 0.0)
        out["penalty_cut"] = cut
        out["penalty_cut_reached"] = base > 0 and cut >= PENALTY_TARGET
        out["all_in_cut"] = all_in
        out["all_in_cut_reached"] = (
            baseline.get("all_in_cost", 0.0) > 0 and all_in >= PENALTY_TARGET
        )
        out["penalty_cut_met"] = out["penalty_cut_reached"] and out["all_in_cut_reached"]
        out["bad_debt"] = phased["bad_debt"]
        out["baseline_bad_debt"] = baseline["bad_debt"]
        out["bad_debt_above_baseline"] = bad > base_bad
        out["paid_by_fund"] = phased["paid_by_fund"]
        out["baseline_paid_by_fund"] = baseline["paid_by_fund"]
        out["left_liquidatable_notional"] = phased.get("left_liquidatable_notional", 0.0)
        out["liquidation_penalty_cut"] = _cut(phased["penalties"], baseline["penalties"])
        out["penalty_status"] = penalty_status(out)
    return out


def penalty_status(cmp: Mapping[str, Any]) -> str:
    """`ok`, or `MISS` with the reason (the cut itself, or the cut once bad debt counts)."""
    if "penalty_cut" not in cmp:
        return "-"
    if cmp["penalty_cut_met"]:
        return "ok"
    if not cmp["penalty_cut_reached"]:
        return f"MISS ({-cmp['penalty_cut']:+.1%})"
    return f"MISS with bad debt counted (all-in {-cmp['all_in_cut']:+.1%})"


def check_misses(result: Mapping[str, Any]) -> list[str]:
    """The targets a phased-vs-baseline run must meet (issue 14; `simulate --check`), one
    line per miss (empty: all met):

    - socialised loss of the phased run is 0;
    - phased bad debt (realised + the negative equity of accounts left open) is at most the
      baseline's;
    - the phased all-in cost to traders (`all_in_cost`: penalties + bad debt + left open)
      is at least `PENALTY_TARGET` (30%) below the baseline's, i.e. at most 70% of it
      (both 0 passes: nothing to cut);
    - the phased liquidation delay p99 is at most `DELAY_TARGET` (2) blocks.

    Raises ValueError without both runs (the check compares with the baseline)."""
    runs = result.get("runs", {})
    if PHASED not in runs or BASELINE not in runs:
        raise ValueError("the check needs both runs: phased and baseline (--baseline)")
    ph, base = runs[PHASED]["metrics"], runs[BASELINE]["metrics"]
    where = f"{result.get('scenario', '?')} seed {result.get('seed', '?')}"
    misses = []
    if ph["socialised"] > 0:
        misses.append(f"{where}: socialised loss {ph['socialised']:,.2f} (target 0)")
    bad = ph["bad_debt"] + ph.get("left_deficit", 0.0)
    base_bad = base["bad_debt"] + base.get("left_deficit", 0.0)
    if bad > base_bad:
        misses.append(
            f"{where}: phased bad debt {bad:,.2f} above the baseline's {base_bad:,.2f}"
            " (realised + negative equity left open)"
        )
    cost, base_cost = ph["all_in_cost"], base["all_in_cost"]
    if cost > (1 - PENALTY_TARGET) * base_cost:
        vs = f"{cost / base_cost - 1:+.1%} vs" if base_cost > 0 else "against"
        misses.append(
            f"{where}: all-in cost to traders {cost:,.2f} ({vs} the baseline's"
            f" {base_cost:,.2f}; target at least {PENALTY_TARGET:.0%} below)"
        )
    if ph["delay_p99"] > DELAY_TARGET:
        misses.append(
            f"{where}: liquidation delay p99 {ph['delay_p99']} blocks (target <= {DELAY_TARGET})"
        )
    return misses


# --- rendering -------------------------------------------------------------------------------

ROWS: tuple[tuple[str, str, str], ...] = (
    # (key, label, format)
    ("bad_debt", "bad debt", "tok"),
    ("paid_by_fund", "  paid by the insurance fund", "tok"),
    ("socialised", "  socialised to LPs", "tok"),
    ("accounts_bankrupt", "accounts bankrupt", "int"),
    ("fund_start", "insurance fund, start", "tok"),
    ("fund_end", "insurance fund, end", "tok"),
    ("fund_drawdown", "insurance fund, max drawdown", "tok"),
    ("paid_by_traders", "penalties paid by traders", "tok"),
    ("penalties", "  liquidation penalties", "tok"),
    ("call_rewards", "  margin-call rewards", "tok"),
    ("call_rewards_returned", "  call rewards returned (closed below ratio 1)", "tok"),
    ("all_in_cost", "all-in cost (penalties + bad debt + left open)", "tok"),
    ("notional_liquidated", "notional liquidated", "tok"),
    ("liquidations", "liquidations (tranches + full closes)", "int"),
    ("full_closes", "  full closes", "int"),
    ("accounts_liquidated", "accounts liquidated", "int"),
    ("tranches_per_account_mean", "tranches per account, mean", "f2"),
    ("tranches_per_account_max", "tranches per account, max", "int"),
    ("margin_calls", "margin calls", "int"),
    ("accounts_cured", "accounts that cured their call", "int"),
    ("accounts_cured_by_deposit", "  by depositing", "int"),
    ("accounts_cured_by_reduce", "  by reducing", "int"),
    ("delay_p50", "liquidation delay p50 (blocks, 1 = first possible)", "int"),
    ("delay_p99", "liquidation delay p99 (blocks)", "int"),
    ("delay_max", "liquidation delay max (blocks)", "int"),
    ("tranches_missed", "tranches possible, never sent, account recovered", "int"),
    ("orders_committed", "orders committed (reductions)", "int"),
    ("orders_settled", "  settled", "int"),
    ("orders_refused", "  refused at settlement", "int"),
    ("order_delay_p99", "  settled within (blocks of their round, p99)", "int"),
    ("order_delay_max", "  settled within (blocks of their round, max)", "int"),
    ("gas_price_gwei", "keeper gas price (gwei)", "f2"),
    ("keeper_gas", "keeper gas", "int"),
    ("keeper_reverts", "keeper transactions reverted", "int"),
    ("keeper_reverted_alone", "keeper: accounts whose own tranche reverted (backed off)", "int"),
    ("keeper_held_window", "keeper: accounts held by a full window (account-blocks)", "int"),
    ("keeper_backed_off", "keeper: accounts backed off (account-blocks)", "int"),
    ("keeper_clears_capped", "keeper: clears left by its per-block cap", "int"),
    ("keeper_profit", "keeper profit", "tok"),
    ("trader_pnl", "traders' PnL (equity change less cure deposits)", "tok"),
    ("lp_pnl", "pool assets change (realised PnL and fees)", "tok"),
    ("left_open", "accounts left open at the end", "int"),
    ("left_open_notional", "  their notional", "tok"),
    ("left_liquidatable", "  of them liquidatable", "int"),
    ("left_liquidatable_notional", "    their notional", "tok"),
    ("left_unserved", "    possible in the next block and not acted on", "int"),
    ("left_deficit", "  negative equity of open accounts (unrealised bad debt)", "tok"),
)


def fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "f2":
        return f"{value:,.2f}"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def table(result: Mapping[str, Any]) -> Table:
    """A rich table: one column per mode, the comparison under it."""
    runs = result["runs"]
    modes = list(runs)
    hours = f"{result['path']['hours']:.2f}".rstrip("0").rstrip(".")
    title = (
        f"{result['scenario']} (seed {result['seed']}, {result['population']['traders']} traders,"
        f" {hours} h)"
    )
    t = Table(title=title, title_justify="left", header_style="bold cyan")
    t.add_column("metric")
    for m in modes:
        t.add_column(m, justify="right")
    for key, label, kind in ROWS:
        t.add_row(label, *(fmt(runs[m]["metrics"].get(key), kind) for m in modes))
    t.add_row("wall time (s)", *(f"{runs[m]['timing']['wall_seconds']:.1f}" for m in modes))
    cmp = result.get("comparison", {})
    pad = [""] * (len(modes) - 1)
    if "penalty_cut" in cmp:
        style = "green" if cmp["penalty_cut_met"] else "red"
        t.add_section()
        t.add_row("penalties paid by traders vs baseline", f"{-cmp['penalty_cut']:+.1%}", *pad)
        t.add_row(
            "  all-in cost vs baseline (bad debt counted)", f"{-cmp['all_in_cut']:+.1%}", *pad
        )
        t.add_row(
            "  bad debt phased / baseline",
            f"{fmt(cmp['bad_debt'], 'tok')} / {fmt(cmp['baseline_bad_debt'], 'tok')}",
            *pad,
        )
        t.add_row(
            "  paid by the fund phased / baseline",
            f"{fmt(cmp['paid_by_fund'], 'tok')} / {fmt(cmp['baseline_paid_by_fund'], 'tok')}",
            *pad,
        )
        t.add_row(
            f"penalty target (>= {PENALTY_TARGET:.0%} less, both lines)",
            f"[{style}]{cmp['penalty_status']}[/{style}]",
            *pad,
        )
    style = "green" if cmp.get("socialised_zero") else "red"
    t.add_row(
        "socialised loss (target 0)",
        f"[{style}]{'0' if cmp.get('socialised_zero') else 'NOT ZERO'}[/{style}]",
        *pad,
    )
    return t


def to_json(result: Mapping[str, Any]) -> str:
    return json.dumps(result, indent=1, sort_keys=False, default=str) + "\n"


def metrics_csv(result: Mapping[str, Any]) -> str:
    """One row per metric, one column per mode."""
    runs = result["runs"]
    modes = list(runs)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["metric", *modes])
    keys = [k for k in runs[modes[0]]["metrics"] if k != "tranches_histogram"]
    for k in keys:
        w.writerow([k, *(runs[m]["metrics"].get(k) for m in modes)])
    return buf.getvalue()


def samples_csv(record: RunRecord) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(sample_columns(record.markets))
    for row in record.samples:
        w.writerow(row)
    return buf.getvalue()


EVENT_COLUMNS = (
    "slot",
    "t",
    "account",
    "tranche",
    "state",
    "fraction",
    "closed_notional",
    "penalty",
    "keeper_reward",
    "fund_fee",
    "full",
    "ratio_after",
)


def liquidations_csv(record: RunRecord) -> str:
    """One row per tranche or full close, in the engine's units (wad, token units)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(EVENT_COLUMNS)
    for e in record.liquidations:
        w.writerow([e[c] for c in EVENT_COLUMNS])
    return buf.getvalue()


__all__ = [
    "DELAY_TARGET",
    "PENALTY_GUARD",
    "PENALTY_TARGET",
    "ROWS",
    "check_misses",
    "compare",
    "liquidations_csv",
    "metrics_csv",
    "penalty_status",
    "percentile",
    "sample_columns",
    "samples_as_dicts",
    "samples_csv",
    "summarize",
    "table",
    "timing",
    "to_json",
]
