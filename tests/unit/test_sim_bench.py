"""The benchmark suite (margincall.bench.suite) without running a benchmark: its block
writer, what the summary reads when a step fails, and that a partial simulator
run leaves the full table alone."""

from __future__ import annotations

import importlib
import json
import subprocess
from pathlib import Path

import pytest

from margincall.bench import suite

ROOT = Path(__file__).resolve().parents[2]


bench = suite

DOC = """# Benchmarks

Hand-written intro.

<!-- sim:begin -->
old sim table
<!-- sim:end -->

Hand-written reading of the results.
"""


@pytest.fixture
def doc(tmp_path, monkeypatch):
    path = tmp_path / "benchmarks.md"
    path.write_text(DOC)
    monkeypatch.setattr(bench, "DOC", path)
    monkeypatch.setattr(bench, "IMG", tmp_path / "img")
    monkeypatch.setattr(bench, "STORE", tmp_path / "store")
    return path


def test_write_block_replaces_only_its_block_and_keeps_the_text_around(doc):
    bench.write_block("sim", "new sim table", "Stress simulator", doc)
    text = doc.read_text()
    assert "new sim table" in text and "old sim table" not in text
    assert "Hand-written intro." in text and "Hand-written reading of the results." in text
    assert text.count("<!-- sim:begin -->") == 1 and text.count("<!-- sim:end -->") == 1
    assert bench.read_block("sim", doc).strip().endswith("new sim table")
    # a block the document does not have yet goes at the end, under its title
    bench.write_block("scan", "scan table", "Keeper scan throughput", doc)
    text = doc.read_text()
    assert text.index("## Keeper scan throughput") > text.index("<!-- sim:end -->")
    assert "new sim table" in text


def _stale_reaction(store: Path) -> None:
    store.mkdir(parents=True, exist_ok=True)
    run = {
        "accounts": 1_000,
        "gas_limit": 60_000_000,
        "liquidated": 1_000,
        "blocks_after_update": {"1": 1_000},
        "all_in_first_block": True,
        "max_blocks": 1,
    }
    (store / "reaction.json").write_text(json.dumps([run]))


def test_a_failed_reaction_run_removes_the_stored_figures_and_the_summary_says_failed(
    doc, monkeypatch
):
    _stale_reaction(bench.STORE)

    def fails(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, stdout="", stderr="keeper died")

    monkeypatch.setattr(bench.subprocess, "run", fails)
    failed: dict[str, str] = {}
    bench._step("reaction", failed, lambda: bench.run_reaction(True))
    assert "reaction" in failed
    assert not (bench.STORE / "reaction.json").exists(), "no stale figure left to read"
    _stale_reaction(bench.STORE)  # even if one reappears, a failure in this run wins
    bench.run_summary(None, None, failed, set(), doc)
    summary = bench.read_block("summary", doc)
    assert "benchmark failed in this run | FAILED" in summary
    assert "ok at 60M" not in summary


def test_figures_from_an_earlier_run_are_named_with_their_date(doc):
    _stale_reaction(bench.STORE)
    bench.run_summary(None, None, {}, set(), doc)
    summary = bench.read_block("summary", doc)
    assert "ok at 60M" in summary
    assert "Read from earlier runs" in summary and "reaction (" in summary


def _result(name: str) -> dict:
    figures = {"paid_by_traders": 1.0, "bad_debt": 0.0, "paid_by_fund": 0.0, "socialised": 0.0}
    cmp = {"penalty_cut": 0.5, "all_in_cut": 0.5, "penalty_status": "ok"}
    return {
        "scenario": name,
        "runs": {"phased": {"metrics": figures}, "baseline": {"metrics": figures}},
        "comparison": cmp,
    }


def test_a_partial_simulator_run_does_not_overwrite_the_full_table(doc, monkeypatch):
    # the module (the package's `simulate` attribute is the function of the same name)
    simulate_module = importlib.import_module("margincall.sim.simulate")

    class Outcome:
        def __init__(self, name: str):
            self.result = _result(name)

    monkeypatch.setattr(
        simulate_module, "simulate", lambda config, progress: Outcome(config.scenario)
    )
    results = bench.run_sim(3, 1, True, ("flash_crash",))
    assert set(results) == {"flash_crash"}
    assert doc.read_text() == DOC
    assert not bench.IMG.exists()


def test_the_scan_row_reports_the_sdk_path_not_the_fastest():
    rows = [
        {"accounts": 1_000, "way": "batched", "accounts_per_s": 60_000},
        {"accounts": 1_000, "way": bench.SCAN_HEADLINE, "accounts_per_s": 15_000},
        {"accounts": 10_000, "way": bench.SCAN_HEADLINE, "accounts_per_s": 25_000},
    ]
    cell = bench.scan_cell({"rows": rows})
    measured, status = cell.rsplit(" | ", 1)
    assert "1,000 accounts: 15,000/s" in measured and status == "MISS"


def test_penalty_cell_misses_a_scenario_whose_cut_vanishes_with_bad_debt():
    good = {
        "penalty_cut": 0.4,
        "penalty_cut_reached": True,
        "all_in_cut": 0.35,
        "all_in_cut_reached": True,
        "penalty_cut_met": True,
        "bad_debt_above_baseline": False,
        "bad_debt": 0.0,
        "baseline_bad_debt": 0.0,
    }
    bad = {
        **good,
        "penalty_cut": 0.5,
        "all_in_cut": -0.12,
        "all_in_cut_reached": False,
        "penalty_cut_met": False,
        "bad_debt_above_baseline": True,
        "bad_debt": 142_769.0,
        "baseline_bad_debt": 61_399.0,
    }
    cell = bench.penalty_cell(
        {"slow_bleed": {"comparison": good}, "flash_crash": {"comparison": bad}}
    )
    assert cell.endswith("| MISS on flash_crash")
    assert "flash_crash +50.0% but all-in -12.0%" not in cell  # signs: a cut shows as negative
    assert "flash_crash -50.0% but all-in +12.0% (bad debt 142,769 vs 61,399)" in cell
