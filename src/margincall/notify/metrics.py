"""The notifier's numbers for Prometheus (`margincall.ops`): `snapshot` and its series."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from margincall.ops import Series, register_bot


def snapshot(notifier: Any, courier: Any = None, errors: int = 0) -> dict[str, Any]:
    """The notifier's state: cursor, outbox counts and attempts, open book, warnings."""
    counts = notifier.outbox.counts()
    return {
        "cursor": notifier.cursor,
        "messages": counts["total"],
        "delivered": counts["delivered"],
        "pending": counts["pending"],
        "failed_attempts": notifier.outbox.failed_attempts(),
        "accounts_open": len(notifier.book),
        "warnings_active": len(notifier.warned),
        "courier_rounds": getattr(courier, "rounds", None),
        "errors": errors,
    }


# `margincall_notifier_<name>`, from `snapshot()` keys
PROMETHEUS_SERIES: tuple[Series, ...] = (
    Series("cursor_block", "gauge", "last block whose logs are read and committed", "cursor"),
    Series("messages", "counter", "messages enqueued in the outbox", "messages"),
    Series(
        "delivered", "counter", "messages delivered (2xx, or logged without a webhook)", "delivered"
    ),
    Series("pending", "gauge", "messages waiting for delivery", "pending"),
    Series("delivery_failures", "counter", "failed delivery attempts", "failed_attempts"),
    Series("accounts_open", "gauge", "accounts with open positions", "accounts_open"),
    Series(
        "warnings_active", "gauge", "accounts inside an early-warning episode", "warnings_active"
    ),
    Series("courier_rounds", "counter", "delivery rounds of the courier", "courier_rounds"),
    Series("errors", "counter", "blocks whose reading failed (retried next block)", "errors"),
)


def export_prometheus(notifier: Any, courier: Any, errors: Callable[[], int]) -> None:
    """Serves the notifier's `snapshot` on this process's `/metrics` through
    `PROMETHEUS_SERIES`; marks it ready for `/health` (margincall.ops; a no-op when the bot
    runs without `ResilientRunner`)."""
    register_bot(
        "notifier",
        lambda: snapshot(notifier, courier, errors()),
        PROMETHEUS_SERIES,
        block_key="cursor",
    )


__all__ = ["PROMETHEUS_SERIES", "export_prometheus", "snapshot"]
