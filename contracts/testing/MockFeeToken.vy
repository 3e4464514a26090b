# pragma version ~=0.4.3
"""
@title Mock fee-on-transfer token
@notice snekmate's ERC-20 whose `transfer` and `transferFrom` burn 1% of the
        amount on the way (the receiver gets 99%), with an open `mint`. Used
        to prove that the engine refuses short transfers.
@custom:security Anyone can mint. Never deploy outside a local chain.
"""

from ethereum.ercs import IERC20

implements: IERC20

from snekmate.auth import ownable
from snekmate.tokens import erc20

initializes: ownable
initializes: erc20[ownable := ownable]

exports: (
    erc20.totalSupply,
    erc20.balanceOf,
    erc20.approve,
    erc20.allowance,
    erc20.name,
    erc20.symbol,
    erc20.decimals,
)

FEE_BPS: constant(uint256) = 100


@deploy
def __init__(name_: String[25], symbol_: String[5], decimals_: uint8):
    """
    @notice Deploys the token.
    @param name_ The token name.
    @param symbol_ The token symbol.
    @param decimals_ The token decimals.
    """
    ownable.__init__()
    erc20.__init__(name_, symbol_, decimals_, name_, "1")


@external
def transfer(to: address, amount: uint256) -> bool:
    """
    @notice Sends `amount` minus the 1% fee to `to`; the fee is burnt.
    @param to The receiver.
    @param amount The amount taken from the caller.
    @return True.
    """
    self._transfer_with_fee(msg.sender, to, amount)
    return True


@external
def transferFrom(owner: address, to: address, amount: uint256) -> bool:
    """
    @notice Sends `amount` minus the 1% fee from `owner` to `to`, spending
            `amount` of allowance; the fee is burnt.
    @param owner The payer.
    @param to The receiver.
    @param amount The amount taken from `owner`.
    @return True.
    """
    erc20._spend_allowance(owner, msg.sender, amount)
    self._transfer_with_fee(owner, to, amount)
    return True


@external
def mint(receiver: address, amount: uint256):
    """
    @notice Mints `amount` to `receiver`; open to anyone (test token).
    @param receiver The receiver of the new tokens.
    @param amount The amount, in token units.
    """
    erc20._mint(receiver, amount)


@internal
def _transfer_with_fee(owner: address, to: address, amount: uint256):
    fee: uint256 = amount * FEE_BPS // 10_000
    erc20._transfer(owner, to, amount - fee)
    if fee > 0:
        erc20._burn(owner, fee)
