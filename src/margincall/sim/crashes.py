"""Crash paths drawn from public accounts of real crashes, stored as CSV in `sim/data/`.

Each path is a table of anchor points (hours from the start, ETH-USD, BTC-USD). The
anchors that a public account gives (a high, a low, a close, a duration) are marked
`cited` with their source in `sim/data/README.md`; the others shape the path between
them (when a leg starts, how a rebound runs) and are read off the same accounts'
narrative, not quoted. Between anchors the price moves log-linearly with a Brownian
bridge of seeded noise pinned to zero at every anchor; a segment between two equal
anchors is flat (a stalled feed), and a segment of one step is a single jump (an oracle
update that gaps the price).

The CSVs are generated, deterministic (seed 0) and committed; regenerate them with

    python -m margincall.sim.crashes

`margincall simulate --scenario <name>` replays them (`margincall.sim.paths.crash_path`).
The seed of a simulation changes its population, not these paths.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from margincall.sim.paths import BTC, DATA_DIR, ETH, PricePath


@dataclass(frozen=True)
class Crash:
    """One crash path: anchors (hour, ETH, BTC), its step, noise and documented moves."""

    name: str
    title: str
    start_utc: str  # the wall-clock time of hour 0
    step: int  # seconds between points
    sigma: float  # noise per step, in log terms
    anchors: tuple[tuple[float, float, float], ...]
    cited: tuple[int, ...]  # indexes of the anchors a public account gives
    eth_drawdown: float  # documented: the deepest fall of ETH from its running peak

    @property
    def file(self) -> Path:
        return DATA_DIR / f"{self.name}.csv"


CRASHES: tuple[Crash, ...] = (
    Crash(
        name="yen_carry_2024",
        title="2024-08-05 overnight crash (yen carry unwind, Asian session)",
        start_utc="2024-08-04T22:00:00Z",
        step=60,
        sigma=0.0015,
        anchors=(
            (0.0, 2_695, 58_350),  # cited: the start of the fall
            (2.5, 2_600, 57_000),  # Tokyo opens, the Nikkei falls
            (4.0, 2_450, 55_000),
            (5.0, 2_380, 53_800),
            (6.0, 2_300, 52_800),
            (6.75, 2_111, 49_513),  # cited: the lows, under 5 hours after the start
            (7.5, 2_250, 52_500),
            (8.5, 2_200, 52_000),
            (10.0, 2_330, 53_800),
            (12.0, 2_358, 54_094),  # cited: where both stabilised
        ),
        cited=(0, 5, 9),
        eth_drawdown=2_111 / 2_695 - 1,
    ),
    Crash(
        name="terra_week_2022",
        title="2022-05-07 to 05-13 Terra (UST/LUNA) collapse week, with rebounds",
        start_utc="2022-05-07T00:00:00Z",
        step=300,
        sigma=0.003,
        anchors=(
            (0, 2_700, 36_000),
            (24, 2_640, 35_400),
            (48, 2_519, 34_032),  # cited: Sunday May 8 close
            (66, 2_250, 30_000),  # cited (BTC): down to 30,000 on May 9
            (80, 2_450, 32_680),  # cited (BTC): the May 10 bounce high
            (96, 2_340, 31_112),  # cited (BTC): May 10 close
            (108, 2_250, 30_500),
            (116, 1_817, 29_000),  # cited: ETH's low 1,816.64 May 11, BTC 29,000
            (122, 1_994, 29_500),  # cited (ETH): 1,994 on May 12
            (130, 1_850, 25_401),  # cited (BTC): May 12 low 25,401
            (144, 1_950, 28_800),
            (156, 2_105, 30_579),  # cited: May 13, the week -22% (ETH)
        ),
        cited=(2, 3, 4, 5, 7, 8, 9, 11),
        eth_drawdown=1_817 / 2_700 - 1,
    ),
    Crash(
        name="oracle_gap",
        title="a stalled feed, then one update that gaps the price by 10/10's move",
        start_utc="2025-10-10T20:00:00Z",
        step=60,
        sigma=0.0008,
        anchors=(
            (0.0, 4_350, 121_500),
            (0.5, 4_330, 121_000),  # the last live update before the stall
            (1.25, 4_330, 121_000),  # 45 minutes without an update (flat: the stale answer)
            (1.25 + 1 / 60, 3_654, 106_900),  # cited: one update, ETH -16%, BTC -12%
            (2.25, 3_870, 111_500),  # live again: a partial rebound
            (4.0, 3_850, 111_000),
        ),
        cited=(3,),
        eth_drawdown=3_654 / 4_350 - 1,
    ),
    Crash(
        name="tariff_whipsaw_2025",
        title="2025-10-10 tariff crash, the largest liquidation day on record: down and back",
        start_utc="2025-10-10T19:00:00Z",
        step=60,
        sigma=0.0015,
        anchors=(
            (0.0, 4_380, 122_000),  # cited (BTC): 122,000 before the fall
            (1.5, 4_300, 119_000),
            (2.0, 4_050, 114_500),  # the tariff headline: the cascade starts
            (2.33, 3_680, 107_000),  # cited: ETH -16%, BTC under 107,000, in under an hour
            (3.0, 3_900, 111_000),
            (3.5, 3_800, 110_000),  # cited (BTC): holds around 110,000
            (6.0, 3_850, 111_500),
        ),
        cited=(0, 3, 5),
        eth_drawdown=3_680 / 4_380 - 1,
    ),
    Crash(
        name="ftx_week_2022",
        title="2022-11-06 to 11-13 FTX collapse week",
        start_utc="2022-11-06T00:00:00Z",
        step=300,
        sigma=0.003,
        anchors=(
            (0, 1_634, 21_053),  # cited: the week's highs
            (24, 1_600, 20_900),
            (48, 1_570, 20_600),
            (62, 1_330, 18_500),  # Nov 8: Binance's letter of intent, then the slide
            (70, 1_400, 19_000),
            (90, 1_180, 16_500),  # Nov 9: Binance walks away
            (94, 1_083, 15_682),  # cited: the week's lows
            (110, 1_300, 17_600),  # Nov 10: the CPI rally
            (120, 1_320, 18_000),
            (132, 1_230, 16_900),  # Nov 11: FTX files for bankruptcy
            (156, 1_260, 16_800),
            (180, 1_244, 16_706),  # cited: Nov 13
        ),
        cited=(0, 6, 11),
        eth_drawdown=1_083 / 1_634 - 1,
    ),
)

BY_NAME = {c.name: c for c in CRASHES}


def _segment(rng: np.random.Generator, a: float, b: float, n: int, sigma: float) -> np.ndarray:
    """n + 1 log-levels from a to b: linear, with bridge noise pinned at both ends."""
    base = np.linspace(a, b, n + 1)
    if n < 2 or a == b or sigma == 0:
        return base
    walk = np.concatenate([[0.0], np.cumsum(rng.normal(0.0, sigma, n))])
    return base + walk - np.arange(n + 1) / n * walk[-1]


def build(crash: Crash, seed: int = 0) -> PricePath:
    """The path of `crash` (deterministic for a seed; the CSVs use seed 0)."""
    rng = np.random.default_rng([seed, sum(map(ord, crash.name))])
    steps = [round(h * 3600 / crash.step) for h, _, _ in crash.anchors]
    if steps[0] != 0 or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError(f"{crash.name}: anchors must start at 0 and fall on distinct steps")
    series = {}
    for col, market in ((1, ETH), (2, BTC)):
        logs = np.log([a[col] for a in crash.anchors])
        levels = [logs[0]]
        for i in range(1, len(crash.anchors)):
            seg = _segment(rng, logs[i - 1], logs[i], steps[i] - steps[i - 1], crash.sigma)
            levels.extend(seg[1:])
        series[market] = tuple(float(x) for x in np.exp(levels))
    times = tuple(i * crash.step for i in range(steps[-1] + 1))
    return PricePath(crash.name, crash.title, times, series)


def write(crash: Crash) -> Path:
    """Writes the crash's CSV: a comment header (title, start, source pointer), then rows."""
    path = build(crash)
    crash.file.parent.mkdir(parents=True, exist_ok=True)
    tmp = crash.file.with_suffix(".tmp")
    path.to_csv(tmp)
    header = (
        f"# {crash.title}\n"
        f"# generated by `python -m margincall.sim.crashes` from anchors cited in README.md;"
        f" timestamp = seconds from {crash.start_utc}\n"
    )
    crash.file.write_text(header + tmp.read_text())
    tmp.unlink()
    return crash.file


def main(argv: list[str] | None = None) -> int:
    for crash in CRASHES:
        written = write(crash)
        sys.stdout.write(f"wrote {written}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["BY_NAME", "CRASHES", "DATA_DIR", "Crash", "build", "write"]
