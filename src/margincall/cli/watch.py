"""`margincall watch ACCOUNT`: the account's margin at every new block, and every engine event
that touches it (deposits, withdrawals, trades, margin calls, cures, tranches, bad debt).

Events are read over every block since the last one read (the SDK's `client.events`: the
account as the first indexed topic, in ranges of at most `LOG_RANGE` blocks), so none is
skipped when several blocks pass between two polls. `--json` prints JSON lines: one
`{"type": "event", ...}` per event, then one `{"type": "status", ...}` per poll.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from rich.text import Text

from margincall.cli.accounts import checksum
from margincall.cli.common import (
    InputError,
    Session,
    connect,
    deployment_option,
    emit_json,
    exit_codes,
    json_option,
    network_option,
    to_address,
    wad_str,
)
from margincall.cli.node import node_command_class
from margincall.cli.trader import account_view
from margincall.cli.views import AccountView, _signed, view_json
from margincall.constants import State
from margincall.report import fmt_duration, fmt_ratio, fmt_wad, state_text

NodeCommand = node_command_class()
LOG_RANGE = 2_000
# what each event field is (docs/design.md, "Units"): token units, or wad
TOKEN_FIELDS = frozenset(
    {
        "amount",
        "collateral",
        "fee",
        "realized_pnl",
        "penalty",
        "keeper_reward",
        "fund_fee",
        "reward",
        "paid_by_fund",
        "socialised",
    }
)
WAD_FIELDS = frozenset(
    {"equity", "maintenance", "ratio", "closed_notional", "open_notional", "price", "size"}
    | {"size_delta", "fraction"}
)
ACCOUNT_EVENTS = (
    "Deposit",
    "Withdraw",
    "PositionChanged",
    "MarginCall",
    "MarginCallCleared",
    "Liquidation",
    "BadDebt",
)


def poll_heads(chain: Any, interval: float = 1.0) -> Iterator[int]:
    """New head block numbers as they appear (polling every `interval` seconds)."""
    last = int(chain.blocks.head.number)
    while True:
        time.sleep(interval)
        head = int(chain.blocks.head.number)
        if head > last:
            last = head
            yield head


class EventReader:
    """The engine's events about one account, block range by block range (through the SDK's
    log reader: the account as the first indexed topic)."""

    def __init__(self, session: Session, account: str):
        self.session = session
        self.account = account

    def read(self, start: int, stop: int) -> list[dict[str, Any]]:
        """Every account event in blocks start..stop (inclusive), in chain order."""
        client = self.session.client
        out: list[dict[str, Any]] = []
        for lo in range(start, stop + 1, LOG_RANGE):
            hi = min(lo + LOG_RANGE - 1, stop)
            for log in client.events(lo, hi, ACCOUNT_EVENTS, account=self.account):
                fields = dict(log.event_arguments)
                out.append(self._event(int(log.block_number), log.event_name, fields))
        return out

    def _event(self, block: int, name: str, fields: dict[str, Any]) -> dict[str, Any]:
        decimals = self.session.client.decimals
        shown: dict[str, Any] = {"type": "event", "event": name, "block": block}
        for key, value in fields.items():
            if key in TOKEN_FIELDS:
                shown[key] = wad_str(value, decimals)
            elif key in WAD_FIELDS:
                shown[key] = wad_str(value)
            elif key == "state":
                shown[key] = State(int(value)).name
            elif isinstance(value, str) and len(value) == 42 and value.startswith("0x"):
                shown[key] = checksum(value)
            else:
                shown[key] = value
        return shown


def event_line(session: Session, event: dict[str, Any]) -> Text:
    skip = {"type", "event", "block", "account"}
    parts = []
    for key, value in event.items():
        if key in skip:
            continue
        if key in TOKEN_FIELDS and value is not None:
            value = f"{value} {session.symbol}"
        parts.append(f"{key} {value}")
    style = {"MarginCall": "dark_orange", "Liquidation": "red", "BadDebt": "bold red"}
    line = Text(f"block {event['block']}  ")
    line.append(event["event"], style=style.get(event["event"], "cyan"))
    line.append("  " + ", ".join(parts))
    return line


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
    """Prints the account at the head, then at every new block, `blocks` times (None: forever),
    with the events that touched it since the last block read.

    Highlights a margin call (and any state change). `stream` yields new block numbers
    (default: `poll_heads`); tests pass one that mines.
    """
    from ape import chain

    address = to_address(account)
    if blocks is not None and blocks < 0:
        raise InputError("blocks: must not be negative")
    reader = EventReader(session, address)
    views = [_watch_once(session, address, None, [])]
    if blocks == 0:
        return views
    last = views[0].block  # the last block whose events were read (or shown as the start)
    heads = stream() if callable(stream) else stream
    for _ in heads if heads is not None else poll_heads(chain, interval):
        head = int(chain.blocks.head.number)
        events = reader.read(last + 1, head) if head > last else []
        last = max(last, head)
        views.append(_watch_once(session, address, views[-1], events))
        if blocks is not None and len(views) > blocks:
            break
    return views


def _watch_once(
    session: Session, account: str, previous: AccountView | None, events: list[dict[str, Any]]
) -> AccountView:
    view = account_view(session, account)
    if session.as_json:
        for event in events:
            emit_json(session.console, event)
        emit_json(session.console, {"type": "status", **view_json(view)})
        return view
    for event in events:
        session.console.print(event_line(session, event))
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


def _account_arg(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from margincall.cli.common import account_arg

    return account_arg(ctx, param, value)


@click.command(cls=NodeCommand)
@click.argument("account", callback=_account_arg)
@network_option
@deployment_option
@json_option
@click.option("--once", is_flag=True, help="Print the current status and exit.")
@click.option(
    "--blocks",
    type=click.IntRange(min=0),
    default=None,
    envvar="MARGINCALL_WATCH_BLOCKS",
    show_envvar=True,
    help="Stop after N new blocks.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    envvar="MARGINCALL_WATCH_INTERVAL",
    show_envvar=True,
    help="Seconds between polls for a new block.",
)
def watch(
    provider: Any,
    account: str,
    deployment: Path | None,
    as_json: bool,
    once: bool,
    blocks: int | None,
    interval: float,
) -> None:
    """Print ACCOUNT's margin (address, TEST::N or alias) at every new block, with every
    event that touched it; highlight a margin call."""
    with exit_codes():
        run_watch(
            connect(provider, deployment, as_json),
            account,
            blocks=0 if once else blocks,
            interval=interval,
        )


__all__ = ["EventReader", "margin_alert", "poll_heads", "run_watch", "watch", "watch_line"]
