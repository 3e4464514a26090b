"""A crash with ~50 traders, the keeper and the notifier as real processes, and the report
(`ape run demo`, `make demo`): a shell over `margincall.demo.crash`."""

from margincall.demo.crash import main

__all__ = ["main"]
