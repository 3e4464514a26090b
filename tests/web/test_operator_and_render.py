"""The operator page's readers (a keeper's metrics file, the notifier's outbox as the real
`margincall.notify.Outbox` writes it) and the page's formatting helpers, without a chain."""

import json
import time

from margincall.notify import Message, Outbox
from margincall.web.chain import read_keeper_metrics, read_outbox
from margincall.web.render import environment, price_svg, tokens_up


def _message(n: int, kind: str = "margin_call") -> Message:
    payload = {"key": f"k{n}", "kind": kind, "account": "0xabc", "block": 10 + n, "text": "t"}
    return Message(f"k{n}", kind, "0xabc", 10 + n, payload)


def test_outbox_reader_counts_pending_and_delivered_messages_and_the_cursor_lag(tmp_path):
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path)
    outbox.commit([_message(1), _message(2, "liquidation"), _message(3)], cursor=40)
    outbox.mark_delivered("k1")
    outbox.mark_failed("k2", "webhook: HTTP 503")
    outbox.close()
    got = read_outbox(path, head=45)
    assert (got["total"], got["delivered"], got["pending"]) == (3, 1, 2)
    assert got["cursor"] == 40 and got["lag"] == 5
    assert got["last_error"] == "webhook: HTTP 503"
    assert got["kinds"] == {"margin_call": 2, "liquidation": 1}
    assert got["oldest_pending_s"] is not None and got["oldest_pending_s"] >= 0


def test_outbox_reader_says_when_there_is_no_outbox(tmp_path):
    got = read_outbox(tmp_path / "none.sqlite", head=1)
    assert "no outbox here" in got["error"]
    assert not (tmp_path / "none.sqlite").exists()  # read-only: nothing created


def test_keeper_metrics_reader_gives_lag_and_age_or_a_reason(tmp_path):
    path = tmp_path / "keeper.json"
    assert "no metrics file yet" in read_keeper_metrics(path, 10)["error"]
    path.write_text("{not json")
    assert "unreadable" in read_keeper_metrics(path, 10)["error"]
    path.write_text(json.dumps({"block": 97, "calls_made": 3, "rewards_earned": 2_500_000}))
    got = read_keeper_metrics(path, 100)
    assert got["lag"] == 3 and got["metrics"]["calls_made"] == 3
    assert 0 <= got["age_s"] < 60 and got["stale"] == ""
    assert read_keeper_metrics(path, 110)["stale"] == "13 blocks behind the head"


def test_operator_fragment_shows_keeper_and_notifier_figures(tmp_path):
    env = environment(6, "USDC")
    keeper = {
        "path": "k.json",
        "stale": "",
        "lag": 1,
        "age_s": 0.5,
        "metrics": {
            "block": 99,
            "tranches_made": 7,
            "tranches_sent": 8,
            "rewards_earned": 12_340_000,
        },
    }
    notifier = {
        "path": "o.sqlite",
        "cursor": 99,
        "lag": 1,
        "total": 5,
        "delivered": 4,
        "pending": 1,
        "oldest_pending_s": 2.0,
        "last_error": "",
        "kinds": {"liquidation": 5},
    }
    html = env.get_template("_operator.html").render(
        o={"head": 100, "keepers": [keeper], "notifier": notifier}
    )
    assert "7 / 8" in html and "12.34 USDC" in html and "99 (lag 1 blocks" in html
    assert "following the chain" in html
    assert "liquidation 5" in html


def test_tokens_up_never_shows_less_than_the_amount():
    assert tokens_up(25_500_000, 6) == "25.50"
    assert tokens_up(25_500_001, 6) == "25.51"
    assert tokens_up(10**18 + 1, 18) == "1.01"
    assert tokens_up(7, 0) == "7"


def test_price_plot_marks_liquidations_inside_the_window_only():
    now = int(time.time())
    points = tuple((now - 600 + 60 * i, (2_000 - 10 * i) * 10**18) for i in range(10))
    svg = price_svg(points, (now - 120, now - 100_000), now, 1.0, "ETH-USD")
    assert svg.count('class="liq"') == 1 and "ETH-USD: 1 liquidations" in svg
    assert "no price points yet" in price_svg((), (), now, 1.0, "ETH-USD")
