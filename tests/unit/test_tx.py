"""`margincall.keeper.tx.TxSender`: nonces, receipts and the replacement of stuck transactions.

Most tests run against `FakeNode`, an in-memory node with a pool that follows the usual
replacement rule (a transaction at a nonce already in the pool needs both fees 10% higher),
mines in nonce order what pays the base fee, and counts the requests it serves: no wall
clock, no chain. The last test does the same on Anvil with automine off, where a base-fee
spike leaves a real transaction pending until its replacement is mined.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from web3.exceptions import ContractLogicError

from margincall.keeper.tx import (
    RECEIPT_POLLS,
    TRANSFER_GAS,
    Deferred,
    PendingTx,
    Reverted,
    TxSender,
    bumped,
    is_revert,
)

ME = "0x" + "aa" * 20
ENGINE = "0x" + "ee" * 20
TIP = 2


class FakeNode:
    """Pool, blocks and receipts for one sender."""

    def __init__(self, base_fee: int = 10):
        self.base_fee = base_fee
        self.block = 100
        self.mined = 0  # transactions of ME mined so far
        self.pool: dict[int, dict] = {}  # nonce -> transaction
        self.receipts: dict[str, dict] = {}
        self.requests: list[str] = []
        self.sent: list[dict] = []
        self._n = 0

    # --- the node's side ---

    def submit(self, txn: SimpleNamespace) -> bytes:
        tx = dict(vars(txn))
        if tx["nonce"] < self.mined:
            raise ValueError("nonce too low")
        old = self.pool.get(tx["nonce"])
        if old is not None and (
            tx["max_fee"] * 10 < old["max_fee"] * 11
            or tx["max_priority_fee"] * 10 < old["max_priority_fee"] * 11
        ):
            raise ValueError("replacement transaction underpriced")
        self._n += 1
        tx["hash"] = "0x" + f"{self._n:064x}"
        self.pool[tx["nonce"]] = tx
        self.sent.append(tx)
        return bytes.fromhex(tx["hash"][2:])

    def mine(self, only: str | None = None) -> int:
        """One block: the pool's transactions in nonce order while they pay the base fee;
        with `only`, just that transaction (an original its replacement lost to, or none:
        an empty block)."""
        self.block += 1
        if only is not None:
            tx = self._by_hash(only).get(self.mined)
            if tx is not None:
                self.pool.pop(self.mined, None)
                self._include(tx)
            return self.block
        while self.mined in self.pool and self.pool[self.mined]["max_fee"] >= self.base_fee:
            self._include(self.pool.pop(self.mined))
        return self.block

    def _include(self, tx: dict) -> None:
        self.receipts[tx["hash"]] = {
            "blockNumber": hex(self.block),
            "status": "0x1",
            "gasUsed": hex(tx["gas_limit"] // 2),
            "effectiveGasPrice": hex(self.base_fee + tx["max_priority_fee"]),
            "logs": [],
            "transactionHash": tx["hash"],
        }
        self.mined += 1

    def _by_hash(self, txn_hash: str) -> dict[int, dict]:
        return {tx["nonce"]: tx for tx in self.sent if tx["hash"] == txn_hash}

    # --- what TxSender calls ---

    def get_transaction_count(self, address: str, block: Any) -> int:
        self.requests.append(f"count:{block}")
        return self.mined + len(self.pool) if block == "pending" else self.mined

    def send_raw_transaction(self, raw: SimpleNamespace) -> bytes:
        self.requests.append("send")
        return self.submit(raw)

    def get_block(self, block: Any) -> dict:
        self.requests.append("block")
        return {"baseFeePerGas": self.base_fee, "number": self.block, "gasLimit": 30_000_000}

    def estimate_gas(self, call: dict) -> int:
        self.requests.append("estimate")
        return 100_000

    def make_request(self, method: str, params: list) -> dict:
        self.requests.append(method)
        if method == "eth_getTransactionReceipt":
            return {"result": self.receipts.get(params[0])}
        if method == "eth_createAccessList":
            return {"result": {"gasUsed": hex(100_000)}}
        raise AssertionError(method)


def make_sender(node: FakeNode, **kw: Any) -> TxSender:
    signer = SimpleNamespace(
        address=ME, sign_transaction=lambda txn: SimpleNamespace(serialize_transaction=lambda: txn)
    )
    provider = SimpleNamespace(
        web3=SimpleNamespace(eth=node, provider=node),
        chain_id=1,
        priority_fee=TIP,
        network=SimpleNamespace(
            ecosystem=SimpleNamespace(create_transaction=lambda **kw: SimpleNamespace(**kw))
        ),
    )
    kw.setdefault("replace_after", 2)
    kw.setdefault("stale_blocks", 10)
    return TxSender(signer, provider, **kw)


def liquidate(sender: TxSender, node: FakeNode, *accounts: str) -> PendingTx:
    sender.begin_block(node.block, node.base_fee)
    return sender.send(ENGINE, b"\x01\x02", "liquidate_many", accounts, node.block)


# --- fees ---------------------------------------------------------------------------------


def test_bumped_fees_rise_by_at_least_12_5_percent_and_one_wei_or_to_the_current_fee():
    assert bumped(100, 0, 12_500) == 125
    assert bumped(100, 0, 11_250) == 113  # 112.5 rounded up
    assert bumped(0, 0, 12_500) == 1  # a zero tip still rises
    assert bumped(100, 500, 12_500) == 500
    with pytest.raises(ValueError, match="12.5%"):
        make_sender(FakeNode(), bump_bps=11_000)


def test_fees_are_fixed_once_per_block_and_the_tip_read_every_few_blocks():
    node = FakeNode(base_fee=10)
    sender = make_sender(node)
    for block in range(100, 103):
        assert sender.begin_block(block, 10) == (2 * 10 + TIP, TIP)
        for _ in range(3):
            sender.send(ENGINE, b"\x01", "liquidate_many", (), block, gas=50_000)
    assert "block" not in node.requests  # no get_block per send
    assert node.requests.count("send") == 9
    assert node.requests.count("count:pending") == 1  # the first send's nonce only


# --- receipts -----------------------------------------------------------------------------


def test_poll_reads_receipts_only_of_mined_nonces():
    node = FakeNode()
    sender = make_sender(node)
    first = liquidate(sender, node, "a")
    node.mine()
    second = liquidate(sender, node, "b")
    node.requests.clear()
    mined = sender.poll(node.block)
    assert [m.tx.nonce for m in mined] == [first.nonce]
    assert node.requests.count("eth_getTransactionReceipt") == 1  # not the unmined one
    assert sender.in_flight() == {"b"} and second.txn_hash in sender.pending
    # with the count known in advance: no request at all for an unmined nonce
    node.requests.clear()
    assert sender.poll(node.block, mined=node.mined) == []
    assert node.requests == []


def test_in_flight_with_a_mined_count_releases_accounts_before_their_receipts_are_read():
    node = FakeNode()
    sender = make_sender(node)
    liquidate(sender, node, "a")
    liquidate(sender, node, "b")
    node.mine()
    assert sender.in_flight() == {"a", "b"}
    assert sender.in_flight(mined=sender.mined_count(node.block)) == set()


def test_a_mined_nonce_whose_receipt_lags_is_kept_until_the_receipt_is_served():
    """A loaded node can count a nonce as mined a moment before it serves the receipt: the
    transaction stays pending (its accounts no longer in flight) and is reported once the
    receipt comes, not forgotten as "mined by another sender"."""
    node = FakeNode()
    sender = make_sender(node)
    tx = liquidate(sender, node, "a")
    node.mine()
    receipt = node.receipts.pop(tx.txn_hash)  # counted as mined, receipt not served yet
    for _ in range(RECEIPT_POLLS - 1):
        assert sender.poll(node.block) == []
        assert tx.txn_hash in sender.pending
        assert sender.in_flight(mined=sender.mined_count(node.block)) == set()
    node.receipts[tx.txn_hash] = receipt
    [mined] = sender.poll(node.block)
    assert mined.tx is tx and not sender.pending


def test_a_mined_nonce_without_any_of_its_receipts_is_forgotten_after_a_few_polls():
    node = FakeNode()
    sender = make_sender(node)
    tx = liquidate(sender, node, "a")
    node.mine()
    node.receipts.pop(tx.txn_hash)  # mined by a transaction this sender never sent
    for _ in range(RECEIPT_POLLS - 1):
        sender.poll(node.block)
    assert tx.txn_hash in sender.pending
    assert sender.poll(node.block) == []
    assert not sender.pending


# --- stuck transactions --------------------------------------------------------------------


def test_a_stuck_transaction_is_replaced_at_its_nonce_with_more_fee_and_mined():
    node = FakeNode(base_fee=10)
    sender = make_sender(node, replace_after=2)
    tx = liquidate(sender, node, "a")
    old_hash, old_fee = tx.txn_hash, tx.max_fee
    node.base_fee = 100  # a spike: 2 * 10 + 2 no longer pays
    node.mine()
    sender.begin_block(node.block, 10)  # a node that has not seen the spike yet
    later = sender.send(ENGINE, b"\x03", "liquidate_many", ("b",), node.block)
    assert later.nonce == tx.nonce + 1
    node.mine()
    assert sender.stuck(node.block) == [tx]  # `later` is younger than replace_after
    sender.begin_block(node.block, node.base_fee)
    assert sender.unstick(node.block, useful=lambda t: True) == [tx]
    assert tx.nonce == 0 and tx.replaced == [old_hash] and not tx.cancelled
    assert tx.max_fee >= max(old_fee * 1125 // 1000, 2 * 100 + TIP)
    assert tx.tip >= TIP * 1125 // 1000
    assert (tx.to, tx.data) == (ENGINE, "0x0102")  # the same call
    assert sender.replacements == 1 and sender.in_flight() == {"a", "b"}
    node.mine()
    mined = sender.poll(node.block)
    assert [(m.tx.nonce, m.receipt["transactionHash"], m.cancel) for m in mined] == [
        (0, tx.txn_hash, False)
    ]
    # `later` (nonce 1) was underpriced too; it is replaced once old enough
    node.mine()
    sender.begin_block(node.block, node.base_fee)
    assert sender.unstick(node.block) == [later]
    node.mine()
    assert [m.tx.nonce for m in sender.poll(node.block)] == [1]
    assert sender.pending == {}


def test_a_transaction_no_longer_useful_is_replaced_by_a_self_transfer():
    node = FakeNode(base_fee=10)
    sender = make_sender(node)
    tx = liquidate(sender, node, "a", "b")
    node.base_fee = 100
    node.mine()
    node.mine()
    sender.begin_block(node.block, node.base_fee)
    sender.unstick(node.block, useful=lambda t: False)
    assert tx.cancelled and sender.cancels == 1
    sent = node.sent[-1]
    assert (sent["receiver"], sent["data"], sent["gas_limit"]) == (ME, "0x", TRANSFER_GAS)
    assert sent["value"] == 0 and sent["nonce"] == tx.nonce
    assert sender.in_flight() == set()  # its accounts may be sent again at once
    nxt = liquidate(sender, node, "a")
    assert nxt.nonce == tx.nonce + 1  # not at the cancelled nonce
    node.mine()
    mined = sender.poll(node.block)
    assert [(m.tx.nonce, m.cancel) for m in mined] == [(tx.nonce, True), (nxt.nonce, False)]


def test_a_transaction_older_than_stale_blocks_is_cancelled_even_if_useful():
    node = FakeNode(base_fee=10)
    sender = make_sender(node, replace_after=2, stale_blocks=4)
    tx = liquidate(sender, node, "a")
    node.base_fee = 10**6
    for _ in range(2):
        node.mine()
    sender.begin_block(node.block, 10)  # underpriced again: re-sent, not cancelled
    sender.unstick(node.block, useful=lambda t: True)
    assert not tx.cancelled and tx.replacements == 1
    for _ in range(2):
        node.mine()
    sender.begin_block(node.block, 10)
    sender.unstick(node.block, useful=lambda t: True)
    assert tx.cancelled and tx.replacements == 2


def test_the_original_may_still_be_mined_after_its_replacement():
    node = FakeNode(base_fee=10)
    sender = make_sender(node)
    tx = liquidate(sender, node, "a")
    original = tx.txn_hash
    node.mine(only="0x" + "00" * 32)  # an empty block
    node.mine(only="0x" + "00" * 32)
    sender.begin_block(node.block, node.base_fee)
    sender.unstick(node.block, useful=lambda t: False)
    assert tx.cancelled
    node.mine(only=original)  # the original won the race
    (m,) = sender.poll(node.block)
    assert m.receipt["transactionHash"] == original and not m.cancel


def test_a_refused_replacement_is_retried_at_the_next_block():
    node = FakeNode(base_fee=10)
    sender = make_sender(node)
    tx = liquidate(sender, node, "a")
    node.mine(only="0x" + "00" * 32)
    node.mine(only="0x" + "00" * 32)
    node.pool[tx.nonce]["max_fee"] *= 10  # someone replaced it with a much higher fee
    node.pool[tx.nonce]["max_priority_fee"] *= 10
    sender.begin_block(node.block, node.base_fee)
    assert sender.unstick(node.block) == []  # underpriced: logged, kept
    assert tx.txn_hash in sender.pending and tx.replaced == []


def test_a_resync_never_reuses_a_nonce_still_tracked():
    node = FakeNode()
    sender = make_sender(node)
    liquidate(sender, node, "a")
    liquidate(sender, node, "b")
    node.pool.clear()  # the node dropped both: its pending count is back to 0
    assert sender.sync_nonce() == 2  # not 0: nonces 0 and 1 are re-sent by `unstick`


def test_send_many_adds_the_extra_gas_of_tranches_due_at_the_next_block():
    node = FakeNode()
    sender = make_sender(node)
    sender.begin_block(node.block, node.base_fee)
    method = SimpleNamespace(
        contract=SimpleNamespace(address=ENGINE), encode_input=lambda *a: b"\x01"
    )
    calls = [(method, ([],), "liquidate_many", ("a",)), (method, ([],), "liquidate_many", ("b",))]
    out = sender.send_many(calls, node.block, extra_gas=[250_000, 0])
    bps = sender.gas_buffer_bps
    assert [tx.gas_limit for tx in out] == [
        (100_000 + 250_000) * bps // 10_000,
        100_000 * bps // 10_000,
    ]
    with pytest.raises(ValueError, match="one value per call"):
        sender.send_many(calls, node.block, extra_gas=[1])


# --- on Anvil -------------------------------------------------------------------------------


def test_on_anvil_a_transaction_left_pending_by_a_base_fee_spike_is_replaced(chain, accounts):
    provider = chain.provider
    keeper = accounts[5]
    sender = TxSender(keeper, provider, replace_after=1, priority_fee=10**9)
    provider.make_request("evm_setAutomine", [False])
    try:
        head = chain.blocks.head
        base = int(head.base_fee or 0)
        sender.begin_block(head.number, base)
        tx = sender.send(keeper.address, b"", "ping", ("x",), head.number, gas=21_000)
        spike = max(10 * (2 * base + 10**9), 10**11)
        provider.make_request("anvil_setNextBlockBaseFeePerGas", [hex(spike)])
        provider.make_request("evm_mine", [])
        head = chain.blocks.head
        assert sender.poll(head.number) == []  # not mined: it does not pay the base fee
        assert sender.stuck(head.number) == [tx]
        sender.begin_block(head.number, int(head.base_fee))
        assert sender.unstick(head.number) == [tx]
        assert tx.replaced and tx.max_fee >= 2 * int(head.base_fee)
        provider.make_request("evm_mine", [])
        (mined,) = sender.poll(chain.blocks.head.number)
        assert mined.ok and mined.tx.nonce == tx.nonce and not mined.cancel
        assert mined.receipt["transactionHash"] == tx.txn_hash
        assert sender.pending == {}
    finally:
        provider.make_request("evm_setAutomine", [True])


def test_the_block_gas_budget_does_not_count_transactions_already_mined():
    """A keeper sends before it reads the receipts of the previous block: a transaction mined
    there (its nonce below the mined count) must not use up this block's gas budget, or half
    of a 1,000-account crash waits a block longer than it must."""
    node = FakeNode()
    sender = make_sender(node)
    first = liquidate(sender, node, "a")
    node.mine()  # mined, receipt not read yet: still in `pending`
    method = SimpleNamespace(
        contract=SimpleNamespace(address=ENGINE), encode_input=lambda *args: b"\x05"
    )
    call = [(method, (), "liquidate_many", ("b",))]
    budget = first.gas_limit + 50_000  # room for one of the two, not both
    [deferred] = sender.send_many(call, node.block, gas_budget=budget)
    assert isinstance(deferred, Deferred)
    [sent] = sender.send_many(
        call, node.block, gas_budget=budget, mined=sender.mined_count(node.block)
    )
    assert isinstance(sent, PendingTx) and sent.accounts == ("b",)


def test_send_many_returns_reverted_for_a_call_whose_estimate_reverts_and_sends_the_rest():
    node = FakeNode()
    sender = make_sender(node)
    sender.begin_block(node.block, node.base_fee)
    jam = b"\x0b\xad"

    def access_list(method, params):
        if method == "eth_createAccessList" and params[0]["data"] == "0x" + jam.hex():
            return {"error": {"message": "execution reverted: pool: insufficient liquidity"}}
        return FakeNode.make_request(node, method, params)

    def estimate(call):
        if call["data"] == "0x" + jam.hex():
            raise ContractLogicError("execution reverted: pool: insufficient liquidity")
        return 100_000

    node.make_request = access_list
    node.estimate_gas = estimate
    method = SimpleNamespace(contract=SimpleNamespace(address=ENGINE), encode_input=lambda d: d)
    calls = [
        (method, (jam,), "liquidate_many", ("a", "b")),
        (method, (b"\x01",), "liquidate_many", ("c",)),
    ]
    jammed, sent = sender.send_many(calls, node.block)
    assert isinstance(jammed, Reverted) and "insufficient liquidity" in str(jammed)
    assert isinstance(sent, PendingTx) and sent.accounts == ("c",)


def test_a_node_that_does_not_answer_is_not_a_revert():
    assert not is_revert(ConnectionError("connection refused"))
    assert is_revert(ValueError({"message": "execution reverted", "code": 3}))
    assert is_revert(ContractLogicError("execution reverted: engine: paused"))
