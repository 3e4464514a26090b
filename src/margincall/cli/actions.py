"""`margincall call ACCOUNT` and `margincall liquidate ACCOUNT`: a keeper's two moves, by hand.

    margincall call TEST::5 --account TEST::3        # margin-call a CALLABLE account
    margincall liquidate TEST::5 --account TEST::3   # one tranche (or the full close)

ACCOUNT is an address, TEST::N or an imported Ape alias; `--account` signs and is paid the
reward. The SDK checks first (the account is CALLABLE; liquidatable now, the tranche
interval and window cap respected) and refuses in one line with exit code 1 otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from margincall.cli.common import (
    Session,
    account_arg,
    account_option,
    connect,
    deployment_option,
    emit_json,
    exit_codes,
    json_option,
    network_option,
    wad_str,
)
from margincall.cli.node import node_command_class
from margincall.constants import State
from margincall.report import fmt_duration, fmt_ratio, fmt_wad

NodeCommand = node_command_class()


def run_call(session: Session, account: str, sender: Any) -> Any:
    """Margin-calls `account`; prints the deadline and the caller's reward."""
    client = session.client
    receipt = client.margin_call(account, sender)
    ev = client.decode(receipt, "MarginCall")[0]
    now = int(receipt.timestamp) if hasattr(receipt, "timestamp") else client.now
    if session.as_json:
        emit_json(
            session.console,
            {
                "action": "margin_call",
                "account": str(ev.account),
                "caller": str(ev.caller),
                "deadline": int(ev.deadline),
                "equity": wad_str(ev.equity),
                "maintenance": wad_str(ev.maintenance),
                "ratio": wad_str(ev.ratio),
                "reward": session.tokens(ev.reward),
                "collateral": session.tokens(ev.collateral),
                "tx": str(receipt.txn_hash),
                "block": int(receipt.block_number),
            },
        )
        return receipt
    session.say(
        f"margin-called {ev.account}: ratio {fmt_ratio(ev.ratio)}, deadline in "
        f"{fmt_duration(max(int(ev.deadline) - now, 0))} (t={int(ev.deadline)}); "
        f"reward {session.tok(ev.reward)} to {ev.caller}"
    )
    return receipt


def run_liquidate(session: Session, account: str, sender: Any) -> Any:
    """Liquidates one tranche of `account` (all of it when CRITICAL or BANKRUPT)."""
    client = session.client
    receipt = client.liquidate(account, sender)
    ev = client.decode(receipt, "Liquidation")[0]
    bad = client.decode(receipt, "BadDebt")
    if session.as_json:
        emit_json(
            session.console,
            {
                "action": "liquidate",
                "account": str(ev.account),
                "keeper": str(ev.keeper),
                "tranche": int(ev.tranche),
                "state": State(int(ev.state)).name,
                "fraction": wad_str(ev.fraction),
                "closed_notional": wad_str(ev.closed_notional),
                "penalty": session.tokens(ev.penalty),
                "keeper_reward": session.tokens(ev.keeper_reward),
                "fund_fee": session.tokens(ev.fund_fee),
                "collateral": session.tokens(ev.collateral),
                "bad_debt": session.tokens(bad[0].amount) if bad else None,
                "tx": str(receipt.txn_hash),
                "block": int(receipt.block_number),
            },
        )
        return receipt
    session.say(
        f"tranche {int(ev.tranche)} on {ev.account} ({State(int(ev.state)).name}): closed "
        f"{fmt_wad(ev.fraction * 100)}% of the exposure, notional {fmt_wad(ev.closed_notional)}; "
        f"penalty {session.tok(ev.penalty)}, keeper reward {session.tok(ev.keeper_reward)}; "
        f"collateral {session.tok(ev.collateral)}"
    )
    if bad:
        session.say(f"[red]bad debt {session.tok(bad[0].amount)}[/]")
    return receipt


@click.command(cls=NodeCommand)
@click.argument("target", metavar="ACCOUNT", callback=account_arg)
@network_option
@account_option
@deployment_option
@json_option
def call(provider: Any, account: Any, target: str, deployment: Path | None, as_json: bool) -> None:
    """Margin-call ACCOUNT (CALLABLE: below the call ratio, no call yet); the signer earns
    the call reward."""
    with exit_codes():
        run_call(connect(provider, deployment, as_json), target, account)


@click.command(cls=NodeCommand)
@click.argument("target", metavar="ACCOUNT", callback=account_arg)
@network_option
@account_option
@deployment_option
@json_option
def liquidate(
    provider: Any, account: Any, target: str, deployment: Path | None, as_json: bool
) -> None:
    """Liquidate one tranche of ACCOUNT (an uncured call past its deadline, or below
    maintenance); the signer earns the keeper reward."""
    with exit_codes():
        run_liquidate(connect(provider, deployment, as_json), target, account)


__all__ = ["call", "liquidate", "run_call", "run_liquidate"]
