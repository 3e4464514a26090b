"""`margincall keeper` and `margincall notifier`: run the Silverback bots with typed options.

Both commands turn their options into the `MARGINCALL_*` variables the bots read
(docs/bots.md), check them first (a bad option fails here, with exit code 2, not
inside the bot), and then replace this process with

    silverback run <bot> --network <choice> --runner margincall.runner:ResilientRunner
        --account <alias>

from the project root (Silverback loads `bots/<bot>.py` from there). The process is
the bot: signals reach Silverback directly, and a supervisor (systemd, a container
runtime) restarts it like any other service. `--dry-run` prints the command and the
environment instead of running it.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import click

from margincall.keeper import ConfigError, KeeperConfig, parse_shard
from margincall.notify import NotifierConfigError, notifier_env
from margincall.procs import PROJECT_ROOT, RUNNER, bot_command

NETWORK_HELP = "Ape network choice, e.g. ethereum:mainnet:node [default: ethereum:local:foundry]."


def _shard(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        parse_shard(value)
    except ConfigError as err:
        raise click.BadParameter(str(err)) from None
    return value


def _node_env(node_url: str | None) -> dict[str, str]:
    return {"APE_FOUNDRY_HOST": node_url} if node_url else {}


def _launch(
    bot: str, network: str, account: str | None, env: dict[str, str], dry_run: bool
) -> None:
    if not (PROJECT_ROOT / "bots" / f"{bot}.py").exists():
        raise click.ClickException(
            f"bots/{bot}.py not found under {PROJECT_ROOT}: run from a checkout of margincall"
        )
    cmd = bot_command(bot, network, account)
    if dry_run:
        for key, value in sorted(env.items()):
            click.echo(f"{key}={shlex.quote(value)}")
        click.echo(f"cd {shlex.quote(str(PROJECT_ROOT))} && " + shlex.join(cmd))
        return
    os.chdir(PROJECT_ROOT)
    os.execvpe(cmd[0], cmd, {**os.environ, **env})


def _common(f):
    for option in reversed(
        [
            click.option("--network", default="ethereum:local:foundry", help=NETWORK_HELP),
            click.option(
                "--node-url",
                default=None,
                help="Attach to a running local node (sets APE_FOUNDRY_HOST).",
            ),
            click.option(
                "--poll-interval",
                type=click.FloatRange(0.01, 60),
                default=0.2,
                show_default=True,
                help="Seconds between head polls.",
            ),
            click.option("--dry-run", is_flag=True, help="Print the command instead of running."),
        ]
    ):
        f = option(f)
    return f


def _deployment(required: bool):
    return click.option(
        "--deployment",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        required=required,
        default=None,
        help="Deployment record written by `ape run deploy`"
        + ("." if required else " [default: deployments/<ecosystem>-<network>.json]."),
    )


@click.command()
@_deployment(required=True)
@_common
@click.option("--account", required=True, help="Ape account alias to send from (TEST::3 locally).")
@click.option("--shard", default="0/1", callback=_shard, show_default=True, help="Shard i/n.")
@click.option(
    "--margin-bps",
    type=click.IntRange(0),
    default=12_000,
    show_default=True,
    help="Act when reward >= gas cost x margin / 10,000.",
)
@click.option(
    "--native-per-token",
    default="0.0004",
    show_default=True,
    help="Price of one collateral token in the native coin, for the profit rule.",
)
@click.option("--max-batch", type=click.IntRange(1, 100), default=100, show_default=True)
@click.option("--scan-chunk", type=click.IntRange(1, 500), default=500, show_default=True)
@click.option("--no-clear-calls", is_flag=True, help="Leave recovered accounts' calls recorded.")
@click.option(
    "--metrics",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the keeper's metrics (JSON) to this file after every block.",
)
def keeper(
    deployment: Path,
    network: str,
    node_url: str | None,
    poll_interval: float,
    dry_run: bool,
    account: str,
    shard: str,
    margin_bps: int,
    native_per_token: str,
    max_batch: int,
    scan_chunk: int,
    no_clear_calls: bool,
    metrics: Path | None,
) -> None:
    """Run the keeper bot: margin-call and liquidate eligible accounts (docs/bots.md)."""
    env = {
        "MARGINCALL_DEPLOYMENT": str(deployment.resolve()),
        "MARGINCALL_SHARD": shard,
        "MARGINCALL_PROFIT_MARGIN_BPS": str(margin_bps),
        "MARGINCALL_NATIVE_PER_TOKEN": native_per_token,
        "MARGINCALL_MAX_BATCH": str(max_batch),
        "MARGINCALL_SCAN_CHUNK": str(scan_chunk),
        "MARGINCALL_CLEAR_CALLS": "0" if no_clear_calls else "1",
        "MARGINCALL_POLL_INTERVAL": str(poll_interval),
        **_node_env(node_url),
    }
    if metrics is not None:
        env["MARGINCALL_KEEPER_METRICS"] = str(metrics.resolve())
    try:
        KeeperConfig.from_env(env)  # the bot's own validation, before anything starts
    except ConfigError as err:
        raise click.BadParameter(str(err)) from None
    _launch("keeper", network, account, env, dry_run)


@click.command()
@_deployment(required=False)
@_common
@click.option("--webhook-url", default=None, help="http(s) URL to POST every message to.")
@click.option(
    "--outbox",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="SQLite outbox [default: .margincall/notifier-<chain id>-<engine>.sqlite].",
)
@click.option("--warn-ratio", default=None, help="Early warning under this ratio, or 'off'.")
@click.option("--warn-hysteresis", default=None, help="Re-arm at warn_ratio x (1 + this).")
@click.option("--confirmations", type=click.IntRange(0), default=None)
@click.option("--notify-from", default=None, help="deployment, head, or a block number.")
@click.option("--log-chunk", type=click.IntRange(1), default=None)
@click.option("--webhook-timeout", type=float, default=None)
@click.option("--retry-base", type=float, default=None)
@click.option("--retry-max", type=float, default=None)
@click.option("--delivery-budget", type=float, default=None)
def notifier(
    deployment: Path | None,
    network: str,
    node_url: str | None,
    poll_interval: float,
    dry_run: bool,
    webhook_url: str | None,
    outbox: Path | None,
    warn_ratio: str | None,
    warn_hysteresis: str | None,
    confirmations: int | None,
    notify_from: str | None,
    log_chunk: int | None,
    webhook_timeout: float | None,
    retry_base: float | None,
    retry_max: float | None,
    delivery_budget: float | None,
) -> None:
    """Run the notifier bot: margin-call, liquidation and early-warning messages to a webhook
    (docs/bots.md)."""
    try:
        env = notifier_env(
            deployment=deployment.resolve() if deployment else None,
            webhook_url=webhook_url,
            outbox=outbox.resolve() if outbox else None,
            warn_ratio=warn_ratio,
            warn_hysteresis=warn_hysteresis,
            confirmations=confirmations,
            notify_from=notify_from,
            log_chunk=log_chunk,
            webhook_timeout=webhook_timeout,
            retry_base=retry_base,
            retry_max=retry_max,
            delivery_budget=delivery_budget,
        )
    except NotifierConfigError as err:
        raise click.BadParameter(str(err)) from None
    env.update(MARGINCALL_POLL_INTERVAL=str(poll_interval), **_node_env(node_url))
    _launch("notifier", network, None, env, dry_run)


__all__ = ["RUNNER", "keeper", "notifier"]
