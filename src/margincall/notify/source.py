"""`ApeSource`: the notifier's chain source (used by bots/notifier.py): the engine's event
logs by block range and the accounts' statuses, through the SDK.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from margincall.notify.messages import WATCHED_EVENTS, WATCHED_ORDER_EVENTS, EngineEvent

# --- Ape adapter (used by bots/notifier.py) -----------------------------------------------


class ApeSource:
    """`ChainSource` over the SDK: the watched events of the engine and of the order book
    (`book`: the SDK's `SettlementClient`, or None; one `eth_getLogs` each per block range)
    and the batched `check_margins`."""

    def __init__(self, client: Any, book: Any = None):
        self.client = client
        self.book = book

    def logs(self, start: int, stop: int) -> list[EngineEvent]:
        logs = list(self.client.events(start, stop, WATCHED_EVENTS))
        if self.book is not None:
            logs += self.book.events(start, stop, WATCHED_ORDER_EVENTS)
        return [EngineEvent.from_log(log) for log in logs]

    def statuses(self, accounts: Sequence[str]) -> list[Any]:
        return list(self.client.statuses(accounts))
