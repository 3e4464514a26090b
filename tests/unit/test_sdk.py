"""The SDK on Anvil: its reads equal the engine's views, and every sender raises its typed
error BEFORE a transaction is sent (the sender's nonce is unchanged), for both collateral
decimals.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from margincall.constants import WAD, PlanCode, State
from margincall.math import div_floor
from margincall.sdk import (
    InsufficientFunds,
    InsufficientMargin,
    InvalidRequest,
    LiquidationPreview,
    MarginEngineClient,
    MarginStatus,
    NotCallable,
    NotLiquidatable,
    OracleError,
    SlippageExceeded,
    StalePrice,
    TooSoon,
    UnderMarginCall,
)
from tests.utils.helpers import (
    deposit,
    mint_and_approve,
    open_position,
    publish_round,
    set_risk_params,
    wad,
)

ETH, BTC, SOL = 0, 1, 2
CALLABLE_PRICE = 1_860.0  # the 8x ETH long: ratio 1.10
LIQUIDATABLE_PRICE = 1_805.0  # ratio 0.61: one tranche at the close factor, then too soon


@pytest.fixture(scope="module")
def client(system):
    return MarginEngineClient.from_system(system)


@pytest.fixture
def leveraged(system, trader):
    """The trader's 8x ETH long (1,000 tokens, 4 ETH at 2,000), HEALTHY."""
    deposit(system, trader, 1_000)
    open_position(system, trader, ETH, 4.0)
    return trader


@pytest.fixture
def called(system, leveraged, keeper):
    system.set_price(ETH, CALLABLE_PRICE)
    system.engine.margin_call(leveraged, sender=keeper)
    return leveraged


@contextmanager
def not_sent(*who):
    """Asserts that nothing is sent from `who` inside the block."""
    before = [w.nonce for w in who]
    yield
    assert [w.nonce for w in who] == before


# --- reads ---------------------------------------------------------------------------------


def test_status_equals_check_margin_healthy_callable_and_called(system, client, leveraged, keeper):
    for step in ("healthy", "callable", "called"):
        if step == "callable":
            system.set_price(ETH, CALLABLE_PRICE)
        if step == "called":
            system.engine.margin_call(leveraged, sender=keeper)
        raw = system.engine.check_margin(leveraged)
        st = client.status(leveraged)
        assert st == MarginStatus.from_struct(raw)
        assert st.account == leveraged.address
        assert (st.equity, st.maintenance, st.initial, st.ratio) == (
            raw.equity,
            raw.maintenance,
            raw.initial,
            raw.ratio,
        )
        assert st.state == State[step.upper()] == raw.state
        assert st.collateral == client.to_wad(system.engine.collateral_of(leveraged))
        assert st.call_deadline == raw.call_deadline
        assert st.priced


def test_statuses_equal_check_margins_in_chunks(system, client, leveraged, other_trader, stranger):
    deposit(system, other_trader, 500)
    accounts = [leveraged, other_trader, stranger]
    system.set_price(ETH, CALLABLE_PRICE)
    raw = [MarginStatus.from_struct(s) for s in system.lens.check_margins(accounts)]
    assert client._fast_scan() is not None  # the keeper's raw decode path, not the fallback
    assert client.statuses(accounts) == raw
    assert client.statuses(accounts, chunk=1) == raw
    assert [s.state for s in raw] == [State.CALLABLE, State.HEALTHY, State.HEALTHY]
    assert raw[2].ratio == 2**256 - 1
    with pytest.raises(InvalidRequest):
        client.statuses(accounts, chunk=501)


def test_calls_cleared_names_the_calls_that_cleared_themselves(
    system, chain, client, called, other_trader, stranger
):
    """`MarginLens.calls_cleared`: the called account once the feed was back above the
    call ratio since the call (no transaction to the engine), never an account without a
    call; at most 500 accounts."""
    accounts = [called, other_trader, stranger]
    assert client.calls_cleared(accounts) == set() and client.calls_cleared([]) == set()
    chain.pending_timestamp = chain.blocks.head.timestamp + 60
    system.set_price(ETH, 1_900)  # HEALTHY again, for a while
    chain.pending_timestamp = chain.blocks.head.timestamp + 60
    system.set_price(ETH, CALLABLE_PRICE)
    assert client.calls_cleared(accounts) == {called.address}
    assert system.engine.check_margin(called).state == State.CALLED  # until its deadline
    with pytest.raises(InvalidRequest):
        client.calls_cleared([stranger] * 501)


def test_positions_match_the_engine_and_price_pnl(system, client, leveraged):
    open_position(system, leveraged, SOL, -2.0)
    system.set_price(ETH, 2_100.0)
    positions = client.positions(leveraged)
    assert [p.market_id for p in positions] == [ETH, SOL]
    for p in positions:
        size, cost = system.engine.position(leveraged, p.market_id)
        price = system.oracles[p.market_id].price()
        assert (p.size, p.open_notional, p.price) == (size, cost, price)
        assert p.pnl == div_floor(size * price, WAD) - cost
    eth = positions[0]
    assert eth.size == wad(4.0) and eth.is_long
    assert eth.pnl > 0  # bought at 2,000, now 2,100


def test_preview_equals_engine_preview(system, client, leveraged):
    set_risk_params(system, critical_ratio=WAD // 2)  # a tranche below ratio 1
    system.set_price(ETH, LIQUIDATABLE_PRICE)
    raw = system.lens.preview_liquidation(leveraged)
    preview = client.preview_liquidation(leveraged)
    assert preview == LiquidationPreview.from_struct(raw)
    assert preview.liquidatable and preview.reason == PlanCode.OK
    assert preview.state == State.LIQUIDATABLE
    assert preview.closed == ((ETH, raw.closed_sizes[0]),)
    assert preview.keeper_reward == raw.keeper_reward > 0
    assert preview.ratio_after == raw.ratio_after


def test_token_wad_conversions(system, client):
    scale = 10 ** (18 - system.decimals)
    assert client.to_wad(7) == 7 * scale
    assert client.to_tokens(7 * scale + scale - 1) == 7
    assert client.to_tokens(7 * scale + scale - 1, round_up=True) == 7 + (scale > 1)
    assert client.to_tokens(7 * scale, round_up=True) == 7
    assert client.tokens("12.5") == 125 * system.unit // 10


# --- senders: checked before sending -------------------------------------------------------------


def test_deposit_checks_balance_and_allowance_then_sends(system, client, trader):
    with not_sent(trader), pytest.raises(InvalidRequest):
        client.deposit(0, sender=trader)
    with not_sent(trader), pytest.raises(Exception, match="balance"):
        client.deposit(client.tokens(1), sender=trader)
    amount = mint_and_approve(system, trader, 10)
    nonce = trader.nonce
    client.deposit(amount, sender=trader)
    assert trader.nonce == nonce + 1  # `not_sent` would see a transaction
    assert system.engine.collateral_of(trader) == amount


def test_deposit_call_is_checked_and_not_sent(system, client, trader, stranger):
    """`deposit_call` (for senders that do not wait) checks like `deposit`, sends nothing."""
    with not_sent(trader), pytest.raises(InvalidRequest):
        client.deposit_call(0, sender=trader)
    system.token.mint(trader.address, client.tokens(5), sender=trader)
    with not_sent(trader), pytest.raises(InsufficientFunds, match="approve the engine first"):
        client.deposit_call(client.tokens(5), sender=trader, account=stranger)
    client.approve(client.tokens(5), sender=trader)
    assert system.token.allowance(trader, system.engine) == client.tokens(5)
    with not_sent(trader):
        method, args = client.deposit_call(client.tokens(5), sender=trader, account=stranger)
    assert args == (client.tokens(5), stranger.address)
    method(*args, sender=trader)
    assert system.engine.collateral_of(stranger) == client.tokens(5)


def test_withdraw_beyond_initial_margin_raises_before_sending(system, client, leveraged):
    st = client.status(leveraged)
    free = client.to_tokens(st.equity - st.initial)
    with not_sent(leveraged), pytest.raises(InsufficientMargin, match="initial margin"):
        client.withdraw(free + 1, sender=leveraged)
    # the SDK's bound is the engine's: exactly the free margin goes through
    client.withdraw(free, sender=leveraged)
    assert client.status(leveraged).equity >= client.status(leveraged).initial


def test_withdraw_more_than_collateral_raises(client, leveraged):
    with not_sent(leveraged), pytest.raises(InvalidRequest, match="exceeds collateral"):
        client.withdraw(client.collateral(leveraged) + 1, sender=leveraged)


def test_withdraw_under_margin_call_raises_before_sending(client, called):
    assert client.status(called).state == State.CALLED
    with not_sent(called), pytest.raises(UnderMarginCall, match="margin call"):
        client.withdraw(1, sender=called)


def settle_pending(system, client, who):
    """Publishes the next round and settles `who`'s pending orders through the SDK."""
    publish_round(system, ETH)
    ids = [o.order_id for o in client.orders.pending(who)]
    [receipt] = client.orders.settle_many(ids, sender=who)
    assert all(o.settled for o in client.orders.outcomes(receipt))


def test_trade_beyond_slippage_raises_before_sending(system, client, trader):
    deposit(system, trader, 1_000)
    price = client.price(ETH)
    with not_sent(trader), pytest.raises(SlippageExceeded, match="above acceptable"):
        client.trade(ETH, wad(0.1), price - 1, sender=trader)
    with not_sent(trader), pytest.raises(SlippageExceeded, match="below acceptable"):
        client.trade(ETH, -wad(0.1), price + 1, sender=trader)
    client.trade(ETH, wad(0.1), client.acceptable_price(ETH, wad(0.1)), sender=trader)
    assert system.engine.position(trader, ETH)[0] == 0  # committed, not filled yet
    settle_pending(system, client, trader)
    assert system.engine.position(trader, ETH)[0] == wad(0.1)


def test_trade_beyond_initial_margin_raises_before_sending(system, client, trader):
    deposit(system, trader, 1_000)
    price = client.price(ETH)
    # 10x is the limit (imr 10%); 5 ETH at 2,000 is exactly 10x before the fee
    with not_sent(trader), pytest.raises(InsufficientMargin, match="initial margin"):
        client.trade(ETH, wad(5.0), price, sender=trader)
    client.orders.fill_now_local(ETH, wad(4.9), price, sender=trader)
    assert system.engine.position(trader, ETH)[0] == wad(4.9)


def test_new_exposure_under_margin_call_raises_but_reduction_goes_through(system, client, called):
    price = client.price(ETH)
    with not_sent(called), pytest.raises(UnderMarginCall):
        client.trade(ETH, wad(0.1), price, sender=called)
    outcome = client.orders.fill_now_local(ETH, -wad(1.0), price, sender=called)
    assert outcome.settled and outcome.size_delta == -wad(1.0)
    assert system.engine.position(called, ETH)[0] == wad(3.0)


def test_close_checks_and_closes(system, client, leveraged, stranger):
    price = client.price(ETH)
    with not_sent(stranger), pytest.raises(InvalidRequest, match="no position"):
        client.close(ETH, price, sender=stranger)
    with not_sent(leveraged), pytest.raises(SlippageExceeded):
        client.close(ETH, price + 1, sender=leveraged)
    client.close(ETH, price, sender=leveraged)
    settle_pending(system, client, leveraged)
    assert client.positions(leveraged) == []


def test_margin_call_on_healthy_account_raises_before_sending(client, leveraged, keeper):
    with not_sent(keeper), pytest.raises(NotCallable, match="HEALTHY"):
        client.margin_call(leveraged, sender=keeper)
    with not_sent(keeper), pytest.raises(NotCallable):
        client.margin_call_many([leveraged], sender=keeper)


def test_margin_call_sends_when_callable(system, client, leveraged, keeper):
    system.set_price(ETH, CALLABLE_PRICE)
    client.margin_call(leveraged, sender=keeper)
    assert client.status(leveraged).state == State.CALLED
    with not_sent(keeper), pytest.raises(NotCallable, match="CALLED"):
        client.margin_call(leveraged, sender=keeper)


def test_liquidate_healthy_account_raises_before_sending(client, leveraged, keeper):
    with not_sent(keeper), pytest.raises(NotLiquidatable, match="HEALTHY"):
        client.liquidate(leveraged, sender=keeper)
    with not_sent(keeper), pytest.raises(NotLiquidatable):
        client.liquidate_many([leveraged], sender=keeper)


def test_liquidate_too_soon_raises_before_sending(system, client, leveraged, keeper, chain):
    set_risk_params(system, critical_ratio=WAD // 2)  # tranches below ratio 1
    system.set_price(ETH, LIQUIDATABLE_PRICE)
    client.liquidate(leveraged, sender=keeper)
    chain.mine()
    assert client.status(leveraged).state == State.LIQUIDATABLE
    with not_sent(keeper), pytest.raises(TooSoon, match="tranche interval"):
        client.liquidate(leveraged, sender=keeper)
    # the batch skips it too, so nothing is sent
    with not_sent(keeper), pytest.raises(NotLiquidatable):
        client.liquidate_many([leveraged], sender=keeper)


def test_many_senders_act_on_the_eligible_accounts_only(
    system, client, leveraged, other_trader, keeper
):
    deposit(system, other_trader, 1_000)
    system.set_price(ETH, CALLABLE_PRICE)
    receipts = client.margin_call_many([leveraged, other_trader], sender=keeper)
    assert len(receipts) == 1
    assert client.status(leveraged).state == State.CALLED
    system.set_price(ETH, LIQUIDATABLE_PRICE)
    receipts = client.liquidate_many([other_trader, leveraged], sender=keeper)
    assert len(receipts) == 1
    [ev] = receipts[0].decode_logs(system.engine.Liquidation)
    assert ev.account == leveraged.address


def test_invalid_price_raises_oracle_error_before_sending(system, client, leveraged, keeper, owner):
    system.feeds[ETH].set_reverting(True, sender=owner)
    with pytest.raises(OracleError, match="oracle: feed reverted") as info:
        client.status(leveraged)
    assert info.value.market_id == ETH and not isinstance(info.value, StalePrice)
    with not_sent(leveraged, keeper):
        for send in (
            lambda: client.withdraw(1, sender=leveraged),
            lambda: client.trade(ETH, wad(0.1), 2**256 - 1, sender=leveraged),
            lambda: client.margin_call(leveraged, sender=keeper),
            lambda: client.liquidate(leveraged, sender=keeper),
        ):
            with pytest.raises(OracleError):
                send()
    # the batched view marks the account unpriced instead of reverting
    [st] = client.statuses([leveraged])
    assert not st.priced and not st.needs_action


def test_stale_price_raises_stale_price(system, client, leveraged, owner, chain):
    heartbeat = 30 * 86_400
    now = chain.blocks.head.timestamp
    answer = system.feed_answer(ETH, 2_000.0)
    system.feeds[ETH].set_round(answer, now - heartbeat - 10, now - heartbeat - 10, sender=owner)
    with not_sent(leveraged), pytest.raises(StalePrice, match="stale"):
        client.trade(ETH, wad(0.1), 2**256 - 1, sender=leveraged)
