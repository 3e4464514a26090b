# pragma version ~=0.4.3
"""
@title Mock collateral token
@notice snekmate's ERC-20 with configurable decimals and an open `mint`,
        for tests and local demos only.
@custom:security Anyone can mint. Never deploy outside a local chain.
"""

from snekmate.auth import ownable
from snekmate.tokens import erc20

initializes: ownable
initializes: erc20[ownable := ownable]

exports: (
    erc20.totalSupply,
    erc20.balanceOf,
    erc20.transfer,
    erc20.transferFrom,
    erc20.approve,
    erc20.allowance,
    erc20.name,
    erc20.symbol,
    erc20.decimals,
)


@deploy
def __init__(name_: String[25], symbol_: String[5], decimals_: uint8):
    ownable.__init__()
    erc20.__init__(name_, symbol_, decimals_, name_, "1")


@external
def mint(receiver: address, amount: uint256):
    """
    @notice Mints `amount` to `receiver`; open to anyone (test token).
    @param receiver The receiver of the new tokens.
    @param amount The amount, in token units.
    """
    erc20._mint(receiver, amount)
