"""Reference math of the margin engine, in pure Python.

Mirrors MarginEngine.vy to the wei, rounding included, so bots can decide
without a chain and tests can check the contract against an independent
implementation. Every value is an integer: wad (18 decimals) for values and
ratios, token units for collateral.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from margincall.constants import WAD, State

MAX_UINT = 2**256 - 1
# a tranche (not a full close) pays liquidation_penalty // TRANCHE_PENALTY_DIV (margin.vy)
TRANCHE_PENALTY_DIV = 3
# a window-capped tranche under 1/SLIVER_DIV of the fraction it wants is refused (liquidation.vy)
SLIVER_DIV = 4
# liquidation's worst case of a stale answer (OracleAdapter.worst_price): moved against the
# holder by HAIRCUT_STEP per whole heartbeat of its age, at most HAIRCUT_CAP (wad)
HAIRCUT_STEP = 2 * 10**16
HAIRCUT_CAP = 50 * 10**16


def div_floor(a: int, b: int) -> int:
    """a / b rounded toward minus infinity (b > 0)."""
    return a // b


def div_ceil(a: int, b: int) -> int:
    """a / b rounded toward plus infinity (b != 0)."""
    return -((-a) // b)


def div_trunc(a: int, b: int) -> int:
    """a / b rounded toward zero, as the EVM's SDIV does."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def mul_up(a: int, b: int) -> int:
    """a * b / WAD rounded up (a, b >= 0)."""
    return (a * b + WAD - 1) // WAD


@dataclass(frozen=True)
class RiskParams:
    """Global risk parameters, as `MarginEngine.risk_params()` returns them."""

    call_ratio: int = 125 * 10**16
    critical_ratio: int = WAD
    grace_period: int = 3_600
    close_factor: int = 25 * 10**16
    tranche_interval: int = 60
    liquidation_penalty: int = 15 * 10**15
    keeper_share: int = 2 * 10**17
    min_keeper_reward: int = 10**18
    max_keeper_reward: int = 1_000 * 10**18
    call_reward: int = 10**18
    liquidation_window: int = 300
    min_position_notional: int = 10 * 10**18

    def as_tuple(self) -> tuple[int, ...]:
        return tuple(getattr(self, f) for f in self.__dataclass_fields__)


@dataclass(frozen=True)
class Position:
    market_id: int
    size: int  # wad of base asset, signed
    cost: int  # open notional, wad, signed
    price: int  # oracle price, wad (an unpriced leg: its worst case for its side)
    mmr: int
    imr: int
    # the most favourable valid price of the market's feed since the account's call (or its
    # last tranche, if later): `OracleAdapter.best_since(call_since(...), size > 0)`; 0: none
    # (or not looked up). Only a call past its deadline reads it (`recovered`).
    best: int = 0
    # no valid price: liquidation values it at `price` (`worst_price`), never closes it
    unpriced: bool = False

    @property
    def notional(self) -> int:
        return mul_up(abs(self.size), self.price)

    @property
    def pnl(self) -> int:
        return div_floor(self.size * self.price, WAD) - self.cost


@dataclass(frozen=True)
class Account:
    collateral: int  # token units
    positions: tuple[Position, ...] = ()
    deadline: int = 0
    last_tranche: int = 0
    tranches: int = 0
    # the margin-call reward parked under the live call (token units): taken from the
    # collateral by the call, paid to the caller or returned when the call ends
    parked_reward: int = 0


@dataclass(frozen=True)
class Valuation:
    equity: int
    notional: int
    maintenance: int
    initial: int

    @property
    def ratio(self) -> int:
        return ratio(self.equity, self.maintenance)


def ratio(equity: int, maintenance: int) -> int:
    if maintenance == 0:
        return MAX_UINT
    if equity <= 0:
        return 0
    return equity * WAD // maintenance


def evaluate(account: Account, scale: int) -> Valuation:
    """Equity, notional, maintenance and initial margin (engine `_evaluate`)."""
    equity = account.collateral * scale
    notional = maintenance = initial = 0
    for p in account.positions:
        n = p.notional
        notional += n
        maintenance += mul_up(n, p.mmr)
        initial += mul_up(n, p.imr)
        equity += p.pnl
    return Valuation(equity, notional, maintenance, initial)


def worst_price(
    last: int | None, updated_at: int, now: int, heartbeat: int, min_price: int, max_price: int
) -> tuple[int, int]:
    """Liquidation's value of a market without a valid price, for a long and a short holder
    (`OracleAdapter.worst_price`): `last` (wad; None when no answer is usable) moved against
    the holder by HAIRCUT_STEP per whole heartbeat of its age, capped at HAIRCUT_CAP, kept in
    the bounds; the bounds with no usable answer."""
    if last is None:
        return min_price, max_price
    cut = min((now - updated_at) // heartbeat * HAIRCUT_STEP, HAIRCUT_CAP)
    return (
        max(last * (WAD - cut) // WAD, min_price),
        min(div_ceil(last * (WAD + cut), WAD), max_price),
    )


def call_live(account: Account, params: RiskParams, now: int) -> bool:
    return account.deadline != 0 and now < account.deadline + params.grace_period


def call_since(account: Account, params: RiskParams) -> int:
    """Since when a call past its deadline looks for a recovery (OracleAdapter `recovered`):
    the call time (`deadline - grace_period`), or the last tranche if later."""
    return max((account.deadline - params.grace_period) % 2**256, account.last_tranche)


def recovered(account: Account, params: RiskParams, scale: int) -> bool:
    """Whether the account's call cleared itself (OracleAdapter `recovered`): its holdings,
    each leg at its `best` price since the call where that is better for the holder than
    the current one, back at `call_ratio`."""
    equity = account.collateral * scale
    maintenance = 0
    for p in account.positions:
        price = p.price
        if p.best and (p.best > p.price) == (p.size > 0):
            price = p.best
        maintenance += mul_up(mul_up(abs(p.size), price), p.mmr)
        equity += div_floor(p.size * price, WAD) - p.cost
    return ratio(equity, maintenance) >= params.call_ratio


def tranche_fraction(v: Valuation, params: RiskParams, scale: int, positions: int) -> int:
    """Smallest fraction restoring the call ratio, capped at the close factor, at the
    tranche penalty (`liquidation_penalty // TRANCHE_PENALTY_DIV`).

    Equity is reduced by the worst case of the tranche's roundings against the
    account (two token units and a few wei per position), as the engine does.
    """
    equity = v.equity - (2 * scale + 8 * positions + 8)
    cm = params.call_ratio * v.maintenance
    num = cm - equity * WAD
    den = cm - params.liquidation_penalty // TRANCHE_PENALTY_DIV * v.notional
    if num <= 0:
        return 0
    if den <= 0:
        return params.close_factor
    return min(div_ceil(num * WAD, den), params.close_factor)


def classify(account: Account, v: Valuation, params: RiskParams, now: int, scale: int) -> State:
    """The account's state (engine `_classify`)."""
    if not account.positions:
        return State.HEALTHY
    if v.equity <= 0:
        return State.BANKRUPT
    r = v.ratio
    if r < params.critical_ratio:
        return State.CRITICAL
    if r >= params.call_ratio:
        return State.HEALTHY
    if r >= WAD:
        if not call_live(account, params, now):
            return State.CALLABLE
        if now < account.deadline:
            return State.CALLED
        # past the deadline: a call that cleared itself needs a fresh call
        if recovered(account, params, scale):
            return State.CALLABLE
    f = tranche_fraction(v, params, scale, len(account.positions))
    if v.notional - v.notional * f // WAD < params.min_position_notional:
        return State.CRITICAL
    return State.LIQUIDATABLE


@dataclass
class Tranche:
    """What one `liquidate` would do (engine `_plan`), token amounts in token units."""

    state: State
    full: bool
    fraction: int
    closed_sizes: list[int] = field(default_factory=list)
    closed_notional: int = 0
    penalty: int = 0
    keeper_reward: int = 0
    fund_fee: int = 0
    deficit: int = 0
    returned: int = 0  # the parked call reward put back in the collateral (ratio < 1)
    carried: int = 0  # wad: a shortfall carried into an unpriced leg's open notional
    collateral_after: int = 0
    equity_after: int = 0
    ratio_after: int = 0


def plan_tranche(
    account: Account,
    params: RiskParams,
    scale: int,
    now: int,
    window_room: dict[int, int] | None = None,
) -> Tranche | None:
    """The next tranche, or None when `liquidate` would revert.

    `window_room` maps market id to what the market's window cap still admits
    (wad notional); omitted markets are unconstrained. Unpriced legs (`Position.unpriced`)
    stay open and the priced ones close (none priced: None); a shortfall while one is open
    is carried into the last unpriced leg's open notional instead of booked (`carried`).
    """
    unpriced = [p for p in account.positions if p.unpriced]
    if unpriced and len(unpriced) == len(account.positions):
        return None
    v = evaluate(account, scale)
    state = classify(account, v, params, now, scale)
    if state < State.LIQUIDATABLE:
        return None
    full = state >= State.CRITICAL
    f = WAD
    capped = False
    rate = params.liquidation_penalty
    if not full:
        if account.last_tranche and now < account.last_tranche + params.tranche_interval:
            return None
        f = want = tranche_fraction(v, params, scale, len(account.positions))
        for p in account.positions:
            room = (window_room or {}).get(p.market_id)
            if room is not None:
                if room <= 0:
                    return None
                allowed = room * WAD // p.notional
                if allowed < f:
                    f, capped = allowed, True
        # a window-capped sliver only stamps the interval: refused (WINDOW_FULL)
        if capped and (
            f < want // SLIVER_DIV or v.notional * f // WAD < params.min_position_notional
        ):
            return None
        if f == 0:
            return None
        rate //= TRANCHE_PENALTY_DIV
    t = Tranche(state=state, full=full, fraction=f)
    realized = maintenance = upnl = 0
    for p in account.positions:
        closed, closed_cost = p.size, p.cost
        if p.unpriced:
            closed = closed_cost = 0
        elif not full:
            closed = div_trunc(p.size * f, WAD)
            closed_cost = div_ceil(p.cost * closed, p.size)
        realized += div_floor(closed * p.price, WAD) - closed_cost
        t.closed_sizes.append(closed)
        t.closed_notional += mul_up(abs(closed), p.price)
        rest_size, rest_cost = p.size - closed, p.cost - closed_cost
        if rest_size:
            maintenance += mul_up(mul_up(abs(rest_size), p.price), p.mmr)
            upnl += div_floor(rest_size * p.price, WAD) - rest_cost
    _book_flows(t, account, v, params, scale, div_floor(realized, scale), rate, bool(unpriced))
    upnl -= t.carried
    t.equity_after = t.collateral_after * scale + upnl
    t.ratio_after = ratio(t.equity_after, maintenance)
    if capped and t.ratio_after < ratio(v.equity, v.maintenance):
        return None  # a window-capped sliver whose roundings would lower the ratio
    return t


def _book_flows(
    t: Tranche,
    account: Account,
    v: Valuation,
    params: RiskParams,
    scale: int,
    realized_tok: int,
    rate: int,
    unpriced: bool,
) -> None:
    """A tranche's token flows (engine `_plan_from`), each rounded against the account."""
    # below ratio 1 the caller forfeits its parked reward: back to the collateral first
    if account.parked_reward and v.ratio < WAD:
        t.returned = account.parked_reward
    balance = account.collateral + t.returned + realized_tok
    if balance <= 0:
        # bankrupt: the keeper still gets min_keeper_reward, as part of the deficit
        t.keeper_reward = params.min_keeper_reward // scale
        t.deficit = -balance + t.keeper_reward
        t.collateral_after = 0
        if unpriced:
            # no bad debt while a leg is unpriced: owed to the pool when it closes
            t.carried = t.deficit * scale
            t.deficit = 0
        return
    penalty = min(div_ceil(mul_up(t.closed_notional, rate), scale), balance)
    share = (t.closed_notional * rate // WAD * params.keeper_share // WAD) // scale
    reward = max(share, params.min_keeper_reward // scale)
    reward = min(reward, params.max_keeper_reward // scale, penalty)
    t.penalty, t.keeper_reward, t.fund_fee = penalty, reward, penalty - reward
    t.collateral_after = balance - penalty


def scaled_call_reward(notional: int, params: RiskParams) -> int:
    """The margin-call reward before the account's cuts (wad): the keeper's share of the
    penalty of the `close_factor` tranche of `notional` that the call stands in for (at the
    tranche rate, `liquidation_penalty // TRANCHE_PENALTY_DIV`), at least `call_reward`, at
    most `max_keeper_reward` (engine `_margin_call`)."""
    p = params
    rate = p.liquidation_penalty // TRANCHE_PENALTY_DIV
    scaled = notional * p.close_factor // WAD * rate // WAD * p.keeper_share // WAD
    return min(max(scaled, p.call_reward), p.max_keeper_reward)


def call_reward(account: Account, params: RiskParams, scale: int) -> int:
    """What `margin_call` takes from a CALLABLE account for the caller (token units):
    `scaled_call_reward` of its notional, but never more than the collateral, nor so much
    that equity falls below maintenance (a call must not make the account liquidatable)."""
    v = evaluate(account, scale)
    room, need = v.equity // scale, div_ceil(v.maintenance, scale)
    if room <= need:
        return 0
    return min(scaled_call_reward(v.notional, params) // scale, room - need, account.collateral)


# --- cures: what brings a called account back to the call ratio ----------------------------


def cure_deposit(account: Account, params: RiskParams, scale: int) -> int:
    """Token units whose deposit brings the ratio to at least `call_ratio` (0: already there,
    or no position). `ratio >= call_ratio` is `equity * WAD >= call_ratio * maintenance`
    (the engine floors the ratio), so equity must reach `call_ratio * maintenance` rounded up;
    the deposit is rounded up to whole token units."""
    v = evaluate(account, scale)
    if v.maintenance == 0:
        return 0
    need = mul_up(params.call_ratio, v.maintenance) - v.equity
    return div_ceil(need, scale) if need > 0 else 0


def after_reduction(account: Account, market_id: int, reduce: int, fee: int, scale: int) -> Account:
    """The account after the trader reduces its position in `market_id` by `reduce` (wad of
    base asset, 0 < reduce <= |size|) at the oracle price, paying the market's `fee`: the
    engine's reduction branch of `_trade` (realised PnL floored to token units, closed cost
    rounded up, fee rounded up)."""
    out: list[Position] = []
    collateral = account.collateral
    for p in account.positions:
        if p.market_id != market_id:
            out.append(p)
            continue
        delta = -reduce if p.size > 0 else reduce
        closed_cost = div_ceil(p.cost * -delta, p.size)
        realized = div_floor(-delta * p.price, WAD) - closed_cost
        trade_fee = div_ceil(mul_up(mul_up(abs(delta), p.price), fee), scale)
        collateral += div_floor(realized, scale) - trade_fee
        if p.size + delta != 0:
            out.append(
                Position(p.market_id, p.size + delta, p.cost - closed_cost, p.price, p.mmr, p.imr)
            )
    return Account(collateral, tuple(out), account.deadline, account.last_tranche, account.tranches)


def cure_reduction(
    account: Account, market_id: int, params: RiskParams, scale: int, fee: int
) -> int | None:
    """The smallest reduction of the position in `market_id` (wad of base asset, absolute)
    that brings the ratio to at least `call_ratio`, to within 0.1% of the position; 0 when
    the account is already there; None when even closing that position does not cure it.

    Reducing leaves equity almost unchanged (it pays the fee and a few roundings) and lowers
    maintenance by `mmr` of the notional closed, so the notional to close is about
    `(call_ratio * maintenance - equity) / (call_ratio * mmr - fee)`; the estimate is then
    checked against the engine's exact accounting (`after_reduction`) and raised until it
    cures. A remainder below `min_position_notional` means the whole position must close."""
    pos = next((p for p in account.positions if p.market_id == market_id), None)
    if pos is None or pos.size == 0:
        return None

    def cured(reduce: int) -> bool:
        v = evaluate(after_reduction(account, market_id, reduce, fee, scale), scale)
        return v.maintenance == 0 or v.equity * WAD >= params.call_ratio * v.maintenance

    v = evaluate(account, scale)
    if v.maintenance == 0 or v.equity * WAD >= params.call_ratio * v.maintenance:
        return 0
    size = abs(pos.size)
    if not cured(size):
        return None
    den = mul_up(params.call_ratio, pos.mmr) - fee
    estimate = size
    if den > 0:
        gap = mul_up(params.call_ratio, v.maintenance) - v.equity + 2 * scale + 16
        estimate = min(size, div_ceil(div_ceil(gap * WAD, den) * WAD, pos.price))
    step = max(size // 1_000, 1)
    reduce = estimate
    for _ in range(1_000):
        if reduce >= size or cured(reduce):
            break
        reduce += step
    reduce = min(reduce, size)
    if reduce < size and mul_up(size - reduce, pos.price) < params.min_position_notional:
        return size
    return reduce
