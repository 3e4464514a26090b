"""The simulated population and the cure arithmetic (src/margincall/sim/population.py)."""

from __future__ import annotations

import pytest

from margincall.constants import WAD
from margincall.sim.paths import BTC, ETH
from margincall.sim.population import (
    PopulationConfig,
    PopulationError,
    build_population,
    cure_plan,
    deposit_to_cure,
    reduce_to_cure,
    scenario_population,
)

MARKETS = (ETH, BTC)


def test_same_seed_same_population_other_seed_other():
    cfg = PopulationConfig(traders=200)
    a, b = build_population(cfg, 9, MARKETS), build_population(cfg, 9, MARKETS)
    assert a.traders == b.traders and a.lps == b.lps and a.keeper == b.keeper
    c = build_population(cfg, 10, MARKETS)
    assert [t.address for t in c.traders] != [t.address for t in a.traders]


def test_draws_follow_the_config():
    cfg = PopulationConfig(traders=2_000, leverage=(2, 10), long_share=0.6, cross_share=0.2)
    pop = build_population(cfg, 1, MARKETS)
    levs = [t.leverage for t in pop.traders]
    assert 2 <= min(levs) and max(levs) <= 10
    longs = sum(t.legs[0].long for t in pop.traders) / len(pop.traders)
    assert longs == pytest.approx(0.6, abs=0.04)
    cross = [t for t in pop.traders if len(t.legs) == 2]
    assert len(cross) / len(pop.traders) == pytest.approx(0.2, abs=0.03)
    assert all(t.legs[0].market != t.legs[1].market for t in cross)
    assert {t.kind for t in cross} == {"pair", "cross"}
    assert len({t.address for t in pop.traders}) == len(pop.traders)
    assert pop.fund_seed == pytest.approx(0.01 * pop.notional)


def test_broken_correlation_population_is_all_cross_margin():
    cfg = scenario_population("broken_correlation", traders=50)
    pop = build_population(cfg, 1, MARKETS)
    assert all(len(t.legs) == 2 for t in pop.traders)
    assert scenario_population("black_thursday").cross_share == 0.2


def test_one_market_population_has_no_cross_accounts():
    pop = build_population(PopulationConfig(traders=50, cross_share=1.0), 1, (ETH,))
    assert all(len(t.legs) == 1 for t in pop.traders)


def test_curing_is_a_trait_drawn_once_per_trader():
    cfg = PopulationConfig(traders=2_000, cure_probability=0.3, cure_delay=(60, 2_700))
    pop = build_population(cfg, 1, MARKETS)
    curing = [t for t in pop.traders if t.cures(cfg.cure_probability)]
    assert len(curing) / len(pop.traders) == pytest.approx(0.3, abs=0.04)
    for t in pop.traders[:50]:
        plans = {cure_plan(cfg, t) for _ in range(5)}
        assert len(plans) == 1, "every call of a trader gets the same answer"
        (plan,) = plans
        assert plan.cures == (t in curing)
        if plan.cures:
            assert 60 <= plan.delay <= 2_700 and plan.deposit == t.cure.deposit
    # some traders never cure, whatever the number of calls
    assert any(not cure_plan(cfg, t).cures for t in pop.traders)
    never = PopulationConfig(traders=200, cure_probability=0.0)
    assert not any(cure_plan(never, t).cures for t in build_population(never, 1, MARKETS).traders)


def test_cure_probability_sweep_changes_who_cures_and_nothing_else():
    low = build_population(PopulationConfig(traders=500, cure_probability=0.25), 4, MARKETS)
    high = build_population(PopulationConfig(traders=500, cure_probability=0.5), 4, MARKETS)
    assert [t.cure for t in low.traders] == [t.cure for t in high.traders]
    assert [t.collateral for t in low.traders] == [t.collateral for t in high.traders]
    cure_low = {t.index for t in low.traders if t.cures(0.25)}
    cure_high = {t.index for t in high.traders if t.cures(0.5)}
    assert cure_low < cure_high, "the traders who cure at 0.25 are among those at 0.5"


def test_reduce_share_splits_curers_between_deposit_and_reduction():
    cfg = PopulationConfig(traders=1_000, cure_probability=1.0, reduce_share=0.4)
    pop = build_population(cfg, 2, MARKETS)
    deposit = sum(t.cure.deposit for t in pop.traders) / len(pop.traders)
    assert deposit == pytest.approx(0.6, abs=0.05)


def test_deposit_and_reduce_reach_the_target_ratio():
    equity, maintenance = 110 * WAD, 100 * WAD  # ratio 1.1
    d = deposit_to_cure(equity, maintenance, 2.0)
    assert (equity + d) / maintenance == pytest.approx(2.0)
    assert deposit_to_cure(300 * WAD, maintenance, 2.0) == 0
    f = reduce_to_cure(equity, maintenance, 2.0)
    assert equity / (maintenance * (1 - f)) == pytest.approx(2.0)
    assert reduce_to_cure(-5, maintenance, 2.0) == 1.0
    assert reduce_to_cure(equity, 0, 2.0) == 0.0


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"traders": 0}, "traders"),
        ({"leverage": (5.0, 2.0)}, "leverage"),
        ({"leverage_dist": "pareto"}, "leverage_dist"),
        ({"cure_probability": 1.5}, "cure_probability"),
        ({"cure_target": 1.0}, "cure_target"),
    ],
)
def test_bad_settings_are_refused(kwargs, reason):
    with pytest.raises(PopulationError, match=reason):
        PopulationConfig(**kwargs)
