"""What the keeper does once a block's batches are out (`Upkeep`, mixed into `Keeper`): which
of its stuck transactions are still worth re-sending (the others are cancelled), clears of
recorded margin calls of accounts that recovered (`clear_margin_call`, no reward: it
protects traders from the call record gap described in docs/design.md), and claims of its
rewards accrued in the engine, in a quiet block.
"""

from __future__ import annotations

from dataclasses import replace

from ape.logging import logger

from margincall.constants import State
from margincall.keeper.logic import Snapshot, can_call, can_liquidate
from margincall.keeper.orders import settling
from margincall.keeper.receipts import _lower
from margincall.keeper.tx import PendingTx
from margincall.report import fmt_tokens


class Upkeep:
    """The keeper's upkeep side (its `client`, `sender`, `config`, `state`, `costs`,
    `call_ratio`, the accounts `_wanted` of the block and its address `_me`)."""

    # --- stuck transactions ---

    def _worth_sending(self, snaps: list[Snapshot], now: int) -> set[str]:
        """Accounts a transaction in the next block could act on (ignoring profit): used to
        decide whether a stuck transaction is re-sent or cancelled."""
        free = replace(self.costs, gas_price=0)
        out = {
            _lower(s.account)
            for s in snaps
            if can_liquidate(s, now, free)
            or can_call(s, free)
            or (
                s.priced
                and s.state == State.HEALTHY
                and s.call_deadline
                and s.ratio >= self.call_ratio
            )
        }
        return out

    def _still_useful(self, tx: PendingTx) -> bool:
        """A stuck transaction is re-sent if it still acts on an account worth it, or on an
        order still pending."""
        pending = self.state.orders.pending
        return any(_lower(a) in self._wanted for a in tx.accounts) or any(
            oid in pending for oid in settling(tx.accounts)
        )

    # --- clears and claims ---

    def _clear_recovered(self, todo: tuple[str, ...], number: int, gas_limit: int | None) -> None:
        """`clear_margin_call` for recovered accounts (HEALTHY with a call still recorded;
        the step caps them at `max_clears` per block), estimated at once and sent after the
        batches."""
        calls = [self.client.build("clear_margin_call", (a,)) for a in todo]
        results = self.sender.send_many(
            calls, number, gas_budget=gas_limit, tx_gas_cap=self.config.tx_gas_cap
        )
        for account, tx in zip(todo, results, strict=True):
            if isinstance(tx, Exception):  # e.g. the price moved since the scan; next block
                logger.warning(f"block {number}: clear_margin_call({account}) not sent: {tx}")
                continue
            self.state.clears_sent += 1

    def _claim_rewards(self, number: int, gas_limit: int | None) -> None:
        """`claim_rewards` once the keeper's rewards accrued in the engine reach
        `claim_at` whole tokens: one claim (about 30k gas) pays for many actions, and
        waiting for a block without action keeps it out of a crash's way."""
        if self.config.claim_at <= 0:
            return
        last = self.state.last_claim
        if 0 <= last and number - last <= self.config.replace_after:
            return  # the last claim may still be pending
        claimable = self.client.claimable(self._me)
        if claimable < self.client.tokens(self.config.claim_at):
            return
        call = self.client.build("claim_rewards", (self._me,))
        [tx] = self.sender.send_many([call], number, gas_budget=gas_limit)
        if isinstance(tx, Exception):
            logger.warning(f"block {number}: claim_rewards not sent: {tx}")
            return
        self.state.claims_sent += 1
        self.state.last_claim = number
        amount = fmt_tokens(claimable, self.client.decimals, 6)
        logger.info(f"block {number}: claiming {amount} tokens of accrued rewards")
