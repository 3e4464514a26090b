"""`MarginEngineClient`: margin accounts, trades, margin calls, liquidations; read, check,
then send.

Every sender checks first, with the engine's own views and the reference math of
`margincall.math`, and raises a typed `MarginCallError` with a clear message instead of
sending a transaction that would revert. The checks are made at the head block; a
transaction mined a block later can still revert when the chain moves in between (a price
update, a rival keeper), and the engine's batched actions skip such accounts.

What the bots and the dashboard need beyond that (reads at a given block, transactions
signed elsewhere) is its mixin base `margincall.sdk.bots.ForBots`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from eth_utils import keccak

from margincall import math as ref
from margincall.codec import Abi, check_status_layout, encode_addresses
from margincall.constants import (
    MAX_BATCH,
    MAX_POSITIONS,
    MAX_SCAN,
    WAD,
    PlanCode,
    State,
)
from margincall.sdk.bots import ForBots
from margincall.sdk.errors import (
    InsufficientFunds,
    InsufficientMargin,
    InvalidRequest,
    NotCallable,
    NotLiquidatable,
    SlippageExceeded,
    TooSoon,
    UnderMarginCall,
    WindowFull,
)
from margincall.sdk.events import decode_statuses
from margincall.sdk.types import (
    AccountRecord,
    LiquidationPreview,
    MarginStatus,
    Market,
    Position,
    _addr,
    _checked_price,
    _get,
    chunks,
    in_tokens,
)

# --- client ---------------------------------------------------------------


def lens_of(engine: Any) -> Any:
    """No lens is known for `engine`: the engine does not name its MarginLens (its code is
    kept for the protocol); the deployment record (`DeploymentRecord.lens`) and
    `margincall.deploy.System.lens` do. Raises `InvalidRequest` saying so."""
    raise InvalidRequest(
        f"no MarginLens known for the engine {engine.address}: build the client from the "
        "deployment record or the deployed System (they name the lens)"
    )


class MarginEngineClient(ForBots):
    """The engine, its lens (the batched and preview views), its collateral token and its
    oracle adapters (one per market id)."""

    def __init__(self, engine: Any, token: Any, oracles: Sequence[Any], lens: Any = None):
        self.engine = engine
        self._lens = lens  # MarginLens: check_margins, preview_liquidation
        self.token = token
        self.oracles = list(oracles)
        self.decimals = int(token.decimals())
        self.scale = 10 ** (18 - self.decimals)
        self._fast: Any = None  # the raw check_margins scanner, built on first use
        self._orders: Any = None  # the OrderBookClient, built on first use

    @classmethod
    def from_system(cls, system: Any) -> MarginEngineClient:
        """From a `margincall.deploy.System`."""
        return cls(system.engine, system.token, system.oracles, getattr(system, "lens", None))

    @property
    def lens(self) -> Any:
        """The engine's MarginLens (the batched and preview views), as the deployment names it."""
        if self._lens is None:
            self._lens = lens_of(self.engine)
        return self._lens

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

        Accounts with a leg whose price is invalid come back with `priced=False`, valued as
        `liquidate` values them (the leg at its worst case; HEALTHY when the engine cannot
        act on them: no priced leg, or the L2 sequencer down). `block_id` reads
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
                out.extend(MarginStatus.from_struct(s) for s in self.lens.check_margins(part, **at))
        return out

    def calls_cleared(self, accounts: Sequence[Any], block_id: int | None = None) -> set[str]:
        """The accounts (of at most `MAX_SCAN`) whose recorded margin call has cleared
        itself (`MarginLens.calls_cleared`: back at `call_ratio` since the call, with no
        transaction): past their deadline they are CALLABLE, not LIQUIDATABLE. The lens scans
        the feeds' rounds for each: ask for the few whose deadline is due."""
        part = [_addr(a) for a in accounts]
        if not part:
            return set()
        if len(part) > MAX_SCAN:
            raise InvalidRequest(f"at most {MAX_SCAN} accounts, got {len(part)}")
        at = {} if block_id is None else {"block_id": block_id}
        flags = self.lens.calls_cleared(part, **at)
        return {a for a, cleared in zip(part, flags, strict=True) if cleared}

    def _fast_scan(self) -> Any:
        """A raw `eth_call` + direct decoder for `check_margins` (10x faster than the ABI
        round trip at 500 accounts: what a keeper's scan needs), or None when the engine
        is not reachable that way or its status layout is not the one the decoder knows."""
        if self._fast is False:
            return None
        if self._fast is None:
            self._fast = False
            try:
                check_status_layout(Abi.of(self.lens))
                web3 = self.lens.provider.web3
                to = str(self.lens.address)
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
        """`preview_liquidation(account)`: a leg without a valid price is valued at its worst
        case and stays open, as in `liquidate`; raises `OracleError` when the engine cannot
        act on the account (no priced leg, or the L2 sequencer down)."""
        ids = self.record(account).market_ids
        try:
            return LiquidationPreview.from_struct(self.lens.preview_liquidation(_addr(account)))
        except Exception:  # noqa: BLE001 - the oracle's typed error, else the revert itself
            self.prices(ids)
            raise

    def model(self, account: Any) -> ref.Account:
        """The account as the reference math's `Account`, at the oracle prices."""
        rec = self.record(account)
        positions = []
        for p in self.positions(account):
            m = self.market(p.market_id)
            positions.append(
                ref.Position(p.market_id, p.size, p.open_notional, p.price, m.mmr, m.imr)
            )
        parked = self.parked_reward(account)[1] if rec.deadline else 0
        return ref.Account(
            rec.collateral, tuple(positions), rec.deadline, rec.last_tranche, rec.tranches, parked
        )

    # --- checks (raise before sending) ---

    def check_deposit(self, amount: int, sender: Any, account: Any = None) -> None:
        if amount <= 0:
            raise InvalidRequest("deposit: amount must be positive")
        if account is not None and int(_addr(account), 16) == 0:
            raise InvalidRequest("deposit: zero account")
        balance = int(self.token.balanceOf(_addr(sender)))
        if balance < amount:
            raise InsufficientFunds(
                f"deposit: balance {in_tokens(balance, self.decimals)} < amount "
                f"{in_tokens(amount, self.decimals)}"
            )
        allowance = int(self.token.allowance(_addr(sender), _addr(self.engine)))
        if allowance < amount:
            raise InsufficientFunds(
                f"deposit: allowance {in_tokens(allowance, self.decimals)} < amount "
                f"{in_tokens(amount, self.decimals)}; approve the engine first"
            )

    def check_withdraw(self, amount: int, account: Any) -> None:
        if amount <= 0:
            raise InvalidRequest("withdraw: amount must be positive")
        acct = self.model(account)
        if amount > acct.collateral:
            raise InvalidRequest(
                f"withdraw: amount {in_tokens(amount, self.decimals)} exceeds collateral "
                f"{in_tokens(acct.collateral, self.decimals)}"
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
                f"withdraw: {in_tokens(amount, self.decimals)} would leave equity below the "
                f"initial margin; at most {in_tokens(max(free, 0), self.decimals)} are free"
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
        if balance < 0 and rec.collateral == 0:
            raise InsufficientMargin(
                "trade: the account has no collateral (deposit some first: the trade's fee "
                f"alone is {in_tokens(fee, self.decimals)})"
            )
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
        wait for receipts (`margincall.keeper.tx.TxSender.send_call`); raises as `deposit` does."""
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

    @property
    def orders(self) -> Any:
        """The engine's `OrderBookClient` (positions change only through orders)."""
        if self._orders is None:
            from margincall.sdk.orders import OrderBookClient

            self._orders = OrderBookClient.of(self)
        return self._orders

    def trade(
        self, market_id: int, size_delta: int, acceptable_price: int, sender: Any, **txn: Any
    ) -> Any:
        """Commits an order (PROTOCOL.md 5b): it fills when a settler settles it at the first
        round after the commit. Returns the commit receipt; `orders.commit` also returns the
        order id."""
        return self.orders.commit(market_id, size_delta, acceptable_price, sender, **txn)[1]

    def close(self, market_id: int, acceptable_price: int, sender: Any, **txn: Any) -> Any:
        """Commits a reduce-only order for the whole position (see `trade`)."""
        return self.orders.close(market_id, acceptable_price, sender, **txn)[1]

    def margin_call(self, account: Any, sender: Any, **txn: Any) -> Any:
        self.check_margin_call(account)
        return self.engine.margin_call(_addr(account), sender=sender, **txn)

    def liquidate(self, account: Any, sender: Any, **txn: Any) -> Any:
        self.check_liquidate(account)
        return self.engine.liquidate(_addr(account), sender=sender, **txn)

    # --- accrued balances (keeper rewards, the fund's share, the pool's credit) ---

    def claimable(self, owner: Any) -> int:
        """What the engine holds for `owner` (token units): a keeper's accrued liquidation
        and margin-call rewards, the fund's share of the penalties not yet swept, or the
        pool's lazily settled trader losses and fees (counted in its `totalAssets`)."""
        return int(self.engine.claimable(_addr(owner)))

    def parked_reward(self, account: Any) -> tuple[str | None, int]:
        """The margin-call reward parked for `account` (caller, token units), or (None, 0):
        taken from its collateral by a call and held until the call ends, then paid to the
        caller (the account ended it solvent) or returned to the account (liquidated at
        ratio < 1). Decoded from the engine's `parked_reward` word (caller << 96 | amount)."""
        word = int(self.engine.parked_reward(_addr(account)))
        amount = word & (2**96 - 1)
        if amount == 0:
            return None, 0
        return "0x" + (word >> 96).to_bytes(20, "big").hex(), amount

    def claim_rewards(self, sender: Any, owner: Any = None, **txn: Any) -> Any:
        """Sends `owner` (default: the sender) what the engine holds for it
        (`claim_rewards`); anyone may send it for anyone, the tokens go to `owner`."""
        owner = sender if owner is None else owner
        return self.engine.claim_rewards(_addr(owner), sender=sender, **txn)

    def sweep_fund(self, sender: Any, **txn: Any) -> Any:
        """Moves the fund's accrued share of the penalties to the fund (permissionless)."""
        return self.claim_rewards(sender, owner=self.engine.FUND(), **txn)

    def collect_pool(self, sender: Any, **txn: Any) -> Any:
        """Moves the pool's lazily settled credit to the pool (permissionless; the pool
        does it itself when a withdrawal needs it)."""
        return self.claim_rewards(sender, owner=self.engine.POOL(), **txn)

    def callable_accounts(self, accounts: Sequence[Any]) -> list[str]:
        return [
            s.account for s in self.statuses(accounts) if s.priced and s.state == State.CALLABLE
        ]

    def liquidatable_accounts(self, accounts: Sequence[Any]) -> list[str]:
        now = self.now
        out = []
        for s in self.statuses(accounts):
            # an unpriced leg does not shield the account (its worst case is in `s`)
            if s.state < State.LIQUIDATABLE:
                continue
            if s.state == State.LIQUIDATABLE and now < s.next_tranche_time:
                continue
            out.append(s.account)
        return out

    # --- the collateral token, positions, receipts ---

    def symbol(self) -> str:
        """The collateral token's symbol ("tokens" for a token without one)."""
        try:
            return str(self.token.symbol())
        except Exception:  # noqa: BLE001 - a token without symbol()
            return "tokens"

    def mint(self, amount: int, sender: Any, **txn: Any) -> Any:
        """The mock collateral token's faucet (dev and test chains only): `amount` token units
        to the sender."""
        return self.token.mint(_addr(sender), amount, sender=sender, **txn)

    def token_balance(self, owner: Any) -> int:
        """`owner`'s collateral tokens (token units), in its wallet."""
        return int(self.token.balanceOf(_addr(owner)))

    def allowance(self, owner: Any) -> int:
        """What `owner` lets the engine take (token units)."""
        return int(self.token.allowance(_addr(owner), self.address))

    def position(self, account: Any, market_id: int) -> tuple[int, int]:
        """`(size, cost)` of the account's position in a market (0, 0 when flat)."""
        size, cost = self.engine.position(_addr(account), market_id)
        return int(size), int(cost)

    def decode(self, receipt: Any, event: str) -> list[Any]:
        """The engine's `event` logs of a receipt (Ape's decoded logs), in log order."""
        return list(receipt.decode_logs(getattr(self.engine, event)))

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
