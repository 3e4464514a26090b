"""The `margincall` group: its commands load on first use, so a command imports only what
it needs (`status` on a local node starts neither Ape nor web3).
"""

from __future__ import annotations

import importlib
import warnings

import click

# pydantic's IncompleteFieldDefinitionWarning from a dependency's settings model when Ape
# loads (`Field 'import_remapping' ...`): unrelated to the CLI, printed by every command
warnings.filterwarnings("ignore", message="Field 'import_remapping'")

COMMANDS: dict[str, tuple[str, str]] = {
    "status": ("margincall.cli.status", "status"),
    "positions": ("margincall.cli.status", "positions"),
    "deposit": ("margincall.cli.trader", "deposit"),
    "withdraw": ("margincall.cli.trader", "withdraw"),
    "trade": ("margincall.cli.trader", "trade"),
    "close": ("margincall.cli.trader", "close"),
    "orders": ("margincall.cli.orders", "orders"),
    "watch": ("margincall.cli.watch", "watch"),
    "call": ("margincall.cli.actions", "call"),
    "liquidate": ("margincall.cli.actions", "liquidate"),
    "dev": ("margincall.cli.dev", "dev"),
    "keeper": ("margincall.cli.bots", "keeper"),
    "notifier": ("margincall.cli.bots", "notifier"),
    "simulate": ("margincall.cli.simulate", "simulate"),
    "dashboard": ("margincall.web.cli", "dashboard"),  # Starlette loads when it runs
}


class LazyGroup(click.Group):
    """A group whose commands are imported when named (all of them for `--help`)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attr = COMMANDS[cmd_name]
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup)
@click.version_option(package_name="margincall")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    envvar="MARGINCALL_VERBOSE",
    show_envvar=True,
    help="Show Ape's log (each transaction).",
)
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """margincall: account status, collateral, trades, margin-call watch, keeper actions,
    local-chain helpers, the bots, the stress simulator and the web dashboard."""
    ctx.ensure_object(dict)["verbose"] = verbose


__all__ = ["COMMANDS", "LazyGroup", "cli"]
