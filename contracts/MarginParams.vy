# pragma version ~=0.4.3
"""
@title margincall risk-parameter checker
@notice The bounds of the engine's risk parameters and markets
        (contracts/modules/params.vy), deployed on their own: the engine
        calls `check_params` and `check_market` when its owner sets them and
        reverts with the reason given here ("engine: ..."). Keeping the
        checks and their reason strings out of the engine leaves room in its
        EIP-170 budget; the engine holds this contract's address as an
        immutable, so the bounds cannot be swapped after deployment.
@custom:security Stateless and pure: trusts nothing, holds nothing.
"""

from modules import margin
from modules import params

_MAX_MARKETS: constant(uint256) = 16


@view
@external
def check_params(p: margin.RiskParams, markets: DynArray[uint256[4], _MAX_MARKETS]) -> uint256[3]:
    """
    @notice Reverts unless every risk parameter is within its bounds and
            every listed market is valid under them.
    @param p The risk parameters.
    @param markets Each market's imr, mmr, fee and window cap (wad).
    @return The parameters packed as the engine stores them.
    """
    params._check_params(p)
    for m: uint256[4] in markets:
        params._check_market(m[0], m[1], m[2], m[3], p)
    return params._pack_params(p)


@view
@external
def check_market(
    oracle: address,
    imr: uint256,
    mmr: uint256,
    fee: uint256,
    window_cap: uint256,
    active: bool,
    p: margin.RiskParams,
) -> uint256:
    """
    @notice Reverts unless the market's ratios, fee and window cap are valid
            under the risk parameters `p`.
    @param oracle The market's oracle adapter.
    @param imr Initial margin ratio (wad).
    @param mmr Maintenance margin ratio (wad).
    @param fee Trading fee (wad).
    @param window_cap Notional liquidatable per window (wad).
    @param active Whether new exposure is allowed.
    @param p The risk parameters.
    @return The market word as the engine stores it.
    """
    params._check_market(imr, mmr, fee, window_cap, p)
    return params._pack_market(oracle, imr, mmr, fee, active)
