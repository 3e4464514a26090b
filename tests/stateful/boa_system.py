"""Deploys a whole margincall system in titanoboa, wired as `margincall.deploy` wires it, and
drives it for the state machine (`BoaDriver`).

In-process (no Anvil, no Ape): the deep stateful campaigns run here. Contracts compile once
per process; each `deploy_boa_system` call deploys a fresh system from the compiled deployers.
"""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path
from typing import Any

import boa

from margincall.deploy import ZERO, MarketSpec
from margincall.deploy.system import DEFAULT_MAX_ORDER_WINDOW, DEFAULT_SETTLEMENT_FEE_MICRO
from tests.stateful.driver import (
    FUND_SEED,
    FUZZ_MARKETS,
    LP_LIQUIDITY,
    N_TRADERS,
    POOL_COOLDOWN,
    TRADER_TOKENS,
    Actors,
    Driver,
    Ev,
    Sent,
)

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / "contracts"
# The engine imports `from interfaces import ...`; the others `.interfaces`.
boa.interpret.set_search_paths([str(CONTRACTS), str(ROOT)])
REVERT = re.compile(r"Revert\('(.*)'\)")


# the deployables that import the engine's modules: a mutant run (tests/stateful/mutants.py)
# loads these from its own copy of contracts/ (CONTRACTS) and the rest from the project's, so
# titanoboa's disk cache (keyed by file name and source) compiles those only once
USES_MODULES = ("MarginEngine.vy", "MarginLens.vy", "MarginParams.vy", "OracleAdapter.vy")


@functools.cache
def _deployer(relpath: str) -> Any:
    folder = CONTRACTS if relpath in USES_MODULES else ROOT / "contracts"
    return boa.load_partial(str(folder / relpath))


def revert_reason(error: boa.BoaError) -> str:
    """The reason string of a titanoboa revert."""
    reason = repr(error.stack_trace.last_frame.pretty_vm_reason)
    m = REVERT.search(reason)
    return (m.group(1) if m else reason).strip("'\"")


class BoaDriver(Driver):
    """A system deployed in titanoboa's in-process EVM."""

    def __init__(self, actors: Actors, token, pool, fund, engine, markets, decimals: int):
        super().__init__()
        self.actors = actors
        self.token, self.pool, self.fund, self.engine = token, pool, fund, engine
        self.markets = markets
        self.decimals = decimals
        self.feeds: list = []
        self.oracles: list = []
        self._anchor = None

    def now(self) -> int:
        return boa.env.evm.patch.timestamp

    def travel(self, seconds: int) -> None:
        boa.env.time_travel(seconds=seconds)

    def _send(self, contract: Any, fn: str, args: tuple, sender: str) -> Sent:
        try:
            value = getattr(contract, fn)(*args, sender=sender)
        except boa.BoaError as e:
            return Sent(False, revert_reason(e))
        events = [
            Ev(
                type(e).__name__,
                e.address,
                {k: v for k, v in e._asdict().items() if k != "address"},
            )
            for e in contract.get_logs()
            if hasattr(e, "_asdict")
        ]
        return Sent(True, value=value, events=events)

    def try_call(self, contract: Any, fn: str, *args: Any) -> tuple[bool, Any]:
        try:
            return True, getattr(contract, fn)(*args)
        except boa.BoaError as e:
            return False, revert_reason(e)

    def start_example(self) -> None:
        # Under pytest, titanoboa's plugin already runs every Hypothesis example inside
        # `boa.env.anchor()`; without the plugin the driver anchors each example itself.
        if "boa.test.plugin" not in sys.modules:
            self._anchor = boa.env.anchor()
            self._anchor.__enter__()
        self.forget()

    def end_example(self) -> None:
        if self._anchor is not None:
            self._anchor.__exit__(None, None, None)
            self._anchor = None
        self.forget()


def boa_actors() -> Actors:
    g = boa.env.generate_address
    return Actors(
        owner=g("owner"),
        guardian=g("guardian"),
        lps=(g("lp"), g("second_lp")),
        keepers=(g("keeper"), g("rival_keeper")),
        donor=g("donor"),
        traders=tuple(g(f"trader{i}") for i in range(N_TRADERS)),
    )


def deploy_boa_system(
    actors: Actors, decimals: int = 18, markets: tuple[MarketSpec, ...] = FUZZ_MARKETS
) -> BoaDriver:
    """Deploys token, feeds, adapters, pool, fund, order book (the defaults of
    `margincall.deploy`) and engine, and wires them."""
    owner = actors.owner
    with boa.env.prank(owner):
        token = _deployer("testing/MockERC20.vy").deploy("Mock USD", "mUSD", decimals)
        pool = _deployer("LiquidityPool.vy").deploy(token.address, "margincall LP", "mcLP")
        fund = _deployer("InsuranceFund.vy").deploy(token.address, pool.address)
        checker = _deployer("MarginParams.vy").deploy()
        book = _deployer("OrderBook.vy").deploy(
            decimals, DEFAULT_SETTLEMENT_FEE_MICRO, DEFAULT_MAX_ORDER_WINDOW
        )
        engine = _deployer("MarginEngine.vy").deploy(
            token.address, pool.address, fund.address, actors.guardian, checker.address, book
        )
        book.set_engine(engine.address)
        lens = _deployer("MarginLens.vy").deploy(engine.address)
        pool.set_engine(engine.address)
        fund.set_engine(engine.address)
    d = BoaDriver(actors, token, pool, fund, engine, markets, decimals)
    d.book = book
    d.lens = lens
    for market_id, spec in enumerate(markets):
        with boa.env.prank(owner):
            feed = _deployer("testing/MockAggregator.vy").deploy(
                spec.feed_decimals, int(round(spec.price * 10**spec.feed_decimals))
            )
            oracle = _deployer("OracleAdapter.vy").deploy(
                feed.address, spec.heartbeat, ZERO, 0, ZERO, 0, spec.min_price, spec.max_price
            )
            engine.set_market(
                market_id, oracle.address, spec.imr, spec.mmr, spec.fee, spec.window_cap, True
            )
        d.feeds.append(feed)
        d.oracles.append(oracle)
    return d


def deploy_funded_boa_system(decimals: int) -> BoaDriver:
    """A system with LP liquidity, a small fund and traders holding approved tokens."""
    a = boa_actors()
    d = deploy_boa_system(a, decimals)
    token, unit = d.token, d.unit
    for who, amount, spender in (
        *((lp, LP_LIQUIDITY, d.pool) for lp in a.lps),
        (a.donor, TRADER_TOKENS, d.fund),
        *((t, TRADER_TOKENS, d.engine) for t in a.traders),
    ):
        token.mint(who, amount * unit, sender=who)
        token.approve(spender.address, 2**256 - 1, sender=who)
    d.pool.set_cooldown(POOL_COOLDOWN, sender=a.owner)
    d.pool.deposit(LP_LIQUIDITY * unit, a.lps[0], sender=a.lps[0])
    d.fund.donate(FUND_SEED * unit, sender=a.donor)
    return d
