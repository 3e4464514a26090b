"""Node and chain faults against the real bot processes: each is reported within 10 s with
the message docs/bots.md names, `/health` turns red, and green again after recovery where
there is one.

- a frozen node (the session's Anvil under SIGSTOP) and the node down (a `TcpProxy` cut
  between bot and node): one keeper and one notifier, shared by the module, see both and
  recover;
- a changed chain id (`anvil_setChainId`), a missing engine (`anvil_setCode` to empty) and a
  reset chain (the head back by 20 blocks, `evm_revert`): fatal, each stops a fresh bot
  with exit code 3 and one `Error:` line, never a traceback;
- a stale deployment record (its engine without code, its creation block past the head,
  as after a reset): the bot refuses to start, exit code 3, no traceback.

Every bot is stopped (bounded) even when a test fails; every fault is undone in `finally`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from urllib.parse import urlparse

import pytest

from margincall.keeper.procs import BotProcess, stop_all
from tests.utils.proxy import TcpProxy

pytestmark = pytest.mark.e2e

DETECT = 10.0  # seconds: every fault must be reported within this
OPS_URL = r"ops: /metrics and /health on (http://\S+)"
# the default RPC timeout (5 s) and watch interval (1 s): the 10 s bound holds as shipped
BASE_ENV = {
    "MARGINCALL_METRICS_PORT": "0",  # a free port, read from the log
    "MARGINCALL_POLL_INTERVAL": "0.2",
}


def get(url: str) -> tuple[int | None, dict | str | None]:
    """(HTTP status, JSON body or text); (None, None) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=3) as reply:
            status, data = reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        status, data = err.code, err.read().decode()
    except OSError:
        return None, None
    try:
        return status, json.loads(data)
    except json.JSONDecodeError:
        return status, data


class Bot:
    """A started bot process and its ops endpoint."""

    def __init__(self, proc: BotProcess):
        self.proc = proc
        self.url = proc.wait_for(OPS_URL, timeout=120).group(1)
        proc.wait_ready(timeout=120)

    def health(self) -> tuple[int | None, dict | None]:
        return get(self.url + "/health")  # type: ignore[return-value]

    def wait_health(self, status: int, timeout: float = DETECT, since: float | None = None) -> dict:
        deadline = (time.monotonic() if since is None else since) + timeout
        while True:
            code, body = self.health()
            if code == status:
                return body or {}
            assert time.monotonic() < deadline, f"/health {code} {body}, not {status}"
            time.sleep(0.1)

    def tail(self) -> str:
        return self.proc.tail()

    def since(self, mark: int) -> str:
        return self.proc.log()[mark:]

    def wait_line(
        self, pattern: str, mark: int, timeout: float = DETECT, since: float | None = None
    ) -> str:
        """The first line matching `pattern` logged after offset `mark`, within `timeout`
        (counted from the monotonic time `since`, default now)."""
        deadline = (time.monotonic() if since is None else since) + timeout
        while True:
            found = re.search(pattern + r"[^\n]*", self.since(mark))
            if found:
                return found.group(0)
            assert self.proc.running or time.monotonic() < deadline, self.proc.tail()
            assert time.monotonic() < deadline, (
                f"no {pattern!r} in {timeout} s:\n{self.proc.tail()}"
            )
            time.sleep(0.05)


@pytest.fixture(scope="module")
def proxy(chain) -> Iterator[TcpProxy]:
    proxy = TcpProxy(urlparse(chain.provider.uri).port).start()
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture(scope="module")
def started(chain) -> Iterator[list[BotProcess]]:
    """Every bot process of the module, stopped at its end, whatever the outcome."""
    procs: list[BotProcess] = []
    try:
        yield procs
    finally:
        stop_all(procs, timeout=5.0)


@pytest.fixture
def alone(started) -> None:
    """Stops the module's running bots first: a fatal fault would stop them all."""
    stop_all([p for p in started if p.running], timeout=5.0)


@pytest.fixture(scope="module")
def start_bot(chain, deployed, started, tmp_path_factory) -> Callable[..., BotProcess]:
    """`start_bot(bot, node_url=None, **env)`: a started bot on the module's deployment."""
    logs = tmp_path_factory.mktemp("bots")

    def start(bot: str, node_url: str | None = None, **env: str) -> BotProcess:
        full = {**BASE_ENV, "MARGINCALL_DEPLOYMENT": str(deployed.record_path), **env}
        if bot == "notifier":
            full.setdefault("MARGINCALL_OUTBOX", str(logs / f"outbox-{len(started)}.sqlite"))
        proc = BotProcess(
            bot,
            logs / f"{bot}-{len(started)}.log",
            node_url=node_url or chain.provider.uri,
            account="TEST::3" if bot == "keeper" else None,
            env=full,
        )
        started.append(proc)
        return proc.start()

    return start


@pytest.fixture(scope="module")
def watched(start_bot, proxy) -> dict[str, Bot]:
    """A keeper and a notifier behind the proxy, shared by the recoverable faults."""
    procs = {bot: start_bot(bot, node_url=proxy.url) for bot in ("keeper", "notifier")}
    return {bot: Bot(proc) for bot, proc in procs.items()}


def rpc(chain, method: str, params: list):
    return chain.provider.make_request(method, params)


def assert_stopped_cleanly(bot: Bot, message: str) -> None:
    """Exit code 3 within the bound, the fault's message in the `Error:` line, no traceback."""
    code = bot.proc.proc.wait(30)
    log = bot.proc.log()
    assert code == 3, log[-3000:]
    assert f"Error: stopped: {message}" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


# --- healthy ----------------------------------------------------------------------------


def test_metrics_export_each_bots_series_and_health_is_green(watched):
    for bot, series in (
        ("keeper", ("calls_made_total", "rewards_tokens_total", "lag_blocks", "gas_spent")),
        ("notifier", ("pending", "delivered_total", "cursor_block", "delivery_failures")),
    ):
        body = watched[bot].wait_health(200, timeout=30)
        assert body["status"] == "ok" and body["bot"] == bot and body["chain_id"] == 31337
        status, text = get(watched[bot].url + "/metrics")
        assert status == 200
        for name in series:
            assert f"margincall_{bot}_{name}" in text, text
        assert f'margincall_health_ok{{bot="{bot}"}} 1.0' in text
        assert f'margincall_fault_active{{bot="{bot}",fault="node_frozen"}} 0.0' in text
        assert "IncompleteFieldDefinitionWarning" not in watched[bot].proc.log()
        assert "significant amount of requests" not in watched[bot].proc.log()


# --- recoverable: frozen, down ------------------------------------------------------------


def test_frozen_node_is_reported_within_10s_and_health_recovers(chain, watched):
    anvil = chain.provider.process.pid
    marks = {bot: len(b.proc.log()) for bot, b in watched.items()}
    os.kill(anvil, signal.SIGSTOP)
    try:
        frozen_at = time.monotonic()
        for bot, b in watched.items():
            line = b.wait_line(r"watchdog: node not answering: ", marks[bot], since=frozen_at)
            assert line.endswith("no reply within 5 s (frozen or overloaded node); retrying")
            body = b.wait_health(503, since=frozen_at)
            assert body["status"] == "failing" and body["faults"][0]["fault"] == "node_frozen"
    finally:
        os.kill(anvil, signal.SIGCONT)
    for bot, b in watched.items():
        b.wait_line(r"watchdog: node answering again after", marks[bot], timeout=15)
        assert b.wait_health(200, timeout=15)["faults"] == []
        assert b.proc.running


def test_node_down_is_reported_within_10s_and_health_recovers(proxy, watched):
    marks = {bot: len(b.proc.log()) for bot, b in watched.items()}
    proxy.cut()
    try:
        cut_at = time.monotonic()
        for bot, b in watched.items():
            b.wait_line(r"watchdog: node unreachable \(", marks[bot], since=cut_at)
            body = b.wait_health(503, since=cut_at)
            assert [f["fault"] for f in body["faults"]] == ["node_down"], body
    finally:
        proxy.restore()
    for bot, b in watched.items():
        b.wait_line(r"watchdog: node answering again after", marks[bot], timeout=15)
        b.wait_health(200, timeout=15)
        assert b.proc.running


# --- fatal: chain id, engine code, reset ---------------------------------------------------


@pytest.mark.parametrize("bot", ["keeper", "notifier"])
def test_changed_chain_id_stops_the_bot_with_exit_code_3(chain, start_bot, alone, bot):
    b = Bot(start_bot(bot))
    mark = len(b.proc.log())
    rpc(chain, "anvil_setChainId", [999])
    try:
        message = "chain id changed: the node is now chain 999, not 31337"
        b.wait_line(re.escape(f"watchdog: {message}; stopping (exit code 3)"), mark)
        body = b.wait_health(503, timeout=3)
        assert body["status"] == "stopping" and body["faults"][0]["fault"] == "chain_id_changed"
    finally:
        rpc(chain, "anvil_setChainId", [31337])
    assert_stopped_cleanly(b, message)


def test_missing_engine_code_stops_the_keeper_with_exit_code_3(chain, deployed, start_bot, alone):
    b = Bot(start_bot("keeper"))
    engine = str(deployed.engine.address)
    code = rpc(chain, "eth_getCode", [engine, "latest"])
    mark = len(b.proc.log())
    rpc(chain, "anvil_setCode", [engine, "0x"])
    try:
        line = b.wait_line(r"watchdog: engine missing: no code at " + engine, mark)
        assert "stopping (exit code 3)" in line
        assert b.wait_health(503, timeout=3)["faults"][0]["fault"] == "engine_missing"
    finally:
        rpc(chain, "anvil_setCode", [engine, code])
    assert_stopped_cleanly(b, f"engine missing: no code at {engine}")


def test_reset_chain_head_going_back_stops_the_keeper_with_exit_code_3(chain, start_bot, alone):
    b = Bot(start_bot("keeper"))
    snapshot = rpc(chain, "evm_snapshot", [])
    rpc(chain, "anvil_mine", [hex(20)])
    top = int(chain.blocks.head.number)
    deadline = time.monotonic() + DETECT
    while (b.health()[1] or {}).get("head") != top:  # the watchdog has seen the new head
        assert time.monotonic() < deadline, b.health()
        time.sleep(0.1)
    mark = len(b.proc.log())
    rpc(chain, "evm_revert", [snapshot])
    message = f"chain reset: the head went back from block {top} to {top - 20}"
    b.wait_line(re.escape(f"watchdog: {message}"), mark)
    assert_stopped_cleanly(b, message)


# --- stale record at start ----------------------------------------------------------------


@pytest.mark.parametrize("bot", ["keeper", "notifier"])
def test_restart_on_a_stale_record_exits_with_one_clear_line(
    chain, deployed, start_bot, tmp_path, bot
):
    """A record of a chain since reset: its engine has no code and its creation block is
    past the head (here a record edited that way; the checks are the same)."""
    stale = json.loads(deployed.record_path.read_text())
    stale["engine"] = "0x000000000000000000000000000000000000dEaD"
    stale["block"] = int(chain.blocks.head.number) + 1_000
    path = tmp_path / "stale.json"
    path.write_text(json.dumps(stale))
    proc = start_bot(bot, MARGINCALL_DEPLOYMENT=str(path))
    code = proc.proc.wait(120)
    log = proc.log()
    assert code == 3, log[-3000:]
    line = re.search(r"Error: stale deployment record [^\n]*", log)
    assert line, log[-3000:]
    assert "no code at the engine 0x000000000000000000000000000000000000dEaD" in line.group(0)
    assert f"creation block {stale['block']} is past the head" in line.group(0)
    assert "Traceback" not in log, log[-3000:]
