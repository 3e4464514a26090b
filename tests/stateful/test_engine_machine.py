"""Stateful fuzzing of the whole system in titanoboa: traders, an LP, keepers, a donor.

Every step checks, against `margincall.math` (the reference the SDK and bots use):

- token conservation: the engine holds exactly the sum of its collateral ledgers, and every
  other balance (pool, fund, traders, keepers, LP, donor) equals what the model says moved;
- `check_margin` and `preview_liquidation` equal `evaluate`, `classify` and `plan_tranche`;
- each action succeeds exactly when the reference says it may, with the predicted effect:
  HEALTHY, CALLABLE and CALLED accounts cannot be liquidated, only CALLABLE ones can be called,
  CALLED accounts can neither withdraw nor add exposure, no withdrawal leaves equity under
  initial margin;
- a tranche that does not close the account never lowers its ratio;
- the fund never pays more than it holds; `BadDebt.socialised > 0` only when it paid it all.

Profiles: the default (quick) one runs inside `make test`; `MARGINCALL_FUZZ=deep` (used by
`make fuzz`) runs the deep campaign.
"""

from __future__ import annotations

import os
import re
import sys

import boa
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from margincall.constants import WAD, PlanCode, State
from margincall.math import (
    Account,
    Position,
    RiskParams,
    classify,
    div_ceil,
    div_floor,
    evaluate,
    mul_up,
    plan_tranche,
    ratio,
)
from tests.stateful.boa_system import BoaSystem, deploy_boa_system

settings.register_profile(
    "quick",
    max_examples=20,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
settings.register_profile(
    "deep",
    max_examples=1_000,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
PROFILE = os.environ.get("MARGINCALL_FUZZ", "quick")
SETTINGS = settings.get_profile(PROFILE)
if os.environ.get("MARGINCALL_FUZZ_EXAMPLES"):  # one-off campaigns of another size
    SETTINGS = settings(SETTINGS, max_examples=int(os.environ["MARGINCALL_FUZZ_EXAMPLES"]))

N_TRADERS = 3
OWNER = boa.env.generate_address("owner")
GUARDIAN = boa.env.generate_address("guardian")
LP = boa.env.generate_address("lp")
KEEPERS = [boa.env.generate_address("keeper"), boa.env.generate_address("rival_keeper")]
DONOR = boa.env.generate_address("donor")
TRADERS = [boa.env.generate_address(f"trader{i}") for i in range(N_TRADERS)]

LP_LIQUIDITY = 10_000_000  # whole tokens
FUND_SEED = 50  # whole tokens: small, so bad debt is sometimes socialised
PRICE_BAND = (4, 3)  # prices stay within [start / 4, start * 3]
MIN_CLOSE_FACTOR = 5 * 10**16
REVERT = re.compile(r"Revert\('(.*)'\)")

# Under pytest, titanoboa's plugin runs every Hypothesis example inside `boa.env.anchor()`
# (and every fixture and test in one of its own); without it the machine anchors itself.
BOA_PLUGIN = "boa.test.plugin" in sys.modules


def deploy_funded_system(decimals: int) -> BoaSystem:
    """A system with LP liquidity, a small fund and traders holding approved tokens."""
    s = deploy_boa_system(OWNER, GUARDIAN, decimals)
    s.mint_and_approve(LP, LP_LIQUIDITY * s.unit, s.pool.address)
    s.pool.deposit(LP_LIQUIDITY * s.unit, LP, sender=LP)
    s.mint_and_approve(DONOR, 10**9 * s.unit, s.fund.address)
    s.fund.donate(FUND_SEED * s.unit, sender=DONOR)
    for t in TRADERS:
        s.mint_and_approve(t, 10**9 * s.unit, s.engine.address)
    return s


def attempt(fn, *args, **kwargs):
    """(True, result) or (False, revert reason)."""
    try:
        return True, fn(*args, **kwargs)
    except boa.BoaError as e:
        reason = repr(e.stack_trace.last_frame.pretty_vm_reason)
        m = REVERT.search(reason)
        return False, (m.group(1) if m else reason).strip("'\"")


def events(contract, name: str) -> list:
    return [e for e in contract.get_logs() if type(e).__name__ == name]


class EngineMachine(RuleBasedStateMachine):
    system: BoaSystem  # set on a subclass per deployed system

    def __init__(self):
        super().__init__()
        self.s = s = self.system
        self._anchor = None if BOA_PLUGIN else boa.env.anchor()
        if self._anchor is not None:
            self._anchor.__enter__()
        self.holders = [s.engine.address, s.pool.address, s.fund.address, LP, DONOR]
        self.holders += KEEPERS + TRADERS
        self.expected = {h: s.token.balanceOf(h) for h in self.holders}
        self.stats: dict[str, int] = {}
        s.forget()
        # accounts whose views must be checked against the reference after this step
        self.dirty = set(TRADERS)

    def teardown(self):
        if self._anchor is not None:
            self._anchor.__exit__(None, None, None)
        self.s.forget()

    # --- helpers ---------------------------------------------------------------

    @property
    def now(self) -> int:
        return boa.env.evm.patch.timestamp

    def move(self, src: str, dst: str, amount: int) -> None:
        assert amount >= 0
        self.expected[src] -= amount
        self.expected[dst] += amount

    def note(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1

    def ref(self, who: str) -> tuple[Account, RiskParams]:
        return self.s.reference_account(who), self.s.risk_params()

    def expected_reason(self, acct: Account, p: RiskParams) -> int:
        """Why `liquidate` would revert (PlanCode), or OK."""
        v = evaluate(acct, self.s.scale)
        state = classify(acct, v, p, self.now, self.s.scale)
        if state < State.LIQUIDATABLE:
            return PlanCode.NOT_LIQUIDATABLE
        room = self.s.window_room(self.now, p)
        if plan_tranche(acct, p, self.s.scale, self.now, room) is not None:
            return PlanCode.OK
        if state < State.CRITICAL and acct.last_tranche:
            if self.now < acct.last_tranche + p.tranche_interval:
                return PlanCode.TOO_SOON
        return PlanCode.WINDOW_FULL

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
        for t, a in zip(TRADERS, amounts, strict=True):
            if a:
                self.s.engine.deposit(a * self.s.unit, sender=t)
                self.move(t, self.s.engine.address, a * self.s.unit)
        for i, (market, frac) in enumerate(opens):
            self.trade(i, market, "open", frac)

    # --- traders ---------------------------------------------------------------

    @rule(i=st.integers(0, N_TRADERS - 1), amount=st.integers(1, 5_000 * 10**6))
    def deposit(self, i, amount):
        s, t = self.s, TRADERS[i]
        self.dirty.add(t)
        amount = amount * s.unit // 10**6 or 1
        acct, p = self.ref(t)
        cured = Account(acct.collateral + amount, acct.positions)
        will_clear = acct.deadline != 0 and evaluate(cured, s.scale).ratio >= p.call_ratio
        s.engine.deposit(amount, sender=t)
        assert bool(events(s.engine, "MarginCallCleared")) == will_clear
        self.move(t, s.engine.address, amount)
        deadline = s.engine.account_info(t)[2]
        assert deadline == (0 if will_clear else acct.deadline)

    @rule(i=st.integers(0, N_TRADERS - 1), frac=st.integers(1, 100), beyond=st.integers(0, 3))
    def withdraw(self, i, frac, beyond):
        s, t = self.s, TRADERS[i]
        self.dirty.add(t)
        acct, p = self.ref(t)
        v = evaluate(acct, s.scale)
        state = classify(acct, v, p, self.now, s.scale)
        blocked = bool(acct.positions) and acct.deadline != 0 and v.ratio < p.call_ratio
        if not acct.positions:
            allowed = acct.collateral
        elif blocked:
            allowed = 0
        else:
            allowed = max(0, min(acct.collateral, (v.equity - v.initial) // s.scale))
        if beyond == 0:
            if allowed == 0:
                return
            amount = max(1, allowed * frac // 100)
        elif beyond == 1:
            amount = acct.collateral + frac
        else:
            amount = allowed + frac
        ok, res = attempt(s.engine.withdraw, amount, sender=t)
        if amount > acct.collateral:
            assert not ok and res == "engine: amount exceeds collateral", res
        elif blocked:
            assert not ok and res == "engine: under margin call", res
        elif amount > allowed:
            assert not ok and res == "engine: insufficient margin", res
        else:
            assert ok, res
        if state == State.CALLED:
            assert not ok, "a CALLED account withdrew"
        if ok:
            self.note("withdraw")
            self.move(s.engine.address, t, amount)
            st_ = s.engine.check_margin(t)
            if st_.positions:
                assert st_.equity >= st_.initial, "withdrawal left equity under initial margin"

    def _predict_trade(self, acct: Account, p: RiskParams, market: int, delta: int):
        """The engine's `_trade`, in Python: (reason or None, new size, cost, collateral)."""
        s = self.s
        price = s.price(market)
        cfg = s.config(market)
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
        fee = div_ceil(mul_up(mul_up(abs(delta), price), cfg.fee), s.scale)
        realized_tok = div_floor(realized, s.scale)
        balance = acct.collateral + realized_tok - fee
        if balance < 0:
            return "engine: loss exceeds collateral", None
        if nsize == 0:
            ncost = 0
        positions = [q for q in acct.positions if q.market_id != market]
        if nsize:
            positions.append(Position(market, nsize, ncost, price, cfg.mmr, cfg.imr))
        positions.sort(key=lambda q: q.market_id)
        after = Account(balance, tuple(positions), acct.deadline)
        deadline = acct.deadline
        if increases or deadline:
            v = evaluate(after, s.scale)
            if deadline and v.ratio >= p.call_ratio:
                deadline = 0
            elif deadline and increases:
                return "engine: under margin call", None
            if increases and v.equity < v.initial:
                return "engine: insufficient margin", None
        pool_pays = realized_tok - fee
        if pool_pays > s.token.balanceOf(s.pool.address):
            return "pool: insufficient liquidity", None
        return None, (nsize, ncost, balance, deadline, increases)

    @rule(
        i=st.integers(0, N_TRADERS - 1),
        market=st.integers(0, 2),
        kind=st.sampled_from(["open", "reduce", "flip", "close"]),
        frac=st.integers(1, 130),
    )
    def trade(self, i, market, kind, frac):
        s, t = self.s, TRADERS[i]
        self.dirty.add(t)
        acct, p = self.ref(t)
        price = s.price(market)
        old = next((q for q in acct.positions if q.market_id == market), None)
        size = old.size if old else 0
        if kind == "open" or size == 0:
            v = evaluate(acct, s.scale)
            imr = s.config(market).imr
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
        state = classify(acct, evaluate(acct, s.scale), p, self.now, s.scale)
        reason, outcome = self._predict_trade(acct, p, market, delta)
        bound = price * 2 if delta > 0 else price // 2
        ok, res = attempt(s.engine.trade, market, delta, bound, sender=t)
        logs = events(s.engine, "PositionChanged")
        assert ok == (reason is None), (reason, res)
        if not ok:
            assert res == reason, (reason, res)
            return
        nsize, ncost, collateral, deadline, increases = outcome
        if increases:
            assert state != State.CALLED, "a CALLED account added exposure"
        self.note("trade:" + kind)
        assert s.engine.position(t, market) == (nsize, ncost)
        info = s.engine.account_info(t)
        assert (info[0], info[2]) == (collateral, deadline)
        # the pool is the counterparty of the collateral change
        diff = collateral - acct.collateral
        if diff >= 0:
            self.move(s.pool.address, s.engine.address, diff)
        else:
            self.move(s.engine.address, s.pool.address, -diff)
        (ev,) = logs
        assert ev.realized_pnl - ev.fee == diff

    # --- market ---------------------------------------------------------------

    @rule(
        market=st.integers(0, 2),
        move=st.one_of(
            st.integers(-800, 800),  # small moves, in 1e-4
            st.sampled_from([-5_000, -3_000, -2_000, 2_000, 5_000, 10_000]),  # jumps
        ),
    )
    def price_move(self, market, move):
        s = self.s
        spec = s.markets[market]
        start = int(spec.price * WAD)
        new = s.price(market) * (10_000 + move) // 10_000
        new = min(max(new, start // PRICE_BAND[0]), start * PRICE_BAND[1])
        s.set_price(market, new)
        self.dirty.update(TRADERS)

    @rule(i=st.integers(0, N_TRADERS - 1), move=st.integers(50, 1_500))
    def adverse_move(self, i, move):
        """Moves a price against a trader's largest position (0.5% to 15%): walks accounts
        down through CALLABLE, LIQUIDATABLE, CRITICAL and BANKRUPT in steps."""
        positions = self.s.reference_account(TRADERS[i]).positions
        if not positions:
            return
        q = max(positions, key=lambda q: q.notional)
        self.price_move(q.market_id, -move if q.size > 0 else move)

    @rule(seconds=st.sampled_from([1, 30, 61, 299, 301, 1_800, 3_601, 7_300]))
    def time_passes(self, seconds):
        boa.env.time_travel(seconds=seconds)
        self.dirty.update(TRADERS)

    # --- keepers ---------------------------------------------------------------

    @rule(k=st.integers(0, 1), i=st.integers(0, N_TRADERS - 1))
    def margin_call(self, k, i):
        s, t, keeper = self.s, TRADERS[i], KEEPERS[k]
        self.dirty.add(t)
        acct, p = self.ref(t)
        state = classify(acct, evaluate(acct, s.scale), p, self.now, s.scale)
        ok, res = attempt(s.engine.margin_call, t, sender=keeper)
        if state != State.CALLABLE:
            assert not ok and res == "engine: account not callable", (state, res)
            return
        assert ok, res
        self.note("margin_call")
        reward = min(p.call_reward // s.scale, acct.collateral)
        self.move(s.engine.address, keeper, reward)
        info = s.engine.account_info(t)
        assert info[0] == acct.collateral - reward
        assert info[2] == self.now + p.grace_period

    @rule(k=st.integers(0, 1), picks=st.sets(st.integers(0, N_TRADERS - 1), min_size=1))
    def margin_call_many(self, k, picks):
        s, keeper = self.s, KEEPERS[k]
        batch = [TRADERS[i] for i in sorted(picks)]
        self.dirty.update(batch)
        expected, total = 0, 0
        for t in batch:
            acct, p = self.ref(t)
            if classify(acct, evaluate(acct, s.scale), p, self.now, s.scale) == State.CALLABLE:
                expected += 1
                total += min(p.call_reward // s.scale, acct.collateral)
        count = s.engine.margin_call_many(batch, sender=keeper)
        assert count == expected
        if count:
            self.note("margin_call_many")
        self.move(s.engine.address, keeper, total)

    @rule(i=st.integers(0, N_TRADERS - 1))
    def clear_margin_call(self, i):
        s, t = self.s, TRADERS[i]
        self.dirty.add(t)
        acct, p = self.ref(t)
        ok, res = attempt(s.engine.clear_margin_call, t, sender=KEEPERS[0])
        if acct.deadline == 0:
            assert not ok and res == "engine: no margin call", res
        elif evaluate(acct, s.scale).ratio < p.call_ratio:
            assert not ok and res == "engine: still under-margined", res
        else:
            assert ok, res
            self.note("clear_margin_call")
            assert s.engine.account_info(t)[2] == 0

    def _expect_liquidation(self, t: str, keeper: str, fund_balance: int, room: dict[int, int]):
        """Plans one account's liquidation; books its flows; returns (plan, fund balance after).

        Pool flows are booked here even in a batch: the batch nets them, the sums agree.
        """
        s = self.s
        acct, p = self.ref(t)
        plan = plan_tranche(acct, p, s.scale, self.now, room)
        if plan is None:
            return None, fund_balance
        if plan.deficit:
            paid = min(plan.deficit, fund_balance)
            fund_balance -= paid
            reward = min(p.min_keeper_reward // s.scale, fund_balance)
            fund_balance -= reward
            self.move(s.engine.address, s.pool.address, acct.collateral)
            self.move(s.fund.address, s.pool.address, paid)
            self.move(s.fund.address, keeper, reward)
            plan.bad_debt = (plan.deficit, paid)
        else:
            pool_net = acct.collateral - plan.collateral_after - plan.penalty
            if pool_net >= 0:
                self.move(s.engine.address, s.pool.address, pool_net)
            else:
                self.move(s.pool.address, s.engine.address, -pool_net)
            self.move(s.engine.address, keeper, plan.keeper_reward)
            self.move(s.engine.address, s.fund.address, plan.fund_fee)
            plan.bad_debt = None
        if not plan.full:
            for q, closed in zip(acct.positions, plan.closed_sizes, strict=True):
                room[q.market_id] -= mul_up(abs(closed), q.price)
        plan.ratio_before = evaluate(acct, s.scale).ratio
        return plan, fund_balance

    def _check_after_liquidation(self, t: str, plan) -> None:
        s = self.s
        after = s.engine.check_margin(t)
        info = s.engine.account_info(t)
        assert info[0] == plan.collateral_after
        if plan.full:
            assert after.positions == 0 and info[2] == 0
            self.note("liquidate:full")
        else:
            self.note("liquidate:tranche")
            assert after.ratio == plan.ratio_after
            assert after.equity == plan.equity_after
            assert after.ratio >= plan.ratio_before, "a tranche lowered the account's ratio"

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
        s, t, keeper = self.s, TRADERS[i], KEEPERS[k]
        self.dirty.update(TRADERS)
        acct, p = self.ref(t)
        state = classify(acct, evaluate(acct, s.scale), p, self.now, s.scale)
        reason = self.expected_reason(acct, p)
        fund_before = s.token.balanceOf(s.fund.address)
        room = s.window_room(self.now, p)
        plan, fund_after = self._expect_liquidation(t, keeper, fund_before, room)
        ok, res = attempt(s.engine.liquidate, t, sender=keeper)
        logs = events(s.engine, "BadDebt") if ok else []
        if state < State.LIQUIDATABLE:
            assert not ok and res == "engine: account not liquidatable", (state, res)
        assert ok == (plan is not None), (reason, res)
        if not ok:
            assert (
                res
                == {
                    PlanCode.NOT_LIQUIDATABLE: "engine: account not liquidatable",
                    PlanCode.TOO_SOON: "engine: tranche interval not elapsed",
                    PlanCode.WINDOW_FULL: "engine: liquidation window cap reached",
                }[reason]
            ), res
            return
        self._check_after_liquidation(t, plan)
        self._check_bad_debt([plan], logs)
        for e in logs:
            if e.socialised:
                assert e.paid_by_fund == fund_before, "socialised while the fund held tokens"

    @rule(k=st.integers(0, 1), picks=st.sets(st.integers(0, N_TRADERS - 1), min_size=1))
    def liquidate_many(self, k, picks):
        s, keeper = self.s, KEEPERS[k]
        batch = [TRADERS[i] for i in sorted(picks)]
        self.dirty.update(TRADERS)
        p = s.risk_params()
        room = s.window_room(self.now, p)
        fund = s.token.balanceOf(s.fund.address)
        plans, fund_seen = [], []
        for t in batch:
            before = fund
            plan, fund = self._expect_liquidation(t, keeper, fund, room)
            if plan is not None:
                plans.append((t, plan))
                fund_seen.append(before)
        count = s.engine.liquidate_many(batch, sender=keeper)
        logs = events(s.engine, "BadDebt")
        assert count == len(plans)
        for t, plan in plans:
            self._check_after_liquidation(t, plan)
        self._check_bad_debt([pl for _, pl in plans], logs)
        debts = [f for (_, pl), f in zip(plans, fund_seen, strict=True) if pl.bad_debt]
        for e, held in zip(logs, debts, strict=True):
            if e.socialised:
                assert e.paid_by_fund == held, "socialised while the fund held tokens"

    def _worst(self) -> int:
        """The trader with the lowest ratio (keepers scan for these first)."""
        s = self.s
        ratios = [evaluate(s.reference_account(t), s.scale).ratio for t in TRADERS]
        return ratios.index(min(ratios))

    @rule(k=st.integers(0, 1))
    def keeper_calls_worst(self, k):
        self.margin_call(k, self._worst())

    @rule(k=st.integers(0, 1))
    def keeper_liquidates_worst(self, k):
        self.liquidate(k, self._worst())

    # --- LP, fund, owner ---------------------------------------------------------------

    @rule(amount=st.integers(1, 100_000))
    def lp_deposit(self, amount):
        s = self.s
        amount *= s.unit
        s.token.mint(LP, amount, sender=LP)
        self.expected[LP] += amount
        s.pool.deposit(amount, LP, sender=LP)
        self.move(LP, s.pool.address, amount)

    @rule(frac=st.integers(1, 20))
    def lp_redeem(self, frac):
        s = self.s
        shares = s.pool.maxRedeem(LP) * frac // 100
        if shares == 0:
            return
        assets = s.pool.redeem(shares, LP, LP, sender=LP)
        self.move(s.pool.address, LP, assets)

    @rule(amount=st.integers(1, 2_000))
    def donate(self, amount):
        s = self.s
        s.fund.donate(amount * s.unit, sender=DONOR)
        self.move(DONOR, s.fund.address, amount * s.unit)

    @rule(
        call=st.integers(105, 200),
        critical=st.integers(10, 95),
        penalty=st.integers(0, 99),
        close=st.integers(MIN_CLOSE_FACTOR // 10**16, 100),
        interval=st.sampled_from([0, 60, 600]),
        share=st.integers(0, 100),
        rewards=st.tuples(st.integers(0, 20), st.integers(0, 20), st.integers(0, 20)),
        window=st.sampled_from([60, 300, 3_600]),
        dust=st.integers(0, 100),
    )
    def set_risk_params(
        self, call, critical, penalty, close, interval, share, rewards, window, dust
    ):
        s = self.s
        lo, call_reward, hi = sorted(rewards)
        min_mmr = min(s.config(m).mmr for m in range(3))
        critical_wad = critical * 10**16
        max_penalty = (min_mmr * critical_wad - 1) // WAD
        params = RiskParams(
            call_ratio=call * 10**16,
            critical_ratio=critical_wad,
            grace_period=s.risk_params().grace_period,
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
        s.engine.set_risk_params(params.as_tuple(), sender=OWNER)
        s.forget()
        self.dirty.update(TRADERS)
        assert s.risk_params() == params

    @rule(market=st.integers(0, 2), cap=st.sampled_from([2_000, 20_000, 10**12]))
    def set_window_cap(self, market, cap):
        s = self.s
        cfg = s.config(market)
        s.engine.set_market(
            market, cfg.oracle, cfg.imr, cfg.mmr, cfg.fee, cap * WAD, True, sender=OWNER
        )
        s.forget()
        self.dirty.update(TRADERS)

    # --- invariants ---------------------------------------------------------------

    @invariant()
    def balances_are_what_moved(self):
        s = self.s
        for h in self.holders:
            assert s.token.balanceOf(h) == self.expected[h], h
        ledger = sum(s.engine.collateral_of(t) for t in TRADERS)
        assert s.token.balanceOf(s.engine.address) == ledger

    @invariant()
    def views_equal_reference_math(self):
        s = self.s
        p = s.risk_params()
        room = s.window_room(self.now, p)
        accounts = {t: s.reference_account(t) for t in TRADERS}
        assert s.engine.open_interest() == sum(
            abs(q.cost) for a in accounts.values() for q in a.positions
        )
        dirty, self.dirty = self.dirty, set()
        for t in TRADERS:
            if t not in dirty:
                continue  # nothing it depends on changed since its last check
            acct = accounts[t]
            v = evaluate(acct, s.scale)
            state = classify(acct, v, p, self.now, s.scale)
            got = s.engine.check_margin(t)
            assert got.collateral == acct.collateral * s.scale
            assert got.positions == len(acct.positions)
            if acct.positions:
                assert (got.equity, got.maintenance, got.initial) == (
                    v.equity,
                    v.maintenance,
                    v.initial,
                )
            assert got.ratio == ratio(v.equity, v.maintenance)
            assert got.state == state
            self.note(f"state:{State(state).name}")
            preview = s.engine.preview_liquidation(t)
            plan = plan_tranche(acct, p, s.scale, self.now, room)
            assert preview.liquidatable == (plan is not None)
            if plan is None:
                assert preview.reason == self.expected_reason(acct, p)
                continue
            assert preview.state == plan.state
            assert preview.full_close == plan.full
            assert preview.fraction == plan.fraction
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


STATS: dict[int, dict[str, int]] = {}


@pytest.fixture(scope="module", params=[6, 18], ids=["usdc6", "dai18"])
def boa_system(request) -> BoaSystem:
    return deploy_funded_system(request.param)


def test_engine_state_machine(boa_system):
    """Random sequences of every action keep every property above (per collateral decimals)."""

    class Machine(EngineMachine):
        system = boa_system

    decimals = boa_system.decimals
    totals = STATS.setdefault(decimals, {})

    def teardown(self, _base=Machine.teardown):
        for key, n in self.stats.items():
            totals[key] = totals.get(key, 0) + n
        _base(self)

    Machine.teardown = teardown
    run_state_machine_as_test(Machine, settings=SETTINGS)
    print(f"\n[{PROFILE}] decimals={decimals} coverage: {dict(sorted(totals.items()))}")
    # the campaign reached the interesting paths, not only healthy no-ops
    if PROFILE == "deep":
        for key in ("liquidate:tranche", "liquidate:full", "margin_call", "bad_debt"):
            assert totals.get(key, 0) > 0, (key, totals)
