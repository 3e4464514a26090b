"""`margincall simulate --check`: the targets' logic on synthetic metrics (no chain), and the
command's exit codes with the simulation replaced by a fixed outcome."""

from __future__ import annotations

import importlib

import pytest
from click.testing import CliRunner

from margincall.cli.simulate import simulate
from margincall.sim.metrics import DELAY_TARGET, PENALTY_TARGET, check_misses
from margincall.sim.simulate import Outcome

# the module (the package `margincall.sim` re-exports its function under the same name)
simulate_module = importlib.import_module("margincall.sim.simulate")


def _metrics(**over) -> dict:
    m = {
        "socialised": 0.0,
        "bad_debt": 100.0,
        "left_deficit": 0.0,
        "all_in_cost": 6_000.0,
        "delay_p99": 1,
    }
    m.update(over)
    return m


def _result(phased: dict | None = None, baseline: dict | None = None) -> dict:
    base = _metrics(bad_debt=200.0, all_in_cost=10_000.0)
    return {
        "scenario": "flash_crash",
        "seed": 2,
        "runs": {
            "phased": {"metrics": _metrics(**(phased or {}))},
            "baseline": {"metrics": {**base, **(baseline or {})}},
        },
    }


def test_a_run_that_meets_every_target_has_no_miss():
    assert check_misses(_result()) == []
    # exactly at the limits: bad debt equal, all-in cost exactly 30% below, p99 at 2 blocks
    assert check_misses(_result({"bad_debt": 200.0, "all_in_cost": 7_000.0, "delay_p99": 2})) == []
    assert PENALTY_TARGET == 0.30 and DELAY_TARGET == 2


def test_both_all_in_costs_zero_is_met_but_any_cost_against_a_zero_baseline_misses():
    zero = {"bad_debt": 0.0, "all_in_cost": 0.0}
    assert check_misses(_result(zero, zero)) == []
    [miss] = check_misses(_result({"bad_debt": 0.0, "all_in_cost": 1.0}, zero))
    assert "all-in cost to traders 1.00 (against the baseline's 0.00" in miss


@pytest.mark.parametrize(
    ("phased", "expected"),
    [
        ({"socialised": 0.01}, "flash_crash seed 2: socialised loss 0.01 (target 0)"),
        (
            {"bad_debt": 150.0, "left_deficit": 60.0},
            "flash_crash seed 2: phased bad debt 210.00 above the baseline's 200.00",
        ),
        (
            {"all_in_cost": 7_000.01},
            "flash_crash seed 2: all-in cost to traders 7,000.01 (-30.0% vs the baseline's",
        ),
        (
            {"delay_p99": 3},
            "flash_crash seed 2: liquidation delay p99 3 blocks (target <= 2)",
        ),
    ],
    ids=["socialised", "bad-debt-with-open-deficit", "all-in-cut-short", "delay"],
)
def test_each_target_missed_is_listed(phased, expected):
    [miss] = check_misses(_result(phased))
    assert miss.startswith(expected)


def test_every_miss_of_a_run_is_listed_not_only_the_first():
    misses = check_misses(
        _result({"socialised": 5.0, "bad_debt": 900.0, "all_in_cost": 20_000.0, "delay_p99": 9})
    )
    assert len(misses) == 4


def test_the_check_needs_the_baseline_run():
    result = _result()
    del result["runs"]["baseline"]
    with pytest.raises(ValueError, match="needs both runs"):
        check_misses(result)


@pytest.fixture
def fixed_outcome(monkeypatch):
    """`simulate` with the chain replaced: returns the result it is given."""
    box: dict = {}

    def fake(config, modes, progress=None, log=None):
        box["modes"] = modes
        return Outcome(box["result"])

    monkeypatch.setattr(simulate_module, "simulate", fake)
    return box


ARGS = ["--scenario", "flash_crash", "--traders", "10", "--quiet", "--json", "--baseline"]


def test_check_exits_1_listing_the_misses(fixed_outcome):
    fixed_outcome["result"] = _result({"socialised": 3.0, "delay_p99": 4})
    out = CliRunner().invoke(simulate, [*ARGS, "--check"])
    assert out.exit_code == 1, out.output
    assert "2 target(s) missed" in out.output
    assert "socialised loss 3.00" in out.output and "delay p99 4 blocks" in out.output
    assert fixed_outcome["modes"] == ("phased", "baseline")


def test_check_exits_0_when_every_target_is_met_and_without_check_a_miss_exits_0(
    fixed_outcome,
):
    fixed_outcome["result"] = _result()
    assert CliRunner().invoke(simulate, [*ARGS, "--check"]).exit_code == 0
    fixed_outcome["result"] = _result({"socialised": 3.0})
    assert CliRunner().invoke(simulate, ARGS).exit_code == 0


def test_check_without_baseline_is_a_usage_error(fixed_outcome):
    out = CliRunner().invoke(simulate, ["--scenario", "flash_crash", "--quiet", "--check"])
    assert out.exit_code == 2
    assert "--check compares with the baseline: add --baseline" in out.output
    assert "modes" not in fixed_outcome  # nothing ran
