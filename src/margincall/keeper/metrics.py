"""The keeper's counters (`Metrics`), exported by the bot and the simulator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from margincall.ops import Series, register_bot

# --- metrics ---------------------------------------------------------------


@dataclass
class Metrics:
    """The keeper's counters, exported by the bot and the simulator."""

    accounts_tracked: int = 0
    calls_sent: int = 0  # accounts put in `margin_call_many`
    calls_made: int = 0  # accounts actually called
    tranches_sent: int = 0  # accounts put in `liquidate_many`
    tranches_made: int = 0  # accounts actually liquidated
    races_lost: int = 0  # sent but skipped by the engine: a rival acted first
    skipped_recovered: int = 0  # sent but skipped: no longer eligible (price moved back)
    skipped_window: int = 0  # sent but skipped: the market's liquidation window was full
    rewards_earned: int = 0  # token units
    delays: list[int] = field(default_factory=list)  # blocks from eligible to acted
    # blocks from "eligible and its reward covers the gas" to acted: what the profit rule
    # is answerable for (an action the keeper declined as unprofitable waits in `delays`)
    paid_delays: list[int] = field(default_factory=list)
    declined: int = 0  # account-blocks eligible but declined: the reward did not cover the gas

    def track(self, accounts: int) -> None:
        self.accounts_tracked = accounts

    def record_calls(self, sent: int, made: int, reward: int = 0) -> None:
        self._record(sent, made)
        self.calls_sent += sent
        self.calls_made += made
        self.rewards_earned += reward

    def record_tranches(self, sent: int, made: int, reward: int = 0) -> None:
        self._record(sent, made)
        self.tranches_sent += sent
        self.tranches_made += made
        self.rewards_earned += reward

    def record_delay(self, eligible_block: int, acted_block: int) -> None:
        if acted_block < eligible_block:
            raise ValueError("acted before the account was eligible")
        self.delays.append(acted_block - eligible_block)

    def record_paid_delay(self, worth_block: int, acted_block: int) -> None:
        if acted_block < worth_block:
            raise ValueError("acted before the action was worth it")
        self.paid_delays.append(acted_block - worth_block)

    def _record(self, sent: int, made: int) -> None:
        if not 0 <= made <= sent:
            raise ValueError(f"made {made} of {sent} sent")
        self.races_lost += sent - made

    def record_skips(self, raced: int, recovered: int, window: int = 0) -> None:
        """Accounts the engine skipped: `raced` because a rival acted first in or before the
        block, `window` because the market's liquidation window was full, `recovered`
        because they were no longer eligible."""
        if raced < 0 or recovered < 0 or window < 0:
            raise ValueError("skip counts must be non-negative")
        self.races_lost += raced
        self.skipped_recovered += recovered
        self.skipped_window += window

    @property
    def max_delay(self) -> int:
        return max(self.delays, default=0)

    @property
    def mean_delay(self) -> float:
        return sum(self.delays) / len(self.delays) if self.delays else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["delays"], out["paid_delays"]
        out["max_delay_blocks"] = self.max_delay
        out["mean_delay_blocks"] = self.mean_delay
        out["max_paid_delay_blocks"] = max(self.paid_delays, default=0)
        return out


# --- Prometheus (margincall.ops): `margincall_keeper_<name>`, from `Keeper.snapshot()` keys ---

PROMETHEUS_SERIES: tuple[Series, ...] = (
    Series("block", "gauge", "last block scanned", "block"),
    Series(
        "accounts_tracked",
        "gauge",
        "accounts with open positions in this shard",
        "accounts_tracked",
    ),
    Series("calls_sent", "counter", "accounts put in margin_call_many", "calls_sent"),
    Series("calls_made", "counter", "accounts margin-called by this keeper", "calls_made"),
    Series("tranches_sent", "counter", "accounts put in liquidate_many", "tranches_sent"),
    Series("tranches_made", "counter", "accounts liquidated by this keeper", "tranches_made"),
    Series("races_lost", "counter", "accounts sent but acted on by a rival first", "races_lost"),
    Series(
        "skipped_recovered", "counter", "accounts sent but no longer eligible", "skipped_recovered"
    ),
    Series(
        "skipped_window", "counter", "accounts sent but their window was full", "skipped_window"
    ),
    Series(
        "declined",
        "counter",
        "account-blocks eligible but the reward did not cover gas",
        "declined",
    ),
    Series(
        "rewards_tokens",
        "counter",
        "rewards earned, whole collateral tokens",
        "rewards_earned",
        tokens=True,
    ),
    Series("gas_spent", "counter", "gas used by the keeper's mined transactions", "gas_spent"),
    Series("fees_paid_wei", "counter", "fees paid for mined transactions, wei", "fees_paid_wei"),
    Series("pending_transactions", "gauge", "transactions sent, not yet mined", "pending"),
    Series(
        "replacements", "counter", "stuck transactions re-sent with higher fees", "replacements"
    ),
    Series("cancels", "counter", "stuck transactions cancelled", "cancels"),
    Series("clears_sent", "counter", "clear_margin_call transactions sent", "clears_sent"),
    Series("clears_made", "counter", "margin calls cleared", "clears_made"),
    Series("too_large", "counter", "accounts whose tranche fits no transaction", "too_large"),
    Series("held_window", "gauge", "accounts held back this block (window full)", "held_window"),
    Series("rpc_errors", "counter", "blocks whose handling failed on a node error", "rpc_errors"),
    Series(
        "block_interval_seconds",
        "gauge",
        "block interval the keeper predicts with",
        "block_interval_s",
    ),
    Series(
        "max_delay_blocks", "gauge", "longest eligible-to-acted delay, blocks", "max_delay_blocks"
    ),
    Series(
        "mean_delay_blocks", "gauge", "mean eligible-to-acted delay, blocks", "mean_delay_blocks"
    ),
)


def export_prometheus(snapshot: Callable[[], dict[str, Any]], decimals: int) -> None:
    """Serves `snapshot()` (`Keeper.snapshot`) on this process's `/metrics` through
    `PROMETHEUS_SERIES`, rewards in whole tokens of `decimals`; marks the keeper ready for
    `/health` (margincall.ops; a no-op when the bot runs without `ResilientRunner`)."""
    register_bot("keeper", snapshot, PROMETHEUS_SERIES, decimals)


__all__ = ["PROMETHEUS_SERIES", "Metrics", "export_prometheus"]
