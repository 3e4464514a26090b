"""`margincall dashboard`: the web dashboard over a deployed system (docs/dashboard.md)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option(
    "--deployment",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    envvar="MARGINCALL_DEPLOYMENT",
    show_envvar=True,
    help="Deployment record written by `ape run deploy`.",
)
@click.option(
    "--network",
    default=None,
    help="Ape network choice (ecosystem:network:provider) [default: the record's network]. "
    "Locally, point ape-foundry at your node with APE_FOUNDRY_HOST=http://127.0.0.1:8545.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to serve on.")
@click.option("--port", type=click.IntRange(0, 65_535), default=8000, show_default=True)
@click.option(
    "--keeper-metrics",
    type=click.Path(dir_okay=False, path_type=Path),
    multiple=True,
    help="A keeper's metrics file (`margincall keeper --metrics PATH`); repeat for several "
    "[default: .margincall/keeper.json when it exists].",
)
@click.option(
    "--notifier-outbox",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The notifier's SQLite outbox [default: .margincall/notifier-<chain>-<engine>.sqlite].",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(0.05, 60),
    default=0.2,
    show_default=True,
    help="Seconds between head polls.",
)
@click.option(
    "--plot-hours",
    type=click.FloatRange(0.01, 168),
    default=6.0,
    show_default=True,
    help="Hours of prices and liquidations on the system page's plot.",
)
def dashboard(
    deployment: Path,
    network: str | None,
    host: str,
    port: int,
    keeper_metrics: tuple[Path, ...],
    notifier_outbox: Path | None,
    poll_interval: float,
    plot_hours: float,
) -> None:
    """Serve the trader, system and operator pages, live from the chain (no key needed:
    the browser's wallet signs)."""
    import uvicorn
    from ape import networks, project

    from margincall.deploy.record import RecordError, read_record
    from margincall.web.app import create_app
    from margincall.web.chain import ChainView

    try:
        record = read_record(deployment)
    except RecordError as err:
        raise click.ClickException(str(err)) from None
    metrics = list(keeper_metrics)
    if not metrics and Path(".margincall/keeper.json").exists():
        metrics = [Path(".margincall/keeper.json")]
    choice = network or record.network
    try:
        context = networks.parse_network_choice(choice)
        provider = context.__enter__()
    except Exception as err:  # noqa: BLE001 - Ape's many connection errors: one sentence
        raise click.ClickException(
            f"cannot connect to {choice} ({type(err).__name__}: {err})"
        ) from None
    try:
        view = ChainView(record, project, provider, metrics, notifier_outbox)
        app = create_app(view, poll=poll_interval, plot_hours=plot_hours)
        url = f"http://{host}:{port}/"
        click.echo(f"margincall dashboard on {url} ({choice}, chain {record.chain_id})")
        # open event streams must not hold a stop (Ctrl-C, SIGTERM) for long
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)
    finally:
        context.__exit__(None, None, None)
