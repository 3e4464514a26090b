"""The keeper: tracks accounts from events, scans every block, calls and liquidates.

`bots/keeper.py` (Silverback) is a thin shell around `Keeper`; the demo and
the tests run that bot as a real process. Decisions are the pure functions
of `margincall.keeper_logic`; this module does the I/O around them:

1. at start, rebuild the set of accounts with open positions from the
   engine's `PositionChanged` logs since the deployment block (one
   `eth_getLogs` per chunk of blocks);
2. on every block: read the new logs (same rule, so a restart or a skipped
   block never loses an account), collect the receipts of its own
   transactions (calls and tranches made, races lost, rewards, delays),
   scan its shard of accounts with the batched `check_margins`, decide,
   and send `margin_call_many` / `liquidate_many` batches without waiting,
   one nonce after the other (`margincall.tx.TxSender`);
3. optionally clear recorded margin calls of accounts that recovered
   (`clear_margin_call`, no reward: it protects traders from the call
   record gap described in docs/design.md);
4. write its metrics to a JSON file after every block.

Every price update lands in a block, and every block is scanned, so an
oracle update is acted on in the block after it: the keeper reads prices
through the engine (the adapters read the feeds), never from a cache.

Errors: an RPC error inside a block is logged and counted, and the block is
retried on the next poll (`ResilientRunner`); a transaction the engine
skips for an account (a rival was first) is a lost race, counted, never
fatal.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ape.logging import logger

from margincall.constants import MAX_BATCH, MAX_SCAN, TX_GAS_CAP, WAD, State
from margincall.keeper_logic import (
    CostModel,
    Decision,
    Metrics,
    PositionBook,
    Snapshot,
    can_call,
    can_liquidate,
    decide,
    shard,
)
from margincall.logs import RawEvent
from margincall.tx import Deferred, Mined, TooLarge, TxSender

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
    gas_per_call: int = 80_000  # per account in margin_call_many (profit rule only)
    gas_per_tranche: int = 250_000  # per account in liquidate_many (profit rule only)
    max_batch: int = MAX_BATCH
    scan_chunk: int = MAX_SCAN
    clear_calls: bool = True
    metrics_path: Path | None = None
    stale_blocks: int = 20
    log_every: int = 50  # blocks between summary lines
    tx_gas_cap: int = TX_GAS_CAP  # a batch over it is split in halves (EIP-7825)

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
            gas_per_call=_int(env, "MARGINCALL_GAS_PER_CALL", 80_000, 0),
            gas_per_tranche=_int(env, "MARGINCALL_GAS_PER_TRANCHE", 250_000, 0),
            max_batch=_int(env, "MARGINCALL_MAX_BATCH", MAX_BATCH, 1, MAX_BATCH),
            scan_chunk=_int(env, "MARGINCALL_SCAN_CHUNK", MAX_SCAN, 1, MAX_SCAN),
            clear_calls=clear in ("1", "true", "yes"),
            metrics_path=Path(metrics) if metrics else None,
            stale_blocks=_int(env, "MARGINCALL_STALE_BLOCKS", 20, 1),
            log_every=_int(env, "MARGINCALL_LOG_EVERY", 50, 1),
            tx_gas_cap=_int(env, "MARGINCALL_TX_GAS_CAP", TX_GAS_CAP, 100_000),
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
            "MARGINCALL_MAX_BATCH": str(self.max_batch),
            "MARGINCALL_SCAN_CHUNK": str(self.scan_chunk),
            "MARGINCALL_CLEAR_CALLS": "1" if self.clear_calls else "0",
            "MARGINCALL_STALE_BLOCKS": str(self.stale_blocks),
            "MARGINCALL_LOG_EVERY": str(self.log_every),
            "MARGINCALL_TX_GAS_CAP": str(self.tx_gas_cap),
        }
        if self.metrics_path is not None:
            env["MARGINCALL_KEEPER_METRICS"] = str(self.metrics_path)
        return env

    def wei_per_token_unit(self, decimals: int) -> Decimal:
        return self.native_per_token * Decimal(10**18) / Decimal(10**decimals)


# --- keeper -------------------------------------------------------------------


@dataclass
class KeeperState:
    """What the keeper remembers between blocks (rebuilt from logs on restart)."""

    book: PositionBook = field(default_factory=PositionBook)
    cursor: int = -1  # last block whose logs are applied
    eligible_since: dict[str, int] = field(default_factory=dict)  # account -> first block seen
    last_scanned: int = -1
    rpc_errors: int = 0
    gas_spent: int = 0
    clears_sent: int = 0
    clears_made: int = 0
    started_at: float = field(default_factory=time.time)


def _lower(address: Any) -> str:
    return str(address).lower()


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
        self._t0 = time.monotonic()
        params = client.risk_params()
        decimals = int(record.collateral_decimals)
        self.rate = config.wei_per_token_unit(decimals)
        self.costs = CostModel(
            gas_price=0,
            gas_per_call=config.gas_per_call,
            gas_per_tranche=config.gas_per_tranche,
            call_reward=self._to_wei(self._tokens(params.call_reward, decimals)),
            tranche_reward=self._to_wei(self._tokens(params.min_keeper_reward, decimals)),
            margin_bps=config.margin_bps,
        )
        self.call_ratio = int(params.call_ratio)
        self._events = {
            name: getattr(self.engine, name).abi
            for name in ("PositionChanged", "MarginCall", "Liquidation")
        }
        self._raw = {name: RawEvent(abi) for name, abi in self._events.items()}
        self._raw["KeeperPaid"] = RawEvent(fund.KeeperPaid.abi)
        self._engine = str(self.engine.address)
        self._fund = str(fund.address)
        self._me = _lower(sender.address)

    # --- units ---

    @staticmethod
    def _tokens(wad: int, decimals: int) -> int:
        return int(wad) * 10**decimals // WAD

    def _to_wei(self, token_units: int) -> int:
        return int(Decimal(token_units) * self.rate)

    # --- startup ---

    def start(self) -> None:
        """Rebuilds the account book from the engine's logs since its deployment, then scans."""
        head = int(self.provider.get_block("latest").number)
        t0 = time.monotonic()
        n = self._ingest(int(self.record.block), head)
        self.metrics.track(len(self._mine(self.state.book.accounts)))
        logger.success(
            f"keeper {self.sender.address}"
            f" shard {self.config.shard_index}/{self.config.shard_count}:"
            f" {len(self.state.book)} accounts with open positions from {n} PositionChanged logs"
            f" (blocks {self.record.block}..{head}, {time.monotonic() - t0:.2f} s);"
            f" {self.metrics.accounts_tracked} in this shard"
        )
        # a first scan at once: eligible accounts are acted on without waiting for a block,
        # and every code path is warm before the first block arrives
        latest = self.provider.get_block("latest")
        self.on_block(int(latest.number), int(latest.timestamp))

    # --- logs ---

    def _logs(self, start: int, stop: int) -> Iterable[Any]:
        """The engine's raw `PositionChanged` logs of blocks start..stop."""
        topic = "0x" + self._raw["PositionChanged"].topic0.hex()
        for lo in range(start, stop + 1, LOG_CHUNK):
            hi = min(stop, lo + LOG_CHUNK - 1)
            yield from self.provider.web3.eth.get_logs(
                {"address": self._engine, "fromBlock": lo, "toBlock": hi, "topics": [topic]}
            )

    def _ingest(self, start: int, stop: int) -> int:
        """Applies PositionChanged logs of blocks start..stop; returns how many."""
        if stop < start:
            return 0
        ev = self._raw["PositionChanged"]
        n = 0
        for log in self._logs(start, stop):
            self.state.book.apply(
                {
                    "account": ev.field(log, "account"),
                    "market_id": ev.field(log, "market_id"),
                    "size": ev.field(log, "size"),
                }
            )
            n += 1
        self.state.cursor = stop
        return n

    def _mine(self, accounts: list[str]) -> list[str]:
        """This keeper's shard of `accounts`."""
        if self.config.shard_count == 1:
            return accounts
        return shard(accounts, self.config.shard_index, self.config.shard_count)

    # --- block ---

    def on_block(self, number: int, timestamp: int) -> Decision | None:
        """Everything the keeper does for one block; raises on RPC errors (the bot retries)."""
        state = self.state
        if number <= state.last_scanned:
            return None
        self._t0 = time.monotonic()
        self._ingest(state.cursor + 1, number)
        self._collect(number)
        self.costs = replace(self.costs, gas_price=int(self.provider.web3.eth.gas_price))
        busy = {_lower(a) for a in self.sender.in_flight()}
        accounts = [a for a in self._mine(state.book.accounts) if _lower(a) not in busy]
        self.metrics.track(len(self._mine(state.book.accounts)))
        statuses = (
            self.client.statuses(accounts, chunk=self.config.scan_chunk, block_id=number)
            if accounts
            else []
        )
        scanned_ms = 1000 * (time.monotonic() - self._t0)
        snaps = [Snapshot.from_status(s) for s in statuses]
        self._mark_eligible(snaps, number, timestamp)
        decision = decide(snaps, timestamp, self.costs, max_batch=self.config.max_batch)
        self._send(decision, number)
        if self.config.clear_calls:
            self._clear_recovered(statuses, number)
        state.last_scanned = number
        if decision.calls or decision.liquidated:
            logger.info(
                f"block {number}: scanned {len(statuses)} accounts in {scanned_ms:.0f} ms,"
                f" sent in {1000 * (time.monotonic() - self._t0):.0f} ms"
            )
        if decision.calls or decision.liquidated or number % self.config.log_every == 0:
            self._log_summary(number, decision)
        self.write_metrics()
        return decision

    def _mark_eligible(self, snaps: list[Snapshot], number: int, now: int) -> None:
        """First block each account was seen actionable (for the delay metric); ignores profit."""
        free = replace(self.costs, gas_price=0)
        actionable = set()
        for s in snaps:
            if can_liquidate(s, now, free) or can_call(s, free):
                actionable.add(s.account)
                self.state.eligible_since.setdefault(s.account, number)
        for a in [a for a in self.state.eligible_since if a not in actionable]:
            if a not in self.sender.in_flight():
                del self.state.eligible_since[a]

    def _send(self, decision: Decision, number: int) -> None:
        """All batches of the block at once (gas estimated concurrently), most urgent first."""
        calls = [
            (self.engine.liquidate_many, (list(batch),), "liquidate_many", batch)
            for batch in decision.liquidations
        ] + [
            (self.engine.margin_call_many, (list(batch),), "margin_call_many", batch)
            for batch in decision.margin_calls
        ]
        if not calls:
            return
        budget = self._block_gas_limit(number)
        deferred = 0
        while calls:
            results = self.sender.send_many(
                calls, number, gas_budget=budget, tx_gas_cap=self.config.tx_gas_cap
            )
            halves = []
            for (method, _, label, batch), tx in zip(calls, results, strict=True):
                if isinstance(tx, Deferred):
                    deferred += len(batch)
                    continue
                if isinstance(tx, TooLarge) and len(batch) > 1:
                    logger.info(f"block {number}: {tx}; sent as two batches")
                    mid = (len(batch) + 1) // 2
                    halves += [(method, (list(b),), label, b) for b in (batch[:mid], batch[mid:])]
                    continue
                if isinstance(tx, Exception):
                    self.state.rpc_errors += 1
                    logger.error(
                        f"block {number}: {label} for {len(batch)} accounts not sent: {tx}"
                    )
                    continue
                if label == "liquidate_many":
                    self.metrics.tranches_sent += len(batch)
                else:
                    self.metrics.calls_sent += len(batch)
                logger.info(
                    f"block {number}: sent {label} for {len(batch)} accounts"
                    f" ({tx.txn_hash[:10]}, nonce {tx.nonce},"
                    f" {1000 * (time.monotonic() - self._t0):.0f} ms into the block's scan)"
                )
            calls = halves
        if deferred:
            logger.info(f"block {number}: {deferred} accounts wait for the next block (gas limit)")

    def _block_gas_limit(self, number: int) -> int | None:
        try:
            return int(self.provider.web3.eth.get_block(number)["gasLimit"])
        except Exception:  # noqa: BLE001 - no budget rather than no keeper
            return None

    def _clear_recovered(self, statuses: list[Any], number: int) -> None:
        for s in statuses:
            if not (s.priced and s.state == State.HEALTHY and s.call_deadline):
                continue
            if s.ratio < self.call_ratio:
                continue
            try:
                self.sender.send_call(
                    self.engine.clear_margin_call,
                    (s.account,),
                    "clear_margin_call",
                    (s.account,),
                    number,
                )
            except Exception as err:  # noqa: BLE001 - e.g. the price moved since the scan
                logger.warning(f"block {number}: clear_margin_call({s.account}) not sent: {err}")
                continue
            self.state.clears_sent += 1

    # --- receipts ---

    def _collect(self, number: int) -> None:
        for mined in self.sender.poll(number):
            self._account_for(mined)
        self.state.gas_spent = self.sender.gas_spent

    def _account_for(self, mined: Mined) -> None:
        tx = mined.tx
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
            since = self.state.eligible_since.pop(account, None)
            if since is not None:
                self.metrics.record_delay(since, mined.block)
        skipped = [a for a in tx.accounts if _lower(a) not in done]
        for a in skipped:  # its eligibility, if any, starts again at the next scan
            self.state.eligible_since.pop(a, None)
        if skipped:
            raced = self._acted_by_rivals(skipped, mined.block)
            self.metrics.record_skips(len(raced), len(skipped) - len(raced))
            logger.info(
                f"{tx.label} in block {mined.block}: engine skipped {len(skipped)} of"
                f" {len(tx.accounts)} accounts ({len(raced)} lost races to other keepers,"
                f" {len(skipped) - len(raced)} no longer eligible)"
            )

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

    # --- reporting ---

    def snapshot(self) -> dict[str, Any]:
        out = self.metrics.as_dict()
        out.update(
            keeper=self.sender.address,
            shard=f"{self.config.shard_index}/{self.config.shard_count}",
            block=self.state.last_scanned,
            delays=list(self.metrics.delays),
            gas_spent=self.sender.gas_spent,
            fees_paid_wei=self.sender.fees_paid,
            pending=len(self.sender.pending),
            rpc_errors=self.state.rpc_errors,
            clears_sent=self.state.clears_sent,
            clears_made=self.state.clears_made,
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
            f" skipped (recovered) {m.skipped_recovered},"
            f" rewards {m.rewards_earned} token units, max delay {m.max_delay} blocks"
        )


__all__ = ["ConfigError", "Keeper", "KeeperConfig", "KeeperState", "parse_shard"]
