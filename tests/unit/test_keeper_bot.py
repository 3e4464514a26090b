"""The keeper's settings, the bot launchers, the runner's backoff and the demo's crowd and
crash path, without a chain (the bots themselves run in tests/e2e)."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from margincall.cli import cli
from margincall.constants import WAD, State
from margincall.keeper.audit import delay_stats
from margincall.keeper.config import ConfigError, KeeperConfig, parse_shard
from margincall.keeper.logic import (
    GAS_EXTRA_MARKET,
    GAS_PER_CALL,
    GAS_PER_TRANCHE,
    Snapshot,
    tranche_reward_floor,
)
from margincall.keeper.runtime import RESULT_POLL, Backoff, _mark_seen, _QuickKicker, head_seen
from margincall.math import RiskParams
from margincall.sim.crowd import crash_path, plan_crowd

# --- keeper settings ---------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [("0/1", (0, 1)), ("2/3", (2, 3))])
def test_parse_shard_accepts_i_of_n(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["1/1", "3/2", "-1/2", "0/0", "1", "a/b", "1/2/3"])
def test_parse_shard_rejects_what_is_not_a_shard(text):
    with pytest.raises(ConfigError, match="shard"):
        parse_shard(text)


def test_keeper_config_requires_a_deployment_record():
    with pytest.raises(ConfigError, match="MARGINCALL_DEPLOYMENT is not set"):
        KeeperConfig.from_env({})


def test_keeper_config_defaults_and_round_trip_through_env():
    config = KeeperConfig.from_env({"MARGINCALL_DEPLOYMENT": "rec.json"})
    assert (config.shard_index, config.shard_count, config.margin_bps) == (0, 1, 12_000)
    assert config.clear_calls and config.metrics_path is None
    assert config.tx_gas_cap == 2**24
    custom = KeeperConfig(
        deployment=Path("rec.json"),
        shard_index=1,
        shard_count=4,
        margin_bps=15_000,
        native_per_token=Decimal("0.001"),
        max_batch=50,
        scan_chunk=200,
        clear_calls=False,
        metrics_path=Path("m.json"),
        tx_gas_cap=5_000_000,
        block_time=12,
        replace_after=5,
        max_clears=3,
        gas_per_call=30_000,
        gas_per_tranche=60_000,
        gas_per_extra_market=20_000,
    )
    assert KeeperConfig.from_env(custom.to_env()) == custom
    assert config.block_time is None and config.replace_after == 3  # measured; 3 blocks
    assert KeeperConfig.from_env({"MARGINCALL_DEPLOYMENT": "r", "MARGINCALL_BLOCK_TIME": "0"}) == (
        KeeperConfig(deployment=Path("r"))
    )


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("MARGINCALL_MAX_BATCH", "101", "MARGINCALL_MAX_BATCH must be in"),
        ("MARGINCALL_SCAN_CHUNK", "0", "MARGINCALL_SCAN_CHUNK must be in"),
        ("MARGINCALL_PROFIT_MARGIN_BPS", "lots", "must be an integer"),
        ("MARGINCALL_NATIVE_PER_TOKEN", "-1", "must not be negative"),
        ("MARGINCALL_NATIVE_PER_TOKEN", "cheap", "must be a number"),
        ("MARGINCALL_CLEAR_CALLS", "maybe", "must be 1 or 0"),
        ("MARGINCALL_SHARD", "5/5", "shard"),
        ("MARGINCALL_TX_GAS_CAP", "99999", "MARGINCALL_TX_GAS_CAP must be"),
        ("MARGINCALL_BLOCK_TIME", "-1", "MARGINCALL_BLOCK_TIME must be"),
        ("MARGINCALL_BLOCK_TIME", "fast", "MARGINCALL_BLOCK_TIME must be an integer"),
        ("MARGINCALL_REPLACE_BLOCKS", "0", "MARGINCALL_REPLACE_BLOCKS must be"),
    ],
)
def test_keeper_config_names_the_bad_setting(name, value, message):
    with pytest.raises(ConfigError, match=message):
        KeeperConfig.from_env({"MARGINCALL_DEPLOYMENT": "rec.json", name: value})


def test_gas_defaults_are_the_measured_ones_and_overridable():
    config = KeeperConfig.from_env({"MARGINCALL_DEPLOYMENT": "r"})
    assert (config.gas_per_call, config.gas_per_tranche, config.gas_per_extra_market) == (
        GAS_PER_CALL,
        GAS_PER_TRANCHE,
        GAS_EXTRA_MARKET,
    )
    custom = KeeperConfig.from_env(
        {
            "MARGINCALL_DEPLOYMENT": "r",
            "MARGINCALL_GAS_PER_TRANCHE": "250_000",
            "MARGINCALL_GAS_PER_CALL": "80000",
            "MARGINCALL_GAS_PER_EXTRA_MARKET": "0",
        }
    )
    assert (custom.gas_per_call, custom.gas_per_tranche, custom.gas_per_extra_market) == (
        80_000,
        250_000,
        0,
    )
    with pytest.raises(ConfigError, match="MARGINCALL_GAS_PER_EXTRA_MARKET must be an integer"):
        KeeperConfig.from_env(
            {"MARGINCALL_DEPLOYMENT": "r", "MARGINCALL_GAS_PER_EXTRA_MARKET": "x"}
        )


def test_cost_model_bounds_rewards_with_the_engines_parameters_and_mmrs():
    config = KeeperConfig(deployment=Path("r"), native_per_token=Decimal("0.0004"), margin_bps=1)
    params = RiskParams()
    costs = config.cost_model(params, [5 * WAD // 100, 10 * WAD // 100], decimals=6, gas_price=7)
    assert costs.gas_price == 7 and costs.margin_bps == 1
    assert costs.gas_per_tranche == config.gas_per_tranche
    assert costs.rewards is not None and costs.rewards.max_mmr == 10 * WAD // 100
    assert costs.rewards.wei_per_token == 4 * 10**14 and costs.rewards.decimals == 6
    # the flat fallbacks: call_reward and min_keeper_reward (1 token each) in wei
    assert costs.call_reward == costs.tranche_reward == 4 * 10**14
    # an account at 10% mmr (a bound from all markets) or 5% (its own market, known)
    s = Snapshot(
        "0x" + "11" * 20,
        State.LIQUIDATABLE,
        collateral=4_500 * WAD,
        equity=4_500 * WAD,
        maintenance=5_000 * WAD,
        positions=1,
    )
    assert tranche_reward_floor(s, costs.rewards) < tranche_reward_floor(
        replace(s, mmr=5 * WAD // 100), costs.rewards
    )
    assert config.cost_model(params, [], decimals=18).rewards.max_mmr == WAD  # no market


def test_profit_rule_converts_token_units_to_native_wei():
    config = KeeperConfig(deployment=Path("r"), native_per_token=Decimal("0.0004"))
    # one whole 6-decimal token = 0.0004 native coin = 4e14 wei
    assert config.wei_per_token_unit(6) * 10**6 == Decimal(4 * 10**14)


# --- launchers -----------------------------------------------------------------------------


@pytest.fixture
def record(tmp_path) -> Path:
    path = tmp_path / "record.json"
    path.write_text("{}")
    return path


def test_keeper_dry_run_prints_the_silverback_command_and_settings(record):
    result = CliRunner().invoke(
        cli,
        ["keeper", "--deployment", str(record), "--account", "TEST::3", "--shard", "1/2"]
        + ["--metrics", "k.json", "--dry-run"],
    )
    assert result.exit_code == 0, result.output
    assert "MARGINCALL_SHARD=1/2" in result.output
    assert f"MARGINCALL_DEPLOYMENT={record.resolve()}" in result.output
    assert "silverback run keeper --network ethereum:local:foundry" in result.output
    assert "--runner margincall.keeper.runtime:ResilientRunner --account TEST::3" in result.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["--shard", "2/2"], "shard '2/2'"),
        (["--max-batch", "500"], "--max-batch"),
        (["--native-per-token", "x"], "MARGINCALL_NATIVE_PER_TOKEN must be a number"),
    ],
)
def test_keeper_refuses_bad_options_before_starting(record, args, message):
    result = CliRunner().invoke(
        cli, ["keeper", "--deployment", str(record), "--account", "TEST::3", "--dry-run", *args]
    )
    assert result.exit_code == 2
    assert message in result.output


def test_keeper_needs_an_existing_record_and_an_account(tmp_path):
    missing = CliRunner().invoke(
        cli, ["keeper", "--deployment", str(tmp_path / "none.json"), "--account", "TEST::3"]
    )
    assert missing.exit_code == 2 and "does not exist" in missing.output
    no_account = CliRunner().invoke(cli, ["keeper", "--deployment", str(tmp_path)])
    assert no_account.exit_code == 2


def test_notifier_dry_run_and_bad_warning_level(record):
    ok = CliRunner().invoke(
        cli,
        ["notifier", "--deployment", str(record), "--webhook-url", "https://hooks.example/x"]
        + ["--warn-ratio", "1.4", "--node-url", "http://127.0.0.1:8545", "--dry-run"],
    )
    assert ok.exit_code == 0, ok.output
    assert "MARGINCALL_WARN_RATIO=1.4" in ok.output
    assert "APE_FOUNDRY_HOST=http://127.0.0.1:8545" in ok.output
    assert "silverback run notifier" in ok.output and "--account" not in ok.output
    bad = CliRunner().invoke(cli, ["notifier", "--warn-ratio", "abc", "--dry-run"])
    assert bad.exit_code == 2
    assert "MARGINCALL_WARN_RATIO must be a number" in bad.output


# --- runner backoff --------------------------------------------------------------------------


def test_backoff_doubles_up_to_its_cap_and_resets():
    b = Backoff(first=0.25, cap=2.0)
    assert [b.next() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert b.failures == 6
    b.reset()
    assert (b.next(), b.failures) == (0.25, 1)
    with pytest.raises(ValueError):
        Backoff(first=3, cap=2)


def test_runner_waits_for_a_task_result_at_a_fine_interval_not_taskiqs_200_ms():
    import asyncio

    seen: dict[str, object] = {}

    class Kicked:
        task_id = "t1"

        async def wait_result(self, check_interval=0.2, timeout=-1.0, with_logs=False):
            seen.update(check_interval=check_interval, timeout=timeout)
            return "result"

    class Decorated:
        __annotations__ = {"return": int}

        async def kiq(self, *args):
            seen["args"] = args
            return Kicked()

    kicker = _QuickKicker(Decorated(), RESULT_POLL)
    task = asyncio.run(kicker.kiq(7))
    assert asyncio.run(task.wait_result()) == "result"
    assert seen == {"args": (7,), "check_interval": RESULT_POLL, "timeout": -1.0}
    assert RESULT_POLL <= 0.01
    assert task.task_id == "t1" and kicker.__annotations__ == {"return": int}


def test_runner_records_when_it_first_saw_each_head():
    _mark_seen(10**9)
    first = head_seen(10**9)
    _mark_seen(10**9)
    assert first is not None and head_seen(10**9) == first
    assert head_seen(10**9 + 1) is None


# --- crowd and crash path -----------------------------------------------------------------


def test_crowd_is_reproducible_and_within_its_bounds():
    a, b = plan_crowd(200, seed=9), plan_crowd(200, seed=9)
    assert a == b
    assert a != plan_crowd(200, seed=10)
    assert all(Decimal("2") <= p.leverage <= Decimal("9.9") for p in a)
    assert {p.market_id for p in a} == {0, 1}
    longs = sum(p.long for p in a)
    assert 100 < longs < 200  # mostly long, some short


def test_trader_size_gives_the_planned_leverage():
    plan = plan_crowd(1, seed=1)[0]
    price = 2_000 * 10**18
    notional = abs(plan.size(price)) * price // 10**18
    assert notional == pytest.approx(plan.deposit * plan.leverage * 10**18, rel=1e-12)


def test_crash_path_falls_to_its_low_with_rebounds_and_no_cliff():
    path = crash_path(2_000.0, fall=0.45, steps=30, rebound=0.03, every=6, seed=1)
    assert len(path) == 30 and path[-1] == 1_100.0
    steps = [b / a - 1 for a, b in zip([2_000.0, *path], path, strict=False)]
    assert sum(1 for r in steps if r > 0) == 4  # steps 6, 12, 18, 24 rebound
    assert min(steps) > -0.04  # no single step falls much more than the average (-2.9%)
    assert crash_path(2_000.0, seed=1) == crash_path(2_000.0, seed=1)


def test_delay_stats():
    assert delay_stats([])["count"] == 0
    s = delay_stats([1, 1, 1, 2, 1])
    assert (s["count"], s["max"], s["p50"]) == (5, 2, 1)
    assert s["mean"] == pytest.approx(1.2)


# --- raw log reading (the keeper's hot path) ----------------------------------------------


def test_raw_event_reads_every_field_from_topics_and_data(project):
    from eth_utils import to_checksum_address

    from margincall.sdk.events import RawEvent

    abi = next(e for e in project.MarginEngine.contract_type.events if e.name == "Liquidation")
    ev = RawEvent(abi)
    account, keeper = "0x" + "ab" * 20, "0x" + "cd" * 20
    words = [2, 3, 10**17, 5 * 10**21, 75 * 10**18, 15 * 10**6, 60 * 10**6, 10**9, -7, 0, 1]
    data = b"".join(w.to_bytes(32, "big", signed=True) for w in words)
    log = {
        "address": "0x" + "ee" * 20,
        "topics": [
            "0x" + ev.topic0.hex(),
            "0x" + "00" * 12 + account[2:],
            "0x" + "00" * 12 + keeper[2:],
        ],
        "data": "0x" + data.hex(),
    }
    assert ev.field(log, "account") == to_checksum_address(account)
    assert ev.field(log, "keeper") == to_checksum_address(keeper)
    assert ev.field(log, "tranche") == 2 and ev.field(log, "state") == 3
    assert ev.field(log, "keeper_reward") == 15 * 10**6
    assert ev.field(log, "equity_after") == -7  # int256 read signed
    assert ev.field(log, "full_close") is True
    other = {**log, "topics": ["0x" + "00" * 32, *log["topics"][1:]]}
    assert ev.select([log, other]) == [log]
    assert ev.select([log], address="0x" + "ee" * 20) == [log]
    assert ev.select([log], address="0x" + "ff" * 20) == []


def test_keeper_marks_parameters_for_reload_on_market_or_risk_logs_and_knows_account_mmrs(
    project,
):
    from eth_utils import to_checksum_address

    from margincall.keeper.bot import Keeper, KeeperState
    from margincall.sdk.events import RawEvent

    abis = {e.name: e for e in project.MarginEngine.contract_type.events}
    keeper = Keeper.__new__(Keeper)  # no chain: only the log bookkeeping
    keeper.state = KeeperState()
    keeper._params_changed = False
    keeper.mmrs = [5 * WAD // 100, 5 * WAD // 100, 10 * WAD // 100]
    names = ("PositionChanged", "MarketSet", "RiskParamsSet", "CallRewardPaid")
    keeper._raw = {n: RawEvent(abis[n]) for n in names}
    trader = "0x" + "ab" * 20

    def log(name: str, *topics: int, words: int = 7) -> dict:
        return {
            "address": "0x" + "ee" * 20,
            "topics": ["0x" + keeper._raw[name].topic0.hex()]
            + ["0x" + t.to_bytes(32, "big").hex() for t in topics],
            "data": "0x" + (b"\x00" * 31 + b"\x01").hex() * words,
        }

    opened = [log("PositionChanged", int(trader, 16), m) for m in (0, 2)]
    assert keeper._apply(opened, 10) == 2 and not keeper._params_changed
    account = to_checksum_address(trader)
    assert keeper._mmr_of(account) == 10 * WAD // 100  # its markets' largest, not all markets'
    assert keeper._mmr_of("0x" + "cd" * 20) == 0  # unknown account: the model's bound
    assert keeper._apply([log("MarketSet", 1, words=6)], 11) == 0 and keeper._params_changed
    keeper._params_changed = False
    keeper._apply([log("RiskParamsSet", words=12)], 12)
    assert keeper._params_changed and keeper.state.cursor == 12
