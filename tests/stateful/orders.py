"""The state machine's order rules (contracts/OrderBook.vy): every position change of the
machine is an order that a trader commits and a keeper settles at a later round.

A mixin of `machine.EngineMachine` (it uses the machine's model: feeds and their rounds,
prices, `_predict_trade`, `move`, `note`). What it checks, besides the machine's invariants:

- a commit escrows the settlement fee out of the trader's collateral (no token moves); a
  settlement pays it to the settler on a fill, a cancellation refunds it to the collateral;
  the engine's balance is its ledgers, what it holds for others and the escrowed fees
  (`EngineMachine.balances_are_what_moved`), and the book's pending orders and escrow are the
  model's;
- `settle_order` fills an order only at its settlement round, the first valid round of the
  market's feed with `previous updatedAt <= commit time < updatedAt <= expiry` and
  `updatedAt <= commit time + heartbeat` (`OracleAdapter.round_price`), and reverts with the
  adapter's reason at any other round, and with "book: order expired" after the expiry;
  `settle_orders` settles the eligible orders of a batch in order and skips the others;
- a settled order fills as the engine's rules say at the round's price (the slippage bound,
  reduce-only clamped to the position left, margin, pause, inactive market, another
  market's invalid price): filled with the predicted position and collateral, or cancelled
  with the predicted reason and its fee refunded;
- **no order fills at a price published before its commit**: every `OrderSettled` is checked
  against the feed's own round data (`getRoundData`): the round's updatedAt is strictly after
  the commit time that the order id carries, the previous round's is at or before it, and the
  price is that round's answer;
- an order can be cancelled only after its expiry (by anyone; refund to the trader).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hypothesis import strategies as st
from hypothesis.stateful import rule

from margincall.constants import WAD, State
from margincall.math import MAX_UINT, Account, evaluate, plan_tranche, tranche_fraction
from tests.stateful.driver import N_TRADERS

MASK40 = 2**40 - 1
SLOTS = 4  # the book's pending orders per account


@dataclass(frozen=True)
class OrderModel:
    """A pending order as committed (the acceptable price as the book stored it)."""

    id: int
    trader: str
    market: int
    delta: int
    acceptable: int
    commit: int
    expiry: int
    reduce_only: bool
    fee: int


class OrderRules:
    """Rules and helpers for orders; mixed into `EngineMachine`."""

    # --- model ---------------------------------------------------------------

    def pending(self, trader: str | None = None) -> list[OrderModel]:
        return sorted(
            (o for o in self.orders.values() if trader is None or o.trader == trader),
            key=lambda o: o.id,
        )

    def escrowed(self) -> int:
        return sum(o.fee for o in self.orders.values())

    def round_reason(self, o: OrderModel, rid: int) -> tuple[str | None, int]:
        """Why round `rid` of the order's market is not its settlement round (None when it
        is), and its price (wad): `OracleAdapter._round_span` then `_round_price`."""
        m, f = o.market, self.feeds[o.market]
        if f.reverting or not 1 <= rid <= len(f.rounds) or f.rounds[rid - 1][1] == 0:
            return "oracle: no such round", 0
        answer, updated = f.rounds[rid - 1]
        if updated > self.now:
            return "oracle: future timestamp", 0
        if rid <= 1:
            return "oracle: round not first after commit", 0
        previous = f.rounds[rid - 2][1]
        if answer <= 0:
            return "oracle: non-positive price", 0
        lo, hi = self.bounds[m]
        if not lo <= answer <= hi:
            return "oracle: price out of bounds", 0
        if updated <= o.commit:
            return "oracle: round not after commit", 0
        if updated > o.expiry:
            return "oracle: round after order window", 0
        if updated - o.commit > self.d.markets[m].heartbeat:
            return "oracle: stale price", 0
        if previous > o.commit:
            return "oracle: round not first after commit", 0
        return None, answer * self.d.mul(m)

    def settlement_round(self, o: OrderModel) -> int | None:
        """The order's settlement round, if it has been published (and is valid now)."""
        for rid in range(2, len(self.feeds[o.market].rounds) + 1):
            if self.round_reason(o, rid)[0] is None:
                return rid
        return None

    def tick(self, seconds: int) -> None:
        """Time passes (so that a round published now is after a commit made before)."""
        self.d.travel(seconds)
        self.dirty.update(self.traders)
        self.oracles_changed = True

    # --- commit ---------------------------------------------------------------

    def commit(
        self,
        t: str,
        market: int,
        delta: int,
        acceptable: int,
        window: int,
        reduce_only: bool = False,
    ) -> OrderModel | None:
        """Commits an order for `t`: refused with the book's reason when the trader has
        `SLOTS` pending or its collateral is under the fee; else the fee is escrowed."""
        d = self.d
        self.dirty.add(t)
        collateral = d.raw_account(t).collateral
        expiry = self.now + window
        sent = self.send(
            d.book, "commit_order", market, delta, acceptable, expiry, reduce_only, sender=t
        )
        if len(self.pending(t)) >= SLOTS:
            self.refused(sent, "book: too many pending orders")
            self.note("refused:order_slots")
            return None
        if self.order_fee > collateral:
            self.refused(sent, "engine: fee exceeds collateral")
            self.note("refused:order_fee")
            return None
        assert sent.ok, sent.reason
        (ev,) = sent.of(d.book, "OrderCommitted")
        assert str(ev.account).lower() == str(t).lower()
        assert (ev.market_id, ev.size_delta, ev.expiry, ev.reduce_only, ev.fee) == (
            market,
            delta,
            expiry,
            reduce_only,
            self.order_fee,
        )
        # stored as a 48-bit mantissa times a power of ten, never looser than asked
        assert ev.acceptable_price <= acceptable if delta > 0 else ev.acceptable_price >= acceptable
        assert (ev.order_id >> 96, (ev.order_id >> 8) & MASK40) == (int(str(t), 16), self.now)
        o = OrderModel(
            ev.order_id,
            t,
            market,
            delta,
            ev.acceptable_price,
            self.now,
            expiry,
            reduce_only,
            self.order_fee,
        )
        self.orders[o.id] = o
        assert d.raw_account(t).collateral == collateral - o.fee
        self.note("order:commit" + (":reduce_only" if reduce_only else ""))
        return o

    def order_now(self, i: int, market: int, delta: int, kind: str) -> None:
        """A trade: commit `delta` with no slippage bound, a second later a round at the
        current price, a keeper settles. While the feed is faulty the order stays pending."""
        t = self.traders[i]
        bound = MAX_UINT if delta > 0 else 0
        o = self.commit(t, market, delta, bound, self.max_window)
        if o is None:
            return
        if self.price_reason(market):
            self.note("order:pending_in_outage")
            return
        self.tick(1)
        self.set_price(market, self.price(market))
        rid = self.settlement_round(o)
        assert rid == len(self.feeds[market].rounds), (rid, o)
        filled = self.settle_one(o, rid, self.keepers[self.checks % 2])
        if filled:
            self.note("trade:" + kind)

    # --- settle ---------------------------------------------------------------

    def _outcome(self, o: OrderModel, acct: Account, price: int):
        """What settling `o` at `price` does to `acct`: (reason or None, fill size, the
        engine's outcome from `_predict_trade`)."""
        if o.delta > 0 and price > o.acceptable:
            return "book: price above acceptable", 0, None
        if o.delta < 0 and price < o.acceptable:
            return "book: price below acceptable", 0, None
        delta = o.delta
        if o.reduce_only:
            size = next((q.size for q in acct.positions if q.market_id == o.market), 0)
            if size == 0 or (size > 0) == (o.delta > 0):
                return "book: nothing to reduce", 0, None
            if abs(o.delta) > abs(size):
                delta = -size
                self.note("order:reduce_only_clamped")
        reason, outcome = self._predict_trade(acct, self.d.risk_params(), o.market, delta, price)
        return reason, delta, outcome

    def _check_round(self, ev) -> None:
        """The invariant: the fill's round was published after the order's commit (the time
        in its id), the one before it at or before the commit, and its answer is the
        fill's price; read from the feed itself."""
        d = self.d
        commit = (ev.order_id >> 8) & MASK40
        feed = d.feeds[ev.market_id]
        _, answer, _, updated, _ = feed.getRoundData(ev.round_id)
        _, _, _, previous, _ = feed.getRoundData(ev.round_id - 1)
        assert int(updated) > commit, ("filled at a price published before its commit", ev)
        assert int(previous) <= commit, ("filled at a round later than the first", ev)
        assert ev.price == int(answer) * d.mul(ev.market_id), ev
        self.note("order:round_checked")

    def _book(self, o: OrderModel, acct: Account, reason, delta, outcome, keeper) -> Account:
        """Books a settled (or cancelled) order's flows; returns the account after it."""
        d = self.d
        del self.orders[o.id]
        self.dirty.add(o.trader)
        if reason is not None:
            self.note("order:cancelled")
            self.note("order:cancelled:" + reason)
            if reason.startswith("oracle: "):
                self.note("order:cancelled_other_market_oracle")
            return replace(acct, collateral=acct.collateral + o.fee)
        nsize, ncost, collateral, deadline, increases, pays, after = outcome
        called = (
            acct.deadline != 0 and self.first_fault(q.market_id for q in acct.positions) is None
        )
        if called:
            called = self.state(acct, d.risk_params()) == State.CALLED
        if increases:
            assert not self.paused and self.active[o.market], "new exposure while not allowed"
            if called:
                # a CALLED account takes new exposure only in a fill that cures it (a flip
                # to a smaller opposite position: the ratio after is at call_ratio)
                old = next((q.size for q in acct.positions if q.market_id == o.market), 0)
                assert old != 0 and (nsize > 0) != (old > 0), "a CALLED account added exposure"
                assert deadline == 0
                self.note("called:curing_flip")
        else:
            if self.paused:
                self.note("paused:reduce")
            if not self.active[o.market]:
                self.note("inactive:reduce")
            if self.first_fault(q.market_id for q in acct.positions if q.market_id != o.market):
                self.note("oracle:reduce_other_market")
            if called:
                self.note("called:reduction")
        # the pool is the counterparty of the collateral change; the settler gets the fee
        if pays >= 0:
            self.move(d.pool.address, d.engine.address, pays)
        else:
            self.move(d.engine.address, d.pool.address, -pays)
        self.move(d.engine.address, keeper, o.fee)
        if acct.deadline and not deadline:
            self.pay_parked(o.trader)  # the fill cured the call
        self.note("order:filled")
        return after

    def _check_account(self, t: str, acct: Account) -> None:
        raw = self.d.raw_account(t)
        assert (raw.collateral, raw.deadline) == (acct.collateral, acct.deadline), (raw, acct)
        assert [(m, s, c) for m, s, c in raw.positions] == [
            (q.market_id, q.size, q.cost) for q in acct.positions
        ]

    def settle_one(self, o: OrderModel, rid: int, keeper: str) -> bool:
        """`settle_order(o, rid)` from `keeper`, checked against the model; True if filled."""
        d = self.d
        acct, _ = self.account(o.trader)
        if self.now > o.expiry:
            self.refused(
                self.send(d.book, "settle_order", o.id, rid, sender=keeper), "book: order expired"
            )
            self.note("refused:order_expired")
            return False
        why, price = self.round_reason(o, rid)
        if why is not None:
            self.refused(self.send(d.book, "settle_order", o.id, rid, sender=keeper), why)
            self.note("refused:order_round")
            return False
        reason, delta, outcome = self._outcome(o, acct, price)
        if reason is None and outcome[5] > self.held(d.pool.address):
            self.note("refused:pool")  # pay_fills would revert the whole settlement
            return False
        sent = self.must(d.book, "settle_order", o.id, rid, sender=keeper)
        after = self._book(o, acct, reason, delta, outcome, keeper)
        self._check_events(sent, [(o, reason, delta, price, rid)], keeper)
        if sent.value is not None:
            assert sent.value == (reason is None)
        self._check_account(o.trader, after)
        return reason is None

    def _check_events(self, sent, expected: list, keeper: str) -> None:
        d = self.d
        settled = sent.of(d.book, "OrderSettled")
        cancelled = sent.of(d.book, "OrderCancelled")
        want_settled = [
            (o.id, delta, price, rid) for o, r, delta, price, rid in expected if r is None
        ]
        want_cancelled = [(o.id, r, o.fee) for o, r, _, _, _ in expected if r is not None]
        assert [(e.order_id, e.size_delta, e.price, e.round_id) for e in settled] == want_settled
        assert [(e.order_id, e.reason, e.refund) for e in cancelled] == want_cancelled
        for e in settled:
            assert str(e.settler).lower() == str(keeper).lower()
            self._check_round(e)

    def settle_batch(self, items: list[tuple[int, int]], keeper: str) -> None:
        """`settle_orders` of (order id, round id) pairs, in order: the eligible settle (or
        are cancelled), the others (unknown, expired, wrong round) are skipped."""
        d = self.d
        accts: dict[str, Account] = {}
        expected, pays, seen = [], 0, set()
        for oid, rid in items:
            o = self.orders.get(oid)
            if o is None or oid in seen or self.now > o.expiry:
                continue
            why, price = self.round_reason(o, rid)
            if why is not None:
                continue
            seen.add(oid)
            acct = accts.get(o.trader) or self.account(o.trader)[0]
            reason, delta, outcome = self._outcome(o, acct, price)
            if reason is None:
                pays += outcome[5]
            expected.append((o, reason, delta, price, rid, acct, outcome))
            # the next order of the same trader in the batch sees this one's fill or refund
            accts[o.trader] = (
                outcome[6] if reason is None else replace(acct, collateral=acct.collateral + o.fee)
            )
        if pays > self.held(d.pool.address):
            self.note("refused:pool")
            return
        sent = self.must(
            d.book,
            "settle_orders",
            [oid for oid, _ in items],
            [rid for _, rid in items],
            sender=keeper,
        )
        accts = {}
        for o, reason, delta, _, _, acct, outcome in expected:
            accts[o.trader] = self._book(o, acct, reason, delta, outcome, keeper)
        self._check_events(sent, [e[:5] for e in expected], keeper)
        filled = sum(1 for e in expected if e[1] is None)
        if sent.value is not None:
            assert sent.value == filled
        for t, acct in accts.items():
            self._check_account(t, acct)
        if len(expected) > 1:
            self.note("order:batch")

    # --- rules ---------------------------------------------------------------

    @rule(
        i=st.integers(0, N_TRADERS - 1),
        market=st.integers(0, 2),
        frac=st.integers(-130, 130),
        reduce_only=st.booleans(),
        slippage=st.sampled_from([None, -50, 50, 500]),
        window=st.sampled_from([30, 300, 3_600]),
    )
    def commit_order(self, i, market, frac, reduce_only, slippage, window):
        """A trader commits an order and leaves it pending: `frac`% of its position (a
        reduction when `frac` < 0; of 1,000 tokens of notional with no position), an
        acceptable price `slippage` basis points from the current price (None: no bound;
        negative: tighter than the price, so a fill needs a move the trader's way)."""
        t = self.traders[i]
        acct, _ = self.account(t)
        price = self.price(market)
        size = next((q.size for q in acct.positions if q.market_id == market), 0)
        base = size or 1_000 * WAD * WAD // price
        delta = base * frac // 100
        if delta == 0:
            return
        if slippage is None:
            bound = MAX_UINT if delta > 0 else 0
        else:
            side = 1 if delta > 0 else -1
            bound = price * (10_000 + side * slippage) // 10_000
        self.commit(t, market, delta, bound, window, reduce_only)

    @rule(
        j=st.integers(0, 11),
        k=st.integers(0, 1),
        move=st.one_of(st.none(), st.integers(-200, 200)),
        which=st.sampled_from(["first", "first", "first", "before", "after"]),
    )
    def settle_order(self, j, k, move, which):
        """A keeper settles a pending order: `move` (basis points) first publishes a round a
        second later at a moved price (None: no new round); `which` names the settlement
        round or the one before or after it (refused with the adapter's reason)."""
        pending = self.pending()
        if not pending:
            return
        o = pending[j % len(pending)]
        if move is not None:
            self.tick(1)
            self.set_price(
                o.market, self._clamped(o.market, self.price(o.market) * (10_000 + move) // 10_000)
            )
        rid = self.settlement_round(o) or len(self.feeds[o.market].rounds)
        rid += {"first": 0, "before": -1, "after": 1}[which]
        self.settle_one(o, rid, self.keepers[k])

    def _clamped(self, m: int, price: int) -> int:
        start = int(self.d.markets[m].price * WAD)
        return min(max(price, start // 4), start * 3)

    @rule(k=st.integers(0, 1), publish=st.booleans(), junk=st.booleans())
    def settle_orders(self, k, publish, junk):
        """A keeper settles every pending order in one batch, each with its settlement
        round or, if none, the latest round (skipped); `publish` first publishes a round in
        every market with a pending order, a second later; `junk` adds an id that is no
        pending order (skipped)."""
        pending = self.pending()
        if not pending:
            return
        if publish:
            self.tick(1)
            for m in sorted({o.market for o in pending}):
                self.set_price(m, self.price(m))
        items = [
            (o.id, self.settlement_round(o) or len(self.feeds[o.market].rounds)) for o in pending
        ]
        if junk:
            items.insert(len(items) // 2, (pending[0].id ^ 1, items[0][1]))
        self.settle_batch(items, self.keepers[k])

    @rule(j=st.integers(0, 11), wait=st.booleans(), k=st.integers(0, 1), settle=st.booleans())
    def cancel_order(self, j, wait, k, settle):
        """Anyone cancels an order after its expiry (`wait`: time first passes it), which
        refunds the fee to the trader's collateral; before it, "book: order not expired".
        With `settle`, a keeper first tries to settle it (after the expiry: "book: order
        expired", whatever the round)."""
        d = self.d
        pending = self.pending()
        if not pending:
            return
        o = pending[j % len(pending)]
        if wait and self.now <= o.expiry:
            self.tick(o.expiry - self.now + 1)
            self.note("order:expired")
        if settle:
            rid = self.settlement_round(o) or len(self.feeds[o.market].rounds)
            if self.settle_one(o, rid, self.keepers[k]):
                return
            if o.id not in self.orders:  # cancelled at settlement
                return
        collateral = d.raw_account(o.trader).collateral
        sent = self.send(d.book, "cancel_order", o.id, sender=self.keepers[k])
        if self.now <= o.expiry:
            self.refused(sent, "book: order not expired")
            return
        assert sent.ok, sent.reason
        (ev,) = sent.of(d.book, "OrderCancelled")
        assert (ev.order_id, ev.reason, ev.refund) == (o.id, "book: expired", o.fee)
        del self.orders[o.id]
        self.dirty.add(o.trader)
        assert d.raw_account(o.trader).collateral == collateral + o.fee
        self.note("order:cancel_expired")

    @rule(
        i=st.integers(0, N_TRADERS - 1),
        fill_market=st.integers(0, 2),
        shift=st.integers(1, 2),
        event=st.sampled_from(["stale", "zero", "negative", "above_max", "reverting"]),
        frac=st.integers(1, 60),
    )
    def order_while_other_market_down(self, i, fill_market, shift, event, frac):
        """New exposure during another market's outage: the trader holds a position in
        another market (opened first if need be), whose feed goes bad; an order adding to
        (or opening) the position in `fill_market` settles at a valid round of its own
        market and must be cancelled with the other market's reason (new exposure needs
        every price of the account)."""
        t = self.traders[i]
        other = (fill_market + shift) % 3
        acct, fault = self.account(t)
        if fault or self.price_reason(fill_market) or self.price_reason(other):
            return
        if all(q.market_id != other for q in acct.positions):
            self.trade(i, other, "open", 20)
            acct, fault = self.account(t)
            if fault or all(q.market_id != other for q in acct.positions):
                return
        self.oracle(other, event)
        size = next((q.size for q in acct.positions if q.market_id == fill_market), 0)
        base = size or 1_000 * WAD * WAD // self.price(fill_market)
        delta = max(abs(base) * frac // 100, 1) * (1 if base > 0 else -1)
        self.note("order:other_market_down")
        self.order_now(i, fill_market, delta, "open")

    @rule(
        i=st.integers(0, N_TRADERS - 1),
        market=st.integers(0, 2),
        units=st.integers(10, 200),
        where=st.integers(5, 95),
        k=st.integers(0, 1),
    )
    def sliver_tranche(self, i, market, units, where, k):
        """The rounding case of the sliver refusal: a trader's account is made tiny (its
        positions closed, its collateral withdrawn, `units` millionths of a token deposited
        besides the order fee, a position at half its initial margin), driven into
        LIQUIDATABLE (critical_ratio 50%, close_factor 5%, no minimum position), and the
        market's window cap is set to leave room for a quarter of the tranche wanted (the
        least the sliver test admits): with 6-decimal collateral the penalty and PnL
        roundings in token units then outweigh the tranche, which would lower the ratio, so
        `liquidate` must refuse it (WINDOW_FULL; `plan_tranche` predicts it)."""
        d, t = self.d, self.traders[i]
        p = d.risk_params()
        if p.min_position_notional or p.critical_ratio != WAD // 2 or p.close_factor != WAD // 20:
            self.set_risk_params(125, 50, 50, 5, 60, 20, (1, 1, 1), 300, 0)
        acct, _ = self.account(t)
        if acct.positions:  # the closing orders' fees, and the closing roundings of a tiny one
            self.deposit(i, self.order_fee * len(acct.positions) * 10**6 // d.unit + 1_000, False)
            acct, _ = self.account(t)
        for q in acct.positions:
            self.trade(i, q.market_id, "close", 100)
        acct, fault = self.account(t)
        if acct.positions or fault or self.price_reason(market):
            return
        if acct.collateral:
            self.withdraw(i, 100, 0)
        self.deposit(i, units + self.order_fee * 10**6 // d.unit, False)
        cfg = d.config(market)
        acct, _ = self.account(t)
        notional = (acct.collateral - self.order_fee) * d.scale * WAD // int(cfg.imr) // 2
        delta = notional * WAD // self.price(market)
        if delta == 0:
            return
        self.order_now(i, market, delta, "open")
        acct, fault = self.account(t)
        if len(acct.positions) != 1 or fault:
            return
        self.drive_to_state(i, State.LIQUIDATABLE, where)
        acct, fault = self.account(t)
        p = d.risk_params()
        if fault or len(acct.positions) != 1 or self.state(acct, p) != State.LIQUIDATABLE:
            return
        if acct.last_tranche and self.now < acct.last_tranche + p.tranche_interval:
            return
        v = evaluate(acct, d.scale)
        want = tranche_fraction(v, p, d.scale, len(acct.positions))
        (q,) = acct.positions
        start, used = d.engine.window_state(q.market_id)
        used = 0 if self.now >= int(start) + p.liquidation_window else int(used)
        room = (want // 4 * q.notional + WAD - 1) // WAD
        sent = self._set_market(q.market_id, used + room, self.active[q.market_id], self.a.owner)
        assert sent.ok, sent.reason
        d.forget()
        self.window_changed = True
        if plan_tranche(acct, p, d.scale, self.now, d.window_room(self.now, p)) is None:
            self.note("liquidate:sliver_rounding")
        self.liquidate(k, i)
