"""Unit tests of the MarginEngine's administration: markets, risk parameters, ownership,
guardian and pause, and the constructor's checks.

Collateral decimals do not matter here: the module runs on an 18-decimal token only.
"""

from __future__ import annotations

import dataclasses

import ape
import pytest

from margincall.constants import WAD
from margincall.math import RiskParams

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
NOT_OWNER = "ownable: caller is not the owner"
NOT_NEW_OWNER = "ownable_2step: caller is not the new owner"
NOT_GUARDIAN = "engine: only guardian or owner"
PCT = WAD // 100
BIG_CAP = 10**12 * WAD


@pytest.fixture(scope="module")
def decimals():
    return 18


@pytest.fixture(scope="module")
def new_owner(accounts):
    return accounts[8]


@pytest.fixture
def deployer(accounts):
    """A brand-new account: its deployments never reuse an address that Ape has cached from
    a reverted test (Ape then mis-decodes a reverting constructor's trace)."""
    account = accounts.generate_test_account()
    account.balance = 10**21
    return account


@pytest.fixture(scope="module", autouse=True)
def _actors_first(owner, guardian, stranger, new_owner):
    """Builds the session-scoped actors before any test, so Ape's isolation never rebases."""


def one(tx, event):
    logs = tx.decode_logs(event)
    assert len(logs) == 1, f"expected one {event.name}, got {len(logs)}"
    return logs[0]


def params_of(engine) -> RiskParams:
    rp = engine.risk_params()
    return RiskParams(**{f: int(getattr(rp, f)) for f in RiskParams.__dataclass_fields__})


def market_args(system, **changes) -> dict:
    """A valid new market (id 3, on the ETH oracle) with `changes` applied."""
    args = dict(
        market_id=3,
        oracle=system.oracles[0].address,
        imr=10 * PCT,
        mmr=5 * PCT,
        fee=5 * WAD // 10_000,
        window_cap=BIG_CAP,
        active=True,
    )
    args.update(changes)
    return args


def set_market(system, sender, **changes):
    a = market_args(system, **changes)
    return system.engine.set_market(
        a["market_id"],
        a["oracle"],
        a["imr"],
        a["mmr"],
        a["fee"],
        a["window_cap"],
        a["active"],
        sender=sender,
    )


def set_params(system, sender, **changes):
    params = dataclasses.replace(params_of(system.engine), **changes)
    return system.engine.set_risk_params(params.as_tuple(), sender=sender)


# --- set_market -----------------------------------------------------------------------------


def test_set_market_adds_a_market_and_emits_event(system, owner):
    engine = system.engine
    assert engine.market_count() == 3
    tx = set_market(system, owner, imr=12 * PCT, mmr=6 * PCT, fee=3 * WAD // 10_000)
    log = one(tx, engine.MarketSet)
    expected = market_args(system, imr=12 * PCT, mmr=6 * PCT, fee=3 * WAD // 10_000)
    for name, value in expected.items():
        assert getattr(log, name) == value, name
    assert engine.market_count() == 4
    m = engine.markets(3)
    assert (m.oracle, m.imr, m.mmr, m.fee, m.window_cap, m.active) == (
        system.oracles[0].address,
        12 * PCT,
        6 * PCT,
        3 * WAD // 10_000,
        BIG_CAP,
        True,
    )


def test_set_market_changes_an_existing_market_without_adding_one(system, owner):
    engine = system.engine
    tx = set_market(system, owner, market_id=1, oracle=system.oracles[1].address, active=False)
    log = one(tx, engine.MarketSet)
    assert (log.market_id, log.active) == (1, False)
    assert engine.market_count() == 3
    assert engine.markets(1).active is False


@pytest.mark.parametrize(
    "changes, reason",
    [
        (dict(market_id=4), "engine: bad market id"),  # not the next id
        (dict(oracle=ZERO_ADDRESS), "engine: zero oracle"),
        (dict(mmr=0), "engine: mmr is zero"),
        (dict(imr=WAD + 1), "engine: imr above 100%"),
        (dict(imr=625 * PCT // 100 - 1), "engine: imr below mmr * call_ratio"),  # 5% * 1.25
        (dict(mmr=3 * PCT), "engine: penalty not below mmr * critical_ratio"),  # 1.5% = 3% * 0.5
        (dict(fee=PCT + 1), "engine: fee above 1%"),
        (dict(window_cap=0), "engine: window cap is zero"),
        (dict(window_cap=2**104), "engine: window cap too large"),
        (dict(mmr=3 * PCT + 1), "engine: ratio precision is 1e-9"),
        (dict(imr=10 * PCT + 1), "engine: ratio precision is 1e-9"),
        (dict(fee=PCT // 2 + 1), "engine: ratio precision is 1e-9"),
    ],
    ids=[
        "id",
        "oracle",
        "mmr-zero",
        "imr-max",
        "imr-call",
        "penalty",
        "fee",
        "cap",
        "cap-max",
        "mmr-precision",
        "imr-precision",
        "fee-precision",
    ],
)
def test_set_market_bound_reverts(system, owner, changes, reason):
    with ape.reverts(reason):
        set_market(system, owner, **changes)


@pytest.mark.parametrize(
    "changes",
    [
        dict(imr=WAD),
        dict(imr=625 * PCT // 100),  # exactly mmr * call_ratio
        dict(mmr=3 * PCT + 10**9),  # penalty just below mmr * critical_ratio (1e-9 steps)
        dict(fee=PCT),
        dict(fee=0),
        dict(window_cap=1),
        dict(window_cap=2**104 - 1),
    ],
    ids=["imr-100%", "imr-call", "mmr-penalty", "fee-1%", "fee-0", "cap-1", "cap-max"],
)
def test_set_market_accepts_values_at_the_bounds(system, owner, changes):
    tx = set_market(system, owner, **changes)
    log = one(tx, system.engine.MarketSet)
    for name, value in changes.items():
        assert getattr(log, name) == value


def test_set_market_caps_the_number_of_markets_at_sixteen(system, owner):
    engine = system.engine
    for market_id in range(3, 16):
        set_market(system, owner, market_id=market_id)
    assert engine.market_count() == 16
    with ape.reverts("engine: bad market id"):
        set_market(system, owner, market_id=16)
    set_market(system, owner, market_id=15, active=False)  # the last one can still change


# --- set_risk_params ----------------------------------------------------------------------------


def test_default_risk_params_match_the_protocol(system):
    p = system.engine.risk_params()
    assert p.call_ratio == 125 * WAD // 100
    assert p.critical_ratio == WAD // 2
    assert p.grace_period == 3_600
    assert p.close_factor == 25 * PCT
    assert p.tranche_interval == 60
    assert p.liquidation_penalty == 15 * WAD // 1_000
    assert p.keeper_share == 20 * PCT
    assert p.liquidation_window == 300
    assert p.min_position_notional == 10 * WAD
    assert p.min_keeper_reward <= p.max_keeper_reward
    assert p.call_reward <= p.max_keeper_reward
    assert params_of(system.engine) == RiskParams()  # the SDK's defaults agree


def test_set_risk_params_stores_and_emits_every_field(system, owner):
    engine = system.engine
    new = RiskParams(
        call_ratio=15 * WAD // 10,
        critical_ratio=6 * WAD // 10,
        grace_period=1_800,
        close_factor=40 * PCT,
        tranche_interval=120,
        liquidation_penalty=2 * PCT,
        keeper_share=30 * PCT,
        min_keeper_reward=2 * WAD,
        max_keeper_reward=500 * WAD,
        call_reward=3 * WAD,
        liquidation_window=600,
        min_position_notional=25 * WAD,
    )
    tx = engine.set_risk_params(new.as_tuple(), sender=owner)
    assert list(one(tx, engine.RiskParamsSet).params) == list(new.as_tuple())
    assert params_of(engine) == new


BOUNDS = [
    ("call_ratio", WAD, "call_ratio out of bounds"),
    ("call_ratio", 3 * WAD + 1, "call_ratio out of bounds"),
    ("critical_ratio", WAD // 10 - 1, "critical_ratio out of bounds"),
    ("critical_ratio", WAD, "critical_ratio out of bounds"),
    ("grace_period", 299, "grace_period out of bounds"),
    ("grace_period", 7 * 86_400 + 1, "grace_period out of bounds"),
    ("close_factor", 5 * PCT - 1, "close_factor out of bounds"),
    ("close_factor", WAD + 1, "close_factor out of bounds"),
    ("tranche_interval", 0, "tranche_interval out of bounds"),
    ("tranche_interval", 3_601, "tranche_interval out of bounds"),
    ("liquidation_penalty", WAD // 10 + 1, "liquidation_penalty out of bounds"),
    ("keeper_share", WAD + 1, "keeper_share out of bounds"),
    ("max_keeper_reward", 10**6 * WAD + 1, "max_keeper_reward out of bounds"),
    ("min_keeper_reward", 1_000 * WAD + 1, "min_keeper_reward above max"),
    ("call_reward", 1_000 * WAD + 1, "call_reward above max_keeper_reward"),
    ("liquidation_window", 59, "liquidation_window out of bounds"),
    ("liquidation_window", 86_401, "liquidation_window out of bounds"),
    ("min_position_notional", 10**6 * WAD + 1, "min_position_notional out of bounds"),
]


@pytest.mark.parametrize("field, value, reason", BOUNDS, ids=[f"{f}={v}" for f, v, _ in BOUNDS])
def test_set_risk_params_bound_reverts(system, owner, field, value, reason):
    with ape.reverts(f"engine: {reason}"):
        set_params(system, owner, **{field: value})


EDGES = [
    dict(call_ratio=WAD + 1),
    dict(critical_ratio=WAD // 10, liquidation_penalty=WAD // 200 - 1),  # 5% * 0.1 > penalty
    dict(critical_ratio=WAD - 1),
    dict(grace_period=300),
    dict(grace_period=7 * 86_400),
    dict(close_factor=5 * PCT),
    dict(close_factor=WAD),
    dict(tranche_interval=1),
    dict(tranche_interval=3_600),
    dict(liquidation_penalty=0),
    dict(keeper_share=0),
    dict(keeper_share=WAD),
    dict(max_keeper_reward=10**6 * WAD),
    dict(min_keeper_reward=1_000 * WAD, call_reward=1_000 * WAD),  # both equal to the max
    dict(min_keeper_reward=0, max_keeper_reward=0, call_reward=0),
    dict(liquidation_window=60),
    dict(liquidation_window=86_400),
    dict(min_position_notional=0),
    dict(min_position_notional=10**6 * WAD),
]


@pytest.mark.parametrize(
    "changes", EDGES, ids=["-".join(f"{k}={v}" for k, v in c.items()) for c in EDGES]
)
def test_set_risk_params_accepts_values_at_the_bounds(system, owner, changes):
    tx = set_params(system, owner, **changes)
    one(tx, system.engine.RiskParamsSet)
    p = params_of(system.engine)
    for name, value in changes.items():
        assert getattr(p, name) == value


def test_penalty_must_stay_below_every_markets_mmr_times_critical(system, owner):
    # ETH and BTC: mmr 5% * critical 0.5 = 2.5%
    with ape.reverts("engine: penalty not below mmr * critical_ratio"):
        set_params(system, owner, liquidation_penalty=25 * WAD // 1_000)
    with ape.reverts("engine: penalty not below mmr * critical_ratio"):
        set_params(system, owner, critical_ratio=3 * WAD // 10)  # 5% * 0.3 = 1.5% = penalty
    set_params(system, owner, liquidation_penalty=25 * WAD // 1_000 - 1)


def test_call_ratio_must_keep_every_markets_imr_above_mmr_times_call(system, owner):
    # every market has imr = 2 * mmr
    with ape.reverts("engine: imr below mmr * call_ratio"):
        set_params(system, owner, call_ratio=2 * WAD + 1)
    set_params(system, owner, call_ratio=2 * WAD)


def test_max_call_ratio_accepted_once_markets_allow_it(system, owner):
    with ape.reverts("engine: imr below mmr * call_ratio"):
        set_params(system, owner, call_ratio=3 * WAD)
    for market_id, mmr in ((0, 5 * PCT), (1, 5 * PCT), (2, 10 * PCT)):
        set_market(
            system,
            owner,
            market_id=market_id,
            oracle=system.oracles[market_id].address,
            imr=3 * mmr,
            mmr=mmr,
        )
    set_params(system, owner, call_ratio=3 * WAD)
    assert system.engine.risk_params().call_ratio == 3 * WAD


# --- ownership ----------------------------------------------------------------------------


def _admin_calls(system, who):
    engine = system.engine
    p = params_of(engine).as_tuple()
    return {
        "set_market": lambda: set_market(system, who),
        "set_risk_params": lambda: engine.set_risk_params(p, sender=who),
        "set_guardian": lambda: engine.set_guardian(who.address, sender=who),
        "transfer_ownership": lambda: engine.transfer_ownership(who.address, sender=who),
        "renounce_ownership": lambda: engine.renounce_ownership(sender=who),
    }


@pytest.mark.parametrize(
    "call",
    ["set_market", "set_risk_params", "set_guardian", "transfer_ownership", "renounce_ownership"],
)
@pytest.mark.parametrize("role", ["stranger", "guardian"])
def test_admin_functions_are_owner_only(system, request, call, role):
    who = request.getfixturevalue(role)
    with ape.reverts(NOT_OWNER):
        _admin_calls(system, who)[call]()


def test_ownership_transfer_takes_two_steps(system, owner, new_owner, stranger):
    engine = system.engine
    tx = engine.transfer_ownership(new_owner.address, sender=owner)
    log = one(tx, engine.OwnershipTransferStarted)
    assert (log.previous_owner, log.new_owner) == (owner.address, new_owner.address)
    assert engine.pending_owner() == new_owner.address
    assert engine.owner() == owner.address  # nothing changes before the acceptance
    engine.set_guardian(owner.address, sender=owner)

    with ape.reverts(NOT_NEW_OWNER):
        engine.accept_ownership(sender=stranger)
    with ape.reverts(NOT_NEW_OWNER):
        engine.accept_ownership(sender=owner)

    tx = engine.accept_ownership(sender=new_owner)
    log = one(tx, engine.OwnershipTransferred)
    assert (log.previous_owner, log.new_owner) == (owner.address, new_owner.address)
    assert engine.owner() == new_owner.address
    assert engine.pending_owner() == ZERO_ADDRESS
    with ape.reverts(NOT_OWNER):
        engine.set_guardian(owner.address, sender=owner)
    set_market(system, new_owner)
    assert engine.market_count() == 4


def test_renounce_ownership_leaves_no_owner(system, owner):
    engine = system.engine
    engine.renounce_ownership(sender=owner)
    assert engine.owner() == ZERO_ADDRESS
    with ape.reverts(NOT_OWNER):
        set_market(system, owner)


# --- guardian and pause -------------------------------------------------------------------------


def test_set_guardian_by_owner_emits_event_and_moves_the_role(system, owner, guardian, stranger):
    engine = system.engine
    assert engine.guardian() == guardian.address
    tx = engine.set_guardian(stranger.address, sender=owner)
    assert one(tx, engine.GuardianSet).guardian == stranger.address
    assert engine.guardian() == stranger.address

    with ape.reverts(NOT_GUARDIAN):
        engine.set_paused(True, sender=guardian)  # the old guardian lost the role
    tx = engine.set_paused(True, sender=stranger)
    assert one(tx, engine.PauseSet).caller == stranger.address


@pytest.mark.parametrize("role", ["guardian", "owner"])
def test_guardian_and_owner_may_pause_and_resume(system, request, role):
    engine = system.engine
    who = request.getfixturevalue(role)
    tx = engine.set_paused(True, sender=who)
    log = one(tx, engine.PauseSet)
    assert (log.paused, log.caller) == (True, who.address)
    assert engine.paused() is True
    tx = engine.set_paused(False, sender=who)
    log = one(tx, engine.PauseSet)
    assert (log.paused, log.caller) == (False, who.address)
    assert engine.paused() is False


def test_stranger_may_not_pause(system, stranger):
    with ape.reverts(NOT_GUARDIAN):
        system.engine.set_paused(True, sender=stranger)
    assert system.engine.paused() is False


def test_owner_may_pause_with_no_guardian(system, owner, guardian):
    engine = system.engine
    tx = engine.set_guardian(ZERO_ADDRESS, sender=owner)
    assert one(tx, engine.GuardianSet).guardian == ZERO_ADDRESS
    with ape.reverts(NOT_GUARDIAN):
        engine.set_paused(True, sender=guardian)
    engine.set_paused(True, sender=owner)
    assert engine.paused() is True


# --- constructor -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "zero, reason",
    [
        (0, "engine: zero token"),
        (1, "engine: zero pool"),
        (2, "engine: zero fund"),
        (3, "engine: zero order book"),
    ],
    ids=["token", "pool", "fund", "order_book"],
)
def test_constructor_refuses_zero_addresses(project, system, deployer, guardian, zero, reason):
    args = [system.token.address, system.pool.address, system.fund.address, system.book.address]
    args[zero] = ZERO_ADDRESS
    checker = deployer.deploy(project.MarginParams)
    with ape.reverts(reason):
        deployer.deploy(project.MarginEngine, *args[:3], guardian.address, checker.address, args[3])


def test_constructor_refuses_token_above_18_decimals(project, system, deployer, guardian):
    token = deployer.deploy(project.MockERC20, "Odd", "ODD", 19)
    with ape.reverts("engine: token decimals above 18"):
        deployer.deploy(
            project.MarginEngine,
            token.address,
            system.pool.address,
            system.fund.address,
            guardian.address,
            deployer.deploy(project.MarginParams).address,
            system.book.address,
        )


def test_constructor_sets_owner_guardian_scale_and_defaults(project, deployer, guardian):
    token = deployer.deploy(project.MockERC20, "Six", "SIX", 6)
    pool = deployer.deploy(project.LiquidityPool, token.address, "margincall LP", "mcLP")
    fund = deployer.deploy(project.InsuranceFund, token.address, pool.address)
    engine = deployer.deploy(
        project.MarginEngine,
        token.address,
        pool.address,
        fund.address,
        guardian.address,
        deployer.deploy(project.MarginParams).address,
        deployer.address,
    )
    assert engine.owner() == deployer.address
    assert engine.ORDER_BOOK() == deployer.address
    assert engine.guardian() == guardian.address
    assert engine.SCALE() == 10**12
    assert (engine.TOKEN(), engine.POOL(), engine.FUND()) == (
        token.address,
        pool.address,
        fund.address,
    )
    assert engine.market_count() == 0
    assert engine.paused() is False
    assert params_of(engine) == RiskParams()
