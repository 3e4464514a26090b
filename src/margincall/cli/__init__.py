"""The `margincall` command: the trader's commands (`trader`), the bot launchers (`bots`)
the stress simulator (`simulate`) and the web dashboard (`dashboard`)."""

from margincall.cli.bots import keeper as _keeper_command
from margincall.cli.bots import notifier as _notifier_command
from margincall.cli.simulate import simulate as _simulate_command
from margincall.cli.trader import cli
from margincall.web.cli import dashboard as _dashboard_command  # Starlette loads when it runs

# registered here so `margincall --help` lists them
cli.add_command(_keeper_command, "keeper")
cli.add_command(_notifier_command, "notifier")
cli.add_command(_simulate_command, "simulate")
cli.add_command(_dashboard_command, "dashboard")

__all__ = ["cli"]
