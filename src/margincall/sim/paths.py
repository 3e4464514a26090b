"""Price paths for the stress simulator: named crash scenarios, seeded random paths, CSV.

A `PricePath` is a list of times (seconds from the start, the first one 0)
and, per market, the absolute price at each time. The simulator posts every
point to the market's feed in the first block at or after its time.

Named shapes (all prices relative to the start, seeded noise on top):

- `black_thursday`: -43% over 14 hours in 1-minute steps, falling in legs
  with intraday rebounds of 4.4-8.9% between anchors (`rebounds`; ETH on
  2020-03-12; BTC falls 90% as far);
- `flash_crash`: 10 quiet minutes, -30% in 5 minutes, +20% from the bottom
  over the next 10 minutes, then quiet to 2 h 15 min (every market);
- `slow_bleed`: -60% over 7 days in 5-minute steps;
- `broken_correlation`: ETH -40% over 12 hours while BTC stays flat;
- `random`: geometric Brownian motion with Poisson jumps, correlated markets;
- a CSV of timestamps and prices (`from_csv`);
- crash paths drawn from public accounts of real crashes, stored as CSV in `sim/data/`
  (`CRASH_PATHS`, `crash_path`; sources in `sim/data/README.md`, generator in
  `margincall.sim.crashes`): fixed paths, the seed changes only the population.

Noise is a Brownian bridge pinned to the shape's anchor points, so the
headline moves (-43%, -30%, ...) are exact whatever the seed.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"
ETH = "ETH-USD"
BTC = "BTC-USD"
START_PRICES = {ETH: 2_000.0, BTC: 60_000.0}


class PathError(ValueError):
    """A price path (or its CSV) is malformed."""


@dataclass(frozen=True)
class PricePath:
    """Prices per market at each time (seconds from the start)."""

    name: str
    description: str
    times: tuple[int, ...]
    prices: Mapping[str, tuple[float, ...]]

    def __post_init__(self) -> None:
        if not self.times or self.times[0] != 0:
            raise PathError(f"{self.name}: times must start at 0")
        if any(b <= a for a, b in zip(self.times, self.times[1:], strict=False)):
            raise PathError(f"{self.name}: times must increase strictly")
        if not self.prices:
            raise PathError(f"{self.name}: no market")
        for market, series in self.prices.items():
            if len(series) != len(self.times):
                raise PathError(f"{self.name}: {market} has {len(series)} prices, not {len(self)}")
            if any(not (p > 0 and math.isfinite(p)) for p in series):
                raise PathError(f"{self.name}: {market} has a non-positive or non-finite price")

    def __len__(self) -> int:
        return len(self.times)

    @property
    def markets(self) -> tuple[str, ...]:
        return tuple(self.prices)

    @property
    def duration(self) -> int:
        return self.times[-1]

    def start(self, market: str) -> float:
        return self.prices[market][0]

    def at(self, i: int) -> dict[str, float]:
        return {m: s[i] for m, s in self.prices.items()}

    def move(self, market: str) -> float:
        """End price over start price, minus one (e.g. -0.43)."""
        s = self.prices[market]
        return s[-1] / s[0] - 1

    def drawdown(self, market: str) -> float:
        """Largest fall from a running peak (e.g. -0.45)."""
        s = np.asarray(self.prices[market])
        return float((s / np.maximum.accumulate(s)).min() - 1)

    def to_csv(self, path: Path) -> None:
        with Path(path).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["timestamp", *self.markets])
            for i, t in enumerate(self.times):
                w.writerow([t, *(f"{self.prices[m][i]:.8g}" for m in self.markets)])


# --- shapes ----------------------------------------------------------------------------------


def _bridge(
    rng: np.random.Generator, anchors: Sequence[tuple[float, float]], steps: int, sigma: float
) -> np.ndarray:
    """Levels at `steps + 1` equally spaced points, log-linear between anchors
    `(fraction of the path, level)`, with Brownian-bridge noise of `sigma` per
    step (in log terms) pinned to zero at every anchor."""
    xs = np.linspace(0.0, 1.0, steps + 1)
    ax = np.array([a for a, _ in anchors])
    ay = np.log(np.array([b for _, b in anchors]))
    base = np.interp(xs, ax, ay)
    noise = np.zeros(steps + 1)
    idx = np.searchsorted(xs, ax - 1e-12)
    for lo, hi in zip(idx, idx[1:], strict=False):
        n = hi - lo
        if n < 2:
            continue
        walk = np.concatenate([[0.0], np.cumsum(rng.normal(0.0, sigma, n))])
        frac = np.arange(n + 1) / n
        noise[lo : hi + 1] = walk - frac * walk[-1]
    return np.exp(base + noise)


def _scale_move(levels: np.ndarray, factor: float) -> np.ndarray:
    """The same shape with every move from 1.0 scaled by `factor` (in log terms)."""
    return np.exp(np.log(levels) * factor)


def _path(
    name: str, description: str, step: int, levels: Mapping[str, np.ndarray], start: Mapping
) -> PricePath:
    n = len(next(iter(levels.values())))
    times = tuple(i * step for i in range(n))
    prices = {m: tuple(float(start[m] * x) for x in lv) for m, lv in levels.items()}
    return PricePath(name, description, times, prices)


BLACK_THURSDAY_ANCHORS = (
    # (hour, level): falls in legs, each followed by a rebound
    (0.0, 1.00),
    (1.5, 0.96),
    (2.5, 0.90),
    (3.0, 0.94),
    (4.5, 0.85),
    (5.0, 0.90),
    (6.5, 0.80),
    (7.0, 0.84),
    (8.5, 0.74),
    (9.0, 0.79),
    (10.5, 0.66),
    (11.0, 0.71),
    (12.5, 0.56),
    (13.0, 0.61),
    (14.0, 0.57),
)


def rebounds(anchors: Sequence[tuple[float, float]]) -> list[float]:
    """The rises between consecutive anchors (e.g. 0.044 for 0.90 -> 0.94)."""
    return [b / a - 1 for (_, a), (_, b) in zip(anchors, anchors[1:], strict=False) if b > a]


def black_thursday(seed: int, start: Mapping[str, float] = START_PRICES) -> PricePath:
    rng = np.random.default_rng([seed, 1])
    hours = 14
    steps = hours * 60
    anchors = [(h / hours, lv) for h, lv in BLACK_THURSDAY_ANCHORS]
    eth = _bridge(rng, anchors, steps, sigma=0.002)
    btc = _scale_move(_bridge(rng, anchors, steps, sigma=0.0015), 0.9)
    up = rebounds(BLACK_THURSDAY_ANCHORS)
    return _path(
        "black_thursday",
        f"-43% over 14 hours in 1-minute steps, in legs with {min(up):.1%}-{max(up):.1%}"
        " intraday rebounds between anchors (ETH, plus noise; BTC falls 90% as far)",
        60,
        {ETH: eth, BTC: btc},
        start,
    )


def flash_crash(seed: int, start: Mapping[str, float] = START_PRICES) -> PricePath:
    rng = np.random.default_rng([seed, 2])
    quiet, crash, rebound, tail = 10, 5, 10, 110
    levels = {}
    for m in (ETH, BTC):
        pre = _bridge(rng, [(0, 1.0), (1, 1.0)], quiet, 0.0005)
        down = 1.0 * (0.70 ** (np.arange(1, crash + 1) / crash))
        up = 0.70 * (1.20 ** (np.arange(1, rebound + 1) / rebound))
        post = 0.84 * _bridge(rng, [(0, 1.0), (1, 1.0)], tail, 0.001)[1:]
        levels[m] = np.concatenate([pre, down, up, post])
    return _path(
        "flash_crash",
        "10 quiet minutes, -30% in 5 minutes, +20% over the next 10, then quiet to"
        f" {(quiet + crash + rebound + tail) // 60} h {(quiet + crash + rebound + tail) % 60} min"
        " (every market, 1-minute steps)",
        60,
        levels,
        start,
    )


def slow_bleed(seed: int, start: Mapping[str, float] = START_PRICES) -> PricePath:
    rng = np.random.default_rng([seed, 3])
    step = 300
    steps = 7 * 86_400 // step
    anchors = [(d / 7, 0.4 ** (d / 7)) for d in range(8)]
    levels = {m: _bridge(rng, anchors, steps, sigma=0.003) for m in (ETH, BTC)}
    return _path(
        "slow_bleed",
        "-60% over 7 days in 5-minute steps (every market)",
        step,
        levels,
        start,
    )


def broken_correlation(seed: int, start: Mapping[str, float] = START_PRICES) -> PricePath:
    rng = np.random.default_rng([seed, 4])
    steps = 12 * 60
    anchors = [(0.0, 1.0), (0.3, 0.85), (0.4, 0.88), (0.7, 0.70), (0.8, 0.72), (1.0, 0.60)]
    eth = _bridge(rng, anchors, steps, sigma=0.002)
    btc = _bridge(rng, [(0.0, 1.0), (0.5, 1.01), (1.0, 1.0)], steps, sigma=0.0008)
    return _path(
        "broken_correlation",
        "ETH -40% over 12 hours while BTC stays flat (1-minute steps)",
        60,
        {ETH: eth, BTC: btc},
        start,
    )


def random_path(
    seed: int,
    start: Mapping[str, float] = START_PRICES,
    hours: int = 24,
    vol: float = 1.0,
    jumps_per_day: float = 6.0,
    jump_mean: float = -0.03,
    jump_sd: float = 0.04,
    correlation: float = 0.8,
) -> PricePath:
    """GBM (annual `vol`, no drift) with Poisson jumps (log-normal sizes), 1-minute steps."""
    rng = np.random.default_rng([seed, 5])
    steps = hours * 60
    dt_years = 60 / (365 * 86_400)
    cov = np.array([[1.0, correlation], [correlation, 1.0]])
    z = rng.multivariate_normal([0.0, 0.0], cov, size=steps)
    diffusion = vol * math.sqrt(dt_years) * z - 0.5 * vol**2 * dt_years
    lam = jumps_per_day / (24 * 60)
    counts = rng.poisson(lam, size=steps)
    # a jump is a market-wide shock: the same move in both markets, plus a small own part
    common = rng.normal(jump_mean, jump_sd, size=steps)
    own = rng.normal(0.0, jump_sd / 4, size=(steps, 2))
    sizes = (common[:, None] + own) * counts[:, None]
    logs = np.vstack([np.zeros((1, 2)), np.cumsum(diffusion + sizes, axis=0)])
    return _path(
        "random",
        f"GBM {vol:.0%} annual volatility with jumps ({jumps_per_day:g}/day, mean"
        f" {jump_mean:+.0%}, sd {jump_sd:.0%}), ETH/BTC correlation {correlation:g},"
        f" {hours} hours in 1-minute steps, seed {seed}",
        60,
        {ETH: np.exp(logs[:, 0]), BTC: np.exp(logs[:, 1])},
        start,
    )


# --- CSV --------------------------------------------------------------------------------------


def _parse_time(text: str) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise PathError(f"timestamp {text!r} is neither unix seconds nor ISO 8601") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def from_csv(path: Path, markets: Sequence[str] = (ETH, BTC)) -> PricePath:
    """A path from a CSV with a `timestamp` column (unix seconds or ISO 8601) and one column
    of prices per market (`ETH-USD`, `BTC-USD`, ...); a single `price` column is ETH-USD.
    Rows are sorted by time; times become seconds from the first row."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise PathError(f"{path}: {err.strerror}") from None
    # lines starting with '#' are comments (the crash paths' provenance headers)
    rows = list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))
    if not rows:
        raise PathError(f"{path}: no rows")
    header = {h.strip(): h for h in rows[0]}
    if "timestamp" not in header:
        raise PathError(f"{path}: needs a 'timestamp' column (got {', '.join(header)})")
    cols = {m: header[m] for m in markets if m in header}
    if not cols and "price" in header:
        cols = {markets[0]: header["price"]}
    if not cols:
        raise PathError(f"{path}: needs a price column: one of {', '.join(markets)} or 'price'")
    points = []
    for n, row in enumerate(rows, start=2):
        try:
            t = _parse_time(row[header["timestamp"]])
            prices = {m: float(row[c]) for m, c in cols.items()}
        except (TypeError, ValueError) as err:
            raise PathError(f"{path}: line {n}: {err}") from None
        points.append((t, prices))
    points.sort(key=lambda p: p[0])
    t0 = points[0][0]
    times = tuple(int(round(t - t0)) for t, _ in points)
    if len(set(times)) != len(times):
        raise PathError(f"{path}: two rows share a timestamp (to the second)")
    prices = {m: tuple(p[m] for _, p in points) for m in cols}
    return PricePath(path.stem, f"from {path.name} ({len(times)} points)", times, prices)


# crash paths from public accounts (sim/data/<name>.csv; README.md there cites the sources)
CRASH_PATHS = (
    "yen_carry_2024",
    "terra_week_2022",
    "oracle_gap",
    "tariff_whipsaw_2025",
    "ftx_week_2022",
)


def crash_path(name: str, seed: int = 0, start: Mapping[str, float] | None = None) -> PricePath:
    """A stored crash path by name (the seed and start prices do not change it: the
    path is the one the public accounts describe, at its real price levels)."""
    if name not in CRASH_PATHS:
        raise PathError(f"unknown crash path {name!r}: one of {', '.join(CRASH_PATHS)}")
    file = DATA_DIR / f"{name}.csv"
    loaded = from_csv(file)
    first = file.read_text().split("\n", 1)[0]
    title = first.lstrip("# ").strip() if first.startswith("#") else loaded.description
    return PricePath(
        name, f"{title} ({file.name}, {len(loaded)} points)", loaded.times, loaded.prices
    )


def _crash(name: str):  # noqa: ANN202 - a scenario maker like the shapes above
    def make(seed: int, start: Mapping[str, float] = START_PRICES) -> PricePath:
        return crash_path(name, seed, start)

    make.__name__ = name
    return make


SCENARIOS = {
    "black_thursday": black_thursday,
    "flash_crash": flash_crash,
    "slow_bleed": slow_bleed,
    "broken_correlation": broken_correlation,
    "random": random_path,
    **{name: _crash(name) for name in CRASH_PATHS},
}


def scenario_path(name: str, seed: int) -> PricePath:
    try:
        make = SCENARIOS[name]
    except KeyError:
        raise PathError(f"unknown scenario {name!r}: one of {', '.join(SCENARIOS)}") from None
    return make(seed)


__all__ = [
    "BTC",
    "CRASH_PATHS",
    "DATA_DIR",
    "ETH",
    "PathError",
    "PricePath",
    "SCENARIOS",
    "START_PRICES",
    "black_thursday",
    "broken_correlation",
    "crash_path",
    "flash_crash",
    "from_csv",
    "random_path",
    "rebounds",
    "scenario_path",
    "slow_bleed",
]
