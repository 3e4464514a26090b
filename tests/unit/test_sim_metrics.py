"""Figures of a simulation run (src/margincall/sim/metrics.py) from a hand-made record."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner

from margincall.cli import cli
from margincall.constants import WAD, State
from margincall.math import RiskParams
from margincall.sim.metrics import (
    compare,
    metrics_csv,
    percentile,
    sample_columns,
    samples_csv,
    summarize,
    table,
    to_json,
)
from margincall.sim.record import RunRecord

UNIT = 10**18


def record(mode: str = "phased") -> RunRecord:
    r = RunRecord(
        mode=mode,
        params=RiskParams(),
        block_time=12,
        decimals=18,
        markets=("ETH-USD",),
        duration=600,
        end=1_200,
        fund_start=1_000 * UNIT,
        pool_start=50_000 * UNIT,
    )
    # slot, t, price, fund, pool, open, six state counts, five ratio percentiles
    for slot, fund in ((0, 1_000), (5, 1_200), (10, 700), (15, 900)):
        r.samples.append(
            (
                slot,
                slot * 12,
                2_000.0,
                fund * UNIT,
                50_000 * UNIT,
                3,
                3,
                0,
                0,
                0,
                0,
                0,
                1,
                2,
                3,
                4,
                5,
            )
        )
    for account, tranche, penalty, full, state in (
        ("a", 1, 15, False, State.LIQUIDATABLE),
        ("a", 2, 10, False, State.LIQUIDATABLE),
        ("a", 3, 5, True, State.CRITICAL),
        ("b", 1, 0, True, State.BANKRUPT),
    ):
        r.liquidations.append(
            {
                "slot": 1,
                "t": 12 * tranche,
                "account": account,
                "tranche": tranche,
                "state": int(state),
                "fraction": WAD // 4,
                "closed_notional": 1_000 * WAD,
                "penalty": penalty * UNIT,
                "keeper_reward": penalty * UNIT // 5,
                "fund_fee": penalty * UNIT - penalty * UNIT // 5,
                "full": full,
                "ratio_after": WAD,
            }
        )
    r.bad_debts.append(
        {
            "slot": 1,
            "t": 12,
            "account": "b",
            "amount": 400 * UNIT,
            "paid_by_fund": 400 * UNIT,
            "socialised": 0,
        }
    )
    r.calls += [
        {"slot": 0, "t": 0, "account": "a", "reward": UNIT},
        {"slot": 0, "t": 0, "account": "c", "reward": UNIT},
    ]
    # both calls ended solvent (c cured by deposit, a tranched at ratio >= 1): rewards paid
    r.call_rewards_paid += [
        {"slot": 1, "t": 12, "account": "a", "amount": UNIT},
        {"slot": 2, "t": 24, "account": "c", "amount": UNIT},
    ]
    r.clears += [
        {"slot": 2, "t": 24, "account": "c", "by_trader": True, "how": "deposit"},
        {"slot": 2, "t": 24, "account": "a", "by_trader": False, "how": ""},
    ]
    r.delays = [1, 1, 2, 1]
    r.keeper_gas = 1_000_000
    r.keeper_fee_tokens = 2.0
    r.slots = 100
    r.final = {"fund_end": 900 * UNIT, "pool_end": 51_000 * UNIT, "conserved": True}
    return r


def test_percentile_is_nearest_rank():
    assert percentile([], 50) == 0
    assert percentile([3, 1, 2], 50) == 2
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([1, 1, 1, 40], 99) == 40


def test_summary_adds_up_the_events():
    m = summarize(record())
    assert m["penalties"] == 30 and m["call_rewards"] == 2 and m["paid_by_traders"] == 32
    assert m["bad_debt"] == 400 and m["paid_by_fund"] == 400 and m["socialised"] == 0
    assert m["accounts_bankrupt"] == 1
    assert m["liquidations"] == 4 and m["full_closes"] == 2 and m["accounts_liquidated"] == 2
    assert m["tranches_per_account_max"] == 3 and m["tranches_per_account_mean"] == 2
    assert m["tranches_histogram"] == {1: 1, 3: 1}
    assert m["notional_liquidated"] == 4_000
    assert m["accounts_called"] == 2 and m["accounts_cured"] == 1
    assert m["accounts_cured_by_deposit"] == 1 and m["accounts_cured_by_reduce"] == 0
    assert (m["delay_p50"], m["delay_p99"], m["delay_max"]) == (1, 2, 2)
    assert m["fund_drawdown"] == 500 and m["fund_min"] == 700
    assert m["keeper_rewards"] == 6 + 2  # tranche shares (a bankrupt close's too), call rewards
    assert m["keeper_profit"] == pytest.approx(6)
    assert m["lp_pnl"] == 1_000 and m["conserved"] is True


def test_a_call_reward_returned_below_ratio_1_is_not_a_cost_to_the_trader():
    r = record()
    # a's call ends in a close below ratio 1 instead: its parked reward goes back to it
    r.call_rewards_paid = [e for e in r.call_rewards_paid if e["account"] != "a"]
    r.call_rewards_returned.append({"slot": 1, "t": 36, "account": "a", "amount": UNIT})
    m = summarize(r)
    assert m["call_rewards"] == 1 and m["paid_by_traders"] == 31
    assert (m["call_rewards_paid"], m["call_rewards_returned"], m["call_rewards_parked"]) == (
        1,
        1,
        0,
    )
    assert m["keeper_rewards"] == 6 + 1  # only the paid call reward is the keeper's


def figures(paid: float, bad_debt: float = 0.0, **extra: float) -> dict[str, float]:
    """The figures `compare` reads, as `summarize` would give them."""
    out = {
        "socialised": 0.0,
        "paid_by_traders": paid,
        "penalties": paid,
        "bad_debt": bad_debt,
        "paid_by_fund": bad_debt,
        "left_deficit": 0.0,
        "left_liquidatable_notional": 0.0,
    }
    out.update(extra)
    out.setdefault("all_in_cost", paid + bad_debt + out["left_deficit"])
    return out


def test_comparison_against_the_section_7_targets():
    phased, baseline = figures(60.0), figures(100.0)
    c = compare(phased, baseline)
    assert c["socialised_zero"] and c["penalty_cut"] == pytest.approx(0.40) and c["penalty_cut_met"]
    assert c["penalty_status"] == "ok"
    c = compare({**figures(75.0), "socialised": 3}, baseline)
    assert not c["socialised_zero"] and not c["penalty_cut_met"]
    assert c["penalty_status"].startswith("MISS (")
    assert "penalty_cut" not in compare(phased, None)


def test_penalty_target_is_not_met_when_phased_bad_debt_exceeds_the_baseline():
    # the flash-crash shape: half the penalties, but bankruptcies pay none and the fund pays more
    phased, baseline = figures(60_000.0, bad_debt=143_000.0), figures(120_000.0, bad_debt=61_000.0)
    c = compare(phased, baseline)
    assert c["penalty_cut"] == pytest.approx(0.5) and c["penalty_cut_reached"]
    assert c["bad_debt_above_baseline"] and c["all_in_cut"] < 0
    assert not c["penalty_cut_met"]
    assert c["penalty_status"].startswith("MISS with bad debt counted")
    assert (c["bad_debt"], c["baseline_bad_debt"]) == (143_000.0, 61_000.0)
    assert (c["paid_by_fund"], c["baseline_paid_by_fund"]) == (143_000.0, 61_000.0)


def test_unliquidated_notional_left_open_is_not_a_saving():
    # the phased run stopped liquidating: few penalties, but a large liquidatable book and a
    # deficit are still open at the end
    phased = figures(
        40.0, left_deficit=10.0, left_liquidatable_notional=5_000.0, all_in_cost=40 + 10 + 75
    )
    c = compare(phased, figures(100.0))
    assert c["penalty_cut"] == pytest.approx(0.6)
    assert c["bad_debt_above_baseline"], "an open deficit is bad debt not yet realised"
    assert not c["penalty_cut_met"]


def test_summary_counts_what_is_left_open_in_the_all_in_cost():
    r = record()
    r.final.update(
        {
            "open_accounts": 2,
            "open_notional": 9_000 * WAD,
            "left_liquidatable": 1,
            "left_liquidatable_notional": 2_000 * WAD,
            "open_deficit": 5 * WAD,
        }
    )
    m = summarize(r)
    assert (m["left_open"], m["left_open_notional"]) == (2, 9_000)
    assert (m["left_liquidatable"], m["left_liquidatable_notional"]) == (1, 2_000)
    assert m["left_deficit"] == 5
    assert m["left_penalty"] == pytest.approx(30)  # 1.5% of 2,000
    assert m["all_in_cost"] == pytest.approx(32 + 400 + 5 + 30)


def test_renderings_carry_every_mode():
    rec = {"phased": record("phased"), "baseline": record("baseline")}
    result = {
        "scenario": "unit",
        "seed": 1,
        "population": {"traders": 3},
        "path": {"hours": 0.2},
        "runs": {
            m: {"metrics": summarize(r), "timing": {"wall_seconds": 1.0, "rpc_requests": 9}}
            for m, r in rec.items()
        },
    }
    result["comparison"] = compare(
        result["runs"]["phased"]["metrics"], result["runs"]["baseline"]["metrics"]
    )
    assert json.loads(to_json(result))["runs"]["phased"]["metrics"]["penalties"] == 30
    rows = list(csv.reader(io.StringIO(metrics_csv(result))))
    assert rows[0] == ["metric", "phased", "baseline"]
    assert ["penalties", "30.0", "30.0"] in rows
    samples = list(csv.reader(io.StringIO(samples_csv(rec["phased"]))))
    assert tuple(samples[0]) == sample_columns(("ETH-USD",)) and len(samples) == 5
    t = table(result)
    assert t.row_count > 20
    labels = list(t.columns[0].cells)
    status = list(t.columns[1].cells)[labels.index("penalty target (>= 30% less, both lines)")]
    assert "ok" in status or "MISS" in status
    assert any("bad debt phased / baseline" in label for label in labels)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--leverage", "ten"], "LOW:HIGH"),
        (["--leverage", "9:2"], "LOW above HIGH"),
        (["--scenario", "tulips"], "Invalid value"),
        (["--cure-probability", "2"], "Invalid value"),
    ],
)
def test_simulate_command_refuses_bad_input_before_starting_anything(args, message):
    result = CliRunner().invoke(cli, ["simulate", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_simulate_command_refuses_a_malformed_csv(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text("when,price\n0,1\n")
    result = CliRunner().invoke(cli, ["simulate", "--csv", str(f)])
    assert result.exit_code == 2
    assert "timestamp" in result.output
