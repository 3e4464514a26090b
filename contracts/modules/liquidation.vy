# pragma version ~=0.4.3
"""
@title margincall liquidation: the tranche plan and its execution
@custom:contract-name liquidation
@notice `_plan_from` works out one tranche in memory from its inputs
        alone (the engine and the lens share it; the engine's `_liquidate`
        feeds it from storage); `_execute` writes a plan: positions, the
        markets' rolling windows, the open interest and the account, with
        one PositionChanged per position and one Liquidation event.
@custom:security Internal only; keepers are untrusted: the plan is computed
        here from storage and prices, never taken from the caller.
"""

from . import fixed_point
from . import margin
from . import risk
from . import ledger

uses: risk
uses: ledger

_WAD: constant(uint256) = fixed_point._WAD
_IWAD: constant(int256) = fixed_point._IWAD
_MAX_POSITIONS: constant(uint256) = margin._MAX_POSITIONS
_MASK48: constant(uint256) = 2**48 - 1
_MASK104: constant(uint256) = 2**104 - 1

# plan outcomes
_OK: constant(uint8) = 0
_NOT_LIQUIDATABLE: constant(uint8) = 1
_TOO_SOON: constant(uint8) = 2
_WINDOW_FULL: constant(uint8) = 3
# a window-capped tranche must close at least 1/_SLIVER_DIV of the fraction
# it wants (and min_position_notional), else it is refused as WINDOW_FULL
_SLIVER_DIV: constant(uint256) = 4


struct Plan:
    code: uint8
    state: uint8
    full: bool
    fraction: uint256
    closed: int256[_MAX_POSITIONS]
    realized: int256[_MAX_POSITIONS]
    after: margin.Pos[_MAX_POSITIONS]
    closed_notional: uint256
    penalty: uint256  # token units
    keeper_reward: uint256  # token units
    fund_fee: uint256  # token units
    pool_net: int256  # token units, > 0 engine pays pool, < 0 pool pays engine
    deficit: uint256  # token units
    returned: uint256  # token units: the parked call reward put back
    collateral_after: uint256  # token units
    equity_after: int256
    maintenance_after: uint256
    ratio_after: uint256
    clears_call: bool


event Liquidation:
    account: indexed(address)
    keeper: indexed(address)
    tranche: uint256
    state: uint8
    fraction: uint256
    closed_notional: uint256
    penalty: uint256
    keeper_reward: uint256
    fund_fee: uint256
    collateral: uint256
    equity_after: int256
    ratio_after: uint256
    full_close: bool


event BadDebt:
    account: indexed(address)
    amount: uint256
    paid_by_fund: uint256
    socialised: uint256


@view
@internal
def _plan_from(
    acct: margin.Acct,
    ev: margin.Eval,
    p: margin.RiskParams,
    state: uint8,
    windows: uint256[_MAX_POSITIONS],
    parked: uint256,
    scale: uint256,
    unpriced: uint256,
) -> Plan:
    """
    @dev One tranche of an account in `state`: CRITICAL and BANKRUPT close
         fully; LIQUIDATABLE closes the fraction of `margin._tranche_fraction`
         (at most close_factor) after the tranche interval, shrunk to each
         market's window room (rounded down: never past a cap) and refused
         as WINDOW_FULL when that leaves a sliver; a tranche pays
         liquidation_penalty / 3, a full close all of it. Per
         position: closed size truncated toward zero, closed cost rounded
         up, realised PnL rounded down. Token flows each rounded against the
         account: realised PnL down, penalty up, the keeper's share down. A
         bankrupt close pays the keeper min_keeper_reward out of the
         deficit (its `deficit` includes the reward). `parked` (token
         units) is the account's parked call reward: at ratio < 1 it goes
         back to the collateral before the flows (`returned`), so a
         bankrupt close's deficit is smaller by exactly that much.
         `unpriced` (market bitmap, see `ledger._try_prices`): those legs
         are valued at their worst case and stay open (their window caps
         still bound the fraction; a window fills only by closes); the
         tranche closes the priced legs only (an account without one is
         refused before, in `ledger._try_prices`). While one is open no
         deficit is booked: the shortfall (with the keeper's minimum
         reward) is carried into the last unpriced leg's open notional,
         owed to the pool when that leg closes (docs/design.md).
    """
    plan: Plan = empty(Plan)
    plan.state = state
    if state < margin._LIQUIDATABLE:
        plan.code = _NOT_LIQUIDATABLE
        return plan
    plan.full = state >= margin._CRITICAL
    f: uint256 = _WAD
    capped: bool = False
    rate: uint256 = p.liquidation_penalty
    if not plan.full:
        if acct.last_tranche != 0 and block.timestamp < acct.last_tranche + p.tranche_interval:
            plan.code = _TOO_SOON
            return plan
        f = margin._tranche_fraction(ev, p, scale)
        want: uint256 = f
        # cascade protection: the per-market rolling window cap
        for i: uint256 in range(_MAX_POSITIONS):
            if i == ev.n:
                break
            w: uint256 = windows[i]
            used: uint256 = self._window_used(w, p.liquidation_window)
            cap: uint256 = w >> 152
            if used >= cap:
                plan.code = _WINDOW_FULL
                return plan
            size: int256 = ev.pos[i].size
            notional: uint256 = fixed_point._mul_up(
                convert(max(size, unsafe_sub(0, size)), uint256), ev.px[i]
            )
            # round the allowed fraction down: never past the cap
            room: uint256 = (cap - used) * _WAD // notional
            if room < f:
                f = room
                capped = True
        if capped and (
            f < want // _SLIVER_DIV or ev.notional * f // _WAD < p.min_position_notional
        ):
            # a sliver (under a quarter of the tranche wanted, or under
            # min_position_notional) would only stamp the interval: refused
            f = 0
        if f == 0:
            plan.code = _WINDOW_FULL
            return plan
        rate = rate // margin._TRANCHE_PENALTY_DIV
    plan.fraction = f

    realized: int256 = 0
    maintenance: uint256 = 0
    upnl: int256 = 0
    carry_i: uint256 = 0
    for i: uint256 in range(_MAX_POSITIONS):
        if i == ev.n:
            break
        pos: margin.Pos = ev.pos[i]
        iprice: int256 = convert(ev.px[i], int256)
        closed: int256 = pos.size
        closed_cost: int256 = pos.cost
        if (unpriced >> ev.mids[i]) & 1 == 1:
            # an unpriced leg stays open, valued at its worst case
            closed = 0
            closed_cost = 0
            carry_i = i
        elif not plan.full:
            # truncated toward zero: never closes more than asked
            closed = pos.size * convert(f, int256) // _IWAD
            closed_cost = fixed_point._div_ceil(pos.cost * closed, pos.size)
        r: int256 = fixed_point._div_floor(closed * iprice, _IWAD) - closed_cost
        plan.closed[i] = closed
        plan.realized[i] = r
        realized += r
        plan.closed_notional += fixed_point._mul_up(
            convert(max(closed, unsafe_sub(0, closed)), uint256), ev.px[i]
        )
        rest: margin.Pos = margin.Pos(size=pos.size - closed, cost=pos.cost - closed_cost)
        plan.after[i] = rest
        if rest.size != 0:
            notional: uint256 = fixed_point._mul_up(
                convert(max(rest.size, unsafe_sub(0, rest.size)), uint256), ev.px[i]
            )
            maintenance += fixed_point._mul_up(notional, ev.mmr[i])
            upnl += fixed_point._div_floor(rest.size * iprice, _IWAD) - rest.cost

    # token flows, in token units, each rounded against the account
    realized_tok: int256 = fixed_point._wad_to_token_signed(realized, scale)
    # the caller forfeits its parked reward when the account is insolvent
    collateral: uint256 = acct.collateral
    if parked != 0 and fixed_point._ratio(ev.equity, ev.maintenance) < _WAD:
        plan.returned = parked
        collateral += parked
    balance: int256 = convert(collateral, int256) + realized_tok
    if balance <= 0:
        # bankrupt: the keeper is still paid min_keeper_reward, as part of the
        # deficit: the collateral goes to the pool less that reward, and the
        # fund covers the deficit (the pool bears what the fund cannot)
        reward: uint256 = p.min_keeper_reward // scale
        plan.keeper_reward = reward
        plan.pool_net = convert(collateral, int256) - convert(reward, int256)
        plan.deficit = convert(-balance, uint256) + reward
        plan.collateral_after = 0
        if unpriced != 0:
            # no bad debt while a leg is unpriced: carried into an unpriced
            # leg's open notional (owed to the pool when that leg closes)
            carry: int256 = convert(plan.deficit * scale, int256)
            plan.after[carry_i].cost += carry
            upnl -= carry
            plan.deficit = 0
    else:
        plan.pool_net = -realized_tok
        penalty: uint256 = min(
            fixed_point._to_token_up(fixed_point._mul_up(plan.closed_notional, rate), scale),
            convert(balance, uint256),
        )
        share: uint256 = plan.closed_notional * rate // _WAD * p.keeper_share // _WAD // scale
        reward: uint256 = max(share, p.min_keeper_reward // scale)
        reward = min(reward, p.max_keeper_reward // scale)
        reward = min(reward, penalty)
        plan.penalty = penalty
        plan.keeper_reward = reward
        plan.fund_fee = penalty - reward
        plan.collateral_after = convert(balance, uint256) - penalty
    plan.equity_after = convert(plan.collateral_after * scale, int256) + upnl
    plan.maintenance_after = maintenance
    plan.ratio_after = fixed_point._ratio(plan.equity_after, maintenance)
    # a tranche shrunk by the window cap can be so small that the token-unit
    # roundings outweigh it: one that would lower the ratio waits for room
    if capped and plan.ratio_after < fixed_point._ratio(ev.equity, ev.maintenance):
        plan.code = _WINDOW_FULL
    plan.clears_call = acct.deadline != 0 and (plan.full or plan.ratio_after >= p.call_ratio)
    return plan


@view
@internal
def _window_used(w: uint256, window: uint256) -> uint256:
    """
    @dev The notional liquidated in a window word's current window (0 once
         `window` seconds have passed since its start).
    """
    if block.timestamp >= (w & _MASK48) + window:
        return 0
    return (w >> 48) & _MASK104


@internal
def _window_add(market_id: uint256, notional: uint256, window: uint256):
    """
    @dev Adds a tranche's notional to the market's window, starting a new
         window when the last one is over.
    """
    w: uint256 = risk._window[market_id]
    start: uint256 = w & _MASK48
    used: uint256 = (w >> 48) & _MASK104
    if block.timestamp >= start + window:
        start = block.timestamp
        used = 0
    # used + notional <= cap < 2**104: a tranche is shrunk to the cap's room
    risk._window[market_id] = start | ((used + notional) << 48) | ((w >> 152) << 152)


@internal
def _execute(
    account: address,
    acct_in: margin.Acct,
    ev: margin.Eval,
    plan: Plan,
    keeper: address,
    window: uint256,
    scale: uint256,
):
    """
    @dev Writes a plan: each position (and its window), the open interest,
         the account (its call cleared by a full close or a tranche back at
         call_ratio), with their events. Token moves are the caller's.
    """
    acct: margin.Acct = acct_in
    # an unpriced leg's open notional can grow (a carried shortfall)
    oi: uint256 = ledger.open_interest
    for i: uint256 in range(_MAX_POSITIONS):
        if i == ev.n:
            break
        m: uint256 = ev.mids[i]
        rest: margin.Pos = plan.after[i]
        if rest.size == 0:
            rest.cost = 0
            acct.markets &= ~(1 << m)
        cost: int256 = ev.pos[i].cost
        oi = (
            oi
            + convert(max(rest.cost, unsafe_sub(0, rest.cost)), uint256)
            - convert(max(cost, unsafe_sub(0, cost)), uint256)
        )
        ledger._store_pos(account, m, rest)
        if not plan.full:
            closed: int256 = plan.closed[i]
            closed_notional: uint256 = fixed_point._mul_up(
                convert(max(closed, unsafe_sub(0, closed)), uint256), ev.px[i]
            )
            self._window_add(m, closed_notional, window)
        log ledger.PositionChanged(
            account=account,
            market_id=m,
            size=rest.size,
            open_notional=rest.cost,
            price=ev.px[i],
            size_delta=-plan.closed[i],
            realized_pnl=fixed_point._wad_to_token_signed(plan.realized[i], scale),
            fee=0,
            collateral=plan.collateral_after,
        )
    ledger.open_interest = oi
    acct.collateral = plan.collateral_after
    acct.last_tranche = block.timestamp
    tranche: uint256 = acct.tranches + 1
    acct.tranches = tranche
    if plan.clears_call or plan.full:
        acct.deadline = 0
        acct.tranches = 0
    ledger._store(account, acct)
    log Liquidation(
        account=account,
        keeper=keeper,
        tranche=tranche,
        state=plan.state,
        fraction=plan.fraction,
        closed_notional=plan.closed_notional,
        penalty=plan.penalty,
        keeper_reward=plan.keeper_reward,
        fund_fee=plan.fund_fee,
        collateral=plan.collateral_after,
        equity_after=plan.equity_after,
        ratio_after=plan.ratio_after,
        full_close=plan.full,
    )
    if plan.clears_call and not plan.full:
        log ledger.MarginCallCleared(
            account=account,
            caller=keeper,
            equity=plan.equity_after,
            maintenance=plan.maintenance_after,
            ratio=plan.ratio_after,
        )
