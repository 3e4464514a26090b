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
    trader_rng,
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


def test_cure_plans_follow_the_probability_and_stay_inside_the_grace_period():
    cfg = PopulationConfig(cure_probability=0.3, cure_delay=(60, 2_700))
    rng = trader_rng(1, 0, "cure")
    plans = [cure_plan(cfg, rng) for _ in range(2_000)]
    share = sum(p.cures for p in plans) / len(plans)
    assert share == pytest.approx(0.3, abs=0.04)
    assert all(60 <= p.delay <= 2_700 for p in plans if p.cures)
    never = PopulationConfig(cure_probability=0.0)
    assert not any(cure_plan(never, rng).cures for _ in range(100))


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
