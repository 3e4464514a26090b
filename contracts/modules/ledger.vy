# pragma version ~=0.4.3
"""
@title margincall ledger: accounts and positions
@custom:contract-name ledger
@notice Packed storage of the traders' accounts (one word each: market
        bitmap, call deadline, last tranche time, tranche count,
        collateral) and positions (one word each: size and open notional,
        both biased by 2**127), the open interest, and the valuation of an
        account from storage (`_evaluate`, on `margin._position_value`).
@custom:security Internal only: its callers (the engine, `liquidation`) check
        every change before storing it; packing refuses out-of-range values.
"""

from ..interfaces import IOracle
from . import fixed_point
from . import margin
from . import risk

uses: risk

_MAX_MARKETS: constant(uint256) = fixed_point._MAX_MARKETS
_MASK16: constant(uint256) = 2**16 - 1
_MASK32: constant(uint256) = 2**32 - 1
_MASK48: constant(uint256) = 2**48 - 1
_MASK112: constant(uint256) = 2**112 - 1
_MASK128: constant(uint256) = 2**128 - 1
_BIAS: constant(int256) = 2**127


# Sum over all positions of |open notional| (wad); the pool keeps a reserve for it.
open_interest: public(uint256)

# markets | deadline << 16 | last_tranche << 64 | tranches << 112 | collateral << 144
_account: HashMap[address, uint256]
# (size + 2**127) << 128 | (open notional + 2**127)
_position: HashMap[address, HashMap[uint256, uint256]]


event PositionChanged:
    account: indexed(address)
    market_id: indexed(uint256)
    size: int256
    open_notional: int256
    price: uint256
    size_delta: int256
    realized_pnl: int256
    fee: uint256
    collateral: uint256


event MarginCallCleared:
    account: indexed(address)
    caller: indexed(address)
    equity: int256
    maintenance: uint256
    ratio: uint256


@view
@internal
def _load(account: address) -> margin.Acct:
    """
    @dev Unpacks an account word.
    """
    w: uint256 = self._account[account]
    return margin.Acct(
        markets=w & _MASK16,
        deadline=(w >> 16) & _MASK48,
        last_tranche=(w >> 64) & _MASK48,
        tranches=(w >> 112) & _MASK32,
        collateral=w >> 144,
    )


@internal
def _store(account: address, acct: margin.Acct):
    """
    @dev Packs an account word; the tranche count saturates at 2**32 - 1.
    """
    if not (acct.collateral <= _MASK112):
        fixed_point._fail("engine: collateral overflow")
    self._account[account] = (
        acct.markets
        | (acct.deadline << 16)
        | (acct.last_tranche << 64)
        | (min(acct.tranches, _MASK32) << 112)
        | (acct.collateral << 144)
    )


@view
@internal
def _load_pos(account: address, market_id: uint256) -> margin.Pos:
    """
    @dev Unpacks a position word (an empty word is no position).
    """
    w: uint256 = self._position[account][market_id]
    if w == 0:
        return empty(margin.Pos)
    # both fields are under 2**128: unbiased they fit int128
    return margin.Pos(
        size=unsafe_sub(convert(w >> 128, int256), _BIAS),
        cost=unsafe_sub(convert(w & _MASK128, int256), _BIAS),
    )


@internal
def _store_pos(account: address, market_id: uint256, pos: margin.Pos):
    """
    @dev Packs a position word; |size| and |open notional| stay under 2**127.
    """
    if not (pos.size < _BIAS and pos.size > -_BIAS and pos.cost < _BIAS and pos.cost > -_BIAS):
        fixed_point._fail("engine: size out of range")
    # in range: biased, both fields are positive and under 2**128
    self._position[account][market_id] = (
        convert(unsafe_add(pos.size, _BIAS), uint256) << 128
    ) | convert(unsafe_add(pos.cost, _BIAS), uint256)


@view
@internal
def _evaluate(
    account: address, acct: margin.Acct, prices: uint256[_MAX_MARKETS], scale: uint256
) -> margin.Eval:
    """
    @dev Loads the account's positions and their markets' ratios and values
         them at `prices` with `margin._position_value`: equity = collateral
         + sum(unrealised PnL); notional, maintenance and initial summed.
    """
    ev: margin.Eval = empty(margin.Eval)
    ev.equity = convert(acct.collateral * scale, int256)
    bits: uint256 = acct.markets
    n: uint256 = 0
    for m: uint256 in range(_MAX_MARKETS):
        if bits >> m == 0:
            break
        if (bits >> m) & 1 == 0:
            continue
        pos: margin.Pos = self._load_pos(account, m)
        mword: uint256 = risk._market[m]
        mmr: uint256 = risk._m_mmr(mword)
        notional: uint256 = 0
        maintenance: uint256 = 0
        initial: uint256 = 0
        upnl: int256 = 0
        notional, maintenance, initial, upnl = margin._position_value(
            pos.size, pos.cost, prices[m], mmr, risk._m_imr(mword)
        )
        ev.mids[n] = m
        ev.pos[n] = pos
        ev.px[n] = prices[m]
        ev.mmr[n] = mmr
        ev.oracle[n] = risk._m_oracle(mword)
        ev.notional += notional
        ev.maintenance += maintenance
        ev.initial += initial
        ev.equity += upnl
        n += 1
    ev.n = n
    return ev


@view
@internal
def _try_prices(
    account: address, bits: uint256, prices_in: uint256[_MAX_MARKETS], have: uint256, worst: bool
) -> (uint256[_MAX_MARKETS], uint256, bool):
    """
    @dev Fills the missing prices of `bits` into a cache; never reverts.
         `have` marks the markets already fetched (valid) in this call. An
         invalid price returns False, unless `worst` (liquidation only): then
         the market gets the adapter's `worst_price` for `account`'s side of
         it (short: the short holder's) and its bit in the returned bitmap
         of unpriced markets (not a cache entry: the next account may hold
         the other side); False when there is no worst case either (L2
         sequencer down) or when every leg of `bits` is unpriced.
    """
    prices: uint256[_MAX_MARKETS] = prices_in
    need: uint256 = bits & ~have
    unpriced: uint256 = 0
    for m: uint256 in range(_MAX_MARKETS):
        if need >> m == 0:
            break
        if (need >> m) & 1 == 1:
            # the adapter's valid price, its worst cases, or (0, 0) for none
            price: uint256 = 0
            short: uint256 = 0
            valid: bool = False
            price, short, valid = staticcall IOracle(risk._m_oracle(risk._market[m])).worst_price()
            if not valid:
                if not worst or price == 0:
                    return prices, 0, False
                if self._load_pos(account, m).size < 0:
                    price = short
                unpriced |= 1 << m
            prices[m] = price
    return prices, unpriced, unpriced == 0 or unpriced != bits


@internal
def _clear_call(
    account: address, acct_in: margin.Acct, equity: int256, maintenance: uint256
) -> margin.Acct:
    """
    @dev Clears the recorded call of an account at `equity` and
         `maintenance` (the caller checked that it is cured) and logs it.
    """
    acct: margin.Acct = acct_in
    acct.deadline = 0
    acct.tranches = 0
    log MarginCallCleared(
        account=account,
        caller=msg.sender,
        equity=equity,
        maintenance=maintenance,
        ratio=fixed_point._ratio(equity, maintenance),
    )
    return acct
