"""The sensitivity runs of the benchmark suite: Black Thursday with every cure probability and
other call parameters, the flash crash with stricter liquidation parameters, the keeper's gas
price on both, and the insurance fund's seed on the flash crash.
"""

from __future__ import annotations

from typing import Any

from margincall.bench.markdown import (
    FUND_SCENARIO,
    fund_row,
    share,
    tok,
)

CURE_SWEEP = (0.0, 0.25, 0.5, 0.75, 1.0)
GAS_SWEEP = (1.0, 10.0, 50.0)  # gwei, the keeper's gas price
GAS_SCENARIOS = ("black_thursday", "flash_crash")
FUND_SWEEP = (0.0, 0.0025, 0.01)  # insurance fund seed, fraction of the opening notional
# --- sensitivity ------------------------------------------------------------------------


def _ratio(name: str, value: float) -> tuple[str, int]:
    return (name, int(round(value * 10**9)) * 10**9)


def sensitivity_plans() -> dict[str, dict[str, list]]:
    """Per scenario, per table: the variants (phased runs on one setup)."""
    from margincall.sim.setup import Variant

    gas = [Variant(f"{g:g} gwei", gas_price_gwei=g) for g in GAS_SWEEP]
    return {
        "black_thursday": {
            "cure": [Variant(f"cure probability {p:g}", cure_probability=p) for p in CURE_SWEEP],
            "params": [
                Variant("call_ratio 1.5", params=(_ratio("call_ratio", 1.5),)),
                Variant("call_ratio 2.0", params=(_ratio("call_ratio", 2.0),)),
                Variant("close_factor 0.5", params=(_ratio("close_factor", 0.5),)),
            ],
            "gas": gas,
        },
        "flash_crash": {
            "params": [
                *(
                    Variant(f"critical_ratio {c:g}", params=(_ratio("critical_ratio", c),))
                    for c in (0.5, 0.7, 0.9)
                ),
                Variant("tranche_interval 1 s (shortest)", params=(("tranche_interval", 1),)),
                Variant("close_factor 1.0", params=(_ratio("close_factor", 1.0),)),
            ],
            "gas": gas,
        },
    }


def _variant_key(v: Any, config: Any, params: Any) -> tuple:
    """Variants that run the same thing share one run (e.g. cure probability 0.5 and 1 gwei
    are both the defaults)."""
    cure = config.population.cure_probability if v.cure_probability is None else v.cure_probability
    gas = config.gas_price_gwei if v.gas_price_gwei is None else v.gas_price_gwei
    changed = tuple(sorted((k, x) for k, x in v.params if getattr(params, k) != x))
    return (cure, gas, changed)


def sensitivity_row(name: str, variant: str, m: dict, base: dict) -> dict[str, Any]:
    from margincall.sim.metrics import compare

    c = compare(m, base)
    keys = (
        "paid_by_traders",
        "bad_debt",
        "paid_by_fund",
        "socialised",
        "fund_drawdown",
        "liquidations",
        "full_closes",
        "margin_calls",
        "accounts_liquidated",
        "accounts_cured",
        "tranches_missed",
        "left_liquidatable",
        "left_liquidatable_notional",
        "delay_p50",
        "delay_max",
        "keeper_profit",
        "trader_pnl",
    )
    return {
        "scenario": name,
        "variant": variant,
        **{k: m[k] for k in keys},
        "baseline_paid": base["paid_by_traders"],
        "baseline_bad_debt": base["bad_debt"],
        "baseline_trader_pnl": base["trader_pnl"],
        "cut": c["penalty_cut"],
        "all_in_cut": c["all_in_cut"],
        "status": c["penalty_status"],
    }


def sensitivity_runs(traders: int, seed: int) -> dict:
    """Black Thursday with every cure probability and other call parameters, the flash
    crash with stricter liquidation parameters, the keeper's gas price on both (variants
    replay from one setup per scenario), and the insurance fund's seed on the flash crash
    (one setup per seed: the fund is funded at setup)."""
    from dataclasses import asdict

    from margincall.sim.metrics import summarize
    from margincall.sim.paths import scenario_path
    from margincall.sim.population import scenario_population
    from margincall.sim.setup import SimConfig, Variant
    from margincall.sim.simulate import Simulation, own_chain

    out: dict[str, Any] = {"tables": {}, "defaults": {}, "fund": []}
    for name, tables in sensitivity_plans().items():
        config = SimConfig(
            scenario=name, seed=seed, population=scenario_population(name, traders=traders)
        )
        n = sum(len(v) for v in tables.values())
        print(f"sensitivity {name}: {n} variants", flush=True)
        with own_chain() as (rpc, project, owner):
            sim = Simulation(rpc, project, owner, scenario_path(name, seed), config)
            sim.setup()
            out["defaults"][name] = {
                "cure_probability": config.population.cure_probability,
                "gas_price_gwei": config.gas_price_gwei,
                "fund_seed": config.population.fund_seed,
                "params": asdict(sim.params),
            }
            base = summarize(sim.run("baseline"))
            done: dict[tuple, dict] = {}
            for table, variants in tables.items():
                rows = out["tables"].setdefault(name, {}).setdefault(table, [])
                for v in variants:
                    key = _variant_key(v, config, sim.params)
                    if key not in done:
                        done[key] = summarize(sim.run("phased", variant=v))
                    row = sensitivity_row(name, v.name, done[key], base)
                    print(f"  {v.name}: {row['status']}, bad debt {tok(row['bad_debt'])}")
                    rows.append(row)
            if name == FUND_SCENARIO:
                key = _variant_key(Variant("defaults"), config, sim.params)
                if key not in done:
                    done[key] = summarize(sim.run("phased"))
                out["fund"].append(fund_row(config.population.fund_seed, done[key], base))
    # the fund seed: one setup each (the same population and path; only the donation differs)
    for seed_share in FUND_SWEEP:
        if any(r["fund_seed"] == seed_share for r in out["fund"]):
            continue
        config = SimConfig(
            scenario=FUND_SCENARIO,
            seed=seed,
            population=scenario_population(FUND_SCENARIO, traders=traders, fund_seed=seed_share),
        )
        print(f"sensitivity {FUND_SCENARIO}: fund seed {share(seed_share)}", flush=True)
        with own_chain() as (rpc, project, owner):
            sim = Simulation(rpc, project, owner, scenario_path(FUND_SCENARIO, seed), config)
            sim.setup()
            base = summarize(sim.run("baseline"))
            m = summarize(sim.run("phased"))
        out["fund"].append(fund_row(seed_share, m, base))
    out["fund"].sort(key=lambda r: r["fund_seed"])
    return out
