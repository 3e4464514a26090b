"""The `margincall` command (`margincall.cli.group`): its commands load on first use.

trader (deposit, withdraw, trade, close), status (status, positions), watch, actions (call,
liquidate: a keeper's moves by hand), dev (local-chain helpers), bots (keeper, notifier),
simulate, and the web dashboard (`margincall.web.cli`, Starlette loads when it runs).
"""

from margincall.cli.group import cli

__all__ = ["cli"]
