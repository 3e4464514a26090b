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
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from margincall.constants import MAX_MARKETS, WAD
from margincall.deploy.system import ZERO, MarketSpec, add_market, deploy_system
from margincall.math import RiskParams

RECORD_VERSION = 1
DEFAULT_CONFIG = Path("config/deploy-local.yaml")
DEFAULT_DIR = Path("deployments")

# risk parameters in seconds; every other one is a wad (decimal in the config)
SECONDS_PARAMS = frozenset({"grace_period", "tranche_interval", "liquidation_window"})


class ConfigError(ValueError):
    """The deploy config is malformed (unknown key, bad value, missing field)."""


class RecordError(Exception):
    """A deployment record cannot be written or used."""


class RecordExists(RecordError):
    """A record already exists at the path and `force` was not given."""


# --- config ------------------------------------------------------------------


def to_wad(value: Any, what: str) -> int:
    """A decimal (number or string, e.g. `"0.10"`, `2000`) as a wad integer, exactly."""
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"{what}: expected a number, got {value!r}")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(f"{what}: expected a number, got {value!r}") from None
    scaled = d * WAD
    if not d.is_finite() or scaled != scaled.to_integral_value():
        raise ConfigError(f"{what}: {value!r} has more than 18 decimals")
    if scaled < 0:
        raise ConfigError(f"{what}: must not be negative, got {value!r}")
    return int(scaled)


def to_int(value: Any, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{what}: expected an integer >= {minimum}, got {value!r}")
    return value


def to_address(value: Any, what: str) -> str:
    from eth_utils import is_address, to_checksum_address

    if not isinstance(value, str) or not is_address(value):
        raise ConfigError(f"{what}: expected an address, got {value!r}")
    return to_checksum_address(value)


def _keys(section: Mapping[str, Any], allowed: set[str], what: str) -> None:
    if not isinstance(section, Mapping):
        raise ConfigError(f"{what}: expected a mapping, got {type(section).__name__}")
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ConfigError(f"{what}: unknown key(s) {', '.join(unknown)}")


@dataclass(frozen=True)
class MarketConfig:
    """One market of the config; `feed` is None for a mock feed (then `price` is set)."""

    name: str
    feed: str | None
    feed_decimals: int
    price: str | None  # starting mock price (decimal string, collateral per base unit)
    heartbeat: int
    min_price: int  # wad
    max_price: int  # wad
    imr: int  # wad
    mmr: int  # wad
    fee: int  # wad
    window_cap: int  # wad notional
    fallback_feed: str | None = None  # used while the primary is invalid
    fallback_heartbeat: int = 0

    @property
    def mock(self) -> bool:
        return self.feed is None

    def spec(self) -> MarketSpec:
        """As a `margincall.deploy.MarketSpec` (for `System.set_price` on mock feeds)."""
        return MarketSpec(
            self.name,
            float(self.price or 0),
            feed_decimals=self.feed_decimals,
            imr=self.imr,
            mmr=self.mmr,
            fee=self.fee,
            window_cap=self.window_cap,
            heartbeat=self.heartbeat,
            min_price=self.min_price,
            max_price=self.max_price,
            fallback_feed=self.fallback_feed,
            fallback_heartbeat=self.fallback_heartbeat,
        )

    @classmethod
    def parse(cls, raw: Mapping[str, Any], index: int) -> MarketConfig:
        allowed = {
            "name",
            "feed",
            "feed_decimals",
            "price",
            "heartbeat",
            "min_price",
            "max_price",
            "imr",
            "mmr",
            "fee",
            "window_cap",
            "fallback_feed",
            "fallback_heartbeat",
        }
        what = f"markets[{index}]"
        _keys(raw, allowed, what)
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{what}.name: expected a non-empty string")
        what = f"market {name}"
        missing = sorted({"feed", "heartbeat", "imr", "mmr", "fee"} - set(raw))
        if missing:
            raise ConfigError(f"{what}: missing {', '.join(missing)}")
        feed_raw = raw["feed"]
        if feed_raw == "mock":
            feed = None
            if "price" not in raw:
                raise ConfigError(f"{what}: a mock feed needs an initial price")
            price = str(raw["price"])
            if to_wad(price, f"{what}.price") == 0:
                raise ConfigError(f"{what}.price: must be positive")
            decimals = to_int(raw.get("feed_decimals", 8), f"{what}.feed_decimals")
            if decimals > 18:
                raise ConfigError(f"{what}.feed_decimals: at most 18, got {decimals}")
        else:
            feed = to_address(feed_raw, f"{what}.feed (an address or 'mock')")
            if "price" in raw or "feed_decimals" in raw:
                raise ConfigError(
                    f"{what}: price and feed_decimals are only for feed: mock "
                    "(a real feed reports its own)"
                )
            price, decimals = None, 0
        min_price = to_wad(raw.get("min_price", "0.000000000000000001"), f"{what}.min_price")
        max_price = to_wad(raw.get("max_price", 10**12), f"{what}.max_price")
        if not 0 < min_price < max_price:
            raise ConfigError(f"{what}: need 0 < min_price < max_price")
        if price is not None and not min_price <= to_wad(price, "price") <= max_price:
            raise ConfigError(f"{what}.price: outside [min_price, max_price]")
        fallback, fallback_heartbeat = None, 0
        if raw.get("fallback_feed") is not None:
            fallback = to_address(raw["fallback_feed"], f"{what}.fallback_feed")
            if feed is not None and fallback == feed:
                raise ConfigError(f"{what}.fallback_feed: must differ from the primary feed")
            if "fallback_heartbeat" not in raw:
                raise ConfigError(f"{what}: a fallback feed needs a fallback_heartbeat")
            fallback_heartbeat = to_int(
                raw["fallback_heartbeat"], f"{what}.fallback_heartbeat", minimum=1
            )
        elif "fallback_heartbeat" in raw:
            raise ConfigError(f"{what}: fallback_heartbeat without a fallback_feed")
        imr = to_wad(raw["imr"], f"{what}.imr")
        mmr = to_wad(raw["mmr"], f"{what}.mmr")
        if not 0 < mmr < imr <= WAD:
            raise ConfigError(
                f"{what}: need 0 < mmr < imr <= 1, got mmr {raw['mmr']}, imr {raw['imr']}"
            )
        return cls(
            name=name,
            feed=feed,
            feed_decimals=decimals,
            price=price,
            heartbeat=to_int(raw["heartbeat"], f"{what}.heartbeat", minimum=1),
            min_price=min_price,
            max_price=max_price,
            imr=imr,
            mmr=mmr,
            fee=to_wad(raw["fee"], f"{what}.fee"),
            window_cap=to_wad(raw.get("window_cap", 10**12), f"{what}.window_cap"),
            fallback_feed=fallback,
            fallback_heartbeat=fallback_heartbeat,
        )


@dataclass(frozen=True)
class DeployConfig:
    """A whole deploy config, validated."""

    markets: tuple[MarketConfig, ...]
    risk: RiskParams | None = None  # None: keep the engine's defaults
    guardian: str | None = None  # None: the deployer
    reserve_factor: int | None = None  # wad; None: keep the pool's default
    decimals: int = 18  # of the mock collateral token
    source: str = ""
    token: str | None = None  # an existing ERC-20 as collateral; None: deploy a mock
    sequencer_feed: str | None = None  # L2 sequencer-uptime feed, for every market
    sequencer_grace: int = 0  # seconds after a restart without a valid price
    owner: str | None = None  # hand ownership over (two steps) to this address at the end

    @classmethod
    def parse(cls, raw: Any, source: str = "") -> DeployConfig:
        _keys(
            raw,
            {"collateral", "markets", "risk", "guardian", "reserve_factor", "sequencer", "owner"},
            "config",
        )
        collateral = raw.get("collateral") or {"mock": True}
        _keys(collateral, {"mock", "decimals", "address"}, "collateral")
        token = None
        decimals = 18
        if "address" in collateral:
            if "mock" in collateral or "decimals" in collateral:
                raise ConfigError(
                    "collateral: either address (an existing ERC-20, decimals read on chain)"
                    " or mock/decimals (a MockERC20 deployed), not both"
                )
            token = to_address(collateral["address"], "collateral.address")
        elif collateral.get("mock", True) is not True:
            raise ConfigError("collateral: give the address of an existing ERC-20, or mock: true")
        else:
            decimals = to_int(collateral.get("decimals", 18), "collateral.decimals")
            if decimals > 18:
                raise ConfigError(f"collateral.decimals: at most 18, got {decimals}")

        sequencer_feed, sequencer_grace = None, 0
        if raw.get("sequencer") is not None:
            seq = raw["sequencer"]
            _keys(seq, {"feed", "grace_period"}, "sequencer")
            if "feed" not in seq or "grace_period" not in seq:
                raise ConfigError("sequencer: needs feed and grace_period")
            sequencer_feed = to_address(seq["feed"], "sequencer.feed")
            sequencer_grace = to_int(seq["grace_period"], "sequencer.grace_period")
        owner = raw.get("owner")
        if owner is not None:
            owner = to_address(owner, "owner")

        markets_raw = raw.get("markets")
        if not isinstance(markets_raw, list) or not markets_raw:
            raise ConfigError("markets: expected a non-empty list")
        if len(markets_raw) > MAX_MARKETS:
            raise ConfigError(f"markets: at most {MAX_MARKETS}, got {len(markets_raw)}")
        markets = tuple(MarketConfig.parse(m, i) for i, m in enumerate(markets_raw))
        names = [m.name for m in markets]
        if len(set(names)) != len(names):
            raise ConfigError("markets: duplicate names")

        risk = None
        if raw.get("risk") is not None:
            names_ = {f.name for f in fields(RiskParams)}
            _keys(raw["risk"], names_, "risk")
            values = {}
            for key, value in raw["risk"].items():
                what = f"risk.{key}"
                values[key] = to_int(value, what) if key in SECONDS_PARAMS else to_wad(value, what)
            risk = RiskParams(**values)

        guardian = raw.get("guardian")
        if guardian is not None:
            guardian = to_address(guardian, "guardian")
        reserve = raw.get("reserve_factor")
        if reserve is not None:
            reserve = to_wad(reserve, "reserve_factor")
            if reserve > WAD:
                raise ConfigError("reserve_factor: at most 1")
        return cls(
            markets,
            risk,
            guardian,
            reserve,
            decimals,
            source,
            token=token,
            sequencer_feed=sequencer_feed,
            sequencer_grace=sequencer_grace,
            owner=owner,
        )


def load_config(path: str | Path) -> DeployConfig:
    """Reads and validates a YAML deploy config."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    try:
        return DeployConfig.parse(raw, source=str(path))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def preflight(config: DeployConfig, provider: Any) -> None:
    """Checks the config's existing contracts on the connected chain, before any transaction:
    the collateral token and every real feed must have code. Raises `ConfigError`."""
    wanted: list[tuple[str, str]] = []
    if config.token is not None:
        wanted.append(("collateral.address", config.token))
    if config.sequencer_feed is not None:
        wanted.append(("sequencer.feed", config.sequencer_feed))
    for m in config.markets:
        if m.feed is not None:
            wanted.append((f"market {m.name}.feed", m.feed))
        if m.fallback_feed is not None:
            wanted.append((f"market {m.name}.fallback_feed", m.fallback_feed))
    for what, address in wanted:
        if not provider.get_code(address):
            raise ConfigError(f"{what}: no contract at {address} on this network")


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
            "oracles": [project.OracleAdapter.at(m.oracle) for m in self.markets],
        }

    def client(self, project: Any) -> Any:
        """A `MarginEngineClient` over the recorded system."""
        from margincall.sdk import MarginEngineClient

        c = self.contracts(project)
        return MarginEngineClient(c["engine"], c["token"], c["oracles"])

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
        project, deployer, guardian, decimals=config.decimals, markets=(), token=config.token
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
        # calls `accept_ownership` on each of the three contracts
        for contract in (engine, pool, system.fund):
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
