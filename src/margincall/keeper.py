"""The keeper: tracks accounts from events, scans every block, calls and liquidates.

`bots/keeper.py` (Silverback) is a thin shell around `Keeper`; the demo and
the tests run that bot as a real process. Decisions are the pure functions
of `margincall.keeper_logic`; this module does the I/O around them:

1. at start, rebuild the set of accounts with open positions from the
   engine's `PositionChanged` logs since the deployment block (one
   `eth_getLogs` per chunk of blocks);
2. on every block, first what the first transaction needs, then the rest:
   - at once, in three threads: the new logs (same rule, so a restart or a
     skipped block never loses an account), the scan of its shard with the
     batched `check_margins` at that block, and its own nonce at that block
     (which of its transactions are mined, without reading their receipts);
   - decide with the timestamp the transactions are expected to carry (the
     head's plus the block interval, `keeper_logic.BlockClock`), and send
     `liquidate_many` / `margin_call_many` batches without waiting, one nonce
     after the other, with the fees fixed once per block from the head's base
     fee (`margincall.tx.TxSender`);
   - then: read the receipts of its mined transactions (calls and tranches
     made, races lost, rewards, delays), clear recorded margin calls of
     accounts that recovered (`clear_margin_call`, no reward: it protects
     traders from the call record gap described in docs/design.md), replace
     its stuck transactions, and write its metrics.

Every price update lands in a block, and every block is scanned, so an
oracle update is acted on in the block after it: the keeper reads prices
through the engine (the adapters read the feeds), never from a cache.

Errors: an RPC error inside a block is logged and counted by the bot, and
the next block is handled from scratch; a transaction the engine skips for
an account (a rival was first, the account recovered, the market's
liquidation window was full) is counted, never fatal.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ape.logging import logger

from margincall.constants import MAX_BATCH, MAX_SCAN, TX_GAS_CAP, WAD, State
from margincall.keeper_logic import (
    GAS_EXTRA_MARKET,
    GAS_PER_CALL,
    GAS_PER_TRANCHE,
    BlockClock,
    CostModel,
    Decision,
    Metrics,
    PositionBook,
    RewardModel,
    Snapshot,
    can_call,
    can_liquidate,
    decide,
    held_by_window,
    shard,
    window_reopens,
)
from margincall.logs import RawEvent
from margincall.math import RiskParams
from margincall.tx import Deferred, Mined, PendingTx, TooLarge, TxSender

LOG_CHUNK = 5_000  # blocks per eth_getLogs


class ConfigError(ValueError):
    """A keeper setting is missing or malformed."""


# --- configuration --------------------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    """`"i/n"` with `0 <= i < n`."""
    try:
        i_text, n_text = text.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise ConfigError(f"shard must look like i/n (e.g. 0/2), not {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"shard {text!r}: need n >= 1 and 0 <= i < n")
    return i, n


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int | None = None) -> int:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise ConfigError(f"{name} must be an integer, not {raw!r}") from None
    if value < lo or (hi is not None and value > hi):
        raise ConfigError(
            f"{name} must be in [{lo}, {hi if hi is not None else 'inf'}], not {value}"
        )
    return value


@dataclass(frozen=True)
class KeeperConfig:
    """Every keeper option; `from_env` reads them from `MARGINCALL_*` variables (docs/bots.md)."""

    deployment: Path
    shard_index: int = 0
    shard_count: int = 1
    margin_bps: int = 12_000  # reward >= gas cost * margin_bps / 10_000
    native_per_token: Decimal = Decimal("0.0004")  # native coin per whole collateral token
    gas_per_call: int = GAS_PER_CALL  # per account in margin_call_many (profit rule only)
    gas_per_tranche: int = GAS_PER_TRANCHE  # per account in liquidate_many (profit rule only)
    gas_per_extra_market: int = GAS_EXTRA_MARKET  # per further market of a tranche (same)
    max_batch: int = MAX_BATCH
    scan_chunk: int = MAX_SCAN
    clear_calls: bool = True
    metrics_path: Path | None = None
    stale_blocks: int = 20
    log_every: int = 50  # blocks between summary lines
    tx_gas_cap: int = TX_GAS_CAP  # a batch over it is split in halves (EIP-7825)
    block_time: int | None = None  # seconds; None: measured from the heads (BlockClock)
    replace_after: int = 3  # blocks before an unmined transaction is re-sent with more fee
    max_clears: int = 20  # clear_margin_call transactions per block at most

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KeeperConfig:
        env = os.environ if env is None else env
        raw_deployment = env.get("MARGINCALL_DEPLOYMENT", "")
        if not raw_deployment:
            raise ConfigError(
                "MARGINCALL_DEPLOYMENT is not set: the path of the deployment record "
                "(deployments/<ecosystem>-<network>.json, written by `ape run deploy`)"
            )
        shard_index, shard_count = parse_shard(env.get("MARGINCALL_SHARD", "") or "0/1")
        raw_price = env.get("MARGINCALL_NATIVE_PER_TOKEN", "") or "0.0004"
        try:
            native_per_token = Decimal(raw_price)
        except InvalidOperation:
            raise ConfigError(
                f"MARGINCALL_NATIVE_PER_TOKEN must be a number, not {raw_price!r}"
            ) from None
        if native_per_token < 0:
            raise ConfigError("MARGINCALL_NATIVE_PER_TOKEN must not be negative")
        clear = env.get("MARGINCALL_CLEAR_CALLS", "1").strip().lower()
        if clear not in ("0", "1", "true", "false", "yes", "no"):
            raise ConfigError(f"MARGINCALL_CLEAR_CALLS must be 1 or 0, not {clear!r}")
        metrics = env.get("MARGINCALL_KEEPER_METRICS", "")
        return cls(
            deployment=Path(raw_deployment),
            shard_index=shard_index,
            shard_count=shard_count,
            margin_bps=_int(env, "MARGINCALL_PROFIT_MARGIN_BPS", 12_000, 0),
            native_per_token=native_per_token,
            gas_per_call=_int(env, "MARGINCALL_GAS_PER_CALL", GAS_PER_CALL, 0),
            gas_per_tranche=_int(env, "MARGINCALL_GAS_PER_TRANCHE", GAS_PER_TRANCHE, 0),
            gas_per_extra_market=_int(env, "MARGINCALL_GAS_PER_EXTRA_MARKET", GAS_EXTRA_MARKET, 0),
            max_batch=_int(env, "MARGINCALL_MAX_BATCH", MAX_BATCH, 1, MAX_BATCH),
            scan_chunk=_int(env, "MARGINCALL_SCAN_CHUNK", MAX_SCAN, 1, MAX_SCAN),
            clear_calls=clear in ("1", "true", "yes"),
            metrics_path=Path(metrics) if metrics else None,
            stale_blocks=_int(env, "MARGINCALL_STALE_BLOCKS", 20, 1),
            log_every=_int(env, "MARGINCALL_LOG_EVERY", 50, 1),
            tx_gas_cap=_int(env, "MARGINCALL_TX_GAS_CAP", TX_GAS_CAP, 100_000),
            block_time=_int(env, "MARGINCALL_BLOCK_TIME", 0, 0) or None,
            replace_after=_int(env, "MARGINCALL_REPLACE_BLOCKS", 3, 1),
            max_clears=_int(env, "MARGINCALL_MAX_CLEARS", 20, 0),
        )

    def to_env(self) -> dict[str, str]:
        """The `MARGINCALL_*` variables that `from_env` reads back into this config."""
        env = {
            "MARGINCALL_DEPLOYMENT": str(self.deployment),
            "MARGINCALL_SHARD": f"{self.shard_index}/{self.shard_count}",
            "MARGINCALL_PROFIT_MARGIN_BPS": str(self.margin_bps),
            "MARGINCALL_NATIVE_PER_TOKEN": str(self.native_per_token),
            "MARGINCALL_GAS_PER_CALL": str(self.gas_per_call),
            "MARGINCALL_GAS_PER_TRANCHE": str(self.gas_per_tranche),
            "MARGINCALL_GAS_PER_EXTRA_MARKET": str(self.gas_per_extra_market),
            "MARGINCALL_MAX_BATCH": str(self.max_batch),
            "MARGINCALL_SCAN_CHUNK": str(self.scan_chunk),
            "MARGINCALL_CLEAR_CALLS": "1" if self.clear_calls else "0",
            "MARGINCALL_STALE_BLOCKS": str(self.stale_blocks),
            "MARGINCALL_LOG_EVERY": str(self.log_every),
            "MARGINCALL_TX_GAS_CAP": str(self.tx_gas_cap),
            "MARGINCALL_BLOCK_TIME": str(self.block_time or 0),
            "MARGINCALL_REPLACE_BLOCKS": str(self.replace_after),
            "MARGINCALL_MAX_CLEARS": str(self.max_clears),
        }
        if self.metrics_path is not None:
            env["MARGINCALL_KEEPER_METRICS"] = str(self.metrics_path)
        return env

    def wei_per_token_unit(self, decimals: int) -> Decimal:
        return self.native_per_token * Decimal(10**18) / Decimal(10**decimals)

    @property
    def wei_per_token(self) -> int:
        """Wei of native coin per whole collateral token (rounded down)."""
        return int(self.native_per_token * Decimal(10**18))

    def cost_model(
        self, params: RiskParams, mmrs: Iterable[int], decimals: int, gas_price: int = 0
    ) -> CostModel:
        """The profit rule's cost model: this config's gas figures and margin, and rewards
        bounded per account from the engine's risk parameters, the markets' `mmr`s and
        the collateral's decimals (`keeper_logic.RewardModel`). The flat rewards (for
        snapshots without margins) are `call_reward` and `min_keeper_reward`."""
        rewards = RewardModel(
            params=params,
            max_mmr=max(mmrs, default=WAD),
            decimals=decimals,
            wei_per_token=self.wei_per_token,
        )
        scale = rewards.scale
        return CostModel(
            gas_price=gas_price,
            gas_per_call=self.gas_per_call,
            gas_per_tranche=self.gas_per_tranche,
            gas_per_extra_market=self.gas_per_extra_market,
            call_reward=rewards.to_wei(params.call_reward // scale),
            tranche_reward=rewards.to_wei(params.min_keeper_reward // scale),
            margin_bps=self.margin_bps,
            rewards=rewards,
        )


# --- keeper -------------------------------------------------------------------


@dataclass
class KeeperState:
    """What the keeper remembers between blocks (rebuilt from logs on restart)."""

    book: PositionBook = field(default_factory=PositionBook)
    cursor: int = -1  # last block whose logs are applied
    eligible_since: dict[str, int] = field(default_factory=dict)  # account -> first block seen
    worth_since: dict[str, int] = field(default_factory=dict)  # ... seen worth the gas
    last_scanned: int = -1
    rpc_errors: int = 0
    gas_spent: int = 0
    clears_sent: int = 0
    clears_made: int = 0
    too_large: int = 0  # single accounts whose tranche does not fit in one transaction
    held_window: int = 0  # accounts held back this block: their market's window is full
    window_full_until: dict[int, int] = field(default_factory=dict)  # market -> time
    backoff: dict[str, int] = field(default_factory=dict)  # account -> first block to retry
    started_at: float = field(default_factory=time.time)


def _lower(address: Any) -> str:
    return str(address).lower()


def _head_seen(number: int) -> float | None:
    """When the bot's runner first saw head `number` (latency logs), if a runner runs here;
    never imports Silverback for other users of this module (the simulator)."""
    runner = sys.modules.get("margincall.runner")
    return runner.head_seen(number) if runner is not None else None


# gas limit added per account whose tranche falls due only at the next block's timestamp (the
# estimate skips it): a tranche of an account with the most markets, with room; a limit,
# not what is paid (a tranche inside a batch measured 38.7k gas with one market, 74.4k with
# three; docs/bots.md)
DUE_NEXT_GAS = 250_000
TOO_LARGE_BACKOFF = 50  # blocks before an account too large for one transaction is retried
WINDOW_PREVIEWS = 20  # skipped accounts per receipt checked for a full liquidation window
REASON_WINDOW_FULL = 3  # `preview_liquidation(...).reason` when the window cap is reached


class Keeper:
    """One keeper (or one shard of it) over a deployed system."""

    def __init__(
        self,
        client: Any,
        record: Any,
        sender: TxSender,
        config: KeeperConfig,
        provider: Any,
        fund: Any,
    ):
        self.client = client
        self.fund = fund
        self.record = record
        self.sender = sender
        self.config = config
        self.provider = provider
        self.engine = client.engine
        self.metrics = Metrics()
        self.state = KeeperState()
        self.clock = BlockClock(fixed=config.block_time)
        self._t0 = time.monotonic()
        self._io = ThreadPoolExecutor(max_workers=3, thread_name_prefix="keeper-io")
        self._wanted: set[str] = set()  # accounts worth a transaction at the last scan
        self._actionable: set[str] = set()  # accounts eligible at the last scan (delays)
        self.decimals = int(record.collateral_decimals)
        self.rate = config.wei_per_token_unit(self.decimals)
        self.costs = CostModel(gas_price=0)
        self.mmrs: list[int] = []  # per market id
        self.call_ratio = 0
        self.liquidation_window = 0
        self._load_params()
        self._params_changed = False  # a MarketSet or RiskParamsSet log since the last load
        self._events = {
            name: getattr(self.engine, name).abi
            for name in (
                "PositionChanged",
                "MarginCall",
                "Liquidation",
                "MarketSet",
                "RiskParamsSet",
            )
        }
        self._raw = {name: RawEvent(abi) for name, abi in self._events.items()}
        self._raw["KeeperPaid"] = RawEvent(fund.KeeperPaid.abi)
        self._engine = str(self.engine.address)
        self._fund = str(fund.address)
        self._me = _lower(sender.address)

    # --- parameters ---

    def _load_params(self, block_id: int | None = None) -> None:
        """Reads the risk parameters and every market's `mmr` (at `block_id`, default the
        head) into the cost model (its reward bounds) and the keeper's settings. At start,
        and again after a block with a `MarketSet` or `RiskParamsSet` log."""
        at = {} if block_id is None else {"block_id": block_id}
        rp = self.engine.risk_params(**at)
        params = RiskParams(**{f: int(getattr(rp, f)) for f in RiskParams.__dataclass_fields__})
        mmrs = [
            int(self.engine.markets(m, **at).mmr)
            for m in range(int(self.engine.market_count(**at)))
        ]
        self.costs = self.config.cost_model(params, mmrs, self.decimals, self.costs.gas_price)
        self.mmrs = mmrs
        self.call_ratio = params.call_ratio
        self.liquidation_window = params.liquidation_window
        self.params = params

    def _mmr_of(self, account: str) -> int:
        """The largest mmr of the account's markets (from the position book), 0 if unknown:
        a tighter reward bound than all markets' largest mmr (`Snapshot.mmr`)."""
        held = self.state.book.markets.get(account)
        if not held or max(held) >= len(self.mmrs):
            return 0
        return max(self.mmrs[m] for m in held)

    # --- startup ---

    def start(self) -> None:
        """Rebuilds the account book from the engine's logs since its deployment, then scans."""
        latest = self.provider.get_block("latest")
        head = int(latest.number)
        t0 = time.monotonic()
        n = self._ingest(int(self.record.block), head)
        self._params_changed = False  # read at construction, from the head
        self.metrics.track(len(self._mine(self.state.book.accounts)))
        logger.success(
            f"keeper {self.sender.address}"
            f" shard {self.config.shard_index}/{self.config.shard_count}:"
            f" {len(self.state.book)} accounts with open positions from {n} PositionChanged logs"
            f" (blocks {self.record.block}..{head}, {time.monotonic() - t0:.2f} s);"
            f" {self.metrics.accounts_tracked} in this shard"
        )
        # the block interval from the last few heads, before the first decision needs it
        for number in range(max(0, head - self.clock.window + 1), head):
            self.clock.observe(number, int(self.provider.web3.eth.get_block(number)["timestamp"]))
        # a first scan at once: eligible accounts are acted on without waiting for a block,
        # and every code path is warm before the first block arrives
        self.on_block(
            head,
            int(latest.timestamp),
            base_fee=int(getattr(latest, "base_fee", 0) or 0),
            gas_limit=int(latest.gas_limit) if getattr(latest, "gas_limit", None) else None,
        )
        logger.info(
            f"block interval {self.clock.interval()} s (from {len(self.clock.heads)} heads)"
        )

    # --- logs ---

    def _read_logs(self, start: int, stop: int) -> list[Any]:
        """The engine's raw `PositionChanged`, `MarketSet` and `RiskParamsSet` logs of blocks
        start..stop (one filter: any of the three topics)."""
        topic = [
            "0x" + self._raw[name].topic0.hex()
            for name in ("PositionChanged", "MarketSet", "RiskParamsSet")
        ]
        out: list[Any] = []
        for lo in range(start, stop + 1, LOG_CHUNK):
            hi = min(stop, lo + LOG_CHUNK - 1)
            out.extend(
                self.provider.web3.eth.get_logs(
                    {"address": self._engine, "fromBlock": lo, "toBlock": hi, "topics": [topic]}
                )
            )
        return out

    def _apply(self, logs: Iterable[Any], stop: int) -> int:
        """Applies raw PositionChanged logs read up to block `stop`; returns how many. A
        `MarketSet` or `RiskParamsSet` log marks the parameters for a reload."""
        ev = self._raw["PositionChanged"]
        n = 0
        for log in logs:
            if not ev.matches(log):
                self._params_changed = True
                continue
            self.state.book.apply(
                {
                    "account": ev.field(log, "account"),
                    "market_id": ev.field(log, "market_id"),
                    "size": ev.field(log, "size"),
                }
            )
            n += 1
        self.state.cursor = max(self.state.cursor, stop)
        return n

    def _ingest(self, start: int, stop: int) -> int:
        """Applies PositionChanged logs of blocks start..stop; returns how many."""
        if stop < start:
            return 0
        return self._apply(self._read_logs(start, stop), stop)

    def _mine(self, accounts: list[str]) -> list[str]:
        """This keeper's shard of `accounts`."""
        if self.config.shard_count == 1:
            return accounts
        return shard(accounts, self.config.shard_index, self.config.shard_count)

    def _scan(self, accounts: list[str], number: int) -> list[Any]:
        if not accounts:
            return []
        return self.client.statuses(accounts, chunk=self.config.scan_chunk, block_id=number)

    # --- block ---

    def on_block(
        self,
        number: int,
        timestamp: int,
        *,
        base_fee: int | None = None,
        gas_limit: int | None = None,
    ) -> Decision | None:
        """Everything the keeper does for head `number` (stamped `timestamp`, with
        `base_fee` and `gas_limit`: read from the node when not given). Raises on RPC
        errors; the bot logs them and handles the next block from scratch."""
        state = self.state
        if number <= state.last_scanned:
            return None
        self._t0 = time.monotonic()
        seen = _head_seen(number)
        self.clock.observe(number, timestamp)
        now = self.clock.next_timestamp(timestamp)  # what the transactions will carry
        if base_fee is None or gas_limit is None:
            block = self.provider.web3.eth.get_block(number)
            base_fee = int(block.get("baseFeePerGas", 0) or 0)
            gas_limit = int(block["gasLimit"])
        _, tip = self.sender.begin_block(number, base_fee)
        self.costs = replace(self.costs, gas_price=base_fee + tip)

        # the three reads the decision needs, at once, all at block `number`
        known = self._mine(state.book.accounts)
        f_logs = self._io.submit(self._read_logs, state.cursor + 1, number)
        f_mined = self._io.submit(self.sender.mined_count, number) if self.sender.pending else None
        f_scan = self._io.submit(self._scan, known, number)
        self._apply(f_logs.result(), number)
        if self._params_changed:  # the owner changed a market or the risk parameters: rare
            self._load_params(number)
            self._params_changed = False
        statuses = f_scan.result()
        mined = f_mined.result() if f_mined is not None else None
        seen_before = set(known)
        mine = self._mine(state.book.accounts)
        new = [a for a in mine if a not in seen_before]
        if new:  # opened in this block: scanned too, a price may have fallen in the same block
            statuses = statuses + self._scan(new, number)
        self.metrics.track(len(mine))
        for a in [a for a, until in state.backoff.items() if until <= number]:
            del state.backoff[a]
        scanned_ms = 1000 * (time.monotonic() - self._t0)

        busy = {_lower(a) for a in self.sender.in_flight(mined)}
        snaps_all = [Snapshot.from_status(s, self._mmr_of(s.account)) for s in statuses]
        free = [
            s for s in snaps_all if _lower(s.account) not in busy and s.account not in state.backoff
        ]
        kept, held = held_by_window(free, now, state.book.markets, state.window_full_until)
        state.held_window = len(held)
        self._mark_eligible(kept, number, now)
        decision = decide(kept, now, self.costs, max_batch=self.config.max_batch)
        self._mark_worth(decision, number)
        free_costs = replace(self.costs, gas_price=0)
        due_next = frozenset(
            s.account
            for s in kept
            if s.account in set(decision.liquidated) and not can_liquidate(s, timestamp, free_costs)
        )
        first = self._send(decision, number, gas_limit, due_next, mined)
        if first is not None:
            after = f", {1000 * (first - seen):.0f} ms after the head was seen" if seen else ""
            logger.info(
                f"block {number}: scanned {len(statuses)} accounts in {scanned_ms:.0f} ms,"
                f" sent in {1000 * (first - self._t0):.0f} ms{after};"
                f" all {len(decision.margin_calls) + len(decision.liquidations)} batches in"
                f" {1000 * (time.monotonic() - self._t0):.0f} ms"
                f" (head timestamp {timestamp}, decided for {now})"
            )

        # the rest does not hold up the first transaction
        self._wanted = self._worth_sending(snaps_all, now)
        if mined is not None:  # else nothing was pending before this block's sends
            self._collect(number, mined)
        if self.config.clear_calls:
            self._clear_recovered(statuses, number, busy, gas_limit)
        self.sender.unstick(number, self._still_useful, mined)
        state.last_scanned = number
        if decision.calls or decision.liquidated or number % self.config.log_every == 0:
            self._log_summary(number, decision)
        self.write_metrics()
        return decision

    def _mark_eligible(self, snaps: list[Snapshot], number: int, now: int) -> None:
        """First block after which each account was seen actionable (for the delay metric);
        ignores profit."""
        free = replace(self.costs, gas_price=0)
        actionable = set()
        for s in snaps:
            if can_liquidate(s, now, free) or can_call(s, free):
                actionable.add(s.account)
                self.state.eligible_since.setdefault(s.account, number)
        self._actionable = actionable
        in_flight = self.sender.in_flight()
        for a in [a for a in self.state.eligible_since if a not in actionable]:
            if a not in in_flight:
                del self.state.eligible_since[a]

    def _mark_worth(self, decision: Decision, number: int) -> None:
        """First block after which each eligible account was also worth its gas (it is in
        the decision); eligible accounts left out were declined as unprofitable."""
        chosen = set(decision.calls) | set(decision.liquidated)
        for a in chosen:
            self.state.worth_since.setdefault(a, number)
        self.metrics.declined += len(self._actionable - chosen)
        in_flight = self.sender.in_flight()
        for a in [a for a in self.state.worth_since if a not in self._actionable]:
            if a not in in_flight:
                del self.state.worth_since[a]

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
        return any(_lower(a) in self._wanted for a in tx.accounts)

    def _send(
        self,
        decision: Decision,
        number: int,
        gas_limit: int | None = None,
        due_next: frozenset[str] = frozenset(),
        mined: int | None = None,
    ) -> float | None:
        """All batches of the block at once (gas estimated concurrently), most urgent first.
        `gas_limit`: block `number`'s (read from the node when not given). `due_next`: the
        accounts liquidatable at the next block's timestamp but not at the head's. Returns
        when the first transaction went out (monotonic), or None."""
        calls = [
            (self.engine.liquidate_many, (list(batch),), "liquidate_many", batch)
            for batch in decision.liquidations
        ] + [
            (self.engine.margin_call_many, (list(batch),), "margin_call_many", batch)
            for batch in decision.margin_calls
        ]
        if not calls:
            return None
        if gas_limit is None:
            gas_limit = self._block_gas_limit(number)
        first: float | None = None
        deferred = 0
        while calls:
            # the estimate runs at the head's timestamp, where a tranche due only at the next
            # block's is skipped: count `DUE_NEXT_GAS` for each of those
            extra = [
                DUE_NEXT_GAS * sum(1 for a in batch if a in due_next) for _, _, _, batch in calls
            ]
            results = self.sender.send_many(
                calls,
                number,
                gas_budget=gas_limit,
                tx_gas_cap=self.config.tx_gas_cap,
                extra_gas=extra,
                mined=mined,
            )
            halves = []
            for (method, _, label, batch), tx in zip(calls, results, strict=True):
                if isinstance(tx, Deferred):
                    deferred += len(batch)
                    continue
                if isinstance(tx, TooLarge):
                    if len(batch) > 1:
                        logger.info(f"block {number}: {tx}; sent as two batches")
                        mid = (len(batch) + 1) // 2
                        halves += [
                            (method, (list(b),), label, b) for b in (batch[:mid], batch[mid:])
                        ]
                    else:  # nothing smaller to send: not an RPC error, and not every block
                        self.state.too_large += 1
                        self.state.backoff[batch[0]] = number + TOO_LARGE_BACKOFF
                        logger.warning(
                            f"block {number}: {label} for {batch[0]} alone does not fit in one"
                            f" transaction ({tx}); retried in {TOO_LARGE_BACKOFF} blocks"
                        )
                    continue
                if isinstance(tx, Exception):
                    self.state.rpc_errors += 1
                    logger.error(
                        f"block {number}: {label} for {len(batch)} accounts not sent: {tx}"
                    )
                    continue
                if first is None:
                    first = time.monotonic()
                if label == "liquidate_many":
                    self.metrics.tranches_sent += len(batch)
                else:
                    self.metrics.calls_sent += len(batch)
                logger.info(
                    f"block {number}: sent {label} for {len(batch)} accounts"
                    f" ({tx.txn_hash[:10]}, nonce {tx.nonce},"
                    f" {1000 * (time.monotonic() - self._t0):.0f} ms into the block)"
                )
            calls = halves
        if deferred:
            logger.info(f"block {number}: {deferred} accounts wait for the next block (gas limit)")
        return first

    def _block_gas_limit(self, number: int) -> int | None:
        try:
            return int(self.provider.web3.eth.get_block(number)["gasLimit"])
        except Exception:  # noqa: BLE001 - no budget rather than no keeper
            return None

    def _clear_recovered(
        self, statuses: list[Any], number: int, busy: set[str], gas_limit: int | None
    ) -> None:
        """`clear_margin_call` for recovered accounts (HEALTHY with a call still recorded),
        at most `max_clears` per block, estimated at once and sent after the batches."""
        todo = [
            s.account
            for s in statuses
            if s.priced
            and s.state == State.HEALTHY
            and s.call_deadline
            and s.ratio >= self.call_ratio
            and _lower(s.account) not in busy
        ][: self.config.max_clears]
        if not todo:
            return
        calls = [(self.engine.clear_margin_call, (a,), "clear_margin_call", (a,)) for a in todo]
        results = self.sender.send_many(
            calls, number, gas_budget=gas_limit, tx_gas_cap=self.config.tx_gas_cap
        )
        for account, tx in zip(todo, results, strict=True):
            if isinstance(tx, Exception):  # e.g. the price moved since the scan; next block
                logger.warning(f"block {number}: clear_margin_call({account}) not sent: {tx}")
                continue
            self.state.clears_sent += 1

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
            reward = sum(ev.field(log, "reward") for log in made)
            self.metrics.calls_made += len(made)
        else:
            ev = self._raw["Liquidation"]
            made = [log for log in ev.select(logs, self._engine) if self._by_me(ev, log, "keeper")]
            reward = sum(ev.field(log, "keeper_reward") for log in made)
            paid = self._raw["KeeperPaid"]
            reward += sum(
                paid.field(log, "amount")
                for log in paid.select(logs, self._fund)
                if self._by_me(paid, log, "keeper")
            )
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
        raw = self.provider.web3.eth.get_logs(
            {"address": self._engine, "fromBlock": max(block - 1, 0), "toBlock": block}
        )
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
                preview = self.client.lens.preview_liquidation(account, block_id=block)
            except Exception:  # noqa: BLE001 - e.g. an invalid price: not a window matter
                continue
            if int(preview.reason) != REASON_WINDOW_FULL:
                continue
            out.add(_lower(account))
            for m in self.state.book.markets.get(account, ()):
                if m in self.state.window_full_until:
                    continue
                start, used = self.engine.window_state(m, block_id=block)
                cap = int(self.engine.markets(m, block_id=block).window_cap)
                until = window_reopens(int(start), int(used), cap, self.liquidation_window)
                if until is not None:
                    self.state.window_full_until[m] = until
                    logger.warning(
                        f"block {block}: market {m}'s liquidation window is full until {until};"
                        " its non-critical tranches wait"
                    )
        return out

    # --- reporting ---

    def snapshot(self) -> dict[str, Any]:
        out = self.metrics.as_dict()
        out.update(
            keeper=self.sender.address,
            shard=f"{self.config.shard_index}/{self.config.shard_count}",
            block=self.state.last_scanned,
            delays=list(self.metrics.delays),
            paid_delays=list(self.metrics.paid_delays),
            gas_spent=self.sender.gas_spent,
            fees_paid_wei=self.sender.fees_paid,
            pending=len(self.sender.pending),
            replacements=self.sender.replacements,
            cancels=self.sender.cancels,
            rpc_errors=self.state.rpc_errors,
            clears_sent=self.state.clears_sent,
            clears_made=self.state.clears_made,
            too_large=self.state.too_large,
            held_window=self.state.held_window,
            block_interval_s=self.clock.interval(),
            uptime_s=round(time.time() - self.state.started_at, 1),
        )
        return out

    def write_metrics(self) -> None:
        path = self.config.metrics_path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.snapshot(), indent=1) + "\n")
        tmp.replace(path)

    def _log_summary(self, number: int, decision: Decision) -> None:
        m = self.metrics
        logger.info(
            f"block {number}: tracking {m.accounts_tracked};"
            f" this block {len(decision.calls)} calls,"
            f" {len(decision.liquidated)} tranches; total calls {m.calls_made}/{m.calls_sent},"
            f" tranches {m.tranches_made}/{m.tranches_sent}, races lost {m.races_lost},"
            f" skipped (recovered) {m.skipped_recovered}, skipped (window) {m.skipped_window},"
            f" rewards {m.rewards_earned} token units, max delay {m.max_delay} blocks"
        )


__all__ = ["ConfigError", "Keeper", "KeeperConfig", "KeeperState", "parse_shard"]
