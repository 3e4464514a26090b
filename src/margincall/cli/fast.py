"""The account's status read over plain JSON-RPC (no Ape, no web3): what makes `margincall
status` start in well under Ape's start-up time on a local node.

The calls and their layouts (`check_margins`, `account_info`, `position`, `risk_params`,
`try_price`, `symbol`) are the engine's and the adapter's ABI (see
`.build/__local__.json`); tests/unit/test_cli_fast.py reads the same account through the
SDK and compares every field, so a change of layout fails a test instead of misreading.
Every call is made at one block (the head when the command starts).
"""

from __future__ import annotations

from dataclasses import dataclass

from margincall.cli.accounts import keccak
from margincall.cli.node import NodeError, probe, rpc
from margincall.cli.views import AccountView, PositionView
from margincall.constants import MAX_MARKETS, State
from margincall.deploy.record import DeploymentRecord, RecordError


@dataclass(frozen=True)
class RawStatus:
    """`check_margins` for one account (the fields of the SDK's `MarginStatus`)."""

    account: str
    collateral: int
    equity: int
    maintenance: int
    initial: int
    ratio: int
    state: State
    call_deadline: int
    next_tranche_time: int
    positions: int
    priced: bool


def _selector(signature: str) -> str:
    return "0x" + keccak(signature.encode())[:4].hex()


def _word(value: int) -> str:
    return f"{value % 2**256:064x}"


def _words(hexdata: str) -> list[int]:
    raw = bytes.fromhex(hexdata[2:])
    return [int.from_bytes(raw[i : i + 32], "big") for i in range(0, len(raw), 32)]


def _signed(word: int) -> int:
    return word - 2**256 if word >= 2**255 else word


class FastReader:
    """Reads one account of a recorded system at one block."""

    def __init__(self, url: str, record: DeploymentRecord):
        self.url = url
        self.record = record
        chain_id = probe(url)
        if chain_id != record.chain_id:
            raise RecordError(
                f"deployment record is for chain id {record.chain_id}, "
                f"connected to chain id {chain_id}"
            )
        head = rpc(url, "eth_getBlockByNumber", ["latest", False])
        self.block = int(head["number"], 16)
        self.timestamp = int(head["timestamp"], 16)
        self.tag = hex(self.block)
        if rpc(url, "eth_getCode", [record.engine, self.tag]) in ("0x", "0x0"):
            raise RecordError(
                f"no contract at the recorded engine {record.engine} on this chain "
                "(a local chain restarted? run `ape run deploy --force` again)"
            )

    def call(self, to: str, signature: str, *args: int) -> str:
        data = _selector(signature) + "".join(_word(a) for a in args)
        try:
            return rpc(self.url, "eth_call", [{"to": to, "data": data}, self.tag])
        except NodeError as err:
            raise RecordError(f"{signature} on {to}: {err}") from None

    def lens(self) -> str:
        """The deployment's MarginLens (the record's `lens`), where `check_margins` lives."""
        if int(self.record.lens, 16) == 0:
            raise RecordError("the deployment record names no MarginLens: deploy again")
        return self.record.lens

    def status(self, account: str) -> RawStatus:
        # check_margins(address[]): offset, length 1, the address; out: offset, length, 11 words
        data = (
            _selector("check_margins(address[])") + _word(32) + _word(1) + _word(int(account, 16))
        )
        call = {"to": self.lens(), "data": data}
        out = _words(rpc(self.url, "eth_call", [call, self.tag]))
        w = out[2:13]
        return RawStatus(
            account,
            w[1],
            _signed(w[2]),
            w[3],
            w[4],
            w[5],
            State(w[6]),
            w[7],
            w[8],
            w[9],
            w[10] == 1,
        )

    def view(self, account: str) -> AccountView:
        engine = self.record.engine
        status = self.status(account)
        info = _words(self.call(engine, "account_info(address)", int(account, 16)))
        positions = []
        for m in (m for m in range(MAX_MARKETS) if info[1] >> m & 1):
            size, cost = (
                _signed(x)
                for x in _words(self.call(engine, "position(address,uint256)", int(account, 16), m))
            )
            price, ok = _words(self.call(self.record.markets[m].oracle, "try_price()"))
            name = self.record.market_name(m)
            positions.append(PositionView(m, name, size, cost, price if ok else None))
        call_ratio = _words(self.call(engine, "risk_params()"))[0]
        return AccountView(status, tuple(positions), self.timestamp, self.block, call_ratio)

    def symbol(self) -> str:
        try:
            raw = bytes.fromhex(self.call(self.record.token, "symbol()")[2:])
            offset = int.from_bytes(raw[:32], "big")
            length = int.from_bytes(raw[offset : offset + 32], "big")
            return raw[offset + 32 : offset + 32 + length].decode()
        except (RecordError, ValueError, UnicodeDecodeError):
            return "tokens"


__all__ = ["FastReader", "RawStatus"]
