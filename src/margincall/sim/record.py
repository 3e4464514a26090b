"""What one simulated run observed (`margincall.sim.replay` fills it; `margincall.sim.metrics`
turns it into figures, `margincall.sim.plots` into pictures)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from margincall.math import RiskParams


@dataclass
class RunRecord:
    """Everything one run observed; `margincall.sim.metrics` turns it into figures."""

    mode: str
    params: RiskParams
    block_time: int
    decimals: int
    markets: tuple[str, ...]
    duration: int  # seconds of the path
    end: int  # seconds replayed (path + tail)
    fund_start: int = 0
    pool_start: int = 0
    # one row per mined block: (slot, seconds, prices..., fund, pool, open, state counts x6,
    # ratio p5, p25, p50, p75, p95)
    samples: list[tuple] = field(default_factory=list)
    liquidations: list[dict[str, Any]] = field(default_factory=list)
    bad_debts: list[dict[str, Any]] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    # the ends of parked call rewards: paid to the caller (CallRewardPaid) or returned to
    # the account's collateral by a close at ratio < 1 (CallRewardReturned)
    call_rewards_paid: list[dict[str, Any]] = field(default_factory=list)
    call_rewards_returned: list[dict[str, Any]] = field(default_factory=list)
    clears: list[dict[str, Any]] = field(default_factory=list)
    # blocks from the first block where it was possible (1 = that block), per tranche or
    # full close, and per margin call
    delays: list[int] = field(default_factory=list)
    call_delays: list[int] = field(default_factory=list)
    keeper_gas: int = 0
    keeper_txs: int = 0
    keeper_fee_tokens: float = 0.0
    keeper_skipped: int = 0  # accounts sent to a batch that the engine skipped
    keeper_reverts: int = 0  # keeper transactions that reverted (out of gas, ...)
    keeper_reverted_alone: int = 0  # accounts whose own tranche or call reverted (backed off)
    # the shipped keeper's step (`margincall.keeper.step`), summed over the blocks: accounts
    # held back by a full liquidation window, backed off (too large for one transaction),
    # recovered calls left for a later block by `max_clears`; full windows detected
    keeper_held_window: int = 0
    keeper_backed_off: int = 0
    keeper_clears_capped: int = 0
    keeper_windows_full: int = 0
    trader_txs: int = 0
    trader_reverts: int = 0
    # orders (reductions): committed, settled, refused at settlement (by reason), and each
    # settlement's blocks from the block that posted its round (1: the next block)
    orders_committed: int = 0
    orders_settled: int = 0
    orders_cancelled: dict[str, int] = field(default_factory=dict)
    order_delays: list[int] = field(default_factory=list)
    cures_planned: int = 0
    cures_sent: int = 0
    cures_by_deposit: int = 0  # cure transactions sent, by kind
    cures_by_reduce: int = 0
    gas_price_gwei: float = 0.0  # the keeper's gas price in this run
    # eligible accounts that stopped being eligible before anyone acted (the keeper declined:
    # unprofitable, or no time), after the action had been possible
    liq_missed: int = 0
    call_missed: int = 0
    trader_equity_start: int = 0  # wad, every trader's equity at the first block
    trader_equity_end: int = 0
    trader_deposits: int = 0  # token units deposited by cures
    blocks_mined: int = 0
    slots: int = 0
    rpc_requests: int = 0
    wall_seconds: float = 0.0
    load_avg: float = 0.0  # the machine's 1-minute load average at the end of the run
    variant: str = ""
    final: dict[str, Any] = field(default_factory=dict)
