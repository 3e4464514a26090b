"""Figures of a simulation run, the phased-vs-baseline comparison, and their renderings.

`summarize(record)` turns a `RunRecord` into plain numbers (whole tokens of
the collateral, 1 token = 1 USD; delays in blocks). `compare` puts the two
modes side by side with the PROTOCOL.md section 7 targets. Renderings: a
rich table, JSON, CSV.

Definitions:

- penalties paid by traders: liquidation penalties plus margin-call rewards
  (both come out of the trader's collateral; the baseline has no calls);
- bad debt: deficits of bankrupt accounts (`BadDebt.amount`); socialised:
  the part the insurance fund could not pay;
- fund drawdown: the largest fall of the fund's balance from a running peak;
- liquidation delay: blocks from the first block in which an account was
  seen eligible for its next tranche (or full close) to the block of that
  tranche (1 = the next block, the target);
- pool assets change: the pool's `totalAssets` at the end less at the start: realised
  trader losses and trading fees in, realised profits and socialised loss out; what open
  positions owe (or are owed) is not in it;
- keeper profit: rewards (tranche share, call rewards, the fund's pay for
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
from margincall.sim.runner import RunRecord

PENALTY_TARGET = 0.30  # PROTOCOL.md section 7: at least 30% below the baseline
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


def summarize(record: RunRecord) -> dict[str, Any]:
    """The figures of one run (tokens are whole tokens, floats)."""
    unit = 10**record.decimals
    tok = lambda x: x / unit  # noqa: E731
    liq = record.liquidations
    per_account = Counter(e["account"] for e in liq)
    at = sample_columns(record.markets).index("fund")
    fund_series = [record.fund_start] + [row[at] for row in record.samples]
    peak, drawdown, fund_min = fund_series[0], 0, fund_series[0]
    for v in fund_series:
        peak = max(peak, v)
        drawdown = max(drawdown, peak - v)
        fund_min = min(fund_min, v)
    penalties = sum(e["penalty"] for e in liq)
    call_rewards = sum(e["reward"] for e in record.calls)
    keeper_rewards = (
        sum(e["keeper_reward"] for e in liq)
        + call_rewards
        + sum(e["amount"] for e in record.keeper_paid)
    )
    cured = {e["account"] for e in record.clears if e["by_trader"]}
    called = {e["account"] for e in record.calls}
    bankrupt = {e["account"] for e in liq if e["state"] == State.BANKRUPT}
    delays = record.delays
    return {
        "bad_debt": tok(sum(e["amount"] for e in record.bad_debts)),
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
        "cures_sent": record.cures_sent,
        "cures_planned": record.cures_planned,
        "delay_p50": percentile(delays, 50),
        "delay_p99": percentile(delays, 99),
        "delay_max": max(delays, default=0),
        "delay_mean": (sum(delays) / len(delays)) if delays else 0.0,
        "delays_counted": len(delays),
        "call_delay_p50": percentile(record.call_delays, 50),
        "call_delay_max": max(record.call_delays, default=0),
        "keeper_gas": record.keeper_gas,
        "keeper_txs": record.keeper_txs,
        "keeper_skipped": record.keeper_skipped,
        "keeper_rewards": tok(keeper_rewards),
        "keeper_gas_cost": record.keeper_fee_tokens,
        "keeper_profit": tok(keeper_rewards) - record.keeper_fee_tokens,
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
        "left_liquidatable": record.final.get("left_liquidatable", 0),
        "left_unserved": record.final.get("left_unserved", 0),
    }


TIMING_KEYS = ("wall_seconds", "rpc_requests")


def timing(record: RunRecord) -> dict[str, Any]:
    return {
        "wall_seconds": round(record.wall_seconds, 2),
        "rpc_requests": record.rpc_requests,
        "load_avg": round(record.load_avg, 2),
    }


def compare(phased: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> dict[str, Any]:
    """The section 7 targets for a scenario: zero socialised loss (phased); penalties paid
    by traders at least 30% below the baseline."""
    out: dict[str, Any] = {
        "socialised_zero": phased["socialised"] == 0,
    }
    if baseline is not None:
        base = baseline["paid_by_traders"]
        cut = (1 - phased["paid_by_traders"] / base) if base > 0 else 0.0
        out["penalty_cut"] = cut
        out["penalty_cut_met"] = base > 0 and cut >= PENALTY_TARGET
        out["liquidation_penalty_cut"] = (
            (1 - phased["penalties"] / baseline["penalties"]) if baseline["penalties"] else 0.0
        )
    return out


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
    ("notional_liquidated", "notional liquidated", "tok"),
    ("liquidations", "liquidations (tranches + full closes)", "int"),
    ("full_closes", "  full closes", "int"),
    ("accounts_liquidated", "accounts liquidated", "int"),
    ("tranches_per_account_mean", "tranches per account, mean", "f2"),
    ("tranches_per_account_max", "tranches per account, max", "int"),
    ("margin_calls", "margin calls", "int"),
    ("accounts_cured", "accounts that cured their call", "int"),
    ("delay_p50", "liquidation delay p50 (blocks)", "int"),
    ("delay_p99", "liquidation delay p99 (blocks)", "int"),
    ("delay_max", "liquidation delay max (blocks)", "int"),
    ("keeper_gas", "keeper gas", "int"),
    ("keeper_profit", "keeper profit", "tok"),
    ("trader_pnl", "traders' PnL (equity change less cure deposits)", "tok"),
    ("lp_pnl", "pool assets change (realised PnL and fees)", "tok"),
    ("left_liquidatable", "liquidatable at the end", "int"),
    ("left_unserved", "  of them eligible and not acted on", "int"),
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
    title = (
        f"{result['scenario']} (seed {result['seed']}, {result['population']['traders']} traders,"
        f" {result['path']['hours']:.1f} h)"
    )
    t = Table(title=title, title_justify="left", header_style="bold cyan")
    t.add_column("metric")
    for m in modes:
        t.add_column(m, justify="right")
    for key, label, kind in ROWS:
        t.add_row(label, *(fmt(runs[m]["metrics"].get(key), kind) for m in modes))
    t.add_row("wall time (s)", *(f"{runs[m]['timing']['wall_seconds']:.1f}" for m in modes))
    cmp = result.get("comparison", {})
    if "penalty_cut" in cmp:
        style = "green" if cmp["penalty_cut_met"] else "red"
        t.add_section()
        t.add_row(
            "penalties vs baseline (target >= 30% less)",
            f"[{style}]{-cmp['penalty_cut']:+.1%}[/{style}]",
            *([""] * (len(modes) - 1)),
        )
    style = "green" if cmp.get("socialised_zero") else "red"
    t.add_row(
        "socialised loss (target 0)",
        f"[{style}]{'0' if cmp.get('socialised_zero') else 'NOT ZERO'}[/{style}]",
        *([""] * (len(modes) - 1)),
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
    "PENALTY_TARGET",
    "ROWS",
    "compare",
    "liquidations_csv",
    "metrics_csv",
    "percentile",
    "sample_columns",
    "samples_as_dicts",
    "samples_csv",
    "summarize",
    "table",
    "timing",
    "to_json",
]
