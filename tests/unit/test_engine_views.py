"""Unit tests of the MarginEngine's views: `check_margin`, the batched `check_margins`, and
the ABI names that keepers and tools rely on (PROTOCOL.md section 5).

Values are checked to the wei against the pure-Python reference math
(`margincall.math`), for both collateral decimals.
"""

from __future__ import annotations

import ape
import pytest

from margincall.constants import WAD, State
from margincall.math import Account, Position, RiskParams, classify, div_ceil, evaluate, ratio
from tests.utils.helpers import trade_unbounded

MAX_UINT = 2**256 - 1
ETH, BTC, SOL = 0, 1, 2


# --- helpers ------------------------------------------------------------------------------


def deposit(system, who, amount: int):
    system.token.mint(who.address, amount, sender=who)
    system.token.approve(system.engine.address, MAX_UINT, sender=who)
    return system.engine.deposit(amount, sender=who)


def trade(system, who, market_id: int, size: int):
    """A position change through an order (commit, next round, settle)."""
    return trade_unbounded(system, who, market_id, size)


def scale(system) -> int:
    return 10 ** (18 - system.decimals)


def params_of(engine) -> RiskParams:
    rp = engine.risk_params()
    return RiskParams(**{f: int(getattr(rp, f)) for f in RiskParams.__dataclass_fields__})


def reference_account(system, who) -> Account:
    """The account as the reference math sees it, at the oracles' current prices."""
    engine = system.engine
    collateral, markets, deadline, last_tranche, tranches = engine.account_info(who.address)
    positions = []
    for m in range(engine.market_count()):
        if markets >> m & 1:
            size, cost = engine.position(who.address, m)
            cfg = engine.markets(m)
            price = system.oracles[m].price()
            positions.append(Position(m, size, cost, price, cfg.mmr, cfg.imr))
    return Account(collateral, tuple(positions), deadline, last_tranche, tranches)


def assert_status_matches_reference(system, chain, who, status) -> State:
    account = reference_account(system, who)
    params = params_of(system.engine)
    now = chain.blocks.head.timestamp
    v = evaluate(account, scale(system))
    state = classify(account, v, params, now, scale(system))
    live_call = account.deadline != 0 and now < account.deadline + params.grace_period
    assert status.account == who.address
    assert status.collateral == account.collateral * scale(system)
    assert status.equity == v.equity
    assert status.maintenance == v.maintenance
    assert status.initial == v.initial
    assert status.ratio == ratio(v.equity, v.maintenance)
    assert status.state == state
    assert status.call_deadline == (account.deadline if live_call else 0)
    assert status.positions == len(account.positions)
    assert status.priced is True
    return state


def set_prices(system, factor: float):
    """ETH and SOL at `factor` times their starting prices (odd digits on purpose)."""
    system.set_price(ETH, round(2_000 * factor, 8))
    system.set_price(SOL, 150 * factor)


def as_tuple(status) -> tuple:
    return tuple(status.values()) if hasattr(status, "values") else tuple(status)


# --- check_margin ---------------------------------------------------------------------------


def test_check_margin_without_positions_is_healthy_with_infinite_ratio(system, owner, trader):
    deposit(system, trader, 250 * system.unit)
    for feed in system.feeds:  # no price is needed without positions
        feed.set_reverting(True, sender=owner)

    s = system.engine.check_margin(trader.address)
    assert s.account == trader.address
    assert s.collateral == 250 * WAD
    assert s.equity == 250 * WAD
    assert (s.maintenance, s.initial) == (0, 0)
    assert s.ratio == MAX_UINT
    assert s.state == State.HEALTHY
    assert (s.call_deadline, s.next_tranche_time, s.positions) == (0, 0, 0)
    assert s.priced is True


FACTORS = {
    "long": [1.0, 1.0137, 0.95, 0.9213, 0.9, 0.8801, 0.86],
    "short": [1.0, 0.9871, 1.05, 1.0713, 1.1, 1.1201, 1.14],
}


@pytest.mark.parametrize("side", ["long", "short"])
def test_check_margin_equals_reference_math_to_the_wei(system, chain, trader, side):
    sign = 1 if side == "long" else -1
    deposit(system, trader, 1_000 * system.unit)
    eth_size, sol_size = sign * (33 * WAD // 10 + 7), sign * (5 * WAD - 3)
    trade(system, trader, ETH, eth_size)
    trade(system, trader, SOL, sol_size)
    assert system.engine.position(trader.address, ETH) == (
        eth_size,
        div_ceil(eth_size * 2_000 * WAD, WAD),
    )

    seen = set()
    for factor in FACTORS[side]:
        set_prices(system, factor)
        status = system.engine.check_margin(trader.address)
        seen.add(assert_status_matches_reference(system, chain, trader, status))
    # the price path walks through every state a price alone can reach (LIQUIDATABLE needs
    # a call past its deadline: below ratio 1 the default critical_ratio 1 says CRITICAL)
    assert seen == {State.HEALTHY, State.CALLABLE, State.CRITICAL, State.BANKRUPT}


def test_check_margin_reports_a_recorded_call_like_the_reference(system, chain, trader, keeper):
    engine = system.engine
    deposit(system, trader, 1_000 * system.unit)
    trade(system, trader, ETH, 4 * WAD)
    system.set_price(ETH, 1_850)  # ratio about 1.07
    engine.margin_call(trader.address, sender=keeper)
    deadline = engine.account_info(trader.address)[2]
    grace = engine.risk_params().grace_period

    status = engine.check_margin(trader.address)
    assert assert_status_matches_reference(system, chain, trader, status) == State.CALLED
    assert status.call_deadline == deadline

    chain.pending_timestamp = deadline + 100
    chain.mine()
    system.set_price(ETH, 1_850)  # keep the feed fresh
    status = engine.check_margin(trader.address)
    assert assert_status_matches_reference(system, chain, trader, status) == State.LIQUIDATABLE
    assert status.call_deadline == deadline

    chain.pending_timestamp = deadline + grace + 100  # the call lapsed: a new notice is needed
    chain.mine()
    system.set_price(ETH, 1_850)
    status = engine.check_margin(trader.address)
    assert assert_status_matches_reference(system, chain, trader, status) == State.CALLABLE
    assert status.call_deadline == 0


@pytest.mark.parametrize(
    "breakage, reason",
    [
        ("revert", "oracle: feed reverted"),
        ("stale", "oracle: stale price"),
        ("zero", "oracle: non-positive price"),
    ],
)
def test_check_margin_reverts_with_the_oracle_reason(
    system, chain, owner, trader, breakage, reason
):
    deposit(system, trader, 1_000 * system.unit)
    trade(system, trader, ETH, WAD)
    feed = system.feeds[ETH]
    if breakage == "revert":
        feed.set_reverting(True, sender=owner)
    elif breakage == "stale":
        old = chain.blocks.head.timestamp - system.oracles[ETH].primary_heartbeat() - 1_000
        feed.set_round(system.feed_answer(ETH, 2_000), old, old, sender=owner)
    else:
        feed.set_answer(0, sender=owner)

    with ape.reverts(reason):
        system.engine.check_margin(trader.address, skip_trace=True)


# --- check_margins -----------------------------------------------------------------------------


def test_check_margins_equals_check_margin_for_each_account(
    system, trader, other_trader, stranger, keeper
):
    engine, unit = system.engine, system.unit
    deposit(system, trader, 1_000 * unit)
    deposit(system, other_trader, 2_000 * unit)
    deposit(system, stranger, 10 * unit)  # collateral, no positions
    trade(system, trader, ETH, 4 * WAD)
    trade(system, trader, SOL, -5 * WAD)
    trade(system, other_trader, BTC, -(WAD // 10))
    trade(system, other_trader, ETH, 2 * WAD)
    accounts = [trader, other_trader, stranger, keeper, trader]  # keeper: nothing at all

    for factor in (1.0, 0.9213, 1.0713):
        set_prices(system, factor)
        batch = system.lens.check_margins([a.address for a in accounts])
        assert len(batch) == len(accounts)
        for who, status in zip(accounts, batch, strict=True):
            assert as_tuple(status) == as_tuple(engine.check_margin(who.address))
    assert system.lens.check_margins([]) == []


def test_check_margins_marks_unpriced_accounts_instead_of_reverting(
    system, chain, owner, trader, other_trader, stranger, keeper
):
    engine, unit = system.engine, system.unit
    deposit(system, trader, 1_000 * unit)
    deposit(system, other_trader, 1_000 * unit)
    deposit(system, stranger, 10 * unit)
    deposit(system, keeper, 1_000 * unit)
    trade(system, trader, ETH, WAD)  # needs ETH
    trade(system, other_trader, SOL, 2 * WAD)  # needs SOL only
    trade(system, keeper, SOL, -2 * WAD)
    trade(system, keeper, ETH, -WAD)  # needs both
    system.feeds[ETH].set_reverting(True, sender=owner)

    batch = system.lens.check_margins(
        [trader.address, other_trader.address, stranger.address, keeper.address]
    )
    for who, status in ((trader, batch[0]), (keeper, batch[3])):
        assert status.account == who.address
        assert status.priced is False
        assert status.collateral == engine.collateral_of(who.address) * scale(system)
        assert status.positions == (1 if who == trader else 2)
    # no priced leg: nothing for a keeper to do
    status = batch[0]
    assert status.state == State.HEALTHY and status.ratio == MAX_UINT
    assert (status.equity, status.maintenance, status.initial) == (0, 0, 0)
    # a priced leg (SOL): valued as `liquidate` values it, the reverting ETH feed's short leg
    # at the adapter's max price (no usable answer): BANKRUPT, and liquidated in SOL only
    status = batch[3]
    assert status.state == State.BANKRUPT and status.equity < 0 and status.maintenance > 0
    preview = system.lens.preview_liquidation(keeper.address)
    assert preview.liquidatable and preview.full_close
    assert dict(zip(preview.market_ids, preview.closed_sizes, strict=True)) == {
        ETH: 0,
        SOL: -2 * WAD,
    }
    for who, status in ((other_trader, batch[1]), (stranger, batch[2])):
        assert status.priced is True
        assert as_tuple(status) == as_tuple(engine.check_margin(who.address))
        assert_status_matches_reference(system, chain, who, status)

    system.feeds[ETH].set_reverting(False, sender=owner)
    assert system.lens.check_margins([trader.address])[0].priced is True


# --- ABI --------------------------------------------------------------------------------------

FUNCTIONS = [
    "deposit",
    "withdraw",
    "fill",
    "escrow_fee",
    "pay_fills",
    "check_margin",
    "margin_call",
    "clear_margin_call",
    "liquidate",
    "margin_call_many",
    "liquidate_many",
]
# the batched and preview views live on the lens (contracts/MarginLens.vy)
LENS_FUNCTIONS = ["check_margins", "preview_liquidation"]
EVENTS = [
    "Deposit",
    "Withdraw",
    "PositionChanged",
    "MarginCall",
    "MarginCallCleared",
    "Liquidation",
    "BadDebt",
]


def test_abi_has_every_name_of_protocol_section_5(project, system):
    abi = project.MarginEngine.contract_type.abi
    functions = {item.name for item in abi if item.type == "function"}
    events = {item.name for item in abi if item.type == "event"}
    assert set(FUNCTIONS) <= functions, set(FUNCTIONS) - functions
    lens_abi = project.MarginLens.contract_type.abi
    lens_functions = {item.name for item in lens_abi if item.type == "function"}
    assert set(LENS_FUNCTIONS) <= lens_functions, set(LENS_FUNCTIONS) - lens_functions
    # the lens reads this engine (tools find the lens in the deployment record)
    assert system.lens.ENGINE() == system.engine.address
    assert set(EVENTS) <= events, set(EVENTS) - events
    # `deposit(amount)` credits the caller; `deposit(amount, account)` anyone
    overloads = sorted(
        [i.name for i in item.inputs]
        for item in abi
        if item.type == "function" and item.name == "deposit"
    )
    assert overloads == [["amount"], ["amount", "account"]]
