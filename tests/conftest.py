"""Shared fixtures: actors by role and a deployed system per collateral decimals."""

import dataclasses

import pytest

from margincall.deploy import DEFAULT_MARKETS, deploy_system
from tests.utils.helpers import fund_lp, skip_revert_source_traceback

# Anvil keeps its clock moving forward across test isolation (snapshot/revert
# does not rewind time), so module-scoped feeds get a 30-day heartbeat: tests
# that travel hours at a time must not find prices stale. Staleness itself is
# tested on adapters of its own in tests/unit/test_oracle_adapter.py.
TEST_MARKETS = tuple(dataclasses.replace(m, heartbeat=30 * 86_400) for m in DEFAULT_MARKETS)


@pytest.fixture(scope="session")
def owner(accounts):
    return accounts[0]


@pytest.fixture(scope="session")
def guardian(accounts):
    return accounts[1]


@pytest.fixture(scope="session")
def lp(accounts):
    return accounts[2]


@pytest.fixture(scope="session")
def keeper(accounts):
    return accounts[3]


@pytest.fixture(scope="session")
def rival_keeper(accounts):
    return accounts[4]


@pytest.fixture(scope="session")
def trader(accounts):
    return accounts[5]


@pytest.fixture(scope="session")
def other_trader(accounts):
    return accounts[6]


@pytest.fixture(scope="session")
def stranger(accounts):
    return accounts[7]


@pytest.fixture(scope="module", autouse=True)
def _actors_first(owner, guardian, lp, keeper, rival_keeper, trader, other_trader, stranger):
    """Builds the role accounts before any test, so Ape's isolation never rebases."""


@pytest.fixture(autouse=True)
def _fast_reverts(monkeypatch):
    """Reverts without Ape's Vyper source traceback (1-3 s each); reasons are still checked."""
    skip_revert_source_traceback(monkeypatch)


@pytest.fixture(scope="module", params=[6, 18], ids=["usdc6", "dai18"])
def decimals(request):
    """Collateral decimals; modules that use `system` run once per value."""
    return request.param


@pytest.fixture(scope="module")
def system(project, owner, guardian, lp, decimals):
    """A deployed system with a funded pool (1,000,000 tokens of LP liquidity)."""
    # no settlement fee: the exact collateral figures of the trading tests stay those of the
    # trade alone; the fee's escrow, refund and payment are tested on books of their own
    # (tests/unit/test_orders.py)
    s = deploy_system(
        project, owner, guardian, decimals=decimals, markets=TEST_MARKETS, settlement_fee_micro=0
    )
    fund_lp(s, lp, 1_000_000)
    return s


@pytest.fixture(scope="module")
def engine(system):
    return system.engine


@pytest.fixture(scope="module")
def token(system):
    return system.token


@pytest.fixture(scope="module")
def pool(system):
    return system.pool


@pytest.fixture(scope="module")
def fund(system):
    return system.fund
