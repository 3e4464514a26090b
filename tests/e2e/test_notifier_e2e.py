"""The notifier bot as a real process (`silverback run notifier` on ResilientRunner) against
the test session's Anvil, with a local webhook: a trader's order is settled (and another
trader's, whose only message that is), then the trader goes through an early warning, a
margin call, its cure, a liquidation tranche and a bankrupt close with bad debt; every
message arrives exactly once (counted by `Idempotency-Key` and raw), in order per trader,
while the webhook is up, while it is down, and across a crash and restart of the notifier.

One test runs the whole story: a bot process takes 8-13 s to start, so the live, outage and
restart phases share processes to keep the suite fast.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from margincall.constants import State
from margincall.deploy.record import DeployConfig, deploy_from_config, write_record
from margincall.notify import (
    EARLY_WARNING,
    KINDS,
    ORDER_KINDS,
    EngineEvent,
    event_key,
    notifier_env,
)
from tests.e2e.conftest import E2E_CONFIG, Deployed
from tests.utils.helpers import fund_lp

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def deployed(project, chain, owner, lp, tmp_path_factory) -> Deployed:
    """The e2e deployment with `critical_ratio` 0.5: the story's tranche is at ratio 0.82,
    where the default 1 would close the whole account (CRITICAL) and leave no bankruptcy."""
    raw = {**E2E_CONFIG, "risk": {"critical_ratio": "0.5"}}
    config = DeployConfig.parse(raw, source="tests/e2e/test_notifier_e2e.py")
    result = deploy_from_config(project, owner, config, chain.provider.network_choice, chain)
    fund_lp(result.system, lp, 1_000_000)
    path = write_record(result.record, tmp_path_factory.mktemp("deployment") / "record.json")
    return Deployed(result.record, path, result.system, result.record.client(project))


# prices of ETH-USD along the story (trader: 996 collateral, long 4 ETH from 2,000)
WARN_PRICE = 1_885  # ratio ~1.42: under the 1.5 warning level, still HEALTHY
CALL_PRICE = 1_855  # ratio ~1.12: CALLABLE
LIQUIDATION_PRICE = 1_800  # ratio ~0.82 after the cure: LIQUIDATABLE
CRASH_PRICE = 1_400  # equity < 0: BANKRUPT
STORY = [
    "order_settled",
    EARLY_WARNING,
    "margin_call",
    "margin_call_cleared",
    "liquidation",
    "liquidation",
    "bad_debt",
]


def notifier_settings(deployed, webhook, tmp_path) -> dict[str, str]:
    return notifier_env(
        deployment=deployed.record_path,
        webhook_url=webhook.url,
        outbox=tmp_path / "outbox.sqlite",
        warn_ratio="1.5",
        retry_base=0.2,
        retry_max=1,
        webhook_timeout=2,
    )


def event_keys(chain, *txs) -> set[str]:
    """The keys of the notified events (MarginCall, ..., BadDebt, the order book's
    OrderSettled, ...) the transactions logged."""
    keys = set()
    for tx in txs:
        for log in tx.decode_logs():
            if log.event_name in KINDS or log.event_name in ORDER_KINDS:
                e = EngineEvent.from_log(log)
                keys.add(event_key(chain.chain_id, e.tx_hash, e.log_index))
    return keys


def status(deployed, who):
    return deployed.client.status(who)


class Story:
    """The trader's way down, step by step, keeping every notified transaction."""

    def __init__(self, deployed, chain, trader, other_trader, keeper):
        self.d, self.chain = deployed, chain
        self.trader, self.other, self.keeper = trader, other_trader, keeper
        self.txs: list = []

    def open_positions(self) -> None:
        self.d.deposit(self.trader, 1_000)
        self.txs.append(self.d.open(self.trader, 4))  # 8,000 notional: ratio ~2.5
        self.d.deposit(self.other, 10_000)
        # stays healthy all along: notified only of its order's settlement
        self.txs.append(self.d.open(self.other, 1))

    def fall_under_warning(self) -> None:
        self.d.set_price(WARN_PRICE)
        s = status(self.d, self.trader)
        assert s.state == State.HEALTHY and s.ratio < 3 * 10**18 // 2

    def margin_call(self) -> None:
        self.d.set_price(CALL_PRICE)
        assert status(self.d, self.trader).state == State.CALLABLE
        self.txs.append(self.d.client.margin_call(self.trader, sender=self.keeper))

    def cure(self) -> None:
        self.txs.append(self.d.deposit(self.trader, 100))  # clears the call
        s = status(self.d, self.trader)
        # back above the call ratio, but under warn * 1.05: the warning episode goes on
        assert s.state == State.HEALTHY and s.ratio < 1_575 * 10**15

    def liquidate_tranche(self) -> None:
        self.d.set_price(LIQUIDATION_PRICE)
        assert status(self.d, self.trader).state == State.LIQUIDATABLE
        self.txs.append(self.d.client.liquidate(self.trader, sender=self.keeper))

    def bankrupt(self) -> None:
        self.d.set_price(CRASH_PRICE)
        assert status(self.d, self.trader).state == State.BANKRUPT
        self.txs.append(self.d.client.liquidate(self.trader, sender=self.keeper))
        assert status(self.d, self.trader).positions == 0

    def keys(self) -> set[str]:
        return event_keys(self.chain, *self.txs)


def assert_exactly_once(webhook, story: Story) -> None:
    got = webhook.received()
    by_key = Counter(d.key for d in got)
    assert not [k for k, n in by_key.items() if n > 1], f"duplicates: {by_key}"
    assert len(got) == len(by_key)  # raw count: nothing sent twice
    events = story.keys()
    warnings = {d.key for d in got if d.body["kind"] == EARLY_WARNING}
    assert len(events) == 7 and len(warnings) == 1
    assert set(by_key) == events | warnings  # nothing lost, nothing extra
    others = [d.body["kind"] for d in got if d.body["account"] == story.other.address]
    assert others == ["order_settled"]
    mine = [d.body["kind"] for d in got if d.body["account"] == story.trader.address]
    assert mine == STORY  # the trader's messages in order
    assert len(mine) + len(others) == len(got)
    for d in got:
        assert d.body["key"] == d.key and d.body["text"]
    bad_debt = next(d.body for d in got if d.body["kind"] == "bad_debt")
    assert int(bad_debt["args"]["amount"]) > 0
    assert int(bad_debt["args"]["amount"]) == int(bad_debt["args"]["paid_by_fund"]) + int(
        bad_debt["args"]["socialised"]
    )


def test_every_message_arrives_exactly_once_across_a_webhook_outage_and_a_crash(
    deployed, webhook, bot_factory, tmp_path, chain, trader, other_trader, keeper
):
    settings = notifier_settings(deployed, webhook, tmp_path)
    bot = bot_factory("notifier", **settings)
    bot.wait_ready()
    story = Story(deployed, chain, trader, other_trader, keeper)
    story.open_positions()

    # live: the two settlements, then the early warning, arrive while everything is up
    story.fall_under_warning()
    live = webhook.wait_for(lambda got: len(got) >= 3, what="warning", on_timeout=bot.tail)
    assert [d.body["kind"] for d in live] == ["order_settled", "order_settled", EARLY_WARNING]
    assert live[-1].body["account"] == trader.address

    # the webhook goes down: the call and its cure are read and kept, deliveries retried
    webhook.stop()
    story.margin_call()
    story.cure()
    bot.wait_for(r"notify \[margin_call_cleared\]", timeout=30)
    bot.wait_for(r"delivery of \S+ failed", timeout=30)
    # the notifier crashes (SIGKILL) while they are pending; a tranche happens meanwhile
    bot.kill()
    story.liquidate_tranche()

    bot = bot_factory("notifier", **settings)  # restarts on the same outbox
    bot.wait_ready()
    bot.wait_for(r"notify \[liquidation\]", timeout=30)  # read from the outbox's cursor
    assert len(webhook.received()) == 3

    # the webhook comes back on the same port: the backlog goes out in order, no block needed
    webhook.start()
    webhook.wait_for(lambda got: len(got) >= 6, what="the backlog", on_timeout=bot.tail)

    # live again: the bankrupt close and its bad debt
    story.bankrupt()
    webhook.wait_for_keys(story.keys(), what="all events", on_timeout=bot.tail)
    time.sleep(1.0)  # a duplicate or a stray message would arrive by now
    bot.stop()
    assert "stopping with 0 messages pending" in bot.log()
    assert "notify [bad_debt]" in bot.log()  # every message also goes to the log
    assert_exactly_once(webhook, story)
