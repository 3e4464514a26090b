"""What the keeper reads from its mined transactions (`Receipts`, mixed into `Keeper`): calls
and tranches made, rewards (accrued in the engine, from its events), delays, races lost to
rival keepers, and accounts the engine held back because a market's liquidation window was
full (until when: the step then holds them).
"""

from __future__ import annotations

from typing import Any

from ape.logging import logger

from margincall.keeper.logic import (
    window_reopens,
)
from margincall.keeper.step import (
    REASON_WINDOW_FULL,
    WINDOW_PREVIEWS,
)
from margincall.keeper.tx import Mined
from margincall.sdk.events import RawEvent


def _lower(address: Any) -> str:
    return str(address).lower()


class Receipts:
    """The keeper's receipts side (its `sender`, `client`, `state`, `metrics`, `clock`, raw
    event readers `_raw` and addresses `_engine`, `_me`)."""

    # --- receipts ---

    def _collect(self, number: int, mined: int | None) -> None:
        for m in self.sender.poll(number, mined):
            self._account_for(m, number)
        self.state.gas_spent = self.sender.gas_spent

    def _account_for(self, mined: Mined, number: int) -> None:
        tx = mined.tx
        if mined.cancel:
            logger.info(
                f"{tx.label} nonce {tx.nonce}: its cancel was mined in block {mined.block};"
                f" nothing done for {len(tx.accounts)} accounts"
            )
            return
        if tx.label == "settle_orders":
            self._settled_receipt(mined)
            return
        if tx.label == "claim_rewards":  # no account acted on: not a call or a tranche
            if not mined.ok:
                logger.error(f"claim_rewards {tx.txn_hash} reverted in block {mined.block}")
            return
        if tx.label == "clear_margin_call":
            if mined.ok:
                self.state.clears_made += 1
            else:  # the price fell again between the scan and the block: harmless
                logger.info(
                    f"clear_margin_call for {tx.accounts[0]} reverted (still under-margined)"
                )
            return
        if not mined.ok:
            logger.error(f"{tx.label} {tx.txn_hash} reverted in block {mined.block}")
            return
        logs = mined.logs
        if tx.label == "margin_call_many":
            ev = self._raw["MarginCall"]
            made = [log for log in ev.select(logs, self._engine) if self._by_me(ev, log, "caller")]
            # a call's reward is parked: earned when paid (`CallRewardPaid`, read with the
            # position logs by `Keeper._apply`), not here
            reward = 0
            self.metrics.calls_made += len(made)
        else:
            ev = self._raw["Liquidation"]
            made = [log for log in ev.select(logs, self._engine) if self._by_me(ev, log, "keeper")]
            # a bankrupt close's minimum reward is in its event too (paid out of the deficit)
            reward = sum(ev.field(log, "keeper_reward") for log in made)
            self.metrics.tranches_made += len(made)
        self.metrics.rewards_earned += reward
        accounts = [ev.field(log, "account") for log in made]
        done = {_lower(a) for a in accounts}
        for account in accounts:
            self._restart_eligibility(account, number, mined.block)
        skipped = [a for a in tx.accounts if _lower(a) not in done]
        for a in skipped:  # its eligibility, if any, starts again
            self._restart_eligibility(a, number, None)
        if skipped:
            raced = self._acted_by_rivals(skipped, mined.block)
            rest = [a for a in skipped if _lower(a) not in raced]
            full = self._window_full(rest, mined.block) if tx.label == "liquidate_many" else set()
            recovered = len(rest) - len(full)
            self.metrics.record_skips(len(raced), recovered, len(full))
            logger.info(
                f"{tx.label} in block {mined.block}: engine skipped {len(skipped)} of"
                f" {len(tx.accounts)} accounts ({len(raced)} lost races to other keepers,"
                f" {len(full)} held by a full liquidation window, {recovered} no longer eligible)"
            )

    def _restart_eligibility(self, account: str, number: int, acted: int | None) -> None:
        """After a receipt: records the delay of an action, and if the account is eligible
        again at the block being handled, its new eligibility starts there."""
        since = self.state.eligible_since.pop(account, None)
        if acted is not None and since is not None:
            self.metrics.record_delay(since, acted)
        # a `worth_since` later than the action belongs to the next action (chosen again at
        # the block being handled, before this receipt was read): it stays
        worth = self.state.worth_since.get(account)
        if worth is not None and (acted is None or worth <= acted):
            del self.state.worth_since[account]
            if acted is not None:
                self.metrics.record_paid_delay(worth, acted)
        if account in self._actionable:
            self.state.eligible_since[account] = number

    def _by_me(self, ev: RawEvent, log: Any, field_name: str) -> bool:
        return _lower(ev.field(log, field_name)) == self._me

    def _acted_by_rivals(self, accounts: list[str], block: int) -> set[str]:
        """The `accounts` another keeper called or liquidated in `block` or the block before."""
        wanted = {_lower(a) for a in accounts}
        raw = self.client.logs(max(block - 1, 0), block)
        out = set()
        for name, actor in (("MarginCall", "caller"), ("Liquidation", "keeper")):
            ev = self._raw[name]
            for log in ev.select(raw):
                account = _lower(ev.field(log, "account"))
                if account in wanted and not self._by_me(ev, log, actor):
                    out.add(account)
        return out

    def _window_full(self, accounts: list[str], block: int) -> set[str]:
        """The `accounts` (skipped by a `liquidate_many` mined in `block`) that the engine
        held back because a market's liquidation window was full (`preview_liquidation`
        reason 3 after that block). Records until when each full window stays full, so
        that `held_by_window` holds those accounts back instead of resending them."""
        out: set[str] = set()
        now = self.clock.next_timestamp(self.clock.heads[-1][1]) if self.clock.heads else 0
        for m in [m for m, t in self.state.window_full_until.items() if t <= now]:
            del self.state.window_full_until[m]  # restarted since
        for account in accounts[:WINDOW_PREVIEWS]:
            try:
                preview = self.client.preview_at(account, block)
            except Exception:  # noqa: BLE001 - e.g. an invalid price: not a window matter
                continue
            if int(preview.reason) != REASON_WINDOW_FULL:
                continue
            out.add(_lower(account))
            for m in self.state.book.markets.get(account, ()):
                if m in self.state.window_full_until:
                    continue
                start, used, cap = self.client.window_at(m, block)
                until = window_reopens(start, used, cap, self.liquidation_window)
                if until is not None:
                    self.state.window_full_until[m] = until
                    logger.warning(
                        f"block {block}: market {m}'s liquidation window is full until {until};"
                        " its non-critical tranches wait"
                    )
        return out
