"""margincall and Morpho Blue 1.0.0 side by side on one Anvil (`make bench-peers`).

Both protocols run on the same chain, read the same Chainlink-style feed contract (the
MockAggregator that margincall's OracleAdapter reads; Morpho through `FeedOracle`) and move
the same OpenZeppelin ERC-20 contract (`BenchToken`): margincall's collateral and Morpho's
loan token are one deployed instance, Morpho's collateral token a second one. Morpho is
compiled from its npm package by `margincall.bench.solidity` with its foundry.toml settings.

Each measured operation is its own transaction in a steady state (both protocols have run a
liquidation before, every actor already holds the tokens it receives, approvals are
unlimited), measured from its receipt (`gas_used`: 21,000 base and calldata included).
The health read is what a contract pays: the `gasleft()` difference around a static call
made by `GasProbe` (contracts/testing), with the called contract's address warm.

margincall is set up through `margincall.deploy` and driven through the SDK's clients, and
the contract that serves `check_margin` is found by its ABI, so the benchmark runs unchanged
when the engine's code or layout changes.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from eth_abi import encode
from eth_utils import keccak

from margincall.bench.peers_doc import PeerRow
from margincall.bench.solidity import ROOT, Artifact, compile_peers
from margincall.bench.trace import Parts, breakdown, side_by_side
from margincall.constants import WAD, State
from margincall.deploy import MarketSpec, deploy_system
from margincall.sdk import Clients

DOC = ROOT / "docs" / "benchmarks.md"
MAX_UINT = 2**256 - 1
ZERO = "0x" + "00" * 20
DECIMALS = 18  # both tokens
MARKET = MarketSpec("ETH-USD", 2_000.0)  # margincall's one market, on the shared feed
LLTV = 86 * WAD // 100  # Morpho's most used LLTV for ETH against a stablecoin
MORPHO_RUNTIME_BYTES = 15_582  # Morpho Blue 1.0.0 built with its foundry.toml
# Morpho's figures from earlier measurements (issue 15 and its sources), printed next to
# this run's as a sanity check; the document holds only this run's figures.
REFERENCE = {
    "liquidation tranche": 94_863,
    "health read": 23_893,
    "deposit": 53_919,
    "withdraw": 68_418,
}


@dataclass(frozen=True)
class Actors:
    owner: Any
    guardian: Any
    lp: Any
    keeper: Any
    trader: Any
    veteran: Any


@dataclass
class Peers:
    """Both protocols deployed on one chain."""

    chain: Any
    system: Any  # margincall.deploy.System
    clients: Clients
    usd: Any  # BenchToken: margincall's collateral and Morpho's loan token
    weth: Any  # BenchToken: Morpho's collateral
    morpho: Any
    oracle: Any  # FeedOracle on the shared feed
    lens: Any  # MorphoHealthLens
    probe: Any  # GasProbe
    params: tuple  # Morpho's MarketParams
    # operation -> protocol -> its breakdown (margincall.bench.trace)
    traces: dict[str, dict[str, Parts]] = field(default_factory=dict)

    @property
    def names(self) -> dict[str, str]:
        """Address (lowercase) -> the name a breakdown gives its calls."""
        s = self.system
        named = [(self.usd, "token"), (self.weth, "token"), (self.oracle, "oracle")]
        named += [(o, "oracle") for o in s.oracles]
        named += [(s.pool, "pool"), (s.fund, "fund"), (s.engine, "engine")]
        named += [(self.morpho, "morpho")]
        return {str(c.address).lower(): name for c, name in named}

    def trace(self, op: str, protocol: str, receipt: Any) -> None:
        """Keeps the breakdown of `receipt` (before a snapshot is rolled back)."""
        parts = breakdown(self.chain.provider, receipt, self.names)
        self.traces.setdefault(op, {})[protocol] = parts

    @property
    def market_id(self) -> bytes:
        """Morpho's market id: keccak256(abi.encode(marketParams))."""
        return keccak(encode(["address", "address", "address", "address", "uint256"], self.params))

    def set_price(self, price: float) -> None:
        """A new round on the shared feed: both protocols see it."""
        self.system.set_price(0, price)


def units(x: float | str) -> int:
    """Whole tokens (both tokens have 18 decimals) or whole base units, to wad."""
    from decimal import Decimal

    return int(Decimal(str(x)) * WAD)


def later(p: Peers) -> None:
    """An empty block 12 s on, before each measured transaction: the measured one lands in a
    later second than the setup before it, as on a real chain. (Morpho accrues interest,
    i.e. stamps `lastUpdate`, only when time has passed since the market's last action;
    Anvil can mine consecutive blocks within one second, which would skip that write.)"""
    p.chain.mine(1, deltatime=12)


@contextmanager
def isolated(chain: Any) -> Iterator[None]:
    """Runs a scenario on a snapshot and rolls the chain back afterwards."""
    snap = chain.snapshot()
    try:
        yield
    finally:
        chain.restore(snap)


def _container(artifact: Artifact) -> Any:
    from ape.contracts import ContractContainer

    return ContractContainer(artifact.contract_type())


def deploy(project: Any, chain: Any, who: Actors, artifacts: dict[str, Artifact]) -> Peers:
    """The token twice, margincall (one market) on the first, Morpho with one market
    (loan: the same token instance; collateral: the second), the oracle, lens and probe."""
    o = who.owner
    token = _container(artifacts["BenchToken"])
    usd = o.deploy(token, "Bench USD", "bUSD", DECIMALS)
    weth = o.deploy(token, "Bench ETH", "bETH", DECIMALS)
    system = deploy_system(
        project, o, who.guardian, decimals=DECIMALS, markets=(MARKET,), token=usd.address
    )
    feed = system.feeds[0]
    oracle = o.deploy(
        _container(artifacts["FeedOracle"]), feed.address, MARKET.feed_decimals, DECIMALS, DECIMALS
    )
    morpho = o.deploy(_container(artifacts["Morpho"]), o.address)
    lens = o.deploy(_container(artifacts["MorphoHealthLens"]), morpho.address)
    params = (usd.address, weth.address, oracle.address, ZERO, LLTV)
    morpho.enableIrm(ZERO, sender=o)
    morpho.enableLltv(LLTV, sender=o)
    morpho.createMarket(params, sender=o)
    probe = o.deploy(project.GasProbe)
    clients = Clients.from_system(system)
    # critical_ratio 0.5 (the default 1 closes every account below ratio 1 whole): the
    # tranche row is measured at ratio 0.56, as in make bench-gas
    risk = replace(clients.engine.risk_params(), critical_ratio=WAD // 2)
    system.engine.set_risk_params(risk.as_tuple(), sender=o)
    return Peers(chain, system, clients, usd, weth, morpho, oracle, lens, probe, params)


def steady_state(p: Peers, who: Actors) -> None:
    """Tokens where they belong, liquidity on both sides, and one liquidation already run on
    each protocol (a veteran account), so balances and market slots are nonzero."""
    c, m, usd, weth = p.clients, p.morpho, p.usd, p.weth
    for a in (who.owner, who.lp, who.keeper, who.trader, who.veteran):
        usd.mint(a.address, units(10_000_000), sender=a)
    for a in (who.trader, who.veteran, who.keeper):  # each holds some already: no 0 -> x write
        weth.mint(a.address, units(1_000), sender=a)
    for a in (who.owner, who.trader):
        c.engine.approve(MAX_UINT, sender=a)
    for a in (who.lp, who.keeper, who.trader):
        usd.approve(m.address, MAX_UINT, sender=a)
    for a in (who.trader, who.veteran):
        weth.approve(m.address, MAX_UINT, sender=a)
    c.pool.approve(MAX_UINT, sender=who.lp)
    c.pool.deposit(units(1_000_000), sender=who.lp)
    c.fund.approve(MAX_UINT, sender=who.owner)
    c.fund.donate(units(100_000), sender=who.owner)
    m.supply(p.params, units(1_000_000), 0, who.lp.address, b"", sender=who.lp)
    c.engine.deposit(units(1_000), sender=who.owner, account=who.veteran)
    trade(p, who.veteran, 4)
    m.supplyCollateral(p.params, units(4), who.veteran.address, b"", sender=who.veteran)
    m.borrow(
        p.params, units(6_800), 0, who.veteran.address, who.veteran.address, sender=who.veteran
    )
    p.set_price(1_800)
    c.engine.liquidate(who.veteran, sender=who.keeper)
    m.liquidate(p.params, who.veteran.address, units(1), 0, b"", sender=who.keeper)
    p.set_price(MARKET.price)


# --- margincall ----------------------------------------------------------------------


def trade(p: Peers, who: Any, size: float | str) -> tuple[Any, Any]:
    """A position change of `size` base units in margincall's market, through the SDK: the
    trader's commit, the next round of the mock feed, a keeper's settlement. Returns (commit
    receipt, settlement receipt)."""
    e = p.clients.engine
    delta = units(size)
    order_id, committed = e.orders.commit(
        0, delta, e.acceptable_price(0, delta, slippage_bps=500), sender=who
    )
    feed = e.orders.feed(0)
    p.chain.pending_timestamp = int(p.chain.blocks.head.timestamp) + 1
    feed.set_answer(int(feed.latestRoundData()[1]), sender=who)
    settled = e.orders.settle(order_id, sender=who)
    return committed, settled


def _serves(contract: Any, name: str) -> bool:
    contract_type = getattr(contract, "contract_type", None)
    return contract_type is not None and any(abi.name == name for abi in contract_type.view_methods)


def margin_view(p: Peers, account: Any) -> tuple[Any, bytes]:
    """The contract that serves `check_margin` and the calldata for `account`: a contract
    of the SDK's engine client or of the deployed system other than the engine (a lens)
    when one serves it, else the engine."""
    client = p.clients.engine
    found = [
        c for c in (*vars(client).values(), *vars(p.system).values()) if _serves(c, "check_margin")
    ]
    if not found:
        raise RuntimeError("no contract of the deployed system serves check_margin")
    engine = str(client.engine.address)
    host = next((c for c in found if str(c.address) != engine), found[0])
    return host, bytes(host.check_margin.encode_input(account.address))


def probe(p: Peers, target: Any, data: bytes) -> int:
    """What a contract pays for one static call (the target's address warm)."""
    spent, ok = p.probe.measure(target.address, data, True)
    assert ok, f"probed call to {target.address} reverted"
    return int(spent)


def mc_liquidation(p: Peers, who: Actors, price: float, state: State) -> int:
    """A fresh 8x long (1,000 collateral, 4 ETH at 2,000) liquidated once at `price`."""
    e = p.clients.engine
    with isolated(p.chain):
        e.deposit(units(1_000), sender=who.trader)
        trade(p, who.trader, 4)
        p.set_price(price)
        got = State(e.status(who.trader).state)
        assert got == state, f"margincall: expected {state.name}, got {got.name}"
        later(p)
        r = e.liquidate(who.trader, sender=who.keeper)
        p.trace(f"liquidate at {price:,}", "margincall", r)
        bad = p.system.engine.BadDebt.from_receipt(r)
        assert bool(bad) == (state == State.BANKRUPT), f"BadDebt events: {len(bad)}"
        if state != State.LIQUIDATABLE:  # a full close leaves no position
            assert not e.positions(who.trader), "margincall: position left after a full close"
        return int(r.gas_used)


def mc_health(p: Peers, who: Actors) -> int:
    e = p.clients.engine
    with isolated(p.chain):
        e.deposit(units(2_000), sender=who.trader)
        trade(p, who.trader, 4)
        assert State(e.status(who.trader).state) == State.HEALTHY
        later(p)
        host, data = margin_view(p, who.trader)
        return probe(p, host, data)


def mc_account_ops(p: Peers, who: Actors) -> dict[str, int]:
    """deposit (account exists), withdraw with one position open, open a position."""
    e, t = p.clients.engine, who.trader
    out = {}
    with isolated(p.chain):
        e.deposit(units(1_000), sender=t)
        later(p)
        out["deposit"] = int(e.deposit(units(4_000), sender=t).gas_used)
        later(p)
        committed, r = trade(p, t, 2)
        p.trace("open", "margincall", r)
        # the trader's commit and the keeper's settlement: both are paid for an open
        out["open"] = int(committed.gas_used) + int(r.gas_used)
        later(p)
        out["withdraw"] = int(e.withdraw(units(100), sender=t).gas_used)
    return out


# --- Morpho ----------------------------------------------------------------------------


def mo_position(p: Peers, who: Any) -> tuple[int, int, int]:
    """(supplyShares, borrowShares, collateral)."""
    return tuple(int(x) for x in p.morpho.position(p.market_id, who.address))


def mo_liquidation(p: Peers, who: Actors, price: float, mode: str) -> int:
    """A borrower (4 ETH collateral, 6,800 borrowed at 2,000) liquidated at `price`:
    `partial` seizes 1 ETH; `full` repays every borrow share; `bad debt` seizes all the
    collateral and realises the rest of the debt as bad debt."""
    m, t = p.morpho, who.trader
    with isolated(p.chain):
        m.supplyCollateral(p.params, units(4), t.address, b"", sender=t)
        m.borrow(p.params, units(6_800), 0, t.address, t.address, sender=t)
        p.set_price(price)
        _, _, healthy = p.lens.health(p.params, t.address)
        assert not healthy, "Morpho: the borrower is not liquidatable"
        _, shares, collateral = mo_position(p, t)
        seized, repaid = {
            "partial": (units(1), 0),
            "full": (0, shares),
            "bad debt": (collateral, 0),
        }[mode]
        later(p)
        r = m.liquidate(p.params, t.address, seized, repaid, b"", sender=who.keeper)
        p.trace(f"liquidate ({mode})", "Morpho", r)
        (event,) = r.decode_logs(m.Liquidate)
        assert (int(event.badDebtAssets) > 0) == (mode == "bad debt"), "Morpho: bad debt"
        _, shares_left, collateral_left = mo_position(p, t)
        if mode == "full":
            assert shares_left == 0 and collateral_left > 0, "Morpho: full liquidation"
        if mode == "bad debt":
            assert shares_left == 0 and collateral_left == 0, "Morpho: bad debt realised"
        return int(r.gas_used)


def mo_health(p: Peers, who: Actors) -> int:
    m, t = p.morpho, who.trader
    with isolated(p.chain):
        m.supplyCollateral(p.params, units(4), t.address, b"", sender=t)
        m.borrow(p.params, units(6_800), 0, t.address, t.address, sender=t)
        assert p.lens.health(p.params, t.address)[2], "Morpho: the borrower is not healthy"
        later(p)
        return probe(p, p.lens, bytes(p.lens.health.encode_input(p.params, t.address)))


def mo_account_ops(p: Peers, who: Actors) -> dict[str, int]:
    """supplyCollateral (position exists), withdrawCollateral with a borrow open, borrow."""
    m, t = p.morpho, who.trader
    out = {}
    with isolated(p.chain):
        m.supplyCollateral(p.params, units(1), t.address, b"", sender=t)
        later(p)
        r = m.supplyCollateral(p.params, units(3), t.address, b"", sender=t)
        out["deposit"] = int(r.gas_used)
        later(p)
        r = m.borrow(p.params, units(3_000), 0, t.address, t.address, sender=t)
        p.trace("open", "Morpho", r)
        out["open"] = int(r.gas_used)
        later(p)
        r = m.withdrawCollateral(p.params, units("0.1"), t.address, t.address, sender=t)
        out["withdraw"] = int(r.gas_used)
    return out


# --- the run ---------------------------------------------------------------------------


def measure(p: Peers, who: Actors) -> list[PeerRow]:
    """Every row, in the order of issue 15's list."""
    S = State
    mc, mo = mc_account_ops(p, who), mo_account_ops(p, who)
    return [
        PeerRow(
            "liquidation tranche vs partial liquidate",
            mc_liquidation(p, who, 1_800, S.LIQUIDATABLE),
            mo_liquidation(p, who, 1_800, "partial"),
            "`liquidate`: one tranche of a LIQUIDATABLE account (8x long, price -10%)",
            "`liquidate` seizing 1 of 4 ETH (price -10%)",
        ),
        PeerRow(
            "full close vs full liquidate",
            mc_liquidation(p, who, 1_760, S.CRITICAL),
            mo_liquidation(p, who, 1_800, "full"),
            "`liquidate` of a CRITICAL account (price -12%): the position closed in one call",
            "`liquidate` repaying every borrow share (price -10%)",
        ),
        PeerRow(
            "bankrupt close (bad debt)",
            mc_liquidation(p, who, 1_700, S.BANKRUPT),
            mo_liquidation(p, who, 1_700, "bad debt"),
            "`liquidate` of a BANKRUPT account (price -15%): full close, `BadDebt` event",
            "`liquidate` seizing all 4 ETH (price -15%): the rest realised as bad debt",
        ),
        PeerRow(
            "health read by a contract",
            mc_health(p, who),
            mo_health(p, who),
            "`check_margin`, one position (GasProbe, callee warm)",
            "`MorphoHealthLens.health`: `extSloads` (2 words) + oracle (GasProbe, lens warm)",
        ),
        PeerRow(
            "deposit",
            mc["deposit"],
            mo["deposit"],
            "`deposit` to an existing account",
            "`supplyCollateral` to an existing position",
        ),
        PeerRow(
            "withdraw with one position open",
            mc["withdraw"],
            mo["withdraw"],
            "`withdraw` with one position open",
            "`withdrawCollateral` with a borrow open",
        ),
        PeerRow(
            "open a position vs borrow",
            mc["open"],
            mo["open"],
            "`commit_order` + `settle_order` opening a new position (2 ETH on 5,000)",
            "`borrow` (first borrow on 4 ETH collateral)",
        ),
    ]


def breakdowns(p: Peers) -> list[tuple[str, list]]:
    """The liquidation and trade-vs-borrow rows, component by component."""
    pairs = [
        ("liquidation tranche vs partial liquidate", "liquidate at 1,800", "liquidate (partial)"),
        ("bankrupt close vs bad-debt liquidate", "liquidate at 1,700", "liquidate (bad debt)"),
        ("open a position vs borrow", "open", "open"),
    ]
    return [
        (title, side_by_side(p.traces[mc]["margincall"], p.traces[mo]["Morpho"]))
        for title, mc, mo in pairs
    ]


def sanity(rows: list[PeerRow]) -> list[str]:
    """This run's Morpho figures next to the ones reported earlier."""
    out = []
    for key, ref in REFERENCE.items():
        row = next(r for r in rows if r.op.startswith(key))
        out.append(
            f"Morpho {key}: {row.morpho:,} (reported earlier {ref:,}, {row.morpho - ref:+,})"
        )
    return out


def machine(chain: Any, artifacts: dict[str, Artifact]) -> dict[str, str]:
    """Where and with what the figures were measured."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "?"
    try:
        out = subprocess.run(["anvil", "--version"], capture_output=True, text=True, timeout=10)
        anvil = out.stdout.splitlines()[0].replace("anvil Version: ", "")
    except (OSError, IndexError, subprocess.SubprocessError):
        anvil = "?"
    fork = chain.provider.make_request("anvil_nodeInfo", []).get("hardFork", "?")
    try:
        vyper = subprocess.run(["vyper", "--version"], capture_output=True, text=True, timeout=30)
        vyper_version = vyper.stdout.strip().split("+", 1)[0] or "?"
    except (OSError, subprocess.SubprocessError):
        vyper_version = "?"
    solc = sorted({a.compiler.split("+", 1)[0] for a in artifacts.values()})
    return {
        "date": dt.datetime.now(dt.UTC).date().isoformat(),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "anvil": f"{anvil}, hardfork {fork}",
        "vyper": vyper_version,
        "solc": " and ".join(solc),
    }


def conditions(p: Peers, artifacts: dict[str, Artifact]) -> list[str]:
    """The benchmark's conditions, for the document."""
    morpho = artifacts["Morpho"]
    return [
        "One Anvil, both protocols deployed on it; every operation is its own transaction"
        " (automine), so every storage slot and address it touches starts cold (EIP-2929).",
        f"Morpho Blue 1.0.0 from npm (`@morpho-org/morpho-blue`), `Morpho.sol` compiled by"
        f" solcjs {morpho.compiler.split('+')[0]} with its foundry.toml settings (via-IR,"
        f" optimizer 999,999 runs, EVM paris, no metadata hash): {morpho.runtime_size:,} bytes"
        " of runtime code. One market: no interest rate model (`address(0)`, Morpho's cheapest"
        " path: interest accrual only stamps `lastUpdate`), no fee, LLTV 86%.",
        "Same feed: margincall's `OracleAdapter` and Morpho's `FeedOracle` (bench/peers/, one"
        " feed, 1e36-scaled, no staleness check, like Morpho's ChainlinkOracleV2) read the"
        " same `MockAggregator` (8 decimals, ETH-USD at 2,000).",
        "Same token: `BenchToken` (bench/peers/, OpenZeppelin 5.4.0 `ERC20`, 18 decimals) is"
        " margincall's collateral and, the same deployed instance, Morpho's loan token;"
        " Morpho's collateral is a second instance of it. margincall's figures here differ"
        " from the Gas section's (`MockERC20`) by the token's own cost.",
        "Steady state: margincall's pool holds LP liquidity and its fund a donation; Morpho's"
        " market holds supplied liquidity; each protocol has liquidated a veteran account"
        " once (market slots nonzero, its keeper holds what a liquidation pays); every actor"
        " already holds the tokens it receives; approvals are unlimited. Each measured"
        " transaction is mined 12 s after its setup (an empty block in between), as on a"
        " real chain: Morpho's interest accrual then stamps `lastUpdate`, which it skips"
        " when no time has passed.",
        "Transactions: `receipt.gas_used` (21,000 base and calldata included). Health read:"
        " `GasProbe` (contracts/testing) measures the `gasleft()` difference around a static"
        " call by a contract, the called contract's address warm (margincall: the contract"
        " serving `check_margin`; Morpho: `MorphoHealthLens`, bench/peers/, which then calls"
        " Morpho's `extSloads` and the oracle, both cold).",
        "Ratio below 1.00x: margincall is cheaper.",
    ]


def run(project: Any) -> tuple[list[PeerRow], dict[str, str], list[str], list[tuple[str, list]]]:
    """Compiles the peers, deploys both protocols on Ape's chain, measures every row.
    Returns the rows, the machine info, the conditions and the breakdowns."""
    from ape import accounts, chain

    artifacts = compile_peers()
    size = artifacts["Morpho"].runtime_size
    if size != MORPHO_RUNTIME_BYTES:
        raise RuntimeError(
            f"Morpho.sol compiled to {size:,} bytes, not the {MORPHO_RUNTIME_BYTES:,} of its"
            " foundry build: check the compiler settings"
        )
    test = accounts.test_accounts
    who = Actors(test[0], test[1], test[2], test[3], test[5], test[6])
    p = deploy(project, chain, who, artifacts)
    steady_state(p, who)
    rows = measure(p, who)
    return rows, machine(chain, artifacts), conditions(p, artifacts), breakdowns(p)
