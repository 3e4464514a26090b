"""What `status` and `watch` show of an account, from a status however it was read (the
SDK's `MarginStatus`, or the fast reader's `margincall.cli.fast.RawStatus`): rich tables and
JSON. No Ape, no SDK import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.table import Table
from rich.text import Text

from margincall import math as ref
from margincall.cli.common import wad_str
from margincall.constants import WAD
from margincall.report import (
    STATE_STYLES,
    fmt_deadline,
    fmt_duration,
    fmt_ratio,
    fmt_wad,
    kv_table,
    state_text,
)


@dataclass(frozen=True)
class PositionView:
    market_id: int
    name: str
    size: int  # wad, signed
    open_notional: int  # wad, signed
    price: int | None  # None: no valid price

    @property
    def entry_price(self) -> int:
        return abs(self.open_notional) * WAD // abs(self.size) if self.size else 0

    @property
    def notional(self) -> int | None:
        return None if self.price is None else ref.mul_up(abs(self.size), self.price)

    @property
    def pnl(self) -> int | None:
        if self.price is None:
            return None
        return ref.div_floor(self.size * self.price, WAD) - self.open_notional


@dataclass(frozen=True)
class AccountView:
    status: Any  # MarginStatus or RawStatus
    positions: tuple[PositionView, ...]
    now: int
    block: int
    call_ratio: int

    @property
    def cure_amount(self) -> int:
        """Wad of collateral that brings the ratio back to the call ratio (0 if there)."""
        s = self.status
        if s.maintenance == 0:
            return 0
        need = ref.mul_up(self.call_ratio, s.maintenance) - s.equity
        return max(need, 0)


def _signed(value: int | None, places: int = 2) -> Text:
    if value is None:
        return Text("no price", style="dim")
    style = "green" if value > 0 else "red" if value < 0 else ""
    return Text(("+" if value > 0 else "") + fmt_wad(value, places), style=style)


def _next_tranche(view: AccountView) -> Text:
    t = view.status.next_tranche_time
    if t == 0:
        return Text("-", style="dim")
    if view.now >= t:
        return Text("now", style="red")
    return Text(f"in {fmt_duration(t - view.now)}", style="dark_orange")


def status_tables(symbol: str, view: AccountView) -> tuple[Table, Table | None]:
    s = view.status
    ratio = Text(fmt_ratio(s.ratio), style=STATE_STYLES[s.state])
    if not s.priced:
        ratio = Text("no price", style="dim")
    rows: list[tuple[str, Any]] = [
        ("account", s.account),
        ("state", state_text(s.state)),
        ("collateral", fmt_wad(s.collateral)),
        ("equity", fmt_wad(s.equity)),
        ("maintenance margin", fmt_wad(s.maintenance)),
        ("initial margin", fmt_wad(s.initial)),
        ("ratio", ratio),
        ("call ratio", fmt_ratio(view.call_ratio, 2)),
        ("call deadline", fmt_deadline(s.call_deadline, view.now)),
        ("next tranche", _next_tranche(view)),
        ("block", f"{view.block} (t={view.now})"),
    ]
    if view.cure_amount:
        rows.append(
            (
                "to cure",
                Text(f"deposit {fmt_wad(view.cure_amount)} or reduce", style="dark_orange"),
            )
        )
    summary = kv_table(rows, title=f"Account ({symbol}, values in collateral units)")
    if not view.positions:
        return summary, None
    table = Table(title="Positions", title_justify="left", header_style="bold cyan")
    for col in ("market", "side", "size", "entry", "price", "notional", "PnL"):
        table.add_column(col, justify="left" if col in ("market", "side") else "right")
    for p in view.positions:
        table.add_row(
            p.name,
            Text("long", style="green") if p.size > 0 else Text("short", style="red"),
            fmt_wad(abs(p.size), 4),
            fmt_wad(p.entry_price),
            fmt_wad(p.price) if p.price is not None else Text("no price", style="dim"),
            fmt_wad(p.notional) if p.notional is not None else "-",
            _signed(p.pnl),
        )
    return summary, table


def view_json(view: AccountView) -> dict[str, Any]:
    """The account as JSON: values in collateral units as exact decimal strings (a ratio of
    an account without positions is null: infinite), times as unix seconds."""
    s = view.status
    return {
        "account": s.account,
        "block": view.block,
        "timestamp": view.now,
        "state": s.state.name,
        "priced": s.priced,
        "collateral": wad_str(s.collateral),
        "equity": wad_str(s.equity),
        "maintenance": wad_str(s.maintenance),
        "initial": wad_str(s.initial),
        "ratio": None if s.ratio >= 2**255 or not s.priced else wad_str(s.ratio),
        "call_ratio": wad_str(view.call_ratio),
        "call_deadline": s.call_deadline or None,
        "next_tranche_time": s.next_tranche_time or None,
        "to_cure": wad_str(view.cure_amount),
        "positions": [
            {
                "market_id": p.market_id,
                "market": p.name,
                "size": wad_str(p.size),
                "entry_price": wad_str(p.entry_price),
                "price": wad_str(p.price),
                "notional": wad_str(p.notional),
                "pnl": wad_str(p.pnl),
            }
            for p in view.positions
        ],
    }


__all__ = ["AccountView", "PositionView", "status_tables", "view_json"]
