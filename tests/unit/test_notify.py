"""The notifier's logic without a chain (`margincall.notify`): messages built from engine
events, early-warning episodes with hysteresis, the SQLite outbox (idempotent enqueue,
cursor, backoff, per-account order, restart), webhook delivery to a local HTTP server
(outage, refusal, timeout, restart: every message arrives exactly once), the notifier's
tick with a fake chain, and the settings.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from margincall.constants import WAD, State
from margincall.notify import (
    EARLY_WARNING,
    Context,
    Courier,
    EngineEvent,
    Message,
    Notifier,
    NotifierConfig,
    NotifierConfigError,
    Outbox,
    OutboxError,
    WarningPolicy,
    Webhook,
    WebhookRejected,
    WebhookUnreachable,
    default_outbox,
    deliver,
    event_key,
    event_message,
    notifier_env,
    warning_message,
)
from margincall.notify.webhook_sink import WebhookServer

TRADER = "0x" + "a1" * 20
OTHER = "0x" + "b2" * 20
KEEPER = "0x" + "c3" * 20
MAX_UINT = 2**256 - 1
CTX = Context(
    chain_id=31337, engine="0x" + "e0" * 20, collateral_decimals=6, call_ratio=125 * WAD // 100
)


def tx(n: int) -> str:
    return "0x" + f"{n:064x}"


def ev(name: str, block: int, index: int, **args) -> EngineEvent:
    return EngineEvent(name, args, block, tx(block * 100 + index), index)


def margin_call(account=TRADER, block=10, index=0) -> EngineEvent:
    return ev(
        "MarginCall",
        block,
        index,
        account=account,
        caller=KEEPER,
        deadline=1_700_003_600,
        equity=1_120 * WAD,
        maintenance=1_000 * WAD,
        ratio=112 * WAD // 100,
        reward=1_000_000,
        collateral=1_500_000_000,
    )


def cleared(account=TRADER, block=11, index=0) -> EngineEvent:
    return ev(
        "MarginCallCleared",
        block,
        index,
        account=account,
        caller=account,
        equity=1_300 * WAD,
        maintenance=1_000 * WAD,
        ratio=13 * WAD // 10,
    )


def liquidation(account=TRADER, block=12, index=1, full=False, ratio_after=126 * WAD // 100):
    return ev(
        "Liquidation",
        block,
        index,
        account=account,
        keeper=KEEPER,
        tranche=1,
        state=int(State.LIQUIDATABLE),
        fraction=WAD // 4,
        closed_notional=5_000 * WAD,
        penalty=75_000_000,
        keeper_reward=15_000_000,
        fund_fee=60_000_000,
        collateral=900_500_000,
        equity_after=-3 * WAD // 2,
        ratio_after=ratio_after,
        full_close=full,
    )


def bad_debt(account=TRADER, block=13, index=2) -> EngineEvent:
    return ev(
        "BadDebt",
        block,
        index,
        account=account,
        amount=123_450_000,
        paid_by_fund=100_000_000,
        socialised=23_450_000,
    )


def position(account, block, index, size, market_id=0) -> EngineEvent:
    return ev("PositionChanged", block, index, account=account, market_id=market_id, size=size)


@dataclass
class Status:
    account: str
    ratio: int
    priced: bool = True
    equity: int = 1_400 * WAD
    maintenance: int = 1_000 * WAD
    collateral: int = 1_400 * WAD
    state: int = int(State.HEALTHY)


def r(x: float) -> int:
    return int(round(x * 10_000)) * WAD // 10_000


# --- messages ---------------------------------------------------------------------------------


def test_margin_call_message_has_key_units_values_and_text():
    e = margin_call()
    m = event_message(e, CTX)
    assert m.key == event_key(31337, e.tx_hash, 0) == f"31337:{e.tx_hash}:0"
    assert (m.kind, m.account, m.block) == ("margin_call", TRADER, 10)
    p = json.loads(m.body())
    assert p["event"] == "MarginCall" and p["tx_hash"] == e.tx_hash and p["log_index"] == 0
    assert p["chain_id"] == 31337 and p["engine"] == CTX.engine and p["collateral_decimals"] == 6
    # raw integers as exact decimal strings, with their units
    assert p["args"]["equity"] == str(1_120 * WAD) and p["units"]["equity"] == "wad"
    assert p["args"]["reward"] == "1000000" and p["units"]["reward"] == "token"
    assert p["values"]["reward"] == "1" and p["values"]["collateral"] == "1500"
    assert p["values"]["ratio"] == "1.12" and p["values"]["deadline"] == "2023-11-14T23:13:20Z"
    assert p["args"]["caller"] == KEEPER and p["units"]["caller"] == "address"
    assert "Margin call on" in m.text and "ratio 1.1200" in m.text and "2023-11-14" in m.text
    assert Message.from_body(m.body()) == m


def test_every_watched_event_makes_one_message_for_its_account_and_others_none():
    msgs = [event_message(e, CTX) for e in (margin_call(), cleared(), liquidation(), bad_debt())]
    assert [m.kind for m in msgs] == [
        "margin_call",
        "margin_call_cleared",
        "liquidation",
        "bad_debt",
    ]
    assert {m.account for m in msgs} == {TRADER}
    assert len({m.key for m in msgs}) == 4
    assert event_message(position(TRADER, 1, 0, WAD), CTX) is None
    assert event_message(ev("Deposit", 1, 0, account=TRADER, amount=1), CTX) is None


def test_liquidation_and_bad_debt_values_are_exact_and_signed():
    p = event_message(liquidation(), CTX).payload
    assert p["values"]["state"] == "LIQUIDATABLE" and p["args"]["state"] == 3
    assert p["values"]["fraction"] == "0.25" and p["values"]["equity_after"] == "-1.5"
    assert p["values"]["penalty"] == "75" and p["values"]["full_close"] is False
    assert "25.00% of the exposure closed" in p["text"] and "tranche 1" in p["text"]
    full = event_message(liquidation(full=True, ratio_after=MAX_UINT), CTX).payload
    assert full["values"]["ratio_after"] is None  # no position left: infinite
    assert "whole exposure closed" in full["text"] and "ratio after ∞" in full["text"]
    b = event_message(bad_debt(), CTX).payload
    assert (b["values"]["amount"], b["values"]["paid_by_fund"], b["values"]["socialised"]) == (
        "123.45",
        "100",
        "23.45",
    )
    assert "23.45 socialised" in b["text"]


ORDER_ID = (int(TRADER, 16) << 96) | (1_700_000_000 << 8) | 2


def order_settled(size_delta=4 * WAD) -> EngineEvent:
    return ev(
        "OrderSettled",
        20,
        1,
        order_id=ORDER_ID,
        account=TRADER,
        settler=KEEPER,
        market_id=0,
        size_delta=size_delta,
        price=2_010 * WAD,
        round_id=7,
        fee=100_000,
    )


def order_cancelled(reason: str) -> EngineEvent:
    return ev(
        "OrderCancelled",
        21,
        0,
        order_id=ORDER_ID,
        account=TRADER,
        caller=KEEPER,
        reason=reason,
        refund=100_000,
    )


def test_order_settled_refused_and_expired_tell_the_trader_the_price_or_the_reason():
    filled = event_message(order_settled(), CTX)
    assert (filled.kind, filled.account) == ("order_settled", TRADER)
    p = filled.payload
    assert p["args"]["order_id"] == str(ORDER_ID) and p["values"]["order_id"] == hex(ORDER_ID)
    assert p["values"]["price"] == "2010" and p["values"]["fee"] == "0.1"
    assert "bought 4.0000" in filled.text and "at 2,010.00" in filled.text
    assert "first price published after the commit" in filled.text
    assert "sold 1.0000" in event_message(order_settled(-WAD), CTX).text
    refused = event_message(order_cancelled("engine: insufficient margin"), CTX)
    assert refused.kind == "order_refused" and refused.payload["values"]["refund"] == "0.1"
    assert "refused at settlement: engine: insufficient margin" in refused.text
    expired = event_message(order_cancelled("book: expired"), CTX)
    assert expired.kind == "order_expired" and "expired and was cancelled" in expired.text
    assert len({filled.key, refused.key}) == 2


def test_event_from_ape_style_log_normalises_the_hash():
    e = EngineEvent.from_log(
        {
            "event_name": "BadDebt",
            "event_arguments": bad_debt().args,
            "block_number": 7,
            "transaction_hash": bytes.fromhex("AB" * 32),
            "log_index": 3,
        }
    )
    assert e.tx_hash == "0x" + "ab" * 32 and (e.block, e.log_index) == (7, 3)


def test_warning_message_key_is_per_episode():
    s = Status(TRADER, r(1.42))
    m = warning_message(s, 50, r(1.5), CTX, timestamp=1_700_000_000)
    assert m.kind == EARLY_WARNING and m.block == 50
    assert m.key == f"31337:{CTX.engine}:warning:{TRADER}:50"
    assert warning_message(s, 50, r(1.5), CTX).key == m.key  # same episode, same key
    assert warning_message(s, 51, r(1.5), CTX).key != m.key
    assert m.payload["values"]["ratio"] == "1.42" and m.payload["values"]["warn_ratio"] == "1.5"
    assert m.payload["tx_hash"] is None and "below the warning level 1.5000" in m.text


# --- early-warning episodes ---------------------------------------------------------------------


def test_warning_fires_once_per_episode_and_rearms_only_above_hysteresis():
    policy = WarningPolicy(r(1.5), hysteresis=WAD // 20)  # re-arm at 1.575
    assert policy.rearm_ratio == r(1.575)
    warned, fired = False, []
    for x in (2.0, 1.49, 1.2, 1.55, 1.574, 1.45, 1.575, 1.6, 1.3, 1.0):
        warned, fire = policy.step(warned, Status(TRADER, r(x)))
        fired.append(fire)
    # episodes: 1.49 (stays through 1.2, 1.55, 1.574, 1.45), then 1.3 after re-arming at 1.575
    assert fired == [False, True, False, False, False, False, False, False, True, False]


def test_unpriced_status_changes_nothing_and_no_position_rearms():
    policy = WarningPolicy(r(1.5))
    assert policy.step(False, Status(TRADER, 0, priced=False)) == (False, False)
    assert policy.step(True, Status(TRADER, r(3), priced=False)) == (True, False)
    assert policy.step(True, Status(TRADER, MAX_UINT)) == (False, False)
    with pytest.raises(ValueError):
        WarningPolicy(0)


# --- outbox ---------------------------------------------------------------------------------


class Clock:
    def __init__(self, t: float = 1_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def msg(key: str, account: str = TRADER, block: int = 1) -> Message:
    return Message(key, "margin_call", account, block, {"key": key, "text": f"m {key}"})


def test_enqueue_is_idempotent_on_the_key(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    assert [m.key for m in box.enqueue([msg("a"), msg("b")])] == ["a", "b"]
    assert box.enqueue([msg("a"), msg("c"), msg("c")]) == [msg("c")]
    assert box.counts() == {"total": 3, "delivered": 0, "pending": 3}
    box.mark_delivered("a")
    assert box.enqueue([msg("a")]) == []  # a delivered message is never enqueued again
    assert box.counts()["delivered"] == 1


def test_cursor_moves_with_messages_in_one_transaction_and_never_back(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    assert box.cursor is None
    box.commit([msg("a")], cursor=10, positions={TRADER: [0, 2]}, warnings={TRADER: 9})
    assert box.cursor == 10
    with pytest.raises(OutboxError, match="move back"):
        box.commit([msg("b")], cursor=9)
    assert box.counts()["total"] == 1  # rolled back with the cursor
    box.close()
    again = Outbox(tmp_path / "o.sqlite")
    assert again.cursor == 10
    assert again.load_book().markets == {TRADER: {0, 2}}
    assert again.load_warnings() == {TRADER: 9}
    again.commit(positions={TRADER: []}, warnings={TRADER: None})
    assert len(again.load_book()) == 0 and again.load_warnings() == {}


def test_backoff_doubles_per_failure_up_to_the_cap(tmp_path):
    clock = Clock()
    box = Outbox(tmp_path / "o.sqlite", retry_base=1.0, retry_max=5.0, clock=clock)
    box.enqueue([msg("a")])
    delays = [box.mark_failed("a", "HTTP 503") for _ in range(5)]
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert box.attempts("a") == 5
    assert box.due() == []  # next attempt 5 s after the last failure
    clock.t += 4.9
    assert box.due() == []
    clock.t += 0.1
    assert [p.key for p in box.due()] == ["a"]


def test_due_keeps_each_accounts_order_without_blocking_other_accounts(tmp_path):
    clock = Clock()
    box = Outbox(tmp_path / "o.sqlite", clock=clock)
    box.enqueue([msg("t1", TRADER), msg("o1", OTHER), msg("t2", TRADER)])
    assert [p.key for p in box.due()] == ["t1", "o1"]
    box.mark_failed("t1", "down")  # t1 waits, and t2 behind it; o1 does not
    assert [p.key for p in box.due()] == ["o1"]
    box.mark_delivered("o1")
    clock.t += 1
    assert [p.key for p in box.due()] == ["t1"]
    box.mark_delivered("t1")
    assert [p.key for p in box.due()] == ["t2"]


def test_outbox_refuses_another_deployment(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    box.bind({"chain_id": "31337", "engine": "0xE", "engine_block_hash": "0x1"})
    box.bind({"chain_id": "31337", "engine": "0xE", "engine_block_hash": "0x1"})  # same: fine
    with pytest.raises(OutboxError, match="another deployment or chain.*engine_block_hash"):
        box.bind({"chain_id": "31337", "engine": "0xE", "engine_block_hash": "0x2"})
    (tmp_path / "junk.sqlite").write_bytes(b"not a database, not at all" * 100)
    with pytest.raises(OutboxError, match="not a usable outbox"):
        Outbox(tmp_path / "junk.sqlite")


def test_default_outbox_is_per_chain_and_engine():
    @dataclass
    class Rec:
        chain_id: int = 1
        engine: str = "0xAbC"

    assert str(default_outbox(Rec())) == ".margincall/notifier-1-0xabc.sqlite"


# --- webhook delivery ---------------------------------------------------------------------------


@pytest.fixture
def server():
    s = WebhookServer().start()
    yield s
    s.stop()


def test_webhook_posts_json_with_the_idempotency_key(server):
    m = event_message(margin_call(), CTX)
    assert Webhook(server.url, timeout=2).send(m.key, m.body()) == 200
    [d] = server.received()
    assert d.key == m.key and d.body == json.loads(m.body())


def test_outage_then_recovery_delivers_every_message_exactly_once(tmp_path, server):
    clock = Clock()
    box = Outbox(tmp_path / "o.sqlite", retry_base=1.0, retry_max=4.0, clock=clock)
    hook = Webhook(server.url, timeout=2)
    box.enqueue([msg("t1", TRADER), msg("o1", OTHER), msg("t2", TRADER)])

    server.stop()  # connection refused
    report = deliver(box, hook, budget=5)
    assert report.unreachable and list(report.failed) == ["t1"]  # the round stops at once
    clock.t += 1
    assert deliver(box, hook, budget=5).unreachable

    server.start()  # same port
    server.status = 503  # up, but refusing: each due message is tried and rescheduled
    clock.t += 10
    report = deliver(box, hook, budget=5)
    assert not report.unreachable and sorted(report.failed) == ["o1", "t1"]
    assert server.refused == 2 and server.received() == []

    server.status = 200
    assert deliver(box, hook, budget=5).delivered == []  # not due yet: no hammering
    clock.t += 10
    report = deliver(box, hook, budget=5)
    assert report.delivered == ["t1", "o1", "t2"]  # each account's order kept
    assert server.keys() == ["t1", "o1", "t2"]
    assert box.counts() == {"total": 3, "delivered": 3, "pending": 0}
    clock.t += 100
    assert deliver(box, hook, budget=5).delivered == []
    assert len(server.received()) == 3


def test_restart_resumes_pending_messages_without_resending_delivered_ones(tmp_path, server):
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    hook = Webhook(server.url, timeout=2)
    box.enqueue([msg("a"), msg("b", OTHER)])
    assert deliver(box, hook).delivered == ["a", "b"]
    box.enqueue([msg("c")])
    box.close()  # "crash" before c is sent

    again = Outbox(path)
    assert again.enqueue([msg("a"), msg("b", OTHER), msg("c")]) == []  # logs re-read
    assert deliver(again, hook).delivered == ["c"]
    assert server.keys() == ["a", "b", "c"]


def test_timeout_counts_as_unreachable_and_the_round_ends(tmp_path):
    class Slow(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            time.sleep(1.0)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    slow = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=slow.serve_forever, args=(0.05,), daemon=True).start()
    try:
        box = Outbox(tmp_path / "o.sqlite")
        box.enqueue([msg("a"), msg("b", OTHER)])
        url = f"http://127.0.0.1:{slow.server_address[1]}/"
        started = time.monotonic()
        report = deliver(box, Webhook(url, timeout=0.2), budget=5)
        assert report.unreachable and list(report.failed) == ["a"]
        assert time.monotonic() - started < 0.9
    finally:
        slow.shutdown()
        slow.server_close()


def test_delivery_stops_when_its_time_budget_is_spent(tmp_path):
    class SlowSender:
        def __init__(self):
            self.sent = []

        def send(self, key, body):
            time.sleep(0.05)
            self.sent.append(key)
            return 200

    box = Outbox(tmp_path / "o.sqlite")
    box.enqueue([msg(f"k{i}", account=f"0x{i:040x}") for i in range(50)])
    sender = SlowSender()
    started = time.monotonic()
    report = deliver(box, sender, budget=0.2)
    # stops after the send that crosses the budget, far from the 2.5 s all 50 would take
    assert time.monotonic() - started < 1.0
    assert 1 <= len(report.delivered) < 20 and report.delivered == sender.sent
    assert box.counts()["pending"] == 50 - len(sender.sent)


def test_a_redirect_is_a_rejection_not_a_delivery(tmp_path):
    class Redirect(BaseHTTPRequestHandler):
        seen: list[str] = []

        def do_POST(self):  # noqa: N802
            Redirect.seen.append("POST")
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self):  # noqa: N802 - urllib's default would follow with a GET
            Redirect.seen.append("GET")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    try:
        hook = Webhook(f"http://127.0.0.1:{srv.server_address[1]}/hook", timeout=2)
        with pytest.raises(WebhookRejected, match="HTTP 302"):
            hook.send("k", b"{}")
        assert Redirect.seen == ["POST"]
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_non_2xx_answer_is_a_rejection():
    with pytest.raises(ValueError, match="absolute http"):
        Webhook("ftp://example.org/x")
    s = WebhookServer().start()
    try:
        s.status = 404
        with pytest.raises(WebhookRejected, match="HTTP 404"):
            Webhook(s.url, timeout=2).send("k", b"{}")
    finally:
        s.stop()
    with pytest.raises(WebhookUnreachable):
        Webhook(s.url, timeout=2).send("k", b"{}")


# --- the notifier's tick, with a fake chain ------------------------------------------------------


class FakeChain:
    """Logs by block and account ratios; counts the calls; can fail like a dead node."""

    def __init__(self):
        self.events: list[EngineEvent] = []
        self.ratios: dict[str, int] = {}
        self.log_calls: list[tuple[int, int]] = []
        self.down = False

    def logs(self, start, stop):
        if self.down:
            raise ConnectionError("node unreachable")
        self.log_calls.append((start, stop))
        return [e for e in self.events if start <= e.block <= stop]

    def statuses(self, accounts):
        if self.down:
            raise ConnectionError("node unreachable")
        return [Status(a, self.ratios.get(a, MAX_UINT)) for a in accounts]


class Collect:
    def __init__(self):
        self.sent: list[str] = []
        self.fail = False

    def send(self, key, body):
        if self.fail:
            raise WebhookUnreachable("down")
        self.sent.append(key)
        return 200


def make(tmp_path, chain, sender, retry_base=1.0, **kw) -> Notifier:
    defaults = dict(start_block=5, policy=WarningPolicy(r(1.5)), chunk=10, budget=5)
    defaults.update(kw)
    box = Outbox(tmp_path / "o.sqlite", retry_base=retry_base, retry_max=retry_base)
    return Notifier(chain, box, CTX, sender=sender, **defaults)


def test_tick_reads_logs_by_chunk_from_the_start_block_and_delivers(tmp_path):
    chain, sender = FakeChain(), Collect()
    chain.events = [position(TRADER, 6, 0, WAD), margin_call(block=20), cleared(block=31)]
    chain.ratios[TRADER] = r(2)
    n = make(tmp_path, chain, sender)
    report = n.tick(32)
    assert chain.log_calls == [(5, 14), (15, 24), (25, 32)]
    assert [m.kind for m in report.enqueued] == ["margin_call", "margin_call_cleared"]
    assert report.read_to == 32 and not report.errors
    assert sender.sent == [m.key for m in report.enqueued]
    assert TRADER in n.book
    chain.log_calls.clear()
    n.tick(32)
    assert chain.log_calls == [] and len(sender.sent) == 2  # nothing new, nothing resent


def test_confirmations_hold_back_the_newest_blocks(tmp_path):
    chain, sender = FakeChain(), Collect()
    chain.events = [margin_call(block=20)]
    n = make(tmp_path, chain, sender, confirmations=3)
    assert n.tick(22).enqueued == [] and n.cursor == 19
    assert [m.kind for m in n.tick(23).enqueued] == ["margin_call"]


def test_early_warning_once_per_episode_across_ticks_and_a_restart(tmp_path):
    chain, sender = FakeChain(), Collect()
    chain.events = [position(TRADER, 6, 0, WAD), position(OTHER, 6, 1, WAD)]
    chain.ratios = {TRADER: r(2), OTHER: r(3)}
    n = make(tmp_path, chain, sender)
    assert n.tick(10).enqueued == []
    chain.ratios[TRADER] = r(1.4)
    [w] = n.tick(11).enqueued
    assert (w.kind, w.account, w.block) == (EARLY_WARNING, TRADER, 11)
    chain.ratios[TRADER] = r(1.1)
    assert n.tick(12).enqueued == []  # same episode
    n.outbox.close()

    n2 = make(tmp_path, chain, sender)  # restart: the episode is remembered
    assert n2.tick(13).enqueued == []
    chain.ratios[TRADER] = r(1.6)  # above 1.575: re-armed
    assert n2.tick(14).enqueued == []
    chain.ratios[TRADER] = r(1.45)
    [w2] = n2.tick(15).enqueued
    assert w2.key != w.key and w2.block == 15
    assert sender.sent == [w.key, w2.key]


def test_closing_every_position_ends_the_episode(tmp_path):
    chain, sender = FakeChain(), Collect()
    chain.events = [position(TRADER, 6, 0, WAD)]
    chain.ratios = {TRADER: r(1.2)}
    n = make(tmp_path, chain, sender)
    assert [m.kind for m in n.tick(10).enqueued] == [EARLY_WARNING]
    chain.events.append(position(TRADER, 11, 0, 0))  # closed
    n.tick(11)
    assert TRADER not in n.book and TRADER not in n.warned
    chain.events.append(position(TRADER, 12, 0, WAD))  # reopened, still under water
    assert [m.kind for m in n.tick(12).enqueued] == [EARLY_WARNING]


def test_a_dead_node_never_raises_and_a_dead_webhook_never_stops_reading(tmp_path):
    chain, sender = FakeChain(), Collect()
    chain.events = [margin_call(block=8)]
    n = make(tmp_path, chain, sender, retry_base=0.05)
    chain.down = True
    report = n.tick(10)
    assert report.errors and "node unreachable" in report.errors[0] and n.cursor == 4
    chain.down = False
    sender.fail = True
    report = n.tick(11)
    assert [m.kind for m in report.enqueued] == ["margin_call"] and report.delivery.unreachable
    assert n.cursor == 11 and sender.sent == []
    sender.fail = False
    time.sleep(0.06)  # the retry delay
    assert n.tick(12).delivery.delivered == [event_message(margin_call(block=8), CTX).key]


def test_re_reading_logs_after_a_restart_sends_nothing_twice(tmp_path):
    chain, sender = FakeChain(), Collect()
    chain.events = [margin_call(block=8), cleared(block=9), liquidation(block=30)]
    n = make(tmp_path, chain, sender)
    n.tick(12)
    assert len(sender.sent) == 2
    n.outbox.close()
    # the next process finds an older cursor (as after a lost disk write): it reads 5.. again
    n2 = make(tmp_path, chain, sender)
    n2.outbox._db.execute("UPDATE meta SET value = '4' WHERE name = 'cursor'")
    n2.tick(31)
    assert (5, 14) in chain.log_calls[-3:]
    assert sender.sent == [event_message(e, CTX).key for e in chain.events]


def test_log_only_mode_marks_messages_delivered_and_logs_them(tmp_path, caplog):
    chain = FakeChain()
    chain.events = [bad_debt(block=7)]
    n = make(tmp_path, chain, None, log=logging.getLogger("test.notify"))
    with caplog.at_level(logging.INFO, logger="test.notify"):
        report = n.tick(8)
    assert report.delivery.delivered == [report.enqueued[0].key]
    assert "notify [bad_debt]" in caplog.text and "23.45 socialised" in caplog.text
    assert n.outbox.counts()["pending"] == 0


def test_log_only_mode_clears_several_messages_of_one_account(tmp_path):
    chain = FakeChain()
    chain.events = [margin_call(block=7), cleared(block=8), liquidation(block=9)]
    n = make(tmp_path, chain, None)
    assert len(n.tick(9).delivery.delivered) == 3 and n.outbox.counts()["pending"] == 0


def test_courier_retries_on_its_own_schedule_without_new_blocks(tmp_path, server):
    chain = FakeChain()
    chain.events = [margin_call(block=7), cleared(block=8)]
    n = make(tmp_path, chain, Webhook(server.url, timeout=2), retry_base=0.05)
    server.stop()
    n.tick(9, deliver=False)  # enqueued; no block comes after this
    courier = Courier(n, poll=0.2).start()
    try:
        deadline = time.monotonic() + 5
        while n.outbox.attempts(event_message(margin_call(block=7), CTX).key) < 2:
            assert time.monotonic() < deadline, "no retry without a block"
            time.sleep(0.02)
        server.start()
        courier.wake()
        server.wait_for(lambda got: len(got) == 2, timeout=5)
        assert [d.body["kind"] for d in server.received()] == ["margin_call", "margin_call_cleared"]
    finally:
        assert courier.stop(timeout=5)
    time.sleep(0.1)
    assert len(server.received()) == 2 and n.outbox.counts()["pending"] == 0


def test_events_before_notify_from_only_feed_the_book(tmp_path):
    chain, sender = FakeChain(), Collect()
    chain.events = [position(TRADER, 6, 0, WAD), margin_call(block=6, index=1), cleared(block=9)]
    chain.ratios = {TRADER: r(2)}
    n = make(tmp_path, chain, sender, notify_from=8)
    assert [m.kind for m in n.tick(10).enqueued] == ["margin_call_cleared"]
    assert TRADER in n.book  # the position opened before block 8 is watched
    assert n.outbox.meta_default("notify_from", "8") == "8"
    assert n.outbox.meta_default("notify_from", "99") == "8"  # fixed once stored


def test_head_behind_the_cursor_waits(tmp_path):
    chain, sender = FakeChain(), Collect()
    n = make(tmp_path, chain, sender)
    n.tick(20)
    report = n.tick(15)
    assert report.errors and "behind" in report.errors[0] and n.cursor == 20


# --- settings ---------------------------------------------------------------------------------


def test_config_defaults_and_values():
    c = NotifierConfig.from_env({"MARGINCALL_DEPLOYMENT": "d.json"})
    assert c.webhook_url is None and c.outbox is None and c.confirmations == 0
    assert c.warn_ratio == r(1.5) and c.policy.rearm_ratio == r(1.575)
    c = NotifierConfig.from_env(
        {
            "MARGINCALL_DEPLOYMENT": "d.json",
            "MARGINCALL_WEBHOOK_URL": "https://hooks.example.org/x",
            "MARGINCALL_OUTBOX": "/var/lib/n.sqlite",
            "MARGINCALL_WARN_RATIO": "off",
            "MARGINCALL_CONFIRMATIONS": "3",
            "MARGINCALL_RETRY_MAX": "10",
        }
    )
    assert c.policy is None and c.confirmations == 3 and c.retry_max == 10.0
    assert str(c.outbox) == "/var/lib/n.sqlite"
    assert NotifierConfig.from_env({}, default_deployment="x.json").deployment.name == "x.json"
    assert c.first_notified_block(record_block=4, head=50) == 4  # default: "deployment"
    head = NotifierConfig.from_env({"MARGINCALL_DEPLOYMENT": "d", "MARGINCALL_NOTIFY_FROM": "head"})
    assert head.first_notified_block(4, 50) == 51
    n = NotifierConfig.from_env({"MARGINCALL_DEPLOYMENT": "d", "MARGINCALL_NOTIFY_FROM": "30"})
    assert n.first_notified_block(4, 50) == 30


@pytest.mark.parametrize(
    "env, error",
    [
        ({}, "MARGINCALL_DEPLOYMENT"),
        ({"MARGINCALL_WEBHOOK_URL": "hooks.example.org"}, "MARGINCALL_WEBHOOK_URL"),
        ({"MARGINCALL_WARN_RATIO": "abc"}, "MARGINCALL_WARN_RATIO must be a number"),
        ({"MARGINCALL_WARN_RATIO": "-1"}, "MARGINCALL_WARN_RATIO must be positive"),
        ({"MARGINCALL_CONFIRMATIONS": "-1"}, "MARGINCALL_CONFIRMATIONS must be an integer"),
        ({"MARGINCALL_LOG_CHUNK": "0"}, "MARGINCALL_LOG_CHUNK must be an integer >= 1"),
        ({"MARGINCALL_WEBHOOK_TIMEOUT": "0"}, "MARGINCALL_WEBHOOK_TIMEOUT must be positive"),
        ({"MARGINCALL_RETRY_BASE": "9", "MARGINCALL_RETRY_MAX": "3"}, "RETRY_MAX must be >="),
        ({"MARGINCALL_WARN_HYSTERESIS": "-0.1"}, "MARGINCALL_WARN_HYSTERESIS must be in"),
        ({"MARGINCALL_NOTIFY_FROM": "latest"}, "MARGINCALL_NOTIFY_FROM must be 'deployment'"),
    ],
)
def test_bad_settings_name_the_variable(env, error):
    env = {"MARGINCALL_DEPLOYMENT": "d.json", **env} if error != "MARGINCALL_DEPLOYMENT" else env
    with pytest.raises(NotifierConfigError, match=error):
        NotifierConfig.from_env(env)


def test_notifier_env_turns_options_into_the_bots_variables():
    env = notifier_env(deployment="d.json", webhook_url="http://127.0.0.1:9/h", warn_ratio=1.4)
    assert env == {
        "MARGINCALL_DEPLOYMENT": "d.json",
        "MARGINCALL_WEBHOOK_URL": "http://127.0.0.1:9/h",
        "MARGINCALL_WARN_RATIO": "1.4",
    }
    with pytest.raises(NotifierConfigError, match="MARGINCALL_CONFIRMATIONS"):
        notifier_env(confirmations=-2)


def test_webhook_server_helper_round_trip():
    """The receiver used here and in tests/e2e records what urllib sends."""
    s = WebhookServer().start()
    try:
        req = urllib.request.Request(
            s.url, data=b'{"a": 1}', method="POST", headers={"Idempotency-Key": "k1"}
        )
        urllib.request.urlopen(req, timeout=2).close()
        assert [(d.key, d.body) for d in s.received()] == [("k1", {"a": 1})]
    finally:
        s.stop()
