"""`ApeSource`: the notifier's chain source (used by bots/notifier.py): the engine's event
logs by block range and the accounts' statuses, through the SDK.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from margincall.notify.messages import WATCHED_EVENTS, EngineEvent

# --- Ape adapter (used by bots/notifier.py) -----------------------------------------------


class ApeSource:
    """`ChainSource` over the SDK: the watched events of the engine (one `eth_getLogs` per
    block range) and the batched `check_margins`."""

    def __init__(self, client: Any):
        self.client = client

    def logs(self, start: int, stop: int) -> list[EngineEvent]:
        return [
            EngineEvent.from_log(log) for log in self.client.events(start, stop, WATCHED_EVENTS)
        ]

    def statuses(self, accounts: Sequence[str]) -> list[Any]:
        return list(self.client.statuses(accounts))
