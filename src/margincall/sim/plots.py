"""Matplotlib plots of a simulation (PNG, Agg backend, no display needed).

- `price.png`: each market's price relative to its start;
- `ratios.png`: the distribution of the ratios (equity / maintenance) of the accounts
  still open, over time, per mode: median, 25-75% and 5-95% bands, with the critical,
  maintenance and call ratios marked. Survivorship: an account leaves the sample when it
  is closed or liquidated whole, so the bands are not the population's (the plot says so);
- `liquidations.png`: notional liquidated per time window, per mode;
- `fund.png`: the insurance fund's balance, per mode;
- `summary.png`: the four in one figure (what docs/benchmarks.md shows).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

from margincall.constants import WAD  # noqa: E402
from margincall.sim.metrics import sample_columns  # noqa: E402
from margincall.sim.paths import PricePath  # noqa: E402
from margincall.sim.record import RunRecord  # noqa: E402

COLORS = {"phased": "tab:blue", "baseline": "tab:orange"}
DPI = 80


def _columns(record: RunRecord) -> dict[str, np.ndarray]:
    cols = sample_columns(record.markets)
    data = np.array(record.samples, dtype=float) if record.samples else np.zeros((0, len(cols)))
    return {c: data[:, i] for i, c in enumerate(cols)}


def _hours(seconds: np.ndarray | float) -> np.ndarray | float:
    return np.asarray(seconds) / 3600 if isinstance(seconds, np.ndarray) else seconds / 3600


def draw_price(ax: Axes, path: PricePath, end: int | None = None) -> None:
    """Each market's price vs its start; held flat from the last point to `end` (seconds)."""
    times = list(path.times)
    if end is not None and end > times[-1]:
        times.append(end)
    t = _hours(np.array(times, dtype=float))
    for m in path.markets:
        s = np.array(path.prices[m])
        s = np.append(s, s[-1]) if len(times) > len(s) else s
        ax.plot(t, (s / s[0] - 1) * 100, label=m, lw=1)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_ylabel("price vs start (%)")
    ax.set_xlabel("hours")
    ax.set_title("price path")
    ax.legend(loc="lower left", fontsize=8)


def draw_ratios(ax: Axes, record: RunRecord, others: Mapping[str, RunRecord] = ()) -> None:
    c = _columns(record)
    if len(c["t"]) == 0:
        return
    t = _hours(c["t"])
    color = COLORS.get(record.mode, "tab:blue")
    ax.fill_between(t, c["ratio_p5"], c["ratio_p95"], step="post", alpha=0.15, color=color)
    ax.fill_between(t, c["ratio_p25"], c["ratio_p75"], step="post", alpha=0.3, color=color)
    ax.step(t, c["ratio_p50"], where="post", color=color, lw=1, label=f"{record.mode} median")
    for mode, other in dict(others).items():
        o = _columns(other)
        ax.step(
            _hours(o["t"]),
            o["ratio_p50"],
            where="post",
            color=COLORS.get(mode, "grey"),
            lw=1,
            ls="--",
            label=f"{mode} median",
        )
    p = record.params
    marks = [(1.0, "maintenance", "red")]
    if record.mode == "phased":
        marks += [
            (p.call_ratio / WAD, "call", "darkorange"),
            (p.critical_ratio / WAD, "critical", "purple"),
        ]
    for y, label, col in marks:
        ax.axhline(y, color=col, lw=0.8, ls=":", label=f"{label} ratio {y:g}")
    ax.set_yscale("log")
    ax.set_ylim(0.2, 20)
    ax.set_ylabel("equity / maintenance")
    ax.set_xlabel("hours")
    # survivorship: liquidated and closed accounts leave the sample, so the bands describe
    # the accounts still open, not the population
    ax.set_title(
        f"ratios of accounts still open ({record.mode}: 5-25-50-75-95%)\n"
        "closed and liquidated accounts leave the sample",
        fontsize=9,
    )
    ax.legend(loc="upper left", fontsize=7, ncol=2)


def _window(seconds: int) -> int:
    for w in (300, 900, 1800, 3600, 4 * 3600, 12 * 3600):
        if seconds / w <= 60:
            return w
    return 86_400


def draw_liquidations(ax: Axes, records: Mapping[str, RunRecord]) -> None:
    end = max(r.end for r in records.values())
    w = _window(end)
    bins = np.arange(0, end + w, w)
    width = w / 3600 / (len(records) + 1)
    for i, (mode, r) in enumerate(records.items()):
        t = np.array([e["t"] for e in r.liquidations], dtype=float)
        n = np.array([e["closed_notional"] / WAD for e in r.liquidations])
        sums, _ = np.histogram(t, bins=bins, weights=n)
        ax.bar(
            _hours(bins[:-1]) + i * width,
            sums / 1e6,
            width=width,
            align="edge",
            color=COLORS.get(mode, None),
            label=mode,
        )
    ax.set_ylabel("notional liquidated (M tokens)")
    ax.set_xlabel("hours")
    ax.set_title(f"liquidated notional per {w // 60} min")
    ax.legend(fontsize=8)


def draw_fund(ax: Axes, records: Mapping[str, RunRecord]) -> None:
    for mode, r in records.items():
        c = _columns(r)
        unit = 10**r.decimals
        t = np.concatenate([[0.0], _hours(c["t"])])
        f = np.concatenate([[r.fund_start / unit], c["fund"] / unit])
        ax.step(t, f / 1e3, where="post", color=COLORS.get(mode, None), label=mode, lw=1)
    ax.set_ylabel("insurance fund (k tokens)")
    ax.set_xlabel("hours")
    ax.set_title("insurance fund balance")
    ax.legend(fontsize=8)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def summary(records: Mapping[str, RunRecord], path: PricePath, out: Path, title: str = "") -> Path:
    """The 2x2 figure: price, ratios (phased bands, baseline median), liquidations, fund."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    draw_price(axes[0][0], path, max(r.end for r in records.values()))
    main = records.get("phased") or next(iter(records.values()))
    others = {m: r for m, r in records.items() if r is not main}
    draw_ratios(axes[0][1], main, others)
    draw_liquidations(axes[1][0], records)
    draw_fund(axes[1][1], records)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, out)


def write_all(records: Mapping[str, RunRecord], path: PricePath, out_dir: Path) -> list[Path]:
    """Every plot into `out_dir`; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    fig, ax = plt.subplots(figsize=(8, 4))
    draw_price(ax, path, max(r.end for r in records.values()))
    written.append(_save(fig, out_dir / "price.png"))
    fig, axes = plt.subplots(1, len(records), figsize=(8 * len(records), 4), squeeze=False)
    for ax, r in zip(axes[0], records.values(), strict=True):
        draw_ratios(ax, r)
    written.append(_save(fig, out_dir / "ratios.png"))
    fig, ax = plt.subplots(figsize=(8, 4))
    draw_liquidations(ax, records)
    written.append(_save(fig, out_dir / "liquidations.png"))
    fig, ax = plt.subplots(figsize=(8, 4))
    draw_fund(ax, records)
    written.append(_save(fig, out_dir / "fund.png"))
    written.append(summary(records, path, out_dir / "summary.png", path.name))
    return written


__all__ = [
    "draw_fund",
    "draw_liquidations",
    "draw_price",
    "draw_ratios",
    "summary",
    "write_all",
]
