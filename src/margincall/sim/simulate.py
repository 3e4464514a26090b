"""Entry points: run a scenario on an Anvil of our own, or on a chain Ape is connected to.

    from margincall.sim import SimConfig, simulate
    outcome = simulate(SimConfig("flash_crash", seed=7))
    outcome.result["comparison"]

`simulate` starts Anvil on a free port, connects Ape to it (for the
deployment), sets up the population once, runs each mode from the same
snapshot, and stops Anvil again, also on errors and Ctrl-C.
`simulate_on` does the same on a chain that is already connected (the
integration tests use Ape's own test chain).
"""

from __future__ import annotations

import os
import platform
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from margincall.report import cpu_model
from margincall.sim.baseline import BASELINE, MODES, PHASED, params_for
from margincall.sim.chain import PROJECT_ROOT, Anvil, Rpc, hexint
from margincall.sim.metrics import compare, summarize, timing
from margincall.sim.paths import PricePath, from_csv, scenario_path
from margincall.sim.record import RunRecord
from margincall.sim.replay import Replay
from margincall.sim.setup import (
    SimConfig,
    SimSetup,
    SimulationError,
    Tx,
    Variant,
    tail_seconds,
)


class Simulation(SimSetup):
    """A simulation: the setup (`SimSetup`) and its replays."""

    def run(
        self,
        mode: str,
        progress: Callable[[int, int, str], None] | None = None,
        variant: Variant | None = None,
    ) -> RunRecord:
        """Replays the path in `mode` (`phased` or `baseline`) from the setup snapshot,
        optionally with a `variant` of the cure probability or the risk parameters."""
        if self.snapshot_id is None:
            raise SimulationError("setup() first")
        started = time.monotonic()
        rpc = self.rpc
        rpc.call("evm_revert", self.snapshot_id)
        self.snapshot_id = rpc.call("evm_snapshot")
        self.nonces.clear()
        self.pending.clear()
        requests_before = rpc.requests
        rpc.call("anvil_autoImpersonateAccount", True)
        rpc.call("evm_setAutomine", False)
        params = params_for(mode, self.params)
        population = self.config.population
        gas_price_gwei = self.config.gas_price_gwei
        if variant is not None:
            params = replace(params, **dict(variant.params))
            if variant.cure_probability is not None:
                population = replace(population, cure_probability=variant.cure_probability)
            if variant.gas_price_gwei is not None:
                gas_price_gwei = variant.gas_price_gwei
        # the same configuration block in both modes, so both replay the same block grid
        owner = str(self.owner.address)
        self.send(
            [
                Tx(
                    owner,
                    self.engine,
                    self.engine_abi.encode("set_risk_params", params.as_tuple()),
                    "set_risk_params",
                    300_000,
                )
            ]
        )
        pop = self.population
        self._fetch_nonces([owner, pop.keeper, pop.oracle] + [t.address for t in pop.traders])
        for tx, r in self.mine(self.t_setup_end + 1)[0]:
            if hexint(r["status"]) != 1:
                raise SimulationError(f"{tx.label} reverted: the engine refused {mode} params")
        replay = Replay(
            self, mode, params, self.t_setup_end + 1 + self.config.block_time, gas_price_gwei
        )
        replay.population = population
        replay.record.variant = variant.name if variant is not None else ""
        try:
            record = replay.run(progress)
        finally:
            self.pending.clear()
        record.rpc_requests = rpc.requests - requests_before
        record.wall_seconds = time.monotonic() - started
        record.load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        return record

    def restore(self) -> None:
        """Back to automine without impersonation (for a chain shared with other users)."""
        self.rpc.call("evm_setAutomine", True)
        self.rpc.call("anvil_autoImpersonateAccount", False)


Progress = Callable[[str, int, int, str], None]  # (mode, done, total, text)


@dataclass
class Outcome:
    """A finished simulation: the JSON-able `result`, the raw records, the path."""

    result: dict[str, Any]
    records: dict[str, RunRecord] = field(default_factory=dict)
    path: PricePath | None = None


def load_path(config: SimConfig) -> PricePath:
    if config.csv is not None:
        return from_csv(config.csv)
    return scenario_path(config.scenario, config.seed)


def load_project() -> Any:
    """The Ape project of this checkout (the contracts), wherever the command runs from."""
    import ape

    here = Path.cwd()
    if (here / "contracts" / "MarginEngine.vy").exists():
        return ape.project
    return ape.Project(PROJECT_ROOT)


def machine() -> dict[str, str]:
    return {
        "cores": str(os.cpu_count()),
        "cpu": cpu_model(),
        "python": platform.python_version(),
    }


def simulate_on(
    rpc: Rpc,
    project: Any,
    owner: Any,
    config: SimConfig,
    modes: Sequence[str] = MODES,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> Outcome:
    """Sets up on the connected chain and runs `modes`; leaves the chain automining."""
    path = load_path(config)
    sim = Simulation(rpc, project, owner, path, config, log=log)
    records: dict[str, RunRecord] = {}
    try:
        sim.setup()
        for mode in modes:
            cb = None
            if progress is not None:

                def cb(done: int, total: int, text: str, mode: str = mode) -> None:
                    progress(mode, done, total, text)

            records[mode] = sim.run(mode, cb)
    finally:
        sim.restore()
    return Outcome(build_result(config, path, sim, records), records, path)


def build_result(
    config: SimConfig, path: PricePath, sim: Simulation, records: dict[str, RunRecord]
) -> dict[str, Any]:
    pop = sim.population
    kinds: dict[str, int] = {}
    for t in pop.traders:
        kinds[t.kind] = kinds.get(t.kind, 0) + 1
    runs = {
        mode: {"metrics": summarize(rec), "timing": timing(rec), "params": asdict(rec.params)}
        for mode, rec in records.items()
    }
    phased = runs.get(PHASED, {}).get("metrics")
    baseline = runs.get(BASELINE, {}).get("metrics")
    result: dict[str, Any] = {
        "scenario": path.name,
        "seed": config.seed,
        "path": {
            "description": path.description,
            "points": len(path),
            "hours": path.duration / 3600,
            "moves": {m: round(path.move(m), 4) for m in path.markets},
            "drawdowns": {m: round(path.drawdown(m), 4) for m in path.markets},
        },
        "population": {
            **{k: v for k, v in asdict(config.population).items()},
            "kinds": dict(sorted(kinds.items())),
            "opening_notional": round(pop.notional, 2),
            "max_opened_leverage": round(sim.max_leverage(), 4),
            "lp_liquidity_tokens": round(pop.lp_liquidity, 2),
            "fund_seed_tokens": round(pop.fund_seed, 2),
            # traders whose trait is to cure their calls (cure_probability is the expected share)
            "traders_curing": sum(t.cures(config.population.cure_probability) for t in pop.traders),
        },
        "chain": {
            "block_time": config.block_time,
            "tail_seconds": tail_seconds(config, sim.params),
            "grace_period": sim.params.grace_period,
            "gas_price_gwei": config.gas_price_gwei,
            "decimals": config.decimals,
            "markets": {"imr": config.imr, "mmr": config.mmr, "fee": config.fee},
        },
        "runs": runs,
        "comparison": compare(phased, baseline) if phased is not None else {},
        "timing": {"setup_seconds": round(sim.setup_seconds, 2), **machine()},
    }
    return result


@contextmanager
def own_chain() -> Iterator[tuple[Rpc, Any, Any]]:
    """An Anvil of our own with Ape connected to it: yields (rpc, project, owner account).
    The node is stopped on the way out, whatever happens (Ctrl-C, SIGTERM, errors)."""
    warnings.filterwarnings("ignore", message="Field 'import_remapping'")
    from ape import accounts, networks
    from ape.logging import logger

    logger.set_level("ERROR")
    with Anvil() as anvil:
        choice = networks.parse_network_choice(
            "ethereum:local:foundry",
            provider_settings={"host": anvil.uri},
            # Ape did not start this node: nothing of Ape's to stop (and its disconnect
            # walks every known provider, which takes seconds)
            disconnect_after=False,
            disconnect_on_exit=False,
        )
        with choice:
            rpc = Rpc(anvil.uri)
            try:
                yield rpc, load_project(), accounts.test_accounts[0]
            finally:
                rpc.close()


def simulate(
    config: SimConfig,
    modes: Sequence[str] = MODES,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> Outcome:
    """Runs on an Anvil of its own, which is stopped before returning (or raising)."""
    load_path(config)  # fail on a bad CSV before starting anything
    started = time.monotonic()
    with own_chain() as (rpc, project, owner):
        outcome = simulate_on(rpc, project, owner, config, modes, progress, log)
    outcome.result["timing"]["total_seconds"] = round(time.monotonic() - started, 2)
    return outcome


__all__ = [
    "Outcome",
    "build_result",
    "load_path",
    "load_project",
    "machine",
    "own_chain",
    "simulate",
    "simulate_on",
]
