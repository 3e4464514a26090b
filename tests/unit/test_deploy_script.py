"""`ape run deploy` (scripts/deploy.py) and `margincall.deploy.record`: the config-driven deploy
writes a record that matches the chain, refuses to overwrite it without `--force` (before any
transaction), overwrites it with `--force`, and rejects a bad config before any transaction.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from margincall.constants import WAD
from margincall.deploy.record import (
    ConfigError,
    RecordExists,
    load_config,
    read_record,
    record_path,
)
from margincall.math import RiskParams

ROOT = Path(__file__).resolve().parents[2]


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "margincall_deploy_script", ROOT / "scripts/deploy.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


deploy_script = _load_script()


def config_data(guardian: str) -> dict:
    return {
        "collateral": {"mock": True, "decimals": 6},
        "guardian": guardian,
        "reserve_factor": "0.3",
        "risk": {"call_ratio": "1.3", "grace_period": 7_200, "close_factor": "0.5"},
        "orders": {"settlement_fee": "2.5", "max_window": 600},
        "markets": [
            {
                "name": "ETH-USD",
                "feed": "mock",
                "feed_decimals": 8,
                "price": "2000",
                "heartbeat": 30 * 86_400,
                "min_price": "1",
                "max_price": "1000000",
                "imr": "0.10",
                "mmr": "0.05",
                "fee": "0.0005",
                "window_cap": "10000000",
            },
            {
                "name": "SOL-USD",
                "feed": "mock",
                "feed_decimals": 18,
                "price": "150.5",
                "heartbeat": 30 * 86_400,
                "imr": "0.2",
                "mmr": "0.1",
                "fee": "0.001",
            },
        ],
    }


@pytest.fixture
def config_file(tmp_path, guardian):
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(config_data(guardian.address)))
    return path


def write_config(tmp_path, data) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_local_config_is_valid():
    config = load_config(ROOT / "config/deploy-local.yaml")
    assert [m.name for m in config.markets] == ["ETH-USD", "BTC-USD", "SOL-USD"]
    assert all(m.mock for m in config.markets)
    assert config.risk == RiskParams()  # the shipped file spells out the engine defaults
    assert (config.settlement_fee_micro, config.max_order_window) == (100_000, 3_600)


def test_deploy_writes_a_record_matching_the_chain(
    project, chain, owner, guardian, tmp_path, config_file
):
    out = tmp_path / "deployments" / "local.json"
    record, path = deploy_script.run_deploy(project, chain, owner, config_file, out)

    assert path == out and out.exists()
    assert read_record(out) == record
    assert json.loads(out.read_text())["engine"] == record.engine
    assert record.chain_id == chain.chain_id
    assert record.deployer == owner.address
    assert record.network == chain.provider.network_choice
    assert 0 < record.block <= record.end_block == chain.blocks.head.number
    # `block` is the engine's creation block: a bot scans its events from there
    assert not chain.provider.get_code(record.engine, block_id=record.block - 1)
    assert chain.provider.get_code(record.engine, block_id=record.block)

    engine = project.MarginEngine.at(record.engine)
    pool = project.LiquidityPool.at(record.pool)
    fund = project.InsuranceFund.at(record.fund)
    token = project.MockERC20.at(record.token)
    assert pool.engine() == fund.engine() == engine.address
    assert engine.TOKEN() == token.address and token.decimals() == 6
    assert engine.guardian() == record.guardian == guardian.address
    assert pool.reserve_factor() == record.reserve_factor == 3 * WAD // 10
    params = engine.risk_params()
    assert params.call_ratio == record.risk_params["call_ratio"] == 13 * WAD // 10
    assert params.grace_period == record.risk_params["grace_period"] == 7_200
    assert params.close_factor == WAD // 2
    assert record.risk_params["tranche_interval"] == RiskParams().tranche_interval  # default kept

    assert engine.market_count() == len(record.markets) == 2
    eth, sol = record.markets
    assert (eth.name, eth.market_id, sol.name, sol.market_id) == ("ETH-USD", 0, "SOL-USD", 1)
    m = engine.markets(1)
    assert m.oracle == sol.oracle and m.active
    assert (
        (m.imr, m.mmr, m.fee) == (sol.imr, sol.mmr, sol.fee) == (WAD // 5, WAD // 10, WAD // 1000)
    )
    assert engine.markets(0).window_cap == eth.window_cap == 10_000_000 * WAD
    assert project.OracleAdapter.at(eth.oracle).price() == 2_000 * WAD
    assert project.OracleAdapter.at(sol.oracle).price() == 1505 * WAD // 10
    assert eth.mock_feed and eth.feed_decimals == 8 and sol.feed_decimals == 18
    assert eth.min_price == WAD and eth.max_price == 10**6 * WAD
    assert record.client(project).market(0).imr == WAD // 10
    book = project.OrderBook.at(record.order_book)
    assert book.settlement_fee() == record.settlement_fee == 2_500_000  # 2.5 tokens, 6 decimals
    assert book.max_window() == record.max_order_window == 600


def test_deploy_refuses_to_overwrite_before_any_transaction(
    project, chain, owner, tmp_path, config_file
):
    out = tmp_path / "local.json"
    first, _ = deploy_script.run_deploy(project, chain, owner, config_file, out)
    nonce = owner.nonce
    with pytest.raises(RecordExists, match="already exists.*--force"):
        deploy_script.run_deploy(project, chain, owner, config_file, out)
    assert owner.nonce == nonce  # nothing sent
    assert read_record(out) == first


def test_deploy_with_force_overwrites(project, chain, owner, tmp_path, config_file):
    out = tmp_path / "local.json"
    first, _ = deploy_script.run_deploy(project, chain, owner, config_file, out)
    second, _ = deploy_script.run_deploy(project, chain, owner, config_file, out, force=True)
    assert second.engine != first.engine
    assert read_record(out).engine == second.engine


def test_default_record_path_is_per_ecosystem_and_network():
    assert record_path("ethereum:local:foundry") == Path("deployments/ethereum-local.json")
    assert record_path("arbitrum:sepolia:node") == Path("deployments/arbitrum-sepolia.json")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(typo=1), "unknown key.*typo"),
        (lambda d: d["markets"][0].update(imr="0.04"), "need 0 < mmr < imr"),
        (lambda d: d["markets"][0].update(fee="abc"), "fee: expected a number"),
        (lambda d: d["markets"][0].pop("price"), "mock feed needs an initial price"),
        (lambda d: d["markets"][0].update(feed="0x123"), "expected an address"),
        (lambda d: d["markets"][1].update(name="ETH-USD"), "duplicate names"),
        (lambda d: d["markets"][0].update(heartbeat=0), "heartbeat: expected an integer >= 1"),
        (lambda d: d["risk"].update(call_ratoi="1.2"), "risk: unknown key.*call_ratoi"),
        (lambda d: d.update(reserve_factor="1.5"), "reserve_factor: at most 1"),
        (lambda d: d.update(collateral={"mock": False}), "address of an existing ERC-20"),
        (
            lambda d: d.update(collateral={"mock": True, "address": "0x" + "11" * 20}),
            "either address.*or mock",
        ),
        (lambda d: d.update(collateral={"address": "0x12"}), "collateral.address: expected"),
        (
            lambda d: d["markets"][0].update(fallback_feed="0x" + "22" * 20),
            "fallback feed needs a fallback_heartbeat",
        ),
        (
            lambda d: d["markets"][0].update(fallback_heartbeat=60),
            "fallback_heartbeat without a fallback_feed",
        ),
        (lambda d: d.update(sequencer={"feed": "0x" + "33" * 20}), "needs feed and grace_period"),
        (lambda d: d.update(owner="multisig"), "owner: expected an address"),
        (lambda d: d.update(markets=[]), "markets: expected a non-empty list"),
        (lambda d: d["orders"].update(settlement_fee="100.5"), "at most 100 tokens"),
        (lambda d: d["orders"].update(settlement_fee="0.0000001"), "at most 6 decimals"),
        (lambda d: d["orders"].update(max_window=0), "max_window: expected an integer >= 1"),
        (lambda d: d["orders"].update(max_window=70_000), "max_window: at most 65535 s"),
        (lambda d: d["orders"].update(fee="1"), "orders: unknown key.*fee"),
    ],
)
def test_bad_config_is_rejected_before_any_transaction(
    project, chain, owner, guardian, tmp_path, change, message
):
    data = config_data(guardian.address)
    change(data)
    path = write_config(tmp_path, data)
    nonce = owner.nonce
    with pytest.raises(ConfigError, match=message):
        deploy_script.run_deploy(project, chain, owner, path, tmp_path / "out.json")
    assert owner.nonce == nonce
    assert not (tmp_path / "out.json").exists()


def test_config_with_a_real_feed_address_needs_no_price(guardian, tmp_path):
    data = config_data(guardian.address)
    data["markets"][0] = {
        k: v for k, v in data["markets"][0].items() if k not in ("price", "feed_decimals")
    }
    data["markets"][0]["feed"] = "0x5f4ec3df9cbd43714fe2740f5e3616155c5b8419"
    config = load_config(write_config(tmp_path, data))
    assert not config.markets[0].mock
    assert config.markets[0].feed == "0x5f4eC3Df9cbd43714FE2740f5E3616155c5b8419"


def test_config_fallback_feed_must_differ_from_the_primary(guardian, tmp_path):
    data = config_data(guardian.address)
    market = {k: v for k, v in data["markets"][0].items() if k not in ("price", "feed_decimals")}
    market.update(feed="0x" + "44" * 20, fallback_feed="0x" + "44" * 20, fallback_heartbeat=60)
    data["markets"] = [market]
    with pytest.raises(ConfigError, match="must differ from the primary"):
        load_config(write_config(tmp_path, data))


def test_deploy_on_existing_token_and_feeds_with_fallback_sequencer_and_owner_handover(
    project, chain, owner, guardian, stranger, tmp_path
):
    """What a real-network deploy uses: an ERC-20 and Chainlink-style feeds that exist
    already, a fallback feed, an L2 sequencer-uptime feed, and the ownership handed to a
    multisig in two steps."""
    usdc = owner.deploy(project.MockERC20, "USD Coin", "USDC", 6)
    primary = owner.deploy(project.MockAggregator, 8, 2_000 * 10**8)
    backup = owner.deploy(project.MockAggregator, 18, 2_001 * WAD)
    sequencer = owner.deploy(project.MockAggregator, 0, 0)  # 0: up, since its round start
    chain.pending_timestamp += 3_601
    chain.mine()
    data = config_data(guardian.address)
    data.pop("collateral")
    data["collateral"] = {"address": usdc.address}
    data["owner"] = stranger.address
    data["sequencer"] = {"feed": sequencer.address, "grace_period": 3_600}
    eth = {k: v for k, v in data["markets"][0].items() if k not in ("price", "feed_decimals")}
    eth.update(feed=primary.address, fallback_feed=backup.address, fallback_heartbeat=7_200)
    data["markets"] = [eth]
    record, _ = deploy_script.run_deploy(
        project, chain, owner, write_config(tmp_path, data), tmp_path / "real.json"
    )

    assert record.token == usdc.address and not record.collateral_mock
    assert record.collateral_decimals == 6
    engine = project.MarginEngine.at(record.engine)
    assert engine.TOKEN() == usdc.address
    (m,) = record.markets
    assert not m.mock_feed and m.feed == primary.address and m.feed_decimals == 8
    assert (m.fallback_feed, m.fallback_heartbeat) == (backup.address, 7_200)
    assert (m.sequencer_feed, m.sequencer_grace) == (sequencer.address, 3_600)
    adapter = project.OracleAdapter.at(m.oracle)
    assert adapter.price() == 2_000 * WAD
    primary.set_answer(0, sender=owner)  # primary invalid: the fallback prices the market
    assert adapter.price() == 2_001 * WAD
    sequencer.set_answer(1, sender=owner)  # sequencer down: no price at all
    assert adapter.try_price()[1] is False

    contracts = (
        engine,
        project.LiquidityPool.at(record.pool),
        project.InsuranceFund.at(record.fund),
    )
    assert record.pending_owner == stranger.address
    for contract in contracts:  # nothing changed hands yet
        assert contract.owner() == owner.address
        assert contract.pending_owner() == stranger.address
    for contract in contracts:
        contract.accept_ownership(sender=stranger)
        assert contract.owner() == stranger.address


def test_existing_token_or_feed_without_code_is_refused_before_any_transaction(
    project, chain, owner, guardian, tmp_path
):
    data = config_data(guardian.address)
    data["collateral"] = {"address": "0x" + "55" * 20}
    nonce = owner.nonce
    with pytest.raises(ConfigError, match="collateral.address: no contract at"):
        deploy_script.run_deploy(
            project, chain, owner, write_config(tmp_path, data), tmp_path / "o.json"
        )
    data = config_data(guardian.address)
    eth = {k: v for k, v in data["markets"][0].items() if k not in ("price", "feed_decimals")}
    data["markets"] = [{**eth, "feed": "0x" + "66" * 20}]
    with pytest.raises(ConfigError, match="market ETH-USD.feed: no contract at"):
        deploy_script.run_deploy(
            project, chain, owner, write_config(tmp_path, data), tmp_path / "o.json"
        )
    assert owner.nonce == nonce
    assert not (tmp_path / "o.json").exists()


# --- click: parsing and refusals ---------------------------------------------------


def invoke(*args: str):
    """Runs the script's command on the test chain (ape-foundry connects to the running Anvil
    at this host instead of starting a new one)."""
    from ape import chain

    env = {"APE_FOUNDRY_HOST": chain.provider.uri}
    return CliRunner().invoke(deploy_script.cli, list(args), env=env)


def test_cli_rejects_a_missing_config_file(tmp_path):
    result = invoke(
        *["--account", "TEST::0", "--config", str(tmp_path / "nope.yaml")],
    )
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_cli_refuses_to_overwrite_an_existing_record(tmp_path, config_file):
    out = tmp_path / "local.json"
    out.write_text("{}")
    result = invoke(
        *["--account", "TEST::0", "--config", str(config_file), "--output", str(out)],
    )
    assert result.exit_code == 1, result.output
    assert "already exists" in result.output and "--force" in result.output
    assert out.read_text() == "{}"


def test_cli_reports_a_bad_config_in_one_line(tmp_path, guardian):
    data = config_data(guardian.address)
    data["markets"][0]["imr"] = "0.01"
    path = write_config(tmp_path, data)
    result = invoke(
        *["--account", "TEST::0", "--config", str(path), "--output", str(tmp_path / "o.json")],
    )
    assert result.exit_code == 1, result.output
    assert "need 0 < mmr < imr" in result.output


def test_cli_deploys_writes_the_record_and_force_overwrites(tmp_path, config_file, chain):
    out = tmp_path / "deployments" / "local.json"
    args = ["--account", "TEST::0", "--config", str(config_file), "--output", str(out)]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "record written to" in result.output
    first = read_record(out)
    assert first.chain_id == chain.chain_id and len(first.markets) == 2
    result = invoke(*args, "--force")
    assert result.exit_code == 0, result.output
    assert read_record(out).engine != first.engine
