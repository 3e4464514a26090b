# pragma version ~=0.4.3
"""
@title margincall fixed-point math
@custom:contract-name fixed_point
@notice Pure helpers for the engine's one fixed-point convention: every
        value and ratio is an 18-decimal wad inside; collateral balances
        are kept in the token's own units and converted at the edge with
        `scale = 10**(18 - decimals)`. Each function states its rounding;
        the callers pick the direction that goes against the account and
        the keeper, never against the pool or the fund.
        The engine and its modules write the magnitude of a signed value
        as `convert(max(x, unsafe_sub(0, x)), uint256)`: the same result
        as `convert(abs(x), uint256)`, and the same revert on
        min_value(int256) (there `unsafe_sub(0, x)` is x again and the
        conversion of a negative value reverts), without the 32-byte push
        of -1 and the branch that Vyper emits for `abs`: 43 bytes of code
        less per site, and less gas.
@custom:security Pure: no state, no calls.
"""

_WAD: constant(uint256) = 10**18
_IWAD: constant(int256) = 10**18
_MAX_MARKETS: constant(uint256) = 16


@pure
@internal
def _mul_up(a: uint256, b: uint256) -> uint256:
    """
    @dev a * b / 1e18, rounded up.
    """
    return (a * b + _WAD - 1) // _WAD


@pure
@internal
def _div_floor(a: int256, b: int256) -> int256:
    """
    @dev a / b rounded toward minus infinity; b > 0.
    """
    q: int256 = a // b
    # |q * b| <= |a|: no overflow; q > min_value(int256) when rounded
    if a < 0 and unsafe_mul(q, b) != a:
        q = unsafe_sub(q, 1)
    return q


@pure
@internal
def _div_ceil(a: int256, b: int256) -> int256:
    """
    @dev a / b rounded toward plus infinity; b != 0.
    """
    q: int256 = a // b
    # |q * b| <= |a|: no overflow; q < max_value(int256) when rounded
    if unsafe_mul(q, b) != a and ((a > 0) == (b > 0)):
        q = unsafe_add(q, 1)
    return q


@pure
@internal
def _ratio(equity: int256, maintenance: uint256) -> uint256:
    """
    @dev equity / maintenance as a wad, rounded down (against the account);
         max_value(uint256) without maintenance, 0 without equity.
    """
    if maintenance == 0:
        return max_value(uint256)
    if equity <= 0:
        return 0
    return convert(equity, uint256) * _WAD // maintenance


@pure
@internal
def _to_token_up(wad: uint256, scale: uint256) -> uint256:
    """
    @dev A wad amount in token units, rounded up.
    """
    return (wad + scale - 1) // scale


@pure
@internal
def _wad_to_token_signed(wad: int256, scale: uint256) -> int256:
    """
    @dev A signed wad amount in token units, rounded down: gains round
         down, losses round up (against the account).
    """
    return self._div_floor(wad, convert(scale, int256))


@pure
@internal
def _popcount(bits: uint256) -> uint256:
    """
    @dev The number of set bits among the lowest `_MAX_MARKETS`.
    """
    n: uint256 = 0
    for m: uint256 in range(_MAX_MARKETS):
        if bits >> m == 0:
            break
        n = unsafe_add(n, (bits >> m) & 1)
    return n


@pure
@internal
def _fail(reason: String[48]):
    """
    @dev Every revert of the engine and its modules goes through here: one
         ABI encoder for all reason strings instead of one per site keeps
         the engine's runtime code far under the EIP-170 limit.
    """
    raise reason
