"""Price paths of the stress simulator (src/margincall/sim/paths.py): pure, no chain."""

from __future__ import annotations

import numpy as np
import pytest

from margincall.sim.paths import (
    BTC,
    CRASH_PATHS,
    ETH,
    SCENARIOS,
    PathError,
    PricePath,
    black_thursday,
    broken_correlation,
    flash_crash,
    from_csv,
    random_path,
    scenario_path,
    slow_bleed,
)


@pytest.mark.parametrize("name", sorted(set(SCENARIOS) - set(CRASH_PATHS)))
def test_same_seed_gives_the_same_path_and_another_seed_another(name):
    a, b, c = scenario_path(name, 3), scenario_path(name, 3), scenario_path(name, 4)
    assert a.times == b.times and a.prices == b.prices
    assert a.prices != c.prices


def test_black_thursday_falls_43_percent_in_14_hours_of_minutes_with_rebounds():
    p = black_thursday(1)
    assert p.duration == 14 * 3600 and len(p) == 14 * 60 + 1
    assert set(np.diff(p.times)) == {60}
    assert p.move(ETH) == pytest.approx(-0.43, abs=1e-9)
    eth = np.array(p.prices[ETH])
    half_hours = eth[::30]
    rebounds = sum(1 for x, y in zip(half_hours, half_hours[1:], strict=False) if y > x * 1.03)
    assert rebounds >= 5, "the crash comes in legs with intraday rebounds"
    assert p.move(BTC) == pytest.approx(0.57**0.9 - 1), "BTC falls 90% as far (in log terms)"


def test_flash_crash_is_minus_30_in_five_minutes_then_plus_20():
    p = flash_crash(1)
    eth = np.array(p.prices[ETH])
    top = eth[10]
    bottom = eth[15]
    assert bottom / top == pytest.approx(0.70, abs=1e-9)
    assert eth[25] / bottom == pytest.approx(1.20, abs=1e-9)
    assert p.drawdown(ETH) == pytest.approx(-0.30, abs=0.01)


def test_slow_bleed_is_minus_60_over_seven_days():
    p = slow_bleed(2)
    assert p.duration == 7 * 86_400
    assert p.move(ETH) == pytest.approx(-0.60, abs=1e-9)
    assert p.move(BTC) == pytest.approx(-0.60, abs=1e-9)


def test_broken_correlation_moves_eth_and_not_btc():
    p = broken_correlation(1)
    assert p.move(ETH) == pytest.approx(-0.40, abs=1e-9)
    assert abs(p.move(BTC)) < 1e-9
    assert max(abs(x / p.start(BTC) - 1) for x in p.prices[BTC]) < 0.05


def test_random_path_has_jumps_and_correlated_markets():
    p = random_path(11, hours=48, jumps_per_day=12)
    r = {m: np.diff(np.log(p.prices[m])) for m in p.markets}
    assert np.corrcoef(r[ETH], r[BTC])[0, 1] > 0.5
    assert np.min(r[ETH]) < -0.03, "jumps are larger than the minute-to-minute diffusion"


def test_csv_round_trip_and_iso_timestamps(tmp_path):
    p = flash_crash(5)
    f = tmp_path / "crash.csv"
    p.to_csv(f)
    q = from_csv(f)
    assert q.times == p.times
    for m in p.markets:
        assert np.allclose(q.prices[m], p.prices[m], rtol=1e-7)
    g = tmp_path / "iso.csv"
    g.write_text(
        "timestamp,price\n2020-03-12T00:01:00Z,190\n2020-03-12T00:00:00Z,194\n"
        "2020-03-12T00:02:00Z,111.5\n"
    )
    q = from_csv(g)
    assert q.times == (0, 60, 120) and q.markets == (ETH,)
    assert q.prices[ETH] == (194.0, 190.0, 111.5)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("time,price\n0,1\n", "timestamp"),
        ("timestamp,DOGE\n0,1\n", "price column"),
        ("timestamp,price\n0,1\n0,2\n", "share a timestamp"),
        ("timestamp,price\n0,1\n60,-3\n", "non-positive"),
        ("timestamp,price\nyesterday,1\n", "ISO 8601"),
        ("timestamp,price\n", "no rows"),
    ],
)
def test_malformed_csv_is_refused_with_its_reason(tmp_path, text, reason):
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(PathError, match=reason):
        from_csv(f)


def test_path_invariants_are_checked():
    with pytest.raises(PathError, match="start at 0"):
        PricePath("x", "", (5, 10), {ETH: (1.0, 2.0)})
    with pytest.raises(PathError, match="increase"):
        PricePath("x", "", (0, 0), {ETH: (1.0, 2.0)})
    with pytest.raises(PathError, match="unknown scenario"):
        scenario_path("tulip_mania", 1)
