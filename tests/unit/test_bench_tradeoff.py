"""margincall.bench.tradeoff: the penalty ceilings of a crash run, from its simulate JSON."""

from __future__ import annotations

import json

import pytest

from margincall.bench import tradeoff


def _result(penalties, keepers, inflow, bad_debt, all_in, base_all_in, left=0.0):
    phased = {
        "penalties": penalties,
        "keeper_rewards": keepers,
        "fund_inflow": inflow,
        "bad_debt": bad_debt,
        "left_deficit": left,
        "all_in_cost": all_in,
        "fund_start": 1000.0,
        "fund_end": 1000.0 + inflow - bad_debt,
    }
    return {
        "runs": {
            "phased": {"metrics": phased},
            "baseline": {"metrics": {"all_in_cost": base_all_in}},
        }
    }


def test_a_gapping_crash_the_flash_crash_figures():
    # flash_crash seed 1, 500 traders: phased = baseline, all-in = P + BD
    r = tradeoff.row(_result(119_362, 27_990, 91_446, 61_510, 180_874.6, 180_872.5))
    assert r["no_penalty"] == pytest.approx(1 - (180_874.6 - 119_362) / 180_872.5)
    # penalties x BD/F keep the fund whole
    x = 61_510 / 91_446
    assert r["fund_whole"] == pytest.approx(1 - (180_874.6 - 119_362 + x * 119_362) / 180_872.5)
    assert r["fund_whole"] == pytest.approx(0.216, abs=0.001)
    assert r["keeper_room"] == pytest.approx(0.7 * 180_872.5 - (180_874.6 - 119_362) - 61_510)


def test_bad_debt_above_the_funds_share_allows_no_cut_with_the_fund_whole():
    r = tradeoff.row(_result(50.0, 10.0, 40.0, 200.0, 250.0, 250.0, left=5.0))
    assert r["fund_whole"] == pytest.approx(0.0)  # x stays 1: the fund loses either way
    assert r["bad_debt"] == 205.0
    assert r["keeper_room"] < 0  # 30% is out of reach even with unpaid keepers


def test_the_table_has_a_row_per_json_file(tmp_path):
    for name in ("a-1", "b-2"):
        (tmp_path / f"{name}.json").write_text(json.dumps(_result(10, 2, 8, 0, 10, 20)))
    text = tradeoff.table(sorted(tmp_path.glob("*.json")))
    assert text.count("\n| a-1 | 50.0% | 100.0% | 100.0% |") == 1 and "| b-2 |" in text
    assert tradeoff.main([str(tmp_path / "missing")]) == 2
