"""The simulated population: traders with leverage, sides and cure habits; LPs; the fund.

Everything is drawn from the seed, trader by trader, each from a random
stream of its own (`trader_rng`): the same seed gives the same population and
the same decisions, whatever order the simulator meets the traders in.

A trader deposits `collateral` and opens one position, or two in different
markets (cross margin: both legs on the same side, or a pair trade, long one
and short the other), for a total notional of `leverage * collateral`. The
wallet keeps `reserve` more tokens for curing a margin call.

Curing is a trait of the trader, drawn once from the seed (`CureTrait`): a
trader either cures every margin call it gets, each `cure_delay` seconds after
the call (one delay per trader, within the grace period), by depositing (if
the reserve allows) or by reducing, to bring the account's ratio to
`cure_target`; or it never cures. `cure_probability` is the fraction of traders
who cure. The trait compares one uniform draw per trader with the probability,
so with the same seed the traders who cure at 0.25 are among those who cure at
0.5: a sweep over the probability changes who cures, nothing else.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from eth_utils import keccak, to_checksum_address

LEVERAGE_DISTS = ("uniform", "loguniform", "triangular")


class PopulationError(ValueError):
    """A population setting is out of range."""


@dataclass(frozen=True)
class PopulationConfig:
    """How the population is drawn (whole tokens of the collateral, 1 token = 1 USD)."""

    traders: int = 500
    leverage: tuple[float, float] = (2.0, 10.0)
    leverage_dist: str = "uniform"
    long_share: float = 0.6
    cross_share: float = 0.2  # traders with positions in two markets
    pair_share: float = 0.5  # of those: long one market, short the other
    collateral: tuple[float, float] = (1_000.0, 50_000.0)  # log-uniform
    reserve: tuple[float, float] = (0.0, 1.0)  # wallet reserve, as a multiple of collateral
    cure_probability: float = 0.5  # fraction of traders who cure their margin calls
    cure_delay: tuple[int, int] = (60, 2_700)  # seconds after the call, drawn once per trader
    reduce_share: float = 0.4  # cures that reduce the position instead of depositing
    cure_target: float = 2.0  # ratio (equity / maintenance) a cure aims for
    lps: int = 5
    lp_liquidity: float = 1.0  # LP deposits, as a multiple of the opening notional
    fund_seed: float = 0.01  # insurance fund seed, as a fraction of the opening notional

    def __post_init__(self) -> None:
        lo, hi = self.leverage
        checks = [
            (self.traders >= 1, "traders must be at least 1"),
            (1.0 <= lo <= hi, "leverage needs 1 <= low <= high"),
            (self.leverage_dist in LEVERAGE_DISTS, f"leverage_dist: one of {LEVERAGE_DISTS}"),
            (0 <= self.long_share <= 1, "long_share must be in [0, 1]"),
            (0 <= self.cross_share <= 1, "cross_share must be in [0, 1]"),
            (0 <= self.pair_share <= 1, "pair_share must be in [0, 1]"),
            (0 < self.collateral[0] <= self.collateral[1], "collateral needs 0 < low <= high"),
            (0 <= self.reserve[0] <= self.reserve[1], "reserve needs 0 <= low <= high"),
            (0 <= self.cure_probability <= 1, "cure_probability must be in [0, 1]"),
            (0 <= self.cure_delay[0] <= self.cure_delay[1], "cure_delay needs 0 <= low <= high"),
            (0 <= self.reduce_share <= 1, "reduce_share must be in [0, 1]"),
            (self.cure_target > 1, "cure_target must be above 1"),
            (self.lps >= 1, "lps must be at least 1"),
            (self.lp_liquidity > 0, "lp_liquidity must be positive"),
            (self.fund_seed >= 0, "fund_seed must not be negative"),
        ]
        for ok, message in checks:
            if not ok:
                raise PopulationError(message)


# per-scenario defaults that differ from PopulationConfig's
SCENARIO_POPULATION: dict[str, dict[str, float]] = {
    # one cross-margin population: every trader holds ETH and BTC
    "broken_correlation": {"cross_share": 1.0},
}


def scenario_population(scenario: str, **overrides: object) -> PopulationConfig:
    """The scenario's default population, with `overrides` (None values ignored)."""
    fields = dict(SCENARIO_POPULATION.get(scenario, {}))
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return PopulationConfig(**fields)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Leg:
    market: str
    long: bool
    share: float  # of the trader's notional


@dataclass(frozen=True)
class CureTrait:
    """How a trader answers margin calls, drawn once: `draw` (uniform in [0, 1)) is compared
    with the population's `cure_probability`; `delay` seconds after each call; by deposit
    or else by reducing."""

    draw: float
    delay: int
    deposit: bool


@dataclass(frozen=True)
class Trader:
    index: int
    address: str
    collateral: float  # whole tokens deposited
    reserve: float  # whole tokens kept in the wallet
    leverage: float  # drawn; the opened leverage is capped by the engine's imr (see `opened`)
    legs: tuple[Leg, ...]
    cure: CureTrait = CureTrait(1.0, 0, True)  # default: never cures (draw 1.0 >= any p)

    def cures(self, probability: float) -> bool:
        """Whether this trader cures its margin calls when a `probability` share does."""
        return self.cure.draw < probability

    @property
    def notional(self) -> float:
        return self.collateral * self.leverage

    @property
    def kind(self) -> str:
        if len(self.legs) == 1:
            return "long" if self.legs[0].long else "short"
        return "pair" if self.legs[0].long != self.legs[1].long else "cross"


@dataclass
class Population:
    config: PopulationConfig
    seed: int
    traders: list[Trader] = field(default_factory=list)
    lps: list[str] = field(default_factory=list)
    keeper: str = ""
    oracle: str = ""  # the address that posts feed updates

    @property
    def notional(self) -> float:
        return sum(t.notional for t in self.traders)

    @property
    def lp_liquidity(self) -> float:
        return self.notional * self.config.lp_liquidity

    @property
    def fund_seed(self) -> float:
        return self.notional * self.config.fund_seed

    def by_address(self) -> dict[str, Trader]:
        return {t.address: t for t in self.traders}


def address_of(seed: int, role: str, index: int) -> str:
    """A deterministic address for a simulated actor (no key: Anvil impersonates it)."""
    digest = keccak(f"margincall-sim/{seed}/{role}/{index}".encode())
    return to_checksum_address(digest[12:])


def trader_rng(seed: int, index: int, purpose: str) -> random.Random:
    """The random stream of one trader for one purpose (drawing, cures)."""
    return random.Random(f"{seed}/{index}/{purpose}")


def draw_cure(config: PopulationConfig, rng: random.Random) -> CureTrait:
    """A trader's cure trait, from its own stream."""
    draw = rng.random()
    delay = rng.randint(*config.cure_delay)
    deposit = rng.random() >= config.reduce_share
    return CureTrait(draw, delay, deposit)


def draw_leverage(rng: random.Random, config: PopulationConfig) -> float:
    lo, hi = config.leverage
    if config.leverage_dist == "uniform":
        return rng.uniform(lo, hi)
    if config.leverage_dist == "loguniform":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    return rng.triangular(lo, hi, (lo + hi) / 2)


def build_population(config: PopulationConfig, seed: int, markets: Sequence[str]) -> Population:
    """Draws the population for `markets` (cross-margin traders need two)."""
    if not markets:
        raise PopulationError("no market")
    pop = Population(config, seed)
    for i in range(config.traders):
        rng = trader_rng(seed, i, "draw")
        lo, hi = config.collateral
        collateral = round(math.exp(rng.uniform(math.log(lo), math.log(hi))), 2)
        reserve = round(collateral * rng.uniform(*config.reserve), 2)
        leverage = draw_leverage(rng, config)
        long = rng.random() < config.long_share
        if len(markets) >= 2 and rng.random() < config.cross_share:
            first, second = rng.sample(list(markets), 2)
            pair = rng.random() < config.pair_share
            legs: tuple[Leg, ...] = (Leg(first, long, 0.5), Leg(second, long != pair, 0.5))
        else:
            legs = (Leg(rng.choice(list(markets)), long, 1.0),)
        cure = draw_cure(config, trader_rng(seed, i, "cure"))
        pop.traders.append(
            Trader(i, address_of(seed, "trader", i), collateral, reserve, leverage, legs, cure)
        )
    pop.lps = [address_of(seed, "lp", i) for i in range(config.lps)]
    pop.keeper = address_of(seed, "keeper", 0)
    pop.oracle = address_of(seed, "oracle", 0)
    return pop


@dataclass(frozen=True)
class CurePlan:
    """What a called trader will do: act at `delay` seconds after the call, or never."""

    cures: bool
    delay: int = 0
    deposit: bool = True  # else reduce


def cure_plan(config: PopulationConfig, trader: Trader) -> CurePlan:
    """What `trader` does with a margin call: its trait, the same for every call."""
    if not trader.cures(config.cure_probability):
        return CurePlan(False)
    return CurePlan(True, trader.cure.delay, trader.cure.deposit)


def deposit_to_cure(equity: int, maintenance: int, target: float) -> int:
    """Wad to deposit for `equity / maintenance >= target` (0 if already there)."""
    need = math.ceil(maintenance * target) - equity
    return max(need, 0)


def reduce_to_cure(equity: int, maintenance: int, target: float) -> float:
    """Fraction of every position to close for `equity / maintenance >= target`, ignoring
    the trading fee (the cure aims with margin to spare); 1.0 closes everything."""
    if maintenance <= 0:
        return 0.0
    if equity <= 0:
        return 1.0
    keep = equity / (maintenance * target)
    return min(max(1.0 - keep, 0.0), 1.0)


__all__ = [
    "CurePlan",
    "CureTrait",
    "LEVERAGE_DISTS",
    "Leg",
    "Population",
    "PopulationConfig",
    "PopulationError",
    "SCENARIO_POPULATION",
    "Trader",
    "address_of",
    "build_population",
    "cure_plan",
    "deposit_to_cure",
    "draw_cure",
    "draw_leverage",
    "reduce_to_cure",
    "scenario_population",
    "trader_rng",
]
