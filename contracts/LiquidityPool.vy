# pragma version ~=0.4.3
"""
@title margincall liquidity pool
@notice An ERC-4626 vault of the collateral token, built on snekmate's
        `erc4626` module. The pool is the counterparty of trader PnL: the
        margin engine sends trader losses and trading fees to it with plain
        token transfers (so `totalAssets` is the pool's token balance and
        every share gains), and calls `pay` to pay realised trader profit
        out of it (every share loses).

        LP withdrawals keep a reserve for open interest:

            reserve = open_interest * reserve_factor / 1e18

        where `open_interest` is the engine's sum of |open notional| (wad,
        18 decimals) and `reserve_factor` is a wad fraction (default 20%).
        The reserve is converted to token units rounding UP (against the
        withdrawing LP, in favour of the traders' counterparty). Only the
        assets above the reserve (`free_assets`) can leave through
        `withdraw` and `redeem`; `maxWithdraw` and `maxRedeem` report
        that limit, as ERC-4626 requires. `pay` is not limited by the
        reserve: the reserve exists precisely to pay traders.

        Deposit cooldown: shares minted by `deposit` or `mint` are locked
        (no `withdraw`, `redeem`, `transfer` or `transferFrom` of them) until
        `unlock_time(receiver)`; only the freshly minted shares are locked,
        never the shares the receiver already held or received by
        transfer. Each address has one locked batch (`locked_shares`, the
        shares, and `unlock_time`): a mint of `shares` joins the batch
        still locked (`L` shares, `r` seconds left; an expired batch counts
        as empty) and the batch's time left becomes the share-weighted
        mean floor((L * r + shares * cooldown) / (L + shares)), never less
        than `r`. A fresh batch waits the whole `cooldown` (default 15
        minutes); the mean of values of at least 1 s is at least 1 s, so
        fresh shares never leave in the block that minted them. This stops
        a flash-loan sandwich: deposit, trigger a liquidation or a losing
        close that realises trader losses into the pool, redeem, all in one
        transaction. A depositor who holds the shares through the cooldown
        carries the pool's risk meanwhile.

        A deposit that names another address as receiver locks only the
        shares it gives that address: it cannot lock the receiver's own
        shares (the lock grief, SECURITY.md), and it extends the
        receiver's locked batch only by the weight of the gift, so that
        keeping someone's fresh deposit locked for the cooldown again costs
        about as many shares as the deposit itself, given away.

        Fixed point: risk values (open interest, reserve factor) are wad;
        amounts that move are token units. Conversion happens only in
        `_reserve`. Tokens with more than 18 decimals are rejected.
@custom:security Trusts the margin engine, set once by the owner, for two
        things: `pay` (only the engine may pay profit out of the pool) and
        `open_interest` (it sizes the reserve, so a faulty engine could lock
        LP withdrawals or release the reserve). Trusts the collateral token
        to be a plain ERC-20 (no fee on transfer, no rebasing, no hooks).
        Ownership is snekmate's two-step transfer; the owner can only set
        the engine (once), the reserve factor (bounded to [0, 1e18]) and the
        cooldown (at most 7 days); it can never move the pool's assets. Every function that moves
        tokens is `@nonreentrant`. Inflation attacks are mitigated by snekmate's virtual shares with
        a decimals offset of 6 (see `erc4626`), and a deposit that would mint no shares reverts.
"""

from ethereum.ercs import IERC20
from ethereum.ercs import IERC20Detailed
from ethereum.ercs import IERC4626

from .interfaces import ILiquidityPool
from .interfaces import IMarginEngine

implements: IERC4626
implements: ILiquidityPool

from snekmate.auth import ownable
from snekmate.auth import ownable_2step
from snekmate.extensions import erc4626
from snekmate.utils import math

# @dev `erc4626` initialises `ownable` (and `erc20`) itself; this contract
# (for `_check_owner`) and the two-step transfer extension use that same
# `ownable` instance, so the deployer is the owner of the pool.
uses: ownable
initializes: erc4626
initializes: ownable_2step[ownable := ownable]

exports: (
    # ERC-20 (the LP share token) and EIP-2612 / EIP-5267, from `erc4626`.
    # `transfer` and `transferFrom` are defined below (deposit cooldown).
    erc4626.totalSupply,
    erc4626.balanceOf,
    erc4626.approve,
    erc4626.allowance,
    erc4626.name,
    erc4626.symbol,
    erc4626.decimals,
    erc4626.permit,
    erc4626.nonces,
    erc4626.DOMAIN_SEPARATOR,
    erc4626.eip712Domain,
    # ERC-4626 views. `totalAssets`, the conversions and previews are
    # defined below (they count what the engine owes the pool), and so are
    # `deposit`, `mint`, `withdraw`, `redeem`, `maxWithdraw` and `maxRedeem`
    # (nonreentrant; the reserve).
    erc4626.asset,
    erc4626.maxDeposit,
    erc4626.maxMint,
    # Two-step ownership.
    ownable_2step.owner,
    ownable_2step.pending_owner,
    ownable_2step.transfer_ownership,
    ownable_2step.accept_ownership,
    ownable_2step.renounce_ownership,
)


# @dev 1.0 in wad.
WAD: constant(uint256) = 10**18
# @dev The default `reserve_factor`: 20% of open interest stays in the pool.
DEFAULT_RESERVE_FACTOR: constant(uint256) = 2 * 10**17
# virtual shares per token unit: 10**DECIMALS_OFFSET (inflation-attack defence)
DECIMALS_OFFSET: constant(uint8) = 6
# @dev The largest `reserve_factor`: 100% of open interest.
MAX_RESERVE_FACTOR: constant(uint256) = WAD
# @dev The default `cooldown`, seconds: shares of a fresh deposit are locked
# for 15 minutes.
DEFAULT_COOLDOWN: constant(uint256) = 900
# @dev The longest `cooldown`, seconds.
MAX_COOLDOWN: constant(uint256) = 7 * 86_400

# @dev 10**(18 - token decimals): wad per token unit.
_WAD_PER_UNIT: immutable(uint256)


# @dev The margin engine; set once by the owner.
engine: public(address)
# @dev The fraction (wad) of the engine's open interest that LP withdrawals
# must leave in the pool.
reserve_factor: public(uint256)
# @dev Seconds a fresh deposit locks its receiver's shares (see the notice).
cooldown: public(uint256)
# @dev When each address's locked batch of fresh shares unlocks (0: never
# locked); the batch is `_locked` shares until then.
unlock_time: public(HashMap[address, uint256])
# @dev The shares of each address's batch (see the notice); stale once
# `unlock_time` has passed.
_locked: HashMap[address, uint256]


event ProfitPaid:
    receiver: indexed(address)
    amount: uint256
    total_assets_after: uint256


event EngineSet:
    engine: indexed(address)


event ReserveFactorSet:
    old_factor: uint256
    new_factor: uint256


event CooldownSet:
    old_cooldown: uint256
    new_cooldown: uint256


event SharesLocked:
    owner: indexed(address)
    unlock_time: uint256
    locked_shares: uint256


@deploy
def __init__(asset_: address, name_: String[25], symbol_: String[5]):
    """
    @notice Deploys the pool; the deployer becomes the owner. The engine is
            set afterwards with `set_engine`.
    @param asset_ The collateral token (ERC-20 with at most 18 decimals).
    @param name_ The LP share token's name (also its EIP-712 domain name).
    @param symbol_ The LP share token's symbol.
    """
    assert asset_ != empty(address), "pool: zero address"
    token_decimals: uint8 = staticcall IERC20Detailed(asset_).decimals()
    assert token_decimals <= 18, "pool: token decimals above 18"
    _WAD_PER_UNIT = 10**convert(18 - token_decimals, uint256)

    # Decimals offset 6: each token unit is backed by 10**6 virtual shares,
    # so a first depositor who donates to the empty pool (the inflation /
    # share-griefing attack) must donate about a million times what it
    # wants a later LP to lose to rounding. Shares have the asset's decimals
    # plus 6.
    erc4626.__init__(name_, symbol_, IERC20(asset_), DECIMALS_OFFSET, name_, "1")
    ownable_2step.__init__()
    self.reserve_factor = DEFAULT_RESERVE_FACTOR
    log ReserveFactorSet(old_factor=0, new_factor=DEFAULT_RESERVE_FACTOR)
    self.cooldown = DEFAULT_COOLDOWN
    log CooldownSet(old_cooldown=0, new_cooldown=DEFAULT_COOLDOWN)


@external
@nonreentrant
def deposit(assets: uint256, receiver: address) -> uint256:
    """
    @notice Deposits exactly `assets` tokens and mints shares to `receiver`
            (rounded down, against the depositor). Locks the new shares
            (only those) for the cooldown; see the notice.
    @param assets The amount of tokens to deposit, in token units.
    @param receiver The receiver of the shares.
    @return The shares minted.
    """
    shares: uint256 = self._to_shares(assets, False)
    assert shares > 0, "pool: zero shares"
    erc4626._deposit(msg.sender, receiver, assets, shares)
    self._lock(receiver, shares)
    return shares


@external
@nonreentrant
def mint(shares: uint256, receiver: address) -> uint256:
    """
    @notice Mints exactly `shares` to `receiver` for the tokens it costs
            (rounded up, against the depositor). Locks the new shares (only
            those) for the cooldown; see the notice.
    @param shares The shares to mint.
    @param receiver The receiver of the shares.
    @return The tokens taken from the caller.
    """
    assert shares > 0, "pool: zero shares"
    assets: uint256 = self._to_assets(shares, True)
    erc4626._deposit(msg.sender, receiver, assets, shares)
    self._lock(receiver, shares)
    return assets


@external
def transfer(to: address, amount: uint256) -> bool:
    """
    @notice Moves `amount` shares from the caller to `to`; refused if
            that would move shares locked by a recent deposit.
    @param to The receiver of the shares.
    @param amount The shares to move.
    @return True (reverts on failure).
    """
    self._check_unlocked(msg.sender, amount)
    erc4626.erc20._transfer(msg.sender, to, amount)
    return True


@external
def transferFrom(owner: address, to: address, amount: uint256) -> bool:
    """
    @notice Moves `amount` shares from `owner` to `to` with the caller's
            allowance; refused if that would move shares of `owner`
            locked by a recent deposit.
    @param owner The owner of the shares.
    @param to The receiver of the shares.
    @param amount The shares to move.
    @return True (reverts on failure).
    """
    self._check_unlocked(owner, amount)
    erc4626.erc20._spend_allowance(owner, msg.sender, amount)
    erc4626.erc20._transfer(owner, to, amount)
    return True


@external
@view
def maxWithdraw(owner: address) -> uint256:
    """
    @notice The most tokens `owner` can withdraw now: the value of its
            shares, capped by the free assets above the open-interest
            reserve; shares locked by a recent deposit do not count.
    @param owner The share owner.
    @return The maximum `withdraw` amount, in token units.
    """
    unlocked: uint256 = erc4626.erc20.balanceOf[owner] - self._locked_now(owner)
    return min(self._to_assets(unlocked, False), self._free_assets())


@external
@view
def maxRedeem(owner: address) -> uint256:
    """
    @notice The most shares `owner` can redeem now: its balance, capped by
            the shares that the free assets buy (rounded down), so that
            redeeming them never touches the reserve; shares locked by a
            recent deposit do not count.
    @param owner The share owner.
    @return The maximum `redeem` amount, in shares.
    """
    unlocked: uint256 = erc4626.erc20.balanceOf[owner] - self._locked_now(owner)
    return min(unlocked, self._to_shares(self._free_assets(), False))


@external
@nonreentrant
def withdraw(assets: uint256, receiver: address, owner: address) -> uint256:
    """
    @notice Burns the shares worth `assets` (rounded up, against the LP)
            from `owner` and sends exactly `assets` tokens to `receiver`.
            Reverts if that would dip into the open-interest reserve, or
            burn shares of `owner` locked by a recent deposit.
    @param assets The tokens to withdraw, in token units.
    @param receiver The receiver of the tokens.
    @param owner The owner of the shares; a caller other than `owner`
           spends its share allowance.
    @return The shares burned.
    """
    shares: uint256 = self._to_shares(assets, True)
    self._check_unlocked(owner, shares)
    assert assets <= self._to_assets(
        erc4626.erc20.balanceOf[owner], False
    ), "pool: withdraw more than balance"
    assert assets <= self._free_assets(), "pool: reserve for open interest"
    self._collect(assets)
    erc4626._withdraw(msg.sender, receiver, owner, assets, shares)
    return shares


@external
@nonreentrant
def redeem(shares: uint256, receiver: address, owner: address) -> uint256:
    """
    @notice Burns exactly `shares` from `owner` and sends their value
            (rounded down, against the LP) to `receiver`. Reverts if that
            would dip into the open-interest reserve, or burn shares of
            `owner` locked by a recent deposit.
    @param shares The shares to redeem.
    @param receiver The receiver of the tokens.
    @param owner The owner of the shares; a caller other than `owner`
           spends its share allowance.
    @return The tokens sent, in token units.
    """
    self._check_unlocked(owner, shares)
    assert shares <= erc4626._max_redeem(owner), "pool: redeem more than balance"
    assets: uint256 = self._to_assets(shares, False)
    assert assets <= self._free_assets(), "pool: reserve for open interest"
    self._collect(assets)
    erc4626._withdraw(msg.sender, receiver, owner, assets, shares)
    return assets


@external
@nonreentrant
def pay(receiver: address, amount: uint256):
    """
    @notice Pays realised trader profit out of the pool. Only the engine
            may call it. Not limited by the reserve (which exists to pay
            traders), only by the pool's balance. A zero amount does
            nothing.
    @param receiver The receiver of the tokens (the engine, which credits
           the trader's margin account).
    @param amount The profit, in token units.
    """
    assert msg.sender == self.engine, "pool: only engine"
    if amount == 0:
        return
    # the engine pays out of what it owes the pool first: here it owes nothing
    assert amount <= self._total(), "pool: insufficient liquidity"
    assert extcall IERC20(erc4626.asset).transfer(
        receiver, amount, default_return_value=True
    ), "pool: token transfer failed"
    log ProfitPaid(receiver=receiver, amount=amount, total_assets_after=self._total())


@external
@view
def totalAssets() -> uint256:
    """
    @notice The pool's assets: its token balance plus what the margin
            engine owes it (trader losses and fees it settled lazily,
            `engine.claimable(pool)`), so that share prices count both.
    @return The total assets, in token units.
    """
    return self._total()


@external
@view
def convertToShares(assets: uint256) -> uint256:
    """
    @notice The shares `assets` buy at the current price (rounded down).
    @param assets Token units.
    @return The shares.
    """
    return self._to_shares(assets, False)


@external
@view
def convertToAssets(shares: uint256) -> uint256:
    """
    @notice The assets `shares` are worth at the current price (rounded
            down).
    @param shares The shares.
    @return Token units.
    """
    return self._to_assets(shares, False)


@external
@view
def previewDeposit(assets: uint256) -> uint256:
    """
    @notice The shares `deposit(assets)` would mint now (rounded down).
    @param assets Token units.
    @return The shares.
    """
    return self._to_shares(assets, False)


@external
@view
def previewMint(shares: uint256) -> uint256:
    """
    @notice The assets `mint(shares)` would take now (rounded up).
    @param shares The shares.
    @return Token units.
    """
    return self._to_assets(shares, True)


@external
@view
def previewWithdraw(assets: uint256) -> uint256:
    """
    @notice The shares `withdraw(assets)` would burn now (rounded up).
    @param assets Token units.
    @return The shares.
    """
    return self._to_shares(assets, True)


@external
@view
def previewRedeem(shares: uint256) -> uint256:
    """
    @notice The assets `redeem(shares)` would send now (rounded down).
    @param shares The shares.
    @return Token units.
    """
    return self._to_assets(shares, False)


@external
def set_engine(engine: address):
    """
    @notice Sets the margin engine, once. Only the owner.
    @param engine The margin engine.
    """
    ownable._check_owner()
    assert self.engine == empty(address), "pool: engine already set"
    assert engine != empty(address), "pool: zero address"
    self.engine = engine
    log EngineSet(engine=engine)


@external
def set_reserve_factor(new_factor: uint256):
    """
    @notice Sets the fraction of open interest that LP withdrawals must
            leave in the pool. Only the owner.
    @param new_factor The fraction, wad, in [0, 1e18].
    """
    ownable._check_owner()
    assert new_factor <= MAX_RESERVE_FACTOR, "pool: reserve factor too high"
    log ReserveFactorSet(old_factor=self.reserve_factor, new_factor=new_factor)
    self.reserve_factor = new_factor


@external
def set_cooldown(new_cooldown: uint256):
    """
    @notice Sets how long a fresh deposit's shares stay locked. Only the
            owner. Locks already set keep their time.
    @param new_cooldown Seconds, at most 7 days; 0 disables new locks.
    """
    ownable._check_owner()
    assert new_cooldown <= MAX_COOLDOWN, "pool: cooldown too long"
    log CooldownSet(old_cooldown=self.cooldown, new_cooldown=new_cooldown)
    self.cooldown = new_cooldown


@external
@view
def reserve() -> uint256:
    """
    @notice The assets that LP withdrawals must leave for open interest.
    @return The reserve, in token units (rounded up).
    """
    return self._reserve()


@external
@view
def free_assets() -> uint256:
    """
    @notice The assets above the open-interest reserve, which LPs may
            withdraw: max(totalAssets - reserve, 0).
    @return The free assets, in token units.
    """
    return self._free_assets()


@external
@view
def locked_shares(owner: address) -> uint256:
    """
    @notice The shares of `owner` that a recent deposit still locks (they
            cannot leave or move before `unlock_time(owner)`).
    @param owner The share owner.
    @return The locked shares (0 once `unlock_time` has passed).
    """
    return self._locked_now(owner)


@internal
def _lock(receiver: address, shares: uint256):
    """
    @dev Adds `shares` to `receiver`'s locked batch (an expired batch counts
         as empty) and sets the batch's time left to the share-weighted
         mean of its time left and the cooldown, rounded down, never less
         than its time left. The receiver's other shares stay free.
    """
    cooldown: uint256 = self.cooldown
    if cooldown == 0:
        return
    locked: uint256 = self._locked_now(receiver)
    left: uint256 = 0
    if locked > 0:
        left = self.unlock_time[receiver] - block.timestamp
    total: uint256 = locked + shares
    mean: uint256 = (locked * left + shares * cooldown) // total
    until: uint256 = block.timestamp + max(mean, left)
    self._locked[receiver] = total
    self.unlock_time[receiver] = until
    log SharesLocked(owner=receiver, unlock_time=until, locked_shares=total)


@internal
@view
def _locked_now(owner: address) -> uint256:
    """
    @dev The locked batch of `owner`, or 0 once its unlock time has passed.
    """
    if block.timestamp < self.unlock_time[owner]:
        return self._locked[owner]
    return 0


@internal
@view
def _check_unlocked(owner: address, shares: uint256):
    """
    @dev Refuses to move `shares` of `owner` if fewer than that are free of
         the lock (the balance never falls below the locked batch: locked
         shares cannot leave). Checked first, so that an owner with a
         locked batch learns why; without one, the balance checks follow.
    """
    balance: uint256 = erc4626.erc20.balanceOf[owner]
    locked: uint256 = self._locked_now(owner)
    assert locked == 0 or shares <= balance - locked, "pool: shares locked"


@internal
@view
def _reserve() -> uint256:
    """
    @dev open_interest (wad) * reserve_factor (wad) / 1e18, converted to
         token units, in one division rounded UP (against the LP). Zero
         while no engine is set.
    """
    engine: address = self.engine
    if engine == empty(address):
        return 0
    open_interest: uint256 = staticcall IMarginEngine(engine).open_interest()
    return math._mul_div(open_interest, self.reserve_factor, WAD * _WAD_PER_UNIT, True)


@internal
@view
def _free_assets() -> uint256:
    """
    @dev totalAssets minus the reserve, floored at 0.
    """
    total: uint256 = self._total()
    reserved: uint256 = self._reserve()
    if total <= reserved:
        return 0
    return total - reserved


@internal
@view
def _total() -> uint256:
    """
    @dev The token balance plus the engine's lazily settled debt to the pool.
    """
    total: uint256 = staticcall IERC20(erc4626.asset).balanceOf(self)
    engine: address = self.engine
    if engine != empty(address):
        total += staticcall IMarginEngine(engine).claimable(self)
    return total


@internal
@view
def _to_shares(assets: uint256, roundup: bool) -> uint256:
    """
    @dev snekmate's conversion (virtual shares, decimals offset) on `_total`.
    """
    return math._mul_div(
        assets,
        erc4626.erc20.totalSupply + 10**convert(DECIMALS_OFFSET, uint256),
        self._total() + 1,
        roundup,
    )


@internal
@view
def _to_assets(shares: uint256, roundup: bool) -> uint256:
    """
    @dev snekmate's conversion (virtual shares, decimals offset) on `_total`.
    """
    return math._mul_div(
        shares,
        self._total() + 1,
        erc4626.erc20.totalSupply + 10**convert(DECIMALS_OFFSET, uint256),
        roundup,
    )


@internal
def _collect(assets: uint256):
    """
    @dev Before `assets` leave: collects what the engine owes the pool when
         the token balance alone does not cover them.
    """
    if staticcall IERC20(erc4626.asset).balanceOf(self) < assets:
        extcall IMarginEngine(self.engine).claim_rewards(self)
