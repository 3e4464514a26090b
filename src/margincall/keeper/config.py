"""The keeper's settings (`KeeperConfig`), from `MARGINCALL_*` environment variables, and the
cost model they give (`KeeperConfig.cost_model`): the one the bot and the simulator use.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from margincall.constants import MAX_BATCH, MAX_SCAN, TX_GAS_CAP, WAD
from margincall.keeper.logic import (
    GAS_EXTRA_MARKET,
    GAS_PER_CALL,
    GAS_PER_TRANCHE,
    CostModel,
    RewardModel,
)
from margincall.math import RiskParams


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
    # claim the accrued rewards once they reach this many whole tokens (0: never)
    claim_at: int = 100

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
            claim_at=_int(env, "MARGINCALL_CLAIM_AT", 100, 0),
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
            "MARGINCALL_CLAIM_AT": str(self.claim_at),
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
        the collateral's decimals (`keeper.logic.RewardModel`). The flat rewards (for
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
