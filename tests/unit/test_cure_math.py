"""The reference cure amounts (`margincall.math.cure_deposit`, `cure_reduction`): the smallest
deposit, and a near-smallest reduction per market, that bring a called account back to the
call ratio, checked against the reference valuation (no chain)."""

import pytest

from margincall import math as ref
from margincall.constants import WAD

PARAMS = ref.RiskParams()
FEE = 5 * 10**14  # 0.05%


def _cured(account: ref.Account, scale: int) -> bool:
    v = ref.evaluate(account, scale)
    return v.equity * WAD >= PARAMS.call_ratio * v.maintenance


def _account(decimals: int, price: int, second: bool = False) -> tuple[ref.Account, int]:
    """A 10 ETH long opened at 2,000 with 2,500 tokens, priced at `price` (whole units)."""
    scale = 10 ** (18 - decimals)
    eth = ref.Position(0, 10 * WAD, 20_000 * WAD, price * WAD, 5 * 10**16, 10**17)
    btc = ref.Position(1, -WAD // 10, -6_000 * WAD, 60_000 * WAD, 5 * 10**16, 10**17)
    positions = (eth, btc) if second else (eth,)
    return ref.Account(2_500 * 10**decimals, positions), scale


@pytest.mark.parametrize("decimals", [6, 18])
@pytest.mark.parametrize("second", [False, True], ids=["one_market", "two_markets"])
def test_cure_deposit_is_the_smallest_deposit_that_restores_the_call_ratio(decimals, second):
    account, scale = _account(decimals, 1_850, second)
    assert not _cured(account, scale)
    need = ref.cure_deposit(account, PARAMS, scale)
    assert need > 0
    assert _cured(ref.Account(account.collateral + need, account.positions), scale)
    assert not _cured(ref.Account(account.collateral + need - 1, account.positions), scale)


@pytest.mark.parametrize("decimals", [6, 18])
def test_cure_reduction_cures_and_is_within_two_percent_of_the_smallest(decimals):
    account, scale = _account(decimals, 1_850)
    reduce = ref.cure_reduction(account, 0, PARAMS, scale, FEE)
    assert reduce is not None and 0 < reduce < 10 * WAD
    assert _cured(ref.after_reduction(account, 0, reduce, FEE, scale), scale)
    assert not _cured(ref.after_reduction(account, 0, reduce - reduce // 50, FEE, scale), scale)


def test_cure_amounts_are_zero_for_a_healthy_account():
    account, scale = _account(6, 2_000)
    assert _cured(account, scale)
    assert ref.cure_deposit(account, PARAMS, scale) == 0
    assert ref.cure_reduction(account, 0, PARAMS, scale, FEE) == 0


def test_cure_reduction_is_none_when_closing_the_market_cannot_cure():
    # the BTC short is small and the ETH long deep under water: closing BTC alone is not enough
    account, scale = _account(6, 1_790, second=True)
    assert not _cured(account, scale)
    assert ref.cure_reduction(account, 1, PARAMS, scale, FEE) is None
    assert ref.cure_reduction(account, 0, PARAMS, scale, FEE) is not None
