"""`margincall`: the trader's commands (deposit, withdraw, trade, close) and the account
views that `status` and `watch` print.

    margincall deposit 1000 --account TEST::5
    margincall trade ETH-USD 1.5 --slippage-bps 30 --account TEST::5
    margincall trade ETH-USD -0.5 --account TEST::5     # a negative size sells
    margincall close ETH-USD --account TEST::5
    margincall withdraw all --account TEST::5           # all the free collateral

Every command reads a deployment record written by `ape run deploy`
(`--deployment`, default `deployments/<ecosystem>-<network>.json`), connects
with Ape (`--network`, `--account`) and goes through the SDK, whose checks run
before anything is sent. Exit codes: 0 done, 2 bad input (a malformed amount,
an unknown market, ...), 1 refused (an SDK check, a revert, a record that does
not match the chain, no node).

On the local network the commands use the node at `APE_FOUNDRY_HOST` (default
http://127.0.0.1:8545) and never start one (`margincall.cli.node`). `--json` prints
one JSON document instead of text.

The click commands are thin: the work is in the `run_*` functions, which take
an already-connected client, so tests call them inside `ape test`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from margincall import math as ref
from margincall.cli.common import (
    SIGNED,
    InputError,
    Session,
    account_option,
    amount_arg,
    connect,
    deployment_option,
    emit_json,
    exit_codes,
    json_option,
    network_option,
    open_session,
    parse_decimal,
    size_arg,
    slippage_option,
    to_address,
    to_units,
)
from margincall.cli.group import cli
from margincall.cli.node import node_command_class
from margincall.cli.orders import WAIT_SECONDS, commit_and_wait
from margincall.cli.views import (
    AccountView,
    PositionView,
    status_tables,
    view_json,
)
from margincall.sdk import OracleError

NodeCommand = node_command_class()

# --- views -------------------------------------------------------------------


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


# --- commands (connected) ------------------------------------------------------


def run_status(session: Session, account: str) -> AccountView:
    view = account_view(session, to_address(account))
    if session.as_json:
        emit_json(session.console, view_json(view))
        return view
    summary, positions = status_tables(session.symbol, view)
    session.console.print(summary)
    if positions is not None:
        session.console.print(positions)
    else:
        session.console.print("no open positions")
    return view


def _tx(receipt: Any) -> dict[str, Any]:
    return {"tx": str(receipt.txn_hash), "block": int(receipt.block_number)}


def run_deposit(session: Session, amount: str, sender: Any, approve: bool = True) -> Any:
    """Deposits `amount` whole tokens for the sender; approves the engine first if needed."""
    client = session.client
    units = to_units(amount, client.decimals, "amount")
    balance = client.token_balance(sender)
    if balance < units:
        raise_short(session, units, balance, sender.address)
    allowance = client.allowance(sender)
    if approve and allowance < units:
        client.approve(units, sender)
        session.say(f"approved the engine for {session.tok(units)}")
    receipt = client.deposit(units, sender)
    ev = client.decode(receipt, "Deposit")[0]
    cleared = bool(client.decode(receipt, "MarginCallCleared"))
    if session.as_json:
        emit_json(
            session.console,
            {
                "action": "deposit",
                "account": str(ev.account),
                "amount": session.tokens(ev.amount),
                "collateral": session.tokens(ev.collateral),
                "margin_call_cleared": cleared,
                **_tx(receipt),
            },
        )
        return receipt
    session.say(
        f"deposited {session.tok(ev.amount)} for {ev.account};"
        f" collateral {session.tok(ev.collateral)}"
    )
    _cleared(session, receipt)
    return receipt


def raise_short(session: Session, units: int, balance: int, who: str) -> None:
    from margincall.sdk import InsufficientFunds

    hint = ""
    if session.record.collateral_mock:
        hint = f"; on a local chain `margincall dev mint AMOUNT {who}` mints test collateral"
    raise InsufficientFunds(
        f"deposit: the balance of {who} is {session.tok(balance)}, less than"
        f" {session.tok(units)}{hint}"
    )


def free_collateral(session: Session, account: str) -> int:
    """Token units `withdraw all` takes: all the collateral without positions, else what keeps
    equity at the initial margin (never more than the collateral)."""
    client = session.client
    acct = client.model(account)
    if not acct.positions:
        return acct.collateral
    v = ref.evaluate(acct, client.scale)
    return max(min(client.to_tokens(v.equity - v.initial), acct.collateral), 0)


def run_withdraw(session: Session, amount: str, sender: Any) -> Any:
    """Withdraws `amount` whole tokens, or `all` the free collateral."""
    client = session.client
    if str(amount).strip().lower() == "all":
        units = free_collateral(session, sender.address)
        if units == 0:
            from margincall.sdk import InsufficientMargin

            held = client.collateral(sender.address)
            if held == 0:
                raise InsufficientMargin(f"withdraw: {sender.address} has no collateral")
            raise InsufficientMargin(
                f"withdraw: no free collateral (collateral {session.tok(held)}, all of it"
                " backs the initial margin of the open positions)"
            )
    else:
        units = to_units(amount, client.decimals, "amount")
    receipt = client.withdraw(units, sender)
    ev = client.decode(receipt, "Withdraw")[0]
    if session.as_json:
        emit_json(
            session.console,
            {
                "action": "withdraw",
                "account": str(ev.account),
                "amount": session.tokens(ev.amount),
                "collateral": session.tokens(ev.collateral),
                **_tx(receipt),
            },
        )
        return receipt
    session.say(f"withdrew {session.tok(ev.amount)}; collateral {session.tok(ev.collateral)}")
    return receipt


def _slippage(bps: int) -> int:
    if not 0 <= bps < 10_000:
        raise InputError(f"slippage: {bps} bps is outside 0..9999")
    return bps


def _cleared(session: Session, receipt: Any) -> None:
    if session.client.decode(receipt, "MarginCallCleared"):
        session.say("[green]margin call cleared[/]")


def run_trade(
    session: Session,
    market: str,
    size: str,
    sender: Any,
    slippage_bps: int = 50,
    wait: bool = True,
    wait_seconds: float = WAIT_SECONDS,
    on_wait: Any = None,
) -> Any:
    """Commits an order for `size` base units (negative: sell) within the slippage of the
    current price, and (unless `wait` is off) waits for its settlement at the first price
    published after the commit (`margincall.cli.orders.commit_and_wait`)."""
    from margincall.sdk import InsufficientMargin

    client = session.client
    market_id = session.market_id(market)
    delta = to_units(size, 18, "size", signed=True)
    if client.collateral(sender.address) == 0:
        raise InsufficientMargin(
            f"trade: {sender.address} has no collateral: deposit some first"
            f" (`margincall deposit AMOUNT --account ...`)"
        )
    bound = client.acceptable_price(market_id, delta, _slippage(slippage_bps))
    verb = "bought" if delta > 0 else "sold"
    return commit_and_wait(
        session, market_id, delta, bound, sender, verb, wait, wait_seconds, on_wait=on_wait
    )


def run_close(
    session: Session,
    market: str,
    sender: Any,
    slippage_bps: int = 50,
    wait: bool = True,
    wait_seconds: float = WAIT_SECONDS,
    on_wait: Any = None,
) -> Any:
    """Commits a reduce-only order for the whole position and waits as `run_trade` does."""
    from margincall.sdk import InvalidRequest

    client = session.client
    market_id = session.market_id(market)
    size = client.position(sender, market_id)[0]
    if size == 0:
        raise InvalidRequest(f"close: no position in {market}")
    bound = client.acceptable_price(market_id, -size, _slippage(slippage_bps))
    return commit_and_wait(
        session,
        market_id,
        -size,
        bound,
        sender,
        "closed",
        wait,
        wait_seconds,
        reduce_only=True,
        on_wait=on_wait,
    )


def wait_options(f: Any) -> Any:
    """`--no-wait` and `--wait-seconds` of the commands that commit an order."""
    f = click.option(
        "--wait-seconds",
        type=click.FloatRange(min=1),
        default=WAIT_SECONDS,
        show_default=True,
        help="How long to wait for the settlement.",
    )(f)
    return click.option(
        "--no-wait", is_flag=True, help="Return once the order is committed (a keeper settles it)."
    )(f)


# --- click -------------------------------------------------------------------


@cli.command(cls=NodeCommand, context_settings=SIGNED)
@click.argument("amount", callback=amount_arg)
@network_option
@account_option
@deployment_option
@json_option
@click.option(
    "--no-approve",
    is_flag=True,
    envvar="MARGINCALL_NO_APPROVE",
    show_envvar=True,
    help="Do not approve the engine when short.",
)
def deposit(
    provider: Any,
    account: Any,
    amount: str,
    deployment: Path | None,
    as_json: bool,
    no_approve: bool,
) -> None:
    """Deposit AMOUNT whole tokens as collateral, like 1000 or 12.5."""
    with exit_codes():
        session = connect(provider, deployment, as_json)
        run_deposit(session, amount, account, approve=not no_approve)


@cli.command(cls=NodeCommand, context_settings=SIGNED)
@click.argument("amount", callback=amount_arg)
@network_option
@account_option
@deployment_option
@json_option
def withdraw(
    provider: Any, account: Any, amount: str, deployment: Path | None, as_json: bool
) -> None:
    """Withdraw AMOUNT whole tokens of collateral (keeping the initial margin), or `all`
    the free collateral."""
    with exit_codes():
        run_withdraw(connect(provider, deployment, as_json), amount, account)


@cli.command(cls=NodeCommand, context_settings=SIGNED)
@click.argument("market")
@click.argument("size", callback=size_arg)
@network_option
@account_option
@deployment_option
@slippage_option
@json_option
@wait_options
def trade(
    provider: Any,
    account: Any,
    market: str,
    size: str,
    deployment: Path | None,
    slippage_bps: int,
    as_json: bool,
    no_wait: bool,
    wait_seconds: float,
) -> None:
    """Trade SIZE base units of MARKET (name or id); negative sells. Commits an order that a
    keeper settles at the first price published after it, and waits for the fill."""
    with exit_codes():
        session = connect(provider, deployment, as_json)
        run_trade(session, market, size, account, slippage_bps, not no_wait, wait_seconds)


@cli.command(cls=NodeCommand)
@click.argument("market")
@network_option
@account_option
@deployment_option
@slippage_option
@json_option
@wait_options
def close(
    provider: Any,
    account: Any,
    market: str,
    deployment: Path | None,
    slippage_bps: int,
    as_json: bool,
    no_wait: bool,
    wait_seconds: float,
) -> None:
    """Close the whole position in MARKET (name or id): a reduce-only order, settled at the
    first price published after it."""
    with exit_codes():
        session = connect(provider, deployment, as_json)
        run_close(session, market, account, slippage_bps, not no_wait, wait_seconds)


__all__ = [
    "AccountView",
    "InputError",
    "PositionView",
    "Session",
    "account_view",
    "cli",
    "free_collateral",
    "open_session",
    "parse_decimal",
    "run_close",
    "run_deposit",
    "run_status",
    "run_trade",
    "run_withdraw",
    "to_units",
    "view_json",
]
