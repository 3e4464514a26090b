# pragma version ~=0.4.3
"""
@title margincall insurance fund
@notice Holds collateral tokens that absorb bad debt, so that a bankrupt
        trader's deficit does not fall on the LPs. Its penalty shares accrue
        in the engine (`engine.claimable(fund)`) and arrive as plain token
        transfers when anyone calls `engine.claim_rewards(fund)` (the
        engine does so itself before every deficit it asks the fund to
        cover); `fund_balance` counts both. Anyone may add to it with
        `donate`. It pays out only on the engine's order, and only into the
        pool: a bankrupt account's deficit (`cover`; the deficit includes
        the closing keeper's minimum reward, which the engine pays). It
        pays at most the fund's balance and returns what it paid; the
        engine socialises the rest. Every
        movement is announced with the balance after it, so the fund's
        balance history can be rebuilt from events (plus the engine's
        `RewardsClaimed` sweeps, visible as ERC-20 `Transfer` events).
@custom:security Trusts the margin engine, set once by the owner, to call
        `cover` only for real deficits; the engine is the only caller that
        can move funds out, and only to the pool (fixed at deployment).
        The owner can NOT
        withdraw the fund's assets: its only power is setting the engine,
        once. Ownership is snekmate's two-step transfer. Trusts the
        collateral token to be a plain ERC-20; `donate` rejects a token
        that delivers less than requested (fee on transfer). Every function
        that moves tokens is `@nonreentrant`.
"""

from ethereum.ercs import IERC20
from ethereum.ercs import IERC4626

from .interfaces import IInsuranceFund

implements: IInsuranceFund

from snekmate.auth import ownable
from snekmate.auth import ownable_2step

initializes: ownable
initializes: ownable_2step[ownable := ownable]

exports: (
    ownable_2step.owner,
    ownable_2step.pending_owner,
    ownable_2step.transfer_ownership,
    ownable_2step.accept_ownership,
    ownable_2step.renounce_ownership,
)


interface _IAccrual:
    def claimable(owner: address) -> uint256: view


# @dev The collateral token.
asset: public(immutable(address))
# @dev The liquidity pool that `cover` pays deficits into.
pool: public(immutable(address))


# @dev The margin engine; set once by the owner.
engine: public(address)


event Donation:
    donor: indexed(address)
    amount: uint256
    balance_after: uint256


event DeficitCovered:
    account: indexed(address)
    requested: uint256
    paid: uint256
    balance_after: uint256


event EngineSet:
    engine: indexed(address)


@deploy
def __init__(asset_: address, pool_: address):
    """
    @notice Deploys the fund; the deployer becomes the owner. The pool is
            fixed here (deploy the pool first); the engine is set
            afterwards with `set_engine`.
    @param asset_ The collateral token.
    @param pool_ The liquidity pool, an ERC-4626 vault of `asset_`, which
           receives the deficits that `cover` pays.
    """
    assert asset_ != empty(address), "fund: zero address"
    assert pool_ != empty(address), "fund: zero address"
    assert staticcall IERC4626(pool_).asset() == asset_, "fund: pool asset mismatch"
    ownable.__init__()
    ownable_2step.__init__()
    asset = asset_
    pool = pool_


@external
@nonreentrant
def donate(amount: uint256):
    """
    @notice Adds `amount` tokens from the caller to the fund. Anyone may
            donate; donations cannot be taken back.
    @param amount The amount, in token units (approve it first).
    """
    assert amount > 0, "fund: zero amount"
    balance_before: uint256 = self._balance()
    assert extcall IERC20(asset).transferFrom(
        msg.sender, self, amount, default_return_value=True
    ), "fund: token transfer failed"
    balance_after: uint256 = self._balance()
    assert balance_after - balance_before == amount, "fund: token transfer short"
    log Donation(donor=msg.sender, amount=amount, balance_after=balance_after)


@external
@nonreentrant
def cover(amount: uint256, account: address) -> uint256:
    """
    @notice Pays up to `amount` tokens of `account`'s deficit into the pool.
            Only the engine may call it.
    @param amount The deficit to cover, in token units.
    @param account The bankrupt account (for the record).
    @return The amount paid: min(amount, the fund's balance).
    """
    assert msg.sender == self.engine, "fund: only engine"
    paid: uint256 = self._send(pool, amount)
    log DeficitCovered(account=account, requested=amount, paid=paid, balance_after=self._balance())
    return paid


@external
def set_engine(engine: address):
    """
    @notice Sets the margin engine, once. Only the owner.
    @param engine The margin engine.
    """
    ownable._check_owner()
    assert self.engine == empty(address), "fund: engine already set"
    assert engine != empty(address), "fund: zero address"
    self.engine = engine
    log EngineSet(engine=engine)


@external
@view
def fund_balance() -> uint256:
    """
    @notice The fund's assets: its token balance plus its share of the
            penalties accrued in the engine and not yet swept
            (`engine.claim_rewards(fund)`). (Named `fund_balance` because
            `balance` collides with the `self.balance` builtin in Vyper 0.4.)
    @return The fund's assets, in token units.
    """
    engine: address = self.engine
    if engine == empty(address):
        return self._balance()
    return self._balance() + staticcall _IAccrual(engine).claimable(self)


@internal
@view
def _balance() -> uint256:
    return staticcall IERC20(asset).balanceOf(self)


@internal
def _send(receiver: address, amount: uint256) -> uint256:
    """
    @dev Sends min(amount, balance) to `receiver`; returns what it sent.
    """
    paid: uint256 = min(amount, self._balance())
    if paid > 0:
        assert extcall IERC20(asset).transfer(
            receiver, paid, default_return_value=True
        ), "fund: token transfer failed"
    return paid
