"""`ForBots`, mixed into `MarginEngineClient`: what the bots and the dashboard need of the
engine beyond its senders: reads at a given block (risk parameters, a market's liquidation
window, a liquidation preview), its raw event readers and logs by block range, keeper
actions built for a bot to sign (`build`, a `Call`), and unsigned calls for an external
wallet to sign (`wallet_call`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_utils import keccak

from margincall import math as ref
from margincall.constants import MAX_BATCH
from margincall.sdk.errors import InvalidRequest
from margincall.sdk.events import RawEvent, get_logs
from margincall.sdk.types import Call, LiquidationPreview, _addr, _get


class ForBots:
    """The engine client's side for bots: reads at a given block, transactions signed
    elsewhere (its `engine`, `lens`, `token` and `orders`)."""

    @property
    def address(self) -> str:
        """The engine's address."""
        return str(self.engine.address)

    def params_at(self, block_id: int | None = None) -> tuple[ref.RiskParams, list[int]]:
        """The risk parameters and every market's `mmr` (by market id) at `block_id`."""
        at = {} if block_id is None else {"block_id": block_id}
        rp = self.engine.risk_params(**at)
        params = ref.RiskParams(
            **{f: int(_get(rp, f)) for f in ref.RiskParams.__dataclass_fields__}
        )
        count = int(self.engine.market_count(**at))
        return params, [int(self.engine.markets(m, **at).mmr) for m in range(count)]

    def window_at(self, market_id: int, block_id: int | None = None) -> tuple[int, int, int]:
        """`(start, used, cap)` of the market's liquidation window at `block_id`."""
        at = {} if block_id is None else {"block_id": block_id}
        start, used = self.engine.window_state(market_id, **at)
        return int(start), int(used), int(self.engine.markets(market_id, **at).window_cap)

    def preview_at(self, account: Any, block_id: int | None = None) -> LiquidationPreview:
        """`preview_liquidation(account)` at `block_id` (raises on an invalid price)."""
        at = {} if block_id is None else {"block_id": block_id}
        return LiquidationPreview.from_struct(self.lens.preview_liquidation(_addr(account), **at))

    def raw_event(self, name: str) -> RawEvent:
        """A fast reader of the engine's event `name` (`margincall.sdk.events.RawEvent`)."""
        return RawEvent(getattr(self.engine, name).abi)

    def logs(self, start: int, stop: int, topics: Sequence[Any] | None = None) -> list[Any]:
        """The engine's raw logs of blocks start..stop (`topics`: a filter, e.g. one list of
        topic0s), read in chunks (`margincall.sdk.events.get_logs`)."""
        return get_logs(self.engine.provider.web3, self.address, start, stop, topics)

    def events(self, start: int, stop: int, names: Sequence[str], account: Any = None) -> list[Any]:
        """The engine's events `names` of blocks start..stop, fully decoded (Ape's
        `ContractLog`s, every field): one `eth_getLogs` over the range. `account`: only the
        events whose first indexed field is that account (every account event's is)."""
        abis = [getattr(self.engine, name).abi for name in names]
        topics: list[Any] = [["0x" + keccak(text=abi.selector).hex() for abi in abis]]
        if account is not None:
            topics.append("0x" + "0" * 24 + _addr(account)[2:].lower())
        provider = self.engine.provider
        query = {"address": self.address, "fromBlock": hex(start), "toBlock": hex(stop)}
        raw = provider.make_request("eth_getLogs", [{**query, "topics": topics}])
        return list(provider.network.ecosystem.decode_logs(list(raw), *abis))

    def build(self, function: str, accounts: Sequence[Any]) -> Call:
        """The transaction of a keeper action for a bot to sign and send: `liquidate_many` or
        `margin_call_many` of a batch, `clear_margin_call` of one account, or
        `claim_rewards` of one owner (the keeper's own accrued rewards)."""
        if function in ("liquidate_many", "margin_call_many"):
            batch = tuple(_addr(a) for a in accounts)
            if not 0 < len(batch) <= MAX_BATCH:
                raise InvalidRequest(f"{function}: 1 to {MAX_BATCH} accounts, not {len(batch)}")
            args: tuple = (list(batch),)
        elif function in ("clear_margin_call", "claim_rewards"):
            if len(accounts) != 1:
                raise InvalidRequest(f"{function}: one account")
            batch = (_addr(accounts[0]),)
            args = batch
        else:
            raise InvalidRequest(f"{function}: not a keeper action")
        data = getattr(self.engine, function).encode_input(*args)
        return Call(self.address, bytes(data), function, batch)

    def wallet_call(
        self, function: str, args: Sequence[Any], *, on: str = "engine", label: str = ""
    ) -> dict[str, Any]:
        """An unsigned call for an external wallet to sign (the dashboard's EIP-1193 signer):
        the contract's address, the ABI entry of `function` with `len(args)` inputs (Vyper's
        default arguments make overloads), the arguments as decimal strings (booleans as
        JSON booleans: viem refuses "True") and a label.
        `on`: "engine", "token" (the collateral, for an `approve`) or "book" (the order book:
        positions change only through orders)."""
        contract = (
            self.orders.book if on == "book" else {"engine": self.engine, "token": self.token}[on]
        )
        for entry in contract.contract_type.abi:
            if entry.type == "function" and entry.name == function:
                if len(entry.inputs) == len(args):
                    return {
                        "label": label or function,
                        "to": str(contract.address),
                        "abi": entry.model_dump(mode="json", by_alias=True),
                        "function": function,
                        "args": [a if isinstance(a, bool) else str(a) for a in args],
                    }
        raise InvalidRequest(f"the {on} has no {function} with {len(args)} arguments")
