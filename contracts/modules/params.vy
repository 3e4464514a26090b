# pragma version ~=0.4.3
"""
@title margincall risk-parameter bounds
@custom:contract-name params
@notice The bounds of every risk parameter and market (docs/parameters.md
        explains each), as pure checks. MarginParams.vy deploys them; the
        engine calls that contract when the owner sets a market or the risk
        parameters, which keeps about 2 kB of checks and reason strings out
        of the engine's code.
@custom:security Pure: no state, no calls.
"""

from . import fixed_point
from . import margin

_WAD: constant(uint256) = fixed_point._WAD
_RATIO_UNIT: constant(uint256) = 10**9
_MAX_CALL_RATIO: constant(uint256) = 3 * 10**18
_MIN_CRITICAL_RATIO: constant(uint256) = 10**17
_MIN_GRACE: constant(uint256) = 300
_MAX_GRACE: constant(uint256) = 7 * 86_400
_MIN_CLOSE_FACTOR: constant(uint256) = 5 * 10**16
_MAX_TRANCHE_INTERVAL: constant(uint256) = 3_600
_MAX_PENALTY: constant(uint256) = 10**17
_MAX_REWARD: constant(uint256) = 10**6 * 10**18
_MIN_WINDOW: constant(uint256) = 60
_MAX_WINDOW: constant(uint256) = 86_400
_MAX_MIN_NOTIONAL: constant(uint256) = 10**6 * 10**18
_MAX_FEE: constant(uint256) = 10**16
_MAX_WINDOW_CAP: constant(uint256) = 2**104 - 1


@pure
@internal
def _check_params(p: margin.RiskParams):
    """
    @dev Every global bound; each bound also keeps its value within the
         field it is packed into.
    """
    if not (p.call_ratio > _WAD and p.call_ratio <= _MAX_CALL_RATIO):
        fixed_point._fail("engine: call_ratio out of bounds")
    if not (p.critical_ratio >= _MIN_CRITICAL_RATIO and p.critical_ratio <= _WAD):
        fixed_point._fail("engine: critical_ratio out of bounds")
    if not (p.grace_period >= _MIN_GRACE and p.grace_period <= _MAX_GRACE):
        fixed_point._fail("engine: grace_period out of bounds")
    if not (p.close_factor >= _MIN_CLOSE_FACTOR and p.close_factor <= _WAD):
        fixed_point._fail("engine: close_factor out of bounds")
    # at least 1 s: two tranches of one account never share a block, so a
    # batch that lists an account twice acts on it once
    if not (p.tranche_interval >= 1 and p.tranche_interval <= _MAX_TRANCHE_INTERVAL):
        fixed_point._fail("engine: tranche_interval out of bounds")
    if not (p.liquidation_penalty <= _MAX_PENALTY):
        fixed_point._fail("engine: liquidation_penalty out of bounds")
    if not (p.keeper_share <= _WAD):
        fixed_point._fail("engine: keeper_share out of bounds")
    if not (p.max_keeper_reward <= _MAX_REWARD):
        fixed_point._fail("engine: max_keeper_reward out of bounds")
    if not (p.min_keeper_reward <= p.max_keeper_reward):
        fixed_point._fail("engine: min_keeper_reward above max")
    if not (p.call_reward <= p.max_keeper_reward):
        fixed_point._fail("engine: call_reward above max_keeper_reward")
    if not (p.liquidation_window >= _MIN_WINDOW and p.liquidation_window <= _MAX_WINDOW):
        fixed_point._fail("engine: liquidation_window out of bounds")
    if not (p.min_position_notional <= _MAX_MIN_NOTIONAL):
        fixed_point._fail("engine: min_position_notional out of bounds")


@pure
@internal
def _check_market(
    imr: uint256, mmr: uint256, fee: uint256, window_cap: uint256, p: margin.RiskParams
):
    """
    @dev The market bounds: 0 < mmr, mmr * call_ratio <= imr <= 1 (a fresh
         position at initial margin is HEALTHY), penalty < mmr *
         critical_ratio (a tranche never lowers a non-critical ratio),
         fee <= 1%, 0 < window_cap < 2**104, ratios in steps of 1e-9.
    """
    if not (mmr > 0):
        fixed_point._fail("engine: mmr is zero")
    if not (imr <= _WAD):
        fixed_point._fail("engine: imr above 100%")
    if not (imr * _WAD >= mmr * p.call_ratio):
        fixed_point._fail("engine: imr below mmr * call_ratio")
    if not (p.liquidation_penalty * _WAD < mmr * p.critical_ratio):
        fixed_point._fail("engine: penalty not below mmr * critical_ratio")
    if not (fee <= _MAX_FEE):
        fixed_point._fail("engine: fee above 1%")
    if not (window_cap > 0):
        fixed_point._fail("engine: window cap is zero")
    if not (window_cap <= _MAX_WINDOW_CAP):
        fixed_point._fail("engine: window cap too large")
    if not (mmr % _RATIO_UNIT == 0 and imr % _RATIO_UNIT == 0 and fee % _RATIO_UNIT == 0):
        fixed_point._fail("engine: ratio precision is 1e-9")


@pure
@internal
def _pack_params(p: margin.RiskParams) -> uint256[3]:
    """
    @dev Packs checked parameters into the engine's three words (each field
         fits by its bound); `risk._unpack_params` is the inverse.
    """
    return [
        p.call_ratio
        | (p.critical_ratio << 64)
        | (p.close_factor << 128)
        | (p.liquidation_penalty << 192),
        p.keeper_share
        | (p.grace_period << 64)
        | (p.tranche_interval << 96)
        | (p.liquidation_window << 128)
        | (p.min_position_notional << 160),
        p.min_keeper_reward | (p.max_keeper_reward << 80) | (p.call_reward << 160),
    ]


@pure
@internal
def _pack_market(
    oracle: address, imr: uint256, mmr: uint256, fee: uint256, active: bool
) -> uint256:
    """
    @dev A checked market as the engine's market word: oracle | mmr << 160
         | imr << 192 | fee << 224 | active << 248 (ratios in 1e-9, exact by
         the precision check).
    """
    return (
        convert(oracle, uint256)
        | ((mmr // _RATIO_UNIT) << 160)
        | ((imr // _RATIO_UNIT) << 192)
        | ((fee // _RATIO_UNIT) << 224)
        | (convert(active, uint256) << 248)
    )
