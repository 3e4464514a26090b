"""The keeper's sending path in-process: a batch over the per-transaction gas cap (EIP-7825) is
split in halves and every account is still liquidated in the same block's round of sends; a
batch whose estimate reverts because of one account (its payout is more than the pool holds)
is bisected, every other account is liquidated and the poisoned one is backed off."""

from __future__ import annotations

from pathlib import Path

import pytest

from margincall.constants import State
from margincall.deploy import deploy_system
from margincall.deploy.record import record_of
from margincall.keeper.bot import Keeper
from margincall.keeper.config import KeeperConfig
from margincall.keeper.logic import Decision
from margincall.keeper.step import REVERT_BACKOFF
from margincall.keeper.tx import Reverted, TooLarge, TxSender
from tests.conftest import TEST_MARKETS
from tests.utils.helpers import deposit, open_position, poison_the_pool

ETH = 0
N = 6


@pytest.fixture
def underwater(system, accounts):
    """N fresh traders at 8x on ETH, then a fall that leaves all of them liquidatable."""
    traders = []
    for _ in range(N):
        t = accounts.generate_test_account()
        t.balance = 10**21
        deposit(system, t, 1_000)
        open_position(system, t, ETH, 4.0)
        traders.append(t.address)
    price = system.oracles[ETH].price() / 10**18  # whole units
    system.set_price(ETH, price * 0.85)
    return traders


def test_a_batch_over_the_transaction_gas_cap_is_split_and_all_are_liquidated(
    system, chain, owner, keeper, underwater, tmp_path: Path
):
    record = record_of(system, "ethereum:local:foundry", chain, owner)
    client = record.client(system.project)
    before = client.statuses(underwater)
    assert {s.state for s in before} <= {State.LIQUIDATABLE, State.CRITICAL, State.BANKRUPT}
    sender = TxSender(keeper, chain.provider)
    whole = sender.gas_of(
        str(system.engine.address),
        system.engine.liquidate_many.encode_input(underwater),
    )
    cap = whole * sender.gas_buffer_bps // 10_000 // 2  # the whole batch does not fit
    config = KeeperConfig(deployment=tmp_path / "rec.json", tx_gas_cap=cap)
    bot = Keeper(client, record, sender, config, chain.provider)

    bot._send(Decision(liquidations=(tuple(underwater),)), int(chain.blocks.head.number))

    sent = list(sender.pending.values())
    web3 = chain.provider.web3
    assert all(web3.eth.wait_for_transaction_receipt(tx.txn_hash)["status"] == 1 for tx in sent)
    assert len(sent) >= 2
    assert all(tx.gas_limit <= cap for tx in sent)
    assert sorted(a for tx in sent for a in tx.accounts) == sorted(underwater)
    assert bot.metrics.tranches_sent == N and bot.state.rpc_errors == 0
    for a, b in zip(before, client.statuses(underwater), strict=True):
        assert b.maintenance < a.maintenance  # every account lost exposure


def test_send_many_refuses_a_call_over_the_cap_and_sends_the_rest(
    system, chain, keeper, underwater
):
    sender = TxSender(keeper, chain.provider)
    head = int(chain.blocks.head.number)
    big = (system.engine.liquidate_many, (underwater,), "liquidate_many", tuple(underwater))
    small = (system.engine.liquidate_many, ([underwater[0]],), "liquidate_many", (underwater[0],))
    one = sender.gas_of(
        str(system.engine.address), system.engine.liquidate_many.encode_input([underwater[0]])
    )
    cap = one * sender.gas_buffer_bps // 10_000
    too_big, sent = sender.send_many([big, small], head, tx_gas_cap=cap)
    assert isinstance(too_big, TooLarge) and too_big.cap == cap and too_big.need > cap
    assert sent.accounts == (underwater[0],) and sent.gas_limit <= cap
    # the block's whole gas limit caps one transaction as well
    too_big, _ = sender.send_many([big, small], head, gas_budget=cap)
    assert isinstance(too_big, TooLarge)


# --- a batch jammed by one account --------------------------------------------------------


@pytest.fixture(scope="module")
def poisoned_system(project, owner, guardian, lp, accounts):
    """A fresh system (6 decimals) whose pool cannot pay one account's profit
    (`poison_the_pool`), next to 2 * N liquidatable accounts."""
    s = deploy_system(project, owner, guardian, decimals=6, markets=TEST_MARKETS)
    poisoned, crowd, _ = poison_the_pool(s, accounts, lp, others=2 * N)
    return s, poisoned.address, [t.address for t in crowd]


def test_a_batch_jammed_by_one_account_is_bisected_and_every_other_account_liquidated(
    poisoned_system, chain, owner, keeper, tmp_path: Path
):
    system, poisoned, crowd = poisoned_system
    record = record_of(system, "ethereum:local:foundry", chain, owner)
    client = record.client(system.project)
    assert client.status(poisoned).state == State.CRITICAL
    assert {s.state for s in client.statuses(crowd)} == {State.LIQUIDATABLE}
    # the poisoned account in the middle of the batch: the whole batch reverts
    batch = (*crowd[:N], poisoned, *crowd[N:])
    sender = TxSender(keeper, chain.provider)
    head = int(chain.blocks.head.number)
    call = (system.engine.liquidate_many, (list(batch),), "liquidate_many", batch)
    [jammed] = sender.send_many([call], head)
    assert isinstance(jammed, Reverted) and "pool: insufficient liquidity" in str(jammed)
    config = KeeperConfig(deployment=tmp_path / "rec.json")
    bot = Keeper(client, record, sender, config, chain.provider)

    bot._send(Decision(liquidations=(batch,)), head)

    sent = list(sender.pending.values())
    web3 = chain.provider.web3
    receipts = [web3.eth.wait_for_transaction_receipt(tx.txn_hash) for tx in sent]
    assert all(r["status"] == 1 for r in receipts)
    assert sorted(a for tx in sent for a in tx.accounts) == sorted(crowd)
    # every other account lost exposure; the poisoned one is untouched and backed off
    liquidated = {log.account for log in system.engine.Liquidation.range(head, head + 100)}
    assert liquidated == set(crowd)
    assert client.status(poisoned).state == State.CRITICAL
    assert bot.state.backoff == {poisoned: head + REVERT_BACKOFF}
    assert bot.state.reverted == 1 and bot.state.rpc_errors == 0
    assert bot.metrics.tranches_sent == len(crowd)
