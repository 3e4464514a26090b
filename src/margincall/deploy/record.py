"""Config-driven deployment and the deployment record (`deployments/<ecosystem>-<network>.json`).

`load_config` reads a YAML deploy config (see `config/deploy-local.yaml`) into a
`DeployConfig`, checking every key and value first, so a typo fails before the
first transaction. `deploy_from_config` deploys and wires the system through
`margincall.deploy.deploy_system` (a mock token or an existing ERC-20, pool,
fund, engine), then sets the risk parameters, the reserve factor and the
markets (mock feeds or existing Chainlink feeds, with an optional fallback feed
and L2 sequencer-uptime feed), optionally starts the two-step ownership
transfer to the protocol's owner (a multisig), and returns a
`DeploymentRecord`: addresses, parameters as the contracts report them, blocks,
chain id and deployer. `write_record` refuses to overwrite a record unless
`force`.

Units in the config are human ones: ratios and fractions as decimals
(`imr: "0.10"` is 10%), prices and notionals in collateral units
(`price: "2000"`), durations in seconds; the record holds the raw integers the
contracts use (wad for ratios, prices and notionals).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from margincall.deploy.config import (
    DEFAULT_CONFIG,
    ConfigError,
    DeployConfig,
    MarketConfig,
    load_config,
    preflight,
    to_wad,
)
from margincall.deploy.system import ZERO, add_market, deploy_system
from margincall.math import RiskParams

RECORD_VERSION = 1
DEFAULT_DIR = Path("deployments")


# risk parameters in seconds; every other one is a wad (decimal in the config)
class RecordError(Exception):
    """A deployment record cannot be written or used."""


class RecordExists(RecordError):
    """A record already exists at the path and `force` was not given."""


# --- record ------------------------------------------------------------------


@dataclass(frozen=True)
class MarketRecord:
    market_id: int
    name: str
    oracle: str
    feed: str
    mock_feed: bool
    feed_decimals: int
    heartbeat: int
    min_price: int
    max_price: int
    imr: int
    mmr: int
    fee: int
    window_cap: int
    fallback_feed: str = ZERO  # the adapter's settings (ZERO: none)
    fallback_heartbeat: int = 0
    sequencer_feed: str = ZERO
    sequencer_grace: int = 0


@dataclass(frozen=True)
class DeploymentRecord:
    """What `ape run deploy` writes and the CLI reads."""

    network: str  # ecosystem:network:provider
    chain_id: int
    deployer: str
    block: int  # the engine's creation block: scan its events from here
    end_block: int  # the last block of the deployment
    token: str
    pool: str
    fund: str
    engine: str
    guardian: str
    reserve_factor: int
    collateral_decimals: int
    collateral_mock: bool
    risk_params: dict[str, int]
    markets: tuple[MarketRecord, ...] = ()
    config: str = ""
    version: int = RECORD_VERSION
    pending_owner: str = ZERO  # set when the deploy started an ownership hand-over
    order_book: str = ZERO  # the OrderBook (ZERO in records written before orders)
    lens: str = ZERO  # the MarginLens: check_margins, preview_liquidation (tools find it here)
    settlement_fee: int = 0  # the book's fee per order, token units (0 in older records)
    max_order_window: int = 0  # seconds an order may wait for its round (0 in older records)

    # --- lookups ---

    def market_id(self, market: str | int) -> int:
        """A market by name (case-insensitive) or id; `KeyError` with the known names."""
        text = str(market).strip()
        for m in self.markets:
            if m.name.lower() == text.lower() or (text.isdigit() and int(text) == m.market_id):
                return m.market_id
        known = ", ".join(f"{m.name} ({m.market_id})" for m in self.markets)
        raise KeyError(f"unknown market {market!r}; known: {known}")

    def market_name(self, market_id: int) -> str:
        for m in self.markets:
            if m.market_id == market_id:
                return m.name
        return f"market {market_id}"

    # --- contracts ---

    def contracts(self, project: Any) -> dict[str, Any]:
        """Ape contract instances of the record's addresses, from the project's types."""
        return {
            "token": project.MockERC20.at(self.token),
            "pool": project.LiquidityPool.at(self.pool),
            "fund": project.InsuranceFund.at(self.fund),
            "engine": project.MarginEngine.at(self.engine),
            "book": project.OrderBook.at(self.order_book) if self.order_book != ZERO else None,
            "lens": project.MarginLens.at(self.lens) if self.lens != ZERO else None,
            "oracles": [project.OracleAdapter.at(m.oracle) for m in self.markets],
        }

    def client(self, project: Any) -> Any:
        """A `MarginEngineClient` over the recorded system."""
        from margincall.sdk import MarginEngineClient

        c = self.contracts(project)
        return MarginEngineClient(c["engine"], c["token"], c["oracles"], c["lens"])

    # --- json ---

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["markets"] = [asdict(m) for m in self.markets]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeploymentRecord:
        try:
            markets = tuple(MarketRecord(**m) for m in data["markets"])
            return cls(**{**data, "markets": markets})
        except (KeyError, TypeError) as err:
            raise RecordError(f"malformed deployment record ({err})") from None


def record_path(network: str, directory: str | Path = DEFAULT_DIR) -> Path:
    """`deployments/<ecosystem>-<network>.json` for `ecosystem:network[:provider]`."""
    parts = network.split(":")
    name = "-".join(parts[:2]) if len(parts) >= 2 else parts[0]
    return Path(directory) / f"{name}.json"


def check_writable(path: str | Path, force: bool = False) -> None:
    """Raises `RecordExists` if `path` exists and not `force`."""
    path = Path(path)
    if path.exists() and not force:
        raise RecordExists(
            f"{path} already exists (a system is recorded there); "
            "pass --force to overwrite it or --output to write elsewhere"
        )


def write_record(record: DeploymentRecord, path: str | Path, force: bool = False) -> Path:
    """Writes the record as JSON; refuses to overwrite unless `force`."""
    path = Path(path)
    check_writable(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record.to_json(), indent=2) + "\n")
    tmp.replace(path)
    return path


def read_record(path: str | Path) -> DeploymentRecord:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecordError(f"{path}: no deployment record (run `ape run deploy` first)") from None
    except (OSError, json.JSONDecodeError) as err:
        raise RecordError(f"{path}: unreadable deployment record ({err})") from None
    return DeploymentRecord.from_json(data)


# --- deploy ------------------------------------------------------------------


@dataclass
class _Address:
    """Anything with an `.address`, as `deploy_system` expects of the guardian."""

    address: str


@dataclass
class Deployed:
    """The deployed `System` (mock markets only in `system.feeds`) and its record."""

    system: Any
    record: DeploymentRecord
    feeds: list[Any] = field(default_factory=list)


def deploy_from_config(
    project: Any, deployer: Any, config: DeployConfig, network: str, chain: Any
) -> Deployed:
    """Deploys and configures the system described by `config` from `deployer`.

    The core (token, pool, fund, engine, wiring) comes from `deploy_system`
    with no market; the risk parameters are set next (markets are checked
    against them), then the reserve factor, then each market's feed (mock or
    existing), adapter and `set_market`.
    """
    guardian = _Address(config.guardian) if config.guardian else None
    first_block = int(chain.blocks.head.number) + 1
    system = deploy_system(
        project,
        deployer,
        guardian,
        decimals=config.decimals,
        markets=(),
        token=config.token,
        settlement_fee_micro=config.settlement_fee_micro,
        max_order_window=config.max_order_window,
    )
    engine, pool = system.engine, system.pool
    if config.risk is not None:
        engine.set_risk_params(config.risk.as_tuple(), sender=deployer)
    if config.reserve_factor is not None and config.reserve_factor != int(pool.reserve_factor()):
        pool.set_reserve_factor(config.reserve_factor, sender=deployer)

    feeds = []
    for m in config.markets:
        spec = replace(
            m.spec(), sequencer_feed=config.sequencer_feed, sequencer_grace=config.sequencer_grace
        )
        feed_address, _ = add_market(
            system,
            spec,
            feed=None if m.mock else m.feed,
            answer=int(Decimal(m.price) * 10**m.feed_decimals) if m.mock else None,
            sender=deployer,
        )
        feeds.append((str(feed_address), m.mock))
    system.markets = tuple(m.spec() for m in config.markets)
    if config.owner is not None and config.owner != str(deployer.address):
        # two steps (snekmate ownable_2step): nothing changes hands until the new owner
        # calls `accept_ownership` on each of the four contracts
        for contract in (engine, pool, system.fund, system.book):
            contract.transfer_ownership(config.owner, sender=deployer)
    record = record_of(
        system,
        network,
        chain,
        deployer,
        feeds=feeds,
        first_block=first_block,
        config=config.source,
        collateral_mock=config.token is None,
    )
    return Deployed(system, record, system.feeds)


def record_of(
    system: Any,
    network: str,
    chain: Any,
    deployer: Any,
    feeds: list[tuple[str, bool]] | None = None,
    first_block: int = 0,
    config: str = "",
    collateral_mock: bool = True,
) -> DeploymentRecord:
    """The deployment record of a deployed `System`, read back from the chain.

    `feeds` gives each market's feed address and whether it is a mock (default: the
    system's mock feeds); market names come from `system.markets`. The record's `block`
    is the engine's creation block when Ape knows it, else `first_block`.
    """
    engine, pool, project = system.engine, system.pool, system.project
    if feeds is None:
        feeds = [(str(f.address), True) for f in system.feeds]
    records = []
    for market_id, ((feed, mock), spec) in enumerate(zip(feeds, system.markets, strict=True)):
        oracle = system.oracles[market_id]
        on_chain = engine.markets(market_id)
        records.append(
            MarketRecord(
                market_id=market_id,
                name=spec.name,
                oracle=str(oracle.address),
                feed=feed,
                mock_feed=mock,
                feed_decimals=spec.feed_decimals
                if mock
                else int(project.MockAggregator.at(feed).decimals()),
                heartbeat=int(oracle.primary_heartbeat()),
                min_price=int(oracle.min_price()),
                max_price=int(oracle.max_price()),
                imr=int(on_chain.imr),
                mmr=int(on_chain.mmr),
                fee=int(on_chain.fee),
                window_cap=int(on_chain.window_cap),
                fallback_feed=str(oracle.fallback()),
                fallback_heartbeat=int(oracle.fallback_heartbeat()),
                sequencer_feed=str(oracle.sequencer()),
                sequencer_grace=int(oracle.sequencer_grace()),
            )
        )
    params = engine.risk_params()
    block = first_block
    if getattr(engine, "txn_hash", None):  # set by `deploy`; no trace or explorer query needed
        block = int(chain.provider.get_receipt(engine.txn_hash).block_number)
    return DeploymentRecord(
        network=network,
        chain_id=int(chain.chain_id),
        deployer=str(deployer.address),
        block=block,
        end_block=int(chain.blocks.head.number),
        token=str(system.token.address),
        pool=str(pool.address),
        fund=str(system.fund.address),
        engine=str(engine.address),
        guardian=str(engine.guardian()),
        reserve_factor=int(pool.reserve_factor()),
        collateral_decimals=int(system.token.decimals()),
        collateral_mock=collateral_mock,
        risk_params={f.name: int(getattr(params, f.name)) for f in fields(RiskParams)},
        markets=tuple(records),
        config=config,
        pending_owner=str(engine.pending_owner()),
        order_book=str(system.book.address) if system.book is not None else ZERO,
        lens=str(system.lens.address) if system.lens is not None else ZERO,
        settlement_fee=int(system.book.settlement_fee()) if system.book is not None else 0,
        max_order_window=int(system.book.max_window()) if system.book is not None else 0,
    )


__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_DIR",
    "ConfigError",
    "DeployConfig",
    "Deployed",
    "DeploymentRecord",
    "MarketConfig",
    "MarketRecord",
    "RecordError",
    "RecordExists",
    "check_writable",
    "deploy_from_config",
    "load_config",
    "preflight",
    "read_record",
    "record_of",
    "record_path",
    "to_wad",
    "write_record",
]
