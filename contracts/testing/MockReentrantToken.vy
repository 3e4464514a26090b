# pragma version ~=0.4.3
"""
@title Mock reentrant token
@notice snekmate's ERC-20 whose `transfer` and/or `transferFrom` (as
        chosen by `set_callback`) call back, after moving the tokens, into a
        configured target with configured calldata through `raw_call`, and
        record whether that callback succeeded and what it returned. The
        hook is one-shot: it disarms itself before calling, so a callback
        that moves tokens does not recurse. `fire` runs the same callback
        outside any transfer, to prove it would succeed on its own. Used to
        prove that the engine's `@nonreentrant` lock refuses reentry.
@custom:security Anyone can mint and arm the hook. Never deploy outside a
        local chain.
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

ON_TRANSFER: constant(uint8) = 1
ON_TRANSFER_FROM: constant(uint8) = 2

# the callback: target, calldata, and which transfers trigger it
target: public(address)
payload: public(Bytes[1024])
hooks: public(uint8)
# what the last callback did
attempts: public(uint256)
callback_ok: public(bool)
callback_return: public(Bytes[256])


event CallbackResult:
    target: indexed(address)
    success: bool
    returndata: Bytes[256]


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
def set_callback(target_: address, payload_: Bytes[1024], hooks_: uint8):
    """
    @notice Arms (or, with `hooks_ = 0`, disarms) the one-shot callback and
            resets the record of the last one.
    @param target_ The contract called back.
    @param payload_ The calldata (selector and arguments).
    @param hooks_ 1: on `transfer`, 2: on `transferFrom`, 3: on both.
    """
    self.target = target_
    self.payload = payload_
    self.hooks = hooks_
    self.attempts = 0
    self.callback_ok = False
    self.callback_return = b""


@external
def transfer(to: address, amount: uint256) -> bool:
    """
    @notice Moves `amount` from the caller to `to`, then runs the callback
            if armed on `transfer`.
    @param to The receiver.
    @param amount The amount.
    @return True.
    """
    erc20._transfer(msg.sender, to, amount)
    self._hook(ON_TRANSFER)
    return True


@external
def transferFrom(owner: address, to: address, amount: uint256) -> bool:
    """
    @notice Moves `amount` from `owner` to `to` (spending the caller's
            allowance), then runs the callback if armed on `transferFrom`.
    @param owner The payer.
    @param to The receiver.
    @param amount The amount.
    @return True.
    """
    erc20._spend_allowance(owner, msg.sender, amount)
    erc20._transfer(owner, to, amount)
    self._hook(ON_TRANSFER_FROM)
    return True


@external
def fire():
    """
    @notice Runs the configured callback now, outside any transfer.
    """
    self._call()


@external
def self_approve(spender: address, amount: uint256):
    """
    @notice Approves `spender` to move this contract's own tokens (so a
            callback can deposit into the engine).
    @param spender The spender.
    @param amount The allowance.
    """
    erc20._approve(self, spender, amount)


@external
def mint(receiver: address, amount: uint256):
    """
    @notice Mints `amount` to `receiver`; open to anyone (test token).
    @param receiver The receiver of the new tokens.
    @param amount The amount, in token units.
    """
    erc20._mint(receiver, amount)


@internal
def _hook(kind: uint8):
    if self.hooks & kind != 0:
        self.hooks = 0
        self._call()


@internal
def _call():
    ok: bool = False
    ret: Bytes[256] = b""
    ok, ret = raw_call(self.target, self.payload, max_outsize=256, revert_on_failure=False)
    self.attempts += 1
    self.callback_ok = ok
    self.callback_return = ret
    log CallbackResult(target=self.target, success=ok, returndata=ret)
