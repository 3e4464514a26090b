"""What the simulated traders do during a replay (`TraderMoves`, mixed into `Replay`): cure
their margin calls as `population` describes (a deposit, a reduction or `clear_margin_call`,
from the last status they saw), and their open sizes, equity and notional. A reduction is a
reduce-only order (`commit_order`) that the keeper settles at the next round (`sim.orders`).
"""

from __future__ import annotations

import heapq

from margincall.constants import WAD, State
from margincall.sim.population import (
    cure_plan,
    deposit_to_cure,
    reduce_to_cure,
)
from margincall.sim.setup import (
    GAS,
    Tx,
    _ceil_div,
    _wad,
)


class TraderMoves:
    """The traders' side of a `Replay` (its `sim`, `status`, `sizes`, `prices`, `wallet`,
    `cures` and `record`)."""

    # --- traders ---

    def _plan_cure(self, account: str, t: int) -> None:
        trader = self.traders.get(account)
        if trader is None:
            return
        plan = cure_plan(self.population, trader)
        if not plan.cures:
            return
        self.record.cures_planned += 1
        self.cure_mode[account] = plan.deposit
        self.cure_seq += 1
        heapq.heappush(self.cures, (t + plan.delay, self.cure_seq, account))

    def _cure(self, account: str) -> list[Tx]:
        """The trader's transactions for a cure, from the last status the trader saw."""
        sim = self.sim
        s = self.status.get(account)
        if s is None or s.positions == 0 or not s.priced:
            return []
        if s.state == State.BANKRUPT:
            return []
        enc = sim.engine_abi.encode
        target = self.population.cure_target
        if s.ratio >= self.params.call_ratio:
            if not s.call_deadline:
                return []
            self.record.cures_sent += 1
            return [
                Tx(
                    account,
                    sim.engine,
                    enc("clear_margin_call", account),
                    "clear_margin_call",
                    GAS["clear_margin_call"],
                )
            ]
        self.record.cures_sent += 1
        need = _ceil_div(deposit_to_cure(s.equity, s.maintenance, target), sim.scale)
        if self.cure_mode.get(account, True) and 0 < need <= self.wallet[account]:
            self.wallet[account] -= need
            self.record.cures_by_deposit += 1
            return [
                Tx(
                    account,
                    sim.engine,
                    enc("deposit", need, account),
                    "deposit",
                    GAS["deposit"],
                    amount=need,
                )
            ]
        fraction = reduce_to_cure(s.equity, s.maintenance, target)
        out = []
        for i, m in enumerate(sim.markets):
            size = self.sizes.get((account, i), self._initial_size(account, i))
            if size == 0:
                continue
            delta = -size if fraction >= 0.98 else -int(size * fraction)
            if delta == 0:
                continue
            price = self.prices[m]
            bound = _wad(price * (0.95 if size > 0 else 1.05))
            # a reduce-only order, settled by the keeper at the next round after this block
            data = sim.book_abi.encode("commit_order", i, delta, bound, self.expiry, True)
            out.append(Tx(account, sim.book, data, "commit_order", GAS["commit_order"]))
        if out:
            self.record.cures_by_reduce += 1
        return out

    def _initial_size(self, account: str, market_index: int) -> int:
        """The opening size, before any PositionChanged of this run was seen."""
        sim = self.sim
        t = self.traders[account]
        notional = t.collateral * sim.opened_leverage(t)
        m = sim.markets[market_index]
        for leg in t.legs:
            if leg.market == m:
                size = int(notional * leg.share / sim.path.start(m) * 1e9) * 10**9
                return size if leg.long else -size
        return 0

    def _equity(self) -> int:
        """Every trader's equity (wad): collateral plus unrealised PnL; a bankrupt account's
        negative equity counts (its deficit is the fund's or the LPs' loss, not a gain)."""
        total = 0
        for s in self.status.values():
            total += s.equity if s.positions > 0 else s.collateral
        return total

    def _notional(self, account: str) -> int:
        """The account's open notional (wad) at the last posted prices."""
        total = 0
        for i, m in enumerate(self.sim.markets):
            size = self.sizes.get((account, i), self._initial_size(account, i))
            total += abs(size) * _wad(self.prices[m]) // WAD
        return total
