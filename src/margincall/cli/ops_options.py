"""The operations options of `margincall keeper` and `margincall notifier` (docs/bots.md).

`@ops_options(default_port)` adds `--metrics-host`, `--metrics-port`, `--rpc-timeout` and
`--stall-after`, each standing for its `MARGINCALL_*` variable (shown in `--help`, and its
default when exported). The values are checked with the runner's own rules
(`margincall.ops.check_env`) before the bot starts, and `ops_env()` gives the variables to
pass on.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import click

from margincall.ops.settings import OPS_VARS, OpsConfigError, check_env

META_KEY = "margincall.ops_env"

OPTIONS = (  # flag, variable
    ("--metrics-host", "MARGINCALL_METRICS_HOST"),
    ("--metrics-port", "MARGINCALL_METRICS_PORT"),
    ("--rpc-timeout", "MARGINCALL_RPC_TIMEOUT"),
    ("--stall-after", "MARGINCALL_STALL_AFTER"),
)


def ops_options(default_port: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Adds the operations options to a bot command; the port defaults to `default_port`."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            env = {}
            for flag, name in OPTIONS:
                value = kwargs.pop(flag[2:].replace("-", "_"))
                if value is not None:
                    env[name] = str(value)
            try:
                check_env({**os.environ, **env})
            except OpsConfigError as err:
                raise click.BadParameter(str(err)) from None
            click.get_current_context().meta[META_KEY] = env
            return f(*args, **kwargs)

        for flag, name in reversed(OPTIONS):
            default, meaning = OPS_VARS[name]
            if name == "MARGINCALL_METRICS_PORT":
                default = str(default_port)
                meaning += " (under `silverback run` directly: off)"
            wrapper = click.option(
                flag,
                default=default or None,
                envvar=name,
                show_envvar=True,
                show_default=bool(default),
                help=meaning[0].upper() + meaning[1:] + ".",
            )(wrapper)
        return wrapper

    return decorate


def ops_env() -> dict[str, str]:
    """The variables the current command's operations options set."""
    ctx = click.get_current_context(silent=True)
    return dict(ctx.meta.get(META_KEY, {})) if ctx is not None else {}


__all__ = ["OPTIONS", "ops_env", "ops_options"]
