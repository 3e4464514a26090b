"""The crash demo's report (`DemoReport`, mixed into `CrashDemo`): the keeper's figures
checked against the engine's events and the fund's payments, the webhook's deliveries
against the events (exactly one message each), token conservation, and the tables.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ape import chain
from rich.console import Console

from margincall.constants import State
from margincall.keeper.audit import History, action_delays, delay_stats, read_history
from margincall.keeper.orders import RoundSeen, percentile, settle_delays
from margincall.keeper.settle import order_history
from margincall.notify import (
    EARLY_WARNING,
    KINDS,
    ORDER_EXPIRED,
    ORDER_KINDS,
    WATCHED_ORDER_EVENTS,
    event_key,
)
from margincall.notify.webhook_sink import Delivery
from margincall.report import kv_table
from margincall.sdk.rounds import rounds_published

# PROTOCOL.md 5b: an order is settled within 2 blocks of the first price after its commit
ORDER_P99_BLOCKS = 2

console = Console(highlight=False, width=None if Console().is_terminal else 120)


def _table(title: str, rows: list[tuple[str, str]]):
    return kv_table(rows, title=title)


class DemoFailure(Exception):
    """The run broke an invariant the demo checks."""


def expected_messages(history: History, chain_id: int) -> dict[str, str]:
    """Idempotency key -> kind of the one message each notified engine event must produce."""
    return {
        event_key(chain_id, log.transaction_hash, log.log_index): KINDS[log.event_name]
        for log in history.logs
        if log.event_name in KINDS
    }


def keeper_actions(history: History, keeper: str) -> History:
    """The `MarginCall`s and `Liquidation`s that `keeper` caused, and the parked call
    rewards the engine paid it (`CallRewardPaid`: its calls that ended solvent)."""
    me = keeper.lower()
    return History(
        [
            log
            for log in history.logs
            if (
                log.event_name in ("MarginCall", "CallRewardPaid") and str(log.caller).lower() == me
            )
            or (log.event_name == "Liquidation" and str(log.keeper).lower() == me)
        ]
    )


class DemoReport:
    """The report side of the crash demo (its `client`, `clients`, `record`, `traders`,
    `keeper_metrics`, blocks and webhook deliveries)."""

    def keeper_check(self, history: History) -> tuple[list[tuple[str, str]], list[str]]:
        """The keeper's metrics file against the chain: rows for the table and the
        mismatches (empty when everything matches)."""
        m = self.keeper_metrics
        me = self.keeper.address
        mine = keeper_actions(history, me)
        s = mine.summary()
        fees = order_history(self.book, self.start_block, self.end_block).fees.get(me.lower(), 0)
        from_chain = s["keeper_rewards"]
        # rewards accrue in the engine: what the keeper holds is its wallet plus its claimable
        claimable = self.client.claimable(me)
        grew = self.client.token_balance(me) + claimable - self.keeper_balance_start - fees
        calls, tranches = s["margin_calls"], s["tranches"] + s["full_liquidations"]
        rows = [
            ("calls made / sent (metrics)", f"{m['calls_made']} / {m['calls_sent']}"),
            ("calls by this keeper (chain)", str(calls)),
            ("tranches made / sent (metrics)", f"{m['tranches_made']} / {m['tranches_sent']}"),
            ("tranches by this keeper (chain)", str(tranches)),
            (
                "skipped: recovered / lost races",
                f"{m['skipped_recovered']} / {m['races_lost']}",
            ),
            ("rewards (metrics)", self.tok2(m["rewards_earned"])),
            ("rewards (the engine's events)", self.tok2(from_chain)),
            ("keeper's balance + claimable grew by (less settlement fees)", self.tok2(grew)),
            ("  of which still claimable in the engine", self.tok2(claimable)),
            (
                "order settlement fees (metrics / chain)",
                f"{self.tok2(m.get('settle_fees', 0))} / {self.tok2(fees)}"
                f" for {m.get('orders_filled', 0)} orders",
            ),
            ("gas spent", f"{m['gas_spent']:,}"),
        ]
        wrong = []
        if m["rewards_earned"] != from_chain:
            wrong.append(
                f"keeper rewards: metrics {self.tok2(m['rewards_earned'])}"
                f" != chain {self.tok2(from_chain)}"
            )
        if grew != from_chain:
            wrong.append(
                f"keeper rewards: balance + claimable grew {self.tok2(grew)}"
                f" != chain events {self.tok2(from_chain)}"
            )
        if m.get("settle_fees", 0) != fees:
            wrong.append(f"settlement fees: metrics {m.get('settle_fees', 0)} != chain {fees}")
        if m["calls_made"] != calls:
            wrong.append(f"keeper calls: metrics {m['calls_made']} != chain {calls}")
        if m["tranches_made"] != tranches:
            wrong.append(f"keeper tranches: metrics {m['tranches_made']} != chain {tranches}")
        return rows, wrong

    def notification_check(
        self, history: History, deliveries: list[Delivery]
    ) -> tuple[list[tuple[str, str]], list[str]]:
        """The webhook's deliveries against the engine's events: one message per event."""
        expected = expected_messages(history, chain.chain_id)
        # and one per order event of the book (settled, refused, expired)
        for log in self.book.events(self.start_block, self.end_block, WATCHED_ORDER_EVENTS):
            kind = ORDER_KINDS[log.event_name]
            if log.event_name == "OrderCancelled" and str(log.reason) == "book: expired":
                kind = ORDER_EXPIRED
            expected[event_key(chain.chain_id, log.transaction_hash, log.log_index)] = kind
        counts = Counter(d.key for d in deliveries)
        events = [d for d in deliveries if d.body.get("kind") != EARLY_WARNING]
        got = {d.key for d in events}
        missing = set(expected) - got
        unexpected = got - set(expected)
        twice = sorted(k for k, n in counts.items() if n > 1)
        rows = [
            ("event messages", f"delivered {len(got & set(expected))} of {len(expected)} expected")
        ]
        for kind in (*KINDS.values(), *ORDER_KINDS.values(), ORDER_EXPIRED):
            want = sum(1 for k in expected.values() if k == kind)
            have = sum(1 for k in got & set(expected) if expected[k] == kind)
            rows.append((f"  {kind}", f"{have} of {want}"))
        warnings_ = sum(1 for d in deliveries if d.body.get("kind") == EARLY_WARNING)
        rows += [
            ("early warnings", str(warnings_)),
            ("deliveries in all / distinct keys", f"{len(deliveries)} / {len(counts)}"),
        ]
        wrong = []
        if missing:
            wrong.append(
                f"{len(missing)} of {len(expected)} expected messages never arrived"
                f" (e.g. {sorted(missing)[:3]})"
            )
        if unexpected:
            wrong.append(
                f"{len(unexpected)} messages for no engine event: {sorted(unexpected)[:3]}"
            )
        if twice:
            wrong.append(f"{len(twice)} messages delivered more than once: {twice[:3]}")
        if not expected:
            wrong.append("no event to notify: the story did not happen")
        return rows, wrong

    def _outcome_table(self, s: dict[str, Any], cured_by_trader: int, fund_after: int) -> Any:
        """The crash's outcome, from the engine's events (`History.summary`)."""
        return _table(
            "Crash outcome (from the engine's events)",
            [
                ("traders", str(len(self.traders))),
                ("margin calls issued", str(s["margin_calls"])),
                ("calls cured by the trader (deposit)", str(cured_by_trader)),
                (
                    "calls cleared in all",
                    f"{s['calls_cleared']} ({s['accounts_cleared']} accounts)",
                ),
                ("partial tranches", str(s["tranches"])),
                ("full liquidations", str(s["full_liquidations"])),
                ("accounts liquidated", str(s["accounts_liquidated"])),
                (
                    "left LIQUIDATABLE (next tranche below its gas)",
                    str(
                        sum(
                            1
                            for st in self.client.statuses([t.address for t in self.traders])
                            if st.priced and st.positions and st.state == State.LIQUIDATABLE
                        )
                    ),
                ),
                ("penalties paid by traders", self.tok(s["penalties"])),
                ("bad debt", self.tok(s["bad_debt"])),
                ("  paid by the insurance fund", self.tok(s["bad_debt_paid_by_fund"])),
                ("  socialised to LPs", self.tok(s["socialised"])),
                (
                    "insurance fund before / after",
                    f"{self.tok(self.fund_before)} / {self.tok(fund_after)}",
                ),
            ],
        )

    def _verdict(self, s: dict[str, Any], problems: list[str]) -> bool:
        """Prints the problems, checks token conservation and that the story happened."""
        ok = True
        for problem in problems:
            console.print(f"[red]{problem}[/]")
            ok = False
        held = self.client.token_balance(self.client.address)
        ledgers = sum(self.client.collateral(t.address) for t in self.traders)
        # with the margin-call rewards parked until their calls end
        ledgers += sum(self.client.parked_reward(t.address)[1] for t in self.traders)
        # and what it holds for the keeper, the fund and the pool (accrued, claimed later)
        owners = (self.keeper.address, self.clients.fund.address, self.clients.pool.pool.address)
        accrued = sum(self.client.claimable(a) for a in owners)
        if held != ledgers + accrued:
            console.print(
                f"[red]conservation broken: engine holds {held},"
                f" ledgers {ledgers} + accrued {accrued}[/]"
            )
            ok = False
        else:
            console.print(
                f"  conservation: engine holds {self.tok(held)}"
                f" = sum of {len(self.traders)} ledgers + {self.tok(accrued)} accrued"
                " (keeper rewards, fund share, pool credit)"
            )
        if s["margin_calls"] == 0 or s["tranches"] + s["full_liquidations"] == 0:
            console.print(
                "[red]the crash produced no call or no liquidation: the story did not happen[/]"
            )
            ok = False
        if ok:
            console.print(
                "  checked: keeper rewards = chain events = its balance + claimable;"
                " one message per engine event"
            )
        return ok

    def order_rows(self, start: int, stop: int) -> list[tuple[str, str]]:
        """Orders committed and settled in blocks start..stop, and how many blocks after the
        first price published after its commit each was settled (p50/p99/max), all from the
        book's and the feeds' logs."""
        h = order_history(self.book, start, stop)
        commits, settled, refused = h.commits, h.settled, h.refused
        web3 = chain.provider.web3
        rounds = [
            RoundSeen(m, updated, block)
            for m, market in enumerate(self.record.markets)
            for _, updated, block in rounds_published(web3, market.feed, start, stop)
        ]
        by_order = settle_delays(commits, settled, rounds)
        me = self.keeper.address.lower()
        delays = [d for oid, d in by_order.items() if h.settled_by.get(oid) == me]
        others = len(settled) - sum(1 for oid in settled if h.settled_by.get(oid) == me)
        self.order_delays = delays
        return [
            ("orders committed (openings and cures by reduction)", str(len(commits))),
            ("  settled by the keeper process", str(len(settled) - others)),
            ("  settled by anyone else", str(others)),
            (
                "  refused at settlement or expired (fee refunded)",
                f"{refused}" + "".join(f" · {n} {why!r}" for why, n in sorted(h.reasons.items())),
            ),
            (
                "keeper's settlements, blocks after the first price after the commit",
                f"p50 {percentile(delays, 50)} · p99 {percentile(delays, 99)}"
                f" · max {max(delays, default=0)} blocks over {len(delays)} orders",
            ),
        ]

    def report(self) -> bool:
        client = self.client
        end = self.end_block
        history = read_history(client, self.crash_block, end)
        everything = read_history(client, self.start_block, end)
        s = history.summary()
        delays = action_delays(client, chain.provider, history.actions)
        d = delay_stats(list(delays.values()))
        m = self.keeper_metrics
        if not m:
            raise DemoFailure("the keeper wrote no metrics file")
        fund_after = self.clients.fund.balance()
        cured_by_trader = len(
            self.cured & {str(e.account) for e in history.of("MarginCallCleared")}
        )
        keeper_rows, keeper_wrong = self.keeper_check(everything)
        note_rows, note_wrong = self.notification_check(everything, self.webhook.received())

        outcome = self._outcome_table(s, cured_by_trader, fund_after)
        keeper = _table(
            "Keeper (its metrics file, checked against the chain)"
            + ("" if not keeper_wrong else ": MISMATCH"),
            [
                *keeper_rows,
                (
                    "delay once worth the gas (keeper's view, max)",
                    f"{m.get('max_paid_delay_blocks', 0)} blocks",
                ),
                (
                    "delay from eligibility, keeper's view (max / mean)",
                    f"{m['max_delay_blocks']} / {m['mean_delay_blocks']:.2f} blocks",
                ),
                (
                    "delay from eligibility, chain history",
                    f"max {d['max']} · p50 {d['p50']} · p99 {d['p99']} blocks"
                    f" over {d['count']} actions",
                ),
                (
                    "eligible but declined (reward below gas)",
                    f"{m.get('declined', 0)} account-blocks",
                ),
            ],
        )
        orders = _table("Orders (chain history)", self.order_rows(self.start_block, end))
        notes = _table(
            "Notifications (webhook, checked against the engine's events)"
            + ("" if not note_wrong else ": SHORTFALL"),
            note_rows,
        )
        for table in (outcome, keeper, orders, notes):
            console.print(table)

        late = percentile(self.order_delays, 99)
        order_wrong = []
        if late > ORDER_P99_BLOCKS:
            order_wrong.append(
                f"the keeper settled orders p99 {late} blocks after their price"
                f" (target {ORDER_P99_BLOCKS})"
            )
        if not self.order_delays:
            order_wrong.append("the keeper settled no order: the order story did not happen")
        return self._verdict(s, keeper_wrong + note_wrong + order_wrong)

    # --- run ---
