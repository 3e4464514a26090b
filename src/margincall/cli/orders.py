"""Orders from the command line (PROTOCOL.md section 5b): `margincall trade` and `close` commit
an order and wait for a keeper to settle it at the first price published after the commit;
`margincall orders` lists, settles and cancels them.

    margincall trade ETH-USD 4 --account TEST::5             # commit, wait, print the fill
    margincall trade ETH-USD 4 --no-wait --account TEST::5   # commit and return
    margincall orders TEST::5                                # the account's pending orders
    margincall orders TEST::5 --settle --account TEST::3     # anyone settles them (fee to it)
    margincall orders TEST::5 --cancel ORDER_ID --account TEST::5  # after expiry: fee back

A wait shows one progress line (blocks since the commit) until the order is settled (the
fill price and the new position) or cancelled (the engine's reason, the refund), or until
`--wait-seconds` pass (the order stays pending: `margincall orders` shows it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from margincall.cli.common import (
    InputError,
    Session,
    account_arg,
    connect,
    deployment_option,
    emit_json,
    exit_codes,
    json_option,
    network_option,
    optional_account_option,
    wad_str,
)
from margincall.cli.node import node_command_class
from margincall.report import fmt_wad

NodeCommand = node_command_class()
WAIT_SECONDS = 600  # how long `trade` waits for a settlement by default


def _tx(receipt: Any) -> dict[str, Any]:
    return {"tx": str(receipt.txn_hash), "block": int(receipt.block_number)}


def settlement(session: Session) -> Any:
    from margincall.sdk.settlement import SettlementClient

    return SettlementClient(session.client.orders.book)


def position_line(session: Session, receipt: Any, verb: str, account: str) -> None:
    """The account's `PositionChanged` of a receipt (a settlement may fill many accounts)."""
    changes = [
        ev
        for ev in session.client.decode(receipt, "PositionChanged")
        if str(ev.account).lower() == account.lower()
    ]
    ev = changes[-1]
    name = session.record.market_name(int(ev.market_id))
    cleared = [
        e
        for e in session.client.decode(receipt, "MarginCallCleared")
        if str(e.account).lower() == account.lower()
    ]
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
                "margin_call_cleared": bool(cleared),
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
    if cleared:
        session.say("[green]margin call cleared[/]")


def commit_and_wait(
    session: Session,
    market_id: int,
    delta: int,
    bound: int,
    sender: Any,
    verb: str,
    wait: bool = True,
    wait_seconds: float = WAIT_SECONDS,
    reduce_only: bool = False,
    on_wait: Callable[[int], Any] | None = None,
) -> Any:
    """Commits an order; unless `wait` is off, waits (with a progress line) for its outcome
    and prints the fill (`verb` and the position) or why it was cancelled. `on_wait(order
    id)` runs once the order is committed, before the wait (a settler of one's own, as the
    tests use: on a live chain a keeper settles)."""
    orders = session.client.orders
    order_id, receipt = orders.commit(market_id, delta, bound, sender, reduce_only=reduce_only)
    block = int(receipt.block_number)
    name = session.record.market_name(market_id)
    side = "buy" if delta > 0 else "sell"
    bound_text = f"{'at most' if delta > 0 else 'at least'} {fmt_wad(bound)}"
    if not wait:
        if session.as_json:
            emit_json(
                session.console,
                {
                    "action": "commit",
                    "order_id": str(order_id),
                    "account": sender.address,
                    "market": name,
                    "size_delta": wad_str(delta),
                    "acceptable_price": wad_str(bound),
                    "reduce_only": reduce_only,
                    **_tx(receipt),
                },
            )
        else:
            session.say(
                f"committed order {order_id:#x}: {side} {fmt_wad(abs(delta), 4)} {name},"
                f" {bound_text}; it fills at the first price published after block {block}"
                " (a keeper settles it; `margincall orders` shows it)"
            )
        return receipt
    if on_wait is not None:
        on_wait(order_id)
    found = _wait(session, order_id, block, wait_seconds)
    if found is None:
        raise click.ClickException(
            f"order {order_id:#x} not settled within {wait_seconds:.0f} s: still pending"
            " (`margincall orders` shows it; it can be cancelled after its expiry)"
        )
    log, settle_receipt = found
    if log.event_name == "OrderCancelled":
        from margincall.sdk import MarginCallError

        raise MarginCallError(
            f"order {order_id:#x} cancelled at settlement: {log.reason}"
            f" (fee refunded: {session.tok(int(log.refund))})"
        )
    position_line(session, settle_receipt, verb, sender.address)
    return settle_receipt


def _wait(session: Session, order_id: int, block: int, wait_seconds: float) -> Any:
    from ape import chain

    book = settlement(session)
    deadline = time.monotonic() + wait_seconds
    with session.console.status("", spinner="dots") as status:
        while True:
            found = book.outcome_of(order_id, block)
            if found is not None or time.monotonic() > deadline:
                return found
            if not session.as_json:
                head = int(chain.blocks.head.number)
                status.update(
                    f"order committed in block {block}: waiting for the first price after it"
                    f" and its settlement ({head - block} blocks so far)"
                )
            time.sleep(0.5)


# --- `margincall orders` -------------------------------------------------------------


def run_list(session: Session, account: str) -> list:
    orders = session.client.orders
    pending = orders.pending(account)
    now = session.client.now
    rows = []
    for o in pending:
        rnd = orders.settlement_round(o) if now <= o.expiry else None
        state = "expired" if now > o.expiry else ("settleable" if rnd else "waiting for a price")
        rows.append((o, state))
    if session.as_json:
        emit_json(
            session.console,
            [
                {
                    "order_id": str(o.order_id),
                    "market": session.record.market_name(o.market_id),
                    "size_delta": wad_str(o.size_delta),
                    "acceptable_price": wad_str(o.acceptable_price),
                    "commit_time": o.commit_time,
                    "expiry": o.expiry,
                    "reduce_only": o.reduce_only,
                    "fee": session.tokens(o.fee),
                    "state": state,
                }
                for o, state in rows
            ],
        )
        return pending
    if not rows:
        session.say(f"no pending orders for {account}")
    for o, state in rows:
        session.say(
            f"{o.order_id:#x}: {'buy' if o.size_delta > 0 else 'sell'}"
            f" {fmt_wad(abs(o.size_delta), 4)} {session.record.market_name(o.market_id)}"
            f"{' (reduce only)' if o.reduce_only else ''},"
            f" acceptable {fmt_wad(o.acceptable_price)},"
            f" fee {session.tok(o.fee)}, expires in {max(o.expiry - now, 0)} s: {state}"
        )
    return pending


def run_settle(session: Session, account: str, sender: Any) -> list:
    """Settles the account's settleable orders (anyone may; the fees go to the sender)."""
    orders = session.client.orders
    pending = {o.order_id: o for o in orders.pending(account)}
    ids = list(pending)
    outcomes = []
    for receipt in orders.settle_many(ids, sender):
        outcomes += orders.outcomes(receipt)
    if session.as_json:
        emit_json(
            session.console,
            [
                {
                    "order_id": str(o.order_id),
                    "settled": o.settled,
                    "price": wad_str(o.price),
                    "size_delta": wad_str(o.size_delta),
                    "reason": o.reason,
                }
                for o in outcomes
            ],
        )
        return outcomes
    if not outcomes:
        session.say(f"no order of {account} can be settled yet (no price after its commit)")
    for o in outcomes:
        if o.settled:
            verb = "bought" if o.size_delta > 0 else "sold"
            name = session.record.market_name(pending[o.order_id].market_id)
            session.say(
                f"order {o.order_id:#x} settled: {verb} {fmt_wad(abs(o.size_delta), 4)} {name}"
                f" at {fmt_wad(o.price)} for {account}"
            )
        else:
            session.say(f"order {o.order_id:#x} cancelled: {o.reason}")
    return outcomes


def run_cancel(session: Session, order_id: int, sender: Any) -> Any:
    receipt = session.client.orders.cancel(order_id, sender)
    (out,) = session.client.orders.outcomes(receipt)
    if session.as_json:
        emit_json(
            session.console,
            {
                "action": "cancel",
                "order_id": str(order_id),
                "refund": session.tokens(out.refund),
                **_tx(receipt),
            },
        )
    else:
        session.say(f"order {order_id:#x} cancelled: fee {session.tok(out.refund)} refunded")
    return receipt


def _order_id(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise InputError(f"order id {text!r} is not a number") from None


@click.command(cls=NodeCommand)
@click.argument("target", metavar="ACCOUNT", callback=account_arg)
@click.option("--settle", is_flag=True, help="Settle the orders whose price is out (fees to you).")
@click.option("--cancel", "cancel_id", metavar="ORDER_ID", help="Cancel an expired order.")
@network_option
@optional_account_option
@deployment_option
@json_option
def orders(
    provider: Any,
    account: Any,
    target: str,
    settle: bool,
    cancel_id: str | None,
    deployment: Path | None,
    as_json: bool,
) -> None:
    """List ACCOUNT's pending orders; --settle settles those whose price is published (anyone
    may: --account signs and earns the fees); --cancel ORDER_ID cancels an expired one (its
    fee goes back to the trader's collateral)."""
    from margincall.cli.common import to_address

    if (settle or cancel_id is not None) and account is None:
        raise click.UsageError("--settle and --cancel send a transaction: give --account")
    with exit_codes():
        session = connect(provider, deployment, as_json)
        if cancel_id is not None:
            run_cancel(session, _order_id(cancel_id), account)
        elif settle:
            run_settle(session, to_address(target), account)
        else:
            run_list(session, to_address(target))


__all__ = ["commit_and_wait", "orders", "position_line", "run_cancel", "run_list", "run_settle"]
