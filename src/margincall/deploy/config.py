"""A deployment's configuration (`DeployConfig`, from config/deploy-*.yaml): the collateral,
the markets and the risk parameters, checked before anything is sent (`preflight`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from margincall.constants import MAX_MARKETS, WAD
from margincall.deploy.system import (
    DEFAULT_MAX_ORDER_WINDOW,
    DEFAULT_SETTLEMENT_FEE_MICRO,
    MarketSpec,
)
from margincall.math import RiskParams

DEFAULT_CONFIG = Path("config/deploy-local.yaml")
SECONDS_PARAMS = frozenset({"grace_period", "tranche_interval", "liquidation_window"})
CONFIG_KEYS = frozenset(
    {"collateral", "markets", "risk", "guardian", "reserve_factor", "sequencer", "owner", "orders"}
)
# the OrderBook's bounds (contracts/OrderBook.vy `_MAX_FEE_MICRO`, `_MAX_WINDOW`)
MAX_SETTLEMENT_FEE_MICRO = 100 * 10**6
MAX_ORDER_WINDOW = 2**16 - 1


class ConfigError(ValueError):
    """The deploy config is malformed (unknown key, bad value, missing field)."""


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


def _keys(section: Mapping[str, Any], allowed: set[str] | frozenset[str], what: str) -> None:
    if not isinstance(section, Mapping):
        raise ConfigError(f"{what}: expected a mapping, got {type(section).__name__}")
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ConfigError(f"{what}: unknown key(s) {', '.join(unknown)}")


MARKET_KEYS = {
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
        what = f"markets[{index}]"
        _keys(raw, MARKET_KEYS, what)
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
    settlement_fee_micro: int = DEFAULT_SETTLEMENT_FEE_MICRO  # the book's fee, 1e-6 tokens
    max_order_window: int = DEFAULT_MAX_ORDER_WINDOW  # seconds an order may wait

    @classmethod
    def parse(cls, raw: Any, source: str = "") -> DeployConfig:
        _keys(raw, CONFIG_KEYS, "config")
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
        fee, window = _orders(raw.get("orders"))
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
            settlement_fee_micro=fee,
            max_order_window=window,
        )


def _orders(raw: Any) -> tuple[int, int]:
    """The `orders` section: the book's settlement fee (tokens, at most 6 decimals and 100
    tokens) and longest order window (seconds, 1 to 65,535); defaults where omitted."""
    if raw is None:
        return DEFAULT_SETTLEMENT_FEE_MICRO, DEFAULT_MAX_ORDER_WINDOW
    _keys(raw, {"settlement_fee", "max_window"}, "orders")
    fee = DEFAULT_SETTLEMENT_FEE_MICRO
    if "settlement_fee" in raw:
        wad = to_wad(raw["settlement_fee"], "orders.settlement_fee")
        if wad % 10**12:
            raise ConfigError("orders.settlement_fee: at most 6 decimals (the book's unit)")
        fee = wad // 10**12
        if fee > MAX_SETTLEMENT_FEE_MICRO:
            raise ConfigError(
                f"orders.settlement_fee: at most 100 tokens, got {raw['settlement_fee']}"
            )
    window = DEFAULT_MAX_ORDER_WINDOW
    if "max_window" in raw:
        window = to_int(raw["max_window"], "orders.max_window", minimum=1)
        if window > MAX_ORDER_WINDOW:
            raise ConfigError(f"orders.max_window: at most {MAX_ORDER_WINDOW} s, got {window}")
    return fee, window


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
