"""The whole-system state machine: traders, two LPs, keepers, a donor, the owner and the guardian.

One machine, two backends: `test_engine_machine.py` runs it in titanoboa (quick profile in
`make test`, the deep campaign in `make fuzz`), `test_engine_machine_ape.py` runs it with a
small budget on Anvil through Ape. It reaches the chain only through a `Driver`.

Every position change is an order on the real OrderBook (contracts/OrderBook.vy): the rules
of tests/stateful/orders.py commit, settle one, settle many, cancel after expiry, with the
feeds publishing rounds between commit and settlement (the model keeps every round).

After every step it checks, against `margincall.math` (the reference the SDK and bots use)
and a model of the parts the reference does not cover (feeds, their rounds and adapters,
pause, markets, pending orders):

- token conservation: the engine's token balance is exactly the sum of its collateral ledgers
  plus what it holds for others (`claimable`: the keepers' accrued rewards, the fund's share
  of the penalties, the pool's lazily settled credit) plus the settlement fees escrowed for
  pending orders (the book's `escrowed_of`, equal to the model's, as are its
  `pending_orders`), and every other holding (token balance
  plus claimable: pool, fund, keepers; token balance: traders, LPs, donor) equals what the
  model says moved; a claim moves tokens and changes no holding; the two LPs own every pool
  share;
- `check_margins`, `check_margin` and `preview_liquidation` equal `evaluate`, `classify` and
  `plan_tranche` at the model's prices; every adapter's `try_price`/`reason` equal the model;
- each action succeeds exactly when the model says it may, with the predicted effect, and
  fails with the predicted reason: HEALTHY, CALLABLE and CALLED accounts cannot be
  liquidated, only CALLABLE ones can be called, CALLED accounts can neither withdraw nor add
  exposure (except a flip that cures the account in the same trade, which the engine allows
  and which clears the call), no withdrawal leaves equity under initial margin;
- a tranche that does not close the account never lowers its ratio;
- no order fills at a price published before its commit: each `OrderSettled` names a round
  of the market's feed whose updatedAt is strictly after the commit time (and the previous
  round's at or before it, as `OracleAdapter.round_price` defines the settlement round), at
  that round's answer; every settlement or cancellation has the predicted outcome and reason
  (tests/stateful/orders.py);
- the fund never pays more than it holds; `BadDebt.socialised > 0` only when it paid it all;
- pause (guardian or owner only): new exposure is refused with "engine: paused"; deposits,
  withdrawals, reductions, calls and liquidations work as if unpaused;
- an inactive market refuses new exposure ("engine: market not active") and nothing else;
- oracle faults (stale, future-dated, zero, negative, out of bounds, reverting feed; and plain
  staleness when time outruns the heartbeat): every operation that needs the faulty price
  reverts with the adapter's reason (batched keeper calls skip the account, `check_margins`
  reports it unpriced); deposits, and everything that needs only other prices, still work;
  a fresh round restores the market. Liquidation is the exception (the stale-leg shield fix):
  the unpriced leg is valued at `margincall.math.worst_price` (the adapter's `worst_price`),
  stays open, the priced legs are liquidated as `plan_tranche` says, and a shortfall is
  carried into the unpriced leg (no bad debt while it is open);
- no account can stop its own liquidation: an account CRITICAL or BANKRUPT at its
  liquidation value with at least one priced leg is always liquidatable (preview and engine).
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field

from hypothesis import assume
from hypothesis import strategies as st
from hypothesis.errors import StopTest
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from margincall.constants import WAD, PlanCode, State
from margincall.math import (
    MAX_UINT,
    Account,
    Position,
    RiskParams,
    call_reward,
    classify,
    div_ceil,
    div_floor,
    evaluate,
    mul_up,
    plan_tranche,
    ratio,
    worst_price,
)
from tests.stateful.driver import N_TRADERS, Driver
from tests.stateful.orders import OrderRules

PRICE_BAND = (4, 3)  # price moves stay within [start / 4, start * 3]
MIN_CLOSE_FACTOR = 5 * 10**16
SCAN_ROUNDS = 32  # rounds `OracleAdapter.best_since` reads at most
FUTURE = 10**6  # seconds ahead of a future-dated round (more than any example travels)
FAULTS = ("stale", "future", "zero", "negative", "above_max", "below_min", "reverting")
REASON = {
    PlanCode.NOT_LIQUIDATABLE: "engine: account not liquidatable",
    PlanCode.TOO_SOON: "engine: tranche interval not elapsed",
    PlanCode.WINDOW_FULL: "engine: liquidation window cap reached",
}


@dataclass
class FeedModel:
    """What a mock feed holds, and the last answer a price move set (a valid one)."""

    answer: int
    updated_at: int
    good: int
    reverting: bool = False
    # every round published, by round id - 1: (answer, updatedAt) (settlements name one)
    rounds: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Campaign:
    """Counts over the examples of one run: steps per example, and what the steps reached.

    An example counts once it ran to its end; `min_steps` > 0 rejects shorter ones (Hypothesis
    does not count rejected examples towards `max_examples`). Examples that Hypothesis cut
    short itself (out of data) are counted as aborted and also not towards the examples.
    """

    label: str
    min_steps: int = 0
    examples: int = 0
    rejected: int = 0
    aborted: int = 0
    steps: list[int] = field(default_factory=list)
    totals: Counter = field(default_factory=Counter)

    def record(self, steps: int, stats: Counter) -> bool:
        """Books a finished example; False when it is too short to count."""
        if steps < self.min_steps:
            self.rejected += 1
            return False
        self.examples += 1
        self.steps.append(steps)
        self.totals.update(stats)
        return True

    def summary(self) -> str:
        t = self.totals
        steps = self.steps or [0]
        lines = [
            f"[{self.label}] {self.examples} examples"
            f" ({self.rejected} rejected under {self.min_steps} steps,"
            f" {self.aborted} cut short by Hypothesis);"
            f" steps after seeding: min {min(steps)}, mean {sum(steps) / len(steps):.1f},"
            f" max {max(steps)}, total {sum(steps)}",
            f"  liquidations: {t['liquidate:tranche']} partial tranches,"
            f" {t['liquidate:full']} full closes, {t['bad_debt']} bad debts"
            f" ({t['bad_debt:socialised']} socialised); margin calls {t['margin_call']}"
            f" (+{t['margin_call_many']} batched)",
            f"  orders: {t['order:commit']} committed, {t['order:filled']} filled,"
            f" {t['order:cancelled']} cancelled at settlement,"
            f" {t['order:cancel_expired']} cancelled after expiry;"
            f" rounds refused {t['refused:order_round']}, expired {t['refused:order_expired']}",
            f"  refusals: liquidate {t['refused:liquidate']}, paused {t['refused:paused']},"
            f" inactive market {t['refused:inactive']}, oracle {t['refused:oracle']}"
            f" (+{t['skipped:oracle']} batch skips); oracle faults"
            f" {sum(n for k, n in t.items() if k.startswith('fault:'))},"
            f" stale by time {t['oracle:stale_by_time']}",
            "  all counts: " + ", ".join(f"{k}={n}" for k, n in sorted(t.items())),
        ]
        return "\n".join(lines)


class EngineMachine(OrderRules, RuleBasedStateMachine):
    driver: Driver  # set on a subclass per deployed system
    campaign: Campaign

    def __init__(self):
        super().__init__()
        self.d = d = self.driver
        d.start_example()
        a = d.actors
        self.traders = list(a.traders)
        self.keepers = list(a.keepers)
        self.holders = [d.engine.address, d.pool.address, d.fund.address, *a.lps, a.donor]
        self.holders += self.keepers + self.traders
        # the engine holds tokens for these (`claimable`): rewards, the fund's share, credit
        self.owed_to = [d.pool.address, d.fund.address, *self.keepers]
        self.expected = {h: self.held(h) for h in self.holders}
        self.stats: Counter = Counter()
        self.checks = 0
        # the model of what the chain does not tell the reference math
        self.paused = bool(d.engine.paused())
        self.active = [bool(d.config(m).active) for m in range(len(d.markets))]
        self.feeds = []
        for feed in d.feeds:
            last, answer, _, updated_at, _ = feed.latestRoundData()
            model = FeedModel(int(answer), int(updated_at), int(answer))
            for rid in range(1, int(last) + 1):
                _, a_, _, u_, _ = feed.getRoundData(rid)
                model.rounds.append((int(a_), int(u_)))
            self.feeds.append(model)
        self.bounds = []
        for m, spec in enumerate(d.markets):
            mul = d.mul(m)
            self.bounds.append((div_ceil(spec.min_price, mul), spec.max_price // mul))
        self.price_bounds = [(int(o.min_price()), int(o.max_price())) for o in d.oracles]
        self.oracles_changed = True
        # the LP side: shares held and the deposit cooldown's locks
        self.pool_cooldown = int(d.pool.cooldown())
        self.lp_shares = {lp: int(d.pool.balanceOf(lp)) for lp in a.lps}
        self.unlock = {lp: int(d.pool.unlock_time(lp)) for lp in a.lps}
        self.locked = {lp: int(d.pool.locked_shares(lp)) for lp in a.lps}
        # accounts whose views must be checked against the reference after this step
        self.dirty = set(self.traders)
        self.window_changed = False  # a window's room changed: LIQUIDATABLE previews too
        self.turn = 0
        self.sent_seen = -1
        # the order book: pending orders by id (tests/stateful/orders.py)
        self.orders = {}
        self.order_fee = int(d.book.settlement_fee())
        self.max_window = int(d.book.max_window())
        # margin-call rewards parked until their calls end: trader -> (caller, amount)
        self.parked = {t: self._parked_on_chain(t) for t in self.traders}

    def teardown(self):
        failing = sys.exc_info()[1]
        self.d.end_example()
        if failing is not None:
            if isinstance(failing, StopTest):
                self.campaign.aborted += 1
            return
        if not self.campaign.record(self.checks - 1, self.stats):
            assume(False)

    # --- model helpers ---------------------------------------------------------------

    @property
    def now(self) -> int:
        return self.d.now()

    @property
    def a(self):
        return self.d.actors

    def held(self, who: str) -> int:
        """What `who` owns in tokens: its balance plus what the engine holds for it; for the
        engine, its balance less what it holds for others (the collateral ledgers)."""
        d = self.d
        if who == d.engine.address:
            return d.balance(who) - sum(int(d.engine.claimable(h)) for h in self.owed_to)
        if who in self.owed_to:
            return d.balance(who) + int(d.engine.claimable(who))
        return d.balance(who)

    def _parked_on_chain(self, t: str) -> tuple[str | None, int]:
        word = int(self.d.engine.parked_reward(t))
        amount = word & (2**96 - 1)
        if amount == 0:
            return None, 0
        caller = "0x" + (word >> 96).to_bytes(20, "big").hex()
        # the keeper as the model names it (its key in `expected`)
        return next((k for k in self.keepers if str(k).lower() == caller), caller), amount

    def pay_parked(self, t: str) -> None:
        """The call of `t` ends with the account solvent: its parked reward goes to the
        caller's `claimable` (engine `_release`)."""
        caller, amount = self.parked[t]
        if amount:
            self.move(self.d.engine.address, caller, amount)
            self.parked[t] = (None, 0)
            self.note("call_reward:paid")

    def park(self, t: str, acct: Account, keeper: str, reward: int) -> None:
        """A call on `t` (CALLABLE: a lapsed call's parked reward is paid first) parks
        `reward` for `keeper`; nothing moves (the engine holds it)."""
        if acct.deadline:
            self.pay_parked(t)
        if reward:
            self.parked[t] = (keeper, reward)

    def move(self, src: str, dst: str, amount: int) -> None:
        assert amount >= 0
        self.expected[src] -= amount
        self.expected[dst] += amount

    def lp_locked(self, lp) -> int:
        """The LP's batch of shares still locked by its deposits (0 once it unlocked)."""
        return self.locked[lp] if self.now < self.unlock[lp] else 0

    def note(self, key: str) -> None:
        self.stats[key] += 1

    def send(self, contract, fn: str, *args, sender: str):
        return self.d.send(contract, fn, *args, sender=sender)

    def must(self, contract, fn: str, *args, sender: str):
        sent = self.send(contract, fn, *args, sender=sender)
        assert sent.ok, (fn, sent.reason)
        return sent

    def refused(self, sent, reason: str, *context) -> None:
        assert not sent.ok and sent.reason == reason, (reason, sent.reason, *context)

    def price_reason(self, m: int) -> str | None:
        """Why market `m`'s adapter has no valid price now (OracleAdapter._read_feed)."""
        f = self.feeds[m]
        now = self.now
        if f.reverting:
            return "oracle: feed reverted"
        if f.answer <= 0:
            return "oracle: non-positive price"
        if f.updated_at == 0:
            return "oracle: stale price"
        if f.updated_at > now:
            return "oracle: future timestamp"
        if now - f.updated_at > self.d.markets[m].heartbeat:
            return "oracle: stale price"
        lo, hi = self.bounds[m]
        if not lo <= f.answer <= hi:
            return "oracle: price out of bounds"
        return None

    def price(self, m: int) -> int:
        """The market's price in wad: the adapter's when valid, else the last valid one."""
        return self.feeds[m].good * self.d.mul(m)

    def holders_of(self, m: int) -> list[str]:
        """The traders with a position in market `m`."""
        return [t for t in self.traders if (self.d.raw_account(t).markets >> m) & 1]

    def first_fault(self, markets) -> str | None:
        """The reason of the first market (in id order) without a valid price, as the
        engine's `_prices` meets it."""
        for m in sorted(markets):
            reason = self.price_reason(m)
            if reason is not None:
                return reason
        return None

    def best_since(self, m: int, since: int, long: bool) -> int:
        """The model of `OracleAdapter.best_since` (wad, 0 for none): the best valid answer
        of the feed's rounds published after `since`, walking back from the latest at
        most `SCAN_ROUNDS` rounds, stopping at one not after it and at round 1; nothing while
        the feed reverts."""
        f, (lo, hi) = self.feeds[m], self.bounds[m]
        if f.reverting:
            return 0
        best = 0
        for answer, updated in list(reversed(f.rounds))[:SCAN_ROUNDS]:
            if updated <= since:
                break
            if 0 < answer and lo <= answer <= hi and updated <= self.now:
                if best == 0 or (answer > best) == long:
                    best = answer
        return best * self.d.mul(m)

    def account(self, who: str) -> tuple[Account, str | None]:
        """The account as `margincall.math` sees it at the model's prices, and the reason a
        needed price is invalid (None when every needed price is valid). Under a call, each
        position carries its market's best price since the call (`best_since`)."""
        d = self.d
        raw = d.raw_account(who)
        since = 0
        if raw.deadline:
            since = max(raw.deadline - int(d.risk_params().grace_period), raw.last_tranche)
        positions = []
        for m, size, cost in raw.positions:
            cfg = d.config(m)
            best = self.best_since(m, since, size > 0) if raw.deadline else 0
            positions.append(
                Position(m, size, cost, self.price(m), int(cfg.mmr), int(cfg.imr), best)
            )
        parked = self.parked[who][1] if raw.deadline else 0
        acct = Account(
            raw.collateral, tuple(positions), raw.deadline, raw.last_tranche, raw.tranches, parked
        )
        return acct, self.first_fault(q.market_id for q in positions)

    def worst(self, m: int) -> tuple[int, int]:
        """Liquidation's value of market `m` without a valid price, long and short
        (OracleAdapter.worst_price): the last answer if usable, with its haircut."""
        f = self.feeds[m]
        lo, hi = self.bounds[m]
        usable = (
            not f.reverting and f.answer > 0 and 0 < f.updated_at <= self.now
        ) and lo <= f.answer <= hi
        last = f.answer * self.d.mul(m) if usable else None
        heartbeat = self.d.markets[m].heartbeat
        return worst_price(last, f.updated_at, self.now, heartbeat, *self.price_bounds[m])

    def liq_account(self, acct: Account) -> Account:
        """The account as `liquidate` values it: each unpriced leg at its worst case for its
        side, marked `unpriced` (it stays open)."""
        positions = []
        for q in acct.positions:
            if self.price_reason(q.market_id) is not None:
                long_px, short_px = self.worst(q.market_id)
                px = short_px if q.size < 0 else long_px
                q = Position(q.market_id, q.size, q.cost, px, q.mmr, q.imr, unpriced=True)
            positions.append(q)
        return Account(
            acct.collateral,
            tuple(positions),
            acct.deadline,
            acct.last_tranche,
            acct.tranches,
            acct.parked_reward,
        )

    @staticmethod
    def all_unpriced(acct: Account) -> bool:
        """No priced leg to close: `liquidate` reverts with the first leg's oracle reason."""
        return bool(acct.positions) and all(q.unpriced for q in acct.positions)

    def state(self, acct: Account, p: RiskParams) -> State:
        return classify(acct, evaluate(acct, self.d.scale), p, self.now, self.d.scale)

    def expected_reason(self, acct: Account, p: RiskParams) -> int:
        """Why `liquidate` would revert (PlanCode), or OK."""
        if self.state(acct, p) < State.LIQUIDATABLE:
            return PlanCode.NOT_LIQUIDATABLE
        room = self.d.window_room(self.now, p)
        if plan_tranche(acct, p, self.d.scale, self.now, room) is not None:
            return PlanCode.OK
        if self.state(acct, p) < State.CRITICAL and acct.last_tranche:
            if self.now < acct.last_tranche + p.tranche_interval:
                return PlanCode.TOO_SOON
        return PlanCode.WINDOW_FULL

    def set_price(self, m: int, price_wad: int) -> None:
        """Publishes a fresh round (a valid timestamp; the answer rounded to the feed's
        decimals). A reverting feed keeps reverting."""
        answer = price_wad // self.d.mul(m)
        self.must(self.d.feeds[m], "set_answer", answer, sender=self.a.owner)
        f = self.feeds[m]
        f.answer = f.good = answer
        f.updated_at = self.now
        f.rounds.append((answer, self.now))
        self.dirty.update(self.holders_of(m))
        self.oracles_changed = True

    # --- setup ---------------------------------------------------------------

    @initialize(
        amounts=st.lists(st.integers(500, 20_000), min_size=N_TRADERS, max_size=N_TRADERS),
        opens=st.lists(
            st.tuples(st.integers(0, 2), st.integers(60, 100)),
            min_size=N_TRADERS,
            max_size=N_TRADERS,
        ),
    )
    def seed_accounts(self, amounts, opens):
        """Starts each trader with collateral and a levered position (the interesting part)."""
        d = self.d
        for t, amount in zip(self.traders, amounts, strict=True):
            self.must(d.engine, "deposit", amount * d.unit, sender=t)
            self.move(t, d.engine.address, amount * d.unit)
        # the opening orders, committed together and settled in one batch a second later
        for i, (market, frac) in enumerate(opens):
            t = self.traders[i]
            acct, _ = self.account(t)
            v = evaluate(acct, d.scale)
            notional = (v.equity - v.initial) * WAD // int(d.config(market).imr) * frac // 100
            side = 1 if (frac + i + market) % 2 else -1
            delta = notional * WAD // self.price(market) * side
            self.commit(t, market, delta, MAX_UINT if side > 0 else 0, self.max_window)
        self.tick(1)
        for m in sorted({o.market for o in self.orders.values()}):
            self.set_price(m, self.price(m))
        self.settle_batch(
            [(o.id, self.settlement_round(o)) for o in self.pending()], self.keepers[0]
        )

    # --- traders ---------------------------------------------------------------

    @rule(
        i=st.integers(0, N_TRADERS - 1),
        amount=st.integers(1, 5_000 * 10**6),
        called_first=st.booleans(),
    )
    def deposit(self, i, amount, called_first):
        """Deposits always work (whatever the pause or the oracles say) and clear a call they
        cure, when every price of the account is valid. With `called_first`, the depositor is
        the first trader under a recorded call, if any (called traders are the ones who top
        up)."""
        d = self.d
        if called_first:
            called = [j for j, t in enumerate(self.traders) if d.raw_account(t).deadline]
            i = called[0] if called else i
        t = self.traders[i]
        self.dirty.add(t)
        amount = amount * d.unit // 10**6 or 1
        acct, fault = self.account(t)
        p = d.risk_params()
        cured = Account(acct.collateral + amount, acct.positions)
        will_clear = (
            acct.deadline != 0 and fault is None and evaluate(cured, d.scale).ratio >= p.call_ratio
        )
        sent = self.must(d.engine, "deposit", amount, sender=t)
        if fault:
            self.note("oracle:deposit_works")
            if acct.deadline:
                self.note("oracle:deposit_under_call")
        if self.paused:
            self.note("paused:deposit")
        assert bool(sent.of(d.engine, "MarginCallCleared")) == will_clear
        self.move(t, d.engine.address, amount)
        if will_clear:
            self.pay_parked(t)
        assert d.raw_account(t).deadline == (0 if will_clear else acct.deadline)

    @rule(i=st.integers(0, N_TRADERS - 1), frac=st.integers(1, 100), beyond=st.integers(0, 3))
    def withdraw(self, i, frac, beyond):
        d, t = self.d, self.traders[i]
        self.dirty.add(t)
        acct, fault = self.account(t)
        p = d.risk_params()
        v = evaluate(acct, d.scale)
        blocked = bool(acct.positions) and acct.deadline != 0 and v.ratio < p.call_ratio
        if not acct.positions:
            allowed = acct.collateral
        elif blocked:
            allowed = 0
        else:
            allowed = max(0, min(acct.collateral, (v.equity - v.initial) // d.scale))
        if beyond == 0:
            if allowed == 0:
                return
            amount = max(1, allowed * frac // 100)
        elif beyond == 1:
            amount = acct.collateral + frac
        else:
            amount = allowed + frac
        sent = self.send(d.engine, "withdraw", amount, sender=t)
        if amount > acct.collateral:
            self.refused(sent, "engine: amount exceeds collateral")
        elif acct.positions and fault:
            self.refused(sent, fault)
            self.note("refused:oracle")
        elif blocked:
            self.refused(sent, "engine: under margin call")
        elif amount > allowed:
            self.refused(sent, "engine: insufficient margin")
        else:
            assert sent.ok, sent.reason
        if sent.ok:
            assert self.state(acct, p) != State.CALLED, "a CALLED account withdrew"
            self.note("withdraw")
            if self.paused:
                self.note("paused:withdraw")
            self.move(d.engine.address, t, amount)
            if acct.deadline:  # not blocked: the withdrawal clears the cured call
                assert d.raw_account(t).deadline == 0
                self.pay_parked(t)
            st_ = d.engine.check_margin(t)
            if st_.positions:
                assert st_.equity >= st_.initial, "withdrawal left equity under initial margin"

    def _predict_trade(self, acct: Account, p: RiskParams, market: int, delta: int, price: int):
        """The engine's `fill` at `price` (a settlement round's, which the book checked), in
        Python: (reason or None, (size, cost, collateral, deadline, increases, what the pool
        pays, the account after)). New exposure is valued at `price` for `market` and at the
        adapters' prices for the others (each must be valid); a reduction of a CALLED
        account clears the call when every adapter price (`market`'s included) is valid and
        the account is back at call_ratio at them (`_cure`)."""
        d = self.d
        cfg = d.config(market)
        old = next((q for q in acct.positions if q.market_id == market), None)
        size, cost = (old.size, old.cost) if old else (0, 0)
        realized = 0
        if size == 0 or (size > 0) == (delta > 0):
            increases = True
            nsize, ncost = size + delta, cost + div_ceil(delta * price, WAD)
        elif abs(delta) <= abs(size):
            increases = False
            closed_cost = div_ceil(cost * (-delta), size)
            realized = div_floor(-delta * price, WAD) - closed_cost
            nsize, ncost = size + delta, cost - closed_cost
        else:
            increases = True
            realized = div_floor(size * price, WAD) - cost
            nsize = size + delta
            ncost = div_ceil(nsize * price, WAD)
        if nsize != 0 and mul_up(abs(nsize), price) < p.min_position_notional:
            return "engine: position below minimum", None
        fee = div_ceil(mul_up(mul_up(abs(delta), price), int(cfg.fee)), d.scale)
        realized_tok = div_floor(realized, d.scale)
        balance = acct.collateral + realized_tok - fee
        if balance < 0:
            return "engine: loss exceeds collateral", None
        if nsize == 0:
            ncost = 0
        others = [q for q in acct.positions if q.market_id != market]

        def with_own(at: int) -> Account:
            mine = [Position(market, nsize, ncost, at, int(cfg.mmr), int(cfg.imr))] if nsize else []
            positions = sorted(others + mine, key=lambda q: q.market_id)
            return Account(balance, tuple(positions), deadline, acct.last_tranche, acct.tranches)

        deadline = acct.deadline
        after = with_own(price)
        if increases:
            if self.paused:
                return "engine: paused", None
            if not self.active[market]:
                return "engine: market not active", None
            fault = self.first_fault(q.market_id for q in others)
            if fault:
                return fault, None  # new exposure needs every other price of the account
            v = evaluate(after, d.scale)
            if deadline and v.ratio >= p.call_ratio:
                deadline = 0
            elif deadline:
                return "engine: under margin call", None
            if v.equity < v.initial:
                return "engine: insufficient margin", None
        elif deadline:
            cure = with_own(self.price(market))
            fault = self.first_fault(q.market_id for q in cure.positions)
            if not fault and evaluate(cure, d.scale).ratio >= p.call_ratio:
                deadline = 0
        after = with_own(price)
        return None, (nsize, ncost, balance, deadline, increases, realized_tok - fee, after)

    @rule(
        i=st.integers(0, N_TRADERS - 1),
        market=st.one_of(st.integers(0, 2), st.none()),
        kind=st.sampled_from(["open", "reduce", "flip", "close"]),
        frac=st.integers(1, 130),
    )
    def trade(self, i, market, kind, frac):
        """Opens, increases, reduces, flips or closes a position in `market` (None: the
        trader's largest position's market, where reductions matter most) through an order:
        the trader commits (no slippage bound), a second later the market's feed publishes a
        round at the current price and a keeper settles the order at it (`settle_order`).
        While the market's feed is faulty the order stays pending (it settles later, at the
        first valid round after its commit, or expires)."""
        d, t = self.d, self.traders[i]
        self.dirty.add(t)
        acct, _ = self.account(t)
        if market is None:
            largest = max(acct.positions, key=lambda q: q.notional, default=None)
            market = largest.market_id if largest else 0
        price = self.price(market)
        old = next((q for q in acct.positions if q.market_id == market), None)
        size = old.size if old else 0
        if kind == "open" or size == 0:
            v = evaluate(acct, d.scale)
            imr = int(d.config(market).imr)
            free = max(v.equity - v.initial, 10 * WAD)
            notional = free * WAD // imr * frac // 100
            delta = notional * WAD // price * (1 if (frac + i + market) % 2 else -1)
            if size:
                delta = abs(delta) * (1 if size > 0 else -1)
        elif kind == "reduce":
            delta = -size * frac // 131
        elif kind == "flip":
            delta = -size - size * frac // 100
        else:
            delta = -size
        if delta == 0:
            return
        self.order_now(i, market, delta, kind)

    @rule(k=st.integers(0, 1), who=st.integers(0, 3))
    def claim_accrued(self, k, who):
        """A keeper claims what the engine holds for someone (itself, the other keeper, the
        fund or the pool: anyone may, the tokens go to the owner): `RewardsClaimed` with the
        whole claimable, moved to the owner's wallet; no holding changes."""
        d, keeper = self.d, self.keepers[k]
        owner = [*self.keepers, d.fund.address, d.pool.address][who]
        before, wallet = int(d.engine.claimable(owner)), d.balance(owner)
        sent = self.must(d.engine, "claim_rewards", owner, sender=keeper)
        events = sent.of(d.engine, "RewardsClaimed")
        if before == 0:
            assert events == []
            return
        (ev,) = events
        assert (ev.keeper, ev.caller, ev.amount) == (owner, keeper, before)
        assert int(d.engine.claimable(owner)) == 0
        assert d.balance(owner) == wallet + before
        self.note("claim_accrued")

    # --- market ---------------------------------------------------------------

    @rule(
        market=st.integers(0, 2),
        move=st.one_of(
            st.integers(-300, 300),  # small moves, in 1e-4
            st.sampled_from([-3_000, -1_000, -500, 500, 1_000, 5_000]),  # jumps
        ),
    )
    def price_move(self, market, move):
        start = int(self.d.markets[market].price * WAD)
        new = self.price(market) * (10_000 + move) // 10_000
        self.set_price(market, min(max(new, start // PRICE_BAND[0]), start * PRICE_BAND[1]))

    @rule(
        i=st.integers(0, N_TRADERS - 1),
        goal=st.sampled_from(
            [State.LIQUIDATABLE] * 5
            + [State.CALLABLE, State.CALLABLE, State.HEALTHY, State.CRITICAL, State.BANKRUPT]
        ),
        where=st.integers(2, 98),
    )
    def drive_to_state(self, i, goal, where):
        """Moves the price of a trader's largest position so that its ratio lands `where`%
        of the way through the band of state `goal` (at the current risk parameters). Walks
        accounts into every state, LIQUIDATABLE most often (partial tranches live there: below
        ratio 1 only when critical_ratio < 1, as the machine's owner may set it; at the
        default critical_ratio 1 in the call band, where a call past its deadline makes them)."""
        d = self.d
        acct, _ = self.account(self.traders[i])
        if not acct.positions:
            return
        p = d.risk_params()
        call, crit = p.call_ratio / WAD, p.critical_ratio / WAD
        lo, hi = {
            State.HEALTHY: (call, call * 1.5),
            State.CALLABLE: (1.0, call),
            # below 1 when critical_ratio < 1, else the call band (a call past its deadline)
            State.LIQUIDATABLE: (crit, 1.0) if crit < 1.0 else (1.0, call),
            State.CRITICAL: (0.0, crit),
            State.BANKRUPT: (-0.3, 0.0),
        }[goal]
        self._drive_ratio(acct, lo + (hi - lo) * where / 100)

    @rule(
        i=st.integers(0, N_TRADERS - 1),
        k=st.integers(0, 1),
        fault=st.sampled_from(FAULTS),
        goal=st.sampled_from([State.CRITICAL, State.BANKRUPT]),
        where=st.integers(2, 98),
    )
    def stale_leg_shield(self, i, k, fault, goal, where):
        """The stale-leg shield attack (issue 14), steered: the feed of a trader's smallest
        leg goes bad (`fault`), its largest leg's price drives it CRITICAL or BANKRUPT
        (`where`% into the band, at the model's prices), and a keeper liquidates: the priced
        legs close and the unpriced one stays, a shortfall carried, not booked (the
        `liquidate` rule predicts and checks every figure)."""
        acct, _ = self.account(self.traders[i])
        if len(acct.positions) < 2:
            return
        small = min(acct.positions, key=lambda q: q.notional)
        big = max(acct.positions, key=lambda q: q.notional)
        self.oracle(small.market_id, fault)
        if small.market_id == big.market_id or self.price_reason(big.market_id) is not None:
            return
        self.note("shield:attempt")
        self.drive_to_state(i, goal, where)
        self.liquidate(k, i)

    def _drive_ratio(self, acct: Account, r: float) -> None:
        """Sets the price of `acct`'s largest position so that its ratio is about `r`."""
        d = self.d
        v = evaluate(acct, d.scale)
        q = max(acct.positions, key=lambda q: q.notional)
        # equity(P) = rest + size * P - cost;  maintenance(P) = others + |size| * P * mmr
        rest = v.equity - q.pnl
        others = v.maintenance - mul_up(q.notional, q.mmr)
        den = q.size / WAD - r * abs(q.size) * q.mmr / WAD**2
        if den == 0:
            return
        price = (r * others - rest + q.cost) / den
        start = int(d.markets[q.market_id].price * WAD)
        if price <= 0:
            return
        price = min(max(int(price), start // PRICE_BAND[0]), start * PRICE_BAND[1])
        self.set_price(q.market_id, price)

    @rule(i=st.integers(0, N_TRADERS - 1), k=st.integers(1, 200), keeper=st.integers(0, 1))
    def call_at_the_brink(self, i, k, keeper):
        """Puts a trader's ratio a hair above 1 (1 + k/100,000: equity above maintenance by less
        than the call reward for most accounts) and calls it: the reward is cut so the call
        never makes the account liquidatable (the `margin_call` rule predicts it with
        `margincall.math.call_reward` and the invariants check the state after)."""
        acct, _ = self.account(self.traders[i])
        if not acct.positions:
            return
        self._drive_ratio(acct, 1 + k / 100_000)
        acct, fault = self.account(self.traders[i])
        if fault or self.state(acct, self.d.risk_params()) != State.CALLABLE:
            return
        p = self.d.risk_params()
        if call_reward(acct, p, self.d.scale) < p.call_reward // self.d.scale:
            self.note("margin_call:reward_cut")
        self.margin_call(keeper, i)

    @rule(
        i=st.integers(0, N_TRADERS - 1),
        where=st.integers(5, 95),
        keeper=st.integers(0, 1),
        act=st.sampled_from(["liquidate", "margin_call"]),
    )
    def call_recovers_unseen(self, i, where, keeper, act):
        """A called trader's price recovers above call_ratio and falls back into the call
        band (`where`%) with no transaction to the engine, then the deadline passes: the call
        has cleared itself (PROTOCOL.md section 2), so `liquidate` must be refused and a fresh
        `margin_call` accepted (both rules predict it with `classify`, which reads the
        model's `best_since`). Steers the machine into the recovery it would rarely find."""
        t = self.traders[i]
        acct, fault = self.account(t)
        p = self.d.risk_params()
        if fault or not acct.positions:
            return
        if self.state(acct, p) != State.CALLED:
            self._drive_ratio(acct, 1 + (p.call_ratio / WAD - 1) / 2)
            self.margin_call(keeper, i)
            acct, fault = self.account(t)
            if fault or self.state(acct, p) != State.CALLED:
                return
        self.d.travel(1)  # a round of the call's own second does not count
        self._drive_ratio(acct, p.call_ratio / WAD * 1.1)
        acct, fault = self.account(t)
        if fault or self.state(acct, p) != State.HEALTHY:
            return
        self._drive_ratio(acct, 1 + (p.call_ratio / WAD - 1) * where / 100)
        self.d.travel(max(acct.deadline - self.now, 0))
        self.dirty.update(self.traders)
        self.oracles_changed = True
        acct, fault = self.account(t)
        if not fault and self.state(acct, p) == State.CALLABLE and acct.deadline:
            self.note("call:recovered_unseen")
        if act == "liquidate":
            self.liquidate(keeper, i)
        else:
            self.margin_call(keeper, i)

    @rule(i=st.integers(0, N_TRADERS - 1), where=st.integers(5, 95), keeper=st.integers(0, 1))
    def sliver_liquidation(self, i, where, keeper):
        """Leaves room for only a sliver in the window of a trader's largest market (10,000
        wei of notional), drives the trader into LIQUIDATABLE and liquidates: with 6-decimal
        collateral the sliver's penalty rounding would lower the ratio, so the engine must
        refuse it (the `liquidate` rule predicts it with `plan_tranche`)."""
        acct, _ = self.account(self.traders[i])
        if not acct.positions:
            return
        q = max(acct.positions, key=lambda q: q.notional)
        sent = self._set_market(q.market_id, 10_000, self.active[q.market_id], self.a.owner)
        assert sent.ok, sent.reason
        self.d.forget()
        self.window_changed = True
        self.drive_to_state(i, State.LIQUIDATABLE, where)
        self.note("liquidate:sliver_window")
        self.liquidate(keeper, i)

    @rule(seconds=st.sampled_from([61, 1, 30, 299, 301, 1_800, 3_601, 7_300]))
    def time_passes(self, seconds):
        before = [self.price_reason(m) for m in range(len(self.feeds))]
        self.d.travel(seconds)
        after = [self.price_reason(m) for m in range(len(self.feeds))]
        for b, a in zip(before, after, strict=True):
            if b is None and a == "oracle: stale price":
                self.note("oracle:stale_by_time")
        self.dirty.update(self.traders)
        self.oracles_changed = True

    @rule(
        market=st.integers(0, 2),
        event=st.one_of(st.just("recover"), st.sampled_from(FAULTS), st.just("recover_all")),
    )
    def oracle(self, market, event):
        """A feed goes bad (`event` names the fault): from now on every operation that needs
        its price must refuse with the adapter's reason. Or it answers again ("recover": a
        fresh round at the last valid price; "recover_all": every feed does)."""
        d, owner = self.d, self.a.owner
        if event.startswith("recover"):
            for m in range(len(self.feeds)) if event == "recover_all" else [market]:
                if self.feeds[m].reverting:
                    self.must(d.feeds[m], "set_reverting", False, sender=owner)
                    self.feeds[m].reverting = False
                self.set_price(m, self.price(m))
                assert self.price_reason(m) is None
            return
        feed, f = d.feeds[market], self.feeds[market]
        now = self.now
        lo, hi = self.bounds[market]
        if event == "reverting":
            self.must(feed, "set_reverting", True, sender=owner)
            f.reverting = True
        else:
            answer, updated = {
                "stale": (f.good, now - d.markets[market].heartbeat - 1),
                "future": (f.good, now + FUTURE),
                "zero": (0, now),
                "negative": (-f.good, now),
                "above_max": (hi + 1, now),
                "below_min": (lo - 1, now),
            }[event]
            self.must(feed, "set_round", answer, updated, updated, sender=owner)
            f.answer, f.updated_at = answer, updated
            f.rounds.append((answer, updated))
        assert self.price_reason(market) is not None
        self.note(f"fault:{event}")
        self.dirty.update(self.holders_of(market))
        self.oracles_changed = True

    @rule(
        event=st.sampled_from(FAULTS),
        amount=st.integers(1, 5_000 * 10**6),
        last_market=st.booleans(),
    )
    def called_trader_tops_up_in_outage(self, event, amount, last_market):
        """A crash with an oracle outage: the feed of one market (the first or the last) of a
        trader under a recorded call goes bad, and the trader tops up. The deposit must go
        through (deposits never need a price) and must leave the call in place (the engine
        cannot value the account). Nothing to do when no trader is under a call."""
        d = self.d
        called = [i for i, t in enumerate(self.traders) if d.raw_account(t).deadline]
        if not called:
            return
        positions = d.raw_account(self.traders[called[0]]).positions
        if not positions:
            return
        self.oracle(positions[-1 if last_market else 0][0], event)
        self.deposit(called[0], amount, False)

    # --- keepers ---------------------------------------------------------------

    @rule(k=st.integers(0, 1), i=st.integers(0, N_TRADERS - 1))
    def margin_call(self, k, i):
        d, t, keeper = self.d, self.traders[i], self.keepers[k]
        self.dirty.add(t)
        acct, fault = self.account(t)
        p = d.risk_params()
        sent = self.send(d.engine, "margin_call", t, sender=keeper)
        if fault:
            self.refused(sent, fault)
            self.note("refused:oracle")
            return
        state = self.state(acct, p)
        if state != State.CALLABLE:
            self.refused(sent, "engine: account not callable", state)
            return
        assert sent.ok, sent.reason
        self.note("margin_call")
        if self.paused:
            self.note("paused:margin_call")
        reward = call_reward(acct, p, d.scale)
        self.park(t, acct, keeper, reward)  # parked: nothing moves until the call ends
        raw = d.raw_account(t)
        assert raw.collateral == acct.collateral - reward
        assert raw.deadline == self.now + p.grace_period

    @rule(k=st.integers(0, 1), picks=st.sets(st.integers(0, N_TRADERS - 1), min_size=1))
    def margin_call_many(self, k, picks):
        d, keeper = self.d, self.keepers[k]
        batch = [self.traders[i] for i in sorted(picks)]
        self.dirty.update(batch)
        p = d.risk_params()
        called = []
        for t in batch:
            acct, fault = self.account(t)
            if fault:
                self.note("skipped:oracle")
            elif self.state(acct, p) == State.CALLABLE:
                called.append(t)
                self.park(t, acct, keeper, call_reward(acct, p, d.scale))
        sent = self.must(d.engine, "margin_call_many", batch, sender=keeper)
        assert [e.account for e in sent.of(d.engine, "MarginCall")] == called
        if sent.value is not None:
            assert sent.value == len(called)
        if called:
            self.note("margin_call_many")

    @rule(i=st.integers(0, N_TRADERS - 1))
    def clear_margin_call(self, i):
        d, t = self.d, self.traders[i]
        self.dirty.add(t)
        acct, fault = self.account(t)
        p = d.risk_params()
        sent = self.send(d.engine, "clear_margin_call", t, sender=self.keepers[0])
        if acct.deadline == 0:
            self.refused(sent, "engine: no margin call")
        elif fault:
            self.refused(sent, fault)
            self.note("refused:oracle")
        elif evaluate(acct, d.scale).ratio < p.call_ratio:
            self.refused(sent, "engine: still under-margined")
        else:
            assert sent.ok, sent.reason
            self.note("clear_margin_call")
            assert d.raw_account(t).deadline == 0
            self.pay_parked(t)

    def _expect_liquidation(self, t: str, keeper: str, fund_balance: int, room: dict[int, int]):
        """Plans one account's liquidation; books its flows; returns (plan, fund balance after).

        Pool flows are booked here even in a batch: the batch nets them, the sums agree.
        """
        d = self.d
        acct = self.liq_account(self.account(t)[0])
        p = d.risk_params()
        plan = plan_tranche(acct, p, d.scale, self.now, room)
        if plan is None:
            return None, fund_balance
        plan.unpriced = sum(q.unpriced for q in acct.positions)
        if plan.carried:
            # a shortfall while a leg is unpriced: carried into it, no bad debt (the keeper's
            # minimum reward is paid; the pool takes the collateral less it, or pays the rest)
            self.note("liquidate:carried")
            pool_net = acct.collateral + plan.returned - plan.keeper_reward
            if pool_net >= 0:
                self.move(d.engine.address, d.pool.address, pool_net)
            else:
                self.move(d.pool.address, d.engine.address, -pool_net)
            self.move(d.engine.address, keeper, plan.keeper_reward)
            plan.bad_debt = None
        elif plan.deficit:
            # the deficit includes the keeper's minimum reward: the fund covers what it can,
            # the engine keeps the reward out of the collateral (the pool pays any rest)
            paid = min(plan.deficit, fund_balance)
            fund_balance -= paid
            pool_net = acct.collateral + plan.returned - plan.keeper_reward
            if pool_net >= 0:
                self.move(d.engine.address, d.pool.address, pool_net)
            else:
                self.move(d.pool.address, d.engine.address, -pool_net)
            self.move(d.fund.address, d.pool.address, paid)
            self.move(d.engine.address, keeper, plan.keeper_reward)
            assert plan.keeper_reward == p.min_keeper_reward // d.scale
            plan.bad_debt = (plan.deficit, paid)
        else:
            pool_net = acct.collateral + plan.returned - plan.collateral_after - plan.penalty
            if pool_net >= 0:
                self.move(d.engine.address, d.pool.address, pool_net)
            else:
                self.move(d.pool.address, d.engine.address, -pool_net)
            self.move(d.engine.address, keeper, plan.keeper_reward)
            self.move(d.engine.address, d.fund.address, plan.fund_fee)
            plan.bad_debt = None
        if not plan.full:
            for q, closed in zip(acct.positions, plan.closed_sizes, strict=True):
                room[q.market_id] -= mul_up(abs(closed), q.price)
        # the parked call reward: returned to the collateral below ratio 1 (in the plan's
        # flows above), paid to the caller otherwise
        if plan.returned:
            self.parked[t] = (None, 0)
            self.note("call_reward:returned")
        elif acct.parked_reward:
            self.pay_parked(t)
        plan.ratio_before = evaluate(acct, d.scale).ratio
        return plan, fund_balance

    def _check_after_liquidation(self, t: str, plan) -> None:
        d = self.d
        assert d.raw_account(t).collateral == plan.collateral_after
        if plan.unpriced:
            # the unpriced legs stay open (`check_margin` needs their price)
            self.note("liquidate:unpriced_leg")
            assert len(d.raw_account(t).positions) >= plan.unpriced
            if plan.full:
                assert len(d.raw_account(t).positions) == plan.unpriced
                assert d.raw_account(t).deadline == 0
            return
        after = d.engine.check_margin(t)
        if plan.full:
            assert after.positions == 0 and d.raw_account(t).deadline == 0
            self.note("liquidate:full")
            self.note(f"full:{State(plan.state).name}")
        else:
            self.note("liquidate:tranche")
            self.note(f"tranche:{State(plan.state).name}")
            assert after.ratio == plan.ratio_after
            assert after.equity == plan.equity_after
            assert after.ratio >= plan.ratio_before, "a tranche lowered the account's ratio"
        if self.paused:
            self.note("paused:liquidate")

    def _check_bad_debt(self, plans: list, logs: list) -> None:
        expected = [pl.bad_debt for pl in plans if pl.bad_debt]
        got = [(e.amount, e.paid_by_fund) for e in logs]
        assert got == expected
        for e in logs:
            self.note("bad_debt")
            assert e.socialised == e.amount - e.paid_by_fund
            if e.socialised:
                self.note("bad_debt:socialised")

    @rule(k=st.integers(0, 1), i=st.integers(0, N_TRADERS - 1))
    def liquidate(self, k, i):
        d, t, keeper = self.d, self.traders[i], self.keepers[k]
        self.dirty.add(t)
        self.window_changed = True
        acct, fault = self.account(t)
        acct = self.liq_account(acct)
        p = d.risk_params()
        if self.all_unpriced(acct):
            self.refused(self.send(d.engine, "liquidate", t, sender=keeper), fault)
            self.note("refused:oracle")
            return
        state = self.state(acct, p)
        reason = self.expected_reason(acct, p)
        fund_before = self.held(d.fund.address)
        room = d.window_room(self.now, p)
        plan, _ = self._expect_liquidation(t, keeper, fund_before, room)
        sent = self.send(d.engine, "liquidate", t, sender=keeper)
        if state < State.LIQUIDATABLE:
            self.refused(sent, "engine: account not liquidatable", state)
        assert sent.ok == (plan is not None), (reason, sent.reason)
        if not sent.ok:
            self.refused(sent, REASON[reason])
            self.note("refused:liquidate")
            self.note(f"refused:liquidate:{PlanCode(reason).name}")
            return
        self._check_after_liquidation(t, plan)
        logs = sent.of(d.engine, "BadDebt")
        self._check_bad_debt([plan], logs)
        for e in logs:
            if e.socialised:
                assert e.paid_by_fund == fund_before, "socialised while the fund held tokens"

    @rule(k=st.integers(0, 1), picks=st.sets(st.integers(0, N_TRADERS - 1), min_size=1))
    def liquidate_many(self, k, picks):
        d, keeper = self.d, self.keepers[k]
        batch = [self.traders[i] for i in sorted(picks)]
        self.dirty.update(batch)
        self.window_changed = True
        p = d.risk_params()
        room = d.window_room(self.now, p)
        fund = self.held(d.fund.address)
        plans, fund_seen = [], []
        for t in batch:
            if self.all_unpriced(self.liq_account(self.account(t)[0])):
                self.note("skipped:oracle")
                continue
            before = fund
            plan, fund = self._expect_liquidation(t, keeper, fund, room)
            if plan is not None:
                plans.append((t, plan))
                fund_seen.append(before)
        sent = self.must(d.engine, "liquidate_many", batch, sender=keeper)
        assert [e.account for e in sent.of(d.engine, "Liquidation")] == [t for t, _ in plans]
        if sent.value is not None:
            assert sent.value == len(plans)
        for t, plan in plans:
            self._check_after_liquidation(t, plan)
        logs = sent.of(d.engine, "BadDebt")
        self._check_bad_debt([pl for _, pl in plans], logs)
        debts = [f for (_, pl), f in zip(plans, fund_seen, strict=True) if pl.bad_debt]
        for e, held in zip(logs, debts, strict=True):
            if e.socialised:
                assert e.paid_by_fund == held, "socialised while the fund held tokens"

    @rule()
    def keeper_sweeps(self):
        """A keeper as the bundled bot works: one `check_margins` scan of every account, then
        `margin_call` on those it reports CALLABLE (and priced) and `liquidate` on those at
        LIQUIDATABLE or worse, unpriced legs or not (each checked against the model as a
        single call). The two keepers take turns. (The only rule without arguments:
        Hypothesis sorts it first and draws it most, which keeps tranches common.)"""
        d = self.d
        k = self.checks % 2
        statuses = d.lens.check_margins(self.traders)
        for i, status in enumerate(statuses):
            if status.state == State.CALLABLE and status.priced:
                self.margin_call(k, i)
            elif status.state >= State.LIQUIDATABLE:
                # an unpriced leg too: valued at its worst case, as the bot now does
                self.liquidate(k, i)

    # --- LP, fund ---------------------------------------------------------------

    @rule(
        which=st.integers(0, 1),
        deposit=st.booleans(),
        amount=st.integers(1, 100_000),
        frac=st.integers(1, 20),
        gift=st.integers(0, 3),
    )
    def lp_moves(self, which, deposit, amount, frac, gift):
        """An LP deposits `amount` whole tokens, or redeems `frac`% of what it may; one
        deposit in four (`gift == 0`) is the donor's, naming the LP as receiver (the lock
        grief's move: it may lock only the shares it gives).

        Shares are priced by the model (snekmate's ERC-4626 with a decimals offset of 6:
        shares = assets * (supply + 1e6) // (assets held + 1), assets back the same way, both
        rounded down), and the deposit cooldown is modelled: a deposit locks only the shares
        it mints, in the LP's one locked batch (an expired batch counts as empty), whose time
        left becomes floor((batch * left + minted * cooldown) / (batch + minted)), never less
        than `left`; a redeem of more than the LP's unlocked shares is refused with
        `pool: shares locked`."""
        d, lp = self.d, self.a.lps[which]
        supply, held = int(d.pool.totalSupply()), int(d.pool.totalAssets())
        if deposit:
            amount *= d.unit
            payer = self.a.donor if gift == 0 else lp
            self.must(d.token, "mint", payer, amount, sender=payer)
            self.expected[payer] += amount
            if payer != lp:
                self.must(d.token, "approve", d.pool.address, amount, sender=payer)
            sent = self.must(d.pool, "deposit", amount, lp, sender=payer)
            (ev,) = sent.of(d.pool, "Deposit")
            minted = amount * (supply + 10**6) // (held + 1)
            assert ev.shares == minted, (ev.shares, minted)
            self.lp_shares[lp] += minted
            if self.pool_cooldown:  # a cooldown of 0 sets no lock at all
                batch = self.lp_locked(lp)
                left = self.unlock[lp] - self.now if batch else 0
                mean = (batch * left + minted * self.pool_cooldown) // (batch + minted)
                self.unlock[lp] = self.now + max(mean, left)
                self.locked[lp] = batch + minted
            self.move(payer, d.pool.address, amount)
            self.note(f"lp{which}:deposit" if payer == lp else f"lp{which}:gift")
            return
        batch = self.lp_locked(lp)
        if batch and self.lp_shares[lp] - batch < max(self.lp_shares[lp] * frac // 100, 1):
            shares = max(self.lp_shares[lp] * frac // 100, 1)
            sent = self.send(d.pool, "redeem", shares, lp, lp, sender=lp)
            self.refused(sent, "pool: shares locked", lp, self.unlock[lp])
            self.note("refused:lp_locked")
            return
        shares = int(d.pool.maxRedeem(lp)) * frac // 100
        if shares == 0:
            return
        sent = self.must(d.pool, "redeem", shares, lp, lp, sender=lp)
        (ev,) = sent.of(d.pool, "Withdraw")
        assert ev.shares == shares
        assert ev.assets == shares * (held + 1) // (supply + 10**6), "redeem mispriced"
        if sent.value is not None:
            assert sent.value == ev.assets
        self.lp_shares[lp] -= shares
        self.move(d.pool.address, lp, ev.assets)
        self.note(f"lp{which}:redeem")

    @rule(cooldown=st.sampled_from([0, 60, 900]), by_stranger=st.booleans())
    def set_cooldown(self, cooldown, by_stranger):
        """The pool's owner changes the deposit cooldown (locks already set keep their time);
        nobody else may."""
        d = self.d
        if by_stranger:
            sent = self.send(d.pool, "set_cooldown", cooldown, sender=self.a.guardian)
            self.refused(sent, "ownable: caller is not the owner")
            return
        sent = self.must(d.pool, "set_cooldown", cooldown, sender=self.a.owner)
        (ev,) = sent.of(d.pool, "CooldownSet")
        assert (ev.old_cooldown, ev.new_cooldown) == (self.pool_cooldown, cooldown)
        self.pool_cooldown = cooldown
        assert int(d.pool.cooldown()) == cooldown

    @rule(amount=st.integers(1, 2_000))
    def donate(self, amount):
        d = self.d
        self.must(d.fund, "donate", amount * d.unit, sender=self.a.donor)
        self.move(self.a.donor, d.fund.address, amount * d.unit)

    # --- owner and guardian ---------------------------------------------------------------

    @rule(
        call=st.integers(105, 200),
        critical=st.integers(10, 100),
        penalty=st.integers(0, 99),
        close=st.integers(MIN_CLOSE_FACTOR // 10**16, 100),
        interval=st.sampled_from([1, 60, 600]),
        share=st.integers(0, 100),
        rewards=st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(0, 20)),
        window=st.sampled_from([60, 300, 3_600]),
        dust=st.integers(0, 100),
    )
    def set_risk_params(
        self, call, critical, penalty, close, interval, share, rewards, window, dust
    ):
        d = self.d
        lo, call_reward, hi = sorted(rewards)
        min_mmr = min(int(d.config(m).mmr) for m in range(3))
        critical_wad = critical * 10**16
        max_penalty = (min_mmr * critical_wad - 1) // WAD
        params = RiskParams(
            call_ratio=call * 10**16,
            critical_ratio=critical_wad,
            grace_period=d.risk_params().grace_period,
            close_factor=close * 10**16,
            tranche_interval=interval,
            liquidation_penalty=max_penalty * penalty // 100,
            keeper_share=share * 10**16,
            min_keeper_reward=lo * WAD,
            max_keeper_reward=hi * WAD,
            call_reward=call_reward * WAD,
            liquidation_window=window,
            min_position_notional=dust * WAD,
        )
        self.must(d.engine, "set_risk_params", params.as_tuple(), sender=self.a.owner)
        d.forget()
        self.dirty.update(self.traders)
        assert d.risk_params() == params

    def _set_market(self, market: int, window_cap: int, active: bool, sender: str):
        d = self.d
        cfg = d.config(market)
        return self.send(
            d.engine,
            "set_market",
            market,
            cfg.oracle,
            int(cfg.imr),
            int(cfg.mmr),
            int(cfg.fee),
            window_cap,
            active,
            sender=sender,
        )

    @rule(
        market=st.integers(0, 2),
        # wad of notional: 10,000 wei leaves room only for slivers (a few wei of size)
        cap=st.sampled_from([None, 10_000, 2_000 * WAD, 20_000 * WAD, 10**12 * WAD]),
        inactive=st.sampled_from([True, False]),
        by_guardian=st.booleans(),
    )
    def set_market(self, market, cap, inactive, by_guardian):
        """The owner (never the guardian) changes a market's window cap (wad of notional;
        None keeps it) and takes it out of service or back: an inactive market
        refuses new exposure; its positions are valued, reduced, called and liquidated as
        before."""
        d = self.d
        active = not inactive
        cap = int(d.config(market).window_cap) if cap is None else cap
        if by_guardian:
            sent = self._set_market(market, cap, active, self.a.guardian)
            self.refused(sent, "ownable: caller is not the owner")
            return
        sent = self._set_market(market, cap, active, self.a.owner)
        assert sent.ok, sent.reason
        (ev,) = sent.of(d.engine, "MarketSet")
        assert (ev.window_cap, ev.active) == (cap, active)
        self.active[market] = active
        d.forget()
        assert (int(d.config(market).window_cap), bool(d.config(market).active)) == (cap, active)
        self.window_changed = True

    @rule(i=st.integers(0, N_TRADERS - 1), frac=st.integers(1, 130), close=st.booleans())
    def market_wind_down(self, i, frac, close):
        """A delisting: the owner takes the market of a trader's largest position out of
        service; the trader can still reduce or close that position, and cannot add to it."""
        acct, _ = self.account(self.traders[i])
        if not acct.positions:
            return
        market = max(acct.positions, key=lambda q: q.notional).market_id
        if self.active[market]:
            self.set_market(market, None, True, False)
        self.trade(i, market, "close" if close else "reduce", frac)
        self.trade(i, market, "open", frac)

    @rule(
        paused=st.sampled_from([True, False]), by=st.sampled_from(["guardian", "owner", "keeper"])
    )
    def set_paused(self, paused, by):
        """The guardian or the owner pause and resume new exposure; nobody else can."""
        d = self.d
        sender = {"guardian": self.a.guardian, "owner": self.a.owner, "keeper": self.keepers[0]}
        sent = self.send(d.engine, "set_paused", paused, sender=sender[by])
        if by == "keeper":
            self.refused(sent, "engine: only guardian or owner")
            self.note("refused:pause_by_stranger")
        else:
            assert sent.ok, sent.reason
            (ev,) = sent.of(d.engine, "PauseSet")
            assert (ev.paused, ev.caller) == (paused, sender[by])
            self.paused = paused
        assert bool(d.engine.paused()) == self.paused

    # --- invariants ---------------------------------------------------------------

    @invariant()
    def count_steps(self):
        """Runs once after every step (and not before the seeding step): the step counter."""
        self.checks += 1

    @invariant()
    def balances_are_what_moved(self):
        """Checked after every step that sent a transaction (only transactions move tokens)."""
        d = self.d
        if d.sent == self.sent_seen:
            return
        self.sent_seen = d.sent
        for h in self.holders:
            assert self.held(h) == self.expected[h], h
        ledger = sum(d.raw_account(t).collateral for t in self.traders)
        # the parked call rewards, as the model predicted them; one only under a call
        for t in self.traders:
            assert self._parked_on_chain(t) == self.parked[t], (t, self.parked[t])
            assert self.parked[t][1] == 0 or d.raw_account(t).deadline != 0, t
        ledger += sum(amount for _, amount in self.parked.values())
        accrued = sum(int(d.engine.claimable(h)) for h in self.owed_to)
        assert d.balance(d.engine.address) == ledger + accrued + self.escrowed()
        for t in self.traders:  # the book's pending orders and escrow are the model's
            assert sorted(int(x) for x in d.book.pending_orders(t)) == [
                o.id for o in self.pending(t)
            ]
            assert int(d.book.escrowed_of(t)) == sum(o.fee for o in self.pending(t))
        shares = [int(d.pool.balanceOf(lp)) for lp in self.a.lps]
        assert sum(shares) == int(d.pool.totalSupply())  # the LPs own every share
        assert shares == [self.lp_shares[lp] for lp in self.a.lps]  # as the model priced them
        assert [int(d.pool.unlock_time(lp)) for lp in self.a.lps] == [
            self.unlock[lp] for lp in self.a.lps
        ]
        assert [int(d.pool.locked_shares(lp)) for lp in self.a.lps] == [
            self.lp_locked(lp) for lp in self.a.lps
        ]

    @invariant()
    def oracles_agree_with_model(self):
        """Every adapter is valid exactly when the model says, at the model's price, and
        names the model's reason otherwise."""
        if not self.oracles_changed:
            return
        self.oracles_changed = False
        for m, oracle in enumerate(self.d.oracles):
            reason = self.price_reason(m)
            valid_price, valid = oracle.try_price()
            assert bool(valid) == (reason is None), (m, reason)
            if reason is None:
                assert valid_price == self.price(m)
            else:
                assert oracle.reason() == reason

    @invariant()
    def views_equal_reference_math(self):
        """The views of every account whose inputs changed in this step (its own record, a
        price it needs, the time, the risk parameters, a window): `check_margins` (the
        keepers' view) for all of them; `preview_liquidation` for those that are not HEALTHY;
        both single views, which must revert with the adapter's reason, for those with an
        invalid price. To save time, `check_margin` (the same `_status` as `check_margins`)
        for one of them every third step with changes, and `preview_liquidation` of a
        HEALTHY account every fourth."""
        d = self.d
        accounts = {t: self.account(t) for t in self.traders}
        assert d.engine.open_interest() == sum(
            abs(q.cost) for a, _ in accounts.values() for q in a.positions
        )
        p = d.risk_params()
        now = self.now
        if self.window_changed:
            for t, (acct, _fault) in accounts.items():
                if self.state(self.liq_account(acct), p) == State.LIQUIDATABLE:
                    self.dirty.add(t)
        self.window_changed = False
        dirty = [t for t in self.traders if t in self.dirty]
        self.dirty = set()
        if not dirty:
            return
        room = d.window_room(now, p)
        statuses = d.lens.check_margins(dirty)
        self.turn += 1
        n = self.turn
        single = dirty[n // 3 % len(dirty)] if n % 3 == 0 else None
        healthy_preview = dirty[n // 4 % len(dirty)] if n % 4 == 0 else None
        for t, got in zip(dirty, statuses, strict=True):
            acct, fault = accounts[t]
            assert str(got.account).lower() == str(t).lower()
            assert got.collateral == acct.collateral * d.scale
            assert got.positions == len(acct.positions)
            assert bool(got.priced) == (fault is None), (fault, got.priced)
            if fault:
                self.note("state:UNPRICED")
                ok, res = d.try_call(d.engine, "check_margin", t)
                assert not ok and res == fault, (fault, res)
                acct = self.liq_account(acct)
                if self.all_unpriced(acct):
                    assert (got.state, got.ratio) == (State.HEALTHY, MAX_UINT)
                    ok, res = d.try_call(d.lens, "preview_liquidation", t)
                    assert not ok and res == fault, (fault, res)
                    continue
                # a priced leg: valued (and previewed) as `liquidate` values it
                self.note("state:UNPRICED_LEG")
            v = evaluate(acct, d.scale)
            state = classify(acct, v, p, now, d.scale)
            if acct.positions:
                assert (got.equity, got.maintenance, got.initial) == (
                    v.equity,
                    v.maintenance,
                    v.initial,
                )
            assert got.ratio == ratio(v.equity, v.maintenance)
            assert got.state == state
            live = acct.deadline != 0 and now < acct.deadline + p.grace_period
            if live and state == State.CALLABLE:  # the call cleared itself (a recovery)
                self.note("call:cleared_itself")
                live = False
            assert got.call_deadline == (acct.deadline if live else 0)
            next_tranche = acct.last_tranche + p.tranche_interval if acct.last_tranche else 0
            assert got.next_tranche_time == next_tranche
            self.note(f"state:{State(state).name}")
            if t == single and not fault:
                assert tuple(d.engine.check_margin(t)) == tuple(got)
            if state != State.HEALTHY or t == healthy_preview:
                self._check_preview(t, acct, p, room)

    @invariant()
    def no_account_stops_its_own_liquidation(self):
        """An account CRITICAL or BANKRUPT at its liquidation value (an unpriced leg at its
        worst case) with a priced leg to close is liquidatable: no leg, stale or not, and no
        window or interval shields it (checked after oracle or time changes)."""
        if not self.oracles_changed and not self.dirty:
            return
        p = self.d.risk_params()
        for t in self.traders:
            acct = self.liq_account(self.account(t)[0])
            if not acct.positions or self.all_unpriced(acct):
                continue
            if self.state(acct, p) < State.CRITICAL:
                continue
            self.note("shield:checked")
            preview = self.d.lens.preview_liquidation(t)
            assert preview.liquidatable, (t, preview.reason)
            assert plan_tranche(acct, p, self.d.scale, self.now, {}) is not None

    def _check_preview(self, t: str, acct: Account, p: RiskParams, room: dict[int, int]):
        preview = self.d.lens.preview_liquidation(t)
        plan = plan_tranche(acct, p, self.d.scale, self.now, room)
        assert preview.liquidatable == (plan is not None)
        if plan is None:
            assert preview.reason == self.expected_reason(acct, p)
            return
        assert preview.state == plan.state
        assert preview.full_close == plan.full
        assert preview.fraction == plan.fraction
        assert list(preview.market_ids) == [q.market_id for q in acct.positions]
        assert list(preview.closed_sizes) == plan.closed_sizes
        assert preview.closed_notional == plan.closed_notional
        assert (preview.penalty, preview.keeper_reward, preview.fund_fee) == (
            plan.penalty,
            plan.keeper_reward,
            plan.fund_fee,
        )
        assert preview.deficit == plan.deficit
        assert (preview.equity_after, preview.ratio_after) == (
            plan.equity_after,
            plan.ratio_after,
        )
