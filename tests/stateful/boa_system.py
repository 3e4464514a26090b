"""Deploys a whole margincall system in titanoboa, wired as `margincall.deploy` wires it.

In-process (no Anvil, no Ape): the stateful fuzz campaigns run here at thousands of steps
per second. Contracts compile once per process; each `deploy_boa_system` call deploys a
fresh system from the compiled deployers.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boa

from margincall.deploy import DEFAULT_MARKETS, ZERO, MarketSpec
from margincall.math import Account, Position, RiskParams

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / "contracts"
# The engine imports `from interfaces import ...`; the others `.interfaces`.
boa.interpret.set_search_paths([str(CONTRACTS), str(ROOT)])


@functools.cache
def _deployer(relpath: str) -> Any:
    return boa.load_partial(str(CONTRACTS / relpath))


@dataclass
class BoaSystem:
    """Handles to one deployed system, plus actor addresses by role."""

    owner: str
    token: Any
    pool: Any
    fund: Any
    engine: Any
    decimals: int
    feeds: list = field(default_factory=list)
    oracles: list = field(default_factory=list)
    markets: tuple[MarketSpec, ...] = ()
    # read caches (py-evm view calls cost about 1 ms each); `forget` after any change
    _prices: dict = field(default_factory=dict)
    _configs: dict = field(default_factory=dict)
    _params: RiskParams | None = None

    def forget(self) -> None:
        """Drops the read caches (after a revert to an anchor or a change of settings)."""
        self._prices.clear()
        self._configs.clear()
        self._params = None

    @property
    def scale(self) -> int:
        return 10 ** (18 - self.decimals)

    @property
    def unit(self) -> int:
        return 10**self.decimals

    def feed_answer(self, market_id: int, price_wad: int) -> int:
        """Feed answer for an 18-decimal price (rounded down to the feed's decimals)."""
        return price_wad // 10 ** (18 - self.markets[market_id].feed_decimals)

    def set_price(self, market_id: int, price_wad: int) -> None:
        self.feeds[market_id].set_answer(self.feed_answer(market_id, price_wad), sender=self.owner)
        self._prices.pop(market_id, None)

    def price(self, market_id: int) -> int:
        if market_id not in self._prices:
            self._prices[market_id] = self.oracles[market_id].price()
        return self._prices[market_id]

    def config(self, market_id: int) -> Any:
        if market_id not in self._configs:
            self._configs[market_id] = self.engine.markets(market_id)
        return self._configs[market_id]

    def mint_and_approve(self, who: str, amount: int, spender: str) -> None:
        self.token.mint(who, amount, sender=who)
        self.token.approve(spender, 2**256 - 1, sender=who)

    def risk_params(self) -> RiskParams:
        if self._params is None:
            self._params = RiskParams(*tuple(self.engine.risk_params()))
        return self._params

    def reference_account(self, who: str) -> Account:
        """The account as `margincall.math` sees it, from the engine's raw views."""
        collateral, bits, deadline, last_tranche, tranches = self.engine.account_info(who)
        positions = []
        for m in range(len(self.markets)):
            if (bits >> m) & 1:
                size, cost = self.engine.position(who, m)
                cfg = self.config(m)
                positions.append(Position(m, size, cost, self.price(m), cfg.mmr, cfg.imr))
        return Account(collateral, tuple(positions), deadline, last_tranche, tranches)

    def window_room(self, now: int, params: RiskParams) -> dict[int, int]:
        """What each market's liquidation window cap still admits (wad notional)."""
        room = {}
        for m in range(len(self.markets)):
            start, used = self.engine.window_state(m)
            if now >= start + params.liquidation_window:
                used = 0
            room[m] = self.config(m).window_cap - used
        return room


def deploy_boa_system(
    owner: str,
    guardian: str,
    decimals: int = 18,
    markets: tuple[MarketSpec, ...] = DEFAULT_MARKETS,
    heartbeat: int = 10 * 365 * 86_400,
) -> BoaSystem:
    """Deploys token, feeds, adapters, pool, fund and engine, and wires them."""
    with boa.env.prank(owner):
        token = _deployer("testing/MockERC20.vy").deploy("Mock USD", "mUSD", decimals)
        pool = _deployer("LiquidityPool.vy").deploy(token.address, "margincall LP", "mcLP")
        fund = _deployer("InsuranceFund.vy").deploy(token.address, pool.address)
        engine = _deployer("MarginEngine.vy").deploy(
            token.address, pool.address, fund.address, guardian
        )
        pool.set_engine(engine.address)
        fund.set_engine(engine.address)
    system = BoaSystem(owner, token, pool, fund, engine, decimals, markets=markets)
    for market_id, spec in enumerate(markets):
        with boa.env.prank(owner):
            feed = _deployer("testing/MockAggregator.vy").deploy(
                spec.feed_decimals, int(round(spec.price * 10**spec.feed_decimals))
            )
            oracle = _deployer("OracleAdapter.vy").deploy(
                feed.address, heartbeat, ZERO, 0, ZERO, 0, spec.min_price, spec.max_price
            )
            engine.set_market(
                market_id, oracle.address, spec.imr, spec.mmr, spec.fee, spec.window_cap, True
            )
        system.feeds.append(feed)
        system.oracles.append(oracle)
    return system
