"""Typed SDK over every margincall contract: read, check, then send.

- `MarginEngineClient`: margin accounts, trades, margin calls, liquidations;
- `PoolClient`: the LP pool (ERC-4626): assets, share price, the open-interest
  reserve, deposits, redemptions and withdrawals;
- `FundClient`: the insurance fund: balance, donations, its payments to keepers;
- `OracleClient`: one market's oracle adapter: price, validity, reason, settings;
- `Clients`: all four over one deployed system (`Clients.from_system`,
  `Clients.from_record`).

Everything the CLI, the bots, the scripts, the simulator and the tests do with
the contracts goes through these clients. Reads come back as frozen dataclasses with
plain integers (wad for values and ratios, token units for token amounts, as
the engine documents). Every sender checks first, with the engine's own views
and the reference math of `margincall.math`, and raises a typed
`MarginCallError` with a clear message instead of sending a transaction that
would revert. The checks are made at the head block; a transaction mined a
block later can still revert when the chain moves in between (a price update,
a rival keeper), and the engine's batched actions skip such accounts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from margincall import math as ref
from margincall.constants import (
    MAX_BATCH,
    MAX_MARKETS,
    MAX_POSITIONS,
    MAX_SCAN,
    WAD,
    PlanCode,
    State,
)

MAX_UINT = 2**256 - 1
STALE_REASON = "oracle: stale price"

# --- errors ---------------------------------------------------------------


class MarginCallError(Exception):
    """Base of every error the SDK raises before sending a transaction."""


class InvalidRequest(MarginCallError, ValueError):
    """The request itself cannot succeed (zero amount, unknown market, ...)."""


class InsufficientFunds(MarginCallError):
    """The sender lacks the token balance or allowance for a deposit."""


class InsufficientMargin(MarginCallError):
    """The account would end below its initial margin (or lose more than its collateral)."""


class UnderMarginCall(MarginCallError):
    """The account is under a margin call: no withdrawal and no new exposure."""


class OracleError(MarginCallError):
    """A needed price is invalid; `reason` is the adapter's `reason()`."""

    def __init__(self, market_id: int, reason: str):
        self.market_id = market_id
        self.reason = reason
        super().__init__(f"market {market_id}: no valid price ({reason or 'unknown reason'})")


class StalePrice(OracleError):
    """The needed price is older than the feed's heartbeat."""


class SlippageExceeded(MarginCallError):
    """The oracle price is beyond the trader's acceptable price."""


class NotCallable(MarginCallError):
    """`margin_call` would revert: the account is not CALLABLE."""


class NotLiquidatable(MarginCallError):
    """`liquidate` would revert: the account is not liquidatable."""


class TooSoon(NotLiquidatable):
    """`liquidate` would revert: the tranche interval has not elapsed."""


class WindowFull(NotLiquidatable):
    """`liquidate` would revert: the market's liquidation window cap is reached."""


class ReserveLocked(MarginCallError):
    """An LP withdrawal would dip into the pool's reserve for open interest."""


class SharesLocked(MarginCallError):
    """The LP's shares are still in the pool's cooldown (only on pools that have one)."""


# --- data ---------------------------------------------------------------


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, dict):
        return obj[name]
    return getattr(obj, name)


def _addr(who: Any) -> str:
    return str(getattr(who, "address", who))


@dataclass(frozen=True)
class MarginStatus:
    """`check_margin(account)`: all values in wad (collateral included)."""

    account: str
    collateral: int
    equity: int
    maintenance: int
    initial: int
    ratio: int  # MAX_UINT with no positions
    state: State
    call_deadline: int  # 0 when no live call
    next_tranche_time: int  # 0 before the first tranche
    positions: int
    priced: bool = True  # False: a needed price is invalid (batched view only)

    @classmethod
    def from_struct(cls, s: Any) -> MarginStatus:
        return cls(
            account=str(_get(s, "account")),
            collateral=int(_get(s, "collateral")),
            equity=int(_get(s, "equity")),
            maintenance=int(_get(s, "maintenance")),
            initial=int(_get(s, "initial")),
            ratio=int(_get(s, "ratio")),
            state=State(int(_get(s, "state"))),
            call_deadline=int(_get(s, "call_deadline")),
            next_tranche_time=int(_get(s, "next_tranche_time")),
            positions=int(_get(s, "positions")),
            priced=bool(_get(s, "priced")),
        )

    @property
    def free_margin(self) -> int:
        """Equity above the initial margin (wad); negative when short of it."""
        return self.equity - self.initial

    @property
    def needs_action(self) -> bool:
        """A keeper may act on it now (call or liquidate), tranche interval aside."""
        return self.priced and self.state in (
            State.CALLABLE,
            State.LIQUIDATABLE,
            State.CRITICAL,
            State.BANKRUPT,
        )


@dataclass(frozen=True)
class Position:
    """One open position, priced at the oracle (wad)."""

    market_id: int
    size: int  # signed, wad of base asset
    open_notional: int  # signed, size times average entry price
    price: int  # oracle price

    @property
    def notional(self) -> int:
        return ref.mul_up(abs(self.size), self.price)

    @property
    def pnl(self) -> int:
        """Unrealised PnL (wad), rounded down as the engine does."""
        return ref.div_floor(self.size * self.price, WAD) - self.open_notional

    @property
    def entry_price(self) -> int:
        return abs(self.open_notional) * WAD // abs(self.size) if self.size else 0

    @property
    def is_long(self) -> bool:
        return self.size > 0


@dataclass(frozen=True)
class LiquidationPreview:
    """`preview_liquidation(account)`: token amounts in token units, the rest in wad."""

    state: State
    liquidatable: bool
    reason: PlanCode
    full_close: bool
    fraction: int
    closed: tuple[tuple[int, int], ...]  # (market id, closed size)
    closed_notional: int
    penalty: int
    keeper_reward: int
    fund_fee: int
    deficit: int
    equity_after: int
    ratio_after: int

    @classmethod
    def from_struct(cls, p: Any) -> LiquidationPreview:
        return cls(
            state=State(int(_get(p, "state"))),
            liquidatable=bool(_get(p, "liquidatable")),
            reason=PlanCode(int(_get(p, "reason"))),
            full_close=bool(_get(p, "full_close")),
            fraction=int(_get(p, "fraction")),
            closed=tuple(
                (int(m), int(s))
                for m, s in zip(_get(p, "market_ids"), _get(p, "closed_sizes"), strict=True)
            ),
            closed_notional=int(_get(p, "closed_notional")),
            penalty=int(_get(p, "penalty")),
            keeper_reward=int(_get(p, "keeper_reward")),
            fund_fee=int(_get(p, "fund_fee")),
            deficit=int(_get(p, "deficit")),
            equity_after=int(_get(p, "equity_after")),
            ratio_after=int(_get(p, "ratio_after")),
        )


@dataclass(frozen=True)
class Market:
    """`markets(market_id)` (ratios in wad)."""

    market_id: int
    oracle: str
    imr: int
    mmr: int
    fee: int
    window_cap: int
    active: bool


@dataclass(frozen=True)
class AccountRecord:
    """`account_info(account)`: the raw record (collateral in token units)."""

    collateral: int
    markets: int  # bitmap
    deadline: int  # recorded call deadline, 0 if none (may have lapsed)
    last_tranche: int
    tranches: int

    @property
    def market_ids(self) -> tuple[int, ...]:
        return tuple(m for m in range(MAX_MARKETS) if self.markets >> m & 1)


def _checked_price(adapter: Any, market_id: int) -> int:
    """The adapter's price (wad); `StalePrice`/`OracleError` with its reason when invalid."""
    price, ok = adapter.try_price()
    if not ok:
        reason = str(adapter.reason())
        raise (StalePrice if reason == STALE_REASON else OracleError)(market_id, reason)
    return int(price)


def _has_view(contract: Any, name: str) -> bool:
    """Whether the contract's ABI has a view `name` (any object with that attribute when it
    carries no ABI, as test doubles do)."""
    contract_type = getattr(contract, "contract_type", None)
    if contract_type is None:
        return callable(getattr(contract, name, None))
    return any(abi.name == name for abi in contract_type.view_methods)


def chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive slices of at most `size` items."""
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


# --- client ---------------------------------------------------------------


class MarginEngineClient:
    """The engine, its collateral token and its oracle adapters (one per market id)."""

    def __init__(self, engine: Any, token: Any, oracles: Sequence[Any]):
        self.engine = engine
        self.token = token
        self.oracles = list(oracles)
        self.decimals = int(token.decimals())
        self.scale = 10 ** (18 - self.decimals)
        self._fast: Any = None  # the raw check_margins scanner, built on first use

    @classmethod
    def from_system(cls, system: Any) -> MarginEngineClient:
        """From a `margincall.deploy.System`."""
        return cls(system.engine, system.token, system.oracles)

    # --- units ---

    def to_wad(self, amount: int) -> int:
        """Token units to wad."""
        return int(amount) * self.scale

    def to_tokens(self, wad: int, round_up: bool = False) -> int:
        """Wad to token units, rounded down unless `round_up`."""
        return ref.div_ceil(int(wad), self.scale) if round_up else int(wad) // self.scale

    def tokens(self, whole: int | float | str) -> int:
        """Whole tokens (e.g. `"12.5"`) to token units."""
        from decimal import Decimal

        return int(Decimal(str(whole)) * 10**self.decimals)

    # --- chain ---

    @property
    def now(self) -> int:
        """The head block's timestamp: the time the engine's views see."""
        from ape import chain

        return int(chain.blocks.head.timestamp)

    # --- reads ---

    def risk_params(self) -> ref.RiskParams:
        rp = self.engine.risk_params()
        return ref.RiskParams(**{f: int(_get(rp, f)) for f in ref.RiskParams.__dataclass_fields__})

    def market(self, market_id: int) -> Market:
        m = self.engine.markets(market_id)
        return Market(
            market_id,
            str(m.oracle),
            int(m.imr),
            int(m.mmr),
            int(m.fee),
            int(m.window_cap),
            bool(m.active),
        )

    def market_count(self) -> int:
        return int(self.engine.market_count())

    def record(self, account: Any) -> AccountRecord:
        return AccountRecord(*(int(x) for x in self.engine.account_info(_addr(account))))

    def collateral(self, account: Any) -> int:
        """Collateral in token units."""
        return int(self.engine.collateral_of(_addr(account)))

    def oracle(self, market_id: int) -> Any:
        if not 0 <= market_id < len(self.oracles):
            raise InvalidRequest(f"market {market_id}: no oracle adapter known to the client")
        return self.oracles[market_id]

    def price(self, market_id: int) -> int:
        """The market's oracle price (wad); raises `StalePrice`/`OracleError` when invalid."""
        return _checked_price(self.oracle(market_id), market_id)

    def prices(self, market_ids: Iterable[int]) -> dict[int, int]:
        return {m: self.price(m) for m in market_ids}

    def status(self, account: Any) -> MarginStatus:
        """`check_margin(account)`; raises `OracleError` if a needed price is invalid."""
        self.prices(self.record(account).market_ids)
        return MarginStatus.from_struct(self.engine.check_margin(_addr(account)))

    def statuses(
        self, accounts: Sequence[Any], chunk: int = MAX_SCAN, block_id: int | None = None
    ) -> list[MarginStatus]:
        """`check_margins` over any number of accounts, in calls of at most `chunk` (<= 500).

        Accounts needing an invalid price come back with `priced=False`. `block_id` reads
        the state after that block (all chunks at the same block); default: the head.
        """
        if not 0 < chunk <= MAX_SCAN:
            raise InvalidRequest(f"chunk must be in 1..{MAX_SCAN}, got {chunk}")
        at = {} if block_id is None else {"block_id": block_id}
        fast = self._fast_scan()
        out: list[MarginStatus] = []
        for part in chunks([_addr(a) for a in accounts], chunk):
            if fast is not None:
                out.extend(fast(part, block_id))
            else:
                out.extend(
                    MarginStatus.from_struct(s) for s in self.engine.check_margins(part, **at)
                )
        return out

    def _fast_scan(self) -> Any:
        """A raw `eth_call` + direct decoder for `check_margins` (10x faster than the ABI
        round trip at 500 accounts: what a keeper's scan needs), or None when the engine
        is not reachable that way or its status layout is not the one the decoder knows."""
        if self._fast is False:
            return None
        if self._fast is None:
            self._fast = False
            try:
                from eth_utils import keccak

                from margincall.codec import (  # imports this module: not at the top
                    Abi,
                    check_status_layout,
                    decode_statuses,
                    encode_addresses,
                )

                check_status_layout(Abi.of(self.engine))
                web3 = self.engine.provider.web3
                to = str(self.engine.address)
                selector = keccak(text="check_margins(address[])")[:4]
            except Exception:  # noqa: BLE001 - any doubt: use the generic path
                return None

            def scan(part: list[str], block_id: int | None) -> list[MarginStatus]:
                data = encode_addresses(selector, part)
                raw = web3.eth.call({"to": to, "data": data}, block_identifier=block_id or "latest")
                return decode_statuses("0x" + bytes(raw).hex())

            self._fast = scan
        return self._fast

    def positions(self, account: Any) -> list[Position]:
        """The account's open positions at the oracle prices."""
        out = []
        for m in self.record(account).market_ids:
            size, cost = self.engine.position(_addr(account), m)
            out.append(Position(m, int(size), int(cost), self.price(m)))
        return out

    def preview_liquidation(self, account: Any) -> LiquidationPreview:
        """`preview_liquidation(account)`; raises `OracleError` if a needed price is invalid."""
        self.prices(self.record(account).market_ids)
        return LiquidationPreview.from_struct(self.engine.preview_liquidation(_addr(account)))

    def model(self, account: Any) -> ref.Account:
        """The account as the reference math's `Account`, at the oracle prices."""
        rec = self.record(account)
        positions = []
        for p in self.positions(account):
            m = self.market(p.market_id)
            positions.append(
                ref.Position(p.market_id, p.size, p.open_notional, p.price, m.mmr, m.imr)
            )
        return ref.Account(
            rec.collateral, tuple(positions), rec.deadline, rec.last_tranche, rec.tranches
        )

    # --- checks (raise before sending) ---

    def check_deposit(self, amount: int, sender: Any, account: Any = None) -> None:
        if amount <= 0:
            raise InvalidRequest("deposit: amount must be positive")
        if account is not None and int(_addr(account), 16) == 0:
            raise InvalidRequest("deposit: zero account")
        balance = int(self.token.balanceOf(_addr(sender)))
        if balance < amount:
            raise InsufficientFunds(f"deposit: balance {balance} < amount {amount} (token units)")
        allowance = int(self.token.allowance(_addr(sender), _addr(self.engine)))
        if allowance < amount:
            raise InsufficientFunds(
                f"deposit: allowance {allowance} < amount {amount}; approve the engine first"
            )

    def check_withdraw(self, amount: int, account: Any) -> None:
        if amount <= 0:
            raise InvalidRequest("withdraw: amount must be positive")
        acct = self.model(account)
        if amount > acct.collateral:
            raise InvalidRequest(
                f"withdraw: amount {amount} exceeds collateral {acct.collateral} (token units)"
            )
        if not acct.positions:
            return
        params = self.risk_params()
        after = replace(acct, collateral=acct.collateral - amount)
        v = ref.evaluate(after, self.scale)
        if acct.deadline != 0:
            before = ref.ratio(v.equity + amount * self.scale, v.maintenance)
            if before < params.call_ratio:
                raise UnderMarginCall(
                    f"withdraw: account is under a margin call (ratio {before / WAD:.4f} "
                    f"< call ratio {params.call_ratio / WAD:.4f}); deposit or reduce first"
                )
        if v.equity < v.initial:
            free = self.to_tokens(ref.evaluate(acct, self.scale).equity - v.initial)
            raise InsufficientMargin(
                f"withdraw: {amount} would leave equity below the initial margin; "
                f"at most {max(free, 0)} token units are free"
            )

    def check_trade(
        self, market_id: int, size_delta: int, acceptable_price: int, account: Any
    ) -> None:
        """Mirrors the checks of `MarginEngine._trade`, in its order."""
        if size_delta == 0:
            raise InvalidRequest("trade: zero size")
        if not 0 <= market_id < self.market_count():
            raise InvalidRequest(f"trade: unknown market {market_id}")
        price = self.price(market_id)
        if size_delta > 0 and price > acceptable_price:
            raise SlippageExceeded(
                f"trade: buy at oracle price {price} above acceptable price {acceptable_price}"
            )
        if size_delta < 0 and price < acceptable_price:
            raise SlippageExceeded(
                f"trade: sell at oracle price {price} below acceptable price {acceptable_price}"
            )
        rec = self.record(account)
        market = self.market(market_id)
        params = self.risk_params()
        size, cost = (int(x) for x in self.engine.position(_addr(account), market_id))
        realized = 0
        if size == 0 or (size > 0) == (size_delta > 0):
            increases = True
            new_size, new_cost = size + size_delta, cost + ref.div_ceil(size_delta * price, WAD)
        elif abs(size_delta) <= abs(size):
            increases = False
            closed_cost = ref.div_ceil(cost * -size_delta, size)
            realized = ref.div_floor(-size_delta * price, WAD) - closed_cost
            new_size, new_cost = size + size_delta, cost - closed_cost
        else:
            increases = True
            realized = ref.div_floor(size * price, WAD) - cost
            new_size = size + size_delta
            new_cost = ref.div_ceil(new_size * price, WAD)
        if new_size != 0 and ref.mul_up(abs(new_size), price) < params.min_position_notional:
            raise InvalidRequest(
                f"trade: position notional below the minimum "
                f"{params.min_position_notional / WAD:g} (close it or keep more)"
            )
        fee = ref.div_ceil(ref.mul_up(ref.mul_up(abs(size_delta), price), market.fee), self.scale)
        balance = rec.collateral + ref.div_floor(realized, self.scale) - fee
        if balance < 0:
            raise InsufficientMargin("trade: the realised loss exceeds the collateral")
        others = tuple(m for m in rec.market_ids if m != market_id)
        if new_size != 0 and size == 0 and len(others) >= MAX_POSITIONS:
            raise InvalidRequest(f"trade: too many positions (at most {MAX_POSITIONS})")
        if increases:
            # new exposure needs every price of the account (a reduction needs only its own)
            if bool(self.engine.paused()):
                raise InvalidRequest("trade: engine paused for new exposure")
            if not market.active:
                raise InvalidRequest(f"trade: market {market_id} not active for new exposure")
            acct = self.model(account)
            new_pos = (
                (ref.Position(market_id, new_size, new_cost, price, market.mmr, market.imr),)
                if new_size
                else ()
            )
            kept = tuple(p for p in acct.positions if p.market_id != market_id)
            after = replace(
                acct,
                collateral=balance,
                positions=tuple(sorted(kept + new_pos, key=lambda p: p.market_id)),
            )
            v = ref.evaluate(after, self.scale)
            if acct.deadline != 0 and v.ratio < params.call_ratio:
                raise UnderMarginCall(
                    "trade: no new exposure under a margin call; deposit or reduce first"
                )
            if v.equity < v.initial:
                raise InsufficientMargin(
                    f"trade: equity {v.equity / WAD:.4f} would be below the initial margin "
                    f"{v.initial / WAD:.4f} after the trade"
                )

    def check_margin_call(self, account: Any) -> MarginStatus:
        s = self.status(account)
        if s.state != State.CALLABLE:
            raise NotCallable(f"margin_call: account {s.account} is {s.state.name}, not CALLABLE")
        return s

    def check_liquidate(self, account: Any) -> LiquidationPreview:
        p = self.preview_liquidation(account)
        who = _addr(account)
        if p.reason == PlanCode.TOO_SOON:
            nxt = self.status(account).next_tranche_time
            raise TooSoon(
                f"liquidate: tranche interval not elapsed for {who} "
                f"(next tranche at {nxt}, now {self.now})"
            )
        if p.reason == PlanCode.WINDOW_FULL:
            raise WindowFull(f"liquidate: liquidation window cap reached for {who}'s markets")
        if not p.liquidatable:
            raise NotLiquidatable(f"liquidate: account {who} is {p.state.name}, not liquidatable")
        return p

    # --- senders ---

    def approve(self, amount: int, sender: Any, **txn: Any) -> Any:
        """Lets the engine take `amount` token units from the sender (for deposits)."""
        return self.token.approve(_addr(self.engine), amount, sender=sender, **txn)

    def deposit(self, amount: int, sender: Any, account: Any = None, **txn: Any) -> Any:
        """Deposits `amount` token units for `account` (default: the sender)."""
        self.check_deposit(amount, sender, account)
        target = _addr(account if account is not None else sender)
        return self.engine.deposit(amount, target, sender=sender, **txn)

    def deposit_call(self, amount: int, sender: Any, account: Any = None) -> tuple[Any, tuple]:
        """The checked deposit as `(contract method, arguments)`, for a sender that does not
        wait for receipts (`margincall.tx.TxSender.send_call`); raises as `deposit` does."""
        self.check_deposit(amount, sender, account)
        return self.engine.deposit, (amount, _addr(account if account is not None else sender))

    def withdraw(self, amount: int, sender: Any, **txn: Any) -> Any:
        self.check_withdraw(amount, sender)
        return self.engine.withdraw(amount, sender=sender, **txn)

    def acceptable_price(self, market_id: int, size_delta: int, slippage_bps: int = 50) -> int:
        """A slippage bound around the current oracle price (above for buys, below for sells)."""
        price = self.price(market_id)
        if size_delta > 0:
            return price * (10_000 + slippage_bps) // 10_000
        return price * (10_000 - slippage_bps) // 10_000

    def trade(
        self, market_id: int, size_delta: int, acceptable_price: int, sender: Any, **txn: Any
    ) -> Any:
        self.check_trade(market_id, size_delta, acceptable_price, sender)
        return self.engine.trade(market_id, size_delta, acceptable_price, sender=sender, **txn)

    def close(self, market_id: int, acceptable_price: int, sender: Any, **txn: Any) -> Any:
        size, _ = self.engine.position(_addr(sender), market_id)
        if int(size) == 0:
            raise InvalidRequest(f"close: no position in market {market_id}")
        self.check_trade(market_id, -int(size), acceptable_price, sender)
        return self.engine.close_position(market_id, acceptable_price, sender=sender, **txn)

    def margin_call(self, account: Any, sender: Any, **txn: Any) -> Any:
        self.check_margin_call(account)
        return self.engine.margin_call(_addr(account), sender=sender, **txn)

    def liquidate(self, account: Any, sender: Any, **txn: Any) -> Any:
        self.check_liquidate(account)
        return self.engine.liquidate(_addr(account), sender=sender, **txn)

    def callable_accounts(self, accounts: Sequence[Any]) -> list[str]:
        return [
            s.account for s in self.statuses(accounts) if s.priced and s.state == State.CALLABLE
        ]

    def liquidatable_accounts(self, accounts: Sequence[Any]) -> list[str]:
        now = self.now
        out = []
        for s in self.statuses(accounts):
            if not s.priced or s.state < State.LIQUIDATABLE:
                continue
            if s.state == State.LIQUIDATABLE and now < s.next_tranche_time:
                continue
            out.append(s.account)
        return out

    def margin_call_many(self, accounts: Sequence[Any], sender: Any, **txn: Any) -> list[Any]:
        """Calls the CALLABLE ones of `accounts`, in transactions of at most 100 accounts.

        Raises `NotCallable` (and sends nothing) when none is callable.
        """
        eligible = self.callable_accounts(accounts)
        if not eligible:
            raise NotCallable(f"margin_call_many: none of the {len(accounts)} accounts is CALLABLE")
        return [
            self.engine.margin_call_many(part, sender=sender, **txn)
            for part in chunks(eligible, MAX_BATCH)
        ]

    def liquidate_many(self, accounts: Sequence[Any], sender: Any, **txn: Any) -> list[Any]:
        """Liquidates the eligible ones of `accounts`, in transactions of at most 100 accounts.

        Raises `NotLiquidatable` (and sends nothing) when none is eligible now.
        """
        eligible = self.liquidatable_accounts(accounts)
        if not eligible:
            raise NotLiquidatable(
                f"liquidate_many: none of the {len(accounts)} accounts is liquidatable now"
            )
        return [
            self.engine.liquidate_many(part, sender=sender, **txn)
            for part in chunks(eligible, MAX_BATCH)
        ]


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
        return int(self.pool.totalAssets())

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
                f"pool deposit: balance {balance} < amount {assets} (token units)"
            )
        allowance = int(self.token.allowance(_addr(sender), _addr(self.pool)))
        if allowance < assets:
            raise InsufficientFunds(
                f"pool deposit: allowance {allowance} < amount {assets}; approve the pool first"
            )
        shares = self.preview_deposit(assets)
        if shares == 0:
            raise InvalidRequest(
                f"pool deposit: {assets} token units buy no share (pool: zero shares)"
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
                f"pool {what}: {assets} token units would dip into the reserve for open "
                f"interest (pool: reserve for open interest); {free} are free now"
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
                f"pool withdraw: {assets} token units > the {worth} the shares are worth "
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


# --- insurance fund -----------------------------------------------------------


@dataclass(frozen=True)
class FundState:
    """The insurance fund's wiring and balance (token units)."""

    balance: int
    asset: str
    pool: str
    engine: str


@dataclass(frozen=True)
class KeeperPayment:
    """A `KeeperPaid` event: the fund rewarded a keeper for closing a bankrupt account."""

    keeper: str
    account: str
    amount: int  # token units
    balance_after: int
    block: int


class FundClient:
    """The insurance fund and its token."""

    def __init__(self, fund: Any, token: Any):
        self.fund = fund
        self.token = token

    @classmethod
    def from_system(cls, system: Any) -> FundClient:
        return cls(system.fund, system.token)

    # --- reads ---

    def balance(self) -> int:
        """The fund's assets, token units."""
        return int(self.fund.fund_balance())

    def state(self) -> FundState:
        return FundState(
            balance=self.balance(),
            asset=str(self.fund.asset()),
            pool=str(self.fund.pool()),
            engine=str(self.fund.engine()),
        )

    def keeper_payments(
        self, start: int, stop: int, keeper: Any = None, chunk: int = 5_000
    ) -> list[KeeperPayment]:
        """The fund's `KeeperPaid` events of blocks `start..stop` (only `keeper`'s if given)."""
        from ape import chain

        provider = chain.provider
        abi = self.fund.KeeperPaid.abi
        want = None if keeper is None else _addr(keeper).lower()
        out: list[KeeperPayment] = []
        for lo in range(start, stop + 1, chunk):
            raw = provider.web3.eth.get_logs(
                {
                    "address": _addr(self.fund),
                    "fromBlock": lo,
                    "toBlock": min(stop, lo + chunk - 1),
                }
            )
            for log in provider.network.ecosystem.decode_logs(raw, abi) if raw else ():
                if want is not None and str(log.keeper).lower() != want:
                    continue
                out.append(
                    KeeperPayment(
                        str(log.keeper),
                        str(log.account),
                        int(log.amount),
                        int(log.balance_after),
                        int(log.block_number),
                    )
                )
        return out

    # --- checks and senders ---

    def check_donate(self, amount: int, sender: Any) -> None:
        if amount <= 0:
            raise InvalidRequest("fund donate: amount must be positive (fund: zero amount)")
        balance = int(self.token.balanceOf(_addr(sender)))
        if balance < amount:
            raise InsufficientFunds(f"fund donate: balance {balance} < amount {amount}")
        allowance = int(self.token.allowance(_addr(sender), _addr(self.fund)))
        if allowance < amount:
            raise InsufficientFunds(
                f"fund donate: allowance {allowance} < amount {amount}; approve the fund first"
            )

    def approve(self, amount: int, sender: Any, **txn: Any) -> Any:
        """Lets the fund take `amount` token units from the sender."""
        return self.token.approve(_addr(self.fund), amount, sender=sender, **txn)

    def donate(self, amount: int, sender: Any, **txn: Any) -> Any:
        """Adds `amount` token units of the sender's to the fund (for good)."""
        self.check_donate(amount, sender)
        return self.fund.donate(amount, sender=sender, **txn)


# --- oracle adapter -------------------------------------------------------------


@dataclass(frozen=True)
class OracleStatus:
    """`status()` and `reason()` of an adapter: price 0 and a reason when not valid."""

    price: int  # wad
    valid: bool
    using_fallback: bool
    reason: str  # "" when valid


@dataclass(frozen=True)
class FeedSettings:
    """The adapter's immutable settings (prices in wad, times in seconds; ZERO: none)."""

    primary: str
    primary_heartbeat: int
    fallback: str
    fallback_heartbeat: int
    sequencer: str
    sequencer_grace: int
    min_price: int
    max_price: int


class OracleClient:
    """One market's oracle adapter (the adapter has no owner and no setters: reads only)."""

    def __init__(self, adapter: Any, market_id: int = 0):
        self.adapter = adapter
        self.market_id = market_id

    def price(self) -> int:
        """The valid price (wad); raises `StalePrice`/`OracleError` with the adapter's reason."""
        return _checked_price(self.adapter, self.market_id)

    def try_price(self) -> tuple[int, bool]:
        price, ok = self.adapter.try_price()
        return int(price), bool(ok)

    def reason(self) -> str:
        """Why no valid price exists ("" when one does)."""
        return str(self.adapter.reason())

    def status(self) -> OracleStatus:
        price, ok, fallback = self.adapter.status()
        return OracleStatus(int(price), bool(ok), bool(fallback), "" if ok else self.reason())

    def settings(self) -> FeedSettings:
        a = self.adapter
        return FeedSettings(
            primary=str(a.primary()),
            primary_heartbeat=int(a.primary_heartbeat()),
            fallback=str(a.fallback()),
            fallback_heartbeat=int(a.fallback_heartbeat()),
            sequencer=str(a.sequencer()),
            sequencer_grace=int(a.sequencer_grace()),
            min_price=int(a.min_price()),
            max_price=int(a.max_price()),
        )


# --- all of them ------------------------------------------------------------------


@dataclass(frozen=True)
class Clients:
    """The four clients over one deployed system."""

    engine: MarginEngineClient
    pool: PoolClient
    fund: FundClient
    oracles: tuple[OracleClient, ...]

    @classmethod
    def from_contracts(
        cls, engine: Any, token: Any, pool: Any, fund: Any, oracles: Sequence[Any]
    ) -> Clients:
        return cls(
            MarginEngineClient(engine, token, oracles),
            PoolClient(pool, token),
            FundClient(fund, token),
            tuple(OracleClient(o, m) for m, o in enumerate(oracles)),
        )

    @classmethod
    def from_system(cls, system: Any) -> Clients:
        """From a `margincall.deploy.System`."""
        return cls.from_contracts(
            system.engine, system.token, system.pool, system.fund, system.oracles
        )

    @classmethod
    def from_record(cls, record: Any, project: Any) -> Clients:
        """From a `margincall.deployment.DeploymentRecord` and the Ape project's types."""
        c = record.contracts(project)
        return cls.from_contracts(c["engine"], c["token"], c["pool"], c["fund"], c["oracles"])

    def oracle(self, market_id: int) -> OracleClient:
        if not 0 <= market_id < len(self.oracles):
            raise InvalidRequest(f"market {market_id}: no oracle adapter known to the client")
        return self.oracles[market_id]


__all__ = [
    "AccountRecord",
    "Clients",
    "FeedSettings",
    "FundClient",
    "FundState",
    "InsufficientFunds",
    "InsufficientMargin",
    "InvalidRequest",
    "KeeperPayment",
    "LiquidationPreview",
    "LpPosition",
    "MarginCallError",
    "MarginEngineClient",
    "MarginStatus",
    "Market",
    "NotCallable",
    "NotLiquidatable",
    "OracleClient",
    "OracleError",
    "OracleStatus",
    "PoolClient",
    "PoolState",
    "Position",
    "ReserveLocked",
    "SharesLocked",
    "SlippageExceeded",
    "StalePrice",
    "State",
    "TooSoon",
    "UnderMarginCall",
    "WindowFull",
    "chunks",
]
