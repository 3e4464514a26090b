# pragma version ~=0.4.3
"""
@title margincall margin lens
@notice Read-only views of a MarginEngine that keepers and tools call off
        chain: the batched `check_margins` a keeper scans with and
        `preview_liquidation`. They read the engine through its getters and
        compute with the same pure functions of contracts/modules/ (`margin`,
        `liquidation`) as the engine, so their figures equal the engine's to
        the wei. Moving them here keeps the engine's code small; a contract
        that needs one account's health calls the engine's own
        `check_margin`, which is cheaper than a hop through the lens.
@custom:security Stateless: trusts only the engine it was deployed for and
        the oracle adapters that engine lists. Nothing here moves funds.
"""

from interfaces import IOracle
from modules import fixed_point
from modules import margin
from modules import risk
from modules import liquidation


interface IEngineState:
    def account_info(account: address) -> (uint256, uint256, uint256, uint256, uint256): view
    def position(account: address, market_id: uint256) -> (int256, int256): view
    def markets(market_id: uint256) -> risk.MarketConfig: view
    def window_state(market_id: uint256) -> (uint256, uint256): view
    def risk_params() -> margin.RiskParams: view
    def SCALE() -> uint256: view
    def parked_reward(account: address) -> uint256: view


_MAX_MARKETS: constant(uint256) = fixed_point._MAX_MARKETS
_MAX_POSITIONS: constant(uint256) = margin._MAX_POSITIONS
_MAX_SCAN: constant(uint256) = 500
_MASK96: constant(uint256) = 2**96 - 1


struct LiquidationPreview:
    state: uint8
    liquidatable: bool
    reason: uint8  # 0 ok, 1 not liquidatable, 2 tranche interval, 3 window cap
    full_close: bool
    fraction: uint256  # wad
    market_ids: DynArray[uint256, _MAX_POSITIONS]
    closed_sizes: DynArray[int256, _MAX_POSITIONS]
    closed_notional: uint256  # wad
    penalty: uint256  # token units
    keeper_reward: uint256  # token units
    fund_fee: uint256  # token units
    deficit: uint256  # token units, paid by the fund or socialised
    equity_after: int256
    ratio_after: uint256


# the market data one call has read so far (each market read once per call)
struct _Markets:
    have: uint256  # bitmap of the markets whose config is read
    priced: uint256  # bitmap of the markets whose price is read (valid or worst case)
    unpriced: uint256  # bitmap of the read markets without a valid price
    oracle: address[_MAX_MARKETS]
    mmr: uint256[_MAX_MARKETS]
    imr: uint256[_MAX_MARKETS]
    price: uint256[_MAX_MARKETS]  # valid, or the long holder's worst case
    short: uint256[_MAX_MARKETS]  # the short holder's worst case (unpriced only)


ENGINE: public(immutable(IEngineState))
_SCALE: immutable(uint256)


@deploy
def __init__(engine: IEngineState):
    """
    @notice Deploys the lens of one engine.
    @param engine The MarginEngine it reads.
    """
    ENGINE = engine
    _SCALE = staticcall engine.SCALE()


@view
@external
def check_margins(
    accounts: DynArray[address, _MAX_SCAN]
) -> DynArray[margin.MarginStatus, _MAX_SCAN]:
    """
    @notice The batched view keepers scan with: each account's status as the
            engine's `check_margin` returns it. Each market's price is read
            once per call. An account with a leg without a valid price comes
            back with `priced = False`, valued as `liquidate` values it (the
            leg at the adapter's `worst_price` for its side); when no leg of
            it is priced, or no worst case exists (L2 sequencer down), with
            state HEALTHY and no figures (nothing to do).
    @param accounts Up to 500 accounts.
    @return One MarginStatus per account, in order.
    """
    p: margin.RiskParams = staticcall ENGINE.risk_params()
    cache: _Markets = empty(_Markets)
    out: DynArray[margin.MarginStatus, _MAX_SCAN] = []
    for account: address in accounts:
        acct: margin.Acct = self._acct(account)
        ok: bool = False
        cache, ok = self._fill(cache, acct.markets, False)
        unpriced: uint256 = acct.markets & cache.unpriced
        # liquidation needs a priced leg to close
        ok = ok and (unpriced != acct.markets or unpriced == 0)
        ev: margin.Eval = empty(margin.Eval)
        if ok:
            ev = self._evaluate(account, acct, cache)
        s: margin.MarginStatus = margin._status(account, acct, ev, p, ok, _SCALE)
        s.priced = ok and unpriced == 0
        out.append(s)
    return out


@view
@external
def calls_cleared(accounts: DynArray[address, _MAX_SCAN]) -> DynArray[bool, _MAX_SCAN]:
    """
    @notice For keepers that look one block ahead: whether each account's
            recorded margin call has cleared itself, whatever its deadline
            (the account was back at `call_ratio` since the call, with no
            transaction: OracleAdapter `recovered`). Once its deadline has
            passed, such an account at 1 <= ratio < call_ratio is CALLABLE
            (a fresh call, a fresh notice), not LIQUIDATABLE. False without
            a call or when a needed price is invalid. Scans the feeds: call
            it for the few accounts whose deadline is due, not for all.
    @param accounts Up to 500 accounts.
    @return One flag per account, in order.
    """
    p: margin.RiskParams = staticcall ENGINE.risk_params()
    cache: _Markets = empty(_Markets)
    out: DynArray[bool, _MAX_SCAN] = []
    for account: address in accounts:
        acct: margin.Acct = self._acct(account)
        ok: bool = False
        cache, ok = self._fill(cache, acct.markets, False)
        cleared: bool = False
        if ok and acct.deadline != 0 and acct.markets != 0:
            ev: margin.Eval = self._evaluate(account, acct, cache)
            cleared = staticcall margin.IRecovery(ev.oracle[0]).recovered(ev, acct, p, _SCALE)
        out.append(cleared)
    return out


@view
@external
def preview_liquidation(account: address) -> LiquidationPreview:
    """
    @notice What the engine's `liquidate(account)` would do now, without
            doing it: the closed sizes, penalty, keeper reward, fund fee,
            deficit and the ratio after. A leg without a valid price is
            valued at its worst case and stays open, as in `liquidate`.
            Reverts with the oracle's reason while the L2 sequencer blocks
            prices or when no leg is priced.
    @param account The account.
    @return The preview; `liquidatable` false with a `reason` code when a
            call would revert (1 not liquidatable, 2 tranche interval,
            3 window cap).
    """
    p: margin.RiskParams = staticcall ENGINE.risk_params()
    acct: margin.Acct = self._acct(account)
    cache: _Markets = empty(_Markets)
    ok: bool = False
    cache, ok = self._fill(cache, acct.markets, True)
    unpriced: uint256 = acct.markets & cache.unpriced
    if unpriced != 0 and unpriced == acct.markets:
        # no priced leg to close: the engine reverts with the first leg's reason
        for m: uint256 in range(_MAX_MARKETS):
            if (unpriced >> m) & 1 == 1:
                cache.price[m] = staticcall IOracle(cache.oracle[m]).price()
    ev: margin.Eval = self._evaluate(account, acct, cache)
    state: uint8 = margin._classify(ev, acct, p, _SCALE)
    windows: uint256[_MAX_POSITIONS] = empty(uint256[_MAX_POSITIONS])
    for i: uint256 in range(_MAX_POSITIONS):
        if i == ev.n:
            break
        start: uint256 = 0
        used: uint256 = 0
        start, used = staticcall ENGINE.window_state(ev.mids[i])
        cap: uint256 = (staticcall ENGINE.markets(ev.mids[i])).window_cap
        windows[i] = start | (used << 48) | (cap << 152)
    parked: uint256 = 0
    if acct.deadline != 0:
        parked = (staticcall ENGINE.parked_reward(account)) & _MASK96
    plan: liquidation.Plan = liquidation._plan_from(
        acct, ev, p, state, windows, parked, _SCALE, unpriced
    )
    out: LiquidationPreview = empty(LiquidationPreview)
    out.state = plan.state
    out.reason = plan.code
    out.liquidatable = plan.code == liquidation._OK
    if plan.code != liquidation._OK:
        return out
    out.full_close = plan.full
    out.fraction = plan.fraction
    for i: uint256 in range(_MAX_POSITIONS):
        if i == ev.n:
            break
        out.market_ids.append(ev.mids[i])
        out.closed_sizes.append(plan.closed[i])
    out.closed_notional = plan.closed_notional
    out.penalty = plan.penalty
    out.keeper_reward = plan.keeper_reward
    out.fund_fee = plan.fund_fee
    out.deficit = plan.deficit
    out.equity_after = plan.equity_after
    out.ratio_after = plan.ratio_after
    return out


@view
@external
def call_reward_of(account: address) -> (address, uint256):
    """
    @notice The margin-call reward parked for `account`: taken from its
            collateral by a call, held by the engine until the call ends
            (paid to the caller if the account ends it solvent, returned to
            the account if it is liquidated at ratio < 1).
    @param account The account.
    @return The caller and the amount (token units); (empty, 0) if none.
    """
    word: uint256 = staticcall ENGINE.parked_reward(account)
    amount: uint256 = word & _MASK96
    if amount == 0:
        return empty(address), 0
    return convert(word >> 96, address), amount


@view
@internal
def _acct(account: address) -> margin.Acct:
    """
    @dev The engine's account record.
    """
    acct: margin.Acct = empty(margin.Acct)
    acct.collateral, acct.markets, acct.deadline, acct.last_tranche, acct.tranches = (
        staticcall ENGINE.account_info(account)
    )
    return acct


@view
@internal
def _fill(cache_in: _Markets, bits: uint256, strict: bool) -> (_Markets, bool):
    """
    @dev Reads the config and price of every market of `bits` not read yet;
         a market without a valid price is read at its `worst_price` (long
         and short) and marked `unpriced`. With no worst case (sequencer
         down) `strict` reverts with the oracle's reason; otherwise the call
         returns False (and the cache keeps what it has).
    """
    cache: _Markets = cache_in
    for m: uint256 in range(_MAX_MARKETS):
        if bits >> m == 0:
            break
        if (bits >> m) & 1 == 0 or (cache.priced >> m) & 1 == 1:
            continue
        if (cache.have >> m) & 1 == 0:
            config: risk.MarketConfig = staticcall ENGINE.markets(m)
            cache.oracle[m] = config.oracle
            cache.mmr[m] = config.mmr
            cache.imr[m] = config.imr
            cache.have |= 1 << m
        valid: bool = False
        cache.price[m], valid = staticcall IOracle(cache.oracle[m]).try_price()
        if not valid:
            # liquidation's worst case (engine: `ledger._try_prices`)
            cache.price[m], cache.short[m], valid = staticcall IOracle(
                cache.oracle[m]
            ).worst_price()
            if cache.price[m] == 0:
                if strict:
                    # the sequencer blocks prices: its reason
                    cache.price[m] = staticcall IOracle(cache.oracle[m]).price()
                return cache, False
            cache.unpriced |= 1 << m
        cache.priced |= 1 << m
    return cache, True


@view
@internal
def _evaluate(account: address, acct: margin.Acct, cache: _Markets) -> margin.Eval:
    """
    @dev The account's positions valued as the engine's `ledger._evaluate`
         values them (`margin._position_value`), from the engine's getters
         and the cache (an unpriced short leg at the short holder's worst
         case).
    """
    ev: margin.Eval = empty(margin.Eval)
    ev.equity = convert(acct.collateral * _SCALE, int256)
    n: uint256 = 0
    for m: uint256 in range(_MAX_MARKETS):
        if acct.markets >> m == 0:
            break
        if (acct.markets >> m) & 1 == 0:
            continue
        pos: margin.Pos = empty(margin.Pos)
        pos.size, pos.cost = staticcall ENGINE.position(account, m)
        notional: uint256 = 0
        maintenance: uint256 = 0
        initial: uint256 = 0
        upnl: int256 = 0
        px: uint256 = cache.price[m]
        if pos.size < 0 and (cache.unpriced >> m) & 1 == 1:
            px = cache.short[m]
        notional, maintenance, initial, upnl = margin._position_value(
            pos.size, pos.cost, px, cache.mmr[m], cache.imr[m]
        )
        ev.mids[n] = m
        ev.pos[n] = pos
        ev.px[n] = px
        ev.mmr[n] = cache.mmr[m]
        ev.oracle[n] = cache.oracle[m]
        ev.notional += notional
        ev.maintenance += maintenance
        ev.initial += initial
        ev.equity += upnl
        n += 1
    ev.n = n
    return ev
