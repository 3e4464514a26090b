"""The stress simulator: price paths replayed against the real contracts on a local Anvil,
with a population of leveraged traders, LPs, the insurance fund and the project's keeper
logic; phased liquidation side by side with a liquidate-everything-at-maintenance baseline.

`margincall simulate --scenario NAME` on the command line; `simulate(SimConfig(...))` here.
"""

from margincall.sim.baseline import BASELINE, MODES, PHASED, baseline_params
from margincall.sim.paths import SCENARIOS, PathError, PricePath, from_csv, scenario_path
from margincall.sim.population import PopulationConfig, PopulationError, build_population
from margincall.sim.setup import SimConfig, SimulationError, Variant
from margincall.sim.simulate import Outcome, Simulation, simulate, simulate_on

__all__ = [
    "BASELINE",
    "MODES",
    "Outcome",
    "PHASED",
    "PathError",
    "PopulationConfig",
    "PopulationError",
    "PricePath",
    "SCENARIOS",
    "SimConfig",
    "Simulation",
    "SimulationError",
    "Variant",
    "baseline_params",
    "build_population",
    "from_csv",
    "scenario_path",
    "simulate",
    "simulate_on",
]
