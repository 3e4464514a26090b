"""What the penalty of a close can still buy on each crash run (issue 14): how far below the
baseline the all-in cost to traders could fall if only the penalties changed, and what that
would leave the insurance fund and the keepers.

    make bench-campaign CAMPAIGN_ARGS="--keep runs/"    # each run's simulate JSON
    python -m margincall.bench.tradeoff runs/           # one table row per run

Per run, from the phased run's metrics against the baseline's all-in cost `A`: `P` the
penalties, `K` the keepers' rewards out of them, `F` the fund's inflow, `BD` the bad debt
(realised + negative equity left open) and `C0 = all_in - P` (what is not a penalty):

- `no penalty`: the cut if no close paid any penalty, `1 - C0 / A` (the ceiling of any
  penalty rule);
- `fund whole`: the cut if every penalty shrank by one factor x, with today's keeper share,
  down to what still pays the bad debt out of the fund's share (`x F >= BD`);
- `keeper room`: the most the keepers could be paid in all if the cut is 30% and the fund
  ends with what it started with: `0.7 A - C0 - BD` (negative: impossible even unpaid).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from margincall.sim.metrics import PENALTY_TARGET


def row(result: dict[str, Any]) -> dict[str, float]:
    ph = result["runs"]["phased"]["metrics"]
    base = result["runs"]["baseline"]["metrics"]["all_in_cost"]
    p, k, f = ph["penalties"], ph["keeper_rewards"], ph["fund_inflow"]
    bd = ph["bad_debt"] + ph.get("left_deficit", 0.0)
    c0 = ph["all_in_cost"] - p
    x = 1.0 if bd > f else (bd / f if f > 0 else 0.0)

    def cut(cost: float) -> float:
        return 1 - cost / base if base > 0 else 0.0

    return {
        "now": cut(ph["all_in_cost"]),
        "no_penalty": cut(c0),
        "fund_whole": cut(c0 + x * p),
        "keeper_room": (1 - PENALTY_TARGET) * base - c0 - bd,
        "keepers": k,
        "bad_debt": bd,
        "fund_start": ph["fund_start"],
        "fund_end": ph["fund_end"],
    }


def table(paths: list[Path]) -> str:
    lines = [
        "| run | all-in cut now | no penalty | fund whole | keeper room at -30% (paid now)"
        " | bad debt | fund start -> end |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for path in sorted(paths):
        r = row(json.loads(path.read_text()))
        lines.append(
            f"| {path.stem} | {r['now']:.1%} | {r['no_penalty']:.1%} | {r['fund_whole']:.1%}"
            f" | {r['keeper_room']:,.0f} ({r['keepers']:,.0f}) | {r['bad_debt']:,.0f}"
            f" | {r['fund_start']:,.0f} -> {r['fund_end']:,.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python -m margincall.bench.tradeoff DIR (simulate --json files)")
        return 2
    print(table(list(Path(args[0]).glob("*.json"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
