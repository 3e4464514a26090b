"""The stress simulator on Ape's test chain: a small population through the flash crash,
phased and baseline, checked against what the chain itself says.

One setup serves every test of the module (30 traders, 10x-heavy so the crash liquidates
many of them); each mode replays from the same snapshot.
"""

from __future__ import annotations

import pytest

from margincall.constants import WAD, State
from margincall.sdk import MarginEngineClient
from margincall.sim import PopulationConfig, SimConfig, Simulation
from margincall.sim.chain import Rpc, decode_statuses
from margincall.sim.metrics import summarize
from margincall.sim.paths import flash_crash

CONFIG = SimConfig(
    scenario="flash_crash",
    seed=3,
    population=PopulationConfig(traders=30, leverage=(4.0, 10.0), cure_probability=0.5),
    tail=1_800,
)


@pytest.fixture(scope="module")
def sim(project, chain, owner):
    rpc = Rpc(chain.provider.uri)
    s = Simulation(rpc, project, owner, flash_crash(CONFIG.seed), CONFIG)
    s.setup()
    s.restore()
    yield s
    s.restore()
    rpc.close()


@pytest.fixture(scope="module")
def runs(sim):
    out = {mode: sim.run(mode) for mode in ("phased", "baseline")}
    again = sim.run("phased")
    sim.restore()
    return out, again


def test_fast_scan_decoder_agrees_with_the_sdk(sim):
    client = MarginEngineClient.from_system(sim.system)
    accounts = [t.address for t in sim.population.traders]
    call = sim.eth_call(sim.engine, sim.engine_abi.encode("check_margins", accounts))
    raw = sim.rpc.batch([call])[0]
    assert decode_statuses(raw, sim.names) == client.statuses(accounts)


def test_population_opens_at_the_drawn_leverage_capped_by_initial_margin(sim):
    client = MarginEngineClient.from_system(sim.system)
    statuses = client.statuses([t.address for t in sim.population.traders])
    assert all(s.positions >= 1 and s.state == State.HEALTHY for s in statuses)
    for t, s in zip(sim.population.traders, statuses, strict=True):
        notional = s.initial * 10 / WAD  # initial margin is 10% of the notional
        assert notional == pytest.approx(t.collateral * sim.opened_leverage(t), rel=1e-6)
        assert sim.opened_leverage(t) == min(t.leverage, sim.max_leverage())


def test_phased_run_calls_tranches_and_cures_with_zero_socialised_loss(runs):
    out, _ = runs
    rec = out["phased"]
    m = summarize(rec)
    assert m["liquidations"] > 0 and m["margin_calls"] > 0
    assert any(not e["full"] for e in rec.liquidations), "partial tranches"
    assert m["socialised"] == 0
    assert m["conserved"] and m["left_unserved"] == 0
    assert min(rec.delays) >= 1, "an account is acted on in a block after the one that showed it"
    # every penalty is split between the keeper and the fund
    assert all(e["penalty"] == e["keeper_reward"] + e["fund_fee"] for e in rec.liquidations)
    # the fund's balance moved exactly by its inflows and payouts, as the chain reports them
    paid = sum(e["paid_by_fund"] for e in rec.bad_debts) + sum(e["amount"] for e in rec.keeper_paid)
    inflow = sum(e["fund_fee"] for e in rec.liquidations)
    assert rec.final["fund_end"] == rec.fund_start + inflow - paid


def test_baseline_closes_whole_accounts_without_calls(runs):
    out, _ = runs
    rec = out["baseline"]
    m = summarize(rec)
    assert m["liquidations"] > 0 and m["margin_calls"] == 0
    assert all(e["full"] for e in rec.liquidations)
    assert m["tranches_per_account_max"] == 1
    assert m["conserved"] and m["left_liquidatable"] == 0
    assert rec.params.critical_ratio == WAD - 1


def test_phased_traders_pay_less_penalty_than_the_baseline_on_this_path(runs):
    out, _ = runs
    phased, baseline = summarize(out["phased"]), summarize(out["baseline"])
    assert phased["paid_by_traders"] < baseline["paid_by_traders"]


def test_same_snapshot_and_seed_give_the_same_run(runs):
    out, again = runs
    assert summarize(again) == summarize(out["phased"])
    assert again.liquidations == out["phased"].liquidations
    assert again.samples == out["phased"].samples
