"""HTML of the dashboard's pages: Jinja2 templates (`templates/`) and the inline SVG plot.

The same fragment templates render the first paint and every server-sent update, so a page
is one rendering path. Values arrive as the SDK's integers (wad, token units) and are
formatted here with `margincall.report`'s helpers.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from margincall.constants import WAD, State
from margincall.report import fmt_duration, fmt_fixed, fmt_pct, fmt_ratio, fmt_wad

TEMPLATES = Path(__file__).parent / "templates"
MAX_UINT = 2**256 - 1
GAUGE_MAX = 2 * WAD  # the gauge spans ratio 0..2


def _ratio(value: int) -> str:
    return fmt_ratio(int(value), 3)


def _gauge(value: int) -> float:
    """Percent of the gauge's width for a ratio (capped at GAUGE_MAX)."""
    return round(min(int(value), GAUGE_MAX) * 100 / GAUGE_MAX, 2)


def _signed(value: int | None) -> str:
    if value is None:
        return "no price"
    return ("+" if value > 0 else "") + fmt_wad(value)


def tokens_up(value: int, decimals: int, places: int = 2) -> str:
    """Token units shown with `places` decimals, rounded up: an amount to pay (a cure) must
    never show less than is needed."""
    step = 10 ** max(decimals - places, 0)
    return fmt_fixed(-(-int(value) // step) * step, decimals, min(places, decimals))


def environment(decimals: int, symbol: str) -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape())
    env.filters.update(
        wad=lambda v, places=2: fmt_wad(int(v), places),
        tok=lambda v, places=2: fmt_fixed(int(v), decimals, places),
        tok_up=lambda v, places=2: tokens_up(int(v), decimals, places),
        ratio=_ratio,
        pct=lambda v: fmt_pct(int(v)),
        gauge=_gauge,
        signed=_signed,
        duration=lambda v: fmt_duration(int(v)),
        short=lambda a: f"{a[:6]}…{a[-4:]}",
    )
    env.globals.update(State=State, symbol=symbol, decimals=decimals, MAX_UINT=MAX_UINT)
    return env


def price_svg(
    points: tuple[tuple[int, int], ...],
    liquidations: tuple[int, ...],
    now: int,
    hours: float,
    name: str,
    width: int = 520,
    height: int = 140,
) -> str:
    """A price line over the last `hours` and one red line per liquidation (timestamps) of
    the market (inline SVG)."""
    start = now - int(hours * 3_600)
    pts = [(t, p) for t, p in points if t >= start]
    liqs = [t for t in liquidations if t >= start]
    head = (
        f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(name)} price and liquidations">'
    )
    if not pts:
        return head + '<text x="10" y="20">no price points yet</text></svg>'
    lo = min(p for _, p in pts)
    hi = max(p for _, p in pts)
    span = max(hi - lo, hi // 100 or 1)
    left, right, top, bottom = 60, width - 8, 8, height - 20

    def x(t: int) -> float:
        return left + (t - start) * (right - left) / max(now - start, 1)

    def y(p: int) -> float:
        return bottom - (p - lo) * (bottom - top) / span

    line = " ".join(f"{x(t):.1f},{y(p):.1f}" for t, p in pts)
    parts = [
        head,
        f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
        'class="frame"/>',
        f'<text x="4" y="{top + 10}">{fmt_wad(hi, 0)}</text>',
        f'<text x="4" y="{bottom}">{fmt_wad(lo, 0)}</text>',
        f'<text x="{left}" y="{height - 4}">-{hours:g} h</text>',
        f'<text x="{right - 24}" y="{height - 4}">now</text>',
    ]
    for t in liqs:
        parts.append(
            f'<line class="liq" x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top}" y2="{bottom}"/>'
        )
    parts.append(f'<polyline class="price" points="{line}"/>')
    parts.append(
        f'<text x="{left + 4}" y="{top + 12}">{escape(name)}: {len(liqs)} liquidations</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def event_line(ev: Any, decimals: int) -> str:
    """One engine event as a short sentence (token amounts in whole tokens)."""
    a = ev.args
    tok = lambda v: fmt_fixed(int(v), decimals)  # noqa: E731
    if ev.name == "MarginCall":
        return f"margin call, deadline {int(a['deadline'])}, ratio {_ratio(int(a['ratio']))}"
    if ev.name == "MarginCallCleared":
        return "margin call cleared"
    if ev.name == "Liquidation":
        kind = "full close" if int(a["fraction"]) >= WAD else f"tranche {int(a['tranche'])}"
        return (
            f"liquidation ({kind}), closed {fmt_wad(int(a['closed_notional']))}, penalty "
            f"{tok(a['penalty'])}, ratio after {_ratio(int(a['ratio_after']))}"
        )
    if ev.name == "BadDebt":
        return (
            f"bad debt {tok(a['amount'])}: fund paid {tok(a['paid_by_fund'])}, "
            f"socialised {tok(a['socialised'])}"
        )
    return ev.name


__all__ = ["environment", "event_line", "price_svg", "tokens_up"]
