# pragma version ~=0.4.3
"""
@title Mock margin engine for the pool and fund unit tests
@notice A settable `open_interest` view, and forwarders so that tests can
        call the pool and the fund as "the engine".
@custom:security Anyone can set the open interest and call the forwarders.
        Tests only; never deploy outside a local chain.
"""

from ..interfaces import IInsuranceFund
from ..interfaces import ILiquidityPool


# @dev Sum of |open notional|, wad; set by the tests.
open_interest: public(uint256)

# @dev Accrued balances (the fund's share of penalties), token units; set by the tests.
claimable: public(HashMap[address, uint256])


@external
def set_open_interest(new_value: uint256):
    """
    @notice Sets the open interest that the pool reads.
    @param new_value The open interest, wad.
    """
    self.open_interest = new_value


@external
def set_claimable(owner: address, amount: uint256):
    """
    @notice Sets an accrued balance that the fund reads in `fund_balance`.
    @param owner The owner of the balance (the fund).
    @param amount Token units.
    """
    self.claimable[owner] = amount


@external
def pay(pool: address, receiver: address, amount: uint256):
    """
    @notice Calls `pool.pay(receiver, amount)` as the engine.
    @param pool The liquidity pool.
    @param receiver The receiver of the profit.
    @param amount The amount, in token units.
    """
    extcall ILiquidityPool(pool).pay(receiver, amount)


@external
def cover(fund: address, amount: uint256, account: address) -> uint256:
    """
    @notice Calls `fund.cover(amount, account)` as the engine.
    @param fund The insurance fund.
    @param amount The deficit, in token units.
    @param account The bankrupt account.
    @return What the fund paid.
    """
    return extcall IInsuranceFund(fund).cover(amount, account)
