# pragma version ~=0.4.3
"""
@title margincall margin engine
@notice Holds traders' collateral, keeps their cross-margined perpetual
        positions, records health-triggered margin calls with a deadline,
        and liquidates in phased tranches through permissionless keepers.
        PnL settles against the LiquidityPool; penalties feed the
        InsuranceFund, which absorbs bad debt before the pool does.

        Fixed point: every value and ratio is an 18-decimal "wad" inside;
        collateral balances are kept in the token's own units and converted
        at the edge with `SCALE = 10**(18 - decimals)`. Each division states
        its rounding; all of them round against the account and the keeper,
        never against the pool or the fund.

        Storage is packed for gas: one word per account (market bitmap,
        call deadline, last tranche time, tranche count, collateral), one
        word per position (size and open notional, both biased by 2**127),
        two words per market and four words of global risk parameters.
@custom:security Trusts: the owner (markets, risk parameters within the
        bounds checked here, the guardian), the guardian (may pause new
        exposure only; never deposits, reductions or liquidations), the
        oracle adapters (prices), the collateral token (a plain ERC-20: short
        transfers are refused), the pool and the fund set at construction.
        Keepers are untrusted: every liquidation is checked here.
"""

from ethereum.ercs import IERC20
from ethereum.ercs import IERC20Detailed
from interfaces import IOracle
from interfaces import ILiquidityPool
from interfaces import IInsuranceFund
from interfaces import IMarginEngine

implements: IMarginEngine

from snekmate.auth import ownable
from snekmate.auth import ownable_2step

initializes: ownable
initializes: ownable_2step[ownable := ownable]

exports: (
    # `owner`, `pending_owner`, `transfer_ownership`, `accept_ownership`,
    # `renounce_ownership`: two-step ownership from snekmate.
    ownable_2step.owner,
    ownable_2step.pending_owner,
    ownable_2step.transfer_ownership,
    ownable_2step.accept_ownership,
    ownable_2step.renounce_ownership,
)

# --- constants ---------------------------------------------------------------

WAD: constant(uint256) = 10**18
IWAD: constant(int256) = 10**18
MAX_MARKETS: constant(uint256) = 16
MAX_POSITIONS: constant(uint256) = 5
MAX_SCAN: constant(uint256) = 500
MAX_BATCH: constant(uint256) = 100

# account states
HEALTHY: constant(uint8) = 0
CALLABLE: constant(uint8) = 1
CALLED: constant(uint8) = 2
LIQUIDATABLE: constant(uint8) = 3
CRITICAL: constant(uint8) = 4
BANKRUPT: constant(uint8) = 5

# liquidation plan outcomes
OK: constant(uint8) = 0
NOT_LIQUIDATABLE: constant(uint8) = 1
TOO_SOON: constant(uint8) = 2
WINDOW_FULL: constant(uint8) = 3

MASK16: constant(uint256) = 2**16 - 1
MASK24: constant(uint256) = 2**24 - 1
MASK32: constant(uint256) = 2**32 - 1
MASK48: constant(uint256) = 2**48 - 1
MASK64: constant(uint256) = 2**64 - 1
MASK80: constant(uint256) = 2**80 - 1
MASK104: constant(uint256) = 2**104 - 1
MASK112: constant(uint256) = 2**112 - 1
MASK160: constant(uint256) = 2**160 - 1
RATIO_UNIT: constant(uint256) = 10**9
MASK128: constant(uint256) = 2**128 - 1
BIAS: constant(int256) = 2**127

# risk parameter bounds (docs/parameters.md explains each)
MAX_CALL_RATIO: constant(uint256) = 3 * 10**18
MIN_CRITICAL_RATIO: constant(uint256) = 10**17
MIN_GRACE: constant(uint256) = 300
MAX_GRACE: constant(uint256) = 7 * 86_400
MIN_CLOSE_FACTOR: constant(uint256) = 5 * 10**16
MAX_TRANCHE_INTERVAL: constant(uint256) = 3_600
MAX_PENALTY: constant(uint256) = 10**17
MAX_REWARD: constant(uint256) = 10**6 * 10**18
MIN_WINDOW: constant(uint256) = 60
MAX_WINDOW: constant(uint256) = 86_400
MAX_MIN_NOTIONAL: constant(uint256) = 10**6 * 10**18
MAX_FEE: constant(uint256) = 10**16
MAX_WINDOW_CAP: constant(uint256) = 2**104 - 1

# --- immutables ----------------------------------------------------------------

TOKEN: public(immutable(IERC20))
POOL: public(immutable(ILiquidityPool))
FUND: public(immutable(IInsuranceFund))
SCALE: public(immutable(uint256))

# --- structs ---------------------------------------------------------------

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


struct MarketConfig:
    oracle: address
    imr: uint256  # wad, initial margin ratio
    mmr: uint256  # wad, maintenance margin ratio
    fee: uint256  # wad, trading fee on traded notional, to the pool
    window_cap: uint256  # wad notional liquidatable per window (non-critical)
    active: bool  # new exposure allowed


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


struct Acct:
    markets: uint256
    deadline: uint256
    last_tranche: uint256
    tranches: uint256
    collateral: uint256


struct Pos:
    size: int256
    cost: int256


struct Eval:
    n: uint256
    mids: uint256[MAX_POSITIONS]
    pos: Pos[MAX_POSITIONS]
    px: uint256[MAX_POSITIONS]
    mmr: uint256[MAX_POSITIONS]
    notional: uint256
    maintenance: uint256
    initial: uint256
    equity: int256


struct Plan:
    code: uint8
    state: uint8
    full: bool
    fraction: uint256
    closed: int256[MAX_POSITIONS]
    realized: int256[MAX_POSITIONS]
    after: Pos[MAX_POSITIONS]
    closed_notional: uint256
    penalty: uint256  # token units
    keeper_reward: uint256  # token units
    fund_fee: uint256  # token units
    pool_net: int256  # token units, > 0 engine pays pool, < 0 pool pays engine
    deficit: uint256  # token units
    collateral_after: uint256  # token units
    equity_after: int256
    maintenance_after: uint256
    ratio_after: uint256
    clears_call: bool


struct LiquidationPreview:
    state: uint8
    liquidatable: bool
    reason: uint8  # 0 ok, 1 not liquidatable, 2 tranche interval, 3 window cap
    full_close: bool
    fraction: uint256  # wad
    market_ids: DynArray[uint256, MAX_POSITIONS]
    closed_sizes: DynArray[int256, MAX_POSITIONS]
    closed_notional: uint256  # wad
    penalty: uint256  # token units
    keeper_reward: uint256  # token units
    fund_fee: uint256  # token units
    deficit: uint256  # token units, paid by the fund or socialised
    equity_after: int256
    ratio_after: uint256


# --- state ---------------------------------------------------------------

guardian: public(address)
paused: public(bool)
market_count: public(uint256)
# Sum over all positions of |open notional| (wad); the pool keeps a reserve for it.
open_interest: public(uint256)

_account: HashMap[address, uint256]
_position: HashMap[address, HashMap[uint256, uint256]]
# oracle | mmr << 160 | imr << 192 | fee << 224 | active << 248 (ratios in 1e-9)
_market: HashMap[uint256, uint256]
# start | used << 48 | cap << 152 (used and cap: wad notional, 104 bits)
_window: HashMap[uint256, uint256]
_params: uint256[3]

# --- events ---------------------------------------------------------------

event Deposit:
    account: indexed(address)
    sender: indexed(address)
    amount: uint256
    collateral: uint256


event Withdraw:
    account: indexed(address)
    amount: uint256
    collateral: uint256


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


event MarginCall:
    account: indexed(address)
    caller: indexed(address)
    deadline: uint256
    equity: int256
    maintenance: uint256
    ratio: uint256
    reward: uint256
    collateral: uint256


event MarginCallCleared:
    account: indexed(address)
    caller: indexed(address)
    equity: int256
    maintenance: uint256
    ratio: uint256


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


event MarketSet:
    market_id: indexed(uint256)
    oracle: address
    imr: uint256
    mmr: uint256
    fee: uint256
    window_cap: uint256
    active: bool


event RiskParamsSet:
    params: RiskParams


event GuardianSet:
    guardian: indexed(address)


event PauseSet:
    paused: bool
    caller: indexed(address)


@deploy
def __init__(token: IERC20, pool: ILiquidityPool, fund: IInsuranceFund, guardian: address):
    """
    @notice Deploys the engine with the default risk parameters of
            PROTOCOL.md section 2 and 3; the deployer becomes the owner.
    @param token The collateral token (6 to 18 decimals).
    @param pool The LiquidityPool, counterparty of trader PnL.
    @param fund The InsuranceFund.
    @param guardian The address that may pause new exposure.
    """
    if not (token.address != empty(address)):
        self._fail("engine: zero token")
    if not (pool.address != empty(address)):
        self._fail("engine: zero pool")
    if not (fund.address != empty(address)):
        self._fail("engine: zero fund")
    decimals: uint8 = staticcall IERC20Detailed(token.address).decimals()
    if not (decimals <= 18):
        self._fail("engine: token decimals above 18")
    TOKEN = token
    POOL = pool
    FUND = fund
    SCALE = 10**convert(18 - decimals, uint256)
    ownable.__init__()
    ownable_2step.__init__()
    self.guardian = guardian
    log GuardianSet(guardian=guardian)
    self._set_params(
        RiskParams(
            call_ratio=125 * 10**16,
            critical_ratio=5 * 10**17,
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
        self._fail("engine: zero amount")
    if not (account != empty(address)):
        self._fail("engine: zero account")
    self._pull(msg.sender, amount)
    acct: Acct = self._load(account)
    acct.collateral += amount
    if acct.deadline != 0:
        # best effort: a deposit must never fail on a bad price
        prices: uint256[MAX_MARKETS] = empty(uint256[MAX_MARKETS])
        ok: bool = False
        prices, ok = self._try_prices(acct.markets, prices, 0)
        if ok:
            ev: Eval = self._evaluate(account, acct, prices)
            if self._ratio(ev.equity, ev.maintenance) >= self._p_call_ratio():
                acct = self._clear_call(account, acct, ev)
    self._store(account, acct)
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
        self._fail("engine: zero amount")
    acct: Acct = self._load(msg.sender)
    if not (amount <= acct.collateral):
        self._fail("engine: amount exceeds collateral")
    acct.collateral -= amount
    if acct.markets != 0:
        prices: uint256[MAX_MARKETS] = self._prices(acct.markets)
        ev: Eval = self._evaluate(msg.sender, acct, prices)
        if acct.deadline != 0:
            ev_before: int256 = ev.equity + convert(amount * SCALE, int256)
            if self._ratio(ev_before, ev.maintenance) >= self._p_call_ratio():
                acct = self._clear_call(msg.sender, acct, ev)
            else:
                self._fail("engine: under margin call")
        if not (ev.equity >= convert(ev.initial, int256)):
            self._fail("engine: insufficient margin")
    self._store(msg.sender, acct)
    self._push(msg.sender, amount)
    log Withdraw(account=msg.sender, amount=amount, collateral=acct.collateral)


@external
@nonreentrant
def trade(market_id: uint256, size_delta: int256, acceptable_price: uint256) -> int256:
    """
    @notice Opens, increases, reduces or flips a position at the oracle
            price. New exposure needs initial margin, an active market, no
            pause and no margin call; reductions are always allowed.
    @param market_id The market.
    @param size_delta Signed change of the position size (wad of base asset;
           positive buys, negative sells).
    @param acceptable_price Slippage bound: the highest price for a buy,
           the lowest for a sell (wad).
    @return The new position size.
    """
    return self._trade(msg.sender, market_id, size_delta, acceptable_price)


@external
@nonreentrant
def close_position(market_id: uint256, acceptable_price: uint256) -> int256:
    """
    @notice Closes the caller's whole position in one market.
    @param market_id The market.
    @param acceptable_price Slippage bound (lowest price when closing a
           long, highest when closing a short).
    @return The net change of the caller's collateral, in token units:
            the realised PnL minus the trading fee.
    """
    pos: Pos = self._load_pos(msg.sender, market_id)
    if not (pos.size != 0):
        self._fail("engine: no position")
    before: uint256 = self._load(msg.sender).collateral
    self._trade(msg.sender, market_id, -pos.size, acceptable_price)
    return convert(self._load(msg.sender).collateral, int256) - convert(before, int256)


# --- margin calls ---------------------------------------------------------------


@external
@nonreentrant
def margin_call(account: address):
    """
    @notice Records a margin call on a CALLABLE account (1 <= ratio <
            call_ratio, no live call): a public notice with a deadline
            `grace_period` from now. Pays the caller `call_reward` from the
            account's collateral.
    @param account The account to call.
    """
    prices: uint256[MAX_MARKETS] = empty(uint256[MAX_MARKETS])
    reward: uint256 = 0
    ok: bool = False
    acct: Acct = self._load(account)
    prices = self._prices(acct.markets)
    ok, reward = self._margin_call(account, acct, prices)
    if not (ok):
        self._fail("engine: account not callable")
    if reward > 0:
        self._push(msg.sender, reward)


@external
@nonreentrant
def margin_call_many(accounts: DynArray[address, MAX_BATCH]) -> uint256:
    """
    @notice Calls every CALLABLE account of the list in one transaction,
            skipping the others (and those whose prices are invalid).
            Rewards are paid once, at the end.
    @param accounts The accounts to try.
    @return The number of accounts called.
    """
    prices: uint256[MAX_MARKETS] = empty(uint256[MAX_MARKETS])
    have: uint256 = 0
    total: uint256 = 0
    count: uint256 = 0
    for account: address in accounts:
        acct: Acct = self._load(account)
        ok: bool = False
        prices, ok = self._try_prices(acct.markets, prices, have)
        if not ok:
            continue
        have |= acct.markets
        reward: uint256 = 0
        called: bool = False
        called, reward = self._margin_call(account, acct, prices)
        if called:
            total += reward
            count += 1
    if total > 0:
        self._push(msg.sender, total)
    return count


@external
@nonreentrant
def clear_margin_call(account: address):
    """
    @notice Clears a recorded margin call once the account's ratio is back
            at or above `call_ratio`. Anyone may call it.
    @param account The account.
    """
    acct: Acct = self._load(account)
    if not (acct.deadline != 0):
        self._fail("engine: no margin call")
    ev: Eval = self._evaluate(account, acct, self._prices(acct.markets))
    if not (self._ratio(ev.equity, ev.maintenance) >= self._p_call_ratio()):
        self._fail("engine: still under-margined")
    acct = self._clear_call(account, acct, ev)
    self._store(account, acct)


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
    acct: Acct = self._load(account)
    ev: Eval = self._evaluate(account, acct, self._prices(acct.markets))
    plan: Plan = self._plan(acct, ev, self._load_params())
    if plan.code == NOT_LIQUIDATABLE:
        self._fail("engine: account not liquidatable")
    elif plan.code == TOO_SOON:
        self._fail("engine: tranche interval not elapsed")
    elif plan.code == WINDOW_FULL:
        self._fail("engine: liquidation window cap reached")
    self._execute(account, acct, ev, plan, msg.sender)
    self._pay_out(plan.pool_net, plan.keeper_reward, plan.fund_fee)
    return plan.closed_notional


@external
@nonreentrant
def liquidate_many(accounts: DynArray[address, MAX_BATCH]) -> uint256:
    """
    @notice Liquidates one tranche of every eligible account of the list,
            skipping those no longer eligible (or whose prices are invalid)
            instead of reverting. Token movements are netted and paid once.
    @param accounts The accounts to try.
    @return The number of accounts liquidated.
    """
    params: uint256[3] = self._params
    prices: uint256[MAX_MARKETS] = empty(uint256[MAX_MARKETS])
    have: uint256 = 0
    pool_net: int256 = 0
    reward: uint256 = 0
    fund_fee: uint256 = 0
    count: uint256 = 0
    for account: address in accounts:
        acct: Acct = self._load(account)
        ok: bool = False
        prices, ok = self._try_prices(acct.markets, prices, have)
        if not ok:
            continue
        have |= acct.markets
        ev: Eval = self._evaluate(account, acct, prices)
        plan: Plan = self._plan(acct, ev, params)
        if plan.code != OK:
            continue
        self._execute(account, acct, ev, plan, msg.sender)
        pool_net += plan.pool_net
        reward += plan.keeper_reward
        fund_fee += plan.fund_fee
        count += 1
    self._pay_out(pool_net, reward, fund_fee)
    return count


# --- views ---------------------------------------------------------------


@view
@external
def check_margin(account: address) -> MarginStatus:
    """
    @notice The account's margin status at current oracle prices. Reverts
            with the oracle's reason if a needed price is invalid.
    @param account The account.
    @return Collateral, equity, maintenance, initial, ratio, state, live call
            deadline, next tranche time, number of positions.
    """
    acct: Acct = self._load(account)
    return self._status(account, acct, self._prices(acct.markets), True)


@view
@external
def check_margins(accounts: DynArray[address, MAX_SCAN]) -> DynArray[MarginStatus, MAX_SCAN]:
    """
    @notice The batched view keepers scan with. Each market's price is
            read once per call. Accounts needing an invalid price come back
            with `priced = False` and state HEALTHY (nothing to do).
    @param accounts Up to 500 accounts.
    @return One MarginStatus per account, in order.
    """
    out: DynArray[MarginStatus, MAX_SCAN] = []
    prices: uint256[MAX_MARKETS] = empty(uint256[MAX_MARKETS])
    have: uint256 = 0
    for account: address in accounts:
        acct: Acct = self._load(account)
        ok: bool = False
        prices, ok = self._try_prices(acct.markets, prices, have)
        if ok:
            have |= acct.markets
        out.append(self._status(account, acct, prices, ok))
    return out


@view
@external
def preview_liquidation(account: address) -> LiquidationPreview:
    """
    @notice What `liquidate(account)` would do now, without doing it: the
            closed sizes, penalty, keeper reward, fund fee, deficit and the
            ratio after.
    @param account The account.
    @return The preview; `liquidatable` false with a `reason` code when a
            call would revert (1 not liquidatable, 2 tranche interval,
            3 window cap).
    """
    acct: Acct = self._load(account)
    ev: Eval = self._evaluate(account, acct, self._prices(acct.markets))
    plan: Plan = self._plan(acct, ev, self._load_params())
    out: LiquidationPreview = empty(LiquidationPreview)
    out.state = plan.state
    out.reason = plan.code
    out.liquidatable = plan.code == OK
    if plan.code != OK:
        return out
    out.full_close = plan.full
    out.fraction = plan.fraction
    for i: uint256 in range(MAX_POSITIONS):
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
def position(account: address, market_id: uint256) -> (int256, int256):
    """
    @notice An account's position in one market.
    @param account The account.
    @param market_id The market.
    @return The size (wad of base asset, signed) and the open notional (wad,
            signed: size times average entry price).
    """
    pos: Pos = self._load_pos(account, market_id)
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
    acct: Acct = self._load(account)
    return acct.collateral, acct.markets, acct.deadline, acct.last_tranche, acct.tranches


@view
@external
def collateral_of(account: address) -> uint256:
    """
    @notice The account's collateral balance, in token units.
    @param account The account.
    @return The balance.
    """
    return self._account[account] >> 144


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
    return w & MASK48, (w >> 48) & MASK104


@view
@external
def risk_params() -> RiskParams:
    """
    @notice The global risk parameters.
    @return The parameters, unpacked.
    """
    return self._unpack_params(self._params)


# --- admin ---------------------------------------------------------------


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
    if not (market_id <= count and market_id < MAX_MARKETS):
        self._fail("engine: bad market id")
    if not (oracle != empty(address)):
        self._fail("engine: zero oracle")
    p: RiskParams = self._unpack_params(self._params)
    self._check_market(imr, mmr, fee, window_cap, p)
    if market_id == count:
        self.market_count = count + 1
    self._market[market_id] = (
        convert(oracle, uint256)
        | ((mmr // RATIO_UNIT) << 160)
        | ((imr // RATIO_UNIT) << 192)
        | ((fee // RATIO_UNIT) << 224)
        | (convert(active, uint256) << 248)
    )
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
def set_risk_params(params: RiskParams):
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
        self._fail("engine: only guardian or owner")
    self.paused = paused
    log PauseSet(paused=paused, caller=msg.sender)


# --- internal: trading ---------------------------------------------------------------


@internal
def _trade(
    account: address, market_id: uint256, size_delta: int256, acceptable_price: uint256
) -> int256:
    if not (size_delta != 0):
        self._fail("engine: zero size")
    if not (market_id < self.market_count):
        self._fail("engine: unknown market")
    mword: uint256 = self._market[market_id]
    price: uint256 = staticcall IOracle(self._m_oracle(mword)).price()
    if size_delta > 0:
        if not (price <= acceptable_price):
            self._fail("engine: price above acceptable")
    else:
        if not (price >= acceptable_price):
            self._fail("engine: price below acceptable")
    acct: Acct = self._load(account)
    pos: Pos = self._load_pos(account, market_id)
    iprice: int256 = convert(price, int256)

    new: Pos = pos
    realized: int256 = 0
    increases: bool = False
    if pos.size == 0 or (pos.size > 0) == (size_delta > 0):
        increases = True
        new.size = pos.size + size_delta
        new.cost = pos.cost + self._div_ceil(size_delta * iprice, IWAD)
    elif abs(size_delta) <= abs(pos.size):
        closed_cost: int256 = self._div_ceil(pos.cost * (-size_delta), pos.size)
        realized = self._div_floor(-size_delta * iprice, IWAD) - closed_cost
        new.size = pos.size + size_delta
        new.cost = pos.cost - closed_cost
    else:
        increases = True
        realized = self._div_floor(pos.size * iprice, IWAD) - pos.cost
        new.size = pos.size + size_delta
        new.cost = self._div_ceil(new.size * iprice, IWAD)
    # dust: a position is either closed or worth at least the minimum
    p: RiskParams = self._unpack_params(self._params)
    if new.size != 0:
        assert (
            self._mul_up(convert(abs(new.size), uint256), price) >= p.min_position_notional
        ), "engine: position below minimum"

    traded: uint256 = self._mul_up(convert(abs(size_delta), uint256), price)
    fee: uint256 = self._to_token_up(self._mul_up(traded, self._m_fee(mword)))
    realized_tok: int256 = self._wad_to_token_signed(realized)
    balance: int256 = convert(acct.collateral, int256) + realized_tok - convert(fee, int256)
    if not (balance >= 0):
        self._fail("engine: loss exceeds collateral")
    acct.collateral = convert(balance, uint256)

    # position bookkeeping
    bit: uint256 = 1 << market_id
    if new.size == 0:
        acct.markets &= ~bit
        new.cost = 0
    elif acct.markets & bit == 0:
        if not (self._popcount(acct.markets) < MAX_POSITIONS):
            self._fail("engine: too many positions")
        acct.markets |= bit
    self.open_interest = (
        self.open_interest + convert(abs(new.cost), uint256) - convert(abs(pos.cost), uint256)
    )
    self._store_pos(account, market_id, new)

    if increases:
        if not (not self.paused):
            self._fail("engine: paused")
        if not (self._m_active(mword)):
            self._fail("engine: market not active")
    if increases:
        # new exposure needs every price of the account
        ev: Eval = self._evaluate(account, acct, self._prices(acct.markets))
        if acct.deadline != 0:
            if self._ratio(ev.equity, ev.maintenance) >= p.call_ratio:
                acct = self._clear_call(account, acct, ev)
            else:
                self._fail("engine: under margin call")
        if not (ev.equity >= convert(ev.initial, int256)):
            self._fail("engine: insufficient margin")
    elif acct.deadline != 0:
        # a reduction always goes through; it clears the call when it cures
        # the account and every price is valid (best effort, never reverts)
        prices: uint256[MAX_MARKETS] = empty(uint256[MAX_MARKETS])
        ok: bool = False
        prices, ok = self._try_prices(acct.markets, prices, 0)
        if ok:
            ev: Eval = self._evaluate(account, acct, prices)
            if self._ratio(ev.equity, ev.maintenance) >= p.call_ratio:
                acct = self._clear_call(account, acct, ev)
    self._store(account, acct)
    self._settle_pool(convert(fee, int256) - realized_tok)
    log PositionChanged(
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
    return new.size


# --- internal: margin calls ---------------------------------------------------------------


@internal
def _margin_call(account: address, acct_in: Acct, prices: uint256[MAX_MARKETS]) -> (bool, uint256):
    acct: Acct = acct_in
    ev: Eval = self._evaluate(account, acct, prices)
    p: RiskParams = self._unpack_params(self._params)
    if self._classify(ev, acct, p) != CALLABLE:
        return False, 0
    # the reward never takes equity below maintenance: a call is a notice,
    # it must not itself make the account liquidatable (rounded down)
    # (CALLABLE: equity >= maintenance > 0)
    room: uint256 = convert(ev.equity, uint256) // SCALE
    need: uint256 = self._to_token_up(ev.maintenance)
    reward: uint256 = 0
    if room > need:
        reward = min(min(self._to_token_down(p.call_reward), room - need), acct.collateral)
    acct.collateral -= reward
    acct.deadline = block.timestamp + p.grace_period
    acct.tranches = 0
    self._store(account, acct)
    equity: int256 = ev.equity - convert(reward * SCALE, int256)
    log MarginCall(
        account=account,
        caller=msg.sender,
        deadline=acct.deadline,
        equity=equity,
        maintenance=ev.maintenance,
        ratio=self._ratio(equity, ev.maintenance),
        reward=reward,
        collateral=acct.collateral,
    )
    return True, reward


@internal
def _clear_call(account: address, acct_in: Acct, ev: Eval) -> Acct:
    acct: Acct = acct_in
    acct.deadline = 0
    acct.tranches = 0
    log MarginCallCleared(
        account=account,
        caller=msg.sender,
        equity=ev.equity,
        maintenance=ev.maintenance,
        ratio=self._ratio(ev.equity, ev.maintenance),
    )
    return acct


# --- internal: liquidation ---------------------------------------------------------------


@view
@internal
def _plan(acct: Acct, ev: Eval, params: uint256[3]) -> Plan:
    """
    @dev Works out a tranche in memory; `_execute` writes it.
    """
    p: RiskParams = self._unpack_params(params)
    plan: Plan = empty(Plan)
    plan.state = self._classify(ev, acct, p)
    if plan.state < LIQUIDATABLE:
        plan.code = NOT_LIQUIDATABLE
        return plan
    plan.full = plan.state >= CRITICAL
    f: uint256 = WAD
    capped: bool = False
    if not plan.full:
        if acct.last_tranche != 0 and block.timestamp < acct.last_tranche + p.tranche_interval:
            plan.code = TOO_SOON
            return plan
        f = self._tranche_fraction(ev, p)
        # cascade protection: the per-market rolling window cap
        for i: uint256 in range(MAX_POSITIONS):
            if i == ev.n:
                break
            m: uint256 = ev.mids[i]
            w: uint256 = self._window[m]
            used: uint256 = self._window_used(w, p.liquidation_window)
            cap: uint256 = w >> 152
            if used >= cap:
                plan.code = WINDOW_FULL
                return plan
            notional: uint256 = self._mul_up(convert(abs(ev.pos[i].size), uint256), ev.px[i])
            # round the allowed fraction down: never past the cap
            room: uint256 = (cap - used) * WAD // notional
            if room < f:
                f = room
                capped = True
        if f == 0:
            plan.code = WINDOW_FULL
            return plan
    plan.fraction = f

    realized: int256 = 0
    maintenance: uint256 = 0
    upnl: int256 = 0
    for i: uint256 in range(MAX_POSITIONS):
        if i == ev.n:
            break
        pos: Pos = ev.pos[i]
        iprice: int256 = convert(ev.px[i], int256)
        closed: int256 = pos.size
        closed_cost: int256 = pos.cost
        if not plan.full:
            # truncated toward zero: never closes more than asked
            closed = pos.size * convert(f, int256) // IWAD
            closed_cost = self._div_ceil(pos.cost * closed, pos.size)
        r: int256 = self._div_floor(closed * iprice, IWAD) - closed_cost
        plan.closed[i] = closed
        plan.realized[i] = r
        realized += r
        plan.closed_notional += self._mul_up(convert(abs(closed), uint256), ev.px[i])
        rest: Pos = Pos(size=pos.size - closed, cost=pos.cost - closed_cost)
        plan.after[i] = rest
        if rest.size != 0:
            notional: uint256 = self._mul_up(convert(abs(rest.size), uint256), ev.px[i])
            maintenance += self._mul_up(notional, ev.mmr[i])
            upnl += self._div_floor(rest.size * iprice, IWAD) - rest.cost

    # token flows, in token units, each rounded against the account
    realized_tok: int256 = self._wad_to_token_signed(realized)
    balance: int256 = convert(acct.collateral, int256) + realized_tok
    if balance <= 0:
        # bankrupt: all collateral goes to the pool, the fund covers the rest
        plan.pool_net = convert(acct.collateral, int256)
        plan.deficit = convert(-balance, uint256)
        plan.collateral_after = 0
    else:
        plan.pool_net = -realized_tok
        penalty: uint256 = min(
            self._to_token_up(self._mul_up(plan.closed_notional, p.liquidation_penalty)),
            convert(balance, uint256),
        )
        share: uint256 = self._to_token_down(
            plan.closed_notional * p.liquidation_penalty // WAD * p.keeper_share // WAD
        )
        reward: uint256 = max(share, self._to_token_down(p.min_keeper_reward))
        reward = min(reward, self._to_token_down(p.max_keeper_reward))
        reward = min(reward, penalty)
        plan.penalty = penalty
        plan.keeper_reward = reward
        plan.fund_fee = penalty - reward
        plan.collateral_after = convert(balance, uint256) - penalty
    plan.equity_after = convert(plan.collateral_after * SCALE, int256) + upnl
    plan.maintenance_after = maintenance
    plan.ratio_after = self._ratio(plan.equity_after, maintenance)
    # a tranche shrunk by the window cap can be so small that the token-unit
    # roundings outweigh it: one that would lower the ratio waits for room
    if capped and plan.ratio_after < self._ratio(ev.equity, ev.maintenance):
        plan.code = WINDOW_FULL
    plan.clears_call = acct.deadline != 0 and (plan.full or plan.ratio_after >= p.call_ratio)
    return plan


@internal
def _execute(account: address, acct_in: Acct, ev: Eval, plan: Plan, keeper: address):
    acct: Acct = acct_in
    window: uint256 = self._unpack_params(self._params).liquidation_window
    oi_closed: uint256 = 0
    for i: uint256 in range(MAX_POSITIONS):
        if i == ev.n:
            break
        m: uint256 = ev.mids[i]
        rest: Pos = plan.after[i]
        if rest.size == 0:
            rest.cost = 0
            acct.markets &= ~(1 << m)
        oi_closed += convert(abs(ev.pos[i].cost), uint256) - convert(abs(rest.cost), uint256)
        self._store_pos(account, m, rest)
        if not plan.full:
            closed_notional: uint256 = self._mul_up(convert(abs(plan.closed[i]), uint256), ev.px[i])
            self._window_add(m, closed_notional, window)
        log PositionChanged(
            account=account,
            market_id=m,
            size=rest.size,
            open_notional=rest.cost,
            price=ev.px[i],
            size_delta=-plan.closed[i],
            realized_pnl=self._wad_to_token_signed(plan.realized[i]),
            fee=0,
            collateral=plan.collateral_after,
        )
    self.open_interest -= oi_closed
    acct.collateral = plan.collateral_after
    acct.last_tranche = block.timestamp
    tranche: uint256 = acct.tranches + 1
    acct.tranches = tranche
    if plan.clears_call or plan.full:
        acct.deadline = 0
        acct.tranches = 0
    self._store(account, acct)
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
        log MarginCallCleared(
            account=account,
            caller=keeper,
            equity=plan.equity_after,
            maintenance=plan.maintenance_after,
            ratio=plan.ratio_after,
        )
    if plan.deficit > 0:
        # the fund pays the pool here; the account's collateral follows in the
        # caller's `_settle_pool` (netted over a batch), in the same transaction
        paid: uint256 = extcall FUND.cover(plan.deficit, account)
        log BadDebt(
            account=account, amount=plan.deficit, paid_by_fund=paid, socialised=plan.deficit - paid
        )
        reward: uint256 = self._to_token_down(self._unpack_params(self._params).min_keeper_reward)
        if reward > 0:
            extcall FUND.pay_keeper(keeper, reward, account)


@view
@internal
def _tranche_fraction(ev: Eval, p: RiskParams) -> uint256:
    """
    @dev Smallest f with (E - pen*f*N) >= c*(1-f)*M, i.e.
         f >= (c*M - E) / (c*M - pen*N), rounded up; capped at close_factor.
         The bounds penalty < mmr * critical_ratio make the denominator
         positive.
    """
    # The tranche's token-unit roundings (realised PnL, penalty: each under
    # one token unit) and per-position wei roundings all go against the
    # account; the fraction allows for them so the tranche really restores
    # the call ratio, also with 6-decimal collateral.
    equity: int256 = ev.equity - convert(2 * SCALE + 8 * ev.n + 8, int256)
    cm: int256 = convert(p.call_ratio * ev.maintenance, int256)
    num: int256 = cm - equity * IWAD
    den: int256 = cm - convert(p.liquidation_penalty * ev.notional, int256)
    if num <= 0:
        return 0
    if den <= 0:
        return p.close_factor
    f: uint256 = convert(self._div_ceil(num * IWAD, den), uint256)
    return min(f, p.close_factor)


@view
@internal
def _window_used(w: uint256, window: uint256) -> uint256:
    if block.timestamp >= (w & MASK48) + window:
        return 0
    return (w >> 48) & MASK104


@internal
def _window_add(market_id: uint256, notional: uint256, window: uint256):
    w: uint256 = self._window[market_id]
    start: uint256 = w & MASK48
    used: uint256 = (w >> 48) & MASK104
    if block.timestamp >= start + window:
        start = block.timestamp
        used = 0
    # used + notional <= cap < 2**104: a tranche is shrunk to the cap's room
    self._window[market_id] = start | ((used + notional) << 48) | ((w >> 152) << 152)


# --- internal: valuation ---------------------------------------------------------------


@view
@internal
def _evaluate(account: address, acct: Acct, prices: uint256[MAX_MARKETS]) -> Eval:
    """
    @dev equity = collateral + sum(floor(size * price) - open_notional);
         notional = ceil(|size| * price); maintenance and initial round up.
    """
    ev: Eval = empty(Eval)
    bits: uint256 = acct.markets
    equity: int256 = convert(acct.collateral * SCALE, int256)
    n: uint256 = 0
    for m: uint256 in range(MAX_MARKETS):
        if bits >> m == 0:
            break
        if (bits >> m) & 1 == 0:
            continue
        pos: Pos = self._load_pos(account, m)
        mword: uint256 = self._market[m]
        price: uint256 = prices[m]
        notional: uint256 = self._mul_up(convert(abs(pos.size), uint256), price)
        mmr: uint256 = self._m_mmr(mword)
        ev.mids[n] = m
        ev.pos[n] = pos
        ev.px[n] = price
        ev.mmr[n] = mmr
        ev.notional += notional
        ev.maintenance += self._mul_up(notional, mmr)
        ev.initial += self._mul_up(notional, self._m_imr(mword))
        equity += self._div_floor(pos.size * convert(price, int256), IWAD) - pos.cost
        n += 1
    ev.n = n
    ev.equity = equity
    return ev


@view
@internal
def _classify(ev: Eval, acct: Acct, p: RiskParams) -> uint8:
    if ev.n == 0:
        return HEALTHY
    if ev.equity <= 0:
        return BANKRUPT
    ratio: uint256 = self._ratio(ev.equity, ev.maintenance)
    if ratio < p.critical_ratio:
        return CRITICAL
    if ratio >= p.call_ratio:
        return HEALTHY
    state: uint8 = LIQUIDATABLE
    if ratio >= WAD:
        if self._call_live(acct, p):
            if block.timestamp < acct.deadline:
                return CALLED
        else:
            return CALLABLE
    f: uint256 = self._tranche_fraction(ev, p)
    # a tranche that would leave dust closes everything: treat as CRITICAL
    if ev.notional - ev.notional * f // WAD < p.min_position_notional:
        return CRITICAL
    return state


@view
@internal
def _call_live(acct: Acct, p: RiskParams) -> bool:
    """
    @dev A recorded call can be enforced for one grace period after its
         deadline; after that it lapses and a new call (a new notice) is
         needed. A trader is never liquidated on a forgotten call.
    """
    return acct.deadline != 0 and block.timestamp < acct.deadline + p.grace_period


@view
@internal
def _status(
    account: address, acct: Acct, prices: uint256[MAX_MARKETS], priced: bool
) -> MarginStatus:
    s: MarginStatus = empty(MarginStatus)
    s.account = account
    s.collateral = acct.collateral * SCALE
    s.positions = self._popcount(acct.markets)
    s.priced = priced
    if not priced:
        s.ratio = max_value(uint256)
        return s
    ev: Eval = self._evaluate(account, acct, prices)
    p: RiskParams = self._unpack_params(self._params)
    s.equity = ev.equity
    s.maintenance = ev.maintenance
    s.initial = ev.initial
    s.ratio = self._ratio(ev.equity, ev.maintenance)
    s.state = self._classify(ev, acct, p)
    if self._call_live(acct, p):
        s.call_deadline = acct.deadline
    if acct.last_tranche != 0:
        s.next_tranche_time = acct.last_tranche + p.tranche_interval
    return s


@view
@internal
def _ratio(equity: int256, maintenance: uint256) -> uint256:
    # rounded down: against the account
    if maintenance == 0:
        return max_value(uint256)
    if equity <= 0:
        return 0
    return convert(equity, uint256) * WAD // maintenance


# --- internal: prices ---------------------------------------------------------------


@view
@internal
def _prices(bits: uint256) -> uint256[MAX_MARKETS]:
    """
    @dev Reads every needed price; reverts with the oracle's reason.
    """
    prices: uint256[MAX_MARKETS] = empty(uint256[MAX_MARKETS])
    for m: uint256 in range(MAX_MARKETS):
        if bits >> m == 0:
            break
        if (bits >> m) & 1 == 1:
            prices[m] = staticcall IOracle(self._m_oracle(self._market[m])).price()
    return prices


@view
@internal
def _try_prices(
    bits: uint256, prices_in: uint256[MAX_MARKETS], have: uint256
) -> (uint256[MAX_MARKETS], bool):
    """
    @dev Fills the missing prices of `bits` into a cache; never reverts.
         `have` marks the markets already fetched (valid) in this call.
    """
    prices: uint256[MAX_MARKETS] = prices_in
    need: uint256 = bits & ~have
    for m: uint256 in range(MAX_MARKETS):
        if need >> m == 0:
            break
        if (need >> m) & 1 == 1:
            price: uint256 = 0
            valid: bool = False
            price, valid = staticcall IOracle(self._m_oracle(self._market[m])).try_price()
            if not valid:
                return prices, False
            prices[m] = price
    return prices, True


# --- internal: storage packing ---------------------------------------------------------------


@view
@internal
def _load(account: address) -> Acct:
    w: uint256 = self._account[account]
    return Acct(
        markets=w & MASK16,
        deadline=(w >> 16) & MASK48,
        last_tranche=(w >> 64) & MASK48,
        tranches=(w >> 112) & MASK32,
        collateral=w >> 144,
    )


@internal
def _store(account: address, acct: Acct):
    if not (acct.collateral <= MASK112):
        self._fail("engine: collateral overflow")
    self._account[account] = (
        acct.markets
        | (acct.deadline << 16)
        | (acct.last_tranche << 64)
        | (min(acct.tranches, MASK32) << 112)
        | (acct.collateral << 144)
    )


@view
@internal
def _load_pos(account: address, market_id: uint256) -> Pos:
    w: uint256 = self._position[account][market_id]
    if w == 0:
        return empty(Pos)
    return Pos(size=convert(w >> 128, int256) - BIAS, cost=convert(w & MASK128, int256) - BIAS)


@internal
def _store_pos(account: address, market_id: uint256, pos: Pos):
    if not (abs(pos.size) < BIAS and abs(pos.cost) < BIAS):
        self._fail("engine: size out of range")
    self._position[account][market_id] = (convert(pos.size + BIAS, uint256) << 128) | convert(
        pos.cost + BIAS, uint256
    )


@view
@internal
def _load_params() -> uint256[3]:
    return self._params


@view
@internal
def _p_call_ratio() -> uint256:
    return self._params[0] & MASK64


@view
@internal
def _unpack_params(w: uint256[3]) -> RiskParams:
    return RiskParams(
        call_ratio=w[0] & MASK64,
        critical_ratio=(w[0] >> 64) & MASK64,
        grace_period=(w[1] >> 64) & MASK32,
        close_factor=(w[0] >> 128) & MASK64,
        tranche_interval=(w[1] >> 96) & MASK32,
        liquidation_penalty=w[0] >> 192,
        keeper_share=w[1] & MASK64,
        min_keeper_reward=w[2] & MASK80,
        max_keeper_reward=(w[2] >> 80) & MASK80,
        call_reward=(w[2] >> 160) & MASK80,
        liquidation_window=(w[1] >> 128) & MASK32,
        min_position_notional=(w[1] >> 160) & MASK80,
    )


@internal
def _set_params(p: RiskParams):
    if not (p.call_ratio > WAD and p.call_ratio <= MAX_CALL_RATIO):
        self._fail("engine: call_ratio out of bounds")
    if not (p.critical_ratio >= MIN_CRITICAL_RATIO and p.critical_ratio < WAD):
        self._fail("engine: critical_ratio out of bounds")
    if not (p.grace_period >= MIN_GRACE and p.grace_period <= MAX_GRACE):
        self._fail("engine: grace_period out of bounds")
    if not (p.close_factor >= MIN_CLOSE_FACTOR and p.close_factor <= WAD):
        self._fail("engine: close_factor out of bounds")
    # at least 1 s: two tranches of one account never share a block, so a
    # batch that lists an account twice acts on it once
    if not (p.tranche_interval >= 1 and p.tranche_interval <= MAX_TRANCHE_INTERVAL):
        self._fail("engine: tranche_interval out of bounds")
    if not (p.liquidation_penalty <= MAX_PENALTY):
        self._fail("engine: liquidation_penalty out of bounds")
    if not (p.keeper_share <= WAD):
        self._fail("engine: keeper_share out of bounds")
    if not (p.max_keeper_reward <= MAX_REWARD):
        self._fail("engine: max_keeper_reward out of bounds")
    if not (p.min_keeper_reward <= p.max_keeper_reward):
        self._fail("engine: min_keeper_reward above max")
    if not (p.call_reward <= p.max_keeper_reward):
        self._fail("engine: call_reward above max_keeper_reward")
    if not (p.liquidation_window >= MIN_WINDOW and p.liquidation_window <= MAX_WINDOW):
        self._fail("engine: liquidation_window out of bounds")
    if not (p.min_position_notional <= MAX_MIN_NOTIONAL):
        self._fail("engine: min_position_notional out of bounds")
    for m: uint256 in range(MAX_MARKETS):
        if m == self.market_count:
            break
        w: uint256 = self._market[m]
        self._check_market(
            self._m_imr(w), self._m_mmr(w), self._m_fee(w), self._window[m] >> 152, p
        )
    self._params = [
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
    log RiskParamsSet(params=p)


@view
@internal
def _check_market(imr: uint256, mmr: uint256, fee: uint256, window_cap: uint256, p: RiskParams):
    if not (mmr > 0):
        self._fail("engine: mmr is zero")
    if not (imr <= WAD):
        self._fail("engine: imr above 100%")
    # a fresh position at initial margin is HEALTHY, never callable
    if not (imr * WAD >= mmr * p.call_ratio):
        self._fail("engine: imr below mmr * call_ratio")
    # tranches never lower the ratio of a non-critical account
    if not (p.liquidation_penalty * WAD < mmr * p.critical_ratio):
        self._fail("engine: penalty not below mmr * critical_ratio")
    if not (fee <= MAX_FEE):
        self._fail("engine: fee above 1%")
    if not (window_cap > 0):
        self._fail("engine: window cap is zero")
    if not (window_cap <= MAX_WINDOW_CAP):
        self._fail("engine: window cap too large")
    if not (mmr % RATIO_UNIT == 0 and imr % RATIO_UNIT == 0 and fee % RATIO_UNIT == 0):
        self._fail("engine: ratio precision is 1e-9")


# --- internal: tokens ---------------------------------------------------------------


@internal
def _pull(sender: address, amount: uint256):
    before: uint256 = staticcall TOKEN.balanceOf(self)
    if not (extcall TOKEN.transferFrom(sender, self, amount, default_return_value=True)):
        self._fail("engine: transfer failed")
    if not (staticcall TOKEN.balanceOf(self) - before == amount):
        self._fail("engine: token transfer short")


@internal
def _push(receiver: address, amount: uint256):
    if not (extcall TOKEN.transfer(receiver, amount, default_return_value=True)):
        self._fail("engine: transfer failed")


@internal
def _pay_out(pool_net: int256, keeper_reward: uint256, fund_fee: uint256):
    """
    @dev A liquidation's token moves: the pool settled (netted), then the
         keeper's reward to the caller and the fund's share of the penalty.
    """
    self._settle_pool(pool_net)
    if keeper_reward > 0:
        self._push(msg.sender, keeper_reward)
    if fund_fee > 0:
        self._push(FUND.address, fund_fee)


@internal
def _settle_pool(net: int256):
    if net > 0:
        self._push(POOL.address, convert(net, uint256))
    elif net < 0:
        extcall POOL.pay(self, convert(-net, uint256))


# --- internal: math ---------------------------------------------------------------


@pure
@internal
def _mul_up(a: uint256, b: uint256) -> uint256:
    return (a * b + WAD - 1) // WAD


@pure
@internal
def _div_floor(a: int256, b: int256) -> int256:
    # b > 0
    q: int256 = a // b
    if a < 0 and q * b != a:
        q -= 1
    return q


@pure
@internal
def _div_ceil(a: int256, b: int256) -> int256:
    # b != 0; rounds toward +infinity
    q: int256 = a // b
    if q * b != a and ((a > 0) == (b > 0)):
        q += 1
    return q


@view
@internal
def _to_token_up(wad: uint256) -> uint256:
    return (wad + SCALE - 1) // SCALE


@view
@internal
def _to_token_down(wad: uint256) -> uint256:
    return wad // SCALE


@view
@internal
def _wad_to_token_signed(wad: int256) -> int256:
    # gains round down, losses round up: against the account
    return self._div_floor(wad, convert(SCALE, int256))


@pure
@internal
def _popcount(bits: uint256) -> uint256:
    n: uint256 = 0
    for m: uint256 in range(MAX_MARKETS):
        if bits >> m == 0:
            break
        n += (bits >> m) & 1
    return n


@pure
@internal
def _fail(reason: String[48]):
    """
    @dev Every revert of the engine goes through here: one ABI encoder for
         all reason strings instead of one per site keeps the runtime code
         under the EIP-170 limit (about 6.5 kB saved).
    """
    raise reason


# --- internal: market word ---------------------------------------------------------------


@pure
@internal
def _m_oracle(w: uint256) -> address:
    return convert(convert(w & MASK160, uint160), address)


@pure
@internal
def _m_mmr(w: uint256) -> uint256:
    return ((w >> 160) & MASK32) * RATIO_UNIT


@pure
@internal
def _m_imr(w: uint256) -> uint256:
    return ((w >> 192) & MASK32) * RATIO_UNIT


@pure
@internal
def _m_fee(w: uint256) -> uint256:
    return ((w >> 224) & MASK24) * RATIO_UNIT


@pure
@internal
def _m_active(w: uint256) -> bool:
    return (w >> 248) & 1 == 1
