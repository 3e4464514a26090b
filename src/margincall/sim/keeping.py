"""The keeper's side of a replay (`KeeperMoves`, mixed into `Replay`): the step's plan as
transactions (tranches, calls, settlements, clears), the full liquidation windows a skipped
tranche reveals, and when each account's next action first became possible (the delay
metrics: `eligible_slot`).
"""

from __future__ import annotations

from margincall.constants import WAD, State
from margincall.keeper.logic import Snapshot, window_reopens
from margincall.keeper.step import REASON_WINDOW_FULL, WINDOW_PREVIEWS, Plan
from margincall.math import RiskParams
from margincall.sim.baseline import PHASED
from margincall.sim.setup import GAS, Tx, _ceil_div


def first_slot_at(timestamp: int, t0: int, block_time: int) -> int:
    """The first slot (block `k` at `t0 + k * block_time`) whose timestamp is at least
    `timestamp`."""
    return max(_ceil_div(timestamp - t0, block_time), 0)


def eligible_slot(
    s: Snapshot, slot: int, t0: int, block_time: int, params: RiskParams, calls: bool = True
) -> tuple[str, int] | None:
    """What can be done to the account of `s` (the state after block `slot`) and the first
    slot in which it can be done: `("liquidate", k)`, `("call", k)` or None; profit ignored.

    The state after block `slot` is evaluated at the timestamp of slot `slot + 1`, with the
    engine's rules: CRITICAL/BANKRUPT close at once; LIQUIDATABLE waits for
    `next_tranche_time`; a CALLED account (ratio in [1, call_ratio)) becomes LIQUIDATABLE
    when its deadline comes, and its call lapses one grace period later (then it is
    CALLABLE again); CALLABLE can be called at once (when `calls`)."""
    nxt = slot + 1
    if not s.priced:
        calls = False  # a call needs every price; liquidation values the leg at its worst case
    if s.state in (State.CRITICAL, State.BANKRUPT):
        return ("liquidate", nxt)
    if s.state == State.LIQUIDATABLE:
        at = max(nxt, first_slot_at(s.next_tranche_time, t0, block_time))
        if s.ratio >= WAD and s.call_deadline:  # liquidatable only while its call is live
            lapse = first_slot_at(s.call_deadline + params.grace_period, t0, block_time)
            if at >= lapse:
                return ("call", max(nxt, lapse)) if calls else None
        return ("liquidate", at)
    if s.state == State.CALLED and s.call_deadline:
        lapse = first_slot_at(s.call_deadline + params.grace_period, t0, block_time)
        at = max(nxt, first_slot_at(s.call_deadline, t0, block_time))
        at = max(at, first_slot_at(s.next_tranche_time, t0, block_time))
        if at < lapse:
            return ("liquidate", at)
        return ("call", max(nxt, lapse)) if calls else None
    if s.state == State.CALLABLE and calls:
        return ("call", nxt)
    return None


class KeeperMoves:
    """The keeper's side of a `Replay` (its `sim`, `plan`, `memory`, `book`, `record`,
    `liq_since`, `call_since`, `in_flight`)."""

    def _keeper_txs(self, plan: Plan) -> list[Tx]:
        """The plan's transactions (calldata from the engine's ABI), most urgent first."""
        sim = self.sim
        enc = sim.engine_abi.encode
        keeper = sim.population.keeper
        txs = [
            Tx(keeper, sim.engine, enc("liquidate_many", list(b)), "liquidate_many", accounts=b)
            for b in plan.decision.liquidations
        ]
        txs += [
            Tx(keeper, sim.engine, enc("margin_call_many", list(b)), "margin_call_many", accounts=b)
            for b in plan.decision.margin_calls
        ]
        txs += self._settle_txs(plan)
        txs += [
            Tx(
                keeper,
                sim.engine,
                enc("clear_margin_call", a),
                "clear_margin_call",
                GAS["clear_margin_call"],
                (a,),
            )
            for a in plan.clears
        ]
        return txs

    def _window_full(self, skipped: list[str]) -> None:
        """As the bot (`Keeper._window_full`): of the accounts a `liquidate_many` skipped, those
        the engine held back because a market's liquidation window was full
        (`preview_liquidation` reason 3): records until when each of their markets' windows
        stays full, so that the step holds them back instead of resending them."""
        sim, abi = self.sim, self.sim.lens_abi
        accounts = skipped[:WINDOW_PREVIEWS]
        calls = [sim.eth_call(sim.lens, abi.encode("preview_liquidation", a)) for a in accounts]
        full = self.memory.window_full_until
        markets = set()
        for account, out in zip(accounts, sim.rpc.batch(calls), strict=True):
            if int(abi.decode_named("preview_liquidation", out)["reason"]) == REASON_WINDOW_FULL:
                markets.update(m for m in self.book.markets.get(account, ()) if m not in full)
        for m in sorted(markets):
            state, market = sim.rpc.batch(
                [
                    sim.eth_call(sim.engine, abi.encode("window_state", m)),
                    sim.eth_call(sim.engine, abi.encode("markets", m)),
                ]
            )
            start, used = abi.decode("window_state", state)
            cap = int(abi.decode_named("markets", market)["window_cap"])
            until = window_reopens(int(start), int(used), cap, self.params.liquidation_window)
            if until is not None:
                full[m] = until
                self.record.keeper_windows_full += 1

    def _mark_eligible(self, snaps: list[Snapshot], slot: int) -> None:
        """The first slot in which each account's next tranche (or call) was possible, from
        the state after block `slot` (`eligible_slot`; profit ignored, the bot's rule). An
        account that stops being eligible before anyone acted, after the action had been
        possible, counts as missed."""
        rec = self.record
        seen: dict[str, set[str]] = {"liquidate": set(), "call": set()}
        since = {"liquidate": self.liq_since, "call": self.call_since}
        for s in snaps:
            e = eligible_slot(s, slot, self.t0, self.bt, self.params, self.mode == PHASED)
            if e is None:
                continue
            kind, at = e
            seen[kind].add(s.account)
            prev = since[kind].get(s.account)
            since[kind][s.account] = at if prev is None else min(prev, at)
        for kind, table in since.items():
            for a in [a for a in table if a not in seen[kind] and a not in self.in_flight]:
                if table.pop(a) <= slot:
                    if kind == "liquidate":
                        rec.liq_missed += 1
                    else:
                        rec.call_missed += 1


__all__ = ["KeeperMoves", "eligible_slot", "first_slot_at"]
