"""`margincall`: the trader CLI (status, deposit, withdraw, trade, close, watch).

    margincall status 0xTrader... --network ethereum:local:foundry
    margincall deposit 1000 --account trader
    margincall trade ETH-USD 1.5 --slippage-bps 30 --account trader
    margincall trade ETH-USD -0.5 --account trader      # a negative size sells
    margincall close ETH-USD --account trader
    margincall watch 0xTrader...                        # one line per block; --once, --blocks N

Every command reads a deployment record written by `ape run deploy`
(`--deployment`, default `deployments/<ecosystem>-<network>.json`), connects
with Ape (`--network`, `--account`) and goes through the SDK, whose checks run
before anything is sent. Exit codes: 0 done, 2 bad input (a malformed amount,
an unknown market, ...), 1 refused (an SDK check, a revert, a record that does
not match the chain).

On the local network, run `anvil` yourself and `export
APE_FOUNDRY_HOST=http://127.0.0.1:8545` for `ape run deploy` and this CLI to
share one chain (the embedded Anvil dies with each command).

The click commands are thin: the work is in the `run_*` functions, which take
an already-connected client, so tests call them inside `ape test`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import click

# noise from a dependency's settings model when Ape loads, unrelated to the CLI
warnings.filterwarnings("ignore", message="Field 'import_remapping'")

from ape.cli import ConnectedProviderCommand, account_option, network_option  # noqa: E402
from ape.exceptions import ApeException, ContractLogicError  # noqa: E402
from ape.logging import logger  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from rich.text import Text  # noqa: E402

from margincall import math as ref  # noqa: E402
from margincall.constants import WAD, State  # noqa: E402
from margincall.deployment import (  # noqa: E402
    DEFAULT_DIR,
    DeploymentRecord,
    RecordError,
    read_record,
)
from margincall.deployment import record_path as default_record_path  # noqa: E402
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
    MarginCallError,
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
        try:
            return str(self.client.token.symbol())
        except Exception:  # noqa: BLE001 - a token without symbol()
            return "tokens"

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
        size, cost = (int(x) for x in client.engine.position(account, m))
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


# --- commands (connected) ------------------------------------------------------


def run_status(session: Session, account: str) -> AccountView:
    view = account_view(session, to_address(account))
    summary, positions = status_tables(session, view)
    session.console.print(summary)
    if positions is not None:
        session.console.print(positions)
    else:
        session.console.print("no open positions")
    return view


def run_deposit(session: Session, amount: str, sender: Any, approve: bool = True) -> Any:
    """Deposits `amount` whole tokens for the sender; approves the engine first if needed."""
    client = session.client
    units = to_units(amount, client.decimals, "amount")
    balance = int(client.token.balanceOf(sender.address))
    allowance = int(client.token.allowance(sender.address, client.engine.address))
    if approve and balance >= units and allowance < units:
        client.token.approve(client.engine.address, units, sender=sender)
        session.console.print(f"approved the engine for {session.tok(units)}")
    receipt = client.deposit(units, sender)
    ev = receipt.decode_logs(client.engine.Deposit)[0]
    session.console.print(
        f"deposited {session.tok(ev.amount)} for {ev.account};"
        f" collateral {session.tok(ev.collateral)}"
    )
    _cleared(session, receipt)
    return receipt


def run_withdraw(session: Session, amount: str, sender: Any) -> Any:
    client = session.client
    units = to_units(amount, client.decimals, "amount")
    receipt = client.withdraw(units, sender)
    ev = receipt.decode_logs(client.engine.Withdraw)[0]
    session.console.print(
        f"withdrew {session.tok(ev.amount)}; collateral {session.tok(ev.collateral)}"
    )
    return receipt


def _slippage(bps: int) -> int:
    if not 0 <= bps < 10_000:
        raise InputError(f"slippage: {bps} bps is outside 0..9999")
    return bps


def _position_line(session: Session, receipt: Any, verb: str) -> None:
    ev = receipt.decode_logs(session.client.engine.PositionChanged)[-1]
    name = session.record.market_name(int(ev.market_id))
    session.console.print(
        f"{verb} {fmt_wad(abs(ev.size_delta), 4)} {name} at {fmt_wad(ev.price)}:"
        f" size now {fmt_wad(ev.size, 4)}, fee {session.tok(ev.fee)},"
        f" realised PnL {session.tok(ev.realized_pnl)},"
        f" collateral {session.tok(ev.collateral)}"
    )


def _cleared(session: Session, receipt: Any) -> None:
    if receipt.decode_logs(session.client.engine.MarginCallCleared):
        session.console.print("[green]margin call cleared[/]")


def run_trade(session: Session, market: str, size: str, sender: Any, slippage_bps: int = 50) -> Any:
    """Trades `size` base units (negative: sell) at the oracle price within the slippage."""
    client = session.client
    market_id = session.market_id(market)
    delta = to_units(size, 18, "size", signed=True)
    bound = client.acceptable_price(market_id, delta, _slippage(slippage_bps))
    receipt = client.trade(market_id, delta, bound, sender)
    _position_line(session, receipt, "bought" if delta > 0 else "sold")
    _cleared(session, receipt)
    return receipt


def run_close(session: Session, market: str, sender: Any, slippage_bps: int = 50) -> Any:
    client = session.client
    market_id = session.market_id(market)
    size = int(client.engine.position(sender.address, market_id)[0])
    bound = client.acceptable_price(market_id, -size or 1, _slippage(slippage_bps))
    receipt = client.close(market_id, bound, sender)
    _position_line(session, receipt, "closed")
    _cleared(session, receipt)
    return receipt


def poll_heads(chain: Any, interval: float = 1.0) -> Iterator[int]:
    """New head block numbers as they appear (polling every `interval` seconds)."""
    last = int(chain.blocks.head.number)
    while True:
        time.sleep(interval)
        head = int(chain.blocks.head.number)
        if head > last:
            last = head
            yield head


def watch_line(session: Session, view: AccountView) -> Text:
    s = view.status
    line = Text(f"block {view.block}  ")
    line.append_text(state_text(s.state))
    ratio = fmt_ratio(s.ratio) if s.priced else "no price"
    line.append(
        f"  ratio {ratio}  equity {fmt_wad(s.equity)}  maintenance {fmt_wad(s.maintenance)}"
    )
    pnl = [p.pnl for p in view.positions]
    if pnl and None not in pnl:
        line.append("  PnL ")
        line.append_text(_signed(sum(p for p in pnl if p is not None)))
    return line


def margin_alert(view: AccountView) -> Text | None:
    """The highlighted line for an account that needs its trader (None when HEALTHY)."""
    s = view.status
    cure = f"deposit {fmt_wad(view.cure_amount)} or reduce"
    if s.state == State.CALLED:
        left = fmt_duration(max(s.call_deadline - view.now, 0))
        return Text(f"MARGIN CALL: {left} left to cure; {cure}", style="bold white on dark_orange")
    if s.state == State.CALLABLE:
        return Text(
            f"below the call ratio: a keeper may margin-call this account; {cure}",
            style="bold black on yellow",
        )
    if s.state >= State.LIQUIDATABLE:
        return Text(f"{s.state.name}: being liquidated; {cure}", style="bold white on red")
    return None


def run_watch(
    session: Session,
    account: str,
    blocks: int | None = None,
    stream: Iterator[int] | Callable[[], Iterator[int]] | None = None,
    interval: float = 1.0,
) -> list[AccountView]:
    """Prints the account at the head, then at every new block, `blocks` times (None: forever).

    Highlights a margin call (and any state change). `stream` yields new block numbers
    (default: `poll_heads`); tests pass one that mines.
    """
    from ape import chain

    address = to_address(account)
    if blocks is not None and blocks < 0:
        raise InputError("blocks: must not be negative")
    views = [_watch_once(session, address, None)]
    if blocks == 0:
        return views
    heads = stream() if callable(stream) else stream
    for _ in heads if heads is not None else poll_heads(chain, interval):
        views.append(_watch_once(session, address, views[-1]))
        if blocks is not None and len(views) > blocks:
            break
    return views


def _watch_once(session: Session, account: str, previous: AccountView | None) -> AccountView:
    view = account_view(session, account)
    if previous is not None and previous.status.state != view.status.state:
        change = Text("state ")
        change.append_text(state_text(previous.status.state))
        change.append(" -> ")
        change.append_text(state_text(view.status.state))
        session.console.print(change)
    session.console.print(watch_line(session, view))
    alert = margin_alert(view)
    if alert is not None:
        session.console.print(alert)
    return view


# --- click -------------------------------------------------------------------


@contextmanager
def exit_codes() -> Iterator[None]:
    """Bad input: exit 2 (click usage error); refused or reverted: exit 1, one line."""
    try:
        yield
    except InputError as err:
        raise click.UsageError(str(err), ctx=click.get_current_context(silent=True)) from None
    except (MarginCallError, RecordError) as err:
        raise click.ClickException(f"refused: {err}") from None
    except ContractLogicError as err:
        raise click.ClickException(f"reverted: {err}") from None
    except ApeException as err:
        raise click.ClickException(f"failed: {err}") from None


def _session(provider: Any, deployment: Path | None) -> Session:
    from ape import chain, project

    path = deployment or default_record_path(provider.network_choice, DEFAULT_DIR)
    return open_session(read_record(path), chain, project)


def deployment_option(f: Callable) -> Callable:
    return click.option(
        "--deployment",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Deployment record [default: deployments/<ecosystem>-<network>.json].",
    )(f)


def slippage_option(f: Callable) -> Callable:
    return click.option(
        "--slippage-bps",
        type=click.IntRange(0, 9_999),
        default=50,
        show_default=True,
        help="Worst acceptable price, in basis points from the oracle price.",
    )(f)


def _account_arg(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return to_address(value)
    except InputError as err:
        raise click.BadParameter(str(err)) from None


def _not_an_option(ctx: click.Context, value: str) -> None:
    """Commands with `_SIGNED` take unknown options as arguments: name a mistyped option
    as click would (`--acount` is no amount)."""
    if value.startswith("--"):
        raise click.NoSuchOption(value.split("=", 1)[0], ctx=ctx)


def _amount_arg(ctx: click.Context, param: click.Parameter, value: str) -> str:
    _not_an_option(ctx, value)
    try:
        to_units(value, 18, "amount")  # the token's decimals are checked once connected
    except InputError as err:
        raise click.BadParameter(str(err)) from None
    return value


def _size_arg(ctx: click.Context, param: click.Parameter, value: str) -> str:
    _not_an_option(ctx, value)
    try:
        to_units(value, 18, "size", signed=True)
    except InputError as err:
        raise click.BadParameter(str(err)) from None
    return value


# a number with a minus sign (`trade ETH-USD -0.5`, `withdraw -3`) must reach its argument's
# check, not be parsed as an option: a negative size sells, a negative amount is refused
_SIGNED = {"ignore_unknown_options": True}


@click.group()
@click.version_option(package_name="margincall")
@click.option("-v", "--verbose", is_flag=True, help="Show Ape's log (each transaction).")
def cli(verbose: bool) -> None:
    """margincall trader CLI: account status, collateral, trades, margin-call watch."""
    logger.set_level("INFO" if verbose else "WARNING")


@cli.command(cls=ConnectedProviderCommand)
@click.argument("account", callback=_account_arg)
@network_option()
@deployment_option
def status(provider: Any, account: str, deployment: Path | None) -> None:
    """Margin status of ACCOUNT: equity, maintenance, ratio, state, deadlines, positions."""
    with exit_codes():
        run_status(_session(provider, deployment), account)


@cli.command(cls=ConnectedProviderCommand, context_settings=_SIGNED)
@click.argument("amount", callback=_amount_arg)
@network_option()
@account_option()
@deployment_option
@click.option("--no-approve", is_flag=True, help="Do not approve the engine when short.")
def deposit(
    provider: Any, account: Any, amount: str, deployment: Path | None, no_approve: bool
) -> None:
    """Deposit AMOUNT whole tokens as collateral, like 1000 or 12.5."""
    with exit_codes():
        run_deposit(_session(provider, deployment), amount, account, approve=not no_approve)


@cli.command(cls=ConnectedProviderCommand, context_settings=_SIGNED)
@click.argument("amount", callback=_amount_arg)
@network_option()
@account_option()
@deployment_option
def withdraw(provider: Any, account: Any, amount: str, deployment: Path | None) -> None:
    """Withdraw AMOUNT whole tokens of collateral (keeping the initial margin)."""
    with exit_codes():
        run_withdraw(_session(provider, deployment), amount, account)


@cli.command(cls=ConnectedProviderCommand, context_settings=_SIGNED)
@click.argument("market")
@click.argument("size", callback=_size_arg)
@network_option()
@account_option()
@deployment_option
@slippage_option
def trade(
    provider: Any,
    account: Any,
    market: str,
    size: str,
    deployment: Path | None,
    slippage_bps: int,
) -> None:
    """Trade SIZE base units of MARKET (name or id) at the oracle price; negative sells."""
    with exit_codes():
        run_trade(_session(provider, deployment), market, size, account, slippage_bps)


@cli.command(cls=ConnectedProviderCommand)
@click.argument("market")
@network_option()
@account_option()
@deployment_option
@slippage_option
def close(
    provider: Any, account: Any, market: str, deployment: Path | None, slippage_bps: int
) -> None:
    """Close the whole position in MARKET (name or id) at the oracle price."""
    with exit_codes():
        run_close(_session(provider, deployment), market, account, slippage_bps)


@cli.command(cls=ConnectedProviderCommand)
@click.argument("account", callback=_account_arg)
@network_option()
@deployment_option
@click.option("--once", is_flag=True, help="Print the current status and exit.")
@click.option("--blocks", type=click.IntRange(min=0), default=None, help="Stop after N new blocks.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between polls for a new block.",
)
def watch(
    provider: Any,
    account: str,
    deployment: Path | None,
    once: bool,
    blocks: int | None,
    interval: float,
) -> None:
    """Print ACCOUNT's margin at every new block; highlight a margin call."""
    with exit_codes():
        run_watch(
            _session(provider, deployment),
            account,
            blocks=0 if once else blocks,
            interval=interval,
        )


__all__ = [
    "AccountView",
    "InputError",
    "PositionView",
    "Session",
    "account_view",
    "cli",
    "open_session",
    "run_close",
    "run_deposit",
    "run_status",
    "run_trade",
    "run_watch",
    "run_withdraw",
    "to_units",
]

# the bot launchers live in their own module; registered here so `margincall --help` lists them
from margincall.cli_bots import keeper as _keeper_command  # noqa: E402
from margincall.cli_bots import notifier as _notifier_command  # noqa: E402

cli.add_command(_keeper_command, "keeper")
cli.add_command(_notifier_command, "notifier")

# the stress simulator (src/margincall/sim/cli.py); it starts and stops an Anvil of its own
from margincall.sim.cli import simulate as _simulate_command  # noqa: E402

cli.add_command(_simulate_command, "simulate")

# the web dashboard (src/margincall/web/); uvicorn and Starlette load only when it runs
from margincall.web.cli import dashboard as _dashboard_command  # noqa: E402

cli.add_command(_dashboard_command, "dashboard")
