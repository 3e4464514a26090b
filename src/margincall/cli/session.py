"""The trader CLI's session and views: input parsing (`to_units`, `to_address`), the session
over a deployment record and the SDK client (`open_session`), and an account's status as
rich tables (`account_view`, `status_tables`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

# noise from a dependency's settings model when Ape loads, unrelated to the CLI
warnings.filterwarnings("ignore", message="Field 'import_remapping'")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from rich.text import Text  # noqa: E402

from margincall import math as ref  # noqa: E402
from margincall.constants import WAD  # noqa: E402
from margincall.deploy.record import (  # noqa: E402
    DeploymentRecord,
    RecordError,
)
from margincall.report import (  # noqa: E402
    STATE_STYLES,
    fmt_deadline,
    fmt_duration,
    fmt_ratio,
    fmt_tokens,
    fmt_wad,
    kv_table,
    state_text,
)
from margincall.sdk import (  # noqa: E402
    MarginEngineClient,
    MarginStatus,
    OracleError,
)

# --- errors and input --------------------------------------------------------


class InputError(ValueError):
    """The user's input is malformed (exit code 2)."""


def parse_decimal(text: str, what: str) -> Decimal:
    try:
        d = Decimal(str(text).replace("_", "").replace(",", ""))
    except InvalidOperation:
        raise InputError(f"{what}: {text!r} is not a number") from None
    if not d.is_finite():
        raise InputError(f"{what}: {text!r} is not a number")
    return d


def to_units(text: str, decimals: int, what: str, signed: bool = False) -> int:
    """A decimal string as a fixed-point integer with `decimals`, exactly; nonzero."""
    d = parse_decimal(text, what)
    if d == 0:
        raise InputError(f"{what}: must not be zero")
    if d < 0 and not signed:
        raise InputError(f"{what}: must be positive, got {text}")
    scaled = d.scaleb(decimals)
    if scaled != scaled.to_integral_value():
        raise InputError(f"{what}: {text} has more than {decimals} decimals")
    return int(scaled)


def to_address(text: str) -> str:
    from eth_utils import is_address, to_checksum_address

    if not is_address(text):
        raise InputError(f"account: {text!r} is not an address")
    return to_checksum_address(text)


# --- session -----------------------------------------------------------------


@dataclass
class Session:
    """A connected client over a recorded system, and where to print."""

    record: DeploymentRecord
    client: MarginEngineClient
    console: Console

    @property
    def symbol(self) -> str:
        return self.client.symbol()

    def tok(self, amount: int) -> str:
        return f"{fmt_tokens(amount, self.client.decimals)} {self.symbol}"

    def market_id(self, market: str) -> int:
        try:
            return self.record.market_id(market)
        except KeyError as err:
            raise InputError(err.args[0]) from None


def open_session(
    record: DeploymentRecord, chain: Any, project: Any, console: Console | None = None
) -> Session:
    """Checks that the record matches the connected chain; builds the SDK client."""
    if int(chain.chain_id) != record.chain_id:
        raise RecordError(
            f"deployment record is for chain id {record.chain_id}, "
            f"connected to chain id {chain.chain_id}"
        )
    code = chain.provider.get_code(record.engine)
    if not code or bytes(code) in (b"", b"\x00"):
        raise RecordError(
            f"no contract at the recorded engine {record.engine} on this chain "
            "(a local chain restarted? run `ape run deploy --force` again)"
        )
    if not hasattr(project, "MarginEngine"):
        raise RecordError("the margincall contracts are not in the Ape project: run from the repo")
    return Session(record, record.client(project), console or Console(highlight=False))


# --- views -------------------------------------------------------------------


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
    status: MarginStatus
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


def account_view(session: Session, account: str) -> AccountView:
    """Status (batched view: no exception on a bad price), positions and PnL at the oracle."""
    client = session.client
    status = client.statuses([account])[0]
    positions = []
    for m in client.record(account).market_ids:
        size, cost = client.position(account, m)
        try:
            price: int | None = client.price(m)
        except OracleError:
            price = None
        positions.append(PositionView(m, session.record.market_name(m), size, cost, price))
    from ape import chain

    head = chain.blocks.head
    return AccountView(
        status,
        tuple(positions),
        int(head.timestamp),
        int(head.number),
        client.risk_params().call_ratio,
    )


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


def status_tables(session: Session, view: AccountView) -> tuple[Table, Table | None]:
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
    summary = kv_table(rows, title=f"Account ({session.symbol}, values in collateral units)")
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
