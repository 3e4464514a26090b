"""Sending transactions the way a keeper must: many per block, without waiting.

Ape's `contract.method(..., sender=acct)` waits for each receipt, and on a
local network it sets the gas limit to the whole block. A keeper that acts on
a crash sends several batches in one block and must not wait for each: this
`TxSender` signs with any Ape account, estimates gas per transaction (plus a
buffer), keeps the nonce locally so a burst of transactions goes out in
order, and collects receipts later with `poll()`.

Nonce rules: the first send reads the pending nonce from the node; each send
takes the next one; a send that the node refuses for its nonce ("nonce too
low", "already known", "replacement transaction underpriced") resyncs from
the node and retries once; any other refusal also resyncs, so a gap never
jams the account. A transaction not mined after `stale_blocks` blocks is
dropped from `pending` (its accounts become eligible again) and the nonce is
resynced.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ape.logging import logger

NONCE_ERRORS = ("nonce too low", "already known", "replacement transaction underpriced", "nonce")


def _int(value: Any) -> int:
    """A JSON-RPC quantity ("0x1a") or an int."""
    return int(value, 16) if isinstance(value, str) else int(value)


def _hex(data: Any) -> str:
    if isinstance(data, str):
        return data if data.startswith("0x") else "0x" + data
    return "0x" + bytes(data).hex()


class Deferred(Exception):
    """A call `send_many` did not send because the block's gas budget was used up."""


class TooLarge(Exception):
    """A call `send_many` did not send because one transaction may not use that much gas
    (the chain's per-transaction cap, or the whole block's gas limit): split it."""

    def __init__(self, label: str, need: int, cap: int):
        super().__init__(f"{label}: {need:,} gas is over the {cap:,} one transaction may use")
        self.need = need
        self.cap = cap


@dataclass
class PendingTx:
    """A sent transaction and what it was for."""

    txn_hash: str
    nonce: int
    label: str  # e.g. "liquidate_many"
    accounts: tuple[str, ...]
    sent_block: int
    gas_limit: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Mined:
    """A pending transaction with its receipt (the node's raw receipt: `logs`, `status`,
    `gasUsed`, `blockNumber`; read logs with `margincall.logs.RawEvent`)."""

    tx: PendingTx
    receipt: Any

    @property
    def block(self) -> int:
        return _int(self.receipt["blockNumber"])

    @property
    def ok(self) -> bool:
        return _int(self.receipt["status"]) == 1

    @property
    def gas_used(self) -> int:
        return _int(self.receipt["gasUsed"])

    @property
    def logs(self) -> list:
        return list(self.receipt["logs"])


class TxSender:
    """Signs and sends from `account` without waiting; `poll()` returns what was mined."""

    def __init__(
        self,
        account: Any,
        provider: Any,
        gas_buffer_bps: int = 11_000,
        stale_blocks: int = 20,
        priority_fee: int | None = None,
    ):
        if gas_buffer_bps < 10_000:
            raise ValueError("gas_buffer_bps must be at least 10_000 (no buffer)")
        self.account = account
        self.provider = provider
        self.gas_buffer_bps = gas_buffer_bps
        self.stale_blocks = stale_blocks
        self.priority_fee = priority_fee
        self.next_nonce: int | None = None
        self.pending: dict[str, PendingTx] = {}
        self.gas_spent = 0
        self.fees_paid = 0  # wei

    @property
    def address(self) -> str:
        return str(self.account.address)

    @property
    def web3(self) -> Any:
        return self.provider.web3

    def sync_nonce(self) -> int:
        self.next_nonce = int(self.web3.eth.get_transaction_count(self.address, "pending"))
        return self.next_nonce

    def in_flight(self) -> set[str]:
        """Accounts named in a transaction not mined yet."""
        return {a for tx in self.pending.values() for a in tx.accounts}

    def _fees(self) -> tuple[int, int]:
        head = self.web3.eth.get_block("latest")
        base = int(head.get("baseFeePerGas", 0) or 0)
        tip = self.priority_fee
        if tip is None:
            tip = int(getattr(self.provider, "priority_fee", 0) or 0)
        return 2 * base + tip, tip

    def send(
        self,
        contract_address: str,
        data: bytes,
        label: str,
        accounts: tuple[str, ...],
        head_block: int,
        meta: dict[str, Any] | None = None,
        gas: int | None = None,
    ) -> PendingTx:
        """Estimates (unless `gas` is that estimate), signs and sends one transaction;
        returns it as pending."""
        estimate = self.gas_of(contract_address, data) if gas is None else gas
        gas_limit = estimate * self.gas_buffer_bps // 10_000
        max_fee, tip = self._fees()
        for attempt in (1, 2):
            if self.next_nonce is None:
                self.sync_nonce()
            nonce = self.next_nonce
            txn = self.provider.network.ecosystem.create_transaction(
                chain_id=self.provider.chain_id,
                receiver=contract_address,
                data=data,
                nonce=nonce,
                gas_limit=gas_limit,
                max_fee=max_fee,
                max_priority_fee=tip,
                type=2,
            )
            signed = self.account.sign_transaction(txn)
            if signed is None:
                raise RuntimeError(f"{self.address}: the account refused to sign")
            try:
                txn_hash = self.web3.eth.send_raw_transaction(signed.serialize_transaction())
            except Exception as err:  # noqa: BLE001 - node refusals come in many types
                self.next_nonce = None  # resync before anything else is sent
                text = str(err).lower()
                if attempt == 1 and any(s in text for s in NONCE_ERRORS):
                    logger.warning(f"{label}: nonce {nonce} refused ({err}); resyncing")
                    continue
                raise
            self.next_nonce = nonce + 1
            tx = PendingTx(
                txn_hash=txn_hash.to_0x_hex() if hasattr(txn_hash, "to_0x_hex") else str(txn_hash),
                nonce=nonce,
                label=label,
                accounts=tuple(accounts),
                sent_block=head_block,
                gas_limit=gas_limit,
                meta=dict(meta or {}),
            )
            self.pending[tx.txn_hash] = tx
            return tx
        raise AssertionError("unreachable")

    def gas_of(self, to: str, data: Any) -> int:
        """The gas the call uses at the head. `eth_createAccessList` runs it once and
        reports `gasUsed`; `eth_estimateGas` searches (a dozen runs of a 100-account batch,
        a second on Anvil), so it is only the fallback. The send adds `gas_buffer_bps`."""
        call = {"from": self.address, "to": to, "data": _hex(data)}
        try:
            result = self.web3.provider.make_request("eth_createAccessList", [call, "latest"])
            used = result.get("result", {}).get("gasUsed") if isinstance(result, dict) else None
            if used is not None and not result.get("error"):
                return int(used, 16) if isinstance(used, str) else int(used)
        except Exception:  # noqa: BLE001 - not every node has it: estimate instead
            pass
        return int(self.web3.eth.estimate_gas(call))

    def send_many(
        self,
        calls: list[tuple[Any, tuple, str, tuple[str, ...]]],
        head_block: int,
        workers: int = 4,
        gas_budget: int | None = None,
        tx_gas_cap: int | None = None,
    ) -> list[PendingTx | Exception]:
        """Sends several contract calls `(method, args, label, accounts)` at once: their gas
        is estimated concurrently (the slow part: each estimate runs the whole batch on the
        node), then they are signed and sent one after the other in nonce order. Returns,
        per call, the pending transaction or the exception that stopped it.

        `gas_budget` (e.g. the block gas limit) caps the gas limits sent, counting the
        transactions still pending: what does not fit comes back as `Deferred`, to be sent
        at the next block. A node's pool is not a queue to rely on (Anvil was seen dropping
        transactions left over from a full block). A call whose gas limit would be over
        `tx_gas_cap` (EIP-7825: 2**24 on Ethereum since Fusaka) or over the whole
        `gas_budget` can never be sent as it is: it comes back as `TooLarge`, and the calls
        after it are still sent."""
        prepared = [
            (str(m.contract.address), m.encode_input(*args), label, accounts)
            for m, args, label, accounts in calls
        ]

        def estimate(item: tuple) -> int:
            return self.gas_of(item[0], item[1])

        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(prepared)))) as pool:
            futures = [pool.submit(estimate, item) for item in prepared]
        out: list[PendingTx | Exception] = []
        room = None
        if gas_budget is not None:
            room = gas_budget - sum(tx.gas_limit for tx in self.pending.values())
        caps = [c for c in (tx_gas_cap, gas_budget) if c is not None]
        for (to, data, label, accounts), future in zip(prepared, futures, strict=True):
            try:
                gas = future.result()
                need = gas * self.gas_buffer_bps // 10_000
                if caps and need > min(caps):
                    out.append(TooLarge(label, need, min(caps)))
                    continue
                if room is not None:
                    if need > room:
                        out.append(Deferred(f"{label}: {need:,} gas does not fit in {room:,}"))
                        room = -1  # keep the order: nothing after a deferred batch
                        continue
                    room -= need
                out.append(self.send(to, data, label, accounts, head_block, gas=gas))
            except Exception as err:  # noqa: BLE001 - reported per call
                out.append(err)
        return out

    def send_call(
        self,
        method: Any,
        args: tuple,
        label: str,
        accounts: tuple[str, ...],
        head_block: int,
        meta: dict[str, Any] | None = None,
    ) -> PendingTx:
        """`send` for an Ape contract method (`engine.liquidate_many`, ...)."""
        data = method.encode_input(*args)
        return self.send(str(method.contract.address), data, label, accounts, head_block, meta)

    def poll(
        self, head_block: int, on_stale: Callable[[PendingTx], None] | None = None
    ) -> list[Mined]:
        """Receipts of pending transactions mined by `head_block` (later ones stay pending, so
        the caller's view of block `head_block` is consistent); drops stale ones."""
        mined: list[Mined] = []
        for txn_hash, tx in list(self.pending.items()):
            # the raw JSON-RPC result: web3's formatters take ~0.2 s on a receipt of a
            # 100-account batch (hundreds of logs), which a keeper cannot spend per block
            raw = self.web3.provider.make_request("eth_getTransactionReceipt", [txn_hash])
            if raw.get("error"):
                raise RuntimeError(f"eth_getTransactionReceipt({txn_hash}): {raw['error']}")
            raw = raw.get("result")
            if raw is not None and _int(raw["blockNumber"]) > head_block:
                raw = None  # mined after the block being handled: not seen from there yet
            if raw is None:
                if head_block - tx.sent_block > self.stale_blocks:
                    logger.warning(
                        f"{tx.label} {txn_hash} not mined after {self.stale_blocks} blocks"
                    )
                    del self.pending[txn_hash]
                    self.next_nonce = None
                    if on_stale:
                        on_stale(tx)
                continue
            del self.pending[txn_hash]
            m = Mined(tx, raw)
            self.gas_spent += m.gas_used
            self.fees_paid += m.gas_used * _int(raw.get("effectiveGasPrice") or 0)
            mined.append(m)
        return mined


__all__ = ["Deferred", "Mined", "PendingTx", "TooLarge", "TxSender"]
