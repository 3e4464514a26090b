"""Deploys and configures a whole margincall system through Ape.

Used by the demo, the gas benchmark and the tests: one deployer, so every
caller gets the same wiring (pool and fund point at the engine, markets set,
feeds and adapters in place).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from margincall.constants import WAD

if TYPE_CHECKING:  # the SDK (eth_abi) loads on use: `margincall status` reads records fast
    from margincall.sdk.types import Call

ZERO = "0x0000000000000000000000000000000000000000"

# OrderBook defaults (docs/design.md, "Orders"): the fee escrowed per order and paid to its
# settler, in millionths of a token (0.1 token), and the longest an order may wait for its
# settlement round (one hour: the heartbeat of most Chainlink feeds, the worst-case wait)
DEFAULT_SETTLEMENT_FEE_MICRO = 100_000
DEFAULT_MAX_ORDER_WINDOW = 3_600


@dataclass(frozen=True)
class MarketSpec:
    """One market: a feed with its decimals and starting price, and its risk."""

    name: str
    price: float  # starting price, in collateral units per base unit
    feed_decimals: int = 8
    imr: int = 10 * WAD // 100
    mmr: int = 5 * WAD // 100
    fee: int = 5 * WAD // 10_000
    window_cap: int = 10**12 * WAD
    heartbeat: int = 86_400
    min_price: int = 1
    max_price: int = 10**12 * WAD
    # optional adapter inputs (docs/oracle.md): a fallback feed used while the primary is
    # invalid, and an L2 sequencer-uptime feed with its grace period after a restart
    fallback_feed: str | None = None
    fallback_heartbeat: int = 0
    sequencer_feed: str | None = None
    sequencer_grace: int = 0


DEFAULT_MARKETS = (
    MarketSpec("ETH-USD", 2_000.0),
    MarketSpec("BTC-USD", 60_000.0),
    MarketSpec("SOL-USD", 150.0, feed_decimals=18, imr=20 * WAD // 100, mmr=10 * WAD // 100),
)


@dataclass
class System:
    """Handles to every deployed contract of one system."""

    project: Any
    owner: Any
    token: Any
    pool: Any
    fund: Any
    engine: Any
    lens: Any = None  # MarginLens: check_margins, preview_liquidation
    checker: Any = None  # MarginParams: the bounds of every market and risk parameter
    book: Any = None  # OrderBook: commit, settle and cancel orders (the only way to trade)
    feeds: list = field(default_factory=list)
    oracles: list = field(default_factory=list)
    markets: tuple[MarketSpec, ...] = ()

    @property
    def decimals(self) -> int:
        return int(self.token.decimals())

    @property
    def unit(self) -> int:
        """One whole token, in token units."""
        return 10**self.decimals

    def feed_answer(self, market_id: int, price: float) -> int:
        return int(round(price * 10 ** self.markets[market_id].feed_decimals))

    def price_call(self, market_id: int, price: float) -> Call:
        """The transaction posting a new round on the market's mock feed, for a sender to
        sign (`TxSender.send_call`)."""
        feed = self.feeds[market_id]
        data = feed.set_answer.encode_input(self.feed_answer(market_id, price))
        from margincall.sdk.types import Call

        return Call(str(feed.address), bytes(data), "price")

    def set_price(self, market_id: int, price: float, sender: Any = None) -> Any:
        """Posts a new round on the market's mock feed."""
        return self.feeds[market_id].set_answer(
            self.feed_answer(market_id, price), sender=sender or self.owner
        )


def deploy_system(
    project: Any,
    owner: Any,
    guardian: Any = None,
    decimals: int = 18,
    markets: tuple[MarketSpec, ...] = DEFAULT_MARKETS,
    token: str | None = None,
    settlement_fee_micro: int = DEFAULT_SETTLEMENT_FEE_MICRO,
    max_order_window: int = DEFAULT_MAX_ORDER_WINDOW,
) -> System:
    """Deploys token, feeds, adapters, pool, fund, order book and engine, and wires them.

    `token` is the address of an existing ERC-20 to use as collateral; without it a
    `MockERC20` ("Mock USD", `decimals` decimals) is deployed. The order book comes before
    the engine (the engine fixes it as its only source of fills) and is pointed at the
    engine afterwards.
    """
    if token is None:
        token = owner.deploy(project.MockERC20, "Mock USD", "mUSD", decimals)
    else:
        token = project.MockERC20.at(token)  # only its ERC-20 functions are used
    pool = owner.deploy(project.LiquidityPool, token.address, "margincall LP", "mcLP")
    fund = owner.deploy(project.InsuranceFund, token.address, pool.address)
    checker = owner.deploy(project.MarginParams)
    book = owner.deploy(
        project.OrderBook, int(token.decimals()), settlement_fee_micro, max_order_window
    )
    engine = owner.deploy(
        project.MarginEngine,
        token.address,
        pool.address,
        fund.address,
        (guardian or owner).address,
        checker.address,
        book.address,
    )
    book.set_engine(engine.address, sender=owner)
    lens = owner.deploy(project.MarginLens, engine.address)
    pool.set_engine(engine.address, sender=owner)
    fund.set_engine(engine.address, sender=owner)
    system = System(
        project, owner, token, pool, fund, engine, lens, checker, book=book, markets=markets
    )
    for spec in markets:
        add_market(system, spec)
    return system


def add_market(
    system: System,
    spec: MarketSpec,
    feed: str | None = None,
    answer: int | None = None,
    sender: Any = None,
) -> tuple[str, Any]:
    """Adds the next market: a mock feed (unless `feed` names an existing one), its adapter,
    and `set_market` on the engine. Returns the feed's address and the adapter."""
    owner = sender or system.owner
    project = system.project
    market_id = len(system.oracles)
    if feed is None:
        if answer is None:
            answer = int(round(spec.price * 10**spec.feed_decimals))
        mock = owner.deploy(project.MockAggregator, spec.feed_decimals, answer)
        system.feeds.append(mock)
        feed = mock.address
    oracle = owner.deploy(
        project.OracleAdapter,
        feed,
        spec.heartbeat,
        spec.fallback_feed or ZERO,
        spec.fallback_heartbeat if spec.fallback_feed else 0,
        spec.sequencer_feed or ZERO,
        spec.sequencer_grace if spec.sequencer_feed else 0,
        spec.min_price,
        spec.max_price,
    )
    system.engine.set_market(
        market_id,
        oracle.address,
        spec.imr,
        spec.mmr,
        spec.fee,
        spec.window_cap,
        True,
        sender=owner,
    )
    system.oracles.append(oracle)
    return feed, oracle
