"""The same state machine as the titanoboa campaigns (tests/stateful/machine.py), on Anvil
through Ape: a small budget (4 examples of up to 12 steps per collateral decimals: a trade
is four transactions, an order committed, a round, a settlement and a block between) that
confirms the properties through the real client path: transactions signed by
Ape test accounts and mined by Anvil, views through Ape's contract calls, events decoded from
receipts, revert reasons as Ape reports them (views expected to revert, and token balances,
are read with a plain `eth_call`: see `ape_system.ApeDriver`).

Runs inside `ape test` (part of `make test`); skipped under plain pytest without Ape's
plugin. `MARGINCALL_FUZZ_APE_EXAMPLES=N` changes the number of examples. Derandomized like the
quick titanoboa profile (`MARGINCALL_FUZZ_RANDOM=1` for fresh draws).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from tests.stateful.machine import Campaign, EngineMachine

pytestmark = pytest.mark.skipif(
    'not config.pluginmanager.hasplugin("ape_test")', reason="needs Ape's pytest plugin"
)

SETTINGS = settings(
    max_examples=int(os.environ.get("MARGINCALL_FUZZ_APE_EXAMPLES", 4)),
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=not os.environ.get("MARGINCALL_FUZZ_RANDOM"),  # as the quick profile
)


@pytest.fixture(scope="module", params=[6, 18], ids=["usdc6", "dai18"])
def ape_driver(request, chain, project, accounts, owner, guardian, lp, keeper, rival_keeper):
    """A funded system of its own, with the conftest roles and three traders."""
    from tests.stateful.ape_system import deploy_funded_ape_system

    roles = {
        "owner": owner,
        "guardian": guardian,
        "lp": lp,
        "second_lp": accounts[7],
        "keeper": keeper,
        "rival_keeper": rival_keeper,
        "trader0": accounts[5],
        "trader1": accounts[6],
        "trader2": accounts[8],
        "donor": accounts[9],
    }
    return deploy_funded_ape_system(chain, project, roles, request.param)


def test_engine_state_machine_on_anvil(ape_driver):
    """Random sequences of every action keep every property of the machine on Anvil."""
    campaign = Campaign(f"ape decimals={ape_driver.decimals}")

    class Machine(EngineMachine):
        driver = ape_driver

    Machine.campaign = campaign
    run_state_machine_as_test(Machine, settings=SETTINGS)
    print("\n" + campaign.summary())
    assert campaign.examples > 0
