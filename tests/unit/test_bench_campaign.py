"""The crash campaign (margincall.bench.campaign) without running a simulation: the CLI call
of each run, the worst case per path over the seeds, every run and every miss in its block,
and a run that printed no JSON shown as failed."""

from __future__ import annotations

import json
import subprocess

from margincall.bench import campaign
from margincall.bench.campaign import Run, markdown, run_one
from margincall.sim.paths import SCENARIOS


def _result(
    scenario: str,
    seed: int,
    *,
    socialised=0.0,
    bad=0.0,
    base_bad=0.0,
    cost=0.0,
    base_cost=100.0,
    p99=1,
) -> dict:
    def metrics(soc, bad_debt, all_in, delay):
        return {
            "socialised": soc,
            "bad_debt": bad_debt,
            "left_deficit": 0.0,
            "all_in_cost": all_in,
            "delay_p99": delay,
        }

    return {
        "scenario": scenario,
        "seed": seed,
        "runs": {
            "phased": {"metrics": metrics(socialised, bad, cost, p99)},
            "baseline": {"metrics": metrics(0.0, base_bad, base_cost, 0)},
        },
    }


def _run(scenario, seed, **kw) -> Run:
    result = _result(scenario, seed, **kw)
    run = Run(scenario, seed, 0, 1.0, result)
    run.misses = campaign.check_misses(result)
    run.exit_code = 1 if run.misses else 0
    return run


def test_each_run_is_the_cli_with_baseline_and_check():
    cmd = campaign.command("oracle_gap", 2, 500, ["--gas-price-gwei", "50"])
    assert cmd[1:] == [
        "simulate",
        "--scenario",
        "oracle_gap",
        "--seed",
        "2",
        "--traders",
        "500",
        "--baseline",
        "--check",
        "--json",
        "--quiet",
        "--gas-price-gwei",
        "50",
    ]


def test_the_campaign_covers_every_named_scenario_and_crash_path_and_three_seeds(monkeypatch):
    from margincall.sim.paths import CRASH_PATHS

    ran = []

    def failed(scenario, seed, traders, extra):
        ran.append((scenario, seed))
        return Run(scenario, seed, 1, 0.0, error="not run")

    monkeypatch.setattr(campaign, "run_one", failed)
    assert campaign.main(["--traders", "5"]) == 1  # every run failed: exit 1
    named = ("black_thursday", "flash_crash", "slow_bleed", "broken_correlation", "random")
    assert set(SCENARIOS) == set(named) | set(CRASH_PATHS)
    assert sorted(ran) == sorted((s, seed) for s in SCENARIOS for seed in (1, 2, 3))


def test_the_block_shows_the_worst_seed_of_each_target_every_run_and_every_miss():
    runs = [
        _run("flash_crash", 1, cost=20.0),
        _run("flash_crash", 2, cost=90.0, bad=5.0, base_bad=1.0),  # the worst cut and debt
        _run("flash_crash", 3, cost=10.0, p99=3),  # the worst delay
        _run("oracle_gap", 1, cost=0.0, base_cost=0.0),  # nothing to cut: met
    ]
    text = markdown(runs, 500, (1, 2, 3), [])
    worst = next(line for line in text.splitlines() if line.startswith("| flash_crash |"))
    assert "5 / 1 (seed 2)" in worst and "-10.0% (seed 2)" in worst and "3 (seed 3)" in worst
    assert "3 miss(es)" in worst
    assert "| oracle_gap | 1 | 0 | 0 / 0 | both 0 | 1 | ok |" in text
    assert text.count("| flash_crash | ") == 4  # the worst row and three runs
    assert "**4 runs: 2 met every target, 3 miss(es), 0 failed.**" in text
    assert "- flash_crash seed 3: liquidation delay p99 3 blocks (target <= 2)" in text


def test_a_run_that_prints_no_json_is_failed_not_met(monkeypatch):
    def fake(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="Error: anvil died")

    monkeypatch.setattr(campaign.subprocess, "run", fake)
    run = run_one("slow_bleed", 1, 10)
    assert not run.ok and run.result is None and "anvil died" in run.error
    text = markdown([run], 10, (1,), [])
    assert "FAILED (seeds 1)" in text and "0 met every target" in text and "1 failed" in text


def test_keep_saves_each_measured_runs_json(monkeypatch, tmp_path):
    def fake(scenario, seed, traders, extra):
        if seed == 2:
            return Run(scenario, seed, 1, 0.0, error="not run")
        return _run(scenario, seed, cost=20.0)

    monkeypatch.setattr(campaign, "run_one", fake)
    keep = tmp_path / "runs"
    argv = ["--traders", "5", "--scenarios", "flash_crash", "--seeds", "1,2", "--keep", str(keep)]
    assert campaign.main(argv) == 1  # seed 2 failed
    assert sorted(p.name for p in keep.iterdir()) == ["flash_crash-1.json"]
    saved = json.loads((keep / "flash_crash-1.json").read_text())
    assert saved == _result("flash_crash", 1, cost=20.0)
