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
from pathlib import Path
from typing import Any

import click

# noise from a dependency's settings model when Ape loads, unrelated to the CLI
warnings.filterwarnings("ignore", message="Field 'import_remapping'")

from ape.cli import ConnectedProviderCommand, account_option, network_option  # noqa: E402
from ape.exceptions import ApeException, ContractLogicError  # noqa: E402
from ape.logging import logger  # noqa: E402
from rich.text import Text  # noqa: E402

from margincall.cli.session import (  # noqa: E402
    AccountView,
    InputError,
    PositionView,
    Session,
    _signed,
    account_view,
    open_session,
    status_tables,
    to_address,
    to_units,
)
from margincall.constants import State  # noqa: E402
from margincall.deploy.record import (  # noqa: E402
    DEFAULT_DIR,
    RecordError,
    read_record,
)
from margincall.deploy.record import record_path as default_record_path  # noqa: E402
from margincall.report import (  # noqa: E402
    fmt_duration,
    fmt_ratio,
    fmt_wad,
    state_text,
)
from margincall.sdk import (  # noqa: E402
    MarginCallError,
)

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
    balance = client.token_balance(sender)
    allowance = client.allowance(sender)
    if approve and balance >= units and allowance < units:
        client.approve(units, sender)
        session.console.print(f"approved the engine for {session.tok(units)}")
    receipt = client.deposit(units, sender)
    ev = client.decode(receipt, "Deposit")[0]
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
    ev = client.decode(receipt, "Withdraw")[0]
    session.console.print(
        f"withdrew {session.tok(ev.amount)}; collateral {session.tok(ev.collateral)}"
    )
    return receipt


def _slippage(bps: int) -> int:
    if not 0 <= bps < 10_000:
        raise InputError(f"slippage: {bps} bps is outside 0..9999")
    return bps


def _position_line(session: Session, receipt: Any, verb: str) -> None:
    ev = session.client.decode(receipt, "PositionChanged")[-1]
    name = session.record.market_name(int(ev.market_id))
    session.console.print(
        f"{verb} {fmt_wad(abs(ev.size_delta), 4)} {name} at {fmt_wad(ev.price)}:"
        f" size now {fmt_wad(ev.size, 4)}, fee {session.tok(ev.fee)},"
        f" realised PnL {session.tok(ev.realized_pnl)},"
        f" collateral {session.tok(ev.collateral)}"
    )


def _cleared(session: Session, receipt: Any) -> None:
    if session.client.decode(receipt, "MarginCallCleared"):
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
    size = client.position(sender, market_id)[0]
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
