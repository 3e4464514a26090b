"""`margincall dev`: drive a local chain (Anvil) by hand: test collateral, prices, the clock.

    margincall dev mint 10000 TEST::5          # mock collateral to an account
    margincall dev price ETH-USD 1860          # a new round on the market's mock feed
    margincall dev mine --seconds 3600         # move the clock, mine a block

Every command checks first that it runs on a local chain (chain id 31337), that the node's
chain is the deployment record's, and that the contract it touches is a mock with code: the
record's collateral for `mint`, the market's feed for `price`. Anywhere else it is refused
with one line and sends nothing. The transactions are sent from the node's first unlocked
account (Anvil's dev accounts), through plain JSON-RPC: no Ape start-up.
"""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

from margincall.cli.accounts import AccountError, resolve_account
from margincall.cli.node import LOCAL_CHAIN_ID, NodeError, local_node_url, probe, rpc

MINT = "mint(address,uint256)"  # MockERC20
SET_ANSWER = "set_answer(int256)"  # MockAggregator
BALANCE_OF = "balanceOf(address)"
RECEIPT_WAIT = 30.0


class DevError(click.ClickException):
    """Refused: not a local chain, no mock, a record of another chain (exit 1)."""

    def __init__(self, message: str):
        super().__init__(f"refused: {message}")


def _word(value: int) -> str:
    return f"{value % 2**256:064x}"


def selector(signature: str) -> str:
    from margincall.cli.accounts import keccak

    return "0x" + keccak(signature.encode())[:4].hex()


def _has_code(url: str, address: str) -> bool:
    code = rpc(url, "eth_getCode", [address, "latest"])
    return code not in ("0x", "0x0", None)


def local_chain(url: str, deployment: Path | None) -> Any:
    """Checks the node is a local chain with the record's system on it; returns the record."""
    from margincall.deploy.record import DEFAULT_DIR, RecordError, read_record, record_path

    chain_id = probe(url)
    if chain_id != LOCAL_CHAIN_ID:
        raise DevError(
            f"dev commands only run on a local chain (chain id {LOCAL_CHAIN_ID}); the node at "
            f"{url} is chain id {chain_id}"
        )
    try:
        record = read_record(deployment or record_path("ethereum:local", DEFAULT_DIR))
    except RecordError as err:
        raise DevError(str(err)) from None
    if record.chain_id != chain_id:
        raise DevError(f"the deployment record is for chain id {record.chain_id}, not {chain_id}")
    if not _has_code(url, record.engine):
        raise DevError(
            f"no contract at the recorded engine {record.engine} (a restarted chain? deploy again)"
        )
    return record


def send(url: str, to: str, data: str) -> dict[str, Any]:
    """Sends from the node's first unlocked account; waits for the receipt; raises on revert."""
    accounts = rpc(url, "eth_accounts")
    if not accounts:
        raise DevError(f"the node at {url} has no unlocked account to send from")
    tx_hash = rpc(url, "eth_sendTransaction", [{"from": accounts[0], "to": to, "data": data}])
    deadline = time.monotonic() + RECEIPT_WAIT
    while time.monotonic() < deadline:
        receipt = rpc(url, "eth_getTransactionReceipt", [tx_hash])
        if receipt is not None:
            if int(receipt["status"], 16) != 1:
                raise DevError(f"transaction {tx_hash} reverted")
            return receipt
        time.sleep(0.1)
    raise DevError(f"no receipt for {tx_hash} after {RECEIPT_WAIT:g} s (is the node mining?)")


def _amount(text: str, decimals: int, what: str) -> int:
    from margincall.cli.common import InputError, to_units

    try:
        return to_units(text, decimals, what)
    except InputError as err:
        raise click.BadParameter(str(err)) from None


def node_option(f: Any) -> Any:
    return click.option(
        "--node",
        envvar="APE_FOUNDRY_HOST",
        show_envvar=True,
        default=None,
        help=f"The local node's URL [default: {local_node_url()}].",
    )(f)


def deployment_option(f: Any) -> Any:
    return click.option(
        "--deployment",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="MARGINCALL_DEPLOYMENT",
        show_envvar=True,
        default=None,
        help="Deployment record [default: deployments/ethereum-local.json].",
    )(f)


@click.group()
def dev() -> None:
    """Local-chain helpers (Anvil only): test collateral, mock prices, the clock."""


@dev.command()
@click.argument("amount")
@click.argument("account")
@node_option
@deployment_option
def mint(amount: str, account: str, node: str | None, deployment: Path | None) -> None:
    """Mint AMOUNT whole tokens of the mock collateral to ACCOUNT (address, TEST::N, alias)."""
    url = node or local_node_url()
    try:
        receiver = resolve_account(account)
    except AccountError as err:
        raise click.BadParameter(str(err), param_hint="ACCOUNT") from None
    record = local_chain(url, deployment)
    if not record.collateral_mock or not _has_code(url, record.token):
        raise DevError(f"the collateral {record.token} is not a mock token: it cannot be minted")
    units = _amount(amount, record.collateral_decimals, "amount")
    send(url, record.token, selector(MINT) + _word(int(receiver, 16)) + _word(units))
    balance = int(rpc(url, "eth_call", [_balance_call(record.token, receiver), "latest"]), 16)
    symbol = _symbol(url, record.token)
    click.echo(
        f"minted {_tokens(units, record.collateral_decimals, symbol)} to {receiver};"
        f" balance {_tokens(balance, record.collateral_decimals, symbol)}"
    )


def _balance_call(token: str, owner: str) -> dict[str, str]:
    return {"to": token, "data": selector(BALANCE_OF) + _word(int(owner, 16))}


def _symbol(url: str, token: str) -> str:
    try:
        raw = bytes.fromhex(rpc(url, "eth_call", [{"to": token, "data": selector("symbol()")}])[2:])
        offset = int.from_bytes(raw[:32], "big")
        length = int.from_bytes(raw[offset : offset + 32], "big")
        return raw[offset + 32 : offset + 32 + length].decode()
    except (NodeError, ValueError, UnicodeDecodeError):
        return "tokens"


def _tokens(units: int, decimals: int, symbol: str) -> str:
    from margincall.report import fmt_tokens

    return f"{fmt_tokens(units, decimals)} {symbol}"


@dev.command()
@click.argument("market")
@click.argument("price")
@node_option
@deployment_option
def price(market: str, price: str, node: str | None, deployment: Path | None) -> None:
    """Set MARKET's price (collateral per base unit, like 1860) on its mock feed."""
    url = node or local_node_url()
    record = local_chain(url, deployment)
    try:
        m = record.markets[record.market_id(market)]
    except KeyError as err:
        raise click.BadParameter(err.args[0], param_hint="MARKET") from None
    if not m.mock_feed or not _has_code(url, m.feed):
        raise DevError(f"{m.name}'s feed {m.feed} is not a mock feed: its price cannot be set")
    answer = _amount(price, m.feed_decimals, "price")
    # a new round is the settlement price of the orders committed before it only if it is
    # stamped after them: Anvil can give the next block the head's timestamp
    head = rpc(url, "eth_getBlockByNumber", ["latest", False])
    rpc(url, "evm_setNextBlockTimestamp", [int(head["timestamp"], 16) + 1])
    receipt = send(url, m.feed, selector(SET_ANSWER) + _word(answer))
    click.echo(
        f"{m.name} price set to {Decimal(answer).scaleb(-m.feed_decimals):,f}"
        f" (block {int(receipt['blockNumber'], 16)})"
    )


@dev.command()
@click.option(
    "--seconds", type=click.IntRange(min=0), default=0, help="Move the clock forward first."
)
@click.option("--blocks", type=click.IntRange(min=1), default=1, show_default=True)
@node_option
def mine(seconds: int, blocks: int, node: str | None) -> None:
    """Move the clock forward by --seconds and mine --blocks blocks."""
    url = node or local_node_url()
    chain_id = probe(url)
    if chain_id != LOCAL_CHAIN_ID:
        raise DevError(
            f"dev commands only run on a local chain (chain id {LOCAL_CHAIN_ID}); the node at "
            f"{url} is chain id {chain_id}"
        )
    try:
        if seconds:
            rpc(url, "evm_increaseTime", [seconds])
        for _ in range(blocks):
            rpc(url, "evm_mine")
        head = rpc(url, "eth_getBlockByNumber", ["latest", False])
    except NodeError as err:
        raise click.ClickException(str(err)) from None
    click.echo(
        f"mined {blocks} block(s){f' after {seconds} s' if seconds else ''}:"
        f" head {int(head['number'], 16)} at t={int(head['timestamp'], 16)}"
    )


__all__ = ["DevError", "dev", "local_chain", "send"]
