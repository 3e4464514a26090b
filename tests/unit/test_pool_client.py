"""The SDK's pool, fund and oracle clients on Anvil, for both collateral decimals.

Reads equal the contracts' views; every sender raises its typed error BEFORE a transaction
is sent (the sender's nonce is unchanged), and the good path sends exactly one transaction.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from margincall.constants import WAD, State
from margincall.sdk import (
    Clients,
    FeedSettings,
    FundClient,
    InsufficientFunds,
    InvalidRequest,
    LpPosition,
    MarginEngineClient,
    OracleClient,
    OracleError,
    OracleStatus,
    PoolClient,
    PoolState,
    ReserveLocked,
    SharesLocked,
    StalePrice,
)
from tests.utils.helpers import deposit, mint_and_approve, open_position, travel_to

ETH, BTC, SOL = 0, 1, 2
ZERO = "0x" + "0" * 40


@pytest.fixture(scope="module")
def clients(system):
    return Clients.from_system(system)


@pytest.fixture(scope="module")
def pool(clients):
    return clients.pool


@pytest.fixture(scope="module")
def fund(clients):
    return clients.fund


@contextmanager
def not_sent(*who):
    """Asserts that nothing is sent from `who` inside the block."""
    before = [w.nonce for w in who]
    yield
    assert [w.nonce for w in who] == before


@contextmanager
def sent_once(who):
    before = who.nonce
    yield
    assert who.nonce == before + 1


@pytest.fixture
def unlocked(pool, lp, chain):
    """The LP's shares out of the pool's deposit cooldown (if the pool has one)."""
    unlock = pool.unlock_time(lp)
    if unlock and chain.blocks.head.timestamp < unlock:
        travel_to(chain, unlock)
    return lp


@pytest.fixture
def open_interest(system, owner, trader, unlocked):
    """A 4 ETH long (8,000 notional) with the reserve factor at 100%: 8,000 tokens reserved."""
    system.pool.set_reserve_factor(WAD, sender=owner)
    deposit(system, trader, 1_000)
    open_position(system, trader, ETH, 4.0)
    return trader


# --- Clients ---------------------------------------------------------------------------------


def test_clients_from_system_and_from_record_wrap_the_same_contracts(system, clients):
    assert isinstance(clients.engine, MarginEngineClient)
    assert clients.pool.pool.address == system.pool.address
    assert clients.fund.fund.address == system.fund.address
    assert [o.adapter.address for o in clients.oracles] == [o.address for o in system.oracles]
    assert [o.market_id for o in clients.oracles] == [ETH, BTC, SOL]
    assert clients.oracle(BTC).price() == system.oracles[BTC].price()
    with pytest.raises(InvalidRequest, match="market 7"):
        clients.oracle(7)


def test_clients_from_record(project, system):
    from margincall.deploy.record import DeploymentRecord

    record = DeploymentRecord(
        network="ethereum:local:foundry",
        chain_id=0,
        deployer=system.owner.address,
        block=0,
        end_block=0,
        token=system.token.address,
        pool=system.pool.address,
        fund=system.fund.address,
        engine=system.engine.address,
        guardian=ZERO,
        reserve_factor=WAD // 5,
        collateral_decimals=system.decimals,
        collateral_mock=True,
        risk_params={},
        markets=(),
    )
    clients = Clients.from_record(record, project)
    assert clients.pool.total_assets() == system.pool.totalAssets()
    assert clients.fund.balance() == system.fund.fund_balance()
    assert clients.engine.decimals == system.decimals


# --- PoolClient: reads ---------------------------------------------------------------------


def test_pool_state_equals_the_pool_views(system, pool, open_interest):
    st = pool.state()
    assert isinstance(st, PoolState)
    p = system.pool
    assert st.total_assets == p.totalAssets()
    assert st.total_supply == p.totalSupply()
    assert st.reserve == p.reserve() == 8_000 * system.unit
    assert st.free_assets == p.free_assets() == st.total_assets - st.reserve
    assert st.reserve_factor == WAD
    assert st.share_price == p.convertToAssets(10 ** p.decimals())
    assert st.share_price >= system.unit  # fees only ever add to the pool
    assert st.cooldown == (p.cooldown() if pool.has_cooldown else None)


def test_lp_position_equals_the_pool_views(system, pool, lp, open_interest):
    pos = pool.position(lp)
    assert isinstance(pos, LpPosition)
    assert pos.owner == lp.address
    assert pos.shares == system.pool.balanceOf(lp)
    assert pos.assets == system.pool.convertToAssets(pos.shares)
    assert pos.max_withdraw == system.pool.maxWithdraw(lp) == pool.free_assets()
    assert pos.max_redeem == system.pool.maxRedeem(lp) < pos.shares
    assert pos.unlock_time == (system.pool.unlock_time(lp) if pool.has_cooldown else None)


def test_previews_equal_the_pool_previews(system, pool):
    amount = 1_234 * system.unit
    assert pool.preview_deposit(amount) == system.pool.previewDeposit(amount)
    assert pool.preview_redeem(amount) == system.pool.previewRedeem(amount)
    assert pool.preview_withdraw(amount) == system.pool.previewWithdraw(amount)


# --- PoolClient: senders ---------------------------------------------------------------------


def test_pool_deposit_checks_amount_balance_and_allowance_then_sends(system, pool, stranger):
    amount = 100 * system.unit
    with not_sent(stranger), pytest.raises(InvalidRequest, match="must be positive"):
        pool.deposit(0, sender=stranger)
    with not_sent(stranger), pytest.raises(InsufficientFunds, match="balance"):
        pool.deposit(amount, sender=stranger)
    system.token.mint(stranger.address, amount, sender=stranger)
    with not_sent(stranger), pytest.raises(InsufficientFunds, match="approve the pool first"):
        pool.deposit(amount, sender=stranger)
    with not_sent(stranger), pytest.raises(InvalidRequest, match="zero receiver"):
        pool.deposit(amount, sender=stranger, receiver=ZERO)
    pool.approve(amount, sender=stranger)
    expected = pool.preview_deposit(amount)
    with sent_once(stranger):
        pool.deposit(amount, sender=stranger)
    assert pool.shares(stranger) == expected > 0


def test_pool_deposit_that_buys_no_share_is_refused(system, pool, stranger, owner):
    # make one share worth more than one token unit: a 1-unit deposit then buys nothing
    # (virtual shares make that take a huge donation: the pool's assets x 10**6 or so)
    donation = pool.total_assets() * 2 * 10**6
    system.token.mint(system.pool.address, donation, sender=owner)
    mint_and_approve(system, stranger, 1, spender=system.pool)
    assert pool.preview_deposit(1) == 0
    with not_sent(stranger), pytest.raises(InvalidRequest, match="pool: zero shares"):
        pool.deposit(1, sender=stranger)


def test_pool_redeem_checks_then_redeems(system, pool, lp, unlocked, stranger):
    shares = pool.shares(lp)
    with not_sent(lp), pytest.raises(InvalidRequest, match="must be positive"):
        pool.redeem(0, sender=lp)
    with not_sent(lp), pytest.raises(InsufficientFunds, match="redeem more than balance"):
        pool.redeem(shares + 1, sender=lp)
    with not_sent(stranger), pytest.raises(InsufficientFunds, match="share allowance"):
        pool.redeem(shares // 2, sender=stranger, owner=lp)
    before = system.token.balanceOf(lp)
    expected = pool.preview_redeem(shares // 2)
    with sent_once(lp):
        pool.redeem(shares // 2, sender=lp)
    assert system.token.balanceOf(lp) - before == expected
    assert pool.shares(lp) == shares - shares // 2


def test_pool_withdraw_checks_then_withdraws(system, pool, lp, unlocked):
    worth = pool.position(lp).assets
    with not_sent(lp), pytest.raises(InvalidRequest, match="must be positive"):
        pool.withdraw(0, sender=lp)
    with not_sent(lp), pytest.raises(InsufficientFunds, match="withdraw more than balance"):
        pool.withdraw(worth + 1, sender=lp)
    before = system.token.balanceOf(lp)
    with sent_once(lp):
        pool.withdraw(1_000 * system.unit, sender=lp)
    assert system.token.balanceOf(lp) - before == 1_000 * system.unit


def test_pool_exit_into_the_open_interest_reserve_is_refused(system, pool, lp, open_interest):
    pos = pool.position(lp)
    with not_sent(lp), pytest.raises(ReserveLocked, match="pool: reserve for open interest"):
        pool.redeem(pos.shares, sender=lp)
    with not_sent(lp), pytest.raises(ReserveLocked, match="reserve for open interest"):
        pool.withdraw(pos.max_withdraw + 1, sender=lp)
    # exactly the free assets go through
    with sent_once(lp):
        pool.withdraw(pos.max_withdraw, sender=lp)
    assert pool.free_assets() == 0
    assert pool.reserve() == 8_000 * system.unit


class _PoolView:
    """The real pool seen through a different ABI: `unlock` adds an `unlock_time(owner)` view
    (a pool whose cooldown locks the whole balance, without `locked_shares`), `unlock=None`
    hides the cooldown views (a pool without)."""

    def __init__(self, pool, unlock: int | None):
        self._pool = pool
        self._unlock = unlock

    def __getattr__(self, name):
        if name == "contract_type":
            raise AttributeError(name)  # no ABI: the client looks at the attributes
        if name in ("unlock_time", "cooldown", "locked_shares"):
            if self._unlock is None or name == "locked_shares":
                raise AttributeError(name)
            return lambda *args: self._unlock if name == "unlock_time" else 900
        return getattr(self._pool, name)


def test_pool_refuses_shares_in_the_deposit_cooldown(system, pool, stranger, chain):
    if not pool.has_cooldown:
        pytest.skip("this pool has no deposit cooldown")
    amount = mint_and_approve(system, stranger, 100, spender=system.pool)
    pool.deposit(amount, sender=stranger)
    assert pool.unlock_time(stranger) > chain.blocks.head.timestamp
    with not_sent(stranger), pytest.raises(SharesLocked, match="pool: shares locked"):
        pool.redeem(pool.shares(stranger), sender=stranger)
    with not_sent(stranger), pytest.raises(SharesLocked, match="deposit cooldown"):
        pool.withdraw(1, sender=stranger)


def test_pool_refuses_only_the_shares_a_deposit_still_locks(system, pool, lp, unlocked):
    """The lock covers the shares a deposit minted, not those the LP held before."""
    if not pool.has_cooldown:
        pytest.skip("this pool has no deposit cooldown")
    held = pool.shares(lp)
    amount = mint_and_approve(system, lp, 100, spender=system.pool)
    pool.deposit(amount, sender=lp)
    locked = int(system.pool.locked_shares(lp))
    assert locked == pool.shares(lp) - held > 0
    with not_sent(lp), pytest.raises(SharesLocked, match=f"{locked} locked until"):
        pool.redeem(held + 1, sender=lp)
    with sent_once(lp):
        pool.redeem(held // 2, sender=lp)
    assert pool.shares(lp) == held - held // 2 + locked


def test_pool_without_cooldown_views_skips_the_check(system, lp, unlocked):
    plain = PoolClient(_PoolView(system.pool, None), system.token)
    assert not plain.has_cooldown
    assert plain.unlock_time(lp) is None and plain.cooldown() is None
    assert plain.position(lp).unlock_time is None
    with sent_once(lp):
        plain.withdraw(system.unit, sender=lp)


def test_pool_with_a_cooldown_view_refuses_locked_shares(system, lp, unlocked, chain):
    now = chain.blocks.head.timestamp
    locked = PoolClient(_PoolView(system.pool, now + 3_600), system.token)
    assert locked.has_cooldown and locked.position(lp).unlock_time == now + 3_600
    with not_sent(lp), pytest.raises(SharesLocked, match="3600 s left"):
        locked.redeem(1, sender=lp)
    with not_sent(lp), pytest.raises(SharesLocked, match="pool: shares locked"):
        locked.withdraw(1, sender=lp)
    free = PoolClient(_PoolView(system.pool, now - 1), system.token)
    with sent_once(lp):
        free.withdraw(system.unit, sender=lp)


# --- FundClient ------------------------------------------------------------------------------


def test_fund_state_equals_the_fund_views(system, fund):
    st = fund.state()
    assert st.balance == fund.balance() == system.fund.fund_balance()
    assert (st.asset, st.pool, st.engine) == (
        system.token.address,
        system.pool.address,
        system.engine.address,
    )


def test_fund_donate_checks_then_donates(system, fund, stranger):
    amount = 50 * system.unit
    with not_sent(stranger), pytest.raises(InvalidRequest, match="fund: zero amount"):
        fund.donate(0, sender=stranger)
    with not_sent(stranger), pytest.raises(InsufficientFunds, match="balance"):
        fund.donate(amount, sender=stranger)
    system.token.mint(stranger.address, amount, sender=stranger)
    with not_sent(stranger), pytest.raises(InsufficientFunds, match="approve the fund first"):
        fund.donate(amount, sender=stranger)
    fund.approve(amount, sender=stranger)
    before = fund.balance()
    with sent_once(stranger):
        receipt = fund.donate(amount, sender=stranger)
    assert fund.balance() - before == amount
    [ev] = receipt.decode_logs(system.fund.Donation)
    assert ev.amount == amount and ev.balance_after == fund.balance()


def test_a_bankrupt_close_pays_its_keeper_in_the_engine_not_through_the_fund(
    system, clients, trader, keeper, owner
):
    """Engine v2: a bankrupt close's `min_keeper_reward` is part of the deficit and accrues
    in the engine (`claimable`); the fund only covers the deficit, reward included."""
    mint_and_approve(system, owner, 10_000, spender=system.fund)
    clients.fund.donate(10_000 * system.unit, sender=owner)
    deposit(system, trader, 1_000)
    open_position(system, trader, ETH, 4.0)  # 8x long
    system.set_price(ETH, 1_700.0)  # equity 1,000 - 4 - 1,200 < 0
    assert clients.engine.status(trader).state == State.BANKRUPT
    accrued = clients.engine.claimable(keeper)
    fund_before = clients.fund.balance()
    receipt = clients.engine.liquidate(trader, sender=keeper)
    [liq] = receipt.decode_logs(system.engine.Liquidation)
    reward = clients.engine.risk_params().min_keeper_reward // 10 ** (18 - system.decimals)
    assert liq.full_close and liq.keeper_reward == reward > 0
    assert clients.engine.claimable(keeper) - accrued == reward
    [bad] = receipt.decode_logs(system.engine.BadDebt)
    assert bad.paid_by_fund == bad.amount  # the fund covered the deficit, reward included
    assert fund_before - clients.fund.balance() == bad.paid_by_fund  # and paid nothing else


# --- OracleClient ------------------------------------------------------------------------------


def test_oracle_reads_equal_the_adapter(system, clients):
    eth = clients.oracle(ETH)
    assert isinstance(eth, OracleClient)
    assert eth.price() == system.oracles[ETH].price() == 2_000 * WAD
    assert eth.try_price() == (2_000 * WAD, True)
    assert eth.status() == OracleStatus(2_000 * WAD, True, False, "")
    assert eth.reason() == ""
    settings = eth.settings()
    assert isinstance(settings, FeedSettings)
    assert settings.primary == system.feeds[ETH].address
    assert settings.primary_heartbeat == 30 * 86_400
    assert (settings.fallback, settings.sequencer) == (ZERO, ZERO)
    assert settings.min_price < 2_000 * WAD < settings.max_price


def test_oracle_invalid_price_has_a_reason_and_raises(system, clients, owner):
    eth = clients.oracle(ETH)
    system.feeds[ETH].set_reverting(True, sender=owner)
    assert eth.try_price() == (0, False)
    assert eth.status() == OracleStatus(0, False, False, "oracle: feed reverted")
    with pytest.raises(OracleError, match="oracle: feed reverted") as info:
        eth.price()
    assert info.value.market_id == ETH and not isinstance(info.value, StalePrice)


def test_oracle_stale_price_raises_stale_price(system, clients, owner, chain):
    now = chain.blocks.head.timestamp
    old = now - 30 * 86_400 - 10
    system.feeds[BTC].set_round(system.feed_answer(BTC, 60_000.0), old, old, sender=owner)
    assert clients.oracle(BTC).reason() == "oracle: stale price"
    with pytest.raises(StalePrice, match="stale") as info:
        clients.oracle(BTC).price()
    assert info.value.market_id == BTC


def test_fund_client_from_system(system):
    assert FundClient.from_system(system).balance() == system.fund.fund_balance()
    assert PoolClient.from_system(system).total_assets() == system.pool.totalAssets()
