"""Prometheus metrics of a bot, computed at scrape time (prometheus-client's collector API).

Nothing is updated on the bot's hot path: at each scrape the collector reads the
watchdog's state and calls the bot's `snapshot()` (the same dict the keeper writes to its
JSON metrics file), and maps its keys to metric families with a `Series` table: the
keeper's is `margincall.keeper.metrics.PROMETHEUS_SERIES`, the notifier's
`margincall.notify.metrics.PROMETHEUS_SERIES`. Every family carries the label `bot`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from margincall.ops.health import Fault, Watch


@dataclass(frozen=True)
class Series:
    """One metric from a snapshot key: `margincall_<bot>_<name>` (counters end `_total`)."""

    name: str
    kind: str  # "counter" or "gauge"
    help: str
    key: str  # the snapshot's key
    tokens: bool = False  # token units, exported in whole tokens (10**decimals)


@dataclass
class BotView:
    """What a bot registers: its name, its snapshot, its series, its collateral decimals."""

    bot: str
    snapshot: Callable[[], dict[str, Any]]
    series: tuple[Series, ...]
    decimals: int = 0
    block_key: str | None = "block"  # the snapshot's last handled block, for the lag


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


class BotCollector(Collector):
    """The watchdog's families (node, faults, health) and the registered bot's series."""

    def __init__(self, bot: str, watch: Watch, ready: Callable[[], BotView | None]):
        self.bot = bot
        self.watch = watch
        self.view = ready

    def collect(self) -> Iterator[Metric]:
        now = time.monotonic()
        watch, bot = self.watch, self.bot
        view = self.view()
        if view is not None:
            bot = view.bot
        healthy, _ = watch.health(now, ready=view is not None)
        yield from self._node(now, healthy, bot)
        faults = _gauge("margincall_fault_active", "1 while the fault is raised", ["bot", "fault"])
        raised = CounterMetricFamily(
            "margincall_faults", "times each fault was raised", labels=["bot", "fault"]
        )
        for fault in Fault:
            faults.add_metric([bot, fault.value], 1.0 if fault in watch.faults else 0.0)
            raised.add_metric([bot, fault.value], float(watch.fault_counts.get(fault, 0)))
        yield faults
        yield raised
        if view is not None:
            yield from self._bot(view)

    def _node(self, now: float, healthy: bool, bot: str) -> Iterable[Metric]:
        watch, labels = self.watch, [bot]
        values = [
            ("margincall_health_ok", "1 when /health answers 200", 1.0 if healthy else 0.0),
            ("margincall_node_head_block", "newest head the watchdog saw", watch.head),
            ("margincall_node_head_age_seconds", "seconds since the head last advanced", None),
            ("margincall_node_chain_id", "the node's chain id", watch.chain_id),
        ]
        for name, doc, value in values:
            if name == "margincall_node_head_age_seconds":
                value = watch.head_age(now)
            if value is None:
                continue
            family = _gauge(name, doc, ["bot"])
            family.add_metric(labels, float(value))
            yield family
        probes = CounterMetricFamily("margincall_node_probes", "watchdog probes", labels=["bot"])
        probes.add_metric(labels, float(watch.probes))
        yield probes
        errors = CounterMetricFamily(
            "margincall_node_probe_errors", "watchdog probes that failed", labels=["bot"]
        )
        errors.add_metric(labels, float(watch.errors))
        yield errors

    def _bot(self, view: BotView) -> Iterable[Metric]:
        try:
            snap = view.snapshot()
        except Exception:  # noqa: BLE001 - a scrape must never fail on the bot's state
            return
        labels = [view.bot]
        for s in view.series:
            value = snap.get(s.key)
            if value is None or isinstance(value, (str, list, dict)):
                continue
            value = float(value) / (10**view.decimals if s.tokens else 1)
            name = f"margincall_{view.bot}_{s.name}"
            if s.kind == "counter":
                family: Metric = CounterMetricFamily(name, s.help, labels=["bot"])
            else:
                family = _gauge(name, s.help, ["bot"])
            family.add_metric(labels, value)
            yield family
        block = snap.get(view.block_key) if view.block_key else None
        if isinstance(block, int) and block >= 0 and self.watch.head is not None:
            lag = _gauge(
                f"margincall_{view.bot}_lag_blocks",
                "blocks between the node's head and the last block the bot handled",
                ["bot"],
            )
            lag.add_metric(labels, float(max(self.watch.head - block, 0)))
            yield lag


__all__ = ["BotCollector", "BotView", "Series"]
