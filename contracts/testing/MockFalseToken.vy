# pragma version ~=0.4.3
"""
@title Mock token that returns False
@notice snekmate's ERC-20 whose `transfer` and `transferFrom` return False
        instead of reverting when the balance or the allowance is too low
        (as some pre-ERC-20-final tokens do), with an open `mint`. With
        `set_fail(True)` every `transfer` and `transferFrom` returns False
        and moves nothing, whatever the balances: this reaches the engine's
        outgoing transfers, whose balance is never short. Used to prove
        that the engine checks the returned flag, both ways.
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

# @dev When set, every transfer returns False and moves nothing.
fail: public(bool)


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
def set_fail(flag: bool):
    """
    @notice Makes every `transfer` and `transferFrom` return False (moving
            nothing) while `flag` is set; open to anyone (test token).
    @param flag Whether transfers fail.
    """
    self.fail = flag


@external
def transfer(to: address, amount: uint256) -> bool:
    """
    @notice Sends `amount` to `to`, or returns False (moving nothing) when
            the caller's balance is too low or `fail` is set.
    @param to The receiver.
    @param amount The amount.
    @return Whether the transfer happened.
    """
    if self.fail or erc20.balanceOf[msg.sender] < amount:
        return False
    erc20._transfer(msg.sender, to, amount)
    return True


@external
def transferFrom(owner: address, to: address, amount: uint256) -> bool:
    """
    @notice Sends `amount` from `owner` to `to`, or returns False (moving
            nothing) when the balance or the allowance is too low or
            `fail` is set.
    @param owner The payer.
    @param to The receiver.
    @param amount The amount.
    @return Whether the transfer happened.
    """
    if self.fail:
        return False
    if erc20.balanceOf[owner] < amount or erc20.allowance[owner][msg.sender] < amount:
        return False
    erc20._spend_allowance(owner, msg.sender, amount)
    erc20._transfer(owner, to, amount)
    return True


@external
def mint(receiver: address, amount: uint256):
    """
    @notice Mints `amount` to `receiver`; open to anyone (test token).
    @param receiver The receiver of the new tokens.
    @param amount The amount, in token units.
    """
    erc20._mint(receiver, amount)
