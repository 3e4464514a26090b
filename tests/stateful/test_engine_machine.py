"""Stateful fuzzing of the whole system in titanoboa (the machine: tests/stateful/machine.py).

Profiles:
- quick (default; runs inside `make test`): 14 examples of up to 20 steps per collateral
  decimals (14, not 20, since a trade became four transactions: an order committed, a
  round, a settlement, and the second between them; the run costs what it did),
  derandomized: every run of the same code draws the same examples, so a test run (and CI)
  passes or fails on the code, not on the draw. Exploration is the deep profile's job;
  `MARGINCALL_FUZZ_RANDOM=1` draws fresh quick examples;
- deep (`MARGINCALL_FUZZ=deep`, used by `make fuzz`): 1,000 examples per collateral decimals,
  each of 20 to 29 steps after the seeding step. Hypothesis treats `stateful_step_count` as a
  maximum and sometimes stops an example early; the machine counts its steps and the deep
  profile rejects examples under 20 (Hypothesis does not count rejected examples towards
  `max_examples`). The run prints a summary: examples, steps (min, mean, max), partial
  tranches, full closes, bad debts, refusals, orders filled and cancelled.

`MARGINCALL_FUZZ_EXAMPLES=N` changes the number of examples of either profile.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from tests.stateful.boa_system import BoaDriver, deploy_funded_boa_system
from tests.stateful.machine import Campaign, EngineMachine

settings.register_profile(
    "quick",
    max_examples=14,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # `make test` and CI: the same examples on every run of the same code
)
settings.register_profile(
    "deep",
    max_examples=1_000,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
PROFILE = os.environ.get("MARGINCALL_FUZZ", "quick")
SETTINGS = settings.get_profile(PROFILE)
if os.environ.get("MARGINCALL_FUZZ_RANDOM"):  # fresh draws in the quick profile too
    SETTINGS = settings(SETTINGS, derandomize=False)
if os.environ.get("MARGINCALL_FUZZ_EXAMPLES"):  # one-off campaigns of another size
    SETTINGS = settings(SETTINGS, max_examples=int(os.environ["MARGINCALL_FUZZ_EXAMPLES"]))
MIN_STEPS = {"quick": 0, "deep": 20}[PROFILE]
# what a deep campaign must have reached, besides healthy no-ops
DEEP_COVERAGE = (
    "liquidate:tranche",
    "liquidate:full",
    "margin_call",
    "bad_debt",
    "refused:paused",
    "refused:inactive",
    "refused:oracle",
    "skipped:oracle",
    "oracle:deposit_works",
    "oracle:deposit_under_call",
    "paused:reduce",
    "paused:liquidate",
    "refused:pause_by_stranger",
    "inactive:reduce",
    "lp1:deposit",  # the second LP joins the pool during the run
    "lp1:redeem",
    "refused:lp_locked",  # a redeem inside the deposit cooldown
    "margin_call:reward_cut",  # a call reward cut to keep equity at maintenance
    "liquidate:sliver_window",  # a window with room for a sliver only
    "call:recovered_unseen",  # a call that cleared itself, past its deadline (issue 14)
    "refused:liquidate:WINDOW_FULL",
    # orders (tests/stateful/orders.py)
    "order:filled",
    "order:batch",  # a settle_orders of more than one order
    "order:cancelled",  # a settlement that cannot fill: cancelled with its reason, refunded
    "order:cancelled_other_market_oracle",  # new exposure while another market is unpriced
    "order:cancel_expired",
    "order:commit:reduce_only",
    "order:pending_in_outage",
    "refused:order_round",  # a round other than the first valid one after the commit
    "refused:order_expired",
    "liquidate:sliver_rounding",  # a capped tranche whose roundings would lower the ratio
)


@pytest.fixture(scope="module", params=[6, 18], ids=["usdc6", "dai18"])
def boa_driver(request) -> BoaDriver:
    return deploy_funded_boa_system(request.param)


def test_engine_state_machine(boa_driver):
    """Random sequences of every action keep every property of the machine (per collateral
    decimals)."""
    campaign = Campaign(f"{PROFILE} decimals={boa_driver.decimals}", min_steps=MIN_STEPS)

    class Machine(EngineMachine):
        driver = boa_driver

    Machine.campaign = campaign
    run_state_machine_as_test(Machine, settings=SETTINGS)
    print("\n" + campaign.summary())
    if PROFILE == "deep":
        assert campaign.examples >= SETTINGS.max_examples, campaign.summary()
        assert min(campaign.steps) >= MIN_STEPS
        for key in DEEP_COVERAGE:
            assert campaign.totals[key] > 0, (key, campaign.summary())
