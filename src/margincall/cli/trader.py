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
    wad_str,
)
from margincall.cli.group import cli
from margincall.cli.node import node_command_class
from margincall.cli.views import (
    AccountView,
    PositionView,
    status_tables,
    view_json,
)
from margincall.report import (
    fmt_wad,
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


def _position_line(session: Session, receipt: Any, verb: str) -> None:
    ev = session.client.decode(receipt, "PositionChanged")[-1]
    name = session.record.market_name(int(ev.market_id))
    if session.as_json:
        emit_json(
            session.console,
            {
                "action": verb,
                "account": str(ev.account),
                "market_id": int(ev.market_id),
                "market": name,
                "size_delta": wad_str(ev.size_delta),
                "size": wad_str(ev.size),
                "price": wad_str(ev.price),
                "fee": session.tokens(ev.fee),
                "realized_pnl": session.tokens(ev.realized_pnl),
                "collateral": session.tokens(ev.collateral),
                "margin_call_cleared": bool(session.client.decode(receipt, "MarginCallCleared")),
                **_tx(receipt),
            },
        )
        return
    session.say(
        f"{verb} {fmt_wad(abs(ev.size_delta), 4)} {name} at {fmt_wad(ev.price)}:"
        f" size now {fmt_wad(ev.size, 4)}, fee {session.tok(ev.fee)},"
        f" realised PnL {session.tok(ev.realized_pnl)},"
        f" collateral {session.tok(ev.collateral)}"
    )
    _cleared(session, receipt)


def _cleared(session: Session, receipt: Any) -> None:
    if session.client.decode(receipt, "MarginCallCleared"):
        session.say("[green]margin call cleared[/]")


def run_trade(session: Session, market: str, size: str, sender: Any, slippage_bps: int = 50) -> Any:
    """Trades `size` base units (negative: sell) at the oracle price within the slippage."""
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
    return _order(session, market_id, delta, bound, sender, "bought" if delta > 0 else "sold")


def _order(
    session: Session, market_id: int, delta: int, bound: int, sender: Any, verb: str, reduce=False
) -> Any:
    """Commits an order. On a local chain with mock feeds it is settled at once (the next
    round of the mock feed is published: a dev convenience); elsewhere it fills when a
    keeper settles it at the first oracle round after the commit."""
    from margincall.sdk.orders import raise_for

    orders = session.client.orders
    if orders.is_local():
        outcome, receipt = orders.fill_now_local_receipt(
            market_id, delta, bound, sender, reduce_only=reduce
        )
        raise_for(outcome)
        _position_line(session, receipt, verb)
        return receipt
    order_id, receipt = orders.commit(market_id, delta, bound, sender, reduce_only=reduce)
    session.say(f"order {order_id} committed: it fills at the first oracle round after it")
    return receipt


def run_close(session: Session, market: str, sender: Any, slippage_bps: int = 50) -> Any:
    client = session.client
    market_id = session.market_id(market)
    size = client.position(sender, market_id)[0]
    bound = client.acceptable_price(market_id, -size or 1, _slippage(slippage_bps))
    if size == 0:
        from margincall.sdk import InvalidRequest

        raise InvalidRequest(f"close: no position in market {market_id}")
    return _order(session, market_id, -int(size), bound, sender, "closed", reduce=True)


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
def trade(
    provider: Any,
    account: Any,
    market: str,
    size: str,
    deployment: Path | None,
    slippage_bps: int,
    as_json: bool,
) -> None:
    """Trade SIZE base units of MARKET (name or id) at the oracle price; negative sells."""
    with exit_codes():
        run_trade(connect(provider, deployment, as_json), market, size, account, slippage_bps)


@cli.command(cls=NodeCommand)
@click.argument("market")
@network_option
@account_option
@deployment_option
@slippage_option
@json_option
def close(
    provider: Any,
    account: Any,
    market: str,
    deployment: Path | None,
    slippage_bps: int,
    as_json: bool,
) -> None:
    """Close the whole position in MARKET (name or id) at the oracle price."""
    with exit_codes():
        run_close(connect(provider, deployment, as_json), market, account, slippage_bps)


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
