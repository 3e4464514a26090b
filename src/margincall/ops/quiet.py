"""Start-up noise the bots' runner silences, where we know better (docs/bots.md).

- pydantic-settings' `IncompleteFieldDefinitionWarning` about `import_remapping`: raised
  while Ape loads ape-vyper's config model (a forward reference in that plugin's
  settings); harmless, and nothing an operator can act on.
- Silverback's `PollingRunner` warns that polling "makes a significant amount of
  requests": true of its own runner (it polls through Ape's block iterator), not of
  `ResilientRunner`, which polls one `eth_getBlockByNumber` every
  `MARGINCALL_POLL_INTERVAL` and says so instead.
- Silverback's "No state snapshot detected, using empty snapshot": the margincall bots
  keep no Silverback state (the keeper rebuilds from the chain, the notifier from its
  outbox), so an empty snapshot is their normal start.
"""

from __future__ import annotations

import logging
import warnings

QUIET_LOG_LINES = (
    "The polling runner makes a significant amount of requests",
    "No state snapshot detected, using empty snapshot",
)


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(line in message for line in QUIET_LOG_LINES)


def quiet_warnings() -> None:
    """Ignores the known-harmless pydantic warning of Ape's plugin configs."""
    warnings.filterwarnings(
        "ignore", message=r"Field 'import_remapping' has an incomplete definition"
    )


def quiet_log(logger: logging.Logger) -> None:
    """Drops Silverback's start-up lines `QUIET_LOG_LINES` from `logger` (Ape's)."""
    if not any(isinstance(f, _DropLines) for f in logger.filters):
        logger.addFilter(_DropLines())


__all__ = ["QUIET_LOG_LINES", "quiet_log", "quiet_warnings"]
