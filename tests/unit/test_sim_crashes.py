"""Crash paths from public accounts (src/margincall/sim/data, margincall.sim.crashes): the
loader, the files' shape, their documented drawdowns, and that they run by name."""

from __future__ import annotations

import numpy as np
import pytest

from margincall.sim import crashes
from margincall.sim.paths import (
    BTC,
    CRASH_PATHS,
    DATA_DIR,
    ETH,
    SCENARIOS,
    PathError,
    crash_path,
    from_csv,
    scenario_path,
)
from margincall.sim.population import scenario_population

NAMED_SHAPES = ("black_thursday", "flash_crash", "slow_bleed", "broken_correlation", "random")


def test_at_least_four_crash_paths_differ_from_the_named_shapes():
    assert len(CRASH_PATHS) >= 4
    assert not set(CRASH_PATHS) & set(NAMED_SHAPES)
    assert {c.name for c in crashes.CRASHES} == set(CRASH_PATHS)
    assert set(CRASH_PATHS) <= set(SCENARIOS)  # `simulate --scenario <name>` accepts them


@pytest.mark.parametrize("name", CRASH_PATHS)
def test_crash_path_loads_with_increasing_times_from_zero_and_positive_prices(name):
    path = crash_path(name)
    assert path.name == name and path.markets == (ETH, BTC)
    times = np.array(path.times)
    assert times[0] == 0 and (np.diff(times) > 0).all()
    step = crashes.BY_NAME[name].step
    assert set(np.diff(times)) == {step}
    for market in path.markets:
        prices = np.array(path.prices[market])
        assert (prices > 0).all() and np.isfinite(prices).all()


@pytest.mark.parametrize("name", CRASH_PATHS)
def test_crash_path_has_its_documented_drawdown_and_passes_its_cited_anchors(name):
    crash = crashes.BY_NAME[name]
    path = crash_path(name)
    drawdown = path.drawdown(ETH)
    # at least as deep as the cited low, at most 3 points deeper (noise between anchors)
    assert crash.eth_drawdown - 0.03 <= drawdown <= crash.eth_drawdown + 1e-6
    for i in crash.cited:
        hour, eth, btc = crash.anchors[i]
        at = path.times.index(round(hour * 3600 / crash.step) * crash.step)
        assert path.prices[ETH][at] == pytest.approx(eth, rel=1e-6)
        assert path.prices[BTC][at] == pytest.approx(btc, rel=1e-6)


@pytest.mark.parametrize("name", CRASH_PATHS)
def test_stored_csv_is_what_the_generator_builds(name):
    """The committed file is the generator's output (rerun `python -m margincall.sim.crashes`
    after changing an anchor)."""
    built = crashes.build(crashes.BY_NAME[name])
    stored = crash_path(name)
    assert stored.times == built.times
    for market in built.markets:
        np.testing.assert_allclose(stored.prices[market], built.prices[market], rtol=1e-7)


def test_oracle_gap_holds_the_stale_answer_then_moves_in_one_update():
    path = crash_path("oracle_gap")
    eth = np.array(path.prices[ETH])
    steps = eth[1:] / eth[:-1] - 1
    big = np.flatnonzero(np.abs(steps) > 0.05)
    assert len(big) == 1 and steps[big[0]] == pytest.approx(3_654 / 4_330 - 1, rel=1e-6)
    stall = eth[big[0] - 45 : big[0] + 1]  # the 45 minutes before the update
    assert (stall == stall[0]).all()


def test_tariff_whipsaw_goes_down_and_comes_back():
    path = crash_path("tariff_whipsaw_2025")
    eth = np.array(path.prices[ETH])
    low = int(eth.argmin())
    assert path.times[low] <= 3 * 3600
    assert eth[-1] / eth[low] - 1 > 0.04  # back up more than 4% from the low


def test_scenario_path_and_seed_do_not_change_a_crash_path():
    a, b = scenario_path("terra_week_2022", 1), scenario_path("terra_week_2022", 2)
    assert a.times == b.times and a.prices == b.prices
    assert scenario_population("terra_week_2022").traders > 0


def test_comment_lines_are_skipped_and_an_unknown_crash_is_refused(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("# a comment\ntimestamp,price\n# another\n0,10\n60,9\n")
    assert from_csv(f).prices[ETH] == (10.0, 9.0)
    with pytest.raises(PathError, match="unknown crash path"):
        crash_path("no_such_crash")
    assert (DATA_DIR / "README.md").exists()
