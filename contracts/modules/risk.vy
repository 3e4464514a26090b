# pragma version ~=0.4.3
"""
@title margincall risk: markets and risk parameters
@custom:contract-name risk
@notice The markets (oracle adapter, margin ratios, fee, active flag, one
        packed word each), their rolling liquidation windows, the global
        risk parameters (packed), the guardian and the pause flag; the
        owner's setters, whose every bound of docs/parameters.md the
        MarginParams contract checks; and the price reads the engine makes
        through the oracle adapters.
@custom:security The owner sets markets and parameters within the bounds
        of the MarginParams contract fixed at deployment; the guardian may
        only pause new exposure.
"""

from snekmate.auth import ownable
from ..interfaces import IOracle
from . import fixed_point
from . import margin

uses: ownable


interface IMarginParams:
    def check_params(p: margin.RiskParams, markets: DynArray[uint256[4], 16]) -> uint256[3]: view
    def check_market(
        oracle: address,
        imr: uint256,
        mmr: uint256,
        fee: uint256,
        window_cap: uint256,
        active: bool,
        p: margin.RiskParams,
    ) -> uint256: view


_WAD: constant(uint256) = fixed_point._WAD
_MAX_MARKETS: constant(uint256) = fixed_point._MAX_MARKETS
_RATIO_UNIT: constant(uint256) = 10**9
_MASK24: constant(uint256) = 2**24 - 1
_MASK32: constant(uint256) = 2**32 - 1
_MASK48: constant(uint256) = 2**48 - 1
_MASK64: constant(uint256) = 2**64 - 1
_MASK80: constant(uint256) = 2**80 - 1
_MASK104: constant(uint256) = 2**104 - 1
_MASK160: constant(uint256) = 2**160 - 1


struct MarketConfig:
    oracle: address
    imr: uint256  # wad, initial margin ratio
    mmr: uint256  # wad, maintenance margin ratio
    fee: uint256  # wad, trading fee on traded notional, to the pool
    window_cap: uint256  # wad notional liquidatable per window (non-critical)
    active: bool  # new exposure allowed


guardian: public(address)
paused: public(bool)
market_count: public(uint256)
# oracle | mmr << 160 | imr << 192 | fee << 224 | active << 248 (ratios in 1e-9)
_market: HashMap[uint256, uint256]
# start | used << 48 | cap << 152 (used and cap: wad notional, 104 bits)
_window: HashMap[uint256, uint256]
_params: uint256[3]
# the bounds of the risk parameters and markets (MarginParams.vy)
_CHECKER: immutable(IMarginParams)


event MarketSet:
    market_id: indexed(uint256)
    oracle: address
    imr: uint256
    mmr: uint256
    fee: uint256
    window_cap: uint256
    active: bool


event RiskParamsSet:
    params: margin.RiskParams


event GuardianSet:
    guardian: indexed(address)


event PauseSet:
    paused: bool
    caller: indexed(address)


@deploy
def __init__(guardian: address, checker: IMarginParams):
    """
    @notice Sets the guardian and the default risk parameters of
            PROTOCOL.md sections 2 and 3.
    @param guardian The address that may pause new exposure.
    @param checker The MarginParams contract that checks every setting.
    """
    _CHECKER = checker
    self.guardian = guardian
    log GuardianSet(guardian=guardian)
    self._set_params(
        margin.RiskParams(
            call_ratio=125 * 10**16,
            critical_ratio=10**18,
            grace_period=3_600,
            close_factor=25 * 10**16,
            tranche_interval=60,
            liquidation_penalty=15 * 10**15,
            keeper_share=2 * 10**17,
            min_keeper_reward=10**18,
            max_keeper_reward=1_000 * 10**18,
            call_reward=10**18,
            liquidation_window=300,
            min_position_notional=10 * 10**18,
        )
    )


@external
@nonreentrant
def set_market(
    market_id: uint256,
    oracle: address,
    imr: uint256,
    mmr: uint256,
    fee: uint256,
    window_cap: uint256,
    active: bool,
):
    """
    @notice Adds a market (`market_id == market_count`) or changes one.
            Bounds: 0 < mmr, mmr * call_ratio <= imr <= 1, penalty <
            mmr * critical_ratio, fee <= 1%, window_cap > 0.
    @param market_id The market id (0..15).
    @param oracle Its oracle adapter.
    @param imr Initial margin ratio (wad).
    @param mmr Maintenance margin ratio (wad).
    @param fee Trading fee on traded notional (wad).
    @param window_cap Notional liquidatable per window for non-critical
           accounts (wad).
    @param active Whether new exposure is allowed.
    """
    ownable._check_owner()
    count: uint256 = self.market_count
    if not (market_id <= count and market_id < _MAX_MARKETS):
        fixed_point._fail("engine: bad market id")
    if not (oracle != empty(address)):
        fixed_point._fail("engine: zero oracle")
    word: uint256 = staticcall _CHECKER.check_market(
        oracle, imr, mmr, fee, window_cap, active, self._unpack_params(self._params)
    )
    if market_id == count:
        self.market_count = count + 1
    self._market[market_id] = word
    self._window[market_id] = (self._window[market_id] & (2**152 - 1)) | (window_cap << 152)
    log MarketSet(
        market_id=market_id,
        oracle=oracle,
        imr=imr,
        mmr=mmr,
        fee=fee,
        window_cap=window_cap,
        active=active,
    )


@external
@nonreentrant
def set_risk_params(params: margin.RiskParams):
    """
    @notice Sets every global risk parameter at once; each is checked
            against its bounds and against every market (docs/parameters.md).
    @param params The new parameters.
    """
    ownable._check_owner()
    self._set_params(params)


@external
@nonreentrant
def set_guardian(guardian: address):
    """
    @notice Sets the guardian, who may pause new exposure.
    @param guardian The new guardian (empty to have none).
    """
    ownable._check_owner()
    self.guardian = guardian
    log GuardianSet(guardian=guardian)


@external
@nonreentrant
def set_paused(paused: bool):
    """
    @notice Pauses or resumes new exposure (opening or increasing
            positions). Deposits, withdrawals within margin, reductions,
            margin calls and liquidations are never paused.
    @param paused The new flag.
    """
    if not (msg.sender == self.guardian or msg.sender == ownable.owner):
        fixed_point._fail("engine: only guardian or owner")
    self.paused = paused
    log PauseSet(paused=paused, caller=msg.sender)


@view
@external
def markets(market_id: uint256) -> MarketConfig:
    """
    @notice A market's configuration.
    @param market_id The market.
    @return Oracle adapter, imr, mmr, fee, window cap, active flag.
    """
    w: uint256 = self._market[market_id]
    return MarketConfig(
        oracle=self._m_oracle(w),
        imr=self._m_imr(w),
        mmr=self._m_mmr(w),
        fee=self._m_fee(w),
        window_cap=self._window[market_id] >> 152,
        active=self._m_active(w),
    )


@view
@external
def window_state(market_id: uint256) -> (uint256, uint256):
    """
    @notice The market's rolling liquidation window.
    @param market_id The market.
    @return The window's start time and the notional liquidated in it (wad).
    """
    w: uint256 = self._window[market_id]
    return w & _MASK48, (w >> 48) & _MASK104


@view
@external
def risk_params() -> margin.RiskParams:
    """
    @notice The global risk parameters.
    @return The parameters, unpacked.
    """
    return self._unpack_params(self._params)


@view
@internal
def _prices(bits: uint256) -> uint256[_MAX_MARKETS]:
    """
    @dev Reads every needed price; reverts with the oracle's reason.
    """
    prices: uint256[_MAX_MARKETS] = empty(uint256[_MAX_MARKETS])
    for m: uint256 in range(_MAX_MARKETS):
        if bits >> m == 0:
            break
        if (bits >> m) & 1 == 1:
            prices[m] = staticcall IOracle(self._m_oracle(self._market[m])).price()
    return prices


@view
@internal
def _p_call_ratio() -> uint256:
    """
    @dev The call ratio alone, from the first parameter word.
    """
    return self._params[0] & _MASK64


@view
@internal
def _params_without_rewards() -> margin.RiskParams:
    """
    @dev The parameters read from words 0 and 1 only, with the reward
         fields (word 2: min and max keeper reward, call reward) zero: one
         cold read less for the paths that pay no reward (views, trades).
    """
    return self._unpack_params([self._params[0], self._params[1], 0])


@pure
@internal
def _unpack_params(w: uint256[3]) -> margin.RiskParams:
    """
    @dev Inverse of the packing in `_set_params`.
    """
    return margin.RiskParams(
        call_ratio=w[0] & _MASK64,
        critical_ratio=(w[0] >> 64) & _MASK64,
        grace_period=(w[1] >> 64) & _MASK32,
        close_factor=(w[0] >> 128) & _MASK64,
        tranche_interval=(w[1] >> 96) & _MASK32,
        liquidation_penalty=w[0] >> 192,
        keeper_share=w[1] & _MASK64,
        min_keeper_reward=w[2] & _MASK80,
        max_keeper_reward=(w[2] >> 80) & _MASK80,
        call_reward=(w[2] >> 160) & _MASK80,
        liquidation_window=(w[1] >> 128) & _MASK32,
        min_position_notional=(w[1] >> 160) & _MASK80,
    )


@internal
def _set_params(p: margin.RiskParams):
    """
    @dev The checker checks every bound (each fits its packed field) and
         every market against the new parameters, and packs them into
         three words.
    """
    listed: DynArray[uint256[4], _MAX_MARKETS] = []
    for m: uint256 in range(_MAX_MARKETS):
        if m == self.market_count:
            break
        w: uint256 = self._market[m]
        listed.append([self._m_imr(w), self._m_mmr(w), self._m_fee(w), self._window[m] >> 152])
    self._params = staticcall _CHECKER.check_params(p, listed)
    log RiskParamsSet(params=p)


@pure
@internal
def _m_oracle(w: uint256) -> address:
    """
    @dev The oracle adapter of a market word.
    """
    return convert(convert(w & _MASK160, uint160), address)


@pure
@internal
def _m_mmr(w: uint256) -> uint256:
    """
    @dev The maintenance margin ratio of a market word (wad).
    """
    return ((w >> 160) & _MASK32) * _RATIO_UNIT


@pure
@internal
def _m_imr(w: uint256) -> uint256:
    """
    @dev The initial margin ratio of a market word (wad).
    """
    return ((w >> 192) & _MASK32) * _RATIO_UNIT


@pure
@internal
def _m_fee(w: uint256) -> uint256:
    """
    @dev The trading fee of a market word (wad).
    """
    return ((w >> 224) & _MASK24) * _RATIO_UNIT


@pure
@internal
def _m_active(w: uint256) -> bool:
    """
    @dev The active flag of a market word.
    """
    return (w >> 248) & 1 == 1
