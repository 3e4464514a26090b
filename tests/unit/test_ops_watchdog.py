"""The chain watchdog without a chain: `Watch` over scripted probes, the settings, the
bounded probe against a stub JSON-RPC server (answering, frozen, refused), the Prometheus
collector, and `Ops` end to end (a fatal fault hands over once; `/health` says why)."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from margincall.ops import Expect, Fault, Ops, OpsConfigError, OpsSettings, Probe, Series, Watch
from margincall.ops.exporter import BotCollector, BotView
from margincall.ops.probe import probe

ENGINE = "0x00000000000000000000000000000000000000E1"
EXPECT = Expect(chain_id=31337, engine=ENGINE, anchor_block=5)


def ok(at: float, head: int, **kw) -> Probe:
    fields = {"chain_id": 31337, "has_code": True, "anchor_hash": "0xaa", **kw}
    return Probe(at=at, head=head, **fields)


def raised(events) -> list[Fault]:
    return [e.fault for e in events if not e.cleared]


# --- Watch ------------------------------------------------------------------------------


def test_frozen_then_answering_again_raises_then_clears_node_frozen():
    watch = Watch(timeout=2, expect=EXPECT)
    watch.observe(ok(0, 10))
    events = watch.observe(Probe(at=3, error="TimeoutError: timed out", timed_out=True, latency=2))
    assert raised(events) == [Fault.FROZEN]
    assert events[0].message == (
        "node not answering: no reply within 2 s (frozen or overloaded node); retrying"
    )
    assert not watch.health(3)[0] and watch.health(3)[1]["status"] == "failing"
    back = watch.observe(ok(6, 11))
    assert [(e.fault, e.cleared) for e in back] == [(Fault.FROZEN, True)]
    assert back[0].message == "node answering again after 5.0 s"
    assert watch.health(6) == (True, watch.health(6)[1]) and watch.faults == {}


def test_a_refused_connection_is_node_down_and_replaces_node_frozen():
    watch = Watch(timeout=2)
    watch.observe(Probe(at=1, error="TimeoutError", timed_out=True))
    events = watch.observe(Probe(at=2, error="ConnectionRefusedError: refused"))
    assert raised(events) == [Fault.DOWN]
    assert events[0].message == "node unreachable (ConnectionRefusedError: refused); retrying"
    assert list(watch.faults) == [Fault.DOWN]
    assert watch.observe(Probe(at=3, error="ConnectionRefusedError: refused")) == []  # once


def test_head_back_beyond_the_reset_depth_is_a_fatal_chain_reset_and_within_it_is_not():
    watch = Watch(timeout=2, reset_depth=16, expect=EXPECT)
    watch.observe(ok(0, 100))
    assert watch.observe(ok(1, 90)) == []  # a lagging backend, a short reorg
    events = watch.observe(ok(2, 80))
    assert raised(events) == [Fault.RESET] and events[0].fatal
    assert events[0].message == "chain reset: the head went back from block 100 to 80"
    assert watch.fatal == Fault.RESET
    assert watch.health(2)[1]["status"] == "stopping"


def test_creation_block_gone_or_rehashed_is_a_chain_reset():
    gone = Watch(timeout=2, expect=EXPECT)
    gone.observe(ok(0, 10))
    events = gone.observe(ok(1, 10, anchor_hash=""))
    assert raised(events) == [Fault.RESET]
    assert "block 5 (the engine's creation block) is gone; the head is 10" in events[0].message
    rehashed = Watch(timeout=2, expect=EXPECT)
    rehashed.observe(ok(0, 10))
    events = rehashed.observe(ok(1, 11, anchor_hash="0xbb"))
    assert events[0].message == (
        "chain reset: block 5 (the engine's creation block) is now 0xbb, not 0xaa"
    )


def test_changed_chain_id_and_missing_engine_are_fatal_with_their_messages():
    watch = Watch(timeout=2, expect=EXPECT)
    watch.observe(ok(0, 10))
    events = watch.observe(ok(1, 11, chain_id=999, has_code=False))
    assert raised(events) == [Fault.CHAIN_ID, Fault.NO_CODE]
    assert events[0].message == "chain id changed: the node is now chain 999, not 31337"
    assert events[1].message.startswith(f"engine missing: no code at {ENGINE} on chain 999")
    assert all(e.fatal for e in events)


def test_without_a_record_the_first_chain_id_seen_is_the_expected_one():
    watch = Watch(timeout=2)
    assert watch.observe(Probe(at=0, head=1, chain_id=5)) == []
    assert raised(watch.observe(Probe(at=1, head=2, chain_id=6))) == [Fault.CHAIN_ID]


def test_a_head_stalled_past_the_limit_fails_health_until_it_advances():
    watch = Watch(timeout=2, stall_after=10)
    watch.observe(ok(0, 7))
    assert watch.observe(ok(9, 7)) == []
    events = watch.observe(ok(11, 7))
    assert raised(events) == [Fault.STALLED]
    assert events[0].message == "head stalled: block 7 for 11 s (limit 10 s)"
    assert not events[0].fatal and not watch.health(11)[0]
    cleared = watch.observe(ok(12, 8))
    assert [(e.message, e.cleared) for e in cleared] == [("head advancing again: block 8", True)]
    assert watch.health(12)[0]


def test_measured_block_time_arms_the_stall_check_after_eight_intervals():
    watch = Watch(timeout=2, stall_blocks=10, measure=True)
    for i in range(8):  # a block every 2 s, seen every 4 s in pairs
        watch.observe(ok(4.0 * i, 2 * i))
    assert watch.stall_limit is None  # 7 intervals so far
    watch.observe(ok(32, 16))
    assert watch.stall_limit == 20  # 10 block times of 2 s
    assert raised(watch.observe(ok(53, 16))) == [Fault.STALLED]


def test_health_is_starting_until_the_first_good_probe_and_the_bot_ready():
    watch = Watch(timeout=2)
    assert watch.health(0) == (False, watch.health(0)[1])
    assert watch.health(0)[1]["status"] == "starting"
    watch.observe(ok(1, 3))
    assert watch.health(1, ready=False)[1]["status"] == "starting"
    healthy, body = watch.health(1.5)
    assert healthy and body["status"] == "ok" and body["head"] == 3 and body["faults"] == []


# --- settings -------------------------------------------------------------------------


def test_settings_defaults_and_the_stall_limit_rules():
    s = OpsSettings.from_env({})
    assert (s.host, s.port, s.rpc_timeout, s.interval) == ("127.0.0.1", None, 5.0, 1.0)
    assert s.stall_limit(31337) == (None, False)  # a dev chain: never
    assert s.stall_limit(1) == (None, True)  # measured
    assert OpsSettings.from_env({"MARGINCALL_BLOCK_TIME": "12"}).stall_limit(1) == (120, False)
    assert OpsSettings.from_env({"MARGINCALL_STALL_AFTER": "30"}).stall_limit(31337) == (
        30,
        False,
    )
    assert OpsSettings.from_env({"MARGINCALL_STALL_AFTER": "0"}).stall_limit(1) == (None, False)
    assert OpsSettings.from_env({"MARGINCALL_METRICS_PORT": "0"}).port == 0


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("MARGINCALL_METRICS_PORT", "70000", "must be a port (0-65535) or off"),
        ("MARGINCALL_RPC_TIMEOUT", "0", "must be positive"),
        ("MARGINCALL_WATCH_INTERVAL", "soon", "must be a number"),
        ("MARGINCALL_STALL_AFTER", "-1", "must be a finite number >= 0"),
    ],
)
def test_a_bad_setting_is_refused_with_its_name(name, value, says):
    with pytest.raises(OpsConfigError, match=re.escape(f"{name} {says}")):
        OpsSettings.from_env({name: value})


# --- probe against a stub node ----------------------------------------------------------


class StubNode:
    """A JSON-RPC node in a thread: `state` answers, `frozen` holds every reply."""

    def __init__(self, batches: bool = True):
        self.state = {"head": 12, "chain_id": 31337, "code": "0x6001", "anchor": "0xaa"}
        self.frozen = threading.Event()
        self.release = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if stub.frozen.is_set():
                    stub.release.wait(10)
                if isinstance(body, list) and not batches:
                    reply = {"jsonrpc": "2.0", "id": None, "error": {"message": "no batches"}}
                else:
                    reply = [stub.answer(c) for c in body] if isinstance(body, list) else None
                    reply = reply if reply is not None else stub.answer(body)
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, call: dict) -> dict:
        s, method = self.state, call["method"]
        result = {
            "eth_blockNumber": hex(s["head"]),
            "eth_chainId": hex(s["chain_id"]),
            "eth_getCode": s["code"],
            "eth_getBlockByNumber": {"hash": s["anchor"]} if s["anchor"] else None,
        }[method]
        return {"jsonrpc": "2.0", "id": call["id"], "result": result}

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def node() -> Iterator[StubNode]:
    stub = StubNode()
    try:
        yield stub
    finally:
        stub.close()


def test_probe_reads_head_chain_code_and_anchor_in_one_round(node):
    found = probe(node.url, 2, EXPECT)
    assert found.ok and (found.head, found.chain_id) == (12, 31337)
    assert found.has_code is True and found.anchor_hash == "0xaa"
    node.state.update(code="0x", anchor=None)
    found = probe(node.url, 2, EXPECT)
    assert found.has_code is False and found.anchor_hash == ""


def test_probe_falls_back_to_single_calls_when_batches_are_refused():
    stub = StubNode(batches=False)
    try:
        found = probe(stub.url, 2, EXPECT)
        assert found.ok and found.head == 12 and found.has_code is True
    finally:
        stub.close()


def test_probe_of_a_frozen_node_times_out_within_the_timeout(node):
    node.frozen.set()
    start = time.monotonic()
    found = probe(node.url, 0.5, EXPECT)
    assert not found.ok and found.timed_out
    assert time.monotonic() - start < 1.5


def test_probe_of_a_closed_port_is_an_error_not_a_timeout():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    found = probe(f"http://127.0.0.1:{port}", 1)
    assert not found.ok and not found.timed_out and "refused" in found.error.lower()


# --- exporter and Ops ---------------------------------------------------------------------


def test_collector_exports_the_bots_series_its_lag_and_tokens_in_whole_units():
    watch = Watch(timeout=2)
    watch.observe(ok(time.monotonic(), 20))
    series = (
        Series("calls_made", "counter", "calls", "calls_made"),
        Series("rewards_tokens", "counter", "rewards", "rewards", tokens=True),
        Series("pending_transactions", "gauge", "pending", "pending"),
    )
    view = BotView(
        "keeper",
        lambda: {"block": 18, "calls_made": 3, "rewards": 2_500_000, "pending": 1},
        series,
        decimals=6,
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BotCollector("keeper", watch, lambda: view))
    text = generate_latest(registry).decode()
    assert 'margincall_keeper_calls_made_total{bot="keeper"} 3.0' in text
    assert 'margincall_keeper_rewards_tokens_total{bot="keeper"} 2.5' in text
    assert 'margincall_keeper_pending_transactions{bot="keeper"} 1.0' in text
    assert 'margincall_keeper_lag_blocks{bot="keeper"} 2.0' in text
    assert 'margincall_node_head_block{bot="keeper"} 20.0' in text
    assert 'margincall_fault_active{bot="keeper",fault="chain_reset"} 0.0' in text


class Log:
    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def __getattr__(self, level: str):
        return lambda message: self.lines.append((level, message))


def health(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_ops_hands_a_fatal_fault_over_once_and_health_says_why(node):
    settings = OpsSettings(port=0, rpc_timeout=1, interval=0.1)
    log, fatal = Log(), []
    ops = Ops(settings, node.url, log)
    ops.preflight(EXPECT, "record.json")
    ops.register(BotView("keeper", dict, ()))
    ops.start(on_fatal=fatal.append)
    try:
        url = ops.server.url
        deadline = time.monotonic() + 5
        while health(url)[0] != 200:
            assert time.monotonic() < deadline, health(url)
            time.sleep(0.05)
        node.state["chain_id"] = 999
        while not fatal:
            assert time.monotonic() < deadline + 5, log.lines
            time.sleep(0.05)
        status, body = health(url)
        assert status == 503 and body["status"] == "stopping" and body["bot"] == "keeper"
        assert body["faults"][0]["fault"] == "chain_id_changed"
        assert [f.fault for f in fatal] == [Fault.CHAIN_ID]
        assert (
            "error",
            "watchdog: chain id changed: the node is now chain 999, not 31337;"
            " stopping (exit code 3)",
        ) in log.lines
    finally:
        ops.stop()


def test_preflight_refuses_a_stale_record_with_every_reason(node):
    node.state.update(code="0x", anchor=None)
    ops = Ops(OpsSettings(rpc_timeout=1), node.url, Log())
    with pytest.raises(Exception, match="stale deployment record record.json: ") as err:
        ops.preflight(EXPECT, "record.json")
    assert f"no code at the engine {ENGINE}" in str(err.value)
    assert "the engine's creation block 5 is past the head 12" in str(err.value)


# --- docs -------------------------------------------------------------------------------


def test_docs_name_every_metric_setting_and_fault():
    from pathlib import Path

    from margincall.keeper.metrics import PROMETHEUS_SERIES as KEEPER
    from margincall.notify.metrics import PROMETHEUS_SERIES as NOTIFIER
    from margincall.ops import OPS_VARS

    doc = (Path(__file__).parents[2] / "docs" / "bots.md").read_text()
    for bot, series in (("keeper", KEEPER), ("notifier", NOTIFIER)):
        for s in series:
            name = f"margincall_{bot}_{s.name}" + ("_total" if s.kind == "counter" else "")
            assert f"| `{name}` | {s.kind} |" in doc, name
    missing = [v for v in OPS_VARS if f"`{v}`" not in doc]
    missing += [f.value for f in Fault if f"`{f.value}`" not in doc]
    assert missing == []
