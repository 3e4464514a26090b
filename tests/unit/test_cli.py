"""The trader CLI (`margincall`, src/margincall/cli/trader.py) on the Ape test chain.

The `run_*` layer is called with the connected provider of `ape test`; the click layer is
run with click's CliRunner, for parsing (bad input: exit 2), refusals (exit 1) and one good
invocation per command. A refused operation sends no transaction (the nonce is unchanged).
"""

from __future__ import annotations

import dataclasses
import json
from io import StringIO
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from rich.console import Console

from margincall.cli import bots as cli_bots
from margincall.cli import trader as mc
from margincall.cli import watch as mc_watch
from margincall.constants import WAD, State
from margincall.deploy.record import (
    RecordError,
    deploy_from_config,
    load_config,
    write_record,
)
from margincall.notify import ENV_VARS, NotifierConfig, default_outbox
from margincall.report import fmt_wad
from margincall.sdk import InsufficientFunds, InsufficientMargin, InvalidRequest
from tests.utils.helpers import fund_lp, publish_round

ROOT = Path(__file__).resolve().parents[2]
ETH, BTC, SOL = 0, 1, 2


@pytest.fixture(scope="module")
def deployed(project, chain, owner, lp, tmp_path_factory):
    """The shipped local config (6-decimal mUSD), with a 30-day heartbeat and a funded pool."""
    data = yaml.safe_load((ROOT / "config/deploy-local.yaml").read_text())
    for m in data["markets"]:
        m["heartbeat"] = 30 * 86_400  # Anvil's clock keeps moving across tests
    path = tmp_path_factory.mktemp("cli") / "deploy.yaml"
    path.write_text(yaml.safe_dump(data))
    d = deploy_from_config(project, owner, load_config(path), chain.provider.network_choice, chain)
    fund_lp(d.system, lp, 1_000_000)
    return d


@pytest.fixture(scope="module")
def record(deployed):
    return deployed.record


@pytest.fixture(scope="module")
def record_file(record, tmp_path_factory):
    return write_record(record, tmp_path_factory.mktemp("rec") / "ethereum-local.json")


@pytest.fixture
def out():
    return StringIO()


@pytest.fixture
def session(record, chain, project, out):
    console = Console(file=out, width=200, highlight=False, color_system=None)
    return mc.open_session(record, chain, project, console)


@pytest.fixture
def funded(deployed, trader):
    """The trader holds 10,000 mUSD, not yet approved."""
    deployed.system.token.mint(trader.address, 10_000 * 10**6, sender=trader)
    return trader


@pytest.fixture
def settles(deployed, keeper):
    """A keeper's settlement of one order, as `run_trade(on_wait=...)` takes it: the next
    round of the order's market at its current price, then `settle_order` at it."""
    book = deployed.system.book

    def settle(order_id: int) -> None:
        market = int(book.order(order_id).market_id)
        round_id = publish_round(deployed.system, market)
        book.settle_order(order_id, round_id, sender=keeper)

    return settle


@pytest.fixture
def long_eth(session, funded, settles):
    """The trader's 1,000 mUSD and 4 ETH long (8x), HEALTHY."""
    mc.run_deposit(session, "1000", funded)
    mc.run_trade(session, "ETH-USD", "4", funded, on_wait=settles)
    return funded


def text(out: StringIO) -> str:
    return out.getvalue()


# --- input parsing ------------------------------------------------------------


@pytest.mark.parametrize(
    "value, decimals, signed, expected",
    [("12.5", 6, False, 12_500_000), ("1_000", 6, False, 10**9), ("-0.5", 18, True, -WAD // 2)],
)
def test_to_units_converts_exactly(value, decimals, signed, expected):
    assert mc.to_units(value, decimals, "x", signed=signed) == expected


@pytest.mark.parametrize(
    "value, signed, message",
    [
        ("abc", False, "not a number"),
        ("0", True, "must not be zero"),
        ("-1", False, "must be positive"),
        ("0.0000001", False, "more than 6 decimals"),
        ("nan", True, "not a number"),
    ],
)
def test_to_units_rejects_bad_input(value, signed, message):
    with pytest.raises(mc.InputError, match=message):
        mc.to_units(value, 6, "x", signed=signed)


# --- session ------------------------------------------------------------------


def test_session_refuses_a_record_of_another_chain(record, chain, project):
    other = dataclasses.replace(record, chain_id=record.chain_id + 1)
    with pytest.raises(RecordError, match="chain id"):
        mc.open_session(other, chain, project)


def test_session_refuses_a_record_without_code_on_chain(record, chain, project, stranger):
    gone = dataclasses.replace(record, engine=stranger.address)
    with pytest.raises(RecordError, match="no contract at the recorded engine"):
        mc.open_session(gone, chain, project)


# --- deposit ------------------------------------------------------------------


def test_deposit_approves_then_deposits(session, funded, deployed, out):
    mc.run_deposit(session, "1000", funded)
    assert deployed.system.engine.collateral_of(funded.address) == 1_000 * 10**6
    assert "approved the engine for 1,000.00 mUSD" in text(out)
    assert "deposited 1,000.00 mUSD" in text(out) and "collateral 1,000.00 mUSD" in text(out)


def test_deposit_without_approval_is_refused_before_sending(session, funded):
    nonce = funded.nonce
    with pytest.raises(InsufficientFunds, match="approve the engine first"):
        mc.run_deposit(session, "10", funded, approve=False)
    assert funded.nonce == nonce


def test_deposit_beyond_the_balance_is_refused_before_sending(session, funded):
    nonce = funded.nonce
    with pytest.raises(InsufficientFunds, match="balance"):
        mc.run_deposit(session, "10001", funded)
    assert funded.nonce == nonce


@pytest.mark.parametrize("amount", ["abc", "0", "-5", "0.0000001"])
def test_deposit_rejects_bad_amounts(session, funded, amount):
    nonce = funded.nonce
    with pytest.raises(mc.InputError):
        mc.run_deposit(session, amount, funded)
    assert funded.nonce == nonce


# --- withdraw -----------------------------------------------------------------


def test_withdraw_within_free_margin(session, long_eth, deployed, out):
    mc.run_withdraw(session, "100.5", long_eth)
    # less the 0.05% trading fee on 8,000 and the order's 0.1 mUSD settlement fee (to the keeper)
    fees = 4_000_000 + 100_000
    assert deployed.system.engine.collateral_of(long_eth.address) == 899_500_000 - fees
    assert "withdrew 100.50 mUSD" in text(out)


def test_withdraw_below_the_initial_margin_is_refused_before_sending(session, long_eth):
    nonce = long_eth.nonce
    with pytest.raises(InsufficientMargin, match="initial margin"):
        mc.run_withdraw(session, "500", long_eth)
    assert long_eth.nonce == nonce


def test_withdraw_rejects_a_bad_amount(session, long_eth):
    with pytest.raises(mc.InputError, match="must be positive"):
        mc.run_withdraw(session, "-1", long_eth)


# --- trade and close -----------------------------------------------------------


def test_trade_by_name_and_by_id_long_and_short(session, funded, deployed, out, settles):
    mc.run_deposit(session, "2000", funded)
    mc.run_trade(session, "eth-usd", "1.5", funded, slippage_bps=10, on_wait=settles)
    mc.run_trade(session, "1", "-0.01", funded, on_wait=settles)
    engine = deployed.system.engine
    assert engine.position(funded.address, ETH)[0] == 3 * WAD // 2
    assert engine.position(funded.address, BTC)[0] == -WAD // 100
    assert "bought 1.5000 ETH-USD at 2,000.00" in text(out)
    assert "sold 0.0100 BTC-USD at 60,000.00" in text(out)


@pytest.mark.parametrize(
    "market, size, bps, message",
    [
        ("DOGE-USD", "1", 50, "unknown market 'DOGE-USD'; known: ETH-USD"),
        ("7", "1", 50, "unknown market"),
        ("ETH-USD", "0", 50, "must not be zero"),
        ("ETH-USD", "x", 50, "not a number"),
        ("ETH-USD", "1", 10_000, "slippage"),
    ],
)
def test_trade_rejects_bad_input_before_sending(session, funded, market, size, bps, message):
    mc.run_deposit(session, "1000", funded)
    nonce = funded.nonce
    with pytest.raises(mc.InputError, match=message):
        mc.run_trade(session, market, size, funded, slippage_bps=bps)
    assert funded.nonce == nonce


def test_trade_beyond_the_initial_margin_is_refused_before_sending(session, funded):
    mc.run_deposit(session, "1000", funded)
    nonce = funded.nonce
    with pytest.raises(InsufficientMargin, match="initial margin"):
        mc.run_trade(session, "ETH-USD", "6", funded)  # 12,000 notional needs 1,200
    assert funded.nonce == nonce


def test_close_closes_the_whole_position_with_its_pnl(session, long_eth, deployed, out, settles):
    deployed.system.set_price(ETH, 2_100)
    before = deployed.system.engine.collateral_of(long_eth.address)
    mc.run_close(session, "ETH-USD", long_eth, on_wait=settles)
    assert deployed.system.engine.position(long_eth.address, ETH)[0] == 0
    after = deployed.system.engine.collateral_of(long_eth.address)
    # +400 PnL, 0.05% fee on 8,400, the close order's 0.1 settlement fee
    assert after - before == 400 * 10**6 - 4_200_000 - 100_000
    assert "closed 4.0000 ETH-USD at 2,100.00" in text(out)
    assert "realised PnL 400.00 mUSD" in text(out)


def test_close_without_a_position_is_refused_before_sending(session, funded):
    nonce = funded.nonce
    with pytest.raises(InvalidRequest, match="no position in SOL-USD"):
        mc.run_close(session, "SOL-USD", funded)
    assert funded.nonce == nonce


def test_close_rejects_an_unknown_market(session, funded):
    with pytest.raises(mc.InputError, match="unknown market"):
        mc.run_close(session, "XRP", funded)


# --- status and watch ------------------------------------------------------------


def test_status_shows_margin_and_positions_with_pnl(session, long_eth, deployed, out):
    deployed.system.set_price(ETH, 1_950)
    view = mc.run_status(session, long_eth.address.lower())
    assert view.status.state == State.HEALTHY
    (p,) = view.positions
    assert (p.name, p.size, p.pnl) == ("ETH-USD", 4 * WAD, -200 * WAD)
    assert p.entry_price == 2_000 * WAD
    shown = text(out)
    for word in ("HEALTHY", "maintenance margin", "call deadline", "next tranche", "Positions"):
        assert word in shown
    assert "-200.00" in shown and "7,800.00" in shown  # PnL and notional
    assert "795.90" in shown  # equity: 1,000 - 4 fee - 0.1 settlement fee - 200


def test_status_of_an_empty_account(session, stranger, out):
    view = mc.run_status(session, stranger.address)
    assert view.positions == () and view.status.state == State.HEALTHY
    assert "no open positions" in text(out) and "∞" in text(out)


def test_status_rejects_a_bad_address(session):
    with pytest.raises(mc.InputError, match="not an address"):
        mc.run_status(session, "0x1234")


def test_watch_once_prints_one_line(session, long_eth, out):
    views = mc_watch.run_watch(session, long_eth.address, blocks=0)
    assert len(views) == 1
    assert f"block {views[0].block}  HEALTHY" in text(out)


def test_watch_follows_blocks_and_highlights_a_margin_call(
    session, long_eth, deployed, keeper, chain, out
):
    def stream():
        deployed.system.set_price(ETH, 1_860)  # 8x long: ratio 1.10, CALLABLE
        yield chain.blocks.head.number
        deployed.system.engine.margin_call(long_eth.address, sender=keeper)
        yield chain.blocks.head.number
        pytest.fail("watch read more blocks than asked")  # pragma: no cover

    views = mc_watch.run_watch(session, long_eth.address, blocks=2, stream=stream)
    assert [v.status.state for v in views] == [State.HEALTHY, State.CALLABLE, State.CALLED]
    shown = text(out)
    assert "state HEALTHY -> CALLABLE" in shown
    assert "below the call ratio: a keeper may margin-call this account" in shown
    assert "state CALLABLE -> CALLED" in shown
    assert "MARGIN CALL: 1h00m00s left to cure" in shown or "MARGIN CALL: 59m" in shown
    # to cure: back to the call ratio, 1.25 x maintenance (5% of 4 x 1,860 = 372) = 465
    called = views[-1].status
    assert called.maintenance == 372 * WAD
    assert views[-1].cure_amount == 465 * WAD - called.equity > 0
    assert f"deposit {fmt_wad(views[-1].cure_amount)} or reduce" in shown


def test_watch_rejects_bad_input(session, trader):
    with pytest.raises(mc.InputError, match="not an address"):
        mc_watch.run_watch(session, "nope", blocks=0)
    with pytest.raises(mc.InputError, match="negative"):
        mc_watch.run_watch(session, trader.address, blocks=-1)


# --- click: parsing, exit codes, one good invocation per command -------------------


def invoke(*args: str):
    """Runs the CLI on the test chain: ape-foundry connects to the running Anvil at this host
    (the documented way to share one local chain) instead of starting a new one."""
    from ape import chain
    from ape.logging import logger

    env = {"APE_FOUNDRY_HOST": chain.provider.uri}
    level = logger.level
    try:
        return CliRunner().invoke(mc.cli, list(args), env=env)
    finally:
        logger.set_level(level)  # the CLI quiets Ape's log; keep the session's level


@pytest.mark.parametrize(
    "args, message",
    [
        (["status", "0x12"], "not an address"),
        (["deposit", "abc", "--account", "TEST::5"], "not a number"),
        (["deposit", "0", "--account", "TEST::5"], "must not be zero"),
        (["withdraw", "-3", "--account", "TEST::5"], "amount: must be positive, got -3"),
        (["deposit", "-0.5", "--account", "TEST::5"], "amount: must be positive, got -0.5"),
        (["withdraw", "--acount", "TEST::5"], "No such option: --acount"),
        (["trade", "ETH-USD", "x", "--account", "TEST::5"], "not a number"),
        (
            ["trade", "ETH-USD", "1", "--slippage-bps", "10000", "--account", "TEST::5"],
            "0<=x<=9999",
        ),
        (["trade", "ETH-USD", "--account", "TEST::5"], "Missing argument"),
        (["close", "--account", "TEST::5"], "Missing argument 'MARKET'"),
        (["watch", "0x12", "--once"], "not an address"),
        (["watch", "0x" + "1" * 40, "--blocks", "-1"], "x>=0"),
        (["frobnicate"], "No such command"),
    ],
)
def test_cli_bad_input_exits_2(args, message):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_cli_bad_amount_precision_exits_2_once_connected(record_file):
    result = invoke(
        "deposit", "0.0000001", "--account", "TEST::5", "--deployment", str(record_file)
    )
    assert result.exit_code == 2, result.output
    assert "more than 6 decimals" in result.output


def test_cli_unknown_market_exits_2_once_connected(record_file):
    result = invoke("trade", "DOGE", "1", "--account", "TEST::5", "--deployment", str(record_file))
    assert result.exit_code == 2, result.output
    assert "unknown market 'DOGE'" in result.output


def test_cli_missing_record_exits_1(tmp_path, trader):
    result = invoke("status", trader.address, "--deployment", str(tmp_path / "none.json"))
    assert result.exit_code == 1
    assert "no deployment record" in result.output and "ape run deploy" in result.output


def test_cli_record_of_another_chain_exits_1(record, tmp_path, trader):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({**record.to_json(), "chain_id": 1}))
    result = invoke("status", trader.address, "--deployment", str(path))
    assert result.exit_code == 1
    assert "refused: deployment record is for chain id 1" in result.output


def test_cli_refused_operation_exits_1_in_one_line(record_file, trader):
    nonce = trader.nonce
    result = invoke("withdraw", "5", "--account", "TEST::5", "--deployment", str(record_file))
    assert result.exit_code == 1
    assert result.output.strip().startswith("Error: refused: withdraw:")
    assert len(result.output.strip().splitlines()) == 1
    assert trader.nonce == nonce


def test_cli_good_invocations(record_file, funded, deployed, trader, settles):
    rec = ["--deployment", str(record_file)]
    acct = ["--account", "TEST::5"]
    assert trader.address == funded.address
    book = deployed.system.book

    def keeper_settles() -> None:  # what a keeper does between two commands
        for order_id in book.pending_orders(trader.address):
            settles(int(order_id))

    steps = [  # (command, expected output, a keeper settles the pending orders after it)
        (["deposit", "1000", *acct, *rec], "deposited 1,000.00 mUSD", False),
        (["trade", "ETH-USD", "2", "--no-wait", *acct, *rec], "committed order 0x", False),
        (["orders", trader.address, *rec], "waiting for a price", True),
        (
            ["trade", "ETH-USD", "-0.5", "--slippage-bps", "20", "--no-wait", *acct, *rec],
            "sell",
            True,
        ),
        (["status", trader.address, *rec], "HEALTHY", False),
        (["watch", trader.address, "--once", *rec], "HEALTHY", False),
        (["close", "0", "--no-wait", *acct, *rec], "committed order 0x", False),
        (["orders", trader.address, "--json", *rec], '"reduce_only":true', True),
        (["orders", trader.address, "--json", *rec], "[]", False),
        (["withdraw", "900", *acct, *rec], "withdrew 900.00 mUSD", False),
    ]
    for args, expected, then_settle in steps:
        result = invoke(*args)
        assert result.exit_code == 0, f"{args}: {result.output}"
        assert expected in " ".join(result.output.split()), f"{args}: {result.output}"
        if then_settle:
            keeper_settles()
    assert deployed.system.engine.position(trader.address, ETH)[0] == 0


# --- bot launchers: exported variables are the options' defaults --------------------


@pytest.fixture
def bot_record(tmp_path) -> Path:
    path = tmp_path / "record.json"
    path.write_text("{}")
    return path


def launch(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(mc.cli, [*args, "--dry-run"], env=env or {})


def shown(result) -> dict[str, str]:
    """The variables a dry run prints."""
    return dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line[:40])


def test_keeper_takes_exported_variables_as_option_defaults(bot_record):
    env = {
        "MARGINCALL_DEPLOYMENT": str(bot_record),
        "MARGINCALL_SHARD": "1/2",
        "MARGINCALL_PROFIT_MARGIN_BPS": "15000",
        "MARGINCALL_CLEAR_CALLS": "0",
        "MARGINCALL_GAS_PER_CALL": "90000",  # no option: passes through
    }
    result = launch("keeper", "--account", "TEST::3", env=env)
    assert result.exit_code == 0, result.output
    got = shown(result)
    assert got["MARGINCALL_SHARD"] == "1/2"
    assert got["MARGINCALL_PROFIT_MARGIN_BPS"] == "15000"
    assert got["MARGINCALL_CLEAR_CALLS"] == "0"
    assert got["MARGINCALL_GAS_PER_CALL"] == "90000"
    assert got["MARGINCALL_DEPLOYMENT"] == str(bot_record.resolve())


def test_keeper_option_on_the_command_line_beats_the_exported_variable(bot_record):
    env = {"MARGINCALL_SHARD": "1/2"}
    result = launch(
        "keeper", "--deployment", str(bot_record), "--account", "TEST::3", "--shard", "0/2", env=env
    )
    assert result.exit_code == 0, result.output
    assert shown(result)["MARGINCALL_SHARD"] == "0/2"
    flag = launch(
        "keeper",
        *("--deployment", str(bot_record), "--account", "TEST::3", "--no-clear-calls"),
        env={"MARGINCALL_CLEAR_CALLS": "1"},
    )
    assert shown(flag)["MARGINCALL_CLEAR_CALLS"] == "0"


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("MARGINCALL_SHARD", "2/2", "shard '2/2'"),
        ("MARGINCALL_MAX_BATCH", "500", "MARGINCALL_MAX_BATCH"),
        ("MARGINCALL_GAS_PER_CALL", "lots", "MARGINCALL_GAS_PER_CALL must be an integer"),
        ("MARGINCALL_STALE_BLOCKS", "0", "MARGINCALL_STALE_BLOCKS"),
        ("MARGINCALL_CLEAR_CALLS", "maybe", "MARGINCALL_CLEAR_CALLS must be 1 or 0"),
        ("MARGINCALL_MAX_BACKOFF", "0", "MARGINCALL_MAX_BACKOFF must be a positive number"),
    ],
)
def test_keeper_checks_the_merged_environment_before_starting(bot_record, name, value, message):
    result = launch(
        "keeper", "--deployment", str(bot_record), "--account", "TEST::3", env={name: value}
    )
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_notifier_takes_exported_variables_and_checks_the_merged_environment(bot_record):
    env = {
        "MARGINCALL_DEPLOYMENT": str(bot_record),
        "MARGINCALL_WARN_RATIO": "1.3",
        "MARGINCALL_RETRY_MAX": "30",
    }
    ok = launch("notifier", env=env)
    assert ok.exit_code == 0, ok.output
    got = shown(ok)
    assert got["MARGINCALL_WARN_RATIO"] == "1.3"
    assert got["MARGINCALL_DEPLOYMENT"] == str(bot_record.resolve())
    assert shown(launch("notifier", "--warn-ratio", "off", env=env))["MARGINCALL_WARN_RATIO"] == (
        "off"
    )
    # the exported maximum is below the base given on the command line: refused
    bad = launch("notifier", "--retry-base", "45", env=env)
    assert bad.exit_code == 2, bad.output
    assert "MARGINCALL_RETRY_MAX must be >= MARGINCALL_RETRY_BASE" in bad.output
    typed = launch("notifier", env={**env, "MARGINCALL_CONFIRMATIONS": "-1"})
    assert typed.exit_code == 2 and "MARGINCALL_CONFIRMATIONS" in typed.output
    runner = launch("notifier", env={**env, "MARGINCALL_MAX_BACKOFF": "soon"})
    assert runner.exit_code == 2 and "MARGINCALL_MAX_BACKOFF must be a number" in runner.output


def test_check_runner_env_accepts_unset_and_positive_seconds():
    cli_bots.check_runner_env({})
    cli_bots.check_runner_env({"MARGINCALL_POLL_INTERVAL": "0.5", "MARGINCALL_MAX_BACKOFF": "3"})
    with pytest.raises(cli_bots.EnvError, match="MARGINCALL_POLL_INTERVAL"):
        cli_bots.check_runner_env({"MARGINCALL_POLL_INTERVAL": "-1"})


def test_notifier_env_vars_describe_the_code(record):
    """ENV_VARS (the options' help) says what the code does: defaults and the outbox name."""
    config = NotifierConfig.from_env({"MARGINCALL_DEPLOYMENT": "x.json"})
    defaults = {
        "MARGINCALL_WARN_RATIO": config.warn_ratio,
        "MARGINCALL_WARN_HYSTERESIS": config.hysteresis,
        "MARGINCALL_CONFIRMATIONS": config.confirmations,
        "MARGINCALL_LOG_CHUNK": config.log_chunk,
        "MARGINCALL_WEBHOOK_TIMEOUT": config.webhook_timeout,
        "MARGINCALL_RETRY_BASE": config.retry_base,
        "MARGINCALL_RETRY_MAX": config.retry_max,
        "MARGINCALL_DELIVERY_BUDGET": config.delivery_budget,
    }
    for name, value in defaults.items():
        text = ENV_VARS[name][0]
        expected = float(text) * (WAD if name.startswith("MARGINCALL_WARN") else 1)
        assert value == expected, name
    assert config.notify_from == ENV_VARS["MARGINCALL_NOTIFY_FROM"][0]
    outbox = default_outbox(record)
    assert outbox.parent.as_posix() == ".margincall"
    assert outbox.name == f"notifier-{record.chain_id}-{record.engine.lower()}.sqlite"
    assert ".margincall/notifier-<chain id>-<engine>.sqlite" in ENV_VARS["MARGINCALL_OUTBOX"][1]
    assert "per block" not in ENV_VARS["MARGINCALL_DELIVERY_BUDGET"][1]
