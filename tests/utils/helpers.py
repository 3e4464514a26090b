"""Test helpers: funding actors, opening positions, checking conservation."""

from __future__ import annotations

from margincall.constants import WAD


def wad(x: float) -> int:
    return int(round(x * WAD))


def mint_and_approve(system, who, whole_tokens: float, spender=None) -> int:
    amount = int(whole_tokens * system.unit)
    system.token.mint(who.address, amount, sender=who)
    system.token.approve((spender or system.engine).address, 2**256 - 1, sender=who)
    return amount


def fund_lp(system, lp, whole_tokens: float) -> None:
    amount = mint_and_approve(system, lp, whole_tokens, spender=system.pool)
    system.pool.deposit(amount, lp.address, sender=lp)


def deposit(system, trader, whole_tokens: float):
    amount = mint_and_approve(system, trader, whole_tokens)
    return system.engine.deposit(amount, trader.address, sender=trader)


def publish_round(system, market_id: int, price: float | None = None, sender=None) -> int:
    """Publishes a new round on the market's mock feed (at its current answer unless `price`
    is given) and returns its round id: the settlement round of orders committed before."""
    from ape import chain

    # the primary feed of the market's adapter, as the engine lists it now (a test may have
    # pointed the market at another adapter, or added one)
    project = system.project
    oracle = project.OracleAdapter.at(system.engine.markets(market_id).oracle)
    feed = project.MockAggregator.at(oracle.primary())
    # a round in the commit's own second is not after it (Anvil may give the next block
    # the same timestamp; a real chain's next block is always later)
    if chain.pending_timestamp <= chain.blocks.head.timestamp:
        chain.pending_timestamp = chain.blocks.head.timestamp + 1
    if price is None:
        answer = int(feed.latestRoundData()[1])
    else:
        answer = int(round(price * 10 ** int(feed.decimals())))
    feed.set_answer(answer, sender=sender or system.owner)
    return int(feed.latestRoundData()[0])


def commit(
    system, trader, market_id: int, size_delta: int, acceptable_price: int, reduce_only=False
):
    """Commits an order (size in wad) expiring after the book's longest window; returns
    (order id, commit tx)."""
    from ape import chain

    expiry = chain.blocks.head.timestamp + int(system.book.max_window())
    tx = system.book.commit_order(
        market_id, size_delta, acceptable_price, expiry, reduce_only, sender=trader
    )
    return int(tx.decode_logs(system.book.OrderCommitted)[0].order_id), tx


def trade(
    system,
    trader,
    market_id: int,
    size_delta: int,
    acceptable_price: int,
    reduce_only=False,
    settler=None,
):
    """The two steps of a position change: commit the order, publish the next round at the
    current price, settle at it. Returns the settlement tx (the engine's PositionChanged is in
    its logs; a refused fill shows as the book's OrderCancelled with the reason)."""
    order_id, _ = commit(system, trader, market_id, size_delta, acceptable_price, reduce_only)
    round_id = publish_round(system, market_id)
    return system.book.settle_order(order_id, round_id, sender=settler or trader)


def settle_or_raise(system, tx):
    """Raises `ContractLogicError` with the book's reason if the settlement `tx` cancelled its
    order instead of filling it (the reason a direct trade used to revert with)."""
    cancelled = tx.decode_logs(system.book.OrderCancelled)
    if cancelled:
        from ape.exceptions import ContractLogicError

        # the engine's revert reason, carried by the event: `ape.reverts(reason)` matches it
        raise ContractLogicError(revert_message=cancelled[0].reason, txn=tx)
    return tx


def open_position(system, trader, market_id: int, size: float, slippage: float = 0.05):
    """Opens `size` base units (negative: short) with a loose slippage bound: commits, publishes
    the next round, settles; raises with the reason if the order was cancelled."""
    oracle = system.oracles[market_id]
    p = oracle.price()
    bound = int(p * (1 + slippage)) if size > 0 else int(p * (1 - slippage))
    return settle_or_raise(system, trade(system, trader, market_id, wad(size), bound))


def assert_conserved(system, accounts) -> None:
    """Engine's token balance equals the sum of its collateral ledgers, the settlement fees
    escrowed for pending orders, the margin-call rewards parked for `accounts` until their calls
    end, and the balances accrued in it (`claimable`: the keepers' rewards among `accounts`, the
    fund's share, the pool's credit)."""
    engine = system.engine
    held = system.token.balanceOf(engine.address)
    owners = {_addr(a) for a in accounts}
    # parked margin-call rewards (caller << 96 | amount), held until the call ends
    ledger = sum(
        engine.collateral_of(a) + engine.claimable(a) + (engine.parked_reward(a) & (2**96 - 1))
        for a in owners
    )
    ledger += sum(system.book.escrowed_of(a) for a in owners)
    ledger += engine.claimable(system.fund.address) + engine.claimable(system.pool.address)
    assert held == ledger, f"engine holds {held}, ledgers sum to {ledger}"


# --- reference-math bridges, time travel and token-flow bookkeeping --------------------
# (added for tests/integration/test_lifecycle.py and test_liquidation.py)


def _addr(who) -> str:
    return getattr(who, "address", who)


def travel(chain, seconds: int) -> int:
    """Moves the clock `seconds` forward and mines; returns the new head timestamp."""
    chain.pending_timestamp += seconds
    chain.mine()
    return chain.blocks.head.timestamp


def travel_to(chain, timestamp: int) -> int:
    """Mines a block at `timestamp` (views then see it; the next tx gets it too)."""
    chain.pending_timestamp = timestamp
    chain.mine()
    return chain.blocks.head.timestamp


def pin_next_tx(chain, timestamp: int | None = None) -> int:
    """Makes the next transaction's block carry `timestamp` (default: the head's) and returns it.

    Anvil's clock follows the wall clock: views see the head block's time, while an unpinned
    transaction may land a second or two later. Pin before a transaction whose outcome must
    match what the views (or the reference math) saw at that time.
    """
    t = chain.blocks.head.timestamp if timestamp is None else timestamp
    chain.pending_timestamp = t
    return t


def tx_time(chain, tx) -> int:
    """The timestamp of the block that mined `tx`."""
    return chain.blocks[tx.block_number].timestamp


def scale_of(system) -> int:
    return 10 ** (18 - system.decimals)


def tokens(system, whole: float) -> int:
    """Whole tokens in token units."""
    return int(round(whole * system.unit))


def risk_params_model(engine):
    """`engine.risk_params()` as the reference-math `RiskParams`."""
    from margincall.math import RiskParams

    rp = engine.risk_params()
    return RiskParams(**{f: int(getattr(rp, f)) for f in RiskParams.__dataclass_fields__})


def set_risk_params(system, **changes):
    """Sets the engine's risk parameters: the current ones with `changes` applied."""
    import dataclasses

    params = dataclasses.replace(risk_params_model(system.engine), **changes)
    return system.engine.set_risk_params(params.as_tuple(), sender=system.owner)


def set_window_cap(system, market_id: int, window_cap: int):
    """Changes only a market's window cap (wad notional), as the owner."""
    m = system.engine.markets(market_id)
    return system.engine.set_market(
        market_id, m.oracle, m.imr, m.mmr, m.fee, window_cap, m.active, sender=system.owner
    )


def account_model(system, who):
    """The on-chain account, priced at the current oracle prices, as a reference `Account`."""
    from margincall.math import Account, Position

    engine = system.engine
    collateral, markets, deadline, last_tranche, tranches = engine.account_info(_addr(who))
    grace = int(engine.risk_params().grace_period)
    positions = []
    for m in range(16):
        if markets >> m & 1:
            size, cost = engine.position(_addr(who), m)
            cfg = engine.markets(m)
            price = system.oracles[m].price()
            best = 0
            if deadline:  # the best price since the call (the engine reads it past the deadline)
                since = max(int(deadline) - grace, int(last_tranche))
                best = int(system.oracles[m].best_since(since, int(size) > 0))
            positions.append(Position(m, int(size), int(cost), int(price), cfg.mmr, cfg.imr, best))
    parked = int(engine.parked_reward(_addr(who))) & (2**96 - 1) if deadline else 0
    return Account(
        int(collateral), tuple(positions), int(deadline), int(last_tranche), int(tranches), parked
    )


def window_room(system, account, now: int) -> dict[int, int]:
    """What each of the account's markets' liquidation window still admits at `now` (wad)."""
    engine = system.engine
    window = int(engine.risk_params().liquidation_window)
    room = {}
    for p in account.positions:
        start, used = engine.window_state(p.market_id)
        if now >= start + window:
            used = 0
        room[p.market_id] = int(engine.markets(p.market_id).window_cap) - int(used)
    return room


def reference_status(system, who, now: int):
    """(Account, Valuation, State) of the reference math at `now`."""
    from margincall.math import classify, evaluate

    account = account_model(system, who)
    params = risk_params_model(system.engine)
    valuation = evaluate(account, scale_of(system))
    return account, valuation, classify(account, valuation, params, now, scale_of(system))


def reference_tranche(system, who, now: int, params=None):
    """What the reference math says `liquidate(who)` does at `now` (None: it reverts)."""
    from margincall.math import plan_tranche

    account = account_model(system, who)
    params = params or risk_params_model(system.engine)
    return plan_tranche(account, params, scale_of(system), now, window_room(system, account, now))


def donate_to_fund(system, donor, whole_tokens: float):
    amount = mint_and_approve(system, donor, whole_tokens, spender=system.fund)
    return system.fund.donate(amount, sender=donor)


class FlowLedger:
    """Checks that token balances move exactly as the transactions' events say.

    Run every state-changing engine transaction of a scenario through `send`;
    `check()` then asserts that the pool's, the fund's and each watched
    address's token balance changed by what the events announced, and that
    the engine holds exactly the sum of the accounts' collateral.
    """

    def __init__(self, system, accounts, watch=()):
        self.system = system
        self.accounts = list(accounts)
        pool, fund = system.pool.address, system.fund.address
        self.watched = [pool, fund, *(_addr(w) for w in watch)]
        self.start = {a: self._held(a) for a in self.watched}
        self.keepers: set[str] = set()
        self.expected = {a: 0 for a in self.watched}

    def _held(self, who) -> int:
        """Token balance plus what the engine holds for `who` (accrued rewards, the fund's
        share): a claim moves tokens between the two, never changes the sum."""
        return self.system.token.balanceOf(who) + self.system.engine.claimable(who)

    def _credit(self, who, amount: int) -> None:
        who = _addr(who)
        if who in self.expected:
            self.expected[who] += amount

    def send(self, fn, *args, **kwargs):
        """Sends `fn(*args, **kwargs)` (a transaction) and books its events."""
        engine = self.system.engine
        before = {a.address: engine.collateral_of(a.address) for a in self.accounts}
        tx = fn(*args, **kwargs)
        self.book(tx, before)
        return tx

    def book(self, tx, collateral_before: dict) -> None:
        engine, fund = self.system.engine.address, self.system.fund.address
        pool = self.system.pool.address
        logs = list(tx.events)
        liquidated = {
            log.account
            for log in logs
            if log.contract_address == engine and log.event_name == "Liquidation"
        }
        # a parked call reward returned to the collateral by a close at ratio < 1 (logged
        # after its Liquidation): the pool's share counts it as collateral the account had
        returned = {
            log.account: log.amount
            for log in logs
            if log.contract_address == engine and log.event_name == "CallRewardReturned"
        }
        for log in logs:
            name = log.event_name
            if log.contract_address == engine:
                if name == "PositionChanged" and log.account not in liquidated:
                    self._credit(pool, log.fee - log.realized_pnl)
                elif name == "Liquidation":
                    self.keepers.add(log.keeper)
                    # engine -> pool: -realised PnL (or all collateral when bankrupt, less
                    # the keeper's minimum reward, which the engine keeps for the keeper)
                    before = collateral_before[log.account] + returned.get(log.account, 0)
                    self._credit(pool, before - log.collateral - log.keeper_reward - log.fund_fee)
                    self._credit(fund, log.fund_fee)
                    self._credit(log.keeper, log.keeper_reward)
                elif name == "BadDebt":
                    self._credit(pool, log.paid_by_fund)
                    self._credit(fund, -log.paid_by_fund)
                elif name == "MarginCall":
                    # the reward is parked in the engine until the call ends
                    self.keepers.add(log.caller)
                elif name == "CallRewardPaid":
                    self._credit(log.caller, log.amount)
            elif log.contract_address == self.system.book.address:
                if name == "OrderSettled":
                    self._credit(log.settler, log.fee)
            elif log.contract_address == fund:
                if name == "Donation":
                    self._credit(fund, log.amount)

    def check(self) -> None:
        for a in self.watched:
            moved = self._held(a) - self.start[a]
            assert moved == self.expected[a], f"{a} moved {moved}, events say {self.expected[a]}"
        # the rewards of every keeper seen in the events are held by the engine too
        assert_conserved(self.system, [*self.accounts, *self.keepers])


def skip_revert_source_traceback(monkeypatch) -> None:
    """Stops Ape from building a Vyper source traceback for every reverted transaction.

    Ape maps each reverted transaction's struct-log trace back to Vyper source lines, which
    costs 1-3 s per revert on the engine (it grows with the code run before the revert); the
    revert reason that `ape.reverts` checks does not need it. Use in a function-scoped
    autouse fixture; failing tests then show Python frames only.
    """
    import ape.exceptions

    monkeypatch.setattr(ape.exceptions, "_get_ape_traceback_from_tx", lambda txn: None)


def fund_units(system, who, amount: int, spender=None) -> int:
    """Mints `amount` token units to `who` and approves the engine (or `spender`)."""
    system.token.mint(who.address, amount, sender=who)
    system.token.approve((spender or system.engine).address, 2**256 - 1, sender=who)
    return amount


def deposit_units(system, who, amount: int):
    """Funds `who` with `amount` token units and deposits them for itself."""
    fund_units(system, who, amount)
    return system.engine.deposit(amount, sender=who)


def trade_unbounded(system, who, market_id: int, size: int):
    """Trades `size` (wad, signed) with no slippage bound through an order (commit, next
    round at the current price, settle); a cancelled order raises with its reason."""
    bound = 2**256 - 1 if size > 0 else 0
    return settle_or_raise(system, trade(system, who, market_id, size, bound))


def close_position(system, who, market_id: int, acceptable_price: int | None = None):
    """Closes `who`'s whole position in one market through an order (raises with the reason
    of a cancelled order)."""
    size = int(system.engine.position(_addr(who), market_id)[0])
    if size == 0:
        from ape.exceptions import ContractLogicError

        raise ContractLogicError(revert_message="engine: no position")
    if acceptable_price is None:
        acceptable_price = 0 if size > 0 else 2**256 - 1
    return settle_or_raise(system, trade(system, who, market_id, -size, acceptable_price))


def poison_the_pool(
    system, accounts, lp, others: int, lp_tokens: float = 10_000, crash: bool = True
):
    """A crash where one account's liquidation needs a payout the pool cannot make, next to
    `others` liquidatable accounts (market 0, mmr 5%, imr 10%, critical ratio 0.5).

    The pool holds `lp_tokens` of LP money. The poisoned trader opens 1,000 units long at
    the price p0, the price rises to 1.5 p0 and it withdraws its collateral against the
    unrealised profit (the engine allows it: equity stays above the initial margin); the
    others open about 9.5x long at 1.1 p0; then the price falls to 1.02 p0. The poisoned
    account is CRITICAL with a profit (equity under half its maintenance, all of it
    unrealised profit): its full close realises 0.02 p0 x 1,000 units, more than the pool
    holds with everything the others' tranches bring in, so any `liquidate_many` holding it
    reverts with "pool: insufficient liquidity". The others are LIQUIDATABLE (ratio ~0.7).
    Returns (the poisoned trader, the others, the crash price), all traders fresh accounts;
    with `crash=False` the price is left at 1.1 p0 (the caller posts the crash price)."""
    fund_lp(system, lp, lp_tokens)
    set_risk_params(system, critical_ratio=wad(0.5))  # the crowd's tranches below ratio 1
    oracle = system.oracles[0]
    p0 = oracle.price() / 10**18

    def fresh():
        who = accounts.generate_test_account()
        who.balance = 10**21
        return who

    poisoned = fresh()
    deposit(system, poisoned, 0.11 * 1_000 * p0)
    open_position(system, poisoned, 0, 1_000.0)
    system.set_price(0, 1.5 * p0)
    collateral = system.engine.collateral_of(poisoned.address)
    system.engine.withdraw(collateral - system.unit, sender=poisoned)
    system.set_price(0, 1.1 * p0)
    crowd = []
    for _ in range(others):
        who = fresh()
        deposit(system, who, 1_000)
        open_position(system, who, 0, 9.5 * 1_000 / (1.1 * p0))
        crowd.append(who)
    if crash:
        system.set_price(0, 1.02 * p0)
    return poisoned, crowd, 1.02 * p0


def held(system, who) -> int:
    """`who`'s tokens: its wallet plus what the engine holds for it (`claimable`: a keeper's
    accrued rewards, the fund's share, the pool's credit), which a claim moves to the wallet."""
    address = _addr(who)
    return int(system.token.balanceOf(address)) + int(system.engine.claimable(address))
