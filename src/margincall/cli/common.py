"""What the connected commands share: input parsing, the session over a deployment record,
exit codes, click options (each with its environment variable shown in `--help`) and JSON
output. Ape is imported only where a command connects.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from margincall.cli.accounts import AccountError, resolve_account
from margincall.deploy.record import DeploymentRecord, RecordError
from margincall.report import fmt_tokens

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
    """An address, a test account (`TEST::5`) or an imported Ape alias, as an address."""
    try:
        return resolve_account(str(text))
    except AccountError as err:
        raise InputError(str(err)) from None


def wad_str(value: int | None, decimals: int = 18) -> str | None:
    """A fixed-point integer as an exact decimal string for JSON (`"796.5"`)."""
    if value is None:
        return None
    text = f"{Decimal(int(value)).scaleb(-decimals):f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def emit_json(console: Console, data: Any) -> None:
    """One JSON document on one line (so `watch --json` is JSON lines)."""
    console.print(json.dumps(data, separators=(",", ":")), soft_wrap=True, markup=False)


# --- session -----------------------------------------------------------------


@dataclass
class Session:
    """A connected client over a recorded system, and where to print."""

    record: DeploymentRecord
    client: Any  # MarginEngineClient
    console: Console
    as_json: bool = False

    @property
    def symbol(self) -> str:
        return str(self.client.symbol())

    def tok(self, amount: int) -> str:
        return f"{fmt_tokens(amount, self.client.decimals)} {self.symbol}"

    def tokens(self, amount: int) -> str | None:
        """Token units as an exact decimal string of tokens, for JSON."""
        return wad_str(amount, self.client.decimals)

    def say(self, text: Any) -> None:
        """Prints a human line, unless the command prints JSON."""
        if not self.as_json:
            self.console.print(text)

    def market_id(self, market: str) -> int:
        try:
            return self.record.market_id(market)
        except KeyError as err:
            raise InputError(err.args[0]) from None


def open_session(
    record: DeploymentRecord,
    chain: Any,
    project: Any,
    console: Console | None = None,
    as_json: bool = False,
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
    return Session(record, record.client(project), console or Console(highlight=False), as_json)


def connect(provider: Any, deployment: Path | None, as_json: bool = False) -> Session:
    """The session of a connected command: the record at `--deployment` (default: the
    network's record under deployments/)."""
    from ape import chain, project

    from margincall.deploy.record import DEFAULT_DIR, read_record, record_path

    path = deployment or record_path(provider.network_choice, DEFAULT_DIR)
    return open_session(read_record(path), chain, project, as_json=as_json)


@contextmanager
def exit_codes() -> Iterator[None]:
    """Bad input: exit 2 (click usage error); refused or reverted: exit 1, one line."""
    from ape.exceptions import ApeException, ContractLogicError

    from margincall.sdk import MarginCallError

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
    except OSError as err:  # the node went away mid-command (requests' ConnectionError, ...)
        raise click.ClickException(
            f"failed: lost the node ({type(err).__name__}); is it still running?"
        ) from None


# --- click options and arguments ---------------------------------------------------


def deployment_option(f: Callable) -> Callable:
    return click.option(
        "--deployment",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        envvar="MARGINCALL_DEPLOYMENT",
        show_envvar=True,
        help="Deployment record [default: deployments/<ecosystem>-<network>.json].",
    )(f)


def optional_account_option(f: Callable) -> Callable:
    """`--account` for commands that only sign for some of their uses (no prompt)."""
    return account_option(f, prompt=False)


def json_option(f: Callable) -> Callable:
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        envvar="MARGINCALL_JSON",
        show_envvar=True,
        help="Print JSON (amounts as exact decimal strings in tokens) instead of text.",
    )(f)


def slippage_option(f: Callable) -> Callable:
    return click.option(
        "--slippage-bps",
        type=click.IntRange(0, 9_999),
        default=50,
        show_default=True,
        envvar="MARGINCALL_SLIPPAGE_BPS",
        show_envvar=True,
        help="Worst acceptable price, in basis points from the oracle price.",
    )(f)


def network_option(f: Callable) -> Callable:
    from ape.cli import network_option as ape_network_option

    return ape_network_option(envvar="MARGINCALL_NETWORK", show_envvar=True)(f)


def account_option(f: Callable, prompt: bool = True) -> Callable:
    """Ape's `--account` (an alias or TEST::N; prompts when missing unless `prompt` is off:
    then None), from MARGINCALL_ACCOUNT."""
    from ape.cli import account_option as ape_account_option

    f = ape_account_option(prompt="Select an account" if prompt else False)(f)
    for param in f.__click_params__:  # type: ignore[attr-defined]
        if param.name == "account":
            param.envvar = "MARGINCALL_ACCOUNT"
            param.show_envvar = True
            param.help = "The signing account: an Ape alias or TEST::N."
    return f


def account_arg(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return to_address(value)
    except InputError as err:
        raise click.BadParameter(str(err)) from None


def not_an_option(ctx: click.Context, value: str) -> None:
    """Commands with `SIGNED` take unknown options as arguments: name a mistyped option
    as click would (`--acount` is no amount)."""
    if value.startswith("--"):
        raise click.NoSuchOption(value.split("=", 1)[0], ctx=ctx)


def amount_arg(ctx: click.Context, param: click.Parameter, value: str) -> str:
    not_an_option(ctx, value)
    if value.strip().lower() == "all" and ctx.command.name == "withdraw":
        return "all"
    try:
        to_units(value, 18, "amount")  # the token's decimals are checked once connected
    except InputError as err:
        raise click.BadParameter(str(err)) from None
    return value


def size_arg(ctx: click.Context, param: click.Parameter, value: str) -> str:
    not_an_option(ctx, value)
    try:
        to_units(value, 18, "size", signed=True)
    except InputError as err:
        raise click.BadParameter(str(err)) from None
    return value


# a number with a minus sign (`trade ETH-USD -0.5`, `withdraw -3`) must reach its argument's
# check, not be parsed as an option: a negative size sells, a negative amount is refused
SIGNED = {"ignore_unknown_options": True}
