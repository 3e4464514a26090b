"""Unit tests of the LiquidityPool (ERC-4626 counterparty vault) and the InsuranceFund.

The engine is `MockEngineForPool`: a settable `open_interest` and forwarders, so the tests
can call `pay` and `cover` as "the engine". Token decimals are parametrised
over 6 and 18; amounts are written in whole tokens times `unit`.
"""

from __future__ import annotations

import ape
import pytest

WAD = 10**18
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"


# --- actors -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def owner(accounts):
    return accounts[0]


@pytest.fixture(scope="module")
def lp(accounts):
    return accounts[1]


@pytest.fixture(scope="module")
def trader(accounts):
    return accounts[2]


@pytest.fixture(scope="module")
def keeper(accounts):
    return accounts[3]


@pytest.fixture(scope="module")
def donor(accounts):
    return accounts[4]


@pytest.fixture(scope="module")
def new_owner(accounts):
    return accounts[5]


@pytest.fixture(scope="module")
def outsider(accounts):
    return accounts[6]


@pytest.fixture(scope="module")
def deployer(accounts):
    """Sends only the deploys that must revert (see `_assert_deploy_reverts`)."""
    return accounts[7]


# --- contracts ----------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[6, 18], ids=["6dec", "18dec"])
def decimals(request) -> int:
    return request.param


@pytest.fixture(scope="module")
def unit(decimals) -> int:
    return 10**decimals


@pytest.fixture(scope="module")
def token(project, owner, decimals):
    return owner.deploy(project.MockERC20, "Mock USD", "mUSD", decimals)


@pytest.fixture(scope="module")
def engine(project, owner):
    return owner.deploy(project.MockEngineForPool)


@pytest.fixture(scope="module")
def pool(project, owner, token, engine):
    pool = owner.deploy(project.LiquidityPool, token, "margincall LP", "mcLP")
    pool.set_engine(engine, sender=owner)
    return pool


@pytest.fixture(scope="module")
def fund(project, owner, token, pool, engine):
    fund = owner.deploy(project.InsuranceFund, token, pool)
    fund.set_engine(engine, sender=owner)
    return fund


@pytest.fixture(scope="module")
def fresh_pool(project, owner, token):
    """A pool whose engine is not set yet."""
    return owner.deploy(project.LiquidityPool, token, "margincall LP", "mcLP")


@pytest.fixture(scope="module")
def fresh_fund(project, owner, token, pool):
    """A fund whose engine is not set yet."""
    return owner.deploy(project.InsuranceFund, token, pool)


@pytest.fixture(scope="module", autouse=True)
def _deployed(
    owner, lp, trader, keeper, donor, new_owner, outsider, deployer, fresh_pool, fresh_fund, fund
):
    """Create every module fixture before ape's per-test snapshot, so none is rebased."""


def _deposit(token, pool, lp, assets: int) -> int:
    """Deposits and waits out the deposit's cooldown (tests of the lock deposit by hand)."""
    token.mint(lp, assets, sender=lp)
    token.approve(pool, assets, sender=lp)
    tx = pool.deposit(assets, lp, sender=lp)
    _unlock(pool, lp)
    return tx.decode_logs(pool.Deposit)[0].shares


def _unlock(pool, who) -> None:
    """Mines a block at `who`'s unlock time, so its shares can move (and views see it)."""
    until = pool.unlock_time(who)
    if ape.chain.blocks.head.timestamp < until:
        ape.chain.pending_timestamp = until
        ape.chain.mine()


def _fill_fund(token, fund, donor, amount: int) -> None:
    token.mint(donor, amount, sender=donor)
    token.approve(fund, amount, sender=donor)
    fund.donate(amount, sender=donor)


def _assert_deploy_reverts(reason: str, deployer, container, *args) -> None:
    """Deploy from an account that never deploys anything else, and expect `reason`.

    When a deploy reverts, ape decodes its call trace with the contract type it has cached at
    the would-be address. Tests revert chain snapshots but not that cache, so a deploy from an
    account whose next address held another contract in an earlier test fails with eth_abi's
    InvalidPointer instead of the revert. `deployer` is used for nothing but these deploys.
    """
    with ape.reverts(reason):
        deployer.deploy(container, *args)


# --- pool: setup --------------------------------------------------------------------------


def test_pool_deploys_with_asset_decimals_owner_and_default_reserve(
    fresh_pool, token, owner, decimals
):
    assert fresh_pool.asset() == token.address
    assert fresh_pool.decimals() == decimals + 6  # decimals offset 6 (inflation defence)
    assert fresh_pool.owner() == owner.address
    assert fresh_pool.pending_owner() == ZERO_ADDRESS
    assert fresh_pool.engine() == ZERO_ADDRESS
    assert fresh_pool.reserve_factor() == WAD // 5
    assert fresh_pool.totalAssets() == 0
    assert fresh_pool.reserve() == 0


def test_pool_rejects_token_with_more_than_18_decimals(project, owner, deployer):
    token_24 = owner.deploy(project.MockERC20, "Wide", "WIDE", 24)
    _assert_deploy_reverts(
        "pool: token decimals above 18",
        deployer,
        project.LiquidityPool,
        token_24,
        "margincall LP",
        "mcLP",
    )


# --- pool: LP deposit and exit --------------------------------------------------------------


def test_lp_deposit_then_redeem_round_trip_returns_the_assets(token, pool, lp, unit):
    assets = 1_000 * unit
    token.mint(lp, assets, sender=lp)
    token.approve(pool, assets, sender=lp)

    tx = pool.deposit(assets, lp, sender=lp)
    [log] = tx.decode_logs(pool.Deposit)
    assert log.sender == lp.address
    assert log.owner == lp.address
    assert log.assets == assets
    assert log.shares == assets * 10**6  # first deposit, decimals offset 6
    assert pool.balanceOf(lp) == assets * 10**6
    assert pool.totalAssets() == assets
    assert token.balanceOf(pool) == assets
    assert token.balanceOf(lp) == 0

    _unlock(pool, lp)
    shares = pool.balanceOf(lp)
    tx = pool.redeem(shares, lp, lp, sender=lp)
    [log] = tx.decode_logs(pool.Withdraw)
    assert log.sender == lp.address
    assert log.receiver == lp.address
    assert log.owner == lp.address
    assert log.assets == assets
    assert log.shares == shares
    assert pool.balanceOf(lp) == 0
    assert pool.totalSupply() == 0
    assert token.balanceOf(pool) == 0
    assert token.balanceOf(lp) == assets


def test_lp_mint_then_withdraw_round_trip_returns_the_assets(token, pool, lp, unit):
    assets = 500 * unit
    shares = assets * 10**6  # decimals offset 6
    token.mint(lp, assets, sender=lp)
    token.approve(pool, assets, sender=lp)

    tx = pool.mint(shares, lp, sender=lp)
    [log] = tx.decode_logs(pool.Deposit)
    assert log.assets == assets
    assert log.shares == shares
    assert token.balanceOf(pool) == assets

    _unlock(pool, lp)
    tx = pool.withdraw(assets, lp, lp, sender=lp)
    [log] = tx.decode_logs(pool.Withdraw)
    assert log.assets == assets
    assert log.shares == shares
    assert pool.balanceOf(lp) == 0
    assert token.balanceOf(lp) == assets


def test_trader_losses_sent_to_pool_accrue_to_lp_shares(token, pool, lp, unit):
    deposited = 1_000 * unit
    shares = _deposit(token, pool, lp, deposited)
    loss = 100 * unit
    # The engine sends trader losses to the pool with a plain transfer; minting to the pool
    # has the same effect on its balance.
    token.mint(pool, loss, sender=lp)

    assert pool.totalAssets() == deposited + loss
    # snekmate's virtual share and asset keep a rounding dust of at most one unit in the pool.
    expected = shares * (deposited + loss + 1) // (shares + 10**6)
    assert pool.maxWithdraw(lp) == expected
    tx = pool.redeem(shares, lp, lp, sender=lp)
    assert tx.decode_logs(pool.Withdraw)[0].assets == expected
    assert token.balanceOf(lp) == expected
    assert token.balanceOf(pool) == deposited + loss - expected
    assert deposited + loss - expected <= 1


def test_withdraw_and_redeem_beyond_the_lp_balance_revert(token, pool, lp, unit):
    shares = _deposit(token, pool, lp, 100 * unit)
    with ape.reverts("pool: withdraw more than balance"):
        pool.withdraw(100 * unit + 1, lp, lp, sender=lp)
    with ape.reverts("pool: redeem more than balance"):
        pool.redeem(shares + 1, lp, lp, sender=lp)


def test_redeem_for_another_owner_needs_a_share_allowance(token, pool, lp, outsider, unit):
    shares = _deposit(token, pool, lp, 100 * unit)
    with ape.reverts("erc20: insufficient allowance"):
        pool.redeem(shares, outsider, lp, sender=outsider)

    pool.approve(outsider, shares, sender=lp)
    tx = pool.redeem(shares, outsider, lp, sender=outsider)
    [log] = tx.decode_logs(pool.Withdraw)
    assert log.sender == outsider.address
    assert log.receiver == outsider.address
    assert log.owner == lp.address
    assert token.balanceOf(outsider) == 100 * unit
    assert pool.allowance(lp, outsider) == 0


# --- pool: paying trader profit -----------------------------------------------------------


def test_pay_by_engine_sends_profit_and_emits_profit_paid(token, pool, engine, lp, trader, unit):
    _deposit(token, pool, lp, 1_000 * unit)
    profit = 250 * unit

    tx = engine.pay(pool, trader, profit, sender=trader)

    [log] = tx.decode_logs(pool.ProfitPaid)
    assert log.receiver == trader.address
    assert log.amount == profit
    assert log.total_assets_after == 750 * unit
    assert token.balanceOf(trader) == profit
    assert pool.totalAssets() == 750 * unit
    assert token.balanceOf(pool) + token.balanceOf(trader) == 1_000 * unit


def test_pay_of_zero_moves_nothing_and_emits_nothing(token, pool, engine, lp, trader, unit):
    _deposit(token, pool, lp, 10 * unit)
    tx = engine.pay(pool, trader, 0, sender=trader)
    assert tx.decode_logs(pool.ProfitPaid) == []
    assert token.balanceOf(pool) == 10 * unit


@pytest.mark.parametrize("caller", ["owner", "trader", "lp"])
def test_pay_by_anyone_but_the_engine_reverts(request, token, pool, lp, trader, unit, caller):
    _deposit(token, pool, lp, 10 * unit)
    with ape.reverts("pool: only engine"):
        pool.pay(trader, unit, sender=request.getfixturevalue(caller))


def test_pay_before_an_engine_is_set_reverts(fresh_pool, trader):
    with ape.reverts("pool: only engine"):
        fresh_pool.pay(trader, 1, sender=trader)


def test_pay_beyond_the_pool_balance_reverts(token, pool, engine, lp, trader, unit):
    _deposit(token, pool, lp, 10 * unit)
    with ape.reverts("pool: insufficient liquidity"):
        engine.pay(pool, trader, 10 * unit + 1, sender=trader)
    # The whole balance, reserve included, can be paid: the reserve exists to pay traders.
    engine.set_open_interest(1_000 * WAD, sender=trader)
    assert pool.free_assets() == 0
    tx = engine.pay(pool, trader, 10 * unit, sender=trader)
    assert tx.decode_logs(pool.ProfitPaid)[0].total_assets_after == 0
    assert token.balanceOf(trader) == 10 * unit


# --- pool: open-interest reserve ------------------------------------------------------------


def test_reserve_is_zero_before_an_engine_is_set(token, fresh_pool, lp, unit):
    _deposit(token, fresh_pool, lp, 100 * unit)
    assert fresh_pool.reserve() == 0
    assert fresh_pool.free_assets() == 100 * unit
    assert fresh_pool.maxWithdraw(lp) == 100 * unit


def test_reserve_is_open_interest_times_factor_in_token_units(token, pool, engine, lp, unit):
    _deposit(token, pool, lp, 1_000 * unit)
    engine.set_open_interest(2_000 * WAD, sender=lp)  # 20% of 2,000 = 400 tokens
    assert pool.reserve() == 400 * unit
    assert pool.free_assets() == 600 * unit


def test_reserve_rounds_up_against_the_lp(pool, engine, lp, token):
    # 1 wei of wad open interest at 20% is 0.2 wei of wad: one full token unit is reserved.
    engine.set_open_interest(1, sender=lp)
    assert pool.reserve() == 1
    # Just above a whole unit in any decimals: 5 units + 1 wei of wad at 20% -> 2 units.
    engine.set_open_interest(5 * 10**18 // (10 ** token.decimals()) + 1, sender=lp)
    assert pool.reserve() == 2


def test_rising_open_interest_limits_max_withdraw_and_max_redeem(token, pool, engine, lp, unit):
    shares = _deposit(token, pool, lp, 1_000 * unit)
    assert pool.maxWithdraw(lp) == 1_000 * unit
    assert pool.maxRedeem(lp) == shares

    engine.set_open_interest(2_500 * WAD, sender=lp)  # reserve 500
    assert pool.maxWithdraw(lp) == 500 * unit
    assert pool.maxRedeem(lp) == pool.convertToShares(500 * unit)
    assert pool.previewRedeem(pool.maxRedeem(lp)) <= 500 * unit

    engine.set_open_interest(10_000 * WAD, sender=lp)  # reserve 2,000 > total assets
    assert pool.free_assets() == 0
    assert pool.maxWithdraw(lp) == 0
    assert pool.maxRedeem(lp) == 0


def test_withdraw_into_the_reserve_reverts_and_up_to_it_succeeds(token, pool, engine, lp, unit):
    _deposit(token, pool, lp, 1_000 * unit)
    engine.set_open_interest(2_500 * WAD, sender=lp)  # reserve 500, free 500

    with ape.reverts("pool: reserve for open interest"):
        pool.withdraw(500 * unit + 1, lp, lp, sender=lp)

    tx = pool.withdraw(500 * unit, lp, lp, sender=lp)
    assert tx.decode_logs(pool.Withdraw)[0].assets == 500 * unit
    assert token.balanceOf(lp) == 500 * unit
    assert token.balanceOf(pool) == 500 * unit
    assert pool.free_assets() == 0
    assert pool.maxWithdraw(lp) == 0
    with ape.reverts("pool: reserve for open interest"):
        pool.withdraw(1, lp, lp, sender=lp)


def test_redeem_into_the_reserve_reverts_and_max_redeem_succeeds(token, pool, engine, lp, unit):
    shares = _deposit(token, pool, lp, 1_000 * unit)
    engine.set_open_interest(2_500 * WAD, sender=lp)  # reserve 500, free 500

    with ape.reverts("pool: reserve for open interest"):
        pool.redeem(shares, lp, lp, sender=lp)

    max_shares = pool.maxRedeem(lp)
    tx = pool.redeem(max_shares, lp, lp, sender=lp)
    [log] = tx.decode_logs(pool.Withdraw)
    assert log.shares == max_shares
    assert log.assets <= 500 * unit
    assert token.balanceOf(pool) >= 500 * unit == pool.reserve()
    assert token.balanceOf(lp) + token.balanceOf(pool) == 1_000 * unit


def test_falling_open_interest_releases_the_reserve(token, pool, engine, lp, unit):
    shares = _deposit(token, pool, lp, 1_000 * unit)
    engine.set_open_interest(10_000 * WAD, sender=lp)
    assert pool.maxRedeem(lp) == 0
    engine.set_open_interest(0, sender=lp)
    assert pool.maxRedeem(lp) == shares
    pool.redeem(shares, lp, lp, sender=lp)
    assert token.balanceOf(lp) == 1_000 * unit


# --- pool: reserve factor -------------------------------------------------------------------


@pytest.mark.parametrize("new_factor", [0, WAD // 2, WAD])
def test_set_reserve_factor_within_bounds_emits_event(pool, owner, new_factor):
    tx = pool.set_reserve_factor(new_factor, sender=owner)
    [log] = tx.decode_logs(pool.ReserveFactorSet)
    assert log.old_factor == WAD // 5
    assert log.new_factor == new_factor
    assert pool.reserve_factor() == new_factor


def test_set_reserve_factor_above_one_reverts(pool, owner):
    with ape.reverts("pool: reserve factor too high"):
        pool.set_reserve_factor(WAD + 1, sender=owner)


def test_set_reserve_factor_by_non_owner_reverts(pool, lp):
    with ape.reverts("ownable: caller is not the owner"):
        pool.set_reserve_factor(0, sender=lp)


def test_reserve_factor_changes_the_reserve(token, pool, engine, owner, lp, unit):
    _deposit(token, pool, lp, 1_000 * unit)
    engine.set_open_interest(1_000 * WAD, sender=lp)
    assert pool.reserve() == 200 * unit
    pool.set_reserve_factor(WAD, sender=owner)
    assert pool.reserve() == 1_000 * unit
    assert pool.maxWithdraw(lp) == 0
    pool.set_reserve_factor(0, sender=owner)
    assert pool.reserve() == 0
    assert pool.maxWithdraw(lp) == 1_000 * unit


# --- engine wiring (pool and fund) ----------------------------------------------------------


@pytest.fixture(params=["pool", "fund"])
def wired(request, fresh_pool, fresh_fund):
    """An unwired pool or fund and its reason prefix."""
    return (fresh_pool, "pool") if request.param == "pool" else (fresh_fund, "fund")


def test_set_engine_once_emits_event(wired, engine, owner):
    contract, _ = wired
    tx = contract.set_engine(engine, sender=owner)
    [log] = tx.decode_logs(contract.EngineSet)
    assert log.engine == engine.address
    assert contract.engine() == engine.address


def test_set_engine_twice_reverts(wired, engine, owner, outsider):
    contract, prefix = wired
    contract.set_engine(engine, sender=owner)
    with ape.reverts(f"{prefix}: engine already set"):
        contract.set_engine(outsider, sender=owner)
    assert contract.engine() == engine.address


def test_set_engine_to_zero_address_reverts(wired, owner):
    contract, prefix = wired
    with ape.reverts(f"{prefix}: zero address"):
        contract.set_engine(ZERO_ADDRESS, sender=owner)


def test_set_engine_by_non_owner_reverts(wired, engine, outsider):
    contract, _ = wired
    with ape.reverts("ownable: caller is not the owner"):
        contract.set_engine(engine, sender=outsider)


# --- two-step ownership (pool and fund) -----------------------------------------------------


def test_two_step_ownership_transfer(wired, engine, owner, new_owner, outsider):
    contract, _ = wired

    with ape.reverts("ownable: caller is not the owner"):
        contract.transfer_ownership(new_owner, sender=outsider)

    tx = contract.transfer_ownership(new_owner, sender=owner)
    [log] = tx.decode_logs(contract.OwnershipTransferStarted)
    assert log.previous_owner == owner.address
    assert log.new_owner == new_owner.address
    assert contract.pending_owner() == new_owner.address
    assert contract.owner() == owner.address  # nothing changes until accepted

    with ape.reverts("ownable_2step: caller is not the new owner"):
        contract.accept_ownership(sender=outsider)

    tx = contract.accept_ownership(sender=new_owner)
    [log] = tx.decode_logs(contract.OwnershipTransferred)
    assert log.previous_owner == owner.address
    assert log.new_owner == new_owner.address
    assert contract.owner() == new_owner.address
    assert contract.pending_owner() == ZERO_ADDRESS

    with ape.reverts("ownable: caller is not the owner"):
        contract.set_engine(engine, sender=owner)
    contract.set_engine(engine, sender=new_owner)
    assert contract.engine() == engine.address


# --- fund: setup ----------------------------------------------------------------------------


def test_fund_deploys_with_asset_pool_and_owner(fresh_fund, token, pool, owner):
    assert fresh_fund.asset() == token.address
    assert fresh_fund.pool() == pool.address
    assert fresh_fund.owner() == owner.address
    assert fresh_fund.engine() == ZERO_ADDRESS
    assert fresh_fund.fund_balance() == 0


def test_fund_rejects_a_pool_of_another_asset(project, owner, deployer, pool):
    other = owner.deploy(project.MockERC20, "Other", "OTH", 18)
    _assert_deploy_reverts(
        "fund: pool asset mismatch", deployer, project.InsuranceFund, other, pool
    )


def test_fund_rejects_zero_addresses(project, deployer, token, pool):
    _assert_deploy_reverts(
        "fund: zero address", deployer, project.InsuranceFund, ZERO_ADDRESS, pool
    )
    _assert_deploy_reverts(
        "fund: zero address", deployer, project.InsuranceFund, token, ZERO_ADDRESS
    )


def test_owner_has_no_way_to_withdraw_fund_assets(fund):
    mutating = {abi.name for abi in fund.contract_type.mutable_methods}
    assert mutating == {
        "donate",
        "cover",
        "set_engine",
        "transfer_ownership",
        "accept_ownership",
        "renounce_ownership",
    }


# --- fund: donations ------------------------------------------------------------------------


def test_donate_adds_to_the_balance_and_emits_donation(token, fund, donor, unit):
    token.mint(donor, 300 * unit, sender=donor)
    token.approve(fund, 300 * unit, sender=donor)

    tx = fund.donate(100 * unit, sender=donor)
    [log] = tx.decode_logs(fund.Donation)
    assert log.donor == donor.address
    assert log.amount == 100 * unit
    assert log.balance_after == 100 * unit

    # Penalty shares arrive as plain transfers and count in the balance.
    token.mint(fund, 50 * unit, sender=donor)
    tx = fund.donate(200 * unit, sender=donor)
    assert tx.decode_logs(fund.Donation)[0].balance_after == 350 * unit
    assert fund.fund_balance() == 350 * unit == token.balanceOf(fund)
    assert token.balanceOf(donor) == 0


def test_donation_of_a_fee_on_transfer_token_is_refused(project, owner, deployer, donor):
    """The fund books what arrives: a token that delivers less than it was asked is refused,
    so the fund's `Donation` log can never claim more than its balance gained."""
    fee_token = owner.deploy(project.MockFeeToken, "Fee USD", "fUSD", 18)
    pool = owner.deploy(project.LiquidityPool, fee_token, "margincall LP", "mcLP")
    fund = owner.deploy(project.InsuranceFund, fee_token, pool)
    fee_token.mint(donor, 100 * WAD, sender=donor)
    fee_token.approve(fund, 100 * WAD, sender=donor)
    with ape.reverts("fund: token transfer short"):
        fund.donate(100 * WAD, sender=donor)
    assert fee_token.balanceOf(fund) == 0


def test_donate_zero_reverts(fund, donor):
    with ape.reverts("fund: zero amount"):
        fund.donate(0, sender=donor)


def test_donate_without_allowance_reverts(token, fund, donor, unit):
    token.mint(donor, unit, sender=donor)
    with ape.reverts("erc20: insufficient allowance"):
        fund.donate(unit, sender=donor)


# --- fund: covering deficits ----------------------------------------------------------------


def test_cover_pays_the_full_deficit_into_the_pool(token, pool, fund, engine, donor, trader, unit):
    _fill_fund(token, fund, donor, 100 * unit)

    assert engine.cover.call(fund, 40 * unit, trader) == 40 * unit
    tx = engine.cover(fund, 40 * unit, trader, sender=trader)

    [log] = tx.decode_logs(fund.DeficitCovered)
    assert log.account == trader.address
    assert log.requested == 40 * unit
    assert log.paid == 40 * unit
    assert log.balance_after == 60 * unit
    assert token.balanceOf(pool) == 40 * unit
    assert token.balanceOf(fund) == 60 * unit


def test_cover_beyond_the_balance_pays_what_the_fund_holds(
    token, pool, fund, engine, donor, trader, unit
):
    _fill_fund(token, fund, donor, 100 * unit)

    assert engine.cover.call(fund, 250 * unit, trader) == 100 * unit
    tx = engine.cover(fund, 250 * unit, trader, sender=trader)

    [log] = tx.decode_logs(fund.DeficitCovered)
    assert log.requested == 250 * unit
    assert log.paid == 100 * unit
    assert log.balance_after == 0
    assert token.balanceOf(pool) == 100 * unit
    assert token.balanceOf(fund) == 0


def test_cover_from_an_empty_fund_pays_nothing(token, pool, fund, engine, trader, unit):
    tx = engine.cover(fund, 10 * unit, trader, sender=trader)
    [log] = tx.decode_logs(fund.DeficitCovered)
    assert log.requested == 10 * unit
    assert log.paid == 0
    assert log.balance_after == 0
    assert token.balanceOf(pool) == 0


@pytest.mark.parametrize("caller", ["owner", "keeper", "trader"])
def test_fund_payouts_by_anyone_but_the_engine_revert(
    request, token, fund, donor, trader, unit, caller
):
    _fill_fund(token, fund, donor, 10 * unit)
    sender = request.getfixturevalue(caller)
    with ape.reverts("fund: only engine"):
        fund.cover(unit, trader, sender=sender)
    assert token.balanceOf(fund) == 10 * unit


def test_fund_payouts_before_an_engine_is_set_revert(fresh_fund, trader):
    with ape.reverts("fund: only engine"):
        fresh_fund.cover(1, trader, sender=trader)


# --- conservation across pool and fund ------------------------------------------------------


def test_tokens_are_conserved_through_a_bankruptcy_round(
    token, pool, fund, engine, lp, donor, trader, unit
):
    """LP deposit, a donation, a trader profit and a covered deficit (more than the fund
    holds: it pays what it has)."""
    _deposit(token, pool, lp, 1_000 * unit)
    _fill_fund(token, fund, donor, 100 * unit)

    engine.pay(pool, trader, 300 * unit, sender=trader)
    assert engine.cover.call(fund, 130 * unit, trader) == 100 * unit
    engine.cover(fund, 130 * unit, trader, sender=trader)

    assert token.balanceOf(trader) == 300 * unit
    assert token.balanceOf(fund) == 0
    assert token.balanceOf(pool) == 800 * unit == pool.totalAssets()
    holders = (pool, fund, engine, lp, donor, trader)
    assert sum(token.balanceOf(h) for h in holders) == token.totalSupply() == 1_100 * unit


def test_deposit_that_would_mint_no_shares_reverts(token, pool, lp):
    token.mint(lp, 1, sender=lp)
    token.approve(pool, 1, sender=lp)
    with ape.reverts("pool: zero shares"):
        pool.deposit(0, lp, sender=lp)


def test_mint_of_zero_shares_reverts(pool, lp):
    with ape.reverts("pool: zero shares"):
        pool.mint(0, lp, sender=lp)


# --- pool: deposit cooldown (flash-loan sandwich defence) -------------------------------------


def _raw_deposit(token, pool, sender, assets: int, receiver=None):
    token.mint(sender, assets, sender=sender)
    token.approve(pool, assets, sender=sender)
    return pool.deposit(assets, receiver or sender, sender=sender)


def test_default_cooldown_is_fifteen_minutes(fresh_pool):
    assert fresh_pool.cooldown() == 900


def test_fresh_deposit_locks_redeem_withdraw_and_share_transfers_for_the_cooldown(
    token, pool, lp, outsider, unit
):
    tx = _raw_deposit(token, pool, lp, 1_000 * unit)
    shares = pool.balanceOf(lp)
    until = tx.timestamp + pool.cooldown()  # a fresh address waits the whole cooldown
    assert pool.unlock_time(lp) == until
    [log] = tx.decode_logs(pool.SharesLocked)
    assert (log.owner, log.unlock_time) == (lp.address, until)
    assert pool.maxRedeem(lp) == 0 and pool.maxWithdraw(lp) == 0

    pool.approve(outsider, shares, sender=lp)
    for call in (
        lambda: pool.redeem(shares, lp, lp, sender=lp),
        lambda: pool.withdraw(1, lp, lp, sender=lp),
        lambda: pool.transfer(outsider, shares, sender=lp),
        lambda: pool.transferFrom(lp, outsider, shares, sender=outsider),
        lambda: pool.redeem(shares, outsider, lp, sender=outsider),
    ):
        with ape.reverts("pool: shares locked"):
            call()

    ape.chain.pending_timestamp = until - 1
    with ape.reverts("pool: shares locked"):
        pool.redeem(shares, lp, lp, sender=lp)
    ape.chain.pending_timestamp = until
    pool.transfer(outsider, shares // 2, sender=lp)  # unlocked from `until` on
    pool.redeem(pool.balanceOf(lp), lp, lp, sender=lp)
    assert pool.balanceOf(outsider) == shares // 2


@pytest.mark.parametrize("cooldown", [900, 0], ids=["cooldown", "no-cooldown-control"])
def test_deposit_and_redeem_in_one_block_sandwich(token, pool, owner, lp, unit, cooldown):
    """The flash-loan sandwich: deposit, realise trader losses into the pool, redeem. With
    automine off the three share a block (and its timestamp, as inside one transaction).
    With the cooldown the redeem is refused; the control without it shows the attack: the
    attacker leaves with most of the losses that belonged to the seasoned LP."""
    _deposit(token, pool, lp, 1_000 * unit)  # an honest, seasoned LP
    pool.set_cooldown(cooldown, sender=owner)
    attacker = ape.accounts.test_accounts[8]
    token.mint(attacker, 10_000 * unit, sender=attacker)
    token.approve(pool, 10_000 * unit, sender=attacker)
    shares = pool.previewDeposit(10_000 * unit)
    provider = ape.chain.provider
    provider.make_request("evm_setAutomine", [False])
    nonce = attacker.nonce
    sent = dict(required_confirmations=0, gas=500_000)
    try:
        deposit = pool.deposit(10_000 * unit, attacker, sender=attacker, nonce=nonce, **sent)
        token.mint(pool, 500 * unit, sender=lp, **sent)  # trader losses realised into the pool
        redeem = pool.redeem(shares, attacker, attacker, sender=attacker, nonce=nonce + 1, **sent)
        provider.make_request("evm_mine", [])
    finally:
        provider.make_request("evm_setAutomine", [True])
    deposited = provider.get_receipt(deposit.txn_hash)
    receipt = provider.get_receipt(redeem.txn_hash)
    assert deposited.status == 1 and receipt.block_number == deposited.block_number
    if cooldown:
        assert receipt.status == 0
        assert token.balanceOf(attacker) == 0  # all of it still in the pool, locked
    else:
        assert receipt.status == 1
        gain = token.balanceOf(attacker) - 10_000 * unit
        assert gain > 450 * unit  # 10/11 of the 500 the seasoned LP should have earned


def _same_block(*sends):
    """Mines the given sends (callables taking `nonce` and send options; nonces are read
    before automine goes off) in one block, in order; returns their receipts."""
    provider = ape.chain.provider
    opts = dict(required_confirmations=0, gas=500_000)
    provider.make_request("evm_setAutomine", [False])
    try:
        txs = [send(opts) for send in sends]
        provider.make_request("evm_mine", [])
    finally:
        provider.make_request("evm_setAutomine", [True])
    return [provider.get_receipt(tx.txn_hash) for tx in txs]


@pytest.mark.parametrize("exit_by", ["redeem", "transfer"])
def test_lock_grief_one_unit_per_block_for_another_lp_cannot_keep_it_locked(
    token, pool, lp, outsider, unit, exit_by
):
    """The lock grief (SECURITY.md): a griefer deposits one token unit per block naming a
    seasoned LP as receiver, ahead of the LP's own transaction in the same block. It used to
    lock the LP's whole balance (ceil(cooldown * minted / balance) >= 1 s) so that neither a
    redeem nor a transfer ever got through. Now only the gifted shares are locked: the LP's
    own shares leave in the very block of the grief, every time."""
    _deposit(token, pool, lp, 1_000 * unit)  # seasoned: unlocked
    griefer = ape.accounts.test_accounts[8]
    token.mint(griefer, 10 * unit, sender=griefer)
    token.approve(pool, 10 * unit, sender=griefer)
    own = pool.balanceOf(lp)  # the LP's own shares, all free
    for _ in range(3):
        part = own // 2
        own -= part
        grief_nonce, lp_nonce = griefer.nonce, lp.nonce
        assets = pool.previewRedeem(part)

        def grief(opts, n=grief_nonce):
            return pool.deposit(1, lp, sender=griefer, nonce=n, **opts)

        def leave(opts, n=lp_nonce, part=part):
            if exit_by == "redeem":
                return pool.redeem(part, lp, lp, sender=lp, nonce=n, **opts)
            return pool.transfer(outsider, part, sender=lp, nonce=n, **opts)

        before = token.balanceOf(lp), pool.balanceOf(outsider)
        griefed, left = _same_block(grief, leave)
        assert left.block_number == griefed.block_number and griefed.status == 1
        assert left.status == 1  # refused on the old rule: "pool: shares locked"
        [locked] = griefed.decode_logs(pool.SharesLocked)
        assert locked.owner == lp.address
        assert locked.locked_shares == pool.locked_shares(lp) > 0  # the gift only
        if exit_by == "redeem":
            assert token.balanceOf(lp) == before[0] + assets
        else:
            assert pool.balanceOf(outsider) == before[1] + part
    # the gifted shares themselves stay locked for (at most) the cooldown
    assert pool.maxRedeem(lp) == pool.balanceOf(lp) - pool.locked_shares(lp)


def test_gift_deposits_cannot_keep_a_fresh_deposit_locked_past_its_cooldown(token, pool, lp, unit):
    """Dust gifted every block to an LP whose own deposit is still locked extends that
    batch only by the gift's weight (the share-weighted mean of times left): after the
    cooldown plus a few seconds the LP's deposit is free, and the dust with it."""
    first = _raw_deposit(token, pool, lp, 1_000 * unit)
    start = first.timestamp
    assert pool.unlock_time(lp) == start + 900
    griefer = ape.accounts.test_accounts[8]
    token.mint(griefer, 100 * unit, sender=griefer)
    token.approve(pool, 100 * unit, sender=griefer)
    t = start
    while t + 12 < start + 900:  # every 12 s while the batch is locked
        t += 12
        ape.chain.pending_timestamp = t
        pool.deposit(unit, lp, sender=griefer)  # 0.1% of the batch each time
    # 74 gifts of 0.1% each push the batch at most 74 * 0.1% * 900 s = 67 s later
    assert start + 900 <= pool.unlock_time(lp) <= start + 900 + 67
    ape.chain.pending_timestamp = pool.unlock_time(lp)
    ape.chain.mine()
    assert pool.locked_shares(lp) == 0
    pool.redeem(pool.balanceOf(lp), lp, lp, sender=lp)
    assert pool.balanceOf(lp) == 0


def test_deposit_locks_only_the_new_shares_in_a_share_weighted_batch(
    token, pool, lp, outsider, unit
):
    """A second deposit joins the locked batch: time left is the share-weighted mean of
    the batch's time left and the cooldown, rounded down; shares held before are free."""
    _deposit(token, pool, lp, 1_000 * unit)  # seasoned: unlocked
    held = pool.balanceOf(lp)
    first = _raw_deposit(token, pool, lp, 100 * unit)
    minted = pool.balanceOf(lp) - held
    assert pool.locked_shares(lp) == minted
    assert pool.unlock_time(lp) == first.timestamp + 900
    assert pool.maxRedeem(lp) == held
    assert pool.maxWithdraw(lp) == pool.convertToAssets(held)
    with ape.reverts("pool: shares locked"):
        pool.redeem(held + 1, lp, lp, sender=lp)
    ape.chain.pending_timestamp = first.timestamp + 300  # about 600 s left on the batch
    second = _raw_deposit(token, pool, lp, 300 * unit)
    # mint and approve are mined first, so the deposit's block may be a second or two later
    left = first.timestamp + 900 - second.timestamp
    assert 590 <= left <= 600
    more = pool.balanceOf(lp) - held - minted
    batch = minted + more
    mean = (minted * left + more * 900) // batch
    assert pool.unlock_time(lp) == second.timestamp + mean
    [log] = second.decode_logs(pool.SharesLocked)
    assert (log.owner, log.unlock_time, log.locked_shares) == (
        lp.address,
        second.timestamp + mean,
        batch,
    )
    pool.transfer(outsider, held, sender=lp)  # the old shares move while the batch is locked
    with ape.reverts("pool: shares locked"):
        pool.transfer(outsider, 1, sender=lp)


def test_a_later_deposit_never_shortens_a_lock(token, pool, owner, lp, unit):
    first = _raw_deposit(token, pool, lp, 1_000 * unit)
    until = pool.unlock_time(lp)
    assert until == first.timestamp + 900
    ape.chain.pending_timestamp = first.timestamp + 100
    _raw_deposit(token, pool, lp, unit)  # the mean of 800 s and 900 s: later, not sooner
    assert pool.unlock_time(lp) >= until
    pool.set_cooldown(60, sender=owner)
    later = pool.unlock_time(lp)
    _raw_deposit(token, pool, lp, 1_000 * unit)  # a shorter cooldown keeps the batch's time
    assert pool.unlock_time(lp) == later


def test_set_cooldown_bounds_owner_and_event(pool, owner, lp):
    tx = pool.set_cooldown(3_600, sender=owner)
    [log] = tx.decode_logs(pool.CooldownSet)
    assert (log.old_cooldown, log.new_cooldown) == (900, 3_600)
    assert pool.cooldown() == 3_600
    pool.set_cooldown(7 * 86_400, sender=owner)
    with ape.reverts("pool: cooldown too long"):
        pool.set_cooldown(7 * 86_400 + 1, sender=owner)
    with ape.reverts("ownable: caller is not the owner"):
        pool.set_cooldown(0, sender=lp)


def test_cooldown_zero_locks_nothing(token, pool, owner, lp, unit):
    pool.set_cooldown(0, sender=owner)
    tx = _raw_deposit(token, pool, lp, 100 * unit)
    assert not tx.decode_logs(pool.SharesLocked)
    assert pool.unlock_time(lp) == 0
    pool.redeem(pool.balanceOf(lp), lp, lp, sender=lp)
    assert token.balanceOf(lp) == 100 * unit
