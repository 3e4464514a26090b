# pragma version ~=0.4.3
"""
@title margincall margin engine
@notice Holds traders' collateral, keeps their cross-margined perpetual
        positions, records health-triggered margin calls with a deadline,
        and liquidates in phased tranches through permissionless keepers.
        PnL settles against the LiquidityPool; penalties feed the
        InsuranceFund, which absorbs bad debt before the pool does.

        This is the thin deployable: the logic lives in the modules of
        contracts/modules/ (fixed_point, margin, risk, ledger,
        liquidation), which it initializes; it adds the trader, margin-call
        and liquidation entry points, the token moves and `check_margin`.
        The batched and preview views are on MarginLens.vy.

        Fixed point: every value and ratio is an 18-decimal "wad" inside;
        collateral balances are kept in the token's own units and converted
        at the edge with `SCALE = 10**(18 - decimals)`. Each division states
        its rounding; all of them round against the account and the keeper,
        never against the pool or the fund.
@custom:security Trusts: the owner (markets, risk parameters within the
        bounds checked in `risk`, the guardian), the guardian (may pause
        new exposure only; never deposits, reductions or liquidations), the
        oracle adapters (prices), the collateral token (a plain ERC-20: short
        transfers are refused), the pool and the fund set at construction.
        Keepers are untrusted: every liquidation is checked here.
"""

from ethereum.ercs import IERC20
from ethereum.ercs import IERC20Detailed
from interfaces import ILiquidityPool
from interfaces import IInsuranceFund
from interfaces import IMarginEngine

implements: IMarginEngine

from snekmate.auth import ownable
from snekmate.auth import ownable_2step
from modules import fixed_point
from modules import margin
from modules import risk
from modules import ledger
from modules import liquidation

initializes: ownable
initializes: ownable_2step[ownable := ownable]
initializes: risk[ownable := ownable]
initializes: ledger[risk := risk]
initializes: liquidation[risk := risk, ledger := ledger]

exports: (
    # `owner`, `pending_owner`, `transfer_ownership`, `accept_ownership`,
    # `renounce_ownership`: two-step ownership from snekmate.
    ownable_2step.owner,
    ownable_2step.pending_owner,
    ownable_2step.transfer_ownership,
    ownable_2step.accept_ownership,
    ownable_2step.renounce_ownership,
    # `guardian`, `paused`, `market_count`, `markets`, `window_state`,
    # `risk_params`, `set_market`, `set_risk_params`, `set_guardian`,
    # `set_paused`: markets, risk parameters and the pause, from `risk`.
    risk.guardian,
    risk.paused,
    risk.market_count,
    risk.markets,
    risk.window_state,
    risk.risk_params,
    risk.set_market,
    risk.set_risk_params,
    risk.set_guardian,
    risk.set_paused,
    # `open_interest`: from `ledger`.
    ledger.open_interest,
)

_WAD: constant(uint256) = fixed_point._WAD
_MAX_MARKETS: constant(uint256) = fixed_point._MAX_MARKETS
_MAX_BATCH: constant(uint256) = 100
_MASK96: constant(uint256) = 2**96 - 1

TOKEN: public(immutable(IERC20))
POOL: public(immutable(ILiquidityPool))
FUND: public(immutable(IInsuranceFund))
SCALE: public(immutable(uint256))
# the OrderBook: the only source of position changes (`fill`)
ORDER_BOOK: public(immutable(address))

# token units the engine holds for others: each keeper's liquidation and
# margin-call rewards, the fund's share of the penalties, the pool's lazily
# settled trader losses and fees (its credit); paid with `claim_rewards`
# (permissionless for the fund and the pool)
claimable: public(HashMap[address, uint256])

# each account's parked margin-call reward: caller << 96 | amount (token
# units). Taken from the account's collateral at call time, held here until
# the call ends: paid to the caller when it ends with the account solvent
# (cured, or a tranche at ratio >= 1), returned to the account's collateral
# when it is liquidated at ratio < 1 (before its deficit is computed). Read
# only while the account's deadline is set; paying out keeps the caller bits
# (the next call then writes a nonzero word). Decoded by
# `MarginLens.call_reward_of`.
parked_reward: public(HashMap[address, uint256])


event Deposit:
    account: indexed(address)
    sender: indexed(address)
    amount: uint256
    collateral: uint256


event Withdraw:
    account: indexed(address)
    amount: uint256
    collateral: uint256


event RewardsClaimed:
    keeper: indexed(address)
    caller: indexed(address)
    amount: uint256


event MarginCall:
    account: indexed(address)
    caller: indexed(address)
    deadline: uint256
    equity: int256
    maintenance: uint256
    ratio: uint256
    reward: uint256  # token units, parked until the call ends
    collateral: uint256


event CallRewardPaid:
    account: indexed(address)
    caller: indexed(address)
    amount: uint256  # token units, credited to claimable[caller]


event CallRewardReturned:
    account: indexed(address)
    caller: indexed(address)
    amount: uint256  # token units, back in the account's collateral


@deploy
def __init__(
    token: IERC20,
    pool: ILiquidityPool,
    fund: IInsuranceFund,
    guardian: address,
    checker: risk.IMarginParams,
    order_book: address,
):
    """
    @notice Deploys the engine with the default risk parameters of
            PROTOCOL.md section 2 and 3; the deployer becomes the owner.
    @param token The collateral token (6 to 18 decimals).
    @param pool The LiquidityPool, counterparty of trader PnL.
    @param fund The InsuranceFund.
    @param guardian The address that may pause new exposure.
    @param checker The MarginParams contract that checks every market and
           risk parameter the owner sets.
    @param order_book The OrderBook, the only caller of `fill`,
           `escrow_fee` and `pay_fills`: every position change settles at a
           price published after its commit.
    """
    if not (token.address != empty(address)):
        fixed_point._fail("engine: zero token")
    if not (pool.address != empty(address)):
        fixed_point._fail("engine: zero pool")
    if not (fund.address != empty(address)):
        fixed_point._fail("engine: zero fund")
    decimals: uint8 = staticcall IERC20Detailed(token.address).decimals()
    if not (decimals <= 18):
        fixed_point._fail("engine: token decimals above 18")
    if not (order_book != empty(address)):
        fixed_point._fail("engine: zero order book")
    TOKEN = token
    ORDER_BOOK = order_book
    POOL = pool
    FUND = fund
    SCALE = 10**convert(18 - decimals, uint256)
    ownable.__init__()
    ownable_2step.__init__()
    risk.__init__(guardian, checker)


# --- trader functions ---------------------------------------------------------


@external
@nonreentrant
def deposit(amount: uint256, account: address = msg.sender):
    """
    @notice Adds collateral to `account` (anyone may top up any account).
            Always works, whatever the oracle says. If the account is under
            a margin call and the deposit cures it, the call is cleared.
    @param amount Token units to pull from the caller.
    @param account The account credited; defaults to the caller.
    """
    if not (amount > 0):
        fixed_point._fail("engine: zero amount")
    if not (account != empty(address)):
        fixed_point._fail("engine: zero account")
    self._pull(msg.sender, amount)
    acct: margin.Acct = ledger._load(account)
    acct.collateral += amount
    if acct.deadline != 0:
        # best effort: a deposit must never fail on a bad price
        acct = self._cure(account, acct, False)
    ledger._store(account, acct)
    log Deposit(account=account, sender=msg.sender, amount=amount, collateral=acct.collateral)


@external
@nonreentrant
def withdraw(amount: uint256):
    """
    @notice Withdraws collateral, only down to the initial margin of the
            open positions, never while a margin call stands.
    @param amount Token units to send to the caller.
    """
    if not (amount > 0):
        fixed_point._fail("engine: zero amount")
    acct: margin.Acct = ledger._load(msg.sender)
    if not (amount <= acct.collateral):
        fixed_point._fail("engine: amount exceeds collateral")
    acct.collateral -= amount
    if acct.markets != 0:
        prices: uint256[_MAX_MARKETS] = risk._prices(acct.markets)
        ev: margin.Eval = ledger._evaluate(msg.sender, acct, prices, SCALE)
        if acct.deadline != 0:
            ev_before: int256 = ev.equity + convert(amount * SCALE, int256)
            if fixed_point._ratio(ev_before, ev.maintenance) >= risk._p_call_ratio():
                acct = self._clear(msg.sender, acct, ev.equity, ev.maintenance)
            else:
                fixed_point._fail("engine: under margin call")
        if not (ev.equity >= convert(ev.initial, int256)):
            fixed_point._fail("engine: insufficient margin")
    ledger._store(msg.sender, acct)
    self._push(msg.sender, amount)
    log Withdraw(account=msg.sender, amount=amount, collateral=acct.collateral)


@external
@nonreentrant
def escrow_fee(account: address, amount: int256):
    """
    @notice Moves an order's settlement fee between `account`'s collateral
            and the order book's escrow (the tokens stay in the engine):
            a positive amount is taken (at commit), a negative one refunded
            (order cancelled). No margin check: the fee is bounded by the
            book (docs/design.md, Orders). Order book only.
    @param account The trader.
    @param amount The fee, token units: positive to take, negative to refund.
    """
    self._only_book()
    acct: margin.Acct = ledger._load(account)
    balance: int256 = convert(acct.collateral, int256) - amount
    if not (balance >= 0):
        fixed_point._fail("engine: fee exceeds collateral")
    acct.collateral = convert(balance, uint256)
    ledger._store(account, acct)


@external
@nonreentrant
def fill(account: address, market_id: uint256, size_delta: int256, price: uint256) -> int256:
    """
    @notice Opens, increases, reduces or flips `account`'s position at
            `price`, the settlement price of an order. New exposure needs
            initial margin (at `price` for this market), an active market,
            no pause and no margin call; reductions are always allowed. The
            pool is settled later, netted over a batch, by `pay_fills` in
            the same transaction. Order book only.
    @param account The trader.
    @param market_id The market.
    @param size_delta Signed change of the position size (wad).
    @param price The settlement price (wad).
    @return What the pool is owed (positive) or owes (negative), token units.
    """
    self._only_book()
    return self._trade(account, market_id, size_delta, price)


@external
@nonreentrant
def pay_fills(pool_net: int256, settler: address, fees: uint256):
    """
    @notice Settles a batch of fills with the pool (netted) and pays the
            escrowed settlement fees to the settler. Order book only.
    @param pool_net Sum of `fill` results, token units.
    @param settler Receiver of the fees.
    @param fees Sum of the settled orders' escrowed fees, token units.
    """
    self._only_book()
    self._settle_pool(pool_net)
    if fees > 0:
        self._push(settler, fees)


# --- margin calls ---------------------------------------------------------------


@external
@nonreentrant
def margin_call(account: address):
    """
    @notice Records a margin call on a CALLABLE account (1 <= ratio <
            call_ratio, no live call): a public notice with a deadline
            `grace_period` from now. Takes the caller's reward from the
            account's collateral and parks it until the call ends: paid to
            the caller if the account ends it solvent (cured, or a tranche
            at ratio >= 1), returned to the account if it is liquidated at
            ratio < 1.
    @param account The account to call.
    """
    self._call([account], True)


@external
@nonreentrant
def margin_call_many(accounts: DynArray[address, _MAX_BATCH]) -> uint256:
    """
    @notice Calls every CALLABLE account of the list in one transaction,
            skipping the others (and those whose prices are invalid).
            Each reward is parked as `margin_call` parks it.
    @param accounts The accounts to try.
    @return The number of accounts called.
    """
    return self._call(accounts, False)


@external
@nonreentrant
def clear_margin_call(account: address):
    """
    @notice Clears a recorded margin call once the account's ratio is back
            at or above `call_ratio`. Anyone may call it.
    @param account The account.
    """
    acct: margin.Acct = ledger._load(account)
    if not (acct.deadline != 0):
        fixed_point._fail("engine: no margin call")
    acct = self._cure(account, acct, True)
    if not (acct.deadline == 0):
        fixed_point._fail("engine: still under-margined")
    ledger._store(account, acct)


# --- liquidation ---------------------------------------------------------------


@external
@nonreentrant
def liquidate(account: address) -> uint256:
    """
    @notice Closes one tranche of a LIQUIDATABLE account, pro rata across
            its positions at the oracle price: the smallest fraction that
            restores `call_ratio`, at most `close_factor`. CRITICAL and
            BANKRUPT accounts (and tranches that would leave dust) close
            fully. Pays the caller its share of the penalty.
    @param account The account to liquidate.
    @return The closed notional (wad).
    """
    return self._liquidate([account], True)[1]


@external
@nonreentrant
def liquidate_many(accounts: DynArray[address, _MAX_BATCH]) -> uint256:
    """
    @notice Liquidates one tranche of every eligible account of the list,
            skipping those no longer eligible (or whose prices are invalid)
            instead of reverting. Token movements are netted and paid once.
    @param accounts The accounts to try.
    @return The number of accounts liquidated.
    """
    return self._liquidate(accounts, False)[0]


# --- accrued rewards ---------------------------------------------------------------


@external
@nonreentrant
def claim_rewards(keeper: address) -> uint256:
    """
    @notice Sends `keeper` everything it has accrued: a keeper's liquidation
            and margin-call rewards, or the insurance fund's share of the
            penalties (`claim_rewards(FUND)`, the fund's sweep). Anyone may
            call it for anyone: the tokens only ever go to `keeper`. A
            bankrupt close sweeps the fund first, so a deficit always sees
            all of its share. A zero claim does nothing.
    @param keeper The account whose accrued balance (`claimable`) is paid.
    @return The amount sent, in token units.
    """
    return self._claim(keeper)


# --- views ---------------------------------------------------------------


@view
@external
def check_margin(account: address) -> margin.MarginStatus:
    """
    @notice The account's margin status at current oracle prices. Reverts
            with the oracle's reason if a needed price is invalid.
    @param account The account.
    @return Collateral, equity, maintenance, initial, ratio, state, live call
            deadline, next tranche time, number of positions.
    """
    acct: margin.Acct = ledger._load(account)
    return margin._status(
        account,
        acct,
        ledger._evaluate(account, acct, risk._prices(acct.markets), SCALE),
        risk._params_without_rewards(),
        True,
        SCALE,
    )


@view
@external
def position(account: address, market_id: uint256) -> (int256, int256):
    """
    @notice An account's position in one market.
    @param account The account.
    @param market_id The market.
    @return The size (wad of base asset, signed) and the open notional (wad,
            signed: size times average entry price).
    """
    pos: margin.Pos = ledger._load_pos(account, market_id)
    return pos.size, pos.cost


@view
@external
def account_info(account: address) -> (uint256, uint256, uint256, uint256, uint256):
    """
    @notice The raw account record.
    @param account The account.
    @return Collateral (token units), market bitmap, recorded call deadline
            (0 if none), last tranche time, tranches since the call.
    """
    acct: margin.Acct = ledger._load(account)
    return acct.collateral, acct.markets, acct.deadline, acct.last_tranche, acct.tranches


@view
@external
def collateral_of(account: address) -> uint256:
    """
    @notice The account's collateral balance, in token units.
    @param account The account.
    @return The balance.
    """
    return ledger._account[account] >> 144


# --- internal: trading ---------------------------------------------------------------


@internal
def _trade(account: address, market_id: uint256, size_delta: int256, price: uint256) -> int256:
    """
    @dev A fill at `price` (the order book checked it is the first valid
         price after the commit and within the slippage bound). Increase: open
         notional += ceil(delta * price). Reduction: closed cost = ceil(cost *
         closed / size), realised PnL = floor(closed * price) - closed cost.
         Flip: the old position closes at floor(size * price), the new one opens
         at ceil(size * price). Fee = ceil(ceil(|delta| * price) * fee) in token
         units, realised PnL in token units rounded down: both against the
         trader. Returns what the pool is owed (fee - realised PnL, token
         units), settled by the caller.
    """
    if not (size_delta != 0):
        fixed_point._fail("engine: zero size")
    if not (market_id < risk.market_count):
        fixed_point._fail("engine: unknown market")
    mword: uint256 = risk._market[market_id]
    acct: margin.Acct = ledger._load(account)
    pos: margin.Pos = ledger._load_pos(account, market_id)
    iprice: int256 = convert(price, int256)

    new: margin.Pos = margin.Pos(size=pos.size + size_delta, cost=pos.cost)
    realized: int256 = 0
    # |size_delta|, written as fixed_point's docstring explains (like
    # `convert(abs(x), uint256)`, 43 bytes shorter and cheaper)
    traded_size: uint256 = convert(max(size_delta, unsafe_sub(0, size_delta)), uint256)
    # the part of `size_delta` that opens exposure (all of it unless it
    # reduces the position: then what is left after closing, on a flip)
    opened: int256 = size_delta
    if pos.size != 0 and (pos.size > 0) != (size_delta > 0):
        # the part of the old position closed (signed like it)
        closed: int256 = pos.size
        if traded_size <= convert(max(pos.size, unsafe_sub(0, pos.size)), uint256):
            closed = -size_delta
        closed_cost: int256 = fixed_point._div_ceil(pos.cost * closed, pos.size)
        realized = fixed_point._div_floor(closed * iprice, fixed_point._IWAD) - closed_cost
        new.cost -= closed_cost
        opened = size_delta + closed
    increases: bool = opened != 0
    if increases:
        new.cost += fixed_point._div_ceil(opened * iprice, fixed_point._IWAD)
    # dust: a position is either closed or worth at least the minimum
    p: margin.RiskParams = risk._params_without_rewards()
    if new.size != 0:
        if not (
            fixed_point._mul_up(convert(max(new.size, unsafe_sub(0, new.size)), uint256), price)
            >= p.min_position_notional
        ):
            fixed_point._fail("engine: position below minimum")
    traded: uint256 = fixed_point._mul_up(traded_size, price)
    fee: uint256 = fixed_point._to_token_up(fixed_point._mul_up(traded, risk._m_fee(mword)), SCALE)
    realized_tok: int256 = fixed_point._wad_to_token_signed(realized, SCALE)
    balance: int256 = convert(acct.collateral, int256) + realized_tok - convert(fee, int256)
    if not (balance >= 0):
        fixed_point._fail("engine: loss exceeds collateral")
    acct.collateral = convert(balance, uint256)

    # position bookkeeping
    bit: uint256 = 1 << market_id
    if new.size == 0:
        acct.markets &= ~bit
        new.cost = 0
    elif acct.markets & bit == 0:
        if not (fixed_point._popcount(acct.markets) < margin._MAX_POSITIONS):
            fixed_point._fail("engine: too many positions")
        acct.markets |= bit
    ledger.open_interest = (
        ledger.open_interest
        + convert(max(new.cost, unsafe_sub(0, new.cost)), uint256)
        - convert(max(pos.cost, unsafe_sub(0, pos.cost)), uint256)
    )
    ledger._store_pos(account, market_id, new)

    if increases:
        if risk.paused:
            fixed_point._fail("engine: paused")
        if not (risk._m_active(mword)):
            fixed_point._fail("engine: market not active")
    if increases:
        # new exposure needs every price of the account; this market's is
        # the settlement price
        prices: uint256[_MAX_MARKETS] = risk._prices(acct.markets & ~bit)
        prices[market_id] = price
        ev: margin.Eval = ledger._evaluate(account, acct, prices, SCALE)
        if acct.deadline != 0:
            if fixed_point._ratio(ev.equity, ev.maintenance) >= p.call_ratio:
                acct = self._clear(account, acct, ev.equity, ev.maintenance)
            else:
                fixed_point._fail("engine: under margin call")
        if not (ev.equity >= convert(ev.initial, int256)):
            fixed_point._fail("engine: insufficient margin")
    elif acct.deadline != 0:
        # a reduction always goes through; it clears the call when it cures
        # the account and every price is valid (best effort, never reverts)
        acct = self._cure(account, acct, False)
    ledger._store(account, acct)
    log ledger.PositionChanged(
        account=account,
        market_id=market_id,
        size=new.size,
        open_notional=new.cost,
        price=price,
        size_delta=size_delta,
        realized_pnl=realized_tok,
        fee=fee,
        collateral=acct.collateral,
    )
    return convert(fee, int256) - realized_tok


@internal
def _cure(account: address, acct: margin.Acct, strict: bool) -> margin.Acct:
    """
    @dev Clears the account's call when it is back at call_ratio. Not
         `strict` (deposits and reductions): never reverts, does nothing
         on an invalid price; `strict` reverts with the oracle's reason.
    """
    prices: uint256[_MAX_MARKETS] = empty(uint256[_MAX_MARKETS])
    ok: bool = True
    if strict:
        prices = risk._prices(acct.markets)
    else:
        unpriced: uint256 = 0
        prices, unpriced, ok = ledger._try_prices(account, acct.markets, prices, 0, False)
    if ok:
        ev: margin.Eval = ledger._evaluate(account, acct, prices, SCALE)
        if fixed_point._ratio(ev.equity, ev.maintenance) >= risk._p_call_ratio():
            return self._clear(account, acct, ev.equity, ev.maintenance)
    return acct


# --- internal: margin calls ---------------------------------------------------------------


@internal
def _clear(
    account: address, acct: margin.Acct, equity: int256, maintenance: uint256
) -> margin.Acct:
    """
    @dev Clears a cured account's call (`ledger._clear_call`), paying the
         caller its parked reward: the call ended with the account solvent.
    """
    self._release(account, self.parked_reward[account], True)
    return ledger._clear_call(account, acct, equity, maintenance)


@internal
def _release(account: address, word: uint256, pay: bool):
    """
    @dev Ends a parked call reward (`word`, the account's `parked_reward`):
         credited to the caller's `claimable` when `pay`, else logged as
         returned (the plan already put it back in the collateral). The
         caller bits stay. Nothing when no amount is parked.
    """
    amount: uint256 = word & _MASK96
    if amount == 0:
        return
    caller: address = convert(word >> 96, address)
    self.parked_reward[account] = word ^ amount
    if pay:
        self.claimable[caller] += amount
        log CallRewardPaid(account=account, caller=caller, amount=amount)
    else:
        log CallRewardReturned(account=account, caller=caller, amount=amount)


@internal
def _call(accounts: DynArray[address, _MAX_BATCH], strict: bool) -> uint256:
    """
    @dev Records a call on every CALLABLE account of the list, parking each
         reward (a lapsed call's parked reward, if any, is paid first: the
         account is CALLABLE, so solvent). `strict` (a single `margin_call`)
         reverts instead of skipping, and with the oracle's reason on an invalid
         price. The reward is min(clamp(notional * close_factor * penalty / 3 *
         keeper_share, call_reward, max_keeper_reward), floor(equity) -
         ceil(maintenance), collateral) in token units: it never takes equity
         below maintenance.
    @return The number of accounts called.
    """
    p: margin.RiskParams = risk._unpack_params(risk._params)
    prices: uint256[_MAX_MARKETS] = empty(uint256[_MAX_MARKETS])
    have: uint256 = 0
    count: uint256 = 0
    for account: address in accounts:
        acct: margin.Acct = ledger._load(account)
        ok: bool = True
        if strict:
            prices = risk._prices(acct.markets)
        else:
            unpriced: uint256 = 0
            prices, unpriced, ok = ledger._try_prices(account, acct.markets, prices, have, False)
            if not ok:
                continue
            have |= acct.markets
        ev: margin.Eval = ledger._evaluate(account, acct, prices, SCALE)
        if margin._classify(ev, acct, p, SCALE) != margin._CALLABLE:
            if strict:
                fixed_point._fail("engine: account not callable")
            continue
        # the reward never takes equity below maintenance: a call is a notice,
        # it must not itself make the account liquidatable (rounded down)
        # (CALLABLE: equity >= maintenance > 0)
        room: uint256 = convert(ev.equity, uint256) // SCALE
        need: uint256 = fixed_point._to_token_up(ev.maintenance, SCALE)
        # the reward scales with the account: the keeper's share of the
        # penalty of the close_factor tranche the call stands in for (at the
        # tranche rate, liquidation_penalty // 3), at least call_reward, at
        # most max_keeper_reward (wad, then token units rounded down)
        scaled: uint256 = (
            ev.notional
            * p.close_factor // _WAD
            * (p.liquidation_penalty // margin._TRANCHE_PENALTY_DIV) // _WAD
            * p.keeper_share // _WAD
        )
        reward: uint256 = 0
        if room > need:
            reward = min(
                min(min(max(scaled, p.call_reward), p.max_keeper_reward) // SCALE, room - need),
                acct.collateral,
            )
        acct.collateral -= reward
        if acct.deadline != 0:
            # a lapsed call, called anew: it ended with the account solvent
            self._release(account, self.parked_reward[account], True)
        if reward > 0:
            self.parked_reward[account] = (convert(msg.sender, uint256) << 96) | reward
        acct.deadline = block.timestamp + p.grace_period
        acct.tranches = 0
        ledger._store(account, acct)
        equity: int256 = ev.equity - convert(reward * SCALE, int256)
        log MarginCall(
            account=account,
            caller=msg.sender,
            deadline=acct.deadline,
            equity=equity,
            maintenance=ev.maintenance,
            ratio=fixed_point._ratio(equity, ev.maintenance),
            reward=reward,
            collateral=acct.collateral,
        )
        count += 1
    return count


@internal
def _liquidate(accounts: DynArray[address, _MAX_BATCH], strict: bool) -> (uint256, uint256):
    """
    @dev One tranche of every eligible account of the list; token moves
         netted and paid once. `strict` (a single `liquidate`) reverts with
         the reason instead of skipping, and with the oracle's reason on an
         invalid price.
    @return The number of accounts liquidated and the closed notional.
    """
    p: margin.RiskParams = risk._unpack_params(risk._params)
    prices: uint256[_MAX_MARKETS] = empty(uint256[_MAX_MARKETS])
    have: uint256 = 0
    pool_net: int256 = 0
    reward: uint256 = 0
    fund_fee: uint256 = 0
    count: uint256 = 0
    closed: uint256 = 0
    for account: address in accounts:
        acct: margin.Acct = ledger._load(account)
        # an unpriced leg is valued at its worst case, never a shield
        ok: bool = True
        unpriced: uint256 = 0
        prices, unpriced, ok = ledger._try_prices(account, acct.markets, prices, have, True)
        if not ok:
            if strict:
                # the sequencer blocks prices: revert with its reason
                prices = risk._prices(acct.markets)
            continue
        have |= acct.markets & ~unpriced
        ev: margin.Eval = ledger._evaluate(account, acct, prices, SCALE)
        # the windows of the account's markets are read only when they can cap it
        state: uint8 = margin._classify(ev, acct, p, SCALE)
        windows: uint256[margin._MAX_POSITIONS] = empty(uint256[margin._MAX_POSITIONS])
        if state == margin._LIQUIDATABLE:
            for i: uint256 in range(margin._MAX_POSITIONS):
                if i == ev.n:
                    break
                windows[i] = risk._window[ev.mids[i]]
        parked: uint256 = 0
        if acct.deadline != 0:
            # the parked call reward (read only under a call): returned to the
            # collateral by a close at ratio < 1, before the deficit (in the plan)
            parked = self.parked_reward[account]
        plan: liquidation.Plan = liquidation._plan_from(
            acct, ev, p, state, windows, parked & _MASK96, SCALE, unpriced
        )
        if plan.code != liquidation._OK:
            if not strict:
                continue
            if plan.code == liquidation._NOT_LIQUIDATABLE:
                fixed_point._fail("engine: account not liquidatable")
            elif plan.code == liquidation._TOO_SOON:
                fixed_point._fail("engine: tranche interval not elapsed")
            fixed_point._fail("engine: liquidation window cap reached")
        liquidation._execute(account, acct, ev, plan, msg.sender, p.liquidation_window, SCALE)
        # a tranche at ratio >= 1 pays the caller (the call band worked)
        self._release(account, parked, plan.returned == 0)
        if plan.deficit > 0:
            # a bankrupt account's deficit (which includes the keeper's
            # minimum reward, see `liquidation._plan_from`) is covered by the
            # fund, after the fund's accrued share is swept to it; the pool
            # bears the rest. The account's collateral follows to the pool in
            # `_settle_pool` (netted over the batch), in this transaction.
            self._claim(FUND.address)
            paid: uint256 = extcall FUND.cover(plan.deficit, account)
            log liquidation.BadDebt(
                account=account,
                amount=plan.deficit,
                paid_by_fund=paid,
                socialised=plan.deficit - paid,
            )
        pool_net += plan.pool_net
        reward += plan.keeper_reward
        fund_fee += plan.fund_fee
        closed += plan.closed_notional
        count += 1
    self._pay_out(pool_net, reward, fund_fee)
    return count, closed


# --- internal: tokens ---------------------------------------------------------------


@view
@internal
def _only_book():
    if not (msg.sender == ORDER_BOOK):
        fixed_point._fail("engine: only order book")


@internal
def _pull(sender: address, amount: uint256):
    before: uint256 = staticcall TOKEN.balanceOf(self)
    if not (extcall TOKEN.transferFrom(sender, self, amount, default_return_value=True)):
        fixed_point._fail("engine: transfer failed")
    if not (staticcall TOKEN.balanceOf(self) - before == amount):
        fixed_point._fail("engine: token transfer short")


@internal
def _push(receiver: address, amount: uint256):
    if not (extcall TOKEN.transfer(receiver, amount, default_return_value=True)):
        fixed_point._fail("engine: transfer failed")


@internal
def _pay_out(pool_net: int256, keeper_reward: uint256, fund_fee: uint256):
    """
    @dev A liquidation's money flows: the pool settled (netted); the
         keeper's reward and the fund's share of the penalty accrued, for
         `claim_rewards` (the fund's too).
    """
    self._settle_pool(pool_net)
    if keeper_reward > 0:
        self.claimable[msg.sender] += keeper_reward
    if fund_fee > 0:
        self.claimable[FUND.address] += fund_fee


@internal
def _claim(keeper: address) -> uint256:
    """
    @dev Pays out an accrued balance (a keeper's rewards, the fund's share).
    """
    amount: uint256 = self.claimable[keeper]
    if amount > 0:
        self.claimable[keeper] = 0
        self._push(keeper, amount)
        log RewardsClaimed(keeper=keeper, caller=msg.sender, amount=amount)
    return amount


@internal
def _settle_pool(net: int256):
    """
    @dev Lazy settlement with the pool: what the engine owes it accrues in
         `claimable[POOL]` (the pool's totalAssets counts it; the pool
         collects it with `claim_rewards(POOL)` when a withdrawal needs it);
         trader profit comes out of that credit first, the rest from
         `POOL.pay` (the credit zeroed before the call).
    """
    if net == 0:
        return
    credit: uint256 = self.claimable[POOL.address]
    owed: uint256 = 0
    if net > 0:
        credit += convert(net, uint256)
    else:
        owed = convert(-net, uint256)
        paid: uint256 = min(owed, credit)
        credit -= paid
        owed -= paid
    self.claimable[POOL.address] = credit
    if owed > 0:
        extcall POOL.pay(self, owed)
