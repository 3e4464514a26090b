"""Deploys and configures a whole margincall system from a config file.

    ape run deploy --account TEST::0                  # embedded Anvil, config/deploy-local.yaml
    ape run deploy --network ethereum:sepolia:node --account deployer --config config/sepolia.yaml

Writes `deployments/<ecosystem>-<network>.json` (addresses, parameters as the
contracts report them, creation block, chain id, deployer) and refuses to
overwrite an existing record without `--force`. The config is validated before
the first transaction (`margincall.deploy.record.load_config`).

With the embedded Anvil (`host: auto` in ape-config.yaml) the chain, and so the
system, is gone when this command exits. To keep using it from the
`margincall` CLI, start `anvil --port 8545` yourself and point both at it:
`export APE_FOUNDRY_HOST=http://127.0.0.1:8545` (ape-foundry then connects
to that node instead of starting its own).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from ape.cli import ConnectedProviderCommand, account_option, network_option
from ape.exceptions import ContractLogicError
from rich.console import Console

from margincall.deploy import ZERO
from margincall.deploy.record import (
    DEFAULT_CONFIG,
    DEFAULT_DIR,
    ConfigError,
    DeploymentRecord,
    RecordExists,
    check_writable,
    deploy_from_config,
    load_config,
    preflight,
    record_path,
    write_record,
)
from margincall.report import fmt_pct, fmt_ratio, fmt_wad, kv_table

console = Console(highlight=False)


def run_deploy(
    project: Any,
    chain: Any,
    deployer: Any,
    config_path: str | Path,
    output: str | Path | None = None,
    force: bool = False,
    network: str | None = None,
) -> tuple[DeploymentRecord, Path]:
    """Deploys from the config with a connected provider; returns the record and its path.

    Raises `ConfigError` (bad config, or an existing token or feed without code on this
    network) or `RecordExists` before any transaction.
    """
    network = network or chain.provider.network_choice
    path = Path(output) if output else record_path(network, DEFAULT_DIR)
    check_writable(path, force)  # fail before spending gas
    config = load_config(config_path)
    preflight(config, chain.provider)
    deployed = deploy_from_config(project, deployer, config, network, chain)
    write_record(deployed.record, path, force=force)
    return deployed.record, path


def summary(record: DeploymentRecord, path: Path) -> None:
    rows: list[tuple[str, str]] = [
        ("network", f"{record.network} (chain id {record.chain_id})"),
        ("deployer", record.deployer),
        ("engine", record.engine),
        ("pool", record.pool),
        ("insurance fund", record.fund),
        (
            "collateral (mock)" if record.collateral_mock else "collateral",
            f"{record.token} ({record.collateral_decimals} decimals)",
        ),
        ("guardian", record.guardian),
        ("reserve factor", fmt_pct(record.reserve_factor)),
        (
            "call / critical ratio",
            f"{fmt_ratio(record.risk_params['call_ratio'], 2)} / "
            f"{fmt_ratio(record.risk_params['critical_ratio'], 2)}",
        ),
        ("settlement fee", f"{record.settlement_fee / 10**record.collateral_decimals:g} tokens"),
        ("order window", f"up to {record.max_order_window} s"),
        ("blocks", f"{record.block} .. {record.end_block}"),
    ]
    if record.pending_owner != ZERO:
        rows.append(
            (
                "pending owner",
                f"{record.pending_owner} (must call accept_ownership on engine, pool and fund)",
            )
        )
    for m in record.markets:
        feed = "mock feed" if m.mock_feed else f"feed {m.feed}"
        if m.fallback_feed != ZERO:
            feed += f", fallback {m.fallback_feed}"
        if m.sequencer_feed != ZERO:
            feed += f", sequencer {m.sequencer_feed} (grace {m.sequencer_grace} s)"
        rows.append(
            (
                f"market {m.market_id}: {m.name}",
                f"{m.oracle} ({feed}; imr {fmt_pct(m.imr)}, mmr {fmt_pct(m.mmr)},"
                f" fee {fmt_pct(m.fee, 3)}, cap {fmt_wad(m.window_cap, 0)})",
            )
        )
    console.print(kv_table(rows, title="margincall deployed"))
    console.print(f"record written to [bold]{path}[/]")


@click.command(cls=ConnectedProviderCommand)
@network_option()
@account_option()
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=DEFAULT_CONFIG,
    show_default=True,
    help="Deploy config (YAML).",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Record path [default: deployments/<ecosystem>-<network>.json].",
)
@click.option("--force", is_flag=True, help="Overwrite an existing deployment record.")
def cli(provider, account, config_path, output, force):
    """Deploy and configure margincall from a config file; write the deployment record."""
    from ape import chain, project

    try:
        record, path = run_deploy(
            project, chain, account, config_path, output, force, provider.network_choice
        )
    except (ConfigError, RecordExists) as err:
        raise click.ClickException(str(err)) from None
    except ContractLogicError as err:
        raise click.ClickException(f"deployment reverted: {err}; no record written") from None
    summary(record, path)
