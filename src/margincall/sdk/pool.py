"""`PoolClient`: the LP pool (ERC-4626): assets, share price, the open-interest reserve,
deposits, redemptions and withdrawals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from margincall.sdk.errors import InsufficientFunds, InvalidRequest, ReserveLocked, SharesLocked
from margincall.sdk.types import _addr, _has_view, in_tokens

# --- pool ---------------------------------------------------------------------


@dataclass(frozen=True)
class PoolState:
    """The pool as a whole (token units, except `reserve_factor` in wad)."""

    total_assets: int
    total_supply: int  # shares (the token's decimals + 6)
    reserve: int  # assets withdrawals must leave for open interest (rounded up)
    free_assets: int  # total_assets - reserve, floored at 0
    reserve_factor: int  # wad fraction of open interest
    share_price: int  # token units one whole share redeems for now (rounded down)
    cooldown: int | None = None  # seconds fresh shares stay locked; None: no cooldown


@dataclass(frozen=True)
class LpPosition:
    """One LP's shares and what they can take out now."""

    owner: str
    shares: int
    assets: int  # value of the shares (rounded down)
    max_withdraw: int  # token units, capped by the free assets
    max_redeem: int  # shares, capped by the free assets
    unlock_time: int | None  # end of its deposit cooldown (0: none); None: no cooldown


class PoolClient:
    """The LP pool (an ERC-4626 vault of the collateral token) and its token.

    A pool with a deposit cooldown exposes `unlock_time(owner)` and `locked_shares(owner)`:
    the shares a deposit minted can neither leave nor move before it ("pool: shares
    locked"), the owner's other shares can (on an older pool without `locked_shares`, none
    can). On a pool without those views the cooldown check is skipped (`unlock_time` and
    `cooldown` read None).
    """

    def __init__(self, pool: Any, token: Any):
        self.pool = pool
        self.token = token
        self.decimals = int(token.decimals())
        self.share_decimals = int(pool.decimals())

    @classmethod
    def from_system(cls, system: Any) -> PoolClient:
        return cls(system.pool, system.token)

    # --- reads ---

    def total_assets(self) -> int:
        """Token balance plus what the engine owes the pool (`engine_credit`)."""
        return int(self.pool.totalAssets())

    def token_balance(self) -> int:
        """The pool's own token balance (token units), without the engine's credit."""
        return int(self.token.balanceOf(self.pool.address))

    def engine_credit(self) -> int:
        """Trader losses and fees the engine settled lazily and still holds for the pool
        (token units): `totalAssets - token balance`."""
        return self.total_assets() - self.token_balance()

    def reserve(self) -> int:
        return int(self.pool.reserve())

    def free_assets(self) -> int:
        return int(self.pool.free_assets())

    def share_price(self) -> int:
        """Token units that one whole share (10**share_decimals) redeems for now."""
        return int(self.pool.convertToAssets(10**self.share_decimals))

    def state(self) -> PoolState:
        return PoolState(
            total_assets=self.total_assets(),
            total_supply=int(self.pool.totalSupply()),
            reserve=self.reserve(),
            free_assets=self.free_assets(),
            reserve_factor=int(self.pool.reserve_factor()),
            share_price=self.share_price(),
            cooldown=self.cooldown(),
        )

    def shares(self, owner: Any) -> int:
        return int(self.pool.balanceOf(_addr(owner)))

    def max_withdraw(self, owner: Any) -> int:
        return int(self.pool.maxWithdraw(_addr(owner)))

    def max_redeem(self, owner: Any) -> int:
        return int(self.pool.maxRedeem(_addr(owner)))

    def preview_deposit(self, assets: int) -> int:
        return int(self.pool.previewDeposit(assets))

    def preview_redeem(self, shares: int) -> int:
        return int(self.pool.previewRedeem(shares))

    def preview_withdraw(self, assets: int) -> int:
        return int(self.pool.previewWithdraw(assets))

    @property
    def has_cooldown(self) -> bool:
        """Whether the pool locks fresh deposits (it has an `unlock_time(owner)` view)."""
        return _has_view(self.pool, "unlock_time")

    def cooldown(self) -> int | None:
        """The pool's deposit cooldown in seconds (None: the pool has none)."""
        return int(self.pool.cooldown()) if _has_view(self.pool, "cooldown") else None

    def unlock_time(self, owner: Any) -> int | None:
        """When the owner's shares leave the cooldown (0: not locked; None: no cooldown)."""
        return int(self.pool.unlock_time(_addr(owner))) if self.has_cooldown else None

    def position(self, owner: Any) -> LpPosition:
        shares = self.shares(owner)
        return LpPosition(
            owner=_addr(owner),
            shares=shares,
            assets=int(self.pool.convertToAssets(shares)),
            max_withdraw=self.max_withdraw(owner),
            max_redeem=self.max_redeem(owner),
            unlock_time=self.unlock_time(owner),
        )

    # --- checks ---

    def check_deposit(self, assets: int, sender: Any, receiver: Any = None) -> int:
        """Returns the shares the deposit mints; raises what the pool would revert on."""
        if assets <= 0:
            raise InvalidRequest("pool deposit: amount must be positive")
        if receiver is not None and int(_addr(receiver), 16) == 0:
            raise InvalidRequest("pool deposit: zero receiver")
        balance = int(self.token.balanceOf(_addr(sender)))
        if balance < assets:
            raise InsufficientFunds(
                f"pool deposit: balance {in_tokens(balance, self.decimals)} < amount "
                f"{in_tokens(assets, self.decimals)}"
            )
        allowance = int(self.token.allowance(_addr(sender), _addr(self.pool)))
        if allowance < assets:
            raise InsufficientFunds(
                f"pool deposit: allowance {allowance} < amount {assets}; approve the pool first"
            )
        shares = self.preview_deposit(assets)
        if shares == 0:
            raise InvalidRequest(
                f"pool deposit: {in_tokens(assets, self.decimals)} buy no share (pool: zero shares)"
            )
        return shares

    def _check_unlocked(self, what: str, owner: Any, shares: int) -> None:
        """Refuses to move `shares` of `owner` that a deposit still locks: on a pool with a
        `locked_shares(owner)` view only the locked batch is refused (the rest moves);
        on an older pool with only `unlock_time` the whole balance is."""
        unlock = self.unlock_time(owner)
        if not unlock:
            return
        from ape import chain

        now = int(chain.blocks.head.timestamp)
        if now >= unlock:
            return
        if _has_view(self.pool, "locked_shares"):
            locked = int(self.pool.locked_shares(_addr(owner)))
            free = self.shares(owner) - locked
            if shares <= free:
                return
            raise SharesLocked(
                f"pool {what}: {shares} shares > the {free} of {_addr(owner)} free of the "
                f"deposit cooldown; {locked} locked until {unlock} (now {now}, {unlock - now} s "
                "left) (pool: shares locked)"
            )
        raise SharesLocked(
            f"pool {what}: {_addr(owner)}'s shares are in the deposit cooldown until "
            f"{unlock} (now {now}, {unlock - now} s left) (pool: shares locked)"
        )

    def _check_exit(self, what: str, owner: Any, sender: Any, shares: int, assets: int) -> None:
        """The checks common to `redeem` and `withdraw`, after the balance's."""
        free = self.free_assets()
        if assets > free:
            raise ReserveLocked(
                f"pool {what}: {in_tokens(assets, self.decimals)} would dip into the reserve for "
                f"open interest (pool: reserve for open interest); "
                f"{in_tokens(free, self.decimals)} are free now"
            )
        if _addr(sender).lower() != _addr(owner).lower():
            allowance = int(self.pool.allowance(_addr(owner), _addr(sender)))
            if allowance < shares:
                raise InsufficientFunds(
                    f"pool {what}: share allowance {allowance} < {shares} shares of the owner"
                )

    def check_redeem(self, shares: int, sender: Any, owner: Any = None) -> int:
        """Returns the token units the redemption pays; raises what the pool would revert on,
        in the pool's order (cooldown, balance, reserve; then the share allowance)."""
        owner = sender if owner is None else owner
        if shares <= 0:
            raise InvalidRequest("pool redeem: shares must be positive")
        self._check_unlocked("redeem", owner, shares)
        held = self.shares(owner)
        if shares > held:
            raise InsufficientFunds(
                f"pool redeem: {shares} shares > the {held} held (pool: redeem more than balance)"
            )
        assets = self.preview_redeem(shares)
        self._check_exit("redeem", owner, sender, shares, assets)
        return assets

    def check_withdraw(self, assets: int, sender: Any, owner: Any = None) -> int:
        """Returns the shares the withdrawal burns; raises what the pool would revert on,
        in the pool's order (cooldown, balance, reserve; then the share allowance)."""
        owner = sender if owner is None else owner
        if assets <= 0:
            raise InvalidRequest("pool withdraw: amount must be positive")
        self._check_unlocked("withdraw", owner, self.preview_withdraw(assets))
        worth = int(self.pool.convertToAssets(self.shares(owner)))
        if assets > worth:
            raise InsufficientFunds(
                f"pool withdraw: {in_tokens(assets, self.decimals)} > the "
                f"{in_tokens(worth, self.decimals)} the shares are worth "
                "(pool: withdraw more than balance)"
            )
        shares = self.preview_withdraw(assets)
        self._check_exit("withdraw", owner, sender, shares, assets)
        return shares

    # --- senders ---

    def approve(self, amount: int, sender: Any, **txn: Any) -> Any:
        """Lets the pool take `amount` token units from the sender."""
        return self.token.approve(_addr(self.pool), amount, sender=sender, **txn)

    def deposit(self, assets: int, sender: Any, receiver: Any = None, **txn: Any) -> Any:
        """Deposits `assets` token units; the shares go to `receiver` (default: the sender)."""
        self.check_deposit(assets, sender, receiver)
        target = _addr(receiver if receiver is not None else sender)
        return self.pool.deposit(assets, target, sender=sender, **txn)

    def redeem(
        self, shares: int, sender: Any, receiver: Any = None, owner: Any = None, **txn: Any
    ) -> Any:
        """Burns `shares` of `owner` (default: the sender); the tokens go to `receiver`."""
        self.check_redeem(shares, sender, owner)
        to = _addr(receiver if receiver is not None else sender)
        return self.pool.redeem(shares, to, _addr(owner or sender), sender=sender, **txn)

    def withdraw(
        self, assets: int, sender: Any, receiver: Any = None, owner: Any = None, **txn: Any
    ) -> Any:
        """Takes exactly `assets` token units out of `owner`'s shares (default: the sender)."""
        self.check_withdraw(assets, sender, owner)
        to = _addr(receiver if receiver is not None else sender)
        return self.pool.withdraw(assets, to, _addr(owner or sender), sender=sender, **txn)
