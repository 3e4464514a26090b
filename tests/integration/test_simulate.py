"""The stress simulator on Ape's test chain: a small population through the flash crash,
phased and baseline, checked against what the chain itself says; and six traders through a
gentle fall that calls them all, to check the cures and the deadline timing.

One setup serves the flash-crash tests (30 traders, 10x-heavy so the crash liquidates
many of them), another the cure tests; each run replays from its setup's snapshot.
"""

from __future__ import annotations

import pytest

from margincall.constants import WAD, State
from margincall.sdk import MarginEngineClient
from margincall.sim import PopulationConfig, PricePath, SimConfig, Simulation, Variant
from margincall.sim.chain import Rpc, decode_statuses
from margincall.sim.metrics import summarize
from margincall.sim.paths import ETH, flash_crash

CONFIG = SimConfig(
    scenario="flash_crash",
    seed=3,
    population=PopulationConfig(traders=30, leverage=(4.0, 10.0), cure_probability=0.5),
    tail=1_800,
)


def _simulation(project, chain, owner, path, config):
    """A simulation set up on the test chain, restored to its setup around the module."""
    rpc = Rpc(chain.provider.uri)
    s = Simulation(rpc, project, owner, path, config)
    s.setup()
    s.restore()
    yield s
    s.restore()
    rpc.close()


@pytest.fixture(scope="module")
def sim(project, chain, owner):
    yield from _simulation(project, chain, owner, flash_crash(CONFIG.seed), CONFIG)


@pytest.fixture(scope="module")
def runs(sim):
    out = {mode: sim.run(mode) for mode in ("phased", "baseline")}
    again = sim.run("phased")
    sim.restore()
    return out, again


def test_fast_scan_decoder_agrees_with_the_sdk(sim):
    client = MarginEngineClient.from_system(sim.system)
    accounts = [t.address for t in sim.population.traders]
    call = sim.eth_call(sim.lens, sim.lens_abi.encode("check_margins", accounts))
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
    # at critical_ratio 1 (the default) the crash takes the liquidated accounts below ratio 1:
    # their closes are full (partial tranches: the gentle fall below)
    assert m["socialised"] == 0
    assert m["conserved"] and m["left_unserved"] == 0 and m["keeper_reverts"] == 0
    # every tranche's eligibility was seen, and each landed in the first block that could
    # take it (the crash makes accounts liquidatable by price, in the block of the update)
    assert len(rec.delays) == len(rec.liquidations)
    assert set(rec.delays) == {1}
    # every penalty is split between the keeper and the fund; a bankrupt close pays no
    # penalty and its keeper min_keeper_reward, out of the deficit (in its BadDebt)
    bankrupt = [e for e in rec.liquidations if e["penalty"] == 0]
    assert bankrupt and len(bankrupt) < len(rec.liquidations)
    minimum = rec.params.min_keeper_reward // 10 ** (18 - rec.decimals)
    assert all(e["keeper_reward"] == minimum and e["fund_fee"] == 0 for e in bankrupt)
    paid = [e for e in rec.liquidations if e["penalty"] > 0]
    assert all(e["penalty"] == e["keeper_reward"] + e["fund_fee"] for e in paid)
    # the fund's balance moved exactly by its inflows and payouts, as the chain reports them
    paid = sum(e["paid_by_fund"] for e in rec.bad_debts)
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


def test_phased_penalties_never_exceed_the_baseline_and_calls_cost_their_rewards(runs):
    """Below ratio 1 the phased engine closes as the baseline does (critical_ratio 1), so its
    penalties are at most the baseline's; what it adds on a crash this fast is the reward of
    calls on accounts the crash then closes anyway (the rewards also deepen those accounts'
    bad debt: an open issue, see the notes of issue 14)."""
    out, _ = runs
    phased, baseline = summarize(out["phased"]), summarize(out["baseline"])
    assert phased["penalties"] <= baseline["penalties"]
    assert phased["paid_by_traders"] - baseline["paid_by_traders"] <= phased["call_rewards"]


def test_same_snapshot_and_seed_give_the_same_run(runs):
    out, again = runs
    assert summarize(again) == summarize(out["phased"])
    assert again.liquidations == out["phased"].liquidations
    assert again.samples == out["phased"].samples


# --- cures and deadlines: six long traders at 9x, a 5.7% fall that leaves every one of them
# CALLABLE (ratio about 1.16), then a flat price -------------------------------------------

CURE_CONFIG = SimConfig(
    scenario="gentle_fall",
    seed=1,  # with this seed, three traders cure by deposit and three by reducing
    population=PopulationConfig(
        traders=6,
        leverage=(8.9, 9.0),
        long_share=1.0,
        reserve=(1.0, 1.0),  # every depositor can afford its cure
        cure_probability=1.0,
        cure_delay=(60, 300),
        reduce_share=0.5,
        lps=1,
    ),
)


def gentle_fall() -> PricePath:
    times = tuple(range(0, 960, 60))
    prices = tuple(2_000.0 if t < 180 else 2_000.0 * 0.943 for t in times)
    return PricePath("gentle_fall", "-5.7% at 3 minutes, then flat", times, {ETH: prices})


@pytest.fixture(scope="module")
def cure_sim(project, chain, owner):
    yield from _simulation(project, chain, owner, gentle_fall(), CURE_CONFIG)


@pytest.fixture(scope="module")
def cure_runs(cure_sim):
    cured = cure_sim.run("phased")
    never = cure_sim.run("phased", variant=Variant("nobody cures", cure_probability=0.0))
    cure_sim.restore()
    return cured, never


def test_called_traders_cure_by_deposit_and_by_reduction_and_are_counted(cure_sim, cure_runs):
    rec, _ = cure_runs
    traders = cure_sim.population.traders
    assert {t.cure.deposit for t in traders} == {True, False}
    m = summarize(rec)
    assert m["accounts_called"] == len(traders), "the fall calls every trader"
    assert rec.cures_by_deposit >= 1 and rec.cures_by_reduce >= 1
    assert m["accounts_cured_by_deposit"] == sum(t.cure.deposit for t in traders)
    assert m["accounts_cured_by_reduce"] == sum(not t.cure.deposit for t in traders)
    assert m["accounts_cured"] == len(traders) and m["liquidations"] == 0
    # each cure came from the trader itself, after its own delay
    called_at = {e["account"]: e["t"] for e in rec.calls}
    for e in rec.clears:
        t = cure_sim.population.by_address()[e["account"]]
        assert e["by_trader"] and e["how"] == ("deposit" if t.cure.deposit else "trade")
        assert e["t"] - called_at[e["account"]] >= t.cure.delay
    assert m["trader_deposits"] > 0
    # each reduction was a reduce-only order, settled by the keeper in the block after the
    # first round posted after its commit (PROTOCOL.md section 5b)
    assert rec.orders_committed >= rec.cures_by_reduce
    assert rec.orders_settled == rec.orders_committed and not rec.orders_cancelled
    assert set(rec.order_delays) == {1} and m["order_delay_max"] == 1
    client = MarginEngineClient.from_system(cure_sim.system)
    after = client.statuses([t.address for t in traders])
    assert all(s.state == State.HEALTHY and s.call_deadline == 0 for s in after)


def test_uncured_calls_are_liquidated_in_the_first_block_at_their_deadline(cure_sim, cure_runs):
    _, rec = cure_runs
    m = summarize(rec)
    assert m["accounts_cured"] == 0 and rec.cures_planned == 0
    assert m["accounts_liquidated"] == len(cure_sim.population.traders)
    grace = cure_sim.params.grace_period
    first = {}
    for e in rec.liquidations:
        first.setdefault(e["account"], e)
    for call in rec.calls:
        # the deadline is the call's block time plus the grace period; slot k is at k * 12 s
        deadline_slot = -(-(call["t"] + grace) // CURE_CONFIG.block_time)
        assert first[call["account"]]["slot"] == deadline_slot
    assert set(rec.delays) == {1} and rec.keeper_reverts == 0
    # between ratio 1 and call_ratio an uncured call ends in partial tranches
    assert any(not e["full"] for e in rec.liquidations), "partial tranches"
