from margincall.constants import State
from tests.utils.helpers import deposit, open_position, assert_conserved


def test_open_and_check(system, trader, keeper):
    deposit(system, trader, 1_000)
    open_position(system, trader, 0, 4.0)  # 8,000 notional at 2,000: 8x
    st = system.engine.check_margin(trader.address)
    assert st.state == State.HEALTHY
    system.set_price(0, 1_800)
    st = system.engine.check_margin(trader.address)
    print(st)
    assert st.state in (State.CALLABLE, State.LIQUIDATABLE)
    assert_conserved(system, [trader])
