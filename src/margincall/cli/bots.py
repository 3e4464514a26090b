"""`margincall keeper` and `margincall notifier`: run the Silverback bots with typed options.

Both commands turn their options into the `MARGINCALL_*` variables the bots read
(docs/bots.md). Every option that stands for a variable takes its default from that
variable when it is exported (`MARGINCALL_SHARD=1/2 margincall keeper ...` runs shard
1/2; an option given on the command line wins), and variables without an option pass
through to the bot unchanged. The environment the bot will see (exported variables
merged with the options) is checked with the bot's own rules first: a bad value fails
here, with exit code 2 and the variable's name, not inside the bot. Then this process
is replaced with

    silverback run <bot> --network <choice> --runner margincall.keeper.runtime:ResilientRunner
        --account <alias>

from the project root (Silverback loads `bots/<bot>.py` from there). The process is
the bot: signals reach Silverback directly, and a supervisor (systemd, a container
runtime) restarts it like any other service. `--dry-run` prints the command and the
environment instead of running it.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path

import click

from margincall.cli.node import local_network, local_node_url, probe
from margincall.cli.ops_options import ops_env, ops_options
from margincall.keeper.config import ConfigError, KeeperConfig, parse_shard
from margincall.keeper.procs import PROJECT_ROOT, RUNNER, bot_command
from margincall.notify import ENV_VARS, NotifierConfig, NotifierConfigError, notifier_env

NETWORK_HELP = "Ape network choice, e.g. ethereum:mainnet:node [default: ethereum:local:foundry]."
ENV_PREFIX = "MARGINCALL_"
#: Runner settings (margincall.keeper.runtime), read by both bots: seconds, positive.
RUNNER_VARS = ("MARGINCALL_POLL_INTERVAL", "MARGINCALL_MAX_BACKOFF")


class EnvError(ValueError):
    """A setting of the merged environment is malformed."""


class EnvOption(click.Option):
    """An option whose errors name its variable when the value came from the environment
    (`Invalid value for '--shard' (from MARGINCALL_SHARD): ...`)."""

    def get_error_hint(self, ctx: click.Context) -> str:
        hint = super().get_error_hint(ctx)
        source = ctx.get_parameter_source(self.name) if self.name else None
        if self.envvar and source == click.core.ParameterSource.ENVIRONMENT:
            return f"{hint} (from {self.envvar})"
        return hint


def _option(*decls: str, **attrs):
    return click.option(*decls, cls=EnvOption, **attrs)


def _shard(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        parse_shard(value)
    except ConfigError as err:
        raise click.BadParameter(str(err)) from None
    return value


def _node_env(node_url: str | None) -> dict[str, str]:
    return {"APE_FOUNDRY_HOST": node_url} if node_url else {}


def merged_env(env: Mapping[str, str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """What the bot will see: the exported environment (`base`, default `os.environ`) with
    the options' variables on top."""
    return {**(os.environ if base is None else base), **env}


def check_runner_env(env: Mapping[str, str]) -> None:
    """The runner's settings (`MARGINCALL_POLL_INTERVAL`, `MARGINCALL_MAX_BACKOFF`): unset,
    or a positive number of seconds."""
    for name in RUNNER_VARS:
        raw = env.get(name, "")
        if raw == "":
            continue
        try:
            value = float(raw)
        except ValueError:
            raise EnvError(f"{name} must be a number of seconds, not {raw!r}") from None
        if not value > 0 or value == float("inf"):
            raise EnvError(f"{name} must be a positive number of seconds, not {raw!r}")


def _launch(
    bot: str, network: str, account: str | None, env: dict[str, str], dry_run: bool
) -> None:
    """Runs the bot with `merged_env(env)` (already checked), or prints it with `dry_run`."""
    if not (PROJECT_ROOT / "bots" / f"{bot}.py").exists():
        raise click.ClickException(
            f"bots/{bot}.py not found under {PROJECT_ROOT}: run from a checkout of margincall"
        )
    cmd = bot_command(bot, network, account)
    env = {**ops_env(), **env}  # --metrics-host/--metrics-port/--rpc-timeout/--stall-after
    if local_network(network) and not dry_run:
        # a bot attaches to the deployment's node and never starts one of its own (Ape's
        # foundry provider would start an empty Anvil where nothing answers): probe it first
        url = env.get("APE_FOUNDRY_HOST") or local_node_url()
        probe(url)
        env["APE_FOUNDRY_HOST"] = url
    full = merged_env(env)
    if dry_run:
        shown = {k: v for k, v in full.items() if k.startswith(ENV_PREFIX) or k in env}
        for key, value in sorted(shown.items()):
            click.echo(f"{key}={shlex.quote(value)}")
        click.echo(f"cd {shlex.quote(str(PROJECT_ROOT))} && " + shlex.join(cmd))
        return
    os.chdir(PROJECT_ROOT)
    os.execvpe(cmd[0], cmd, full)


def _env_help(name: str) -> str:
    """An option's help: the notifier's description of its variable."""
    return ENV_VARS[name][1] + "."


def _common(f):
    for option in reversed(
        [
            _option("--network", default="ethereum:local:foundry", help=NETWORK_HELP),
            _option(
                "--node-url",
                default=None,
                envvar="APE_FOUNDRY_HOST",
                show_envvar=True,
                help="Attach to a running local node (sets APE_FOUNDRY_HOST).",
            ),
            _option(
                "--poll-interval",
                type=click.FloatRange(0.01, 60),
                default=0.05,  # the runner's own default (margincall.keeper.runtime)
                show_default=True,
                envvar="MARGINCALL_POLL_INTERVAL",
                show_envvar=True,
                help="Seconds between head polls.",
            ),
            _option("--dry-run", is_flag=True, help="Print the command instead of running."),
        ]
    ):
        f = option(f)
    return f


def _deployment(required: bool):
    return _option(
        "--deployment",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        required=required,
        default=None,
        envvar="MARGINCALL_DEPLOYMENT",
        show_envvar=True,
        help="Deployment record written by `ape run deploy`"
        + ("." if required else " [default: deployments/<ecosystem>-<network>.json]."),
    )


def _env_option(flag: str, name: str, **kw):
    """A notifier option that stands for the variable `name` (its default when exported)."""
    default = ENV_VARS[name][0]
    help_text = _env_help(name) + (f" [default: {default}]" if default is not None else "")
    return _option(flag, default=None, envvar=name, show_envvar=True, help=help_text, **kw)


@click.command()
@ops_options(default_port=9101)
@_deployment(required=True)
@_common
@_option("--account", required=True, help="Ape account alias to send from (TEST::3 locally).")
@_option(
    "--shard",
    default="0/1",
    callback=_shard,
    show_default=True,
    envvar="MARGINCALL_SHARD",
    show_envvar=True,
    help="Shard i/n.",
)
@_option(
    "--margin-bps",
    type=click.IntRange(0),
    default=12_000,
    show_default=True,
    envvar="MARGINCALL_PROFIT_MARGIN_BPS",
    show_envvar=True,
    help="Act when reward >= gas cost x margin / 10,000.",
)
@_option(
    "--native-per-token",
    default="0.0004",
    show_default=True,
    envvar="MARGINCALL_NATIVE_PER_TOKEN",
    show_envvar=True,
    help="Price of one collateral token in the native coin, for the profit rule.",
)
@_option(
    "--max-batch",
    type=click.IntRange(1, 100),
    default=100,
    show_default=True,
    envvar="MARGINCALL_MAX_BATCH",
    show_envvar=True,
)
@_option(
    "--scan-chunk",
    type=click.IntRange(1, 500),
    default=500,
    show_default=True,
    envvar="MARGINCALL_SCAN_CHUNK",
    show_envvar=True,
)
@_option(
    "--no-clear-calls",
    is_flag=True,
    help="Leave recovered accounts' calls recorded (sets MARGINCALL_CLEAR_CALLS=0; "
    "without it an exported MARGINCALL_CLEAR_CALLS applies).",
)
@_option(
    "--metrics",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="MARGINCALL_KEEPER_METRICS",
    show_envvar=True,
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
        "MARGINCALL_POLL_INTERVAL": str(poll_interval),
        **_node_env(node_url),
    }
    if no_clear_calls:
        env["MARGINCALL_CLEAR_CALLS"] = "0"
    if metrics is not None:
        env["MARGINCALL_KEEPER_METRICS"] = str(metrics.resolve())
    try:  # the bot's own validation of what it will see, before anything starts
        full = merged_env(env)
        KeeperConfig.from_env(full)
        check_runner_env(full)
    except (ConfigError, EnvError) as err:
        raise click.BadParameter(str(err)) from None
    _launch("keeper", network, account, env, dry_run)


@click.command()
@ops_options(default_port=9102)
@_deployment(required=False)
@_common
@_env_option("--webhook-url", "MARGINCALL_WEBHOOK_URL")
@_env_option("--outbox", "MARGINCALL_OUTBOX", type=click.Path(dir_okay=False, path_type=Path))
@_env_option("--warn-ratio", "MARGINCALL_WARN_RATIO")
@_env_option("--warn-hysteresis", "MARGINCALL_WARN_HYSTERESIS")
@_env_option("--confirmations", "MARGINCALL_CONFIRMATIONS", type=click.IntRange(0))
@_env_option("--notify-from", "MARGINCALL_NOTIFY_FROM")
@_env_option("--log-chunk", "MARGINCALL_LOG_CHUNK", type=click.IntRange(1))
@_env_option("--webhook-timeout", "MARGINCALL_WEBHOOK_TIMEOUT", type=float)
@_env_option("--retry-base", "MARGINCALL_RETRY_BASE", type=float)
@_env_option("--retry-max", "MARGINCALL_RETRY_MAX", type=float)
@_env_option("--delivery-budget", "MARGINCALL_DELIVERY_BUDGET", type=float)
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
        env.update(MARGINCALL_POLL_INTERVAL=str(poll_interval), **_node_env(node_url))
        # the bot's own validation of what it will see, before anything starts
        full = merged_env(env)
        NotifierConfig.from_env(full, default_deployment="-")
        check_runner_env(full)
    except (NotifierConfigError, EnvError) as err:
        raise click.BadParameter(str(err)) from None
    _launch("notifier", network, None, env, dry_run)


__all__ = ["RUNNER", "keeper", "notifier"]
