"""The CLI on a local chain: account names, the fast status read, JSON output of every state
command, `watch` over skipped blocks, the `dev` helpers' refusals, and no node of its own.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from rich.console import Console

from margincall.cli import cli
from margincall.cli import trader as mc
from margincall.cli.accounts import resolve_account
from margincall.cli.fast import FastReader
from margincall.cli.watch import run_watch
from margincall.constants import WAD, State
from margincall.deploy.record import deploy_from_config, load_config, write_record
from margincall.math import scaled_call_reward
from margincall.ports import free_port, listening
from tests.utils.helpers import fund_lp, settle_or_raise, trade

ROOT = Path(__file__).resolve().parents[2]
ETH = 0


@pytest.fixture(scope="module")
def deployed(project, chain, owner, lp, tmp_path_factory):
    data = yaml.safe_load((ROOT / "config/deploy-local.yaml").read_text())
    for m in data["markets"]:
        m["heartbeat"] = 30 * 86_400
    path = tmp_path_factory.mktemp("cli") / "deploy.yaml"
    path.write_text(yaml.safe_dump(data))
    d = deploy_from_config(project, owner, load_config(path), chain.provider.network_choice, chain)
    fund_lp(d.system, lp, 1_000_000)
    return d


@pytest.fixture(scope="module")
def record_file(deployed, tmp_path_factory):
    return write_record(deployed.record, tmp_path_factory.mktemp("rec") / "ethereum-local.json")


@pytest.fixture
def long_eth(deployed, trader):
    """The trader (TEST::5) with 1,000 mUSD and 4 ETH long at 2,000."""
    system = deployed.system
    system.token.mint(trader.address, 10_000 * 10**6, sender=trader)
    system.token.approve(system.engine.address, 10_000 * 10**6, sender=trader)
    system.engine.deposit(1_000 * 10**6, sender=trader)
    settle_or_raise(system, trade(system, trader, ETH, 4 * WAD, 2_100 * WAD))
    return trader


def invoke(*args: str, host: str | None = None):
    from ape import chain
    from ape.logging import logger

    level = logger.level
    try:
        env = {"APE_FOUNDRY_HOST": host or chain.provider.uri, "COLUMNS": "200"}
        return CliRunner().invoke(cli, list(args), env=env)
    finally:
        logger.set_level(level)


def test_test_accounts_resolve_as_ape_derives_them(accounts):
    for i in (0, 3, 5, 9):
        assert resolve_account(f"TEST::{i}") == accounts[i].address
    assert resolve_account(accounts[5].address.lower()) == accounts[5].address


def test_fast_status_loads_neither_ape_nor_the_sdk():
    # `margincall status` on a local node reads over plain JSON-RPC: the modules it loads must
    # not pull the SDK (eth_abi) or Ape, else its <= 1.5 s start is gone (docs/benchmarks.md)
    probe = (
        "import sys, margincall.cli.status, margincall.cli.fast, margincall.deploy.record\n"
        "heavy = [m for m in ('ape', 'web3', 'eth_abi', 'margincall.sdk') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == ""


def test_fast_status_reads_what_the_sdk_reads(deployed, long_eth, chain, project):
    deployed.system.set_price(ETH, 1_860)
    session = mc.open_session(deployed.record, chain, project)
    slow = mc.account_view(session, long_eth.address)
    fast = FastReader(chain.provider.uri, deployed.record).view(long_eth.address)
    for field in slow.status.__dataclass_fields__:
        assert getattr(fast.status, field) == getattr(slow.status, field), field
    assert fast.positions == slow.positions
    assert (fast.call_ratio, fast.block, fast.now) == (slow.call_ratio, slow.block, slow.now)
    assert fast.status.state == State.CALLABLE


def test_every_state_command_prints_parseable_json(deployed, record_file, trader):
    deployed.system.token.mint(trader.address, 10_000 * 10**6, sender=trader)
    rec = ["--deployment", str(record_file), "--json"]
    acct = ["--account", "TEST::5"]
    dep = json.loads(invoke("deposit", "1000", *acct, *rec).output)
    assert (dep["action"], dep["amount"], dep["collateral"]) == ("deposit", "1000", "1000")
    dev = ["--deployment", str(record_file)]

    def settle(size: str) -> None:  # the next round, then the trader settles its own order
        assert invoke("dev", "price", "ETH-USD", "2000", *dev).exit_code == 0
        done = json.loads(invoke("orders", "TEST::5", "--settle", *acct, *rec).output)
        assert [(o["settled"], o["price"], o["size_delta"]) for o in done] == [(True, "2000", size)]

    trade = json.loads(invoke("trade", "ETH-USD", "2", "--no-wait", *acct, *rec).output)
    assert (trade["action"], trade["size_delta"], trade["reduce_only"]) == ("commit", "2", False)
    listed = json.loads(invoke("orders", "TEST::5", *rec).output)
    assert [o["order_id"] for o in listed] == [trade["order_id"]]
    settle("2")
    status = json.loads(invoke("status", "TEST::5", *rec).output)
    # 1,000 - the fee 2 - the settlement fee 0.1 (the trader settled: it is in the wallet)
    assert status["state"] == "HEALTHY" and status["collateral"] == "997.9"
    assert status["positions"][0]["market"] == "ETH-USD"
    positions = json.loads(invoke("positions", "TEST::5", *rec).output)
    assert positions == status["positions"]
    watched = [json.loads(x) for x in invoke("watch", "TEST::5", "--once", *rec).output.split()]
    assert watched[-1]["type"] == "status" and watched[-1]["state"] == "HEALTHY"
    closing = json.loads(invoke("close", "ETH-USD", "--no-wait", *acct, *rec).output)
    assert (closing["size_delta"], closing["reduce_only"]) == ("-2", True)
    settle("-2")
    closed = json.loads(invoke("status", "TEST::5", *rec).output)
    assert closed["positions"] == []
    everything = json.loads(invoke("withdraw", "all", *acct, *rec).output)
    assert everything["collateral"] == "0" and everything["amount"] == closed["collateral"]


def test_trade_on_an_empty_account_says_to_deposit_first(record_file, deployed):
    rec = ["--deployment", str(record_file)]
    result = invoke("trade", "ETH-USD", "1", "--account", "TEST::6", *rec)
    assert result.exit_code == 1, result.output
    assert "has no collateral: deposit some first" in result.output
    short = invoke("deposit", "5", "--account", "TEST::6", *rec)
    assert "is 0.00 mUSD, less than 5.00 mUSD" in short.output
    assert "margincall dev mint" in short.output and "token units" not in short.output
    nothing = invoke("withdraw", "all", "--account", "TEST::6", *rec)
    assert nothing.exit_code == 1 and "has no collateral" in nothing.output


def test_watch_reports_every_event_of_blocks_it_did_not_poll(
    deployed, long_eth, chain, project, keeper
):
    out = StringIO()
    console = Console(file=out, width=400, color_system=None)
    session = mc.open_session(deployed.record, chain, project, console, as_json=True)
    engine = deployed.system.engine

    def stream():
        engine.deposit(10 * 10**6, sender=long_eth)  # four blocks before the next poll
        deployed.system.set_price(ETH, 1_860)
        engine.margin_call(long_eth.address, sender=keeper)
        engine.deposit(100 * 10**6, sender=long_eth)  # the cure
        yield chain.blocks.head.number

    run_watch(session, long_eth.address, blocks=1, stream=stream)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    events = [x["event"] for x in lines if x["type"] == "event"]
    # the cure's transaction logs the clearing before the deposit
    assert events == ["Deposit", "MarginCall", "MarginCallCleared", "Deposit"]
    assert lines[-1]["type"] == "status" and lines[-1]["state"] == "HEALTHY"
    call = next(x for x in lines if x.get("event") == "MarginCall")
    # the reward scales with the account: the keeper's share of a close_factor tranche's
    # penalty (a third of liquidation_penalty) on 4 ETH at 1,860 (0.25 * 0.5% * 20% of 7,440)
    reward = scaled_call_reward(4 * 1_860 * WAD, session.client.risk_params()) // 10**12
    assert call["reward"] == session.tokens(reward) == "1.86"
    assert call["caller"] == keeper.address


def test_dev_helpers_drive_the_local_chain(deployed, record_file, stranger, chain):
    rec = ["--deployment", str(record_file)]
    minted = invoke("dev", "mint", "250.5", stranger.address, *rec)
    assert minted.exit_code == 0, minted.output
    assert deployed.system.token.balanceOf(stranger.address) == 250_500_000
    priced = invoke("dev", "price", "BTC-USD", "61000", *rec)
    assert priced.exit_code == 0, priced.output
    assert deployed.system.oracles[1].try_price()[0] == 61_000 * WAD
    before = chain.blocks.head.timestamp
    mined = invoke("dev", "mine", "--seconds", "600", "--blocks", "2")
    assert mined.exit_code == 0, mined.output
    assert chain.blocks.head.timestamp >= before + 600


def test_dev_helpers_refuse_a_chain_that_is_not_local(record_file, tmp_path):
    port = free_port()
    node = subprocess.Popen(
        ["anvil", "--port", str(port), "--chain-id", "11155111"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not listening(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        for args in (
            ["dev", "mint", "10", "TEST::5", "--deployment", str(record_file)],
            ["dev", "price", "ETH-USD", "1", "--deployment", str(record_file)],
            ["dev", "mine"],
        ):
            result = invoke(*args, host=url)
            assert result.exit_code == 1, result.output
            assert "only run on a local chain (chain id 31337)" in result.output
            assert "chain id 11155111" in result.output
    finally:
        node.terminate()
        node.wait(timeout=10)


def test_a_command_with_its_node_down_says_so_and_starts_none(record_file):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    for args in (
        ["status", "TEST::5"],
        ["deposit", "1", "--account", "TEST::5"],
        ["dev", "mine"],
    ):
        result = (
            invoke(*args, "--deployment", str(record_file), host=url)
            if args[0] != "dev"
            else invoke(*args, host=url)
        )
        assert result.exit_code == 1, result.output
        assert f"no node answers at {url}" in result.output
        assert len(result.output.strip().splitlines()) == 1
        assert not listening(port)


def test_the_bot_launchers_with_their_node_down_say_so_and_start_none(record_file):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    for args in (
        ["keeper", "--deployment", str(record_file), "--account", "TEST::3"],
        ["notifier", "--deployment", str(record_file), "--webhook-url", "http://127.0.0.1:9/"],
    ):
        result = invoke(*args, host=url)
        assert result.exit_code == 1, result.output
        assert f"no node answers at {url}" in result.output
        assert "does not start a node of its own" in result.output
        assert not listening(port)


def test_a_network_without_a_deployment_is_one_line():
    for args in (["status", "TEST::5"], ["deposit", "1", "--account", "TEST::5"]):
        result = invoke(*args, "--network", "ethereum:sepolia")
        assert result.exit_code == 1, result.output
        assert result.output.strip() == (
            "Error: refused: deployments/ethereum-sepolia.json: no deployment record for this "
            "network (run `ape run deploy` first, or give --deployment)"
        )


def test_simulate_refuses_an_unwritable_out_before_running():
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["simulate", "--out", "/proc/nope"])
    assert result.exit_code == 2, result.output
    assert "/proc/nope: cannot write there" in result.output
    assert time.monotonic() - started < 60  # refused, not simulated (a run takes minutes)


@pytest.mark.parametrize(
    "command, variables",
    [
        ("deposit", ["MARGINCALL_ACCOUNT", "MARGINCALL_DEPLOYMENT", "MARGINCALL_NETWORK"]),
        ("trade", ["MARGINCALL_SLIPPAGE_BPS", "MARGINCALL_JSON"]),
        ("status", ["MARGINCALL_NETWORK", "MARGINCALL_DEPLOYMENT", "MARGINCALL_JSON"]),
        ("watch", ["MARGINCALL_WATCH_INTERVAL", "MARGINCALL_WATCH_BLOCKS"]),
        ("dev mint", ["APE_FOUNDRY_HOST", "MARGINCALL_DEPLOYMENT"]),
    ],
)
def test_help_shows_each_option_s_environment_variable(command, variables):
    result = CliRunner().invoke(cli, [*command.split(), "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.split())
    for name in variables:
        assert f"env var: {name}" in shown, name


def test_a_frozen_node_is_one_line_within_the_probe_timeout(record_file):
    port = free_port()
    node = subprocess.Popen(
        ["anvil", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while not listening(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        node.send_signal(signal.SIGSTOP)  # frozen: the port accepts, nothing answers
        url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        result = invoke("status", "TEST::5", "--deployment", str(record_file), host=url)
        assert result.exit_code == 1, result.output
        assert f"no node answers at {url} within 3 s (down or frozen)" in result.output
        assert time.monotonic() - started < 10
    finally:
        node.send_signal(signal.SIGCONT)
        node.terminate()
        node.wait(timeout=10)
