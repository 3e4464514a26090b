"""The `margincall` command: the trader's commands (`trader`), the bot launchers (`bots`)
and the stress simulator (`simulate`)."""

from margincall.cli.bots import keeper as _keeper_command
from margincall.cli.bots import notifier as _notifier_command
from margincall.cli.simulate import simulate as _simulate_command
from margincall.cli.trader import cli

# registered here so `margincall --help` lists them
cli.add_command(_keeper_command, "keeper")
cli.add_command(_notifier_command, "notifier")
cli.add_command(_simulate_command, "simulate")

__all__ = ["cli"]
