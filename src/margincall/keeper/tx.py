"""Sending transactions the way a keeper must: many per block, without waiting.

Ape's `contract.method(..., sender=acct)` waits for each receipt, and on a
local network it sets the gas limit to the whole block. A keeper that acts on
a crash sends several batches in one block and must not wait for each: this
`TxSender` signs with any Ape account, estimates gas per transaction (plus a
buffer), keeps the nonce locally so a burst of transactions goes out in
order, and collects receipts later with `poll()`.

Fees: `begin_block(number, base_fee)` fixes the fees of every transaction
sent for that block (`2 * base fee + tip`; the tip is read from the node at
most every `tip_refresh_blocks` blocks), so a send costs one RPC, not three.

Nonce rules: the first send reads the pending nonce from the node; each send
takes the next one; a send that the node refuses for its nonce ("nonce too
low", "already known", "replacement transaction underpriced") resyncs from
the node and retries once; any other refusal also resyncs, so a gap never
jams the account. A resync never goes below a nonce this sender still tracks.

Stuck transactions are replaced, never just forgotten (forgetting one leaves
its nonce occupied in the node's pool, and every later send queues behind
it): `unstick()` re-sends a transaction not mined `replace_after` blocks after
its last send at the same nonce with both fees raised by `bump_bps` (at least
12.5%, over what nodes require of a replacement; and at least the current
fees). When the action is no longer useful (the caller says so), or the
transaction is `stale_blocks` old, the replacement is a zero-value transfer
to itself (a "cancel"), which frees its accounts for new transactions. Until
one transaction of the nonce is mined, all of its hashes are watched: the
original may still win.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ape.logging import logger
from web3.exceptions import ContractLogicError

from margincall.keeper.gas import block_fees, bumped

NONCE_ERRORS = ("nonce too low", "already known", "replacement transaction underpriced", "nonce")
TRANSFER_GAS = 21_000
# The gas limit over the measured `gasUsed`: that figure is net of refunds, and EIP-3529 lets
# refunds reach a fifth of the gas a transaction burns, so the execution itself can need up to
# 1.25x it; a bankrupt close (zeroed positions and accruals, the reentrancy locks) comes close.
# Another 8% covers the 1/64 each external call keeps back and a price moved by the block.
GAS_BUFFER_BPS = 13_500
MIN_BUMP_BPS = 11_250  # +12.5%: more than any common node asks of a replacement
RECEIPT_POLLS = 3  # polls a mined nonce may go without a receipt before it is forgotten


def _int(value: Any) -> int:
    """A JSON-RPC quantity ("0x1a") or an int."""
    return int(value, 16) if isinstance(value, str) else int(value)


def _hex(data: Any) -> str:
    if isinstance(data, str):
        return data if data.startswith("0x") else "0x" + data
    return "0x" + bytes(data).hex()


def _hash(txn_hash: Any) -> str:
    if hasattr(txn_hash, "to_0x_hex"):
        return txn_hash.to_0x_hex()
    if isinstance(txn_hash, bytes):
        return "0x" + txn_hash.hex()
    return str(txn_hash)


class Deferred(Exception):
    """A call `send_many` did not send because the block's gas budget was used up."""


class TooLarge(Exception):
    """A call `send_many` did not send because one transaction may not use that much gas
    (the chain's per-transaction cap, or the whole block's gas limit): split it."""

    def __init__(self, label: str, need: int, cap: int):
        super().__init__(f"{label}: {need:,} gas is over the {cap:,} one transaction may use")
        self.need = need
        self.cap = cap


class Reverted(Exception):
    """A call `send_many` did not send because its gas estimate reverted: sent as it is, it
    would revert on chain (e.g. one account of a batch needs a payout the pool cannot make).
    The caller may split it (`margincall.keeper.step.split_reverted`)."""

    def __init__(self, label: str, cause: Exception):
        super().__init__(f"{label}: the estimate reverted ({cause})")
        self.cause = cause


def is_revert(err: Exception) -> bool:
    """Whether an estimate failed because the call reverts (not because the node did not
    answer): web3's `ContractLogicError`, or a node message naming a revert."""
    return isinstance(err, ContractLogicError) or "revert" in str(err).lower()


@dataclass
class PendingTx:
    """A sent transaction (one nonce) and what it was for.

    `txn_hash` is its latest version; `replaced` the earlier ones at the same nonce,
    oldest first (any of them may be the one mined). After a cancel, `cancelled` is set,
    `cancels` holds the hashes of the zero-value self-transfers and the accounts are no
    longer in flight."""

    txn_hash: str
    nonce: int
    label: str  # e.g. "liquidate_many"
    accounts: tuple[str, ...]
    sent_block: int  # the block of the last (re)send
    gas_limit: int
    meta: dict[str, Any] = field(default_factory=dict)
    to: str = ""
    data: str = "0x"
    max_fee: int = 0
    tip: int = 0
    first_block: int = -1  # the block of the first send
    replaced: list[str] = field(default_factory=list)
    cancelled: bool = False
    cancels: set[str] = field(default_factory=set)
    unseen: int = 0  # polls that found its nonce mined but none of its receipts

    def __post_init__(self) -> None:
        if self.first_block < 0:
            self.first_block = self.sent_block

    @property
    def hashes(self) -> list[str]:
        """Every version of this nonce, newest first."""
        return [self.txn_hash, *reversed(self.replaced)]

    @property
    def replacements(self) -> int:
        return len(self.replaced)


@dataclass
class Mined:
    """A pending transaction with its receipt (the node's raw receipt: `logs`, `status`,
    `gasUsed`, `blockNumber`; read logs with `margincall.sdk.events.RawEvent`).

    `cancel` is set when the transaction mined at that nonce was the zero-value
    self-transfer that replaced the action: nothing was done for `tx.accounts`."""

    tx: PendingTx
    receipt: Any
    cancel: bool = False

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


def _prepared(call: Any) -> tuple[str, Any, str, tuple[str, ...]]:
    """`(to, data, label, accounts)` of an SDK `Call` (what the keeper sends), or of an Ape
    contract method with its arguments."""
    if hasattr(call, "to") and hasattr(call, "data"):
        return str(call.to), call.data, call.label, tuple(call.accounts)
    method, args, label, accounts = call
    return str(method.contract.address), method.encode_input(*args), label, accounts


class TxSender:
    """Signs and sends from `account` without waiting; `poll()` returns what was mined,
    `unstick()` replaces what does not get mined."""

    def __init__(
        self,
        account: Any,
        provider: Any,
        gas_buffer_bps: int = GAS_BUFFER_BPS,
        stale_blocks: int = 20,
        priority_fee: int | None = None,
        replace_after: int = 3,
        bump_bps: int = 12_500,
        tip_refresh_blocks: int = 10,
    ):
        if gas_buffer_bps < 10_000:
            raise ValueError("gas_buffer_bps must be at least 10_000 (no buffer)")
        if bump_bps < MIN_BUMP_BPS:
            raise ValueError(f"bump_bps must be at least {MIN_BUMP_BPS} (+12.5%)")
        if replace_after < 1 or stale_blocks < 1:
            raise ValueError("replace_after and stale_blocks must be at least 1 block")
        self.account = account
        self.provider = provider
        self.gas_buffer_bps = gas_buffer_bps
        self.stale_blocks = stale_blocks
        self.priority_fee = priority_fee
        self.replace_after = replace_after
        self.bump_bps = bump_bps
        self.tip_refresh_blocks = tip_refresh_blocks
        self.next_nonce: int | None = None
        self.pending: dict[str, PendingTx] = {}  # by latest hash
        self.gas_spent = 0
        self.fees_paid = 0  # wei
        self.replacements = 0  # fee-bumped re-sends
        self.cancels = 0  # zero-value self-transfers sent
        self._block_fees: tuple[int, int] | None = None  # (max fee, tip) of `begin_block`
        self._tip: tuple[int, int] | None = None  # (block read at, tip)

    @property
    def address(self) -> str:
        return str(self.account.address)

    @property
    def web3(self) -> Any:
        return self.provider.web3

    # --- nonce and fees ---

    def sync_nonce(self) -> int:
        """The node's pending nonce, but never below a nonce still tracked here: a tracked
        transaction the node dropped leaves a gap that `unstick` fills at its own nonce."""
        count = int(self.web3.eth.get_transaction_count(self.address, "pending"))
        tracked = [tx.nonce for tx in self.pending.values()]
        self.next_nonce = max([count, *(n + 1 for n in tracked)])
        return self.next_nonce

    def mined_count(self, block: int | str = "latest") -> int:
        """How many of this account's transactions are mined as of `block` (one RPC)."""
        return int(self.web3.eth.get_transaction_count(self.address, block))

    def in_flight(self, mined: int | None = None) -> set[str]:
        """Accounts named in a transaction not mined yet (and not cancelled). With `mined`
        (`mined_count` at the block being handled), transactions with a lower nonce count
        as mined even before `poll` has read their receipts."""
        return {
            a
            for tx in self.pending.values()
            if not tx.cancelled and (mined is None or tx.nonce >= mined)
            for a in tx.accounts
        }

    def tip(self, block: int) -> int:
        """The priority fee: the fixed one, or the node's, read at most every
        `tip_refresh_blocks` blocks."""
        if self.priority_fee is not None:
            return self.priority_fee
        if self._tip is None or block - self._tip[0] >= self.tip_refresh_blocks or block < 0:
            self._tip = (block, int(getattr(self.provider, "priority_fee", 0) or 0))
        return self._tip[1]

    def begin_block(self, block: int, base_fee: int, tip: int | None = None) -> tuple[int, int]:
        """Fixes the fees of the transactions sent for `block` (whose base fee is
        `base_fee`): `(2 * base_fee + tip, tip)`. Returns them."""
        tip = self.tip(block) if tip is None else tip
        self._block_fees = block_fees(base_fee, tip)
        return self._block_fees

    def _fees(self) -> tuple[int, int]:
        if self._block_fees is not None:
            return self._block_fees
        head = self.web3.eth.get_block("latest")
        base = int(head.get("baseFeePerGas", 0) or 0)
        tip = self.priority_fee
        if tip is None:
            tip = int(getattr(self.provider, "priority_fee", 0) or 0)
        return block_fees(base, tip)

    # --- sending ---

    def _sign_and_send(
        self, to: str, data: str, nonce: int, gas_limit: int, max_fee: int, tip: int
    ) -> str:
        txn = self.provider.network.ecosystem.create_transaction(
            chain_id=self.provider.chain_id,
            receiver=to,
            data=data,
            value=0,
            nonce=nonce,
            gas_limit=gas_limit,
            max_fee=max_fee,
            max_priority_fee=tip,
            type=2,
        )
        signed = self.account.sign_transaction(txn)
        if signed is None:
            raise RuntimeError(f"{self.address}: the account refused to sign")
        return _hash(self.web3.eth.send_raw_transaction(signed.serialize_transaction()))

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
        payload = _hex(data)
        for attempt in (1, 2):
            if self.next_nonce is None:
                self.sync_nonce()
            nonce = self.next_nonce
            assert nonce is not None
            try:
                txn_hash = self._sign_and_send(
                    contract_address, payload, nonce, gas_limit, max_fee, tip
                )
            except Exception as err:  # noqa: BLE001 - node refusals come in many types
                self.next_nonce = None  # resync before anything else is sent
                text = str(err).lower()
                if attempt == 1 and any(s in text for s in NONCE_ERRORS):
                    logger.warning(f"{label}: nonce {nonce} refused ({err}); resyncing")
                    continue
                raise
            self.next_nonce = nonce + 1
            tx = PendingTx(
                txn_hash=txn_hash,
                nonce=nonce,
                label=label,
                accounts=tuple(accounts),
                sent_block=head_block,
                gas_limit=gas_limit,
                meta=dict(meta or {}),
                to=str(contract_address),
                data=payload,
                max_fee=max_fee,
                tip=tip,
            )
            self.pending[tx.txn_hash] = tx
            return tx
        raise AssertionError("unreachable")

    def gas_of(self, to: str, data: Any) -> int:
        """The gas the call uses at the head. `eth_createAccessList` runs it once and
        reports `gasUsed`; `eth_estimateGas` searches (a dozen runs of a 100-account batch,
        a second on Anvil), so it is only the fallback. The send adds `gas_buffer_bps`
        (`GAS_BUFFER_BPS`: `gasUsed` is net of refunds, which the limit must carry)."""
        call = {"from": self.address, "to": to, "data": _hex(data)}
        error = None
        try:
            result = self.web3.provider.make_request("eth_createAccessList", [call, "latest"])
            used = result.get("result", {}).get("gasUsed") if isinstance(result, dict) else None
            if used is not None and not result.get("error"):
                return int(used, 16) if isinstance(used, str) else int(used)
            error = result.get("error") if isinstance(result, dict) else None
        except Exception:  # noqa: BLE001 - not every node has it: estimate instead
            pass
        if isinstance(error, dict) and "revert" in str(error.get("message", "")).lower():
            # the call reverts: no second run to learn it again (a keeper bisecting a jammed
            # batch makes a dozen of these in one block)
            raise ContractLogicError(str(error["message"]), data=error.get("data"))
        return int(self.web3.eth.estimate_gas(call))

    def send_many(
        self,
        calls: Sequence[Any],
        head_block: int,
        workers: int = 4,
        gas_budget: int | None = None,
        tx_gas_cap: int | None = None,
        extra_gas: list[int] | None = None,
        mined: int | None = None,
    ) -> list[PendingTx | Exception]:
        """Sends several contract calls (the SDK's `Call`s, or `(method, args, label,
        accounts)` of an Ape contract method) at once: their gas
        is estimated concurrently (the slow part: each estimate runs the whole batch on the
        node), then they are signed and sent one after the other in nonce order. Returns,
        per call, the pending transaction or the exception that stopped it.

        The estimate runs at the head, with the head's timestamp. `extra_gas` (one value
        per call) adds what the call will use in the next block but did not use in the
        estimate: e.g. a tranche that is due only at the next block's timestamp, which the
        estimate skipped (without it the transaction runs out of gas).

        `gas_budget` (e.g. the block gas limit) caps the gas limits sent, counting the
        transactions still pending (with `mined`, the `mined_count` at the head, those with a
        lower nonce are mined already, receipts read or not, and do not count): what does not
        fit comes back as `Deferred`, to be sent at the next block. A node's pool is not a
        queue to rely on (Anvil was seen dropping transactions left over from a full block).
        A call whose gas limit would be over `tx_gas_cap` (EIP-7825: 2**24 on Ethereum since
        Fusaka) or over the whole `gas_budget` can never be sent as it is: it comes back as
        `TooLarge`, and the calls after it are still sent. A call whose estimate reverts
        comes back as `Reverted` (to be split by the caller), and the calls after it are
        still sent."""
        if not calls:
            return []
        prepared = [_prepared(call) for call in calls]

        extras = list(extra_gas) if extra_gas is not None else [0] * len(prepared)
        if len(extras) != len(prepared):
            raise ValueError("extra_gas needs one value per call")

        def estimate(item: tuple) -> int:
            return self.gas_of(item[0], item[1])

        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(prepared)))) as pool:
            futures = [pool.submit(estimate, item) for item in prepared]
            out: list[PendingTx | Exception] = []
            room = None
            if gas_budget is not None:
                room = gas_budget - sum(
                    tx.gas_limit
                    for tx in self.pending.values()
                    if not tx.cancelled and (mined is None or tx.nonce >= mined)
                )
            caps = [c for c in (tx_gas_cap, gas_budget) if c is not None]
            # in order, each as soon as its own estimate is back
            for (to, data, label, accounts), future, extra in zip(
                prepared, futures, extras, strict=True
            ):
                try:
                    gas = future.result() + extra
                except Exception as err:  # noqa: BLE001 - reported per call
                    out.append(Reverted(label, err) if is_revert(err) else err)
                    continue
                try:
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
        """`send` for an SDK `Call` (`args`, `label` and `accounts` then unused: the call
        carries them) or an Ape contract method with its arguments."""
        to, data, label, accounts = _prepared(
            method if args == () else (method, args, label, accounts)
        )
        return self.send(to, data, label, accounts, head_block, meta)

    # --- receipts ---

    def _receipt(self, txn_hash: str) -> Any:
        # the raw JSON-RPC result: web3's formatters take ~0.2 s on a receipt of a
        # 100-account batch (hundreds of logs), which a keeper cannot spend per block
        raw = self.web3.provider.make_request("eth_getTransactionReceipt", [txn_hash])
        if raw.get("error"):
            raise RuntimeError(f"eth_getTransactionReceipt({txn_hash}): {raw['error']}")
        return raw.get("result")

    def poll(self, head_block: int, mined: int | None = None) -> list[Mined]:
        """Receipts of pending transactions mined by `head_block` (later ones stay pending, so
        the caller's view of block `head_block` is consistent).

        One `eth_getTransactionCount` at `head_block` (or `mined`, that count, if the
        caller has it) tells which nonces are mined; only their receipts are read. A nonce
        mined by a transaction this sender does not know (another process with the same
        key) is dropped with a warning, after `RECEIPT_POLLS` polls: a node can count a nonce
        as mined a moment before it serves the receipt (seen on a loaded Anvil)."""
        if not self.pending:
            return []
        if mined is None:
            mined = self.mined_count(head_block)
        out: list[Mined] = []
        for key, tx in sorted(self.pending.items(), key=lambda kv: kv[1].nonce):
            if tx.nonce >= mined:
                continue
            found = None
            for txn_hash in tx.hashes:
                raw = self._receipt(txn_hash)
                if raw is not None and _int(raw["blockNumber"]) <= head_block:
                    found = (txn_hash, raw)
                    break
            if found is None:
                tx.unseen += 1
                if tx.unseen < RECEIPT_POLLS:
                    continue  # its receipt may not be served yet: look again next time
            del self.pending[key]
            if found is None:
                logger.warning(
                    f"{tx.label} nonce {tx.nonce}: mined by a transaction this keeper did not"
                    f" send ({len(tx.hashes)} versions watched); forgotten"
                )
                continue
            txn_hash, raw = found
            m = Mined(tx, raw, cancel=txn_hash in tx.cancels)
            self.gas_spent += m.gas_used
            self.fees_paid += m.gas_used * _int(raw.get("effectiveGasPrice") or 0)
            out.append(m)
        return out

    # --- stuck transactions ---

    def stuck(self, head_block: int, mined: int | None = None) -> list[PendingTx]:
        """Transactions not mined `replace_after` blocks after their last send, by nonce."""
        out = [
            tx
            for tx in self.pending.values()
            if head_block - tx.sent_block >= self.replace_after
            and (mined is None or tx.nonce >= mined)
        ]
        return sorted(out, key=lambda tx: tx.nonce)

    def replace(self, tx: PendingTx, head_block: int, cancel: bool = False) -> PendingTx:
        """Re-sends `tx` at its nonce with both fees bumped (`margincall.keeper.gas.bumped`):
        the same call, or with `cancel` (or once cancelled) a zero-value transfer to itself.
        Raises the node's refusal (e.g. "nonce too low": it was mined meanwhile; `poll` sees
        it)."""
        cur_max, cur_tip = self._fees()
        tip = bumped(tx.tip, cur_tip, self.bump_bps)
        max_fee = max(bumped(tx.max_fee, cur_max, self.bump_bps), tip)
        cancel = cancel or tx.cancelled
        if cancel:
            to, data, gas_limit = self.address, "0x", TRANSFER_GAS
        else:
            to, data, gas_limit = tx.to, tx.data, tx.gas_limit
        txn_hash = self._sign_and_send(to, data, tx.nonce, gas_limit, max_fee, tip)
        del self.pending[tx.txn_hash]
        tx.replaced.append(tx.txn_hash)
        tx.txn_hash = txn_hash
        tx.max_fee, tx.tip = max_fee, tip
        tx.sent_block = head_block
        if cancel:
            if not tx.cancelled:
                self.cancels += 1
            tx.cancelled = True
            tx.cancels.add(txn_hash)
            tx.gas_limit = TRANSFER_GAS
        else:
            self.replacements += 1
        self.pending[txn_hash] = tx
        return tx

    def unstick(
        self,
        head_block: int,
        useful: Callable[[PendingTx], bool] | None = None,
        mined: int | None = None,
    ) -> list[PendingTx]:
        """Replaces every stuck transaction (`stuck`), lowest nonce first: with the same
        call while `useful(tx)` says the action is still wanted (default: yes) and it is
        younger than `stale_blocks`, else with a cancel. Returns those replaced; a refusal
        is logged and retried at the next block."""
        done = []
        for tx in self.stuck(head_block, mined):
            age = head_block - tx.first_block
            cancel = tx.cancelled or age >= self.stale_blocks or not (useful is None or useful(tx))
            try:
                self.replace(tx, head_block, cancel=cancel)
            except Exception as err:  # noqa: BLE001 - mined meanwhile, or still underpriced
                logger.warning(
                    f"{tx.label} nonce {tx.nonce} not replaced ({type(err).__name__}: {err})"
                )
                continue
            logger.warning(
                f"{tx.label} nonce {tx.nonce} not mined after {age} blocks:"
                f" {'cancelled' if tx.cancelled else 're-sent'} with max fee {tx.max_fee},"
                f" tip {tx.tip} ({tx.txn_hash[:10]})"
            )
            done.append(tx)
        return done


__all__ = [
    "Deferred",
    "Mined",
    "PendingTx",
    "Reverted",
    "TooLarge",
    "TxSender",
    "bumped",
    "is_revert",
]
