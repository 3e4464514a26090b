"""Rich formatting of margin accounts, shared by the demo, the CLI and the bots.

Every helper takes plain integers as the contracts return them: wad (18
decimals) for values and ratios, token units (with the token's `decimals`)
for balances and token flows. A `MarginStatus` from `check_margin` or
`check_margins` (an Ape struct, a namedtuple or a dict with the same field
names) renders as one table row.
"""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from margincall.constants import State

MAX_UINT = 2**256 - 1

STATE_STYLES: dict[State, str] = {
    State.HEALTHY: "green",
    State.CALLABLE: "yellow",
    State.CALLED: "dark_orange",
    State.LIQUIDATABLE: "red",
    State.CRITICAL: "bold red",
    State.BANKRUPT: "magenta",
}

STATUS_COLUMNS = (
    "account",
    "state",
    "collateral",
    "equity",
    "maintenance",
    "ratio",
    "call deadline",
    "positions",
)


def field(obj: Any, name: str) -> Any:
    """A field of a struct-like object: attribute or mapping key."""
    if isinstance(obj, Mapping):
        return obj[name]
    return getattr(obj, name)


def fmt_fixed(value: int, decimals: int = 18, places: int = 2) -> str:
    """A fixed-point integer as a grouped decimal string, truncated toward zero."""
    sign = "-" if value < 0 else ""
    value = abs(int(value))
    whole, frac = divmod(value, 10**decimals)
    text = f"{sign}{whole:,}"
    if places > 0:
        frac_text = f"{frac:0{decimals}d}"[:places] if decimals else ""
        text += "." + frac_text.ljust(places, "0")
    return text


def fmt_wad(value: int, places: int = 2) -> str:
    """A wad (18-decimal value) as `12,345.67`."""
    return fmt_fixed(value, 18, places)


def fmt_tokens(amount: int, decimals: int, places: int = 2) -> str:
    """A token amount in token units as `12,345.67`."""
    return fmt_fixed(amount, decimals, places)


def fmt_ratio(ratio: int, places: int = 4) -> str:
    """A wad ratio; the engine's `max_value(uint256)` (no positions) is infinity."""
    if int(ratio) >= MAX_UINT:
        return "∞"
    return fmt_fixed(ratio, 18, places).replace(",", "")


def fmt_pct(fraction: int, places: int = 2) -> str:
    """A wad fraction as a percentage."""
    return fmt_fixed(int(fraction) * 100, 18, places) + "%"


def fmt_duration(seconds: int) -> str:
    seconds = abs(int(seconds))
    hours, rest = divmod(seconds, 3_600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def fmt_deadline(deadline: int, now: int | None = None) -> Text:
    """A call deadline (0: no live call), relative to `now` when given."""
    deadline = int(deadline)
    if deadline == 0:
        return Text("-", style="dim")
    if now is None:
        return Text(str(deadline))
    if now < deadline:
        return Text(f"in {fmt_duration(deadline - now)}", style="dark_orange")
    return Text(f"passed {fmt_duration(now - deadline)} ago", style="red")


def state_text(state: int) -> Text:
    """The state's name in its color."""
    s = State(int(state))
    return Text(s.name, style=STATE_STYLES[s])


def positions_text(positions: Iterable[tuple[str, int]], places: int = 4) -> str:
    """Signed sizes (wad of base asset) by market name, e.g. `+30 ETH-USD, -0.5 BTC-USD`."""
    parts = []
    for name, size in positions:
        if int(size) == 0:
            continue
        text = fmt_fixed(int(size), 18, places).rstrip("0").rstrip(".")
        parts.append(f"{'+' if int(size) > 0 else ''}{text} {name}")
    return ", ".join(parts) or "-"


def status_row(
    status: Any,
    label: str | None = None,
    now: int | None = None,
    positions: str | None = None,
) -> list[Text | str]:
    """One row (in `STATUS_COLUMNS` order) for a MarginStatus-like object.

    MarginStatus carries every value in wad, collateral included (the engine
    scales it), so no token decimals are needed here.
    """
    state = int(field(status, "state"))
    style = STATE_STYLES[State(state)]
    priced = field(status, "priced") if _has(status, "priced") else True
    ratio = Text(fmt_ratio(field(status, "ratio")), style=style)
    if not priced:
        ratio = Text("no price", style="dim")
    return [
        label or str(field(status, "account")),
        state_text(state),
        fmt_wad(field(status, "collateral")),
        fmt_wad(field(status, "equity")),
        fmt_wad(field(status, "maintenance")),
        ratio,
        fmt_deadline(field(status, "call_deadline"), now),
        positions if positions is not None else str(int(field(status, "positions"))),
    ]


def status_table(
    rows: Iterable[tuple[str, Any] | tuple[str, Any, str]],
    title: str | None = None,
    now: int | None = None,
) -> Table:
    """A table of accounts: `(label, status)` or `(label, status, positions_text)`."""
    table = Table(title=title, title_justify="left", header_style="bold cyan")
    for name in STATUS_COLUMNS:
        numeric = name in ("collateral", "equity", "maintenance", "ratio")
        table.add_column(name, justify="right" if numeric else "left", no_wrap=name != "positions")
    for row in rows:
        label, status = row[0], row[1]
        positions = row[2] if len(row) > 2 else None
        table.add_row(*status_row(status, label=label, now=now, positions=positions))
    return table


def kv_table(items: Iterable[tuple[str, Any]], title: str | None = None) -> Table:
    """A two-column key/value table (addresses, parameters, totals)."""
    table = Table(title=title, title_justify="left", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in items:
        table.add_row(key, value if isinstance(value, Text) else str(value))
    return table


def _has(obj: Any, name: str) -> bool:
    if isinstance(obj, Mapping):
        return name in obj
    return hasattr(obj, name)


__all__ = [
    "cpu_model",
    "tool_version",
    "STATE_STYLES",
    "STATUS_COLUMNS",
    "field",
    "fmt_deadline",
    "fmt_duration",
    "fmt_fixed",
    "fmt_pct",
    "fmt_ratio",
    "fmt_tokens",
    "fmt_wad",
    "kv_table",
    "positions_text",
    "state_text",
    "status_row",
    "status_table",
]


def cpu_model() -> str:
    """The machine's CPU model (from /proc/cpuinfo), for the benchmarks' machine lines."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def tool_version(command: list[str], prefix: str = "") -> str:
    """The first line a tool prints for its version (`prefix` removed), "?" when it cannot."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
        return done.stdout.splitlines()[0].replace(prefix, "")
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"
