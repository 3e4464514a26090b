"""The accounts with open positions, rebuilt from the engine's `PositionChanged` events
(`PositionBook`): the keeper's and the notifier's state at startup, kept current from the
logs of each block.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# --- accounts from events ---------------------------------------------------------------


def _event_field(event: Any, name: str) -> Any:
    if isinstance(event, Mapping):
        if name in event:
            return event[name]
        return event.get("event_arguments", event.get("args", {}))[name]
    return getattr(event, name)


def _event_name(event: Any) -> str | None:
    if isinstance(event, Mapping):
        return event.get("event_name") or event.get("event")
    return getattr(event, "event_name", None)


@dataclass
class PositionBook:
    """Accounts with open positions, rebuilt from `PositionChanged` events.

    An account is open while it holds a non-zero size in any market; a
    `PositionChanged` with size 0 removes that market, and the account leaves
    the book when no market is left. Feed events in log order.
    """

    markets: dict[str, set[int]] = field(default_factory=dict)

    def apply(self, event: Any) -> None:
        name = _event_name(event)
        if name is not None and name != "PositionChanged":
            return
        account = str(_event_field(event, "account"))
        market_id = int(_event_field(event, "market_id"))
        size = int(_event_field(event, "size"))
        held = self.markets.setdefault(account, set())
        if size != 0:
            held.add(market_id)
        else:
            held.discard(market_id)
        if not held:
            del self.markets[account]

    def apply_all(self, events: Iterable[Any]) -> PositionBook:
        for event in events:
            self.apply(event)
        return self

    @property
    def accounts(self) -> list[str]:
        return sorted(self.markets)

    def __contains__(self, account: object) -> bool:
        return account in self.markets

    def __len__(self) -> int:
        return len(self.markets)


def open_accounts(events: Iterable[Any]) -> list[str]:
    """The accounts with an open position after `events` (PositionChanged, in log order)."""
    return PositionBook().apply_all(events).accounts


__all__ = ["PositionBook", "open_accounts"]
