"""`margincall status ACCOUNT` and `margincall positions ACCOUNT`: an account's margin and
positions (ACCOUNT: an address, TEST::N or an imported Ape alias).

On a local network (Ape's default here) they read over plain JSON-RPC
(`margincall.cli.fast`), without starting Ape; on any other network through Ape and the
SDK. `--json` prints one JSON document.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console

from margincall.cli.common import (
    account_arg,
    deployment_option,
    emit_json,
    json_option,
)
from margincall.cli.node import local_network, local_node_url


def _network_option(f: Any) -> Any:
    return click.option(
        "--network",
        default=None,
        envvar="MARGINCALL_NETWORK",
        show_envvar=True,
        help="Ape network choice, like ethereum:sepolia:node [default: ethereum:local:foundry,"
        " read over plain JSON-RPC at APE_FOUNDRY_HOST or http://127.0.0.1:8545].",
    )(f)


def read_view(account: str, network: str | None, deployment: Path | None) -> tuple[Any, str]:
    """(AccountView, collateral symbol): fast on a local network, else through Ape."""
    from margincall.deploy.record import DEFAULT_DIR, RecordError, read_record, record_path

    if local_network(network):
        from margincall.cli.fast import FastReader

        try:
            path = deployment or record_path(network or "ethereum:local", DEFAULT_DIR)
            record = read_record(path)
            reader = FastReader(local_node_url(), record)
            return reader.view(account), reader.symbol()
        except RecordError as err:
            raise click.ClickException(f"refused: {err}") from None
    return _ape_view(account, network, deployment)


def _ape_view(account: str, network: str, deployment: Path | None) -> tuple[Any, str]:
    from margincall.cli.common import connect, exit_codes
    from margincall.cli.node import check_record
    from margincall.cli.trader import account_view

    check_record(network, deployment)
    with exit_codes():
        from ape import networks

        try:
            context = networks.parse_network_choice(network)
        except Exception as err:  # noqa: BLE001 - Ape's errors for an unknown network vary
            raise click.ClickException(f"refused: network {network!r}: {err}") from None
        with context as provider:
            session = connect(provider, deployment)
            return account_view(session, account), session.symbol


def print_view(view: Any, symbol: str, as_json: bool, positions_only: bool = False) -> None:
    from margincall.cli.views import status_tables, view_json

    console = Console(highlight=False)
    if as_json:
        data = view_json(view)
        emit_json(console, data["positions"] if positions_only else data)
        return
    summary, table = status_tables(symbol, view)
    if not positions_only:
        console.print(summary)
    console.print(table if table is not None else "no open positions")


@click.command()
@click.argument("account", callback=account_arg)
@_network_option
@deployment_option
@json_option
def status(account: str, network: str | None, deployment: Path | None, as_json: bool) -> None:
    """Margin status of ACCOUNT: equity, maintenance, ratio, state, deadlines, positions."""
    view, symbol = read_view(account, network, deployment)
    print_view(view, symbol, as_json)


@click.command()
@click.argument("account", callback=account_arg)
@_network_option
@deployment_option
@json_option
def positions(account: str, network: str | None, deployment: Path | None, as_json: bool) -> None:
    """ACCOUNT's open positions: size, entry, price, notional, PnL."""
    view, symbol = read_view(account, network, deployment)
    print_view(view, symbol, as_json, positions_only=True)


__all__ = ["positions", "read_view", "status"]
