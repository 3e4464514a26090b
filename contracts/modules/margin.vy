# pragma version ~=0.4.3
"""
@title margincall margin evaluation
@custom:contract-name margin
@notice Pure functions that value an account and classify it: equity,
        maintenance and initial margin, the health ratio, the account's
        state and the smallest tranche that restores the call ratio. They
        read no storage: the engine feeds them from its own storage, the
        lens (MarginLens.vy) from the engine's getters, so both compute the
        same figures to the wei. One exception: a call past its deadline
        asks the first leg's oracle adapter whether it cleared itself
        (`_classify`, OracleAdapter `recovered`).
@custom:security Reads only `block.timestamp` and, on that one path, the
        oracle adapters named in its input: trusts its inputs.
"""

from . import fixed_point

_WAD: constant(uint256) = fixed_point._WAD
_IWAD: constant(int256) = fixed_point._IWAD
_MAX_POSITIONS: constant(uint256) = 5
# a tranche (not a full close) is charged liquidation_penalty / 3: the
# account was warned and is still above maintenance (docs/design.md)
_TRANCHE_PENALTY_DIV: constant(uint256) = 3

# account states
_HEALTHY: constant(uint8) = 0
_CALLABLE: constant(uint8) = 1
_CALLED: constant(uint8) = 2
_LIQUIDATABLE: constant(uint8) = 3
_CRITICAL: constant(uint8) = 4
_BANKRUPT: constant(uint8) = 5


struct RiskParams:
    call_ratio: uint256  # wad, HEALTHY at or above it
    critical_ratio: uint256  # wad, full close below it
    grace_period: uint256  # seconds a margin call gives the trader to cure
    close_factor: uint256  # wad, largest fraction one tranche closes
    tranche_interval: uint256  # seconds between two tranches of one account
    liquidation_penalty: uint256  # wad, of the closed notional
    keeper_share: uint256  # wad, of the penalty, to the caller
    min_keeper_reward: uint256  # wad (collateral value)
    max_keeper_reward: uint256  # wad (collateral value)
    call_reward: uint256  # wad (collateral value), paid to a margin caller
    liquidation_window: uint256  # seconds of the rolling per-market window
    min_position_notional: uint256  # wad, dust threshold


struct Acct:
    markets: uint256  # bitmap of the markets with an open position
    deadline: uint256  # recorded call deadline, 0 if none
    last_tranche: uint256  # time of the last tranche, 0 if none
    tranches: uint256  # tranches since the call
    collateral: uint256  # token units


struct Pos:
    size: int256  # wad of base asset, signed
    cost: int256  # open notional, wad, signed


struct Eval:
    n: uint256  # open positions
    mids: uint256[_MAX_POSITIONS]
    pos: Pos[_MAX_POSITIONS]
    px: uint256[_MAX_POSITIONS]
    mmr: uint256[_MAX_POSITIONS]
    oracle: address[_MAX_POSITIONS]  # each position's market adapter
    notional: uint256
    maintenance: uint256
    initial: uint256
    equity: int256


# what `_classify` asks of an oracle adapter (OracleAdapter.vy `recovered`)
interface IRecovery:
    def recovered(ev: Eval, acct: Acct, p: RiskParams, scale: uint256) -> bool: view


struct MarginStatus:
    account: address
    collateral: uint256  # wad
    equity: int256  # wad
    maintenance: uint256  # wad
    initial: uint256  # wad
    ratio: uint256  # wad; max_value(uint256) with no positions
    state: uint8
    call_deadline: uint256  # 0 when no live call
    next_tranche_time: uint256  # earliest time of the next tranche
    positions: uint256  # number of open positions
    priced: bool  # false when a needed price is invalid (batched view only)


@pure
@internal
def _position_value(
    size: int256, cost: int256, price: uint256, mmr: uint256, imr: uint256
) -> (uint256, uint256, uint256, int256):
    """
    @dev One position at `price`: notional = ceil(|size| * price); its
         maintenance and initial margin, each rounded up; its unrealised PnL
         floor(size * price) - open_notional. All against the account.
    @return Notional, maintenance, initial (wad) and unrealised PnL (wad).
    """
    notional: uint256 = fixed_point._mul_up(convert(max(size, unsafe_sub(0, size)), uint256), price)
    return (
        notional,
        fixed_point._mul_up(notional, mmr),
        fixed_point._mul_up(notional, imr),
        fixed_point._div_floor(size * convert(price, int256), _IWAD) - cost,
    )


@view
@internal
def _classify(ev: Eval, acct: Acct, p: RiskParams, scale: uint256) -> uint8:
    """
    @dev BANKRUPT at equity <= 0, CRITICAL under critical_ratio or when a
         tranche would leave dust, HEALTHY at or above call_ratio, CALLABLE
         at ratio >= 1 without a live call, CALLED before a live call's
         deadline, CALLABLE again after it when the call cleared itself (the
         account was back at call_ratio since the call: OracleAdapter
         `recovered`, docs/design.md "A call clears itself"), LIQUIDATABLE
         otherwise. Only that last case at ratio >= 1 pays for the scan.
    """
    if ev.n == 0:
        return _HEALTHY
    if ev.equity <= 0:
        return _BANKRUPT
    ratio: uint256 = fixed_point._ratio(ev.equity, ev.maintenance)
    if ratio < p.critical_ratio:
        return _CRITICAL
    if ratio >= p.call_ratio:
        return _HEALTHY
    if ratio >= _WAD:
        if not self._call_live(acct, p):
            return _CALLABLE
        if block.timestamp < acct.deadline:
            return _CALLED
        # past the deadline: the call cleared itself if the account was back
        # at call_ratio since the call, with no transaction (a fresh call, a
        # fresh notice, is needed); asked of the first leg's adapter
        if staticcall IRecovery(ev.oracle[0]).recovered(ev, acct, p, scale):
            return _CALLABLE
    f: uint256 = self._tranche_fraction(ev, p, scale)
    # a tranche that would leave dust closes everything: treat as CRITICAL
    if ev.notional - ev.notional * f // _WAD < p.min_position_notional:
        return _CRITICAL
    return _LIQUIDATABLE


@view
@internal
def _call_live(acct: Acct, p: RiskParams) -> bool:
    """
    @dev A recorded call can be enforced for one grace period after its
         deadline; after that it lapses and a new call (a new notice) is
         needed. A trader is never liquidated on a forgotten call.
    """
    return acct.deadline != 0 and block.timestamp < acct.deadline + p.grace_period


@pure
@internal
def _tranche_fraction(ev: Eval, p: RiskParams, scale: uint256) -> uint256:
    """
    @dev Smallest f with (E - pen*f*N) >= c*(1-f)*M, i.e. f >= (c*M - E) /
         (c*M - pen*N), rounded up; capped at close_factor; pen is the tranche
         penalty (liquidation_penalty / 3). The bounds penalty < mmr *
         critical_ratio make the denominator positive. The tranche's token-unit
         roundings (realised PnL, penalty: each under one token unit) and
         per-position wei roundings all go against the account; E is lowered by
         them so the tranche really restores the call ratio, also with 6-decimal
         collateral.
    """
    equity: int256 = ev.equity - convert(2 * scale + 8 * ev.n + 8, int256)
    cm: int256 = convert(p.call_ratio * ev.maintenance, int256)
    num: int256 = cm - equity * _IWAD
    den: int256 = cm - convert(p.liquidation_penalty // _TRANCHE_PENALTY_DIV * ev.notional, int256)
    if num <= 0:
        return 0
    if den <= 0:
        return p.close_factor
    f: uint256 = convert(fixed_point._div_ceil(num * _IWAD, den), uint256)
    return min(f, p.close_factor)


@view
@internal
def _status(
    account: address, acct: Acct, ev: Eval, p: RiskParams, priced: bool, scale: uint256
) -> MarginStatus:
    """
    @dev The MarginStatus of an account valued in `ev` (ignored when not
         `priced`: then only collateral and positions are filled).
    """
    s: MarginStatus = empty(MarginStatus)
    s.account = account
    s.collateral = acct.collateral * scale
    s.positions = fixed_point._popcount(acct.markets)
    s.priced = priced
    if not priced:
        # max_value(uint256), as one NOT instead of a 32-byte push
        s.ratio = ~empty(uint256)
        return s
    s.equity = ev.equity
    s.maintenance = ev.maintenance
    s.initial = ev.initial
    s.ratio = fixed_point._ratio(ev.equity, ev.maintenance)
    s.state = self._classify(ev, acct, p, scale)
    # a call that cleared itself (CALLABLE) shows no deadline
    if s.state != _CALLABLE and self._call_live(acct, p):
        s.call_deadline = acct.deadline
    if acct.last_tranche != 0:
        s.next_tranche_time = acct.last_tranche + p.tranche_interval
    return s
