"""The dashboard in a real browser (Playwright driving Debian's Chromium) against Anvil.

`margincall dashboard` runs as a real process attached to this session's Anvil through a
TCP proxy the test can cut (the node "down"). The trader's wallet is a test EIP-1193
provider injected into the page (`window.ethereum`) that forwards every request to Anvil,
whose default accounts are unlocked (`eth_sendTransaction` signs on the node): no key is in
the page or on the server. The keeper's actions are the SDK's keeper-side calls
(`MarginEngineClient.margin_call`, `liquidate`) sent from the keeper's account, so the test
knows exactly which liquidations the system page must list.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
import urllib.request

import pytest

from margincall import math as ref
from margincall.constants import State
from margincall.keeper.audit import read_history
from margincall.web.process import DashboardProcess
from margincall.web.render import tokens_up
from tests.utils.proxy import TcpProxy

pytestmark = pytest.mark.e2e

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 20_000


@pytest.fixture(scope="module")
def node_proxy(chain):
    port = int(chain.provider.uri.rsplit(":", 1)[1].split("/")[0])
    proxy = TcpProxy(port).start()
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture(scope="module")
def dashboard(deployed, node_proxy, tmp_path_factory):
    log = tmp_path_factory.mktemp("web") / "dashboard.log"
    d = DashboardProcess(
        deployed.record_path, node_proxy.url, log, extra=["--poll-interval", "0.1"]
    )
    try:
        yield d.start().wait_ready()
    finally:
        d.stop()
    assert "Traceback" not in d.log(), d.log()[-3000:]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is missing: `make setup` installs it")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


def _rpc(node_url: str, method: str, params: list) -> object:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    req = urllib.request.Request(node_url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        out = json.loads(r.read())
    if "error" in out:
        raise RuntimeError(out["error"].get("message", str(out["error"])))
    return out["result"]


WALLET_JS = """
window.ethereum = {
  isTestWallet: true,
  request: async ({ method, params }) => {
    const out = JSON.parse(await window.__testWallet(method, JSON.stringify(params || [])));
    if (out.error) { const e = new Error(out.error); e.code = 4001; throw e; }
    return out.result;
  },
  on: () => {}, removeListener: () => {},
};
"""


def wallet_page(browser, node_url: str, address: str):
    """A page whose `window.ethereum` is `address` on Anvil (unlocked: the node signs)."""
    page = browser.new_page()
    sent: list[str] = []

    def handle(method: str, params: str) -> str:
        args = json.loads(params)
        try:
            if method in ("eth_requestAccounts", "eth_accounts"):
                return json.dumps({"result": [address]})
            result = _rpc(node_url, method, args)
            if method == "eth_sendTransaction":
                sent.append(str(result))
            return json.dumps({"result": result})
        except Exception as err:  # noqa: BLE001 - the page sees the wallet's error
            return json.dumps({"error": str(err)})

    page.expose_function("__testWallet", handle)
    page.add_init_script(WALLET_JS)
    page.sent = sent  # type: ignore[attr-defined]
    return page


def _text(page, testid: str) -> str:
    return page.get_by_test_id(testid).inner_text()


def _wait_text(page, testid: str, pattern: str) -> str:
    page.wait_for_function(
        "([id, re]) => { const el = document.querySelector(`[data-testid=${id}]`);"
        " return el && new RegExp(re).test(el.textContent); }",
        arg=[testid, pattern],
        timeout=WAIT_MS,
    )
    return _text(page, testid)


def _hex(h) -> str:
    """A transaction hash as hex, whether the log carries bytes or a hex string."""
    return h.lower() if isinstance(h, str) else bytes(h).hex()


def test_trader_cures_a_margin_call_through_the_page_and_the_system_page_lists_liquidations(
    deployed, dashboard, browser, chain, trader, other_trader, keeper
):
    client = deployed.client
    deployed.set_price(2_000)
    deployed.deposit(trader, 1_000)
    deployed.open(trader, 2)  # 4,000 notional, maintenance 200: ratio ~5
    deployed.deposit(other_trader, 450)
    deployed.open(other_trader, 2)  # ratio ~2.2; bankrupt at the crash below
    page = wallet_page(browser, chain.provider.uri, trader.address)
    page.goto(f"{dashboard.url}/trader?account={trader.address}")
    assert _wait_text(page, "state", "HEALTHY") == "HEALTHY"

    # the crash: the trader falls between 1 and the call ratio, the other trader is bankrupt
    deployed.set_price(1_588)
    assert client.status(trader).state == State.CALLABLE
    _wait_text(page, "state", "^CALLABLE$")
    cure = ref.cure_deposit(client.model(trader), client.risk_params(), client.scale)
    assert _wait_text(page, "cure-deposit", ".") == tokens_up(cure, client.decimals)
    assert "once called" in _text(page, "countdown")

    # the keeper calls the trader and liquidates the other trader (SDK keeper-side calls)
    client.margin_call(trader, sender=keeper)
    client.liquidate(other_trader, sender=keeper)
    _wait_text(page, "state", "^CALLED$")
    assert re.fullmatch(r"(\d+h)?\d+m\d\ds left", _wait_text(page, "countdown", "left$"))
    cure = ref.cure_deposit(client.model(trader), client.risk_params(), client.scale)
    assert _text(page, "cure-deposit") == tokens_up(cure, client.decimals)

    # the trader deposits the cure from the page: pre-checks, approve, deposit
    deployed.system.token.mint(trader.address, cure * 2, sender=trader)
    deployed.system.token.approve(deployed.engine.address, 0, sender=trader)  # so: approve first
    page.get_by_test_id("deposit-cure").click()
    assert page.get_by_test_id("deposit-amount").input_value() == tokens_up(
        cure, client.decimals
    ).replace(",", "")
    page.get_by_test_id("deposit-check").click()
    checked = _wait_text(page, "precheck", "Pre-checks passed|Refused|Error")
    assert "Pre-checks passed" in checked and "approve, then deposit" in checked, checked
    assert "back at the call ratio" in checked
    page.get_by_test_id("sign").click()
    result = _wait_text(page, "result", r"deposit: (success|reverted)|Error")
    assert "deposit: success" in result and "account now HEALTHY" in result, result
    assert len(page.sent) == 2  # approve, deposit: both signed by the wallet, not the server

    _wait_text(page, "state", "^HEALTHY$")
    assert "cleared" in _text(page, "call-cleared")
    status = client.status(trader)
    assert status.state == State.HEALTHY and status.call_deadline == 0
    assert "margin call cleared" in _text(page, "history")

    # the system page lists exactly the chain's liquidations
    system = browser.new_page()
    system.goto(dashboard.url + "/")
    history = read_history(client, deployed.record.block, chain.blocks.head.number)
    on_chain = {
        ("0x" + _hex(e.transaction_hash).removeprefix("0x"), str(e.account))
        for e in history.of("Liquidation")
    }
    assert on_chain
    system.wait_for_selector("[data-testid=liquidations] tr[data-tx]", timeout=WAIT_MS)
    rows = system.eval_on_selector_all(
        "[data-testid=liquidations] tr[data-tx]",
        "rows => rows.map(r => "
        "[r.dataset.tx, r.querySelector('td:nth-child(2) code').textContent])",
    )
    assert {(tx.lower(), acct) for tx, acct in rows} == on_chain
    assert other_trader.address in system.get_by_test_id("bad-debt").inner_text()
    assert "unknown" not in system.get_by_test_id("markets").inner_text()  # feed age read
    system.close()
    page.close()


def test_node_down_shows_a_message_and_the_page_recovers_when_the_node_is_back(
    deployed, dashboard, browser, node_proxy
):
    page = browser.new_page()
    page.goto(dashboard.url + "/")
    _wait_text(page, "health", "^live")
    node_proxy.cut()
    try:
        down = _wait_text(page, "health", "unreachable")
        assert "Traceback" not in down
        assert dashboard.running
    finally:
        node_proxy.restore()
    deployed.set_price(2_000)  # a new block
    _wait_text(page, "health", "^live")
    assert dashboard.running
    page.close()


@pytest.mark.parametrize(
    "account, status, message",
    [
        ("0x12zz", 400, "is not an account address"),
        ("0x00000000000000000000000000000000000000aa", 404, "has no margin account"),
    ],
    ids=["malformed", "unknown"],
)
def test_bad_account_input_gives_a_clear_message_not_a_traceback(
    dashboard, browser, account, status, message
):
    page = browser.new_page()
    response = page.goto(f"{dashboard.url}/trader?account={account}")
    assert response.status == status
    text = _text(page, "error")
    assert message in text and "Traceback" not in page.content()
    page.close()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"chain_id": 1}, "the deployment record is for chain 1, but the node"),
        ({"engine": "0x00000000000000000000000000000000000000aa"}, "the node was reset"),
    ],
    ids=["record_for_another_chain", "engine_gone_after_a_reset"],
)
def test_a_record_that_does_not_match_the_node_gives_a_clear_message_on_every_page(
    deployed, project, chain, trader, change, message
):
    from starlette.testclient import TestClient

    from margincall.web.app import create_app
    from margincall.web.chain import ChainView

    record = dataclasses.replace(deployed.record, **change)
    view = ChainView(record, project, chain.provider)
    with TestClient(create_app(view, poll=0.05)) as http:
        end = time.monotonic() + 10
        while message not in http.get("/healthz").json()["error"] and time.monotonic() < end:
            time.sleep(0.05)
        assert message in http.get("/healthz").json()["error"]
        for path in ("/", "/operator", f"/trader?account={trader.address}"):
            page = http.get(path)
            assert message in page.text, path
            assert "Traceback" not in page.text
        assert http.get(f"/trader?account={trader.address}").status_code == 503


def test_feed_updated_at_is_the_primary_feeds_latest_round_time(deployed):
    from margincall.sdk import OracleClient

    deployed.set_price(2_000)
    oracle = OracleClient(deployed.system.oracles[0], 0)
    feed = deployed.system.feeds[0]
    assert oracle.feed_updated_at() == int(feed.latestRoundData()[3]) > 0
    feed.set_reverting(True, sender=deployed.system.owner)
    try:
        assert oracle.feed_updated_at() is None
    finally:
        feed.set_reverting(False, sender=deployed.system.owner)


def test_reduce_and_close_show_the_sdk_refusal_before_signing_and_close_through_the_wallet(
    deployed, dashboard, browser, chain, trader, stranger
):
    client = deployed.client
    deployed.set_price(2_000)
    if not client.record(trader).market_ids:  # run alone: give the trader a position
        deployed.deposit(trader, 1_000)
        deployed.open(trader, 2)
    size = abs(client.positions(trader)[0].size)

    # another wallet cannot reduce the trader's position: refused, nothing signed
    page = wallet_page(browser, chain.provider.uri, stranger.address)
    page.goto(f"{dashboard.url}/trader?account={trader.address}")
    page.get_by_test_id("reduce-size").fill("0.5")
    page.get_by_test_id("reduce-check").click()
    refused = _wait_text(page, "precheck", "Refused|passed")
    assert "Refused before signing: only the account itself can reduce" in refused
    assert page.get_by_test_id("sign").is_hidden() and page.sent == []
    page.close()

    # the trader's own wallet: more than the position is refused; a close goes through
    page = wallet_page(browser, chain.provider.uri, trader.address)
    page.goto(f"{dashboard.url}/trader?account={trader.address}")
    page.get_by_test_id("reduce-size").fill(str(size * 2 / 10**18))
    page.get_by_test_id("reduce-check").click()
    assert "close it instead" in _wait_text(page, "precheck", "Refused|passed")
    page.get_by_test_id("close-check").click()
    checked = _wait_text(page, "precheck", "Refused|passed")
    assert "Pre-checks passed" in checked and "To sign: close" in checked, checked
    page.get_by_test_id("sign").click()
    assert "close: success" in _wait_text(page, "result", r"close: (success|reverted)|Error")
    assert len(page.sent) == 1
    # the close is a reduce-only order: it fills when settled at the next oracle round
    (order,) = client.orders.pending(trader)
    assert order.size_delta == -client.positions(trader)[0].size
    if chain.pending_timestamp <= chain.blocks.head.timestamp:
        chain.pending_timestamp = chain.blocks.head.timestamp + 1
    deployed.set_price(2_000)
    client.orders.settle(order.order_id, sender=stranger)
    assert client.record(trader).market_ids == ()
    _wait_text(page, "positions", "no open positions")
    page.close()


def test_a_chain_replaced_under_the_dashboard_is_read_again_from_the_start(
    deployed, project, chain, other_trader
):
    """Same height, other blocks (a reset node that grew back, or a reorganisation): the
    positions read from the lost blocks must not survive."""
    from margincall.web.chain import ChainView

    view = ChainView(deployed.record, project, chain.provider)
    deployed.set_price(2_000)
    snapshot = chain.snapshot()
    deployed.deposit(other_trader, 1_000)
    deployed.open(other_trader, 1)
    view.refresh()
    assert other_trader.address in view.book.accounts()
    height = chain.blocks.head.number
    chain.restore(snapshot)
    while chain.blocks.head.number < height:
        deployed.set_price(1_990)
    assert chain.blocks.head.number == height
    view.refresh()
    assert other_trader.address not in view.book.accounts()
